from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from media import write_video
from mucosa.cli import main
from mucosa.data.ingest import (
    check_cohort,
    index_csv,
    index_directory,
    parse_classes,
    parse_label_map,
    refuse_suspicious_classes,
    restrict_classes,
    suspicious_classes,
)
from mucosa.data.manifest import Cohort, Record, load_manifest, write_manifest
from mucosa.errors import ConfigError, ManifestError, MucosaWarning


def image(path, value=100, shape=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def test_label_patient_image_layout_with_regions(tmp_path):
    image(tmp_path / "active" / "P1" / "rectum" / "1.png")
    image(tmp_path / "active" / "P1" / "terminal_ileum" / "2.png")
    image(tmp_path / "control" / "P2" / "3.png")
    records = index_directory(tmp_path)
    assert [(r.label, r.patient, r.region) for r in records] == [
        ("active", "P1", "rectum"), ("active", "P1", "terminal ileum"), ("control", "P2", "")]


def test_label_video_layout_is_one_case_per_video(tmp_path):
    (tmp_path / "gbm").mkdir()
    (tmp_path / "men").mkdir()
    write_video(tmp_path / "gbm" / "gbm-01.avi", n=5)
    write_video(tmp_path / "men" / "men-01.avi", n=5)
    records = index_directory(tmp_path)
    assert [(r.label, r.patient) for r in records] == [("gbm", "gbm-01"), ("men", "men-01")]


def test_loose_images_in_a_label_folder_are_refused(tmp_path):
    image(tmp_path / "active" / "1.png")
    with pytest.raises(ManifestError, match="patient is unknown"):
        index_directory(tmp_path)
    with pytest.raises(ManifestError, match="not a folder"):
        index_directory(tmp_path / "nothing")


def test_csv_with_other_columns_windows_paths_and_stray_prefix(tmp_path):
    image(tmp_path / "C_00" / "a.jpg")
    image(tmp_path / "AIA_00" / "b.jpg")
    table = tmp_path / "info.csv"
    table.write_text(",dataset,sample_path,animal_tag,label\n"
                     "0,AIA,data\\AIA\\C_00\\a.jpg,C_00,0\n1,AIA,data\\AIA\\AIA_00\\b.jpg,AIA_00,1\n")
    records = index_csv(table, "sample_path", "label", "animal_tag", label_map=parse_label_map("0=control,1=AIA"))
    assert [(r.path.name, r.label, r.patient) for r in records] == [("a.jpg", "control", "C_00"),
                                                                   ("b.jpg", "AIA", "AIA_00")]
    with pytest.raises(ManifestError, match="no column.*animal.*its columns are"):
        index_csv(table, "sample_path", "label", "animal")
    table.write_text("sample_path,label,animal_tag\ndata\\AIA\\C_00\\zzz.jpg,0,C_00\n")
    with pytest.raises(ManifestError, match=r"row 2: file not found: data\\AIA\\C_00\\zzz.jpg"):
        index_csv(table, "sample_path", "label", "animal_tag")
    with pytest.raises(ManifestError, match="label map"):
        parse_label_map("0:control")


def test_check_counts_frames_patients_regions_and_unreadable(tmp_path):
    image(tmp_path / "d" / "a.png", shape=(10, 12))
    image(tmp_path / "d" / "b.png", shape=(10, 12))
    (tmp_path / "d" / "bad.png").write_bytes(b"garbage")
    write_video(tmp_path / "d" / "v.avi", n=12)
    (tmp_path / "m.csv").write_text("path,label,patient,region,frames\n"
                                    "d/a.png,active,P1,rectum,\nd/b.png,control,P2,rectum,\n"
                                    "d/bad.png,control,P3,,\nd/v.avi,active,P4,left colon,every:3\n")
    cohort = load_manifest(tmp_path / "m.csv")
    summary = check_cohort(cohort)
    assert summary.frames_per_label == Counter({"active": 1 + 4, "control": 1})
    assert {k: len(v) for k, v in summary.patients_per_label.items()} == {"active": 2, "control": 1}
    assert summary.frames_per_region == Counter({"rectum": 2, "left colon": 4})
    assert summary.sizes[(12, 10)] == 2 and summary.sizes[(64, 48)] == 1
    assert len(summary.unreadable) == 1 and "row 4" in summary.unreadable[0] and "bad.png" in summary.unreadable[0]
    text = summary.format(cohort)
    assert "unreadable files: 1" in text and "active" in text


def test_cli_index_and_check(tmp_path, capsys):
    image(tmp_path / "data" / "active" / "P1" / "1.png")
    image(tmp_path / "data" / "control" / "P2" / "2.png")
    assert main(["index", str(tmp_path / "data"), "-o", str(tmp_path / "out" / "m.csv")]) == 0
    assert main(["check", str(tmp_path / "out" / "m.csv")]) == 0
    out = capsys.readouterr().out
    assert "indexed 2 files of 2 patients" in out and "(positive: active)" in out
    assert main(["check", str(tmp_path / "missing.csv")]) == 2
    assert "error:" in capsys.readouterr().err


def test_index_real_pcle_brain(pcle_brain, tmp_path):
    records = index_directory(pcle_brain)
    assert len(records) == 20 and {r.label for r in records} == {"glioblastoma", "meningioma"}
    assert len({r.patient for r in records}) == 20 and all(r.is_video for r in records)
    cohort = load_manifest(write_manifest(records, tmp_path / "brain.csv"))
    assert Counter(r.label for r in cohort.records) == Counter(glioblastoma=9, meningioma=11)


def test_index_real_egcz_csv(egcz, tmp_path):
    records = index_csv(egcz / "data_info.csv", "sample_path", "label", "animal_tag",
                        label_map={"0": "control", "1": "AIA"})
    assert len(records) == 418 and len({r.patient for r in records}) == 12
    assert Counter(r.label for r in records) == Counter(control=208, AIA=210)
    # every animal's images lie in the animal's folder
    assert all(r.path.parent.name == r.patient for r in records)
    cohort = load_manifest(write_manifest(records, tmp_path / "egcz.csv"))
    assert cohort.positive == "AIA"


def test_index_reads_the_synthetic_cohort_layout(tmp_path):
    from mucosa.data.synth import synthesize_cohort

    manifest = synthesize_cohort(tmp_path / "syn", patients=3, per_patient=2, size=32, seed=0)
    written = {(r.path, r.label, r.patient) for r in load_manifest(manifest).records}
    indexed = {(r.path, r.label, r.patient) for r in index_directory(tmp_path / "syn" / "images")}
    assert indexed == written


# --- suspicious classes, restricting classes, what check flags ------------------------------------------------


def rows_of(labels):
    """Records with these labels, one image and patient each (check_cohort is not called on them)."""
    return [Record(Path(f"/x/{i}.png"), label, f"P{i}") for i, label in enumerate(labels)]


def test_a_one_row_typo_is_a_suspect_class():
    suspects = suspicious_classes(rows_of(["active"] * 32 + ["activ"] + ["control"] * 15))
    assert [(s.label, s.rows, s.resembles) for s in suspects] == [("activ", 1, "active")]
    assert suspects[0].describe() == ("class 'activ' has 1 of 48 rows (very few rows; it resembles 'active')")


@pytest.mark.parametrize("labels, suspect, like", [
    (["active"] * 20 + ["Active"] * 6 + ["control"] * 20, "Active", "active"),   # case only, not even rare
    (["control"] * 40 + ["mucosal healing"] * 30 + ["mucosal-healing"] * 30, "mucosal-healing", "mucosal healing"),
    (["active"] * 200 + ["activve"] * 8 + ["control"] * 200, "activve", "active"),  # 8 rows, but 25x fewer
    (["active"] * 30 + ["control"] * 30 + ["ulcer"] * 2, "ulcer", None),            # a real but tiny class
    (["active"] * 30 + ["contr\tol"] * 30, "contr\tol", None)])
def test_suspects_case_variants_rare_classes_and_typos(labels, suspect, like):
    suspects = suspicious_classes(rows_of(labels))
    assert [(s.label, s.resembles) for s in suspects] == [(suspect, like)]


@pytest.mark.parametrize("labels", [
    ["gbm"] * 2 + ["men"] * 2,                       # four single-video cases: small, not suspicious
    ["active"] * 150 + ["inactive"] * 120,          # two edits apart, but both real classes
    ["0"] * 10 + ["1"] * 9, ["AIA"] * 208 + ["control"] * 210, ["CD"] * 30 + ["UC"] * 25 + ["control"] * 12])
def test_ordinary_cohorts_have_no_suspects(labels):
    assert suspicious_classes(rows_of(labels)) == []


def test_refusal_names_the_class_its_rows_and_its_twin(tmp_path):
    cohort = Cohort(rows_of(["active"] * 20 + ["activ"] + ["control"] * 10), ["activ", "control", "active"],
                    tmp_path / "m.csv")
    with pytest.raises(ConfigError, match=r"m.csv: class 'activ' has 1 of 31 rows \(very few rows; it resembles "
                       r"'active'\).*--classes control,active\)$"):
        refuse_suspicious_classes(cohort)
    with pytest.warns(MucosaWarning, match="left out"):
        restricted = restrict_classes(cohort, ["control", "active"])
    refuse_suspicious_classes(restricted)  # no error once restricted


def test_restrict_classes_keeps_order_and_counts_what_it_leaves_out(tmp_path):
    cohort = Cohort(rows_of(["active"] * 4 + ["activ"] + ["control"] * 3), ["activ", "control", "active"],
                    tmp_path / "m.csv")
    with pytest.warns(MucosaWarning, match=r"1 row\(s\) whose label is not in --classes are left out \('activ' 1\)"):
        kept = restrict_classes(cohort, ["active", "control"])
    assert kept.classes == ["active", "control"] and kept.positive == "control" and len(kept.records) == 7
    with pytest.raises(ConfigError, match=r"'healed' named in --classes have no rows; .*'active' \(4\)"):
        restrict_classes(cohort, ["active", "healed"])
    assert parse_classes(" control, active,control ") == ["control", "active"]
    with pytest.raises(ConfigError, match="at least two classes"):
        parse_classes("active")


def test_check_lists_typos_tiny_files_and_damaged_videos(tmp_path, capsys):
    for i in range(8):
        image(tmp_path / "d" / f"a{i}.png")
        image(tmp_path / "d" / f"c{i}.png")
    image(tmp_path / "d" / "dot.png", shape=(1, 1))
    write_video(tmp_path / "d" / "tiny.avi", n=5, size=(4, 4))
    write_video(tmp_path / "d" / "v.avi", n=40)
    data = (tmp_path / "d" / "v.avi").read_bytes()
    (tmp_path / "d" / "cut.avi").write_bytes(data[: len(data) * 2 // 3])
    rows = [f"d/a{i}.png,active,A{i}" for i in range(8)] + [f"d/c{i}.png,control,C{i}" for i in range(8)]
    rows += ["d/dot.png,activ,A0", "d/tiny.avi,control,C9", "d/cut.avi,active,A9"]
    (tmp_path / "m.csv").write_text("path,label,patient\n" + "\n".join(rows) + "\n")
    with pytest.warns(MucosaWarning, match=r"A0: activ, active"):
        cohort = load_manifest(tmp_path / "m.csv")
    summary = check_cohort(cohort)
    assert len(summary.unreadable) == 2 and not summary.ok
    assert "row 18:" in summary.unreadable[0] and "dot.png: image is 1x1 pixels" in summary.unreadable[0]
    assert "row 19:" in summary.unreadable[1] and "tiny.avi: video frame is 4x4 pixels" in summary.unreadable[1]
    assert summary.problems[0].startswith("class 'activ' has 1 of 19 rows")
    assert "row 20:" in summary.problems[1] and "cut.avi: video is damaged" in summary.problems[1]
    assert main(["check", str(tmp_path / "m.csv")]) == 1
    out = capsys.readouterr().out
    assert "unreadable files: 2" in out and "problems: 2" in out


def test_index_csv_reads_legacy_encodings_and_reports_absurd_paths(tmp_path):
    image(tmp_path / "C_00" / "é.jpg")
    (tmp_path / "info.csv").write_bytes("sample_path,label,animal_tag\nC_00\\é.jpg,0,C_00\n".encode("cp1252"))
    with pytest.warns(MucosaWarning, match="read as Windows-1252"):
        records = index_csv(tmp_path / "info.csv", "sample_path", "label", "animal_tag")
    assert records[0].path.name == "é.jpg"
    (tmp_path / "info.csv").write_text("sample_path,label,animal_tag\n" + "x/" * 2600 + "a.jpg,0,C_00\n"
                                       "C_00/é.jpg,0,C_00,extra\n")
    with pytest.raises(ManifestError) as info:
        index_csv(tmp_path / "info.csv", "sample_path", "label", "animal_tag")
    assert "row 2: path of 5205 characters" in str(info.value)
    assert "row 3: 4 fields but the header has 3 columns" in str(info.value)
