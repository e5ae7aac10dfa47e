import csv
import time
from pathlib import Path

import numpy as np
import pytest

from media import write_gray_clip
from mucosa.cli import main
from mucosa.data.video import iter_video_frames, video_info
from mucosa.inference.batch import predict
from mucosa.inference.pytorch import TorchPredictor
from mucosa.inference.running_verdict import Smoother
from mucosa.inference.stream import FrameResult, StatusLine, stream
from mucosa.inference.verdict import GATHERING, NO_VERDICT, UNFAMILIAR, percent
from mucosa.models.checkpoint import load_checkpoint

QUICK = {"model": {"size": 32}, "preprocessing": {"fov_frames": 8},
         "split": {"mode": "patient", "test": 0.3, "val": 0.0, "seed": 1},
         "training": {"epochs": 1, "batch_size": 8, "threads": 1}}


@pytest.fixture(scope="module")
def checkpoint(train_tiny):
    """A tiny CNN-LSTM (32x32, quality gate 0.5, field of view from 8 frames) trained on synthetic images."""
    return train_tiny("stream", QUICK, patients=6, per_patient=4, seed=2).best


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return TorchPredictor(load_checkpoint(checkpoint))


@pytest.fixture(scope="module")
def brain_frames(pcle_brain):
    """The first 30 frames of a real pCLE video, gray (336, 464) in [0, 1]; all pass the quality gate."""
    return [f for _, f in iter_video_frames(pcle_brain / "glioblastoma" / "gbm-01.mpg", "0-29")]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_clip(path: Path, frames: list[np.ndarray], codec: str = "ffv1", rate: int = 24,
               garbage_at: int | None = None) -> None:
    """An AVI of float frames (H, W); FFV1 gray is lossless. ``garbage_at``: that frame's packet is junk."""
    import av

    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape
        stream.pix_fmt = "gray" if codec == "ffv1" else "yuvj420p"
        for i, frame in enumerate(frames):
            image = av.VideoFrame.from_ndarray(np.round(frame * 255).astype(np.uint8), format="gray")
            for packet in stream.encode(image):
                if i == garbage_at:
                    junk = av.Packet(b"\x12\x34 not a frame " * 16)
                    junk.pts, junk.dts, junk.time_base, junk.stream = packet.pts, packet.dts, packet.time_base, stream
                    packet = junk
                container.mux(packet)
        container.mux(stream.encode())


@pytest.mark.slow
@pytest.mark.realdata
def test_real_clip_gives_one_row_per_frame_equal_to_predict(checkpoint, predictor, pcle_colon_video, tmp_path):
    summary = stream(predictor, pcle_colon_video, window=5, timeline=tmp_path / "t.csv")
    rows = read_csv(tmp_path / "t.csv")
    frames = video_info(pcle_colon_video).frames
    assert [int(r["frame"]) for r in rows] == list(range(frames)) and summary.frames == frames
    assert all(r["verdict"] for r in rows) and summary.verdict != NO_VERDICT
    assert summary.used + summary.skipped == frames and summary.fps > 0
    # same field of view, same frames, same model as predict (and so as evaluate)
    predicted = predict(checkpoint, [pcle_colon_video], tmp_path / "p")
    reference = read_csv(tmp_path / "p" / "predictions.csv")
    for mine, theirs in zip(rows, reference):
        assert mine["skipped"] == ("0" if theirs["used"] == "1" else "1")
        if theirs["used"] == "1":
            assert float(mine["probability"]) == pytest.approx(float(theirs["probability"]), abs=1e-5)
    assert summary.verdict == predicted.verdict(predicted.cases[0])
    # smoothed = mean of the last 5 informative probabilities; the case mean covers all of them
    used = [float(r["probability"]) for r in rows if r["skipped"] == "0"]
    informative = [r for r in rows if r["skipped"] == "0"]
    for k, row in enumerate(informative):
        assert float(row["smoothed"]) == pytest.approx(np.mean(used[max(0, k - 4):k + 1]), abs=1e-5)
        assert float(row["case_probability"]) == pytest.approx(np.mean(used[:k + 1]), abs=1e-5)
    assert set(summary.stage_ms()) == {"decode", "prepare", "infer", "atlas", "smooth"}


