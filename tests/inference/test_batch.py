import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from media import foreign_frames, write_gray_clip, write_images
from mucosa.atomic import write_torch
from mucosa.cli import main
from mucosa.data.cache import FrameCache
from mucosa.data.manifest import Record, load_manifest, write_manifest
from mucosa.data.video import iter_video_frames
from mucosa.errors import MucosaError, MucosaWarning
from mucosa.evaluation.evaluate import score
from mucosa.inference.atlas_search import format_search, search_atlas, write_search
from mucosa.inference.batch import format_cases, predict
from mucosa.inference.sources import collect_sources
from mucosa.inference.verdict import (
    NO_SECOND_OPINION,
    NO_VERDICT,
    NOT_SIMILAR,
    UNFAMILIAR,
    percent,
    unfamiliar_reason,
    verdict_names,
)
from mucosa.models.checkpoint import (
    load_checkpoint,
    read_checkpoint_file,
)
from tiny_configs import tiny_config

QUICK = tiny_config(training={"epochs": 2})


@pytest.fixture(scope="module")
def trained(train_tiny):
    """A tiny CNN-LSTM trained on 8 synthetic patients; returns (run folder, cohort folder, cache)."""
    tiny = train_tiny("predict", QUICK, patients=8, per_patient=4, seed=3)
    return tiny.run, tiny.cohort, tiny.cache


@pytest.fixture(scope="module")
def gated(trained, tmp_path_factory):
    """The same model with the default quality gate (0.5) written into its checkpoint."""
    run, _, _ = trained
    data = read_checkpoint_file(run / "best.ckpt")
    data["mucosa"]["preprocessing"]["quality_threshold"] = 0.5
    path = tmp_path_factory.mktemp("gated") / "gated.ckpt"
    write_torch(data, path)
    return path


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def by_frame(rows):
    return {(str(Path(r["path"]).resolve()), int(r["frame"])): r for r in rows}


@pytest.mark.slow
def test_manifest_predictions_agree_with_evaluate_scores(trained, tmp_path):
    run, _, cache = trained
    result = predict(run / "best.ckpt", [run / "split.csv"], tmp_path / "p")
    cohort = load_manifest(run / "split.csv")
    scored = score(load_checkpoint(run / "best.ckpt"), cohort, cache)
    mine = by_frame(read_csv(tmp_path / "p" / "predictions.csv"))
    assert len(mine) == len(scored.rows) == len(cohort.records)
    for row, p in zip(scored.rows, scored.y_score):
        got = mine[(str(Path(row["path"]).resolve()), row["frame"])]
        assert float(got["probability"]) == pytest.approx(float(p), abs=1e-5)
        assert got["case"] == row["patient"]
        assert got["label"] == cohort.classes[int(p >= 0.5)]
    cases = read_csv(tmp_path / "p" / "cases.csv")
    assert {c["case"] for c in cases} == set(cohort.patients)
    for case in cases:  # a case is the mean of its frames, called at 0.5
        probs = [float(r["probability"]) for r in mine.values() if r["case"] == case["case"]]
        assert float(case["mean_probability"]) == pytest.approx(np.mean(probs), abs=1e-5)
        assert case["verdict"] == ("active inflammation" if np.mean(probs) >= 0.5 else "mucosal healing")
    assert [c.case for c in result.cases] == [c["case"] for c in cases]


@pytest.mark.slow
def test_folder_is_one_case_and_a_single_image_its_own(trained, tmp_path):
    run, cohort, _ = trained
    folder = next(p for p in sorted((cohort / "images").glob("*/*")) if p.is_dir())
    images = sorted(folder.glob("*.png"))
    predict(run / "best.ckpt", [folder, images[0]], tmp_path / "p")
    files = read_csv(tmp_path / "p" / "files.csv")
    assert len(files) == len(images) + 1
    cases = {c["case"]: c for c in read_csv(tmp_path / "p" / "cases.csv")}
    assert set(cases) == {str(folder), str(images[0])}
    assert int(cases[str(folder)]["files"]) == len(images)
    single = [f for f in files if f["case"] == str(images[0])][0]
    same = [f for f in files if f["case"] == str(folder) and f["path"] == str(images[0])][0]
    assert single["mean_probability"] == same["mean_probability"]  # same image, same answer
    predict(run / "best.ckpt", [run / "split.csv"], tmp_path / "m")
    from_manifest = by_frame(read_csv(tmp_path / "m" / "predictions.csv"))
    for row in read_csv(tmp_path / "p" / "predictions.csv"):
        assert row["probability"] == from_manifest[(str(Path(row["path"]).resolve()), 0)]["probability"]


