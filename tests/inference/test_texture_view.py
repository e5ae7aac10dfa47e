"""The texture view: a tiled still image's tiles are textured alone, brightened as the whole field."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mucosa.data import fov as preprocess
from mucosa.data.preparation import Preprocessing, iter_frames, texture_image
from mucosa.inference.texture_view import TEXTURE_SIZE, description, field_texture, file_textures, frame_texture
from mucosa.models.texture import texture_vector


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """A 128x64 still: its left half fine noise, its right half a smooth ramp (two unlike textures)."""
    rng = np.random.default_rng(0)
    image = np.zeros((64, 128), np.uint8)
    image[:, :64] = rng.integers(0, 256, (64, 64))
    image[:, 64:] = np.linspace(40, 200, 64).astype(np.uint8)[None, :]
    path = tmp_path_factory.mktemp("still") / "halves.png"
    Image.fromarray(image).save(path)
    return path


def test_each_tile_of_a_tiled_still_has_its_own_texture(halves):
    tiled = Preprocessing(size=32, crop="none", quality_threshold=0.0, tile=64, normalize="stretch")
    frames = list(iter_frames(halves, tiled))
    assert [f.box for f in frames] == [(0, 0, 64, 64), (64, 0, 128, 64)]
    found = file_textures(halves, tiled, [0, 1])
    assert not np.allclose(found[0], found[1])  # noise and ramp: unlike
    for frame in frames:  # each is its tile's field, brightened with the whole field's levels
        field = preprocess.crop(frame.source, frame.fov)
        levels = preprocess.stretch_levels(field)
        x0, y0, x1, y1 = frame.box
        tile = preprocess.to_uint8(preprocess.resize(preprocess.stretch(field[y0:y1, x0:x1], levels), TEXTURE_SIZE))
        assert np.array_equal(texture_image(frame.source, frame.fov, tiled, TEXTURE_SIZE, frame.box), tile)
        assert np.allclose(frame_texture(frame, tiled), texture_vector(tile))
        assert np.allclose(found[frame.index], frame_texture(frame, tiled))


def test_an_untiled_still_is_textured_whole(halves):
    whole = Preprocessing(size=32, crop="none", quality_threshold=0.0)
    (frame,) = iter_frames(halves, whole)
    assert frame.box is None
    assert np.allclose(file_textures(halves, whole, [0])[0], field_texture(frame.source, frame.fov, whole))
    tiled = Preprocessing(size=32, crop="none", quality_threshold=0.0, tile=64, normalize="stretch")
    assert not np.allclose(file_textures(halves, tiled, [0])[0], file_textures(halves, whole, [0])[0])


def test_the_description_says_how_tiles_are_textured():
    assert "tile" in description()["still_tiles"]


def test_every_entry_point_textures_the_tiles_of_a_still_alike(atlas_run, tmp_path):
    """A tiled checkpoint and its atlas: ``mucosa predict`` and ``POST /v1/predict`` give one
    still image the same unfamiliarity ratio, its tiles textured alone (the service once textured the whole
    image)."""
    import torch

    from mucosa.data.manifest import load_manifest, write_manifest
    from mucosa.inference.atlas import load as load_atlas
    from mucosa.inference.atlas_build import build_atlas
    from mucosa.inference.batch import predict
    from mucosa.service.engine import Engine
    from serving import serving, upload

    data = torch.load(atlas_run.best, weights_only=True)
    data["mucosa"]["preprocessing"]["tile"] = 20  # the 40x40 images in four tiles
    checkpoint = tmp_path / "tiled" / "best.ckpt"
    checkpoint.parent.mkdir()
    torch.save(data, checkpoint)
    records = load_manifest(atlas_run.run / "split.csv").records
    write_manifest([r for r in records if r.split in ("train", "val")], tmp_path / "atlas.csv")
    build_atlas(checkpoint, tmp_path / "atlas.csv", checkpoint.parent / "atlas", parts=("train", "val"))
    assert load_atlas(checkpoint.parent / "atlas").judges_texture
    image = next(r.path for r in records if r.split == "test")
    predicted = predict(checkpoint, [image], tmp_path / "out")
    ratio = predicted.unfamiliarity(predicted.files[0])
    assert ratio is not None
    with serving(Engine(checkpoint, device="cpu")) as (client, _):
        verdict = upload(client, "/v1/predict", image).json()["verdict"]
    assert verdict["unfamiliarity_ratio"] == pytest.approx(ratio, abs=1e-4)
