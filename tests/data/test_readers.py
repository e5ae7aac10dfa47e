import warnings

import numpy as np
import pytest
import tifffile
from media import write_video
from PIL import Image

from mucosa.data.readers import (
    FrameSelection,
    iter_video_frames,
    read_image,
    runs_to_selections,
    to_gray,
    video_info,
)
from mucosa.errors import ConfigError, MucosaWarning, UnreadableFileError


@pytest.fixture
def gradient():
    return np.tile(np.linspace(0, 1, 40, dtype=np.float32), (30, 1))  # (30, 40)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_8bit_formats_read_as_gray_unit_float(tmp_path, gradient, suffix):
    path = tmp_path / f"g{suffix}"
    Image.fromarray((gradient * 255).round().astype(np.uint8)).save(path)
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == (30, 40)
    tolerance = 0.03 if suffix == ".jpg" else 1e-6
    np.testing.assert_allclose(out, (gradient * 255).round() / 255, atol=tolerance)


def test_16bit_tiff_keeps_full_range(tmp_path):
    data = np.array([[0, 1000], [40000, 65535]], np.uint16)
    tifffile.imwrite(tmp_path / "d.tif", data)
    out = read_image(tmp_path / "d.tif")
    np.testing.assert_allclose(out, data / 65535.0, rtol=1e-6)
    assert out[0, 1] > 0  # 16-bit precision is not truncated to 8 bits


def test_16bit_png(tmp_path):
    data = np.array([[0, 300], [30000, 65535]], np.uint16)
    Image.fromarray(data).save(tmp_path / "d.png")
    np.testing.assert_allclose(read_image(tmp_path / "d.png"), data / 65535.0, rtol=1e-6)


def test_rgb_with_equal_channels_is_gray(tmp_path, gradient):
    g = (gradient * 255).astype(np.uint8)
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), g / 255.0, atol=1e-6)


def test_rgb_colour_uses_chosen_channel_or_luminance(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 50, 10
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png", "red")[0, 0] == pytest.approx(200 / 255)
    assert read_image(tmp_path / "c.png", "green")[0, 0] == pytest.approx(50 / 255)
    lum = (0.299 * 200 + 0.587 * 50 + 0.114 * 10) / 255
    assert read_image(tmp_path / "c.png")[0, 0] == pytest.approx(lum, abs=1e-5)
    assert read_image(tmp_path / "c.png", "luminance")[0, 0] == pytest.approx(lum, abs=1e-5)


def test_rgba_and_float_tiff(tmp_path):
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 128, 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png")[1, 1] == pytest.approx(128 / 255)
    tifffile.imwrite(tmp_path / "f.tif", np.array([[0.0, 0.5], [2.0, 4.0]], np.float32))
    np.testing.assert_allclose(read_image(tmp_path / "f.tif"), [[0, 0.125], [0.5, 1.0]])


def test_bad_images_name_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UnreadableFileError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(UnreadableFileError, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(UnreadableFileError, match="stack.tif.*multi-page"):
        read_image(tmp_path / "stack.tif")
    with pytest.raises(ConfigError, match="channel 'purple'"):
        to_gray(np.zeros((2, 2, 3)), "purple")


@pytest.mark.parametrize("spec, total, expected", [
    ("all", 5, [0, 1, 2, 3, 4]), ("every:2", 5, [0, 2, 4]), ("1-3", 10, [1, 2, 3]),
    ("2-9:3", 20, [2, 5, 8]), ("4", 10, [4]), ("3-100", 5, [3, 4]), ("", 2, [0, 1])])
def test_frame_selection(spec, total, expected):
    selection = FrameSelection.parse(spec)
    assert selection.indices(total) == expected
    assert all(i in selection for i in expected)
    assert FrameSelection.parse(str(selection)) == selection  # round trip through the manifest text


@pytest.mark.parametrize("spec", ["every:0", "5-2", "abc", "1-2-3", "every:x", "-1"])
def test_bad_frame_selection(spec):
    with pytest.raises(ValueError, match="all, every:K"):
        FrameSelection.parse(spec)


def test_runs_to_selections_round_trip():
    frames = [0, 1, 2, 5, 9, 10]
    selections = runs_to_selections(frames)
    assert [str(s) for s in selections] == ["0-2", "5", "9-10"]
    assert sorted(i for s in selections for i in s.indices(100)) == frames


def test_video_decoding_and_sampling(tmp_path):
    levels = write_video(tmp_path / "v.avi", n=30)
    info = video_info(tmp_path / "v.avi")
    assert info.frames == 30 and (info.width, info.height) == (64, 48) and info.fps == pytest.approx(25)
    got = list(iter_video_frames(tmp_path / "v.avi", "every:5"))
    assert [i for i, _ in got] == [0, 5, 10, 15, 20, 25]
    for index, frame in got:
        assert frame.shape == (48, 64) and frame.dtype == np.float32
        assert frame.mean() == pytest.approx(levels[index], abs=0.03)
    assert [i for i, _ in iter_video_frames(tmp_path / "v.avi", "3-5")] == [3, 4, 5]


def test_truncated_video_yields_its_frames_and_warns(tmp_path):
    write_video(tmp_path / "v.avi", n=40)
    data = (tmp_path / "v.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) * 2 // 3])
    with pytest.warns(MucosaWarning, match="cut.avi: video is damaged"):
        got = [i for i, _ in iter_video_frames(tmp_path / "cut.avi")]
    assert 5 < len(got) < 40 and got == list(range(len(got)))


def test_stopping_early_is_not_reported_as_damage(tmp_path):
    write_video(tmp_path / "v.avi", n=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames = iter_video_frames(tmp_path / "v.avi")
        next(frames)
        frames.close()


def test_not_a_video_is_a_clear_error(tmp_path):
    (tmp_path / "fake.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(UnreadableFileError, match="fake.mp4"):
        list(iter_video_frames(tmp_path / "fake.mp4"))


def test_real_pcle_video_is_gray(pcle_brain):
    path = pcle_brain / "glioblastoma" / "gbm-01.mpg"
    (index, frame), = list(iter_video_frames(path, "100"))
    assert index == 100 and frame.shape == (336, 464)
    assert 0.05 < frame.mean() < 0.8