@pytest.mark.slow
@pytest.mark.realdata
def test_video_black_frame_is_reported_unused_and_the_rest_agrees_with_evaluate(gated, pcle_brain, tmp_path):
    frames = [f for _, f in iter_video_frames(pcle_brain / "glioblastoma" / "gbm-01.mpg", "0-23")]
    frames[12] = np.zeros_like(frames[12])
    video = tmp_path / "clip.avi"
    write_gray_clip(video, [np.round(f * 255).astype(np.uint8) for f in frames])
    result = predict(gated, [video], tmp_path / "p")
    rows = read_csv(tmp_path / "p" / "predictions.csv")
    assert [int(r["frame"]) for r in rows] == list(range(24))
    black = rows[12]
    assert black["used"] == "0" and black["probability"] == "" and float(black["quality"]) < 0.5
    assert all(r["used"] == "1" for i, r in enumerate(rows) if i != 12)
    assert result.files[0].used == 23 and result.files[0].skipped == 1
    manifest = write_manifest([Record(video, "control", "clip")], tmp_path / "clip.csv")
    scored = score(load_checkpoint(gated), load_manifest(manifest), FrameCache(tmp_path / "cache"))
    assert [r["frame"] for r in scored.rows] == [i for i in range(24) if i != 12]  # evaluate drops it
    for row, p in zip(scored.rows, scored.y_score):
        assert float(rows[row["frame"]]["probability"]) == pytest.approx(float(p), abs=1e-5)
    case = read_csv(tmp_path / "p" / "cases.csv")[0]
    assert (case["frames"], case["used"], case["skipped_quality"]) == ("24", "23", "1")
    assert float(case["mean_probability"]) == pytest.approx(np.mean(scored.y_score), abs=1e-5)


@pytest.mark.slow
def test_a_case_without_informative_frames_gets_no_verdict(gated, tmp_path):
    from PIL import Image

    folder = tmp_path / "dark"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "black.png")
    result = predict(gated, [folder], tmp_path / "p")
    assert result.verdict(result.cases[0]) == NO_VERDICT
    case = read_csv(tmp_path / "p" / "cases.csv")[0]
    assert (case["used"], case["mean_probability"], case["verdict"]) == ("0", "", NO_VERDICT)


@pytest.mark.slow
def test_onnx_runtime_gives_the_same_predictions(trained, tmp_path):
    run, cohort, _ = trained
    predict(run / "best.ckpt", [run / "split.csv"], tmp_path / "t")
    predict(run / "best.ckpt", [run / "split.csv"], tmp_path / "o", runtime="onnx")
    torch_rows, onnx_rows = read_csv(tmp_path / "t" / "predictions.csv"), read_csv(tmp_path / "o" / "predictions.csv")
    assert len(torch_rows) == len(onnx_rows)
    for a, b in zip(torch_rows, onnx_rows):
        assert a["path"] == b["path"]
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-5)


