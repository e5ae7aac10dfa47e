import warnings

import numpy as np
import pytest
from PIL import Image

from mucosa.cli import main
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


# --- encodings, malformed rows, odd patient ids ----------------------------------------------------------------

ROWS = "path,label,patient\nimg/a.png,active,Pé1\nimg/b.png,control,P2\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_unicode_manifests_load_whatever_the_encoding(cohort_dir, encoding):
    (cohort_dir / "m.csv").write_bytes(ROWS.encode(encoding))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohort = load_manifest(cohort_dir / "m.csv")
    assert [r.patient for r in cohort.records] == ["Pé1", "P2"] and cohort.records[1].row == 3


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_legacy_encoded_manifest_loads_with_a_warning(cohort_dir, encoding):
    (cohort_dir / "m.csv").write_bytes((ROWS + "img/c.png,control,P€3\n" * (encoding == "cp1252")).encode(encoding))
    with pytest.warns(MucosaWarning, match=r"m.csv: not UTF-8 \(first odd byte on line 2\); read as Windows-1252"):
        cohort = load_manifest(cohort_dir / "m.csv")
    assert cohort.records[0].patient == "Pé1"
    assert encoding == "latin-1" or cohort.records[2].patient == "P€3"


def test_field_over_the_csv_limit_is_one_clear_line(cohort_dir, capsys):
    write_csv(cohort_dir / "m.csv", ["img/a.png,active,P1", "img/b.png,control," + "x" * 140_000])
    with pytest.raises(ManifestError, match=r"m.csv row 3: a field is longer than 131072 characters"):
        load_manifest(cohort_dir / "m.csv")
    assert main(["check", str(cohort_dir / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and len(err) < 300


def test_rows_with_extra_fields_are_listed_with_the_other_problems(cohort_dir):
    write_csv(cohort_dir / "m.csv", ["img/a.png,active,P1,,", "img/b.png,control,P2,left colon,x",
                                     "img/missing.png,control,P3"])  # empty trailing fields (row 2) are fine
    with pytest.raises(ManifestError) as info:
        load_manifest(cohort_dir / "m.csv")
    lines = str(info.value).splitlines()
    assert "2 problem(s)" in lines[0]
    assert "m.csv row 3: 5 fields but the header has 3 columns (a comma inside a value?" in lines[1]
    assert "m.csv row 4: file not found: img/missing.png" in lines[2]


def test_absurd_paths_are_row_problems_not_crashes(cohort_dir):
    write_csv(cohort_dir / "m.csv", ["img/a.png,active,P1", "img/" + "d" * 4996 + ",control,P2",
                                     "img/" + "n" * 300 + ".png,control,P3", "img/b\x07.png,control,P4"])
    with pytest.raises(ManifestError) as info:
        load_manifest(cohort_dir / "m.csv")
    message = str(info.value)
    assert "row 3: path is 5000 characters long (at most 4096)" in message
    assert "row 4: a folder or file name in the path is 304 characters long (at most 255)" in message
    assert "row 5: path 'img/b\\x07.png' holds control characters" in message
    assert max(len(line) for line in message.splitlines()) < 200  # the long path is not printed whole


def test_binary_or_doubled_header_files_are_refused(cohort_dir):
    (cohort_dir / "m.csv").write_bytes(b"path,label,patient\nimg/a.png,active,P1\x00\x00\x00\n")
    with pytest.raises(ManifestError, match="m.csv row 2: holds NUL characters"):
        load_manifest(cohort_dir / "m.csv")
    write_csv(cohort_dir / "m.csv", ["img/a.png,active,P1,control"], "path,label,patient,label")
    with pytest.raises(ManifestError, match="column.*label appear more than once"):
        load_manifest(cohort_dir / "m.csv")


def test_blank_lines_keep_row_numbers_true(cohort_dir):
    (cohort_dir / "m.csv").write_text("path,label,patient\nimg/a.png,active,P1\n\nimg/nope.png,control,P2\n")
    with pytest.raises(ManifestError, match="m.csv row 4: file not found: img/nope.png"):
        load_manifest(cohort_dir / "m.csv")


def test_patient_ids_differing_in_case_or_with_control_characters_warn(cohort_dir):
    write_csv(cohort_dir / "m.csv", ["img/a.png,active,p01", "img/b.png,control,P01", "img/c.png,control,P\x0702",
                                     "img/d.png,active,P03"])
    with pytest.warns(MucosaWarning) as caught:
        load_manifest(cohort_dir / "m.csv")
    messages = [str(w.message) for w in caught]
    assert any("1 patient id(s) differ only in case (P01/p01)" in m for m in messages)
    assert any("1 patient id(s) hold control characters ('P\\x0702')" in m for m in messages)
    write_csv(cohort_dir / "m.csv", ["img/a.png,active,P01", "img/b.png,control,P02"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_manifest(cohort_dir / "m.csv")