@pytest.mark.slow
@pytest.mark.realdata
def test_black_frame_in_a_clip_is_skipped_and_counted(predictor, brain_frames, tmp_path):
    frames = list(brain_frames[:20])
    frames[10] = np.zeros_like(frames[10])
    write_clip(tmp_path / "clip.avi", frames)
    summary = stream(predictor, tmp_path / "clip.avi", timeline=tmp_path / "t.csv")
    rows = read_csv(tmp_path / "t.csv")
    assert len(rows) == 20
    assert [i for i, r in enumerate(rows) if r["skipped"] == "1"] == [10]
    assert rows[10]["probability"] == "" and float(rows[10]["quality"]) < 0.5
    assert rows[10]["smoothed"] == rows[9]["smoothed"]  # a skipped frame does not move the smoothing
    assert (summary.used, summary.skipped) == (19, 1)


@pytest.mark.slow
@pytest.mark.realdata
def test_corrupt_frame_mid_video_is_skipped_and_counted(predictor, brain_frames, tmp_path):
    write_clip(tmp_path / "bad.avi", brain_frames[:16], codec="mjpeg", garbage_at=8)
    with pytest.warns(UserWarning, match="corrupt"):
        summary = stream(predictor, tmp_path / "bad.avi", timeline=tmp_path / "t.csv")
    assert summary.corrupt == 1
    rows = read_csv(tmp_path / "t.csv")
    assert summary.frames == len(rows) == 15
    # frames after the lost one keep their place in the video: 9 is frame 9, not 8
    assert [int(r["frame"]) for r in rows] == [*range(8), *range(9, 16)]
    assert summary.verdict != NO_VERDICT


@pytest.mark.slow
@pytest.mark.realdata
def test_field_of_view_is_found_again_after_a_dark_start(predictor, brain_frames, tmp_path):
    dark = [np.zeros_like(brain_frames[0])] * 12  # more than the checkpoint's 8 field-of-view frames
    write_clip(tmp_path / "late.avi", dark + list(brain_frames[:12]))
    summary = stream(predictor, tmp_path / "late.avi", timeline=tmp_path / "t.csv")
    assert summary.fov.kind == "circle"
    rows = read_csv(tmp_path / "t.csv")
    assert all(r["skipped"] == "1" for r in rows[:12]) and all(r["skipped"] == "0" for r in rows[12:])
    assert rows[11]["verdict"] == NO_VERDICT and rows[12]["verdict"] != NO_VERDICT