@pytest.mark.slow
def test_cli_predict_and_clear_errors(trained, tmp_path, capsys):
    run, cohort, _ = trained
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(run / "split.csv"),
                 "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "frames used" in out and (tmp_path / "p" / "cases.csv").is_file()
    bad = tmp_path / "notes.ckpt"
    bad.write_text("not a checkpoint")
    assert main(["predict", "--checkpoint", str(bad), str(run / "split.csv"), "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert "notes.ckpt" in err and "checkpoint" in err and "Traceback" not in err
    with pytest.raises(MucosaError, match="nowhere: not found"):
        collect_sources([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MucosaError, match="no images or videos"):
        collect_sources([tmp_path / "empty"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MucosaError, match="not an image, a video"):
        collect_sources([tmp_path / "notes.txt"])


def test_a_file_given_twice_for_one_case_counts_once_with_a_warning(tmp_path):
    """A folder or a file named twice: one source each (a file named on its own is its own case besides the
    folder's, as test_folder_is_one_case_and_a_single_image_its_own wants); another frame selection of the
    same video is not a repeat."""
    from PIL import Image

    (tmp_path / "exam").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("L", (8, 8)).save(tmp_path / "exam" / name)
    exam, single = tmp_path / "exam", tmp_path / "exam" / "a.png"
    with pytest.warns(MucosaWarning, match=r"3 of 6 files were given more than once \(e.g. .*a.png\)"):
        sources = collect_sources([exam, single, exam, single])
    assert [(s.path.name, s.case) for s in sources] == [("a.png", str(exam)), ("b.png", str(exam)),
                                                      ("a.png", str(single))]
    clip = tmp_path / "clip.avi"
    write_gray_clip(clip, [np.full((8, 8), 10 * i, np.uint8) for i in range(4)])
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,patient,frames\n{clip},active,P1,0-1\n{clip},active,P1,2-3\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MucosaWarning)
        assert [str(s.frames) for s in collect_sources([manifest])] == ["0-1", "2-3"]


def test_three_classes_give_one_column_per_class_and_argmax_verdicts(tmp_path):
    import torch
    from PIL import Image

    from mucosa.data.preparation import Preprocessing
    from mucosa.models.checkpoint import describe
    from mucosa.models.networks import ModelConfig, create_model

    torch.manual_seed(0)
    config = ModelConfig(size=32, num_classes=3)
    model = create_model(config)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    prep = Preprocessing(size=32, crop="none", quality_threshold=0.0)
    write_torch({"state_dict": state, "mucosa": describe(config, ["a", "b", "c"], prep, {}, {})},
                      tmp_path / "three.ckpt")
    folder = tmp_path / "case"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / f"{i}.png")
    result = predict(tmp_path / "three.ckpt", [folder], tmp_path / "p")
    rows = read_csv(tmp_path / "p" / "predictions.csv")
    probs = np.array([[float(r[f"probability_{c}"]) for c in "abc"] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert [r["label"] for r in rows] == ["abc"[k] for k in probs.argmax(1)]
    case = read_csv(tmp_path / "p" / "cases.csv")[0]
    assert case["verdict"] == "abc"[int(probs.mean(0).argmax())] == result.verdict(result.cases[0])
    assert float(case["mean_probability_b"]) == pytest.approx(probs[:, 1].mean(), abs=1e-5)


# --------------------------------------------------------------------------------------------------
# Unreadable files, and outputs written as one set
# --------------------------------------------------------------------------------------------------


def _case_with_a_broken_file(cohort: Path, folder: Path) -> tuple[list[Path], Path]:
    """Three good images of one patient and a broken PNG between them (in name order) in ``folder``."""
    import shutil

    images = sorted(p for p in (cohort / "images").rglob("*.png"))[:3]
    folder.mkdir(parents=True)
    good = [Path(shutil.copy(p, folder / f"{k}_{p.name}")) for k, p in zip("ace", images)]
    broken = folder / "b_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated in transfer")
    return good, broken


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.slow
def test_an_unreadable_file_is_reported_and_the_rest_predicted(trained, tmp_path, capsys):
    run, cohort, _ = trained
    good, broken = _case_with_a_broken_file(cohort, tmp_path / "case")
    out = tmp_path / "p"
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(tmp_path / "case"), "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.splitlines()
    assert [line for line in lines if "b_broken.png" in line and line.startswith("warning:")] != []
    assert "1 of 4 files unreadable" in captured.err
    assert not any(line.startswith("error:") for line in lines)
    assert [r["path"] for r in read_csv(out / "files.csv")] == [str(p) for p in good]  # only the files read
    assert [r["path"] for r in read_csv(out / "predictions.csv")] == [str(p) for p in good]
    (case,) = read_csv(out / "cases.csv")
    assert (case["files"], case["frames"]) == ("3", "3")


@pytest.mark.slow
def test_outputs_replace_an_earlier_result_whole_or_not_at_all(trained, tmp_path, monkeypatch):
    from mucosa.errors import ModelOutputError, MucosaWarning
    from mucosa.inference import batch as predict_module

    run, cohort, _ = trained
    good, broken = _case_with_a_broken_file(cohort, tmp_path / "case")
    out = tmp_path / "p"
    predict(run / "best.ckpt", [run / "split.csv"], out)  # an earlier, complete result
    earlier = _outputs(out)
    assert sorted(earlier) == ["cases.csv", "files.csv", "predictions.csv"]

    original, calls = predict_module._write_file, []

    def breaks_on_the_second_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ModelOutputError("the model gave NaN")
        return original(*args, **kwargs)

    monkeypatch.setattr(predict_module, "_write_file", breaks_on_the_second_file)
    with pytest.raises(ModelOutputError):
        predict(run / "best.ckpt", good, out)
    assert _outputs(out) == earlier and len(calls) == 2  # it failed midway, and nothing changed
    monkeypatch.undo()

    with pytest.warns(MucosaWarning, match="b_broken.png"), pytest.raises(MucosaError, match="none of the 1 file"):
        predict(run / "best.ckpt", [broken], out)
    assert _outputs(out) == earlier

    predict(run / "best.ckpt", [good[0]], out)  # a new result replaces all three files
    assert sorted(_outputs(out)) == sorted(earlier)
    for name, key in (("predictions.csv", "path"), ("files.csv", "path"), ("cases.csv", "case")):
        assert [r[key] for r in read_csv(out / name)] == [str(good[0])]


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_earlier_result(trained, tmp_path, monkeypatch, capsys):
    import errno
    import os

    from mucosa.inference import batch as predict_module

    run, cohort, _ = trained
    out = tmp_path / "p"
    predict(run / "best.ckpt", [run / "split.csv"], out)
    earlier = _outputs(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write() on a full disk names no file

    monkeypatch.setattr(predict_module, "_write_summaries", full)
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(run / "split.csv"), "--out", str(out)]) == 74
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "error" in line] == [
        f"error: cannot write {out}: No space left on device"]
    assert _outputs(out) == earlier


@pytest.mark.slow
def test_formula_like_case_and_file_names_are_neutralised(trained, tmp_path, monkeypatch):
    """CSV injection: a case folder and a file named like spreadsheet formulas come out as text."""
    run, cohort, _ = trained
    image = next((cohort / "images").rglob("*.png"))
    folder = tmp_path / "=HYPERLINK(x)"
    folder.mkdir()
    (folder / "@cmd.png").write_bytes(image.read_bytes())
    monkeypatch.chdir(tmp_path)  # relative paths: the case and path cells start with "="
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), "=HYPERLINK(x)", "--out", "p"]) == 0
    assert main(["explain", "--checkpoint", str(run / "best.ckpt"), "=HYPERLINK(x)/@cmd.png", "--out", "e"]) == 0
    for table in ("p/predictions.csv", "p/files.csv", "p/cases.csv", "e/explain.csv"):
        with open(tmp_path / table, newline="") as handle:
            cells = [cell for row in csv.reader(handle) for cell in row]
        assert any("HYPERLINK" in c or "@cmd" in c for c in cells), table
        assert not [c for c in cells if c[:1] in ("=", "+", "@") or (c[:1] == "-" and not c[1:2].isdigit())], table


