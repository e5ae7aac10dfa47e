import numpy as np
import pytest
from PIL import Image

from mucosa.data.manifest import load_manifest, order_classes
from mucosa.errors import ManifestError, MucosaWarning


def make_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / name)


def write_csv(path, rows, header="path,label,patient"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def cohort_dir(tmp_path):
    make_images(tmp_path / "img", ["a.png", "b.png", "c.png", "d.png"])
    return tmp_path


def test_valid_manifest_loads_with_relative_paths(cohort_dir):
    csv = write_csv(cohort_dir / "m.csv", ["img/a.png,active,P1,rectum,active CD,,train",
                                           "img/b.png,control,P2,terminal ileum,mucosal healing,,test"],
                    "path,label,patient,region,group,frames,split")
    cohort = load_manifest(csv)
    assert cohort.classes == ["control", "active"] and cohort.positive == "active"
    assert cohort.records[0].path == (cohort_dir / "img" / "a.png").resolve()
    assert cohort.records[1].region == "terminal ileum" and cohort.records[1].split == "test"
    assert cohort.patients == ["P1", "P2"] and cohort.records[0].row == 2


def test_every_row_problem_is_reported_with_file_and_row(cohort_dir):
    csv = write_csv(cohort_dir / "m.csv", [
        "img/a.png,active,P1",        # row 2 fine
        "img/missing.png,active,P1",  # row 3 missing file
        "img/b.png,,P2",              # row 4 empty label
        "img/c.png,control,",         # row 5 empty patient
        "img/a.png,active,P1",        # row 6 duplicate of row 2
    ])
    with pytest.raises(ManifestError) as info:
        load_manifest(csv)
    message = str(info.value)
    assert "4 problem(s)" in message
    assert "m.csv row 3: file not found: img/missing.png" in message
    assert "m.csv row 4: empty label" in message
    assert "m.csv row 5: empty patient" in message
    assert "m.csv row 6: duplicate of row 2" in message


def test_unknown_label_and_class_without_images(cohort_dir):
    csv = write_csv(cohort_dir / "m.csv", ["img/a.png,active,P1", "img/b.png,inflamed,P2"])
    with pytest.raises(ManifestError, match=r"row 3: unknown label 'inflamed'"):
        load_manifest(csv, classes=["control", "active"])
    csv = write_csv(cohort_dir / "m.csv", ["img/a.png,active,P1"])
    with pytest.raises(ManifestError, match="class 'control' has no images"):
        load_manifest(csv, classes=["control", "active"])


def test_missing_columns_and_bad_values(cohort_dir):
    csv = write_csv(cohort_dir / "m.csv", ["img/a.png,active"], "path,label")
    with pytest.raises(ManifestError, match="missing column.*patient"):
        load_manifest(csv)
    csv = write_csv(cohort_dir / "m.csv", ["img/a.png,active,P1,2-5,train",
                                           "img/b.png,active,P1,,holdout"], "path,label,patient,frames,split")
    with pytest.raises(ManifestError) as info:
        load_manifest(csv)
    assert "row 2: frames '2-5' given for an image" in str(info.value)
    assert "row 3: split 'holdout' is not one of" in str(info.value)
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(cohort_dir / "nope.csv")


def test_patient_with_two_labels_warns(cohort_dir):
    csv = write_csv(cohort_dir / "m.csv", ["img/a.png,active,P1", "img/b.png,control,P1",
                                           "img/c.png,control,P2"])
    with pytest.warns(MucosaWarning, match=r"1 patient\(s\) carry more than one label \(P1: active, control\)"):
        load_manifest(csv)


def test_windows_separators_in_manifest(cohort_dir):
    csv = write_csv(cohort_dir / "m.csv", ["img\\a.png,active,P1", "img\\b.png,control,P2"])
    assert load_manifest(csv).records[0].path.name == "a.png"


def test_round_trip_keeps_extra_columns(cohort_dir, tmp_path):
    csv = write_csv(cohort_dir / "m.csv", ["img/a.png,active,P1,m/a.png", "img/b.png,control,P2,"],
                    "path,label,patient,mask")
    cohort = load_manifest(csv)
    out = cohort.to_csv(tmp_path / "sub" / "copy.csv")
    again = load_manifest(out)
    assert [r.path for r in again.records] == [r.path for r in cohort.records]
    assert again.records[0].extra["mask"] == "m/a.png"


@pytest.mark.parametrize("labels, positive", [
    (["active", "control"], "active"), (["0", "1"], "1"), (["AIA", "control"], "AIA"),
    (["mucosal healing", "inflamed"], "inflamed"), (["glioblastoma", "meningioma"], "meningioma")])
def test_positive_class_is_last(labels, positive):
    assert order_classes(labels)[-1] == positive
    assert order_classes(labels, positive=labels[0])[-1] == labels[0]


def test_three_classes_have_no_positive(cohort_dir):
    csv = write_csv(cohort_dir / "m.csv", ["img/a.png,active,P1", "img/b.png,healing,P2",
                                           "img/c.png,normal,P3"])
    cohort = load_manifest(csv)
    assert cohort.classes == ["active", "healing", "normal"] and cohort.positive is None