@pytest.mark.slow
@pytest.mark.realdata
def test_annotated_video_and_realtime_pacing(predictor, brain_frames, tmp_path):
    import av

    write_clip(tmp_path / "clip.avi", brain_frames[:12], rate=24)
    start = time.perf_counter()
    summary = stream(predictor, tmp_path / "clip.avi", realtime=True, annotate=tmp_path / "out.mp4")
    assert time.perf_counter() - start >= 11 / 24  # paced at the source rate
    with av.open(str(tmp_path / "out.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == summary.frames == 12
    assert decoded[0].shape[:2] == (336, 464)
    source = np.round(brain_frames[5] * 255)
    assert np.abs(decoded[5][..., 1].astype(float) - source).mean() > 1  # something is burned in


def test_smoother_window_and_case_mean():
    smoother = Smoother(["control", "active"], window=2)
    assert smoother.verdict == NO_VERDICT and smoother.smoothed is None
    for p in (0.9, 0.1, 0.3):
        smoother.update(np.float32(p))
    assert smoother.smoothed == pytest.approx(0.2)
    assert smoother.case_probability == pytest.approx(13 / 30)
    assert smoother.verdict == "mucosal healing"
    multi = Smoother(["a", "b", "c"], window=3)
    multi.update(np.array([0.2, 0.5, 0.3]))
    assert multi.verdict == "b"


@pytest.mark.slow
def test_cli_stream_and_clear_errors(checkpoint, tmp_path, capsys):
    from scipy import ndimage

    rng = np.random.default_rng(0)
    frames = [np.clip(ndimage.gaussian_filter(rng.random((64, 64)), 1.5) * 4 - 1.5, 0, 1) for _ in range(10)]
    write_clip(tmp_path / "clip.avi", frames)
    assert main(["stream", str(tmp_path / "clip.avi"), "--checkpoint", str(checkpoint), "--window", "3",
                 "--timeline", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert "10 frames" in out and "verdict:" in out
    assert len(read_csv(tmp_path / "t.csv")) == 10
    bad = tmp_path / "weights.ckpt"
    bad.write_bytes(b"\x00" * 64)
    assert main(["stream", str(tmp_path / "clip.avi"), "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "weights.ckpt" in err and "Traceback" not in err
    (tmp_path / "image.png").write_bytes(b"")
    assert main(["stream", str(tmp_path / "image.png"), "--checkpoint", str(checkpoint)]) == 2
    assert "not a video" in capsys.readouterr().err
    assert main(["stream", str(tmp_path / "clip.avi"), "--checkpoint", str(checkpoint), "--window", "0"]) == 2
    assert "window" in capsys.readouterr().err


def test_three_class_timeline_has_a_column_per_class(tmp_path):
    import torch

    from mucosa.data.preparation import Preprocessing
    from mucosa.models.checkpoint import LoadedCheckpoint
    from mucosa.models.networks import ModelConfig, create_model

    torch.manual_seed(0)
    model = create_model(ModelConfig(size=32, num_classes=3)).eval()
    loaded = LoadedCheckpoint(model, model.config, ["a", "b", "c"],
                              Preprocessing(size=32, crop="none", quality_threshold=0.0), {}, tmp_path / "x.ckpt")
    rng = np.random.default_rng(1)
    write_clip(tmp_path / "clip.avi", [rng.random((48, 64)) for _ in range(6)])
    summary = stream(TorchPredictor(loaded), tmp_path / "clip.avi", window=2, timeline=tmp_path / "t.csv")
    rows = read_csv(tmp_path / "t.csv")
    probs = np.array([[float(r[f"probability_{c}"]) for c in "abc"] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose([float(rows[-1][f"smoothed_{c}"]) for c in "abc"], probs[-2:].mean(0), atol=1e-5)
    assert summary.verdict == rows[-1]["verdict"] == "abc"[int(probs.mean(0).argmax())]


def _untrained_three_class(tmp_path):
    import torch

    from mucosa.data.preparation import Preprocessing
    from mucosa.models.checkpoint import LoadedCheckpoint
    from mucosa.models.networks import ModelConfig, create_model

    torch.manual_seed(0)
    model = create_model(ModelConfig(size=32, num_classes=3)).eval()
    return LoadedCheckpoint(model, model.config, ["a", "b", "c"],
                            Preprocessing(size=32, crop="none", quality_threshold=0.0), {}, tmp_path / "x.ckpt")


class _BreaksAfter:
    """A predictor that fails at its ``n``-th frame, as a model giving NaN would."""

    def __init__(self, predictor, n: int) -> None:
        self.predictor, self.n, self.calls = predictor, n, 0

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def __call__(self, frames):
        from mucosa.errors import ModelOutputError

        self.calls += 1
        if self.calls == self.n:
            raise ModelOutputError("the model gave NaN")
        return self.predictor(frames)


def test_a_stream_that_fails_leaves_the_earlier_timeline_and_video_whole(tmp_path):
    from mucosa.errors import ModelOutputError

    predictor = TorchPredictor(_untrained_three_class(tmp_path))
    rng = np.random.default_rng(1)
    write_clip(tmp_path / "clip.avi", [rng.random((48, 64)) for _ in range(8)])
    timeline, video = tmp_path / "out" / "t.csv", tmp_path / "out" / "a.mp4"
    stream(predictor, tmp_path / "clip.avi", timeline=timeline, annotate=video, gradcam=False)
    earlier = timeline.read_bytes(), video.read_bytes()
    assert len(read_csv(timeline)) == 8
    with pytest.raises(ModelOutputError):
        stream(_BreaksAfter(predictor, 5), tmp_path / "clip.avi", timeline=timeline, annotate=video, gradcam=False)
    assert (timeline.read_bytes(), video.read_bytes()) == earlier
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mp4", "t.csv"]  # no temporary files


@pytest.mark.slow
def test_stream_outputs_are_checked_before_the_first_frame(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_clip(tmp_path / "clip.avi", [rng.random((48, 64)) for _ in range(4)])
    (tmp_path / "folder").mkdir()
    clip = str(tmp_path / "clip.avi")
    for option, path, message in (("--timeline", tmp_path / "folder", "is a folder, not a file"),
                                  ("--annotate", tmp_path / "folder", "is a folder, not a file"),
                                  ("--timeline", tmp_path / "clip.avi", "would overwrite the video"),
                                  ("--threshold", "1.5", "must be a number in [0, 1]"),
                                  ("--threads", "-2", "must be at least 1")):
        assert main(["stream", clip, "--checkpoint", str(checkpoint), option, str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi", "folder"]
    assert list((tmp_path / "folder").iterdir()) == []


# --- the atlas: unfamiliar frames live -----------------------------------------------------------


def test_smoother_counts_unfamiliar_frames_and_judges_the_case_by_its_median_score():
    smoother = Smoother(["control", "active"], window=2, case_threshold=0.5)
    assert smoother.unfamiliar_share is None and smoother.verdict == NO_VERDICT
    smoother.update(np.float32(0.9), False, 0.2)
    smoother.update(np.float32(0.8), True, 0.7)
    assert smoother.unfamiliar_share == 0.5 and smoother.case_verdict == "active inflammation"  # median 0.45
    assert smoother.gathering and smoother.verdict == GATHERING  # two frames: too few to judge live
    smoother = Smoother(["control", "active"], window=2, case_threshold=0.5)
    for flag, score in ((False, 0.2), (False, 0.6), (True, 0.9)):  # one frame of three past the frame threshold
        smoother.update(np.float32(0.8), flag, score)
    assert smoother.unfamiliar_share == pytest.approx(1 / 3) and smoother.case_verdict == UNFAMILIAR  # median 0.6
    smoother.update(np.float32(0.7), None)  # a frame the atlas cannot tell: unknown from then on
    assert smoother.unfamiliar_share is None and smoother.case_verdict == "active inflammation"
    assert not smoother.gathering and smoother.verdict == "active inflammation"  # nothing to wait for
    uncalibrated = Smoother(["control", "active"], window=2)  # no case threshold: it cannot tell
    uncalibrated.update(np.float32(0.8), True, 0.9)
    assert uncalibrated.unfamiliar_share == 1.0 and uncalibrated.verdict == "active inflammation"
    assert not uncalibrated.gathering


@pytest.mark.parametrize("textures", [False, True])
def test_the_running_verdict_waits_for_as_many_frames_as_score_an_atlas_case(textures):
    """A calibrated atlas's case threshold is set on case scores of CASE_CALIBRATION_FRAMES frames: live, a median
    of fewer says 'gathering frames', neither a class nor unfamiliar; from that many on, the case rule speaks."""
    from mucosa.inference.atlas import CASE_CALIBRATION_FRAMES

    scales = (0.5, 0.25) if textures else None
    for score, called in ((0.9, UNFAMILIAR), (0.1, "active inflammation")):  # far from the atlas, or close
        smoother = Smoother(["control", "active"], window=4, case_threshold=1.0 if textures else 0.5, scales=scales)
        for n in range(CASE_CALIBRATION_FRAMES):
            smoother.update(np.float32(0.8), score > 0.5, score, score / 2 if n % 8 == 0 else None)
            assert smoother.case_verdict == called  # the verdict of the frames so far, what a stream ends with
            assert smoother.verdict == (called if n == CASE_CALIBRATION_FRAMES - 1 else GATHERING), n
        smoother.update(np.float32(0.8), score > 0.5, score, None)
        assert smoother.verdict == called and not smoother.gathering


def test_the_status_line_shows_the_flag_and_the_running_share():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    result = FrameResult(7, 0.3, 0.9, False, np.float32(0.8), np.float32(0.8), np.float32(0.8), UNFAMILIAR, 3.0,
                         0.4, True, 0.75)
    StatusLine(terminal).show(result, 30.0, force=True)
    assert "p 0.800 unfamiliar | smoothed 0.800 | unfamiliar  75% | unfamiliar" in terminal.getvalue()


@pytest.fixture(scope="module")
def clips(atlas_run, tmp_path_factory):
    """Two lossless videos for the atlas run's model: a held-out test patient's 16 images, and sine stripes."""
    from PIL import Image

    from media import foreign_frames
    from mucosa.data.manifest import load_manifest

    root = tmp_path_factory.mktemp("clips")
    held_out = [r.path for r in load_manifest(atlas_run.run / "split.csv").records if r.split == "test"][:16]
    write_gray_clip(root / "held-out.avi", [np.asarray(Image.open(p).convert("L")) for p in held_out])
    write_gray_clip(root / "sine.avi", foreign_frames("sine", n=16))
    return root / "held-out.avi", root / "sine.avi"


def test_stream_marks_unfamiliar_frames_and_ends_as_predict_does(atlas_run, clips, tmp_path, capsys):
    """16 frames, fewer than score an atlas case: live, the verdict is gathering frames to the last frame, and the
    stream still ends with predict's verdict for the file."""
    held_out, sine = clips
    verdicts = []
    for clip, code in ((sine, 4), (held_out, 0)):
        timeline = tmp_path / f"{clip.stem}.csv"
        assert main(["stream", str(clip), "--checkpoint", str(atlas_run.best), "--timeline", str(timeline)]) == code
        rows = read_csv(timeline)
        flags = [int(r["unfamiliar"]) for r in rows]
        assert len(rows) == 16 and all(float(r["unfamiliarity"]) >= 0 for r in rows)
        for k, row in enumerate(rows):  # the running share; the verdict waits for more frames
            assert float(row["unfamiliar_share"]) == pytest.approx(np.mean(flags[:k + 1]), abs=1e-4)
            assert row["verdict"] == GATHERING
        printed = capsys.readouterr().out
        assert f"{percent(np.mean(flags))} of used frames unfamiliar" in printed
        last = printed[printed.rindex("verdict: "):]  # an unfamiliar end gives the probability as the network's alone
        old_words, new_words = "unfamiliar (mean probability" in last, "\nThe network alone, not a verdict" in last
        assert (not old_words and new_words) == (clip == sine)
        predicted = predict(atlas_run.best, [clip], tmp_path / clip.stem)
        verdicts.append(predicted.verdict(predicted.cases[0]))
        assert f"verdict: {verdicts[-1]}" in last
        ratio = predicted.unfamiliarity(predicted.cases[0])  # the running ratio ends as predict's
        assert float(rows[-1]["unfamiliarity_ratio"]) == pytest.approx(ratio, abs=1e-4)
        assert (ratio > 1) == (verdicts[-1] == UNFAMILIAR)
        frames = read_csv(tmp_path / clip.stem / "predictions.csv")
        assert [int(r["unfamiliar"]) for r in frames] == flags
    assert verdicts[0] == UNFAMILIAR and verdicts[1] not in (UNFAMILIAR, GATHERING)  # the held-out patient: a class