# --- the atlas: unfamiliar recordings, its vote, similar cases -----------------------------------


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Folders of 8 images unlike the synthetic cohort: sine stripes and white noise."""
    root = tmp_path_factory.mktemp("foreign")
    return {kind: write_images(root / kind, foreign_frames(kind)) for kind in ("sine", "noise")}


def patient_folder(run, split="test"):
    """The image folder of the first patient of ``split`` (one case)."""
    return next(r for r in load_manifest(run / "split.csv").records if r.split == split).path.parent


def test_a_foreign_pattern_is_unfamiliar_and_a_held_out_case_keeps_its_class(atlas_run, foreign, tmp_path):
    held_out = patient_folder(atlas_run.run)
    result = predict(atlas_run.best, [held_out, foreign["sine"], foreign["noise"]], tmp_path / "p")
    verdicts = {c.case: result.verdict_and_share(c) for c in result.cases}
    assert verdicts[str(foreign["sine"])][0] == UNFAMILIAR and verdicts[str(foreign["sine"])][1] > 0.5
    verdict, share = verdicts[str(held_out)]
    assert verdict in verdict_names(result.classes) and share < 0.25  # a class, not unfamiliar
    assert [c.case for c in result.unfamiliar] == [str(foreign["sine"])] + (
        [str(foreign["noise"])] if verdicts[str(foreign["noise"])][0] == UNFAMILIAR else [])
    noise = result.cases[2].atlas.scores
    assert np.median(noise) > np.median(result.cases[0].atlas.scores)  # white noise: farther than the held-out case
    frames = read_csv(tmp_path / "p" / "predictions.csv")
    sine = [r for r in frames if r["case"] == str(foreign["sine"])]
    assert np.mean([r["unfamiliar"] == "1" for r in sine]) == verdicts[str(foreign["sine"])][1]
    assert all(float(r["unfamiliarity"]) > result.atlas.calibration.threshold for r in sine if r["unfamiliar"] == "1")
    cases = {r["case"]: r for r in read_csv(tmp_path / "p" / "cases.csv")}
    assert cases[str(foreign["sine"])]["verdict"] == UNFAMILIAR
    assert float(cases[str(held_out)]["unfamiliar_share"]) == pytest.approx(share, abs=1e-4)
    assert cases[str(held_out)]["atlas_vote"] in result.classes and 0.5 <= float(cases[str(held_out)]
                                                                                  ["atlas_vote_share"]) <= 1
    assert cases[str(held_out)]["nearest_atlas_frames"] == cases[str(held_out)]["nearest_atlas_frames_share"] == ""
    strange = cases[str(foreign["sine"])]  # unfamiliar: its vote is no second opinion, so not an atlas_vote
    assert strange["atlas_vote"] == strange["atlas_vote_share"] == "" and strange["nearest_atlas_frames"] in \
        result.classes and 0 < float(strange["nearest_atlas_frames_share"]) <= 1
    files = read_csv(tmp_path / "p" / "files.csv")
    assert {f["verdict"] for f in files if f["case"] == str(foreign["sine"])} <= {UNFAMILIAR, *result.classes,
                                                                                 *verdict_names(result.classes)}
    assert all((f["atlas_vote"] == "") == (f["verdict"] == UNFAMILIAR) != (f["nearest_atlas_frames"] == "")
               for f in files)
    similar = json.loads((tmp_path / "p" / "similar.json").read_text())
    assert similar["atlas"]["frames"] == len(result.atlas) and [c["case"] for c in similar["cases"]] == \
        [str(held_out), str(foreign["sine"]), str(foreign["noise"])]
    first = similar["cases"][0]
    assert first["verdict"] == verdict and len(first["similar"]) == 5
    assert all(s["label"] in result.classes and s["distance"] >= 0 for s in first["similar"])
    assert (tmp_path / "p" / first["similar"][0]["closest"][0]["thumbnail"]).is_file()
    strange = similar["cases"][1]  # the sine: why, and its vote and cases said to be no second opinion, not similar
    ratio = result.unfamiliarity(result.cases[1])
    assert first["reason"] is None and f"unfamiliarity ratio {ratio:.2f}, where above 1 is unfamiliar" in \
        strange["reason"] and f"{percent(verdicts[str(foreign['sine'])][1])} of its frames" in strange["reason"]
    held, sine = format_cases(result).splitlines()[:2]
    assert f"{held_out}: {verdict} (mean probability " in held and "; atlas vote " in held and "most similar" in held
    assert sine.startswith(f"{foreign['sine']}: unfamiliar (unfamiliarity ratio {ratio:.2f}; the network alone: mean "
                           "probability ") and "; nearest atlas frames, no second opinion: " in sine
    assert "; nearest, not similar: " in sine and "atlas vote" not in sine and "most similar" not in sine


def test_atlas_search_names_an_unfamiliar_recordings_cases_nearest_not_similar(atlas_run, foreign, tmp_path):
    held_out = patient_folder(atlas_run.run)
    found = search_atlas(atlas_run.run / "atlas", [held_out, foreign["sine"]], k=2)
    held, sine = found.cases
    assert held.unfamiliar is False and sine.unfamiliar is True and sine.ratio > 1  # predict's case rule
    printed = format_search(found)
    own, strange = printed.split(f"\n{foreign['sine']}: ")
    assert "; atlas vote " in own and "nearest" not in own and "unfamiliar: " not in own
    assert strange.startswith(f"{sine.used} of {sine.frames} frames used; {NO_SECOND_OPINION}: ")
    assert "atlas vote" not in strange
    assert f"\n  unfamiliar: {unfamiliar_reason(sine.unfamiliar_share, sine.ratio)}\n  {NOT_SIMILAR}:\n  1. " \
        in strange
    write_search(found, tmp_path / "s")
    rows = read_csv(tmp_path / "s" / "similar.csv")
    assert all((r["atlas_vote"] == "") == (r["query"] == str(foreign["sine"])) != (r["nearest_atlas_frames"] == "")
               for r in rows) and len(rows) == 4
    entries = json.loads((tmp_path / "s" / "similar.json").read_text())["cases"]
    assert [(e["unfamiliar"], e["reason"] is None) for e in entries] == [(False, True), (True, False)]


def test_a_manifest_names_the_patient_whose_own_frames_are_left_out(atlas_run, tmp_path):
    train = [r for r in load_manifest(atlas_run.run / "split.csv").records if r.split == "train"]
    patient = train[0].patient
    write_manifest([r for r in train if r.patient == patient], tmp_path / "one.csv")
    predict(atlas_run.best, [tmp_path / "one.csv"], tmp_path / "p")
    (case,) = json.loads((tmp_path / "p" / "similar.json").read_text())["cases"]
    assert case["case"] == patient and len(case["similar"]) == 5
    assert patient not in {s["patient"] for s in case["similar"]}  # in the atlas, but never its own match


def test_the_exit_status_says_unfamiliar_and_unreadable_wins(atlas_run, foreign, tmp_path, capsys):
    held_out = patient_folder(atlas_run.run)
    assert main(["predict", "--checkpoint", str(atlas_run.best), str(held_out), "--out", str(tmp_path / "a")]) == 0
    assert main(["predict", "--checkpoint", str(atlas_run.best), str(held_out), str(foreign["sine"]), "--out",
                 str(tmp_path / "b")]) == 4
    captured = capsys.readouterr()
    assert "1 of 2 cases unfamiliar" in captured.err and "similar cases: similar.json" in captured.out
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut")
    assert main(["predict", "--checkpoint", str(atlas_run.best), str(foreign["sine"]), str(broken), "--out",
                 str(tmp_path / "c")]) == 3


def test_without_an_atlas_one_warning_and_the_class_verdicts_as_before(atlas_run, foreign, tmp_path, capsys):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(atlas_run.best, alone / "best.ckpt")
    assert main(["predict", "--checkpoint", str(alone / "best.ckpt"), str(foreign["sine"]), "--out",
                 str(tmp_path / "p"), "--runtime", "torch"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warned == ["warning: best.ckpt has no atlas beside it: mucosa cannot tell whether these recordings are "
                      "unlike its training data (build one with mucosa atlas build)"]
    (case,) = read_csv(tmp_path / "p" / "cases.csv")
    assert case["verdict"] != UNFAMILIAR and case["unfamiliar_share"] == case["atlas_vote"] == ""
    assert not (tmp_path / "p" / "similar.json").exists()
    # the atlas named, beside another copy of the checkpoint; and none at all, without a warning
    assert main(["predict", "--checkpoint", str(alone / "best.ckpt"), str(foreign["sine"]), "--out",
                 str(tmp_path / "q"), "--atlas", str(atlas_run.run / "atlas")]) == 4
    assert main(["predict", "--checkpoint", str(atlas_run.best), str(foreign["sine"]), "--out", str(tmp_path / "r"),
                 "--no-atlas"]) == 0
    assert "warning:" not in capsys.readouterr().err
