import itertools
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from media import write_video
from mucosa.data.preparation import Preprocessing, iter_frames
from mucosa.data.readers import FrameSelection, media_in, read_image, runs_to_selections, to_gray
from mucosa.data.video import DecodeReport, Gap, iter_video_frames, scan_video, video_info
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
    data = np.tile(np.array([[0, 1000], [40000, 65535]], np.uint16), (4, 4))  # 8x8: the smallest readable
    tifffile.imwrite(tmp_path / "d.tif", data)
    out = read_image(tmp_path / "d.tif")
    np.testing.assert_allclose(out, data / 65535.0, rtol=1e-6)
    assert out[0, 1] > 0  # 16-bit precision is not truncated to 8 bits


def test_16bit_png(tmp_path):
    data = np.tile(np.array([[0, 300], [30000, 65535]], np.uint16), (4, 4))
    Image.fromarray(data).save(tmp_path / "d.png")
    np.testing.assert_allclose(read_image(tmp_path / "d.png"), data / 65535.0, rtol=1e-6)


def test_rgb_with_equal_channels_is_gray(tmp_path, gradient):
    g = (gradient * 255).astype(np.uint8)
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), g / 255.0, atol=1e-6)


def test_rgb_colour_uses_chosen_channel_or_luminance(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 50, 10
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png", "red")[0, 0] == pytest.approx(200 / 255)
    assert read_image(tmp_path / "c.png", "green")[0, 0] == pytest.approx(50 / 255)
    lum = (0.299 * 200 + 0.587 * 50 + 0.114 * 10) / 255
    assert read_image(tmp_path / "c.png")[0, 0] == pytest.approx(lum, abs=1e-5)
    assert read_image(tmp_path / "c.png", "luminance")[0, 0] == pytest.approx(lum, abs=1e-5)


def test_rgba_and_float_tiff(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 128, 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png")[1, 1] == pytest.approx(128 / 255)
    tifffile.imwrite(tmp_path / "f.tif", np.tile(np.array([[0.0, 0.5], [2.0, 4.0]], np.float32), (4, 4)))
    np.testing.assert_allclose(read_image(tmp_path / "f.tif"), np.tile([[0, 0.125], [0.5, 1.0]], (4, 4)))


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


# --- sizes, pixel limit, odd pixel values, multi-page TIFF -------------------------------------------------


def _png_header_only(path, width, height):
    """A PNG whose header declares width x height (no pixel data): what a decompression bomb looks like."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_huge_declared_tiff_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:  # declare 60000 x 60000 pixels (3.6 gigapixels)
        tif.pages[0].tags["ImageWidth"].overwrite(60000)
        tif.pages[0].tags["ImageLength"].overwrite(60000)
    with pytest.raises(UnreadableFileError, match=r"bomb.tif: image is 60000x60000 pixels .*limit of 250 megapixels"):
        read_image(path)


def test_pixel_limit_is_a_setting_for_every_format(tmp_path):
    _png_header_only(tmp_path / "bomb.png", 20000, 20000)  # Pillow's own limit refuses it before ours
    with pytest.raises(UnreadableFileError, match="bomb.png: image too large"):
        read_image(tmp_path / "bomb.png")
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "ok.png")
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((100, 100), np.uint8))
    for name in ("ok.png", "ok.tif"):
        assert read_image(tmp_path / name).shape == (100, 100)
        with pytest.raises(UnreadableFileError, match=f"{name}: image is 100x100 pixels.*limit of 0.005 megapixels"):
            read_image(tmp_path / name, max_pixels=5000)
    prep = Preprocessing(size=32, max_pixels=9999)  # the setting (config: preprocessing.max_pixels)
    with pytest.raises(UnreadableFileError, match="limit of 0.009999 megapixels"):
        list(iter_frames(tmp_path / "ok.png", prep))
    assert prep.cache_key() == Preprocessing(size=32).cache_key()  # a limit, not a change to the frames
    with pytest.raises(ConfigError, match="max_pixels"):
        Preprocessing(max_pixels="lots")


@pytest.mark.parametrize("shape", [(1, 1), (4, 30), (30, 7)])
def test_images_too_small_to_use_are_refused_naming_the_size(tmp_path, shape):
    Image.fromarray(np.full(shape, 90, np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(UnreadableFileError, match=f"small.png: image is {shape[1]}x{shape[0]} pixels; .*at least 8x8"):
        read_image(tmp_path / "small.png")


def test_tiny_video_is_refused_by_info_and_decoding(tmp_path):
    write_video(tmp_path / "tiny.avi", n=5, size=(4, 4))
    for read in (video_info, lambda p: list(iter_video_frames(p))):
        with pytest.raises(UnreadableFileError, match=r"tiny.avi: video frame is 4x4 pixels; .*at least 8x8"):
            read(tmp_path / "tiny.avi")


def test_non_finite_pixels_are_missing_not_a_blank_image(tmp_path):
    data = np.tile(np.linspace(0, 500, 16, dtype=np.float32), (16, 1))
    data[3, 4], data[5, 6] = np.inf, np.nan
    tifffile.imwrite(tmp_path / "inf.tif", data)
    with pytest.warns(MucosaWarning, match=r"inf.tif: 2 pixel value\(s\) are NaN or infinite"):
        out = read_image(tmp_path / "inf.tif")
    finite = np.isfinite(data)
    np.testing.assert_allclose(out[finite], data[finite] / 500.0, rtol=1e-6)  # scaled on the finite peak
    assert out[3, 4] == 0 and out[5, 6] == 0 and out.max() == 1.0
    tifffile.imwrite(tmp_path / "nan.tif", np.full((8, 8), np.nan, np.float32))
    with pytest.raises(UnreadableFileError, match="nan.tif: no pixel has a finite value"):
        read_image(tmp_path / "nan.tif")


def test_colour_float_image_with_infinity_keeps_its_luminance(tmp_path):
    rgb = np.zeros((8, 8, 3), np.float32)
    rgb[..., 0], rgb[0, 0, 1] = 0.5, -np.inf
    with pytest.warns(MucosaWarning, match="1 pixel value"):
        out = to_gray(rgb, "luminance", "rgb")
    assert out[4, 4] == pytest.approx(0.299 * 0.5) and out[0, 0] == pytest.approx(0.299 * 0.5)


def test_multi_page_tiff_is_refused_naming_its_pages(tmp_path):
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    tifffile.imwrite(path, np.full((16, 12), 200, np.uint8), append=True)
    with pytest.raises(UnreadableFileError, match=r"pages.tif: multi-page TIFF \(2 pages, 12x16, 8x8\)"):
        read_image(path)


def test_tiff_thumbnail_page_is_ignored(tmp_path):
    path = tmp_path / "thumb.tif"
    tifffile.imwrite(path, np.full((64, 48), 120, np.uint8))
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), append=True, subfiletype=1)  # reduced-resolution page
    out = read_image(path)
    assert out.shape == (64, 48) and out.mean() == pytest.approx(120 / 255)


# --- damaged MPEG-1 (the real pCLE format) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pcle_original(pcle_brain):
    """A real pCLE MPEG-1 video: its bytes, and its frames by index (decoded without any warning)."""
    path = pcle_brain / "glioblastoma" / "gbm-01.mpg"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = DecodeReport()
        frames = dict(iter_video_frames(path, report=report))
    assert not report.damaged and report.corrupt == 0 and report.decoded == len(frames) > 400
    assert report.estimated and abs(report.expected - len(frames)) <= 3  # duration x rate, about right
    return path.read_bytes(), frames


@pytest.mark.slow
def test_mpeg_cut_at_30_percent_warns_that_it_ends_early(pcle_original, tmp_path):
    data, original = pcle_original
    (tmp_path / "cut.mpg").write_bytes(data[: len(data) * 3 // 10])
    report = DecodeReport()
    with pytest.warns(MucosaWarning, match=r"cut.mpg: video is damaged — \d+ frames decoded; 1 decode error.*"
                      r"ends early") as caught:
        got = dict(iter_video_frames(tmp_path / "cut.mpg", report=report))
    assert len([w for w in caught if "damaged" in str(w.message)]) == 1  # once per file
    assert report.truncated and report.errors >= 1 and report.corrupt >= 2
    assert list(got) == list(range(len(got))) and 0.2 * len(original) < len(got) < 0.4 * len(original)
    last = max(got)
    np.testing.assert_allclose(got[last], original[last], atol=2 / 255)  # the damaged end frame was dropped


def test_mpeg_fragment_of_2kb_gives_no_frame_and_says_so(pcle_original, tmp_path):
    (tmp_path / "frag.mpg").write_bytes(pcle_original[0][:2048])
    with pytest.raises(UnreadableFileError, match="frag.mpg: no frame of the video could be decoded.*decode error"):
        list(iter_video_frames(tmp_path / "frag.mpg"))
    report = scan_video(tmp_path / "frag.mpg")
    assert report.decoded == 0 and report.damaged


def test_mpeg_corrupted_in_the_middle_keeps_the_true_frame_times(pcle_original, tmp_path):
    data, original = pcle_original
    middle = len(data) // 2
    junk = np.random.default_rng(0).bytes(100 * 1024)
    (tmp_path / "mid.mpg").write_bytes(data[:middle] + junk + data[middle + len(junk):])
    report = DecodeReport()
    with pytest.warns(MucosaWarning, match=r"mid.mpg: video is damaged — \d+ frames decoded of about \d+ "
                      r"expected; .*gap of \d\.\d\d s \(\d+ frames\) before frame \d+"):
        got = dict(iter_video_frames(tmp_path / "mid.mpg", report=report))
    indices = sorted(got)
    jumps = [(a, b) for a, b in itertools.pairwise(indices) if b != a + 1]
    assert len(jumps) == 1 and jumps[0][1] - jumps[0][0] > 10  # the lost second is a hole in the numbering
    assert [g.frame for g in report.gaps] == [jumps[0][1]] and report.gaps[0].seconds > 0.4
    assert indices[-1] == max(original)  # later frames are not stamped early
    for index in indices[-5:]:  # and they are the same pictures as in the intact file
        np.testing.assert_allclose(got[index], original[index], atol=2 / 255)
    assert report.decoded == len(got) < len(original) and report.missing >= jumps[0][1] - jumps[0][0] - 1
    assert scan_video(tmp_path / "mid.mpg").gaps == report.gaps  # check sees the same damage
    info = video_info(tmp_path / "mid.mpg")  # without decoding: frames span the last frame number, not the packets
    assert info.announced == 0 and info.frames >= indices[-1] + 1 and info.packets < info.frames


def test_decode_report_counts_and_describes():
    report = DecodeReport(decoded=90, errors=2, expected=100, gaps=[Gap(50, 8, 0.32)])
    assert report.corrupt == 3 and report.damaged and report.missing == 10
    text = report.describe()
    assert text.startswith("90 frames decoded of 100 announced; 2 decode error(s)")
    assert "gap of 0.32 s (8 frames) before frame 50" in text
    assert not DecodeReport(decoded=5, expected=5).damaged


def test_media_in_lists_images_and_videos_but_nothing_hidden(tmp_path):
    """What ``mucosa index``, ``predict`` and ``explain`` take from a folder: its images and videos at any
    depth, sorted; not other files, not hidden files, nothing in hidden folders (a notebook's checkpoints)."""
    names = ["b.png", "a/x.TIF", "a/deep/clip.mp4", "notes.txt", ".hidden.png", ".ipynb_checkpoints/b.png",
             "a/.cache/c.jpg"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()  # a folder, even with an image's suffix, is no image
    assert [p.relative_to(tmp_path).as_posix() for p in media_in(tmp_path)] == ["a/deep/clip.mp4", "a/x.TIF",
                                                                                   "b.png"]
    assert media_in(tmp_path / ".ipynb_checkpoints") == [tmp_path / ".ipynb_checkpoints" / "b.png"]


def test_arrays_obey_max_pixels_before_anything_is_converted():
    """A 20000x20000 array given to the Python API skipped max_pixels and ended in a raw MemoryError."""
    from mucosa.data.preparation import Preprocessing, iter_frames
    from mucosa.data.readers import array_frames

    huge = np.broadcast_to(np.uint8(0), (20000, 20000))  # a view: no memory is taken by the test itself
    with pytest.raises(UnreadableFileError, match=r"array: frame is 20000x20000 pixels \(400 megapixels\), more "
                                                  r"than the limit of 250 megapixels"):
        array_frames(huge)
    small = np.zeros((3, 100, 100), np.uint8)
    with pytest.raises(UnreadableFileError, match="array: frame is 100x100 pixels"):
        list(iter_frames(small, Preprocessing(size=32, max_pixels=64 * 64)))
    assert array_frames(np.zeros((100, 100), np.uint8))[0] is True  # within the limit: read as before
