"""The frames of one case on disk: what the viewer shows and what the model saw.

Per frame the store keeps

- a display JPEG of the source frame (gray, at most ``MAX_DISPLAY`` pixels on its longer side), which the
  viewer plays back as the video (browsers cannot play MPEG-1 pCLE recordings);
- the model's input frame (uint8, S×S), appended to one raw file, so Grad-CAM can be computed later on
  exactly what the model saw;
- the box of the source frame the model frame was cut from, in display pixels, where the heat map goes;
- what the engine gives as the frame's field (its field of view), kept as it is, to mask the heat map.

Once the case is read, :meth:`FrameStore.save_index` writes the boxes and fields beside the frames
(``index.json``, atomically), and :meth:`FrameStore.load` finds them again: in a later server process, or in
another server sharing the store.

Only NumPy and Pillow are used here: it knows nothing about the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from mucosa.atomic import write_text
from mucosa.data.fov import FieldOfView

log = logging.getLogger(__name__)

MAX_DISPLAY = 1024  # longer side of a display frame, in pixels
JPEG_QUALITY = 85
INDEX = "index.json"


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """A gray frame (H, W), float in [0, 1] or uint8, as uint8."""
    if frame.dtype == np.uint8:
        return frame
    return np.round(np.clip(np.nan_to_num(frame), 0.0, 1.0) * 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """A uint8 gray (H, W) or RGB (H, W, 3) array as PNG or JPEG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {"compress_level": 3}
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    """PNG or JPEG bytes → uint8 array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def _display(frame: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Shrink a large frame for display; the box follows."""
    from PIL import Image

    image = to_uint8(frame)
    height, width = image.shape
    scale = MAX_DISPLAY / max(height, width)
    if scale >= 1:
        return image, box
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    return small, tuple(int(round(v * scale)) for v in box)


class FrameStore:
    """Display JPEGs, model frames and boxes of one case's frames, numbered as in its timeline."""

    def __init__(self, folder: Path, size: int) -> None:
        self.folder, self.size = Path(folder), size
        (self.folder / "display").mkdir(parents=True, exist_ok=True)
        (self.folder / "gradcam").mkdir(exist_ok=True)
        self._model_path = self.folder / "model.u8"
        self._positions: dict[int, int] = {}
        self._boxes: dict[int, tuple[int, int, int, int]] = {}
        self._fields: dict[int, object] = {}
        self._lock = threading.Lock()

    def add(self, number: int, frame: np.ndarray, model_frame: np.ndarray, box: tuple[int, int, int, int],
            field: object = None) -> None:
        """Store frame ``number``: the source frame (H, W), its model frame (S, S) uint8, its crop box and its
        ``field`` (kept as given)."""
        display, display_box = _display(frame, box)
        self.display_path(number).write_bytes(encode(display, "JPEG"))
        with self._lock, open(self._model_path, "ab") as handle:
            handle.write(np.ascontiguousarray(model_frame, np.uint8).tobytes())
            self._positions[number] = len(self._positions)
            self._boxes[number] = display_box
            self._fields[number] = field

    def __contains__(self, number: int) -> bool:
        return number in self._positions

    def display_path(self, number: int) -> Path:
        return self.folder / "display" / f"{number:07d}.jpg"

    def gradcam_path(self, number: int) -> Path:
        return self.folder / "gradcam" / f"{number:07d}.png"

    def keep_gradcam(self, number: int, png: bytes) -> None:
        """Keep frame ``number``'s Grad-CAM picture, whole or not at all: written beside its place, then renamed
        over it, so a request reading it at the same moment never sees half of it. Only into a folder that
        exists: a running case's folder may have been moved into place meanwhile (then it is computed again)."""
        path, temp = self.gradcam_path(number), None
        try:
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                             delete=False) as handle:
                temp = handle.name
                handle.write(png)
            os.replace(temp, path)
        except OSError as error:
            log.debug("%s not kept: %s", path.name, error)
            if temp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp)

    def display(self, number: int) -> np.ndarray:
        """The display frame (h, w) uint8."""
        return decode(self.display_path(number).read_bytes())

    def box(self, number: int) -> tuple[int, int, int, int]:
        return self._boxes[number]

    def field(self, number: int) -> object:
        """What :meth:`add` was given as the frame's field (None when nothing)."""
        return self._fields.get(number)

    def model_frame(self, number: int) -> np.ndarray:
        """The model's input (S, S) uint8 for frame ``number``."""
        side = self.size * self.size
        with open(self._model_path, "rb") as handle:
            handle.seek(self._positions[number] * side)
            data = handle.read(side)
        return np.frombuffer(data, np.uint8).reshape(self.size, self.size)

    def save_index(self) -> None:
        """Write the frames' positions, boxes and fields (:data:`INDEX`, atomically) so :meth:`load` finds them."""
        with self._lock:
            frames = [[number, position, list(self._boxes[number]), _field_json(self._fields.get(number))]
                      for number, position in self._positions.items()]
        write_text(self.folder / INDEX, json.dumps({"size": self.size, "frames": frames}, separators=(",", ":")))

    @classmethod
    def load(cls, folder: Path) -> FrameStore:
        """The frames a finished case left in ``folder`` (:meth:`save_index`). Raises OSError, ValueError."""
        index = json.loads((Path(folder) / INDEX).read_text())
        store = cls(folder, int(index["size"]))
        for number, position, box, field in index["frames"]:
            store._positions[number], store._boxes[number] = position, tuple(box)
            store._fields[number] = _field_object(field)
        return store


def _field_json(field: object) -> object:
    """A frame's field as the engine gives it, ``(FieldOfView, box)`` or None, as JSON."""
    if field is None:
        return None
    fov, box = field
    return {"fov": dataclasses.asdict(fov), "box": list(box)}


def _field_object(data: dict | None) -> object:
    if data is None:
        return None
    fov = {key: tuple(value) if isinstance(value, list) else value for key, value in data["fov"].items()}
    return FieldOfView(**fov), tuple(data["box"])
