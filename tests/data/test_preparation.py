import pickle

import numpy as np
import pytest
from PIL import Image

from media import write_video
from mucosa.cli import main
from mucosa.data.cache import FrameCache
from mucosa.data.frame_table import assemble
from mucosa.data.manifest import Cohort, Record, load_manifest
from mucosa.data.preparation import Preprocessing
from mucosa.errors import ConfigError
from mucosa.models.config import config_from_dict
from mucosa.models.dataset import CaseSampler, FrameDataset, case_sampler, frame_loader


def textured(size=64, seed=0):
    rng = np.random.default_rng(seed)
    base = np.kron(rng.random((size // 8, size // 8)), np.ones((8, 8)))
    return (0.2 + 0.6 * base).astype(np.float32)


@pytest.fixture
def small_cohort(tmp_path):
    records = []
    for i, label in enumerate(["active", "control", "active", "control"]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((textured(seed=i) * 255).astype(np.uint8)).save(path)
        records.append(Record(path.resolve(), label, f"P{i}"))
    write_video(tmp_path / "v.avi", n=12)
    records.append(Record((tmp_path / "v.avi").resolve(), "active", "P9"))
    return Cohort(records, ["control", "active"])


def test_cache_hit_on_second_read_returns_same_frames(small_cohort, tmp_path):
    cache = FrameCache(tmp_path / "cache")
    prep = Preprocessing(size=32, crop="none", quality_threshold=0.0)
    first = assemble(small_cohort, prep, cache)
    assert (cache.misses, cache.hits) == (5, 0)
    again = assemble(small_cohort, prep, FrameCache(tmp_path / "cache"))  # a new process would see this
    assert len(again) == len(first) == 4 + 12
    for i in range(len(first)):
        assert np.array_equal(first.frame(i), again.frame(i))
    assert isinstance(again.sources[4].frames, np.memmap)  # read back lazily, not into RAM
    cache2 = FrameCache(tmp_path / "cache")
    assemble(small_cohort, prep, cache2)
    assert (cache2.misses, cache2.hits) == (0, 5)
    # a different preprocessing is another key; the quality threshold is not (scores are stored)
    assemble(small_cohort, Preprocessing(size=16, crop="none"), cache2)
    assert cache2.misses == 5
    assemble(small_cohort, Preprocessing(size=32, crop="none", quality_threshold=0.9), cache2)
    assert cache2.misses == 5


def test_changed_file_content_misses_the_cache(small_cohort, tmp_path):
    cache = FrameCache(tmp_path / "cache")
    prep = Preprocessing(size=32, crop="none", quality_threshold=0.0)
    assemble(small_cohort, prep, cache)
    path = small_cohort.records[0].path
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    cache = FrameCache(tmp_path / "cache")
    table = assemble(small_cohort, prep, cache)
    assert cache.misses == 1 and table.frame(0).max() == 0


def test_quality_gate_drops_and_counts_black_frames(tmp_path):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "black.png")
    Image.fromarray((textured() * 255).astype(np.uint8)).save(tmp_path / "tissue.png")
    cohort = Cohort([Record((tmp_path / "black.png").resolve(), "active", "A"),
                     Record((tmp_path / "tissue.png").resolve(), "control", "B")], ["control", "active"])
    table = assemble(cohort, Preprocessing(size=32, crop="none", quality_threshold=0.3), FrameCache(tmp_path / "c"))
    assert len(table) == 1 and table.record(0).patient == "B"
    assert table.dropped["active"] == 1
    assert "dropped 1 of 2 frames" in table.summary()


def test_frame_dataset_and_memmap_pickling(small_cohort, tmp_path):
    table = assemble(small_cohort, Preprocessing(size=32, crop="none", quality_threshold=0.0),
                     FrameCache(tmp_path / "cache"))
    dataset = FrameDataset(table, np.arange(len(table)))
    image, label, position = dataset[5]
    assert tuple(image.shape) == (1, 32, 32) and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    assert label == 1 and position == 5
    clone = pickle.loads(pickle.dumps(dataset))  # what a data-loading worker receives
    assert clone.table.sources[4]._frames is None  # the memmap is reopened, not copied
    assert np.array_equal(clone[7][0].numpy(), dataset[7][0].numpy())


def test_case_sampler_limits_frames_per_case_and_varies_by_epoch():
    cases = np.array(["a"] * 10 + ["b"] * 3 + ["c"] * 6)
    sampler = CaseSampler(cases, per_case=4, seed=0)
    first = list(sampler)
    assert len(first) == len(sampler) == 4 + 3 + 4
    counts = {c: sum(cases[i] == c for i in first) for c in "abc"}
    assert counts == {"a": 4, "b": 3, "c": 4} and len(set(first)) == len(first)
    sampler.set_epoch(5)
    assert list(sampler) != first


def test_case_sampler_groups_a_table_by_file_and_patient_and_the_loader_uses_it(small_cohort, tmp_path):
    prep = Preprocessing(size=32, crop="none", quality_threshold=0.0)
    table = assemble(small_cohort, prep, FrameCache(tmp_path / "cache"))
    files = {(str(table.cohort.records[r].path), table.cohort.records[r].patient) for r in table.row}
    assert len(files) < len(table)  # the video gives several frames of one case
    assert case_sampler(table, np.arange(len(table)), per_case=0) is None  # every frame every epoch
    sampler = case_sampler(table, np.arange(len(table)), per_case=1, seed=0)
    assert len(sampler) == len(files)
    assert len({(str(table.cohort.records[table.row[i]].path)) for i in sampler}) == len(files)
    some = np.arange(2, len(table))  # the part of the table a run trains on
    assert len(case_sampler(table, some, per_case=1)) == len({table.row[i] for i in some})
    training = config_from_dict({"training": {"batch_size": 2}}).training
    loader = frame_loader(FrameDataset(table, np.arange(len(table))), training, sampler, shuffle=True,
                          drop_last=True)
    assert loader.sampler is sampler and len(loader) == len(files) // 2


def test_still_image_in_tiles_is_one_frame_per_tile(tmp_path):
    image = (np.random.default_rng(0).random((96, 128)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "cells.png")
    cohort = Cohort([Record((tmp_path / "cells.png").resolve(), "active", "A1")], ["control", "active"])
    cache = FrameCache(tmp_path / "cache")
    tiled = assemble(cohort, Preprocessing(size=16, crop="none", quality_threshold=0.0, tile=32), cache)
    whole = assemble(cohort, Preprocessing(size=16, crop="none", quality_threshold=0.0), cache)
    assert (len(tiled), len(whole), cache.misses) == (12, 1, 2)  # 3 x 4 tiles; tile is part of the cache key
    np.testing.assert_array_equal(tiled.frame_index, np.arange(12))
    from mucosa.data import fov as preprocess

    corner = preprocess.to_uint8(preprocess.resize(image[32:64, 96:128].astype(np.float32) / 255, 16))
    np.testing.assert_array_equal(tiled.frame(7), corner)  # tile 7: second row, fourth column


def test_stretch_evens_out_gain_between_images_and_keeps_tiles_of_one_image_alike(tmp_path):
    base = textured(size=64, seed=3)                    # in [0.2, 0.8]
    dim, bright = 0.05 + 0.25 * base, 0.1 + base        # the same tissue at two gains and backgrounds
    records = []
    for name, image in (("dim", dim), ("bright", bright)):
        Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(tmp_path / f"{name}.png")
        records.append(Record((tmp_path / f"{name}.png").resolve(), "active", name))
    cohort = Cohort(records, ["control", "active"])
    cache = FrameCache(tmp_path / "cache")
    raw = assemble(cohort, Preprocessing(size=64, crop="none", quality_threshold=0.0), cache)
    even = assemble(cohort, Preprocessing(size=64, crop="none", quality_threshold=0.0, normalize="stretch"), cache)
    assert cache.misses == 4  # normalize is part of the cache key
    def gap(frames):
        return np.abs(frames.frame(0).astype(int) - frames.frame(1).astype(int)).mean()

    assert gap(raw) > 60 and gap(even) < 3
    assert even.frame(0).min() == 0 and even.frame(0).max() == 255
    np.testing.assert_array_equal(raw.quality, even.quality)  # the gate judges recorded intensities
    # tiles share their image's levels: a tile's darkest pixel is not stretched to black on its own
    tiled = assemble(Cohort(records[:1], ["control", "active"]),
                     Preprocessing(size=32, crop="none", quality_threshold=0.0, tile=32, normalize="stretch"), cache)
    from mucosa.data import fov as preprocess

    levels = preprocess.stretch_levels(np.asarray(Image.open(tmp_path / "dim.png"), np.float32) / 255)
    expected = preprocess.to_uint8(preprocess.stretch(np.asarray(Image.open(tmp_path / "dim.png"),
                                                                 np.float32)[32:, :32] / 255, levels))
    np.testing.assert_array_equal(tiled.frame(2), expected)  # tile 2: second row, first column


def test_stretch_leaves_a_blank_field_alone():
    from mucosa.data import fov as preprocess

    blank = np.full((16, 16), 0.01, np.float32)
    assert preprocess.stretch_levels(blank) == (0.0, 1.0)
    np.testing.assert_array_equal(preprocess.stretch(blank, (0.0, 1.0)), blank)


def test_bad_preprocessing_values():
    with pytest.raises(ConfigError, match="crop"):
        Preprocessing(crop="circle")
    with pytest.raises(ConfigError, match="preprocessing.channel: expected one of .*, got 'pink'"):
        Preprocessing(channel="pink")
    with pytest.raises(ConfigError, match="quality_threshold"):
        Preprocessing(quality_threshold=2)
    with pytest.raises(ConfigError, match="preprocessing.tile: must be 0 .*, got 4"):
        Preprocessing(tile=4)
    with pytest.raises(ConfigError, match="preprocessing.normalize: expected one of none, stretch, got 'zscore'"):
        Preprocessing(normalize="zscore")


def test_cli_synth_and_prepare(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "syn"), "--patients", "3", "--per-patient", "2", "--size", "48"]) == 0
    manifest = tmp_path / "syn" / "manifest.csv"
    assert len(load_manifest(manifest).records) == 6
    assert main(["prepare", str(manifest), "--size", "32", "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "synthetic cohort" in out and "quality gate" in out and "0 rows reused, 6 prepared" in out
    assert main(["prepare", str(manifest), "--size", "32", "--cache", str(tmp_path / "cache"),
                 "--normalize", "stretch", "--tile", "24"]) == 0
    assert "0 rows reused, 6 prepared" in capsys.readouterr().out  # other settings, other cache entries
    assert main(["prepare", str(manifest), "--normalize", "zscore"]) == 2
    assert "normalize: expected one of none, stretch, got 'zscore'" in capsys.readouterr().err


def test_noise_is_dropped_from_videos_but_still_images_are_judged_on_exposure(tmp_path):
    import av

    rng = np.random.default_rng(0)
    noise = (rng.random((64, 64)) * 200 + 30).astype(np.uint8)  # bright, contrasted, no structure
    Image.fromarray(noise).save(tmp_path / "noise.png")
    with av.open(str(tmp_path / "noise.avi"), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.options = {"qscale": "1"}
        for _ in range(4):
            frame = av.VideoFrame.from_ndarray(np.stack([noise] * 3, -1), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    cohort = Cohort([Record((tmp_path / "noise.png").resolve(), "active", "A"),
                     Record((tmp_path / "noise.avi").resolve(), "control", "B")], ["control", "active"])
    with pytest.warns(UserWarning, match="quality gate .* dropped 4 of 5 frames"):
        table = assemble(cohort, Preprocessing(size=32, crop="none", quality_threshold=0.5),
                         FrameCache(tmp_path / "c"))
    assert len(table) == 1 and table.record(0).patient == "A"
    assert table.dropped == {"control": 4, "active": 0}


def test_overlapping_frame_ranges_count_each_frame_once_with_one_warning(tmp_path):
    from mucosa.data.readers import FrameSelection
    from mucosa.errors import MucosaWarning

    write_video(tmp_path / "v.avi", n=12)
    video = (tmp_path / "v.avi").resolve()
    rows = [Record(video, "active", "P1", frames=FrameSelection.parse(f)) for f in ("0-7", "4-11", "0-11")]
    cohort = Cohort(rows + [Record(video, "active", "P1", frames=FrameSelection.parse("9"))], ["control", "active"])
    prep = Preprocessing(size=32, quality_threshold=0.0, crop="none")
    with pytest.warns(MucosaWarning, match=r"^17 frame\(s\) lie in more than one row of .*each is counted once"):
        table = assemble(cohort, prep, FrameCache(tmp_path / "cache"))
    assert sorted(table.frame_index.tolist()) == list(range(12))  # 12 frames, not 8 + 8 + 12 + 1
    assert [int((table.row == r).sum()) for r in range(4)] == [8, 4, 0, 0]


def test_corrupt_packets_are_reported_with_the_files_they_came_from(small_cohort, tmp_path, monkeypatch):
    cache = FrameCache(tmp_path / "cache")
    real = cache.get

    def damaged(path, prep, frames):
        prepared = real(path, prep, frames)
        if path.suffix == ".avi":
            prepared.corrupt = 2
        return prepared

    monkeypatch.setattr(cache, "get", damaged)
    summary = assemble(small_cohort, Preprocessing(size=32, quality_threshold=0.0), cache).summary()
    assert summary.splitlines()[-1] == "  2 corrupt video packets skipped in v.avi (2)"
