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


def test_a_field_of_one_tile_is_textured_as_the_model_sees_it(tmp_path):
    """A 48x48 field cut in 32-pixel tiles is one tile, its centred 32x32 (the model sees nothing else): that
    tile is textured, not the whole field (a dark band the model never sees would change the texture)."""
    rng = np.random.default_rng(1)
    image = rng.integers(60, 256, (48, 48)).astype(np.uint8)
    image[:, :8] = 0  # outside the tile
    path = tmp_path / "one-tile.png"
    Image.fromarray(image).save(path)
    tiled = Preprocessing(size=32, crop="none", quality_threshold=0.0, tile=32, normalize="stretch")
    (frame,) = iter_frames(path, tiled)
    assert frame.box == (8, 8, 40, 40)
    assert np.array_equal(texture_image(frame.source, frame.fov, tiled, tiled.size, frame.box), frame.image)
    tile = texture_image(frame.source, frame.fov, tiled, TEXTURE_SIZE, (8, 8, 40, 40))
    assert np.allclose(file_textures(path, tiled, [0])[0], texture_vector(tile))
    small = Preprocessing(size=32, crop="none", quality_threshold=0.0, tile=64)  # the field smaller than a tile
    (whole,) = iter_frames(path, small)
    assert whole.box == (0, 0, 48, 48)
    assert np.allclose(frame_texture(whole, small), field_texture(whole.source, whole.fov, small))


@pytest.mark.parametrize("crop", ["none", "auto", "disc", [40, 10, 170, 140]])
def test_each_frame_textured_at_the_model_size_is_the_model_frame(tmp_path, crop):
    """Whatever the crop, brightness and tiling, a still's frame textured at the model's size is the model's
    input, pixel for pixel: the texture view sees what the model sees, at another size."""
    rng = np.random.default_rng(2)
    image = rng.integers(70, 230, (150, 230)).astype(np.uint8)
    yy, xx = np.ogrid[:150, :230]
    image[(yy - 75) ** 2 + (xx - 115) ** 2 > 66 ** 2] = 0  # a circular field, non-square image
    path = tmp_path / "disc.png"
    Image.fromarray(image).save(path)
    for tile in (0, 40, 64, 500):  # several tiles, one tile in a larger field, a field smaller than a tile
        for normalize in ("none", "stretch"):
            prep = Preprocessing(size=24, crop=crop, quality_threshold=0.0, tile=tile, normalize=normalize)
            for frame in iter_frames(path, prep):
                made = texture_image(frame.source, frame.fov, prep, prep.size, frame.box)
                assert np.array_equal(made, frame.image), (tile, normalize, frame.index, frame.box)


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


def test_the_service_keeps_the_box_of_a_field_of_one_tile(atlas_run, tmp_path):
    """A tiled checkpoint, a 40x40 image in 32-pixel tiles: one tile, its centred 32x32. The service keeps that
    box for the frame (Grad-CAM is laid over it), as predict cuts it."""
    import torch

    from mucosa.data.manifest import load_manifest
    from mucosa.service.engine import Engine
    from mucosa.service.framestore import FrameStore

    data = torch.load(atlas_run.best, weights_only=True)
    data["mucosa"]["preprocessing"]["tile"] = 32
    checkpoint = tmp_path / "best.ckpt"
    torch.save(data, checkpoint)
    image = load_manifest(atlas_run.run / "split.csv").records[0].path
    store = FrameStore(tmp_path / "frames", 40)
    (row,) = Engine(checkpoint, device="cpu").frames([image], store=store)
    assert store.box(0) == (4, 4, 36, 36) == store.field(0)[1]
