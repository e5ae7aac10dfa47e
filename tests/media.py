"""Small media files written by tests, and the files a test finds on disk (importable from every test folder:
pytest's pythonpath)."""

import os
from pathlib import Path

import numpy as np


def write_video(path: Path, n: int = 30, size=(64, 48), fmt: str = "avi", codec: str = "mpeg4",
                rate: int = 25) -> np.ndarray:
    """Write a video whose frame i is uniformly gray at level 8*i; returns those levels."""
    import av

    levels = (np.arange(n) * 8) % 256
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for level in levels:
            rgb = np.full((size[1], size[0], 3), level, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return levels / 255.0


def write_gray_clip(path: Path, frames: list[np.ndarray], rate: int = 24) -> None:
    """A lossless gray AVI (FFV1) of uint8 frames (H, W)."""
    import av

    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("ffv1", rate=rate)
        stream.height, stream.width = frames[0].shape
        stream.pix_fmt = "gray"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode())


def files_under(root: Path, suffix: str = "") -> list[Path]:
    """The files below ``root`` ending in ``suffix``, listed while a live server may be deleting them:
    ``os.walk`` passes over a folder that goes between listing and entering it, where ``Path.rglob`` raises."""
    assert Path(root).is_dir(), f"{root} is not a folder: nothing to list"
    return [Path(top) / name for top, _, names in os.walk(root) for name in names if name.endswith(suffix)]


def foreign_frames(kind: str, n: int = 8, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    """uint8 gray frames (size, size) unlike the synthetic mucosa: ``sine`` stripes at several angles and
    periods, or white ``noise``."""
    if kind == "noise":
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(n)]
    yy, xx = np.mgrid[0:size, 0:size]
    return [((np.sin(xx / (1 + k % 4) + yy / 3) + 1) * 127).astype(np.uint8) for k in range(n)]


def write_images(folder: Path, frames: list[np.ndarray]) -> Path:
    """Each frame as a PNG image in ``folder`` (created): 0.png, 1.png..."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{k}.png")
    return folder
