import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi

from mucosa.cli import main
from mucosa.data.cache import FrameCache
from mucosa.data.preparation import FramePreparer, prepare_file
from mucosa.data.readers import read_image
from mucosa.data.synth import synthesize_cohort
from mucosa.errors import ConfigError, UnreadableFileError
from mucosa.evaluation import explain
from mucosa.inference import saliency
from mucosa.inference.pytorch import predict_frames
from mucosa.models.checkpoint import load_checkpoint
from mucosa.models.config import config_from_dict
from mucosa.models.networks import ModelConfig, create_model

SIZE = 48
# A model that learns the synthetic lesions in seconds on one busy core: crop "none" keeps the frames (and
# so the lesion masks) aligned with the model input; one thread, because two threads on two busy shared
# cores made a training step 10-20x slower; 6 epochs, because after 4 one training seed in four had not yet
# learned the lesions (mean P(active) 0.62 on inflamed test frames) while after 6 all of seeds 0-3 had.
TRAINING = {"model": {"kind": "cnn-lstm", "size": SIZE},
            "preprocessing": {"crop": "none", "quality_threshold": 0.0},
            "split": {"mode": "none", "val": 0.0},
            "training": {"epochs": 6, "batch_size": 16, "lr": 2e-3, "threads": 1, "seed": 0},
            "augmentation": {"probability": 0.0, "flip": True}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Best checkpoint of a cnn-lstm trained on 12 synthetic patients x 12 frames (seconds on one core)."""
    from mucosa.models.training import train

    root = tmp_path_factory.mktemp("explain")
    manifest = synthesize_cohort(root / "train", patients=12, per_patient=12, size=SIZE, seed=1)
    return train(manifest, config_from_dict(TRAINING), root / "run", cache=FrameCache(root / "cache"))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    """Other patients (another seed) with lesion masks; nothing of them was seen in training."""
    return synthesize_cohort(tmp_path_factory.mktemp("held-out"), patients=12, per_patient=5, size=SIZE, seed=2)


def untrained(kind: str, classes: int, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(ModelConfig(kind=kind, size=SIZE, num_classes=classes)).eval()


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)


@pytest.mark.slow
def test_grad_cam_points_at_the_lesions(trained, held_out):
    checkpoint = load_checkpoint(trained)
    cams, masks, probs = [], [], []
    for row in csv.DictReader(held_out.open()):
        if not row["mask"]:
            continue
        mask = np.asarray(Image.open(held_out.parent / row["mask"])) > 127  # (S, S)
        if not mask.any():  # an active patient's lesion-free frame
            continue
        image, _ = FramePreparer(checkpoint.preprocessing, still=True)(read_image(held_out.parent / row["path"]))
        cams.append(saliency.grad_cam(checkpoint.model, image, target=1))  # evidence for "active"
        masks.append(mask)
        probs.append(predict_frames(checkpoint.model, image[None])[0])
    assert len(cams) >= 20

    def hit_rate(maps, lesions) -> float:
        return float(np.mean([m[les].mean() > m[~les].mean() for m, les in zip(maps, lesions)]))

    rng = np.random.default_rng(0)
    noise = [ndi.gaussian_filter(rng.random((SIZE, SIZE)), 4) for _ in cams]  # smooth random maps
    found = hit_rate(cams, masks)
    # each map against another frame's lesions, less the part that overlaps its own (the patches are large
    # and lie mostly in the middle of the frame, so two frames' patches often overlap)
    others = [other & ~own for own, other in zip(masks, masks[1:] + masks[:1])]
    kept = [i for i, other in enumerate(others) if other.any()]
    mismatched = hit_rate([cams[i] for i in kept], [others[i] for i in kept])
    random = hit_rate(noise, masks)
    # Without localisation a map beats its lesion about half the time (the two baselines; the mismatched
    # one also absorbs any preference of the maps for some part of the frame). Seeds 0-3 of this training
    # gave 0.96-1.00 against baselines of 0.29-0.50; 0.75 is 2.5 standard deviations above chance for 24
    # frames, and the margin over both baselines must be at least 0.25.
    detail = (f"lesion hit rate {found:.2f}, mismatched masks {mismatched:.2f}, random maps {random:.2f}, "
              f"mean P(active) of inflamed frames {np.mean(probs):.2f}")
    assert found >= 0.75, detail
    assert found >= max(mismatched, random) + 0.25, detail


def test_feature_maps_have_every_layer_and_one_tile_per_channel(tmp_path):
    model = untrained("cnn-lstm", 2)
    maps = saliency.feature_maps(model, frame())
    expected = {"conv1": (32, 46, 46), "conv2": (32, 44, 44), "pool1": (32, 22, 22), "conv3": (64, 20, 20),
                "conv4": (128, 18, 18), "pool2": (128, 9, 9)}
    assert {k: v.shape for k, v in maps.items()} == expected
    assert list(maps) == list(expected)  # forward order
    assert min(float(maps[k].min()) for k in ("conv1", "conv2", "conv3", "conv4")) >= 0  # after the ReLU
    c2 = maps["conv2"]
    np.testing.assert_allclose(maps["pool1"], c2.reshape(32, 22, 2, 22, 2).max(axis=(2, 4)), rtol=1e-6)
    assert not model.training and all(not m._forward_hooks for m in model.modules())

    for name in ("conv1", "pool2"):
        c, h, w = maps[name].shape
        mosaic = explain.feature_grid(maps[name])
        labels, count = ndi.label(~np.isnan(mosaic))
        assert count == c
        assert {tuple(s.stop - s.start for s in box) for box in ndi.find_objects(labels)} == {(h, w)}
        # the PNG: one viridis block per channel, whole pixels per feature-map pixel, white between
        png = explain.save_feature_grid(name, maps[name], tmp_path / f"{name}.png")
        rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
        scale = max(1, -(-32 // h))
        labels, count = ndi.label(rgb.min(axis=2) < 240)
        sizes = ndi.sum_labels(np.ones(labels.shape), labels, range(1, count + 1))
        assert int((sizes == (h * scale) * (w * scale)).sum()) == c  # title glyphs are far smaller
    # large maps (conv1 at 300 px) are shrunk, still one block per channel
    png = explain.save_feature_grid("big", np.random.default_rng(0).random((5, 298, 250)), tmp_path / "big.png")
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    labels, count = ndi.label(rgb.min(axis=2) < 240)
    sizes = ndi.sum_labels(np.ones(labels.shape), labels, range(1, count + 1))
    assert int((sizes == 100 * 84).sum()) == 5 and rgb.shape[1] < 300


@pytest.mark.slow
@pytest.mark.parametrize("kind, classes", [("cnn-lstm", 2), ("cnn", 3)])
def test_grad_cam_works_for_both_heads_and_matches_monai(kind, classes):
    from monai.visualize import GradCAM

    model = untrained(kind, classes, seed=1)
    image = frame(1).astype(np.float32) / 255  # float input works as uint8 does
    for target in [None, *range(classes)]:
        cam = saliency.grad_cam(model, image, target)
        assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32 and np.isfinite(cam).all()
        assert cam.min() >= 0 and cam.max() in (0.0, 1.0)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())

    class Scores(torch.nn.Module):  # MONAI needs one score per class: (-z, z) for the single logit
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            z = self.inner(x)
            return torch.cat([-z, z], 1) if z.shape[1] == 1 else z

    reference = GradCAM(Scores(copy.deepcopy(model)), target_layers="inner.conv4")  # hooks stay on the copy
    x = torch.from_numpy(image)[None, None]
    offset, stride = saliency.layer_geometry(model, "conv4")
    assert (offset, stride) == (6.5, 2)
    for target in range(classes):
        raw = reference.compute_map(x, class_idx=target)[0, 0].detach().numpy()
        expected = saliency.upsample(raw, SIZE, offset, stride)
        expected = expected / expected.max() if expected.max() > 0 else expected
        np.testing.assert_allclose(saliency.grad_cam(model, image, target), expected, atol=1e-5)

    logits = model(x)
    called = int(logits[0, 0] >= 0) if classes == 2 else int(logits[0].argmax())
    np.testing.assert_array_equal(saliency.grad_cam(model, image), saliency.grad_cam(model, image, called))
    with pytest.raises(ConfigError, match="out of range"):
        saliency.grad_cam(model, image, classes)
    with pytest.raises(ConfigError, match="48x48"):
        saliency.grad_cam(model, np.zeros((40, 40), np.uint8))


@pytest.mark.slow
def test_gallery_picks_the_most_confident_of_each_group(trained, tmp_path):
    checkpoint = load_checkpoint(trained)
    frames = np.stack([frame(i) for i in range(8)])
    y_true = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    y_score = np.array([0.9, 0.7, 0.2, 0.1, 0.3, 0.8, 0.95, 0.6])
    chosen = explain.gallery(checkpoint, frames, y_true, y_score, 0.5, tmp_path, per_group=2)
    names = [(group, int(path.stem.split("_n")[1])) for group, path in chosen]
    assert names == [("true positive", 6), ("true positive", 0), ("true negative", 3), ("true negative", 4),
                     ("false positive", 5), ("false positive", 7), ("false negative", 2)]
    assert all(path.is_file() and path.stat().st_size > 1000 for _, path in chosen)

    three = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])
    checkpoint.model = untrained("cnn", 3)
    checkpoint.classes = ["a", "b", "c"]
    chosen = explain.gallery(checkpoint, frames[:4], np.array([0, 2, 2, 1]), three, None, tmp_path / "k")
    assert [(g, int(p.stem.split("_n")[1])) for g, p in chosen] == [("correct", 0), ("correct", 2),
                                                                    ("incorrect", 3), ("incorrect", 1)]


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    import av

    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for image in frames:
            rgb = np.repeat(image[..., None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.slow
def test_cli_explains_an_image_and_a_video(trained, held_out, tmp_path, capsys):
    rows = list(csv.DictReader(held_out.open()))
    image = held_out.parent / rows[0]["path"]
    frames = [np.asarray(Image.open(held_out.parent / r["path"])) for r in rows[:6]]
    video = write_video(tmp_path / "clip.avi", frames)

    assert main(["explain", str(image), str(video), "--checkpoint", str(trained), "--out", str(tmp_path / "a"),
                 "--top", "2"]) == 0
    index = list(csv.DictReader((tmp_path / "a" / "explain.csv").open()))
    assert [r["frame"] for r in index[:1]] == [""] and len(index) == 3
    picked = [int(r["frame"]) for r in index[1:]]
    assert picked == sorted(picked) and len(set(picked)) == 2 and max(picked) < 6
    # --top keeps the two most confident frames of the six, prepared as `mucosa prepare` would
    checkpoint = load_checkpoint(trained)
    prepared = prepare_file(video, checkpoint.preprocessing)
    assert prepared.indices.tolist() == list(range(6))
    p = predict_frames(checkpoint.model, prepared.frames)
    confidence = np.maximum(p, 1 - p)
    assert set(picked) == set(np.argsort(-confidence, kind="stable")[:2].tolist())
    for r in index:
        stem = image.stem if not r["frame"] else f"clip_f{int(r['frame']):04d}"
        names = r["files"].split(";")
        assert names == [f"{stem}_features_{layer}.png" for layer in
                         ("conv1", "conv2", "pool1", "conv3", "conv4", "pool2")] + [f"{stem}_gradcam.png"]
        assert all((tmp_path / "a" / n).is_file() for n in names)
        assert 0 <= float(r["probability"]) <= 1 and r["predicted"] in ("active", "control")
        assert r["predicted"] == ("active" if float(r["probability"]) >= 0.5 else "control")

    assert main(["explain", str(video), "--checkpoint", str(trained), "--out", str(tmp_path / "b"),
                 "--frames", "every:2"]) == 0
    assert [r["frame"] for r in csv.DictReader((tmp_path / "b" / "explain.csv").open())] == ["0", "2", "4"]
    assert "explained 3 frame(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_non_image_inputs_are_clear_errors(trained, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UnreadableFileError, match="notes.txt: not an image, a video or a folder of them"):
        explain.explain_paths(trained, [notes], tmp_path / "out")
    with pytest.raises(UnreadableFileError, match="broken.png: cannot read image"):
        explain.explain_paths(trained, [broken], tmp_path / "out")
    assert main(["explain", str(notes), "--checkpoint", str(trained), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "Traceback" not in err
    assert main(["explain", str(broken), "--checkpoint", str(trained), "--out", str(tmp_path / "o"),
                 "--frames", "bad"]) == 2
    assert "--frames" in capsys.readouterr().err


def test_a_missing_checkpoint_is_named_before_any_folder_is_walked(tmp_path, monkeypatch, capsys):
    """The checkpoint is read first: a wrong --checkpoint is the error, without first walking the inputs."""
    walked = []
    monkeypatch.setattr(explain, "_inputs", lambda *a: walked.append(a) or [])
    assert main(["explain", str(tmp_path), "--checkpoint", str(tmp_path / "gone.ckpt"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "gone.ckpt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not walked and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_folder_explains_each_image_and_video_in_it_once(trained, held_out, tmp_path, capsys):
    rows = list(csv.DictReader(held_out.open()))
    folder = tmp_path / "exam"
    (folder / "region").mkdir(parents=True)
    for i, row in enumerate(rows[:2]):
        (folder / "region" / f"image{i}.png").write_bytes((held_out.parent / row["path"]).read_bytes())
    write_video(folder / "clip.avi", [np.asarray(Image.open(held_out.parent / r["path"])) for r in rows[:3]])
    (folder / "notes.txt").write_text("skipped: not an image")
    (folder / ".hidden.png").write_bytes(b"skipped: hidden")
    (tmp_path / "empty").mkdir()

    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "image0.png").write_bytes((folder / "region" / "image0.png").read_bytes())

    # the folder and one of its files, spelled another way: each file once; hidden folders skipped
    again = folder / "region" / ".." / "clip.avi"
    for _ in range(2):  # the second run must not explain the figures the first wrote inside the folder
        assert main(["explain", str(folder), str(again), "--checkpoint", str(trained),
                     "--out", str(folder / "explained"), "--top", "1"]) == 0
        index = list(csv.DictReader((folder / "explained" / "explain.csv").open()))
        assert [(Path(r["input"]).name, r["frame"] != "") for r in index] == [
            ("clip.avi", True), ("image0.png", False), ("image1.png", False)]
    # a still named like a video frame's figures gets names of its own
    still = folder / f"clip_f{int(index[0]['frame']):04d}.png"
    still.write_bytes((folder / "region" / "image0.png").read_bytes())
    assert main(["explain", str(folder / "clip.avi"), str(still), "--checkpoint", str(trained),
                 "--out", str(tmp_path / "c"), "--top", "1"]) == 0
    named = [r["files"] for r in csv.DictReader((tmp_path / "c" / "explain.csv").open())]
    assert len(set(";".join(named).split(";"))) == 14 == len(list((tmp_path / "c").glob("*.png")))

    for given, message in ((tmp_path / "empty", "empty: no images or videos in this folder"),
                           ("", "an empty path was given"), (tmp_path / "gone", "gone: not found"),
                           (folder / "notes.txt", "notes.txt: not an image, a video or a folder of them")):
        assert main(["explain", str(given), "--checkpoint", str(trained), "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_tiled_model_explains_the_most_confident_tiles_of_an_image(trained, tmp_path):
    from dataclasses import replace

    loaded = load_checkpoint(trained)
    tiled = replace(loaded, preprocessing=loaded.preprocessing.replace(crop="none", tile=20))
    image = (np.random.default_rng(1).random((40, 60)) * 255).astype(np.uint8)  # 2 x 3 tiles of 20 px
    Image.fromarray(image).save(tmp_path / "cells.png")
    results = explain.explain_paths(tiled, [tmp_path / "cells.png"], tmp_path / "out", top=2)
    parts = FramePreparer(tiled.preprocessing, still=True).still(read_image(tmp_path / "cells.png"))
    p = predict_frames(tiled.model, np.stack([frame for frame, _ in parts]))
    confident = np.argsort(-np.maximum(p, 1 - p), kind="stable")[:2]
    assert sorted(r.frame for r in results) == sorted(confident.tolist())
    assert all((tmp_path / "out" / f"cells_t{r.frame:04d}_gradcam.png").is_file() for r in results)


def black_cornered(path: Path, side: int = 160, seed: int = 3) -> Path:
    """A circular field of tissue-like texture on black, as a pCLE frame: its corners are black."""
    rng = np.random.default_rng(seed)
    tissue = ndi.gaussian_filter(rng.random((side, side)), 1.5)
    tissue = (tissue - tissue.min()) / np.ptp(tissue)
    yy, xx = np.mgrid[:side, :side]
    disc = (xx + 0.5 - side / 2) ** 2 + (yy + 0.5 - side / 2) ** 2 <= (0.45 * side) ** 2
    Image.fromarray(np.round(np.where(disc, 0.15 + 0.85 * tissue, 0) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.slow  # the module's trained model: 6 s of training when it runs first
def test_grad_cam_has_no_heat_outside_the_field_of_view(trained, tmp_path, monkeypatch):
    from dataclasses import replace

    from mucosa.data.fov import field_mask

    loaded = load_checkpoint(trained)
    disc = replace(loaded, preprocessing=loaded.preprocessing.replace(crop="disc"))  # the circle kept whole
    path = black_cornered(tmp_path / "cle.png")
    (prepared,) = list(explain.iter_frames(path, disc.preprocessing))
    field = field_mask(prepared.fov, prepared.image.shape)
    assert prepared.fov.kind == "disc" and not field[0, 0] and not field[-1, -1] and field[SIZE // 2].any()
    outside = ~field
    bare = saliency.grad_cam(disc.model, prepared.image, target=1)
    assert bare[outside].max() > 0.05  # unmasked, the model's heat reaches into the black corners...
    masked = saliency.grad_cam(disc.model, prepared.image, target=1, field=field)
    assert masked[outside].max() == 0 and masked.max() == 1.0  # ...masked, none there; scaled on the tissue
    with pytest.raises(ConfigError, match="mask must be 48x48"):
        saliency.grad_cam(disc.model, prepared.image, field=field[:10])

    drawn = []  # and `mucosa explain` draws the masked map
    monkeypatch.setattr(explain, "save_overlay", lambda frame, cam, *args: drawn.append(cam) or tmp_path / "x.png")
    explain.explain_paths(disc, [path], tmp_path / "out")
    (cam,) = drawn
    assert cam[outside].max() == 0 and cam.max() > 0
