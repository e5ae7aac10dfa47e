"""The frame cache checks an entry each time it reads one, and cleans up after killed runs."""

import json
import os
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from mucosa.data.cache import FrameCache
from mucosa.data.preparation import Preprocessing
from mucosa.errors import MucosaWarning

PREP = Preprocessing(size=16, crop="none", quality_threshold=0.0)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
    return path


def entry(cache: FrameCache, path):
    """The data and metadata files of ``path``'s entry."""
    return cache._paths(cache.key(path, PREP))


def damage_truncate(data, meta):
    data.write_bytes(data.read_bytes()[:100])


def damage_extend(data, meta):
    data.write_bytes(data.read_bytes() + b"\0" * 16)


def damage_garbage_json(data, meta):
    meta.write_bytes(b"\x00\xff not json")


def damage_missing_key(data, meta):
    values = json.loads(meta.read_text())
    del values["quality"]
    meta.write_text(json.dumps(values))


def damage_more_frames(data, meta):
    values = json.loads(meta.read_text())
    values["indices"], values["quality"] = [0, 1], [0.9, 0.9]
    meta.write_text(json.dumps(values))


def damage_remove_data(data, meta):
    data.unlink()


@pytest.mark.parametrize("damage", [damage_truncate, damage_extend, damage_garbage_json, damage_missing_key,
                                    damage_more_frames, damage_remove_data])
def test_a_damaged_entry_is_rebuilt_not_reused(tmp_path, image, damage):
    first = FrameCache(tmp_path / "cache")
    expected = np.array(first.get(image, PREP).frames)
    data, meta = entry(first, image)
    damage(data, meta)
    cache = FrameCache(tmp_path / "cache")
    with pytest.warns(MucosaWarning, match=r"frame.png is damaged \(.+\); preparing it again"):
        prepared = cache.get(image, PREP)
    np.testing.assert_array_equal(np.asarray(prepared.frames), expected)  # read back whole
    assert (cache.hits, cache.misses, cache.rebuilt) == (0, 1, 1)
    assert data.stat().st_size == 16 * 16
    again = FrameCache(tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sound entry is reused without a word
        np.testing.assert_array_equal(np.asarray(again.get(image, PREP).frames), expected)
    assert (again.hits, again.misses) == (1, 0)


def test_data_left_by_a_run_killed_before_its_metadata_is_prepared_again(tmp_path, image):
    cache = FrameCache(tmp_path / "cache")
    cache.get(image, PREP)
    data, meta = entry(cache, image)
    meta.unlink()
    data.write_bytes(b"\1" * 7)
    again = FrameCache(tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames = np.asarray(again.get(image, PREP).frames)
    assert frames.shape == (1, 16, 16) and again.misses == 1


def test_temporary_files_of_killed_runs_are_removed_live_ones_kept(tmp_path, image):
    root = tmp_path / "cache"
    (root / "ab").mkdir(parents=True)
    killed, live = root / "ab" / ".abc.u8.x1.tmp", root / "ab" / ".abd.u8.x2.tmp"
    old_style = root / "ab" / "tmpq1w2e3.tmp"
    for path in (killed, live, old_style):
        path.write_bytes(b"\0" * 1000)
    hour_ago = time.time() - 3600
    os.utime(killed, (hour_ago, hour_ago))
    os.utime(old_style, (hour_ago, hour_ago))
    FrameCache(root).get(image, PREP)
    assert not killed.exists() and not old_style.exists()
    assert live.exists()  # young: it may belong to a prepare running now
    assert not [p for p in root.rglob("*.tmp") if p != live]  # and the new entry left none
