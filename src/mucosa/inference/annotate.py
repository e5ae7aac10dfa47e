"""The annotated video of ``mucosa stream --annotate``: each source frame with its result burned in.

The field of view, the frame's probability and smoothed probability, the case's running verdict and, for a
PyTorch model, its Grad-CAM over the crop; written as an MP4 that replaces its target only when the stream
ends well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mucosa import atomic
from mucosa.data.fov import field_mask
from mucosa.inference import verdict as verdicts
from mucosa.inference.saliency import grad_cam

__all__ = ["Annotator", "short_number"]


def short_number(value) -> str:
    """A probability (``0.734``), a vector of them (``0.12/0.88``) or ``-`` for none."""
    if value is None:
        return "-"
    return f"{float(value):.3f}" if np.ndim(value) == 0 else "/".join(f"{float(v):.2f}" for v in value)


class Annotator:
    """An MP4 of the source frames with the field of view, probabilities, verdict and Grad-CAM burned in.

    Grad-CAM (``inference.saliency.grad_cam``) is drawn over the crop of informative frames when the PyTorch
    model is at hand (a checkpoint, not an ``.onnx`` file); otherwise it is left out.
    It costs a backward pass per frame. The video is written to a temporary file beside ``path`` that
    replaces it only when the stream ends well (``close(keep=True)``).
    """

    def __init__(self, path: Path, predictor, fps: float, gradcam: bool = True) -> None:
        self.path, self.fps, self.classes = path, fps or 25.0, predictor.classes
        self.cam = _grad_cam_function(predictor) if gradcam else None
        self.container = self.stream = None
        self.font = None
        self.pending: atomic.PendingFile | None = None

    def _open(self, height: int, width: int) -> None:
        from fractions import Fraction

        import av
        from PIL import ImageFont

        self.pending = atomic.PendingFile(self.path, open_file=False)
        try:
            self.container = av.open(str(self.pending.temp), "w", format="mp4")
        except OSError as error:
            raise atomic.write_error(error, self.path) from None
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1001))
        self.stream.width, self.stream.height = width // 2 * 2, height // 2 * 2  # yuv420p needs even sides
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self.stream.options = {"preset": "veryfast", "crf": "20"}
        try:
            self.font = ImageFont.load_default(size=max(11, height // 32))
        except TypeError:  # Pillow < 10.1
            self.font = ImageFont.load_default()

    def write(self, frame: np.ndarray, model_frame: np.ndarray, fov, result: Any) -> None:
        """Add one source frame (H, W) in [0, 1] with its result (a ``stream.FrameResult``)."""
        import av
        from PIL import Image, ImageDraw

        if self.container is None:
            self._open(*frame.shape)
        rgb = np.repeat(np.round(frame * 255).astype(np.uint8)[..., None], 3, axis=2)  # (H, W, 3)
        x0, y0, x1, y1 = fov.box
        if self.cam is not None and not result.skipped:
            field = field_mask(fov, model_frame.shape)  # no heat outside the field of view
            heat = self._heat(model_frame, field, (x1 - x0, y1 - y0))  # (h, w) in [0, 1] or None
            if heat is not None:
                alpha = 0.45 * heat[..., None]
                crop = rgb[y0:y1, x0:x1].astype(np.float32)
                rgb[y0:y1, x0:x1] = np.round(crop * (1 - alpha) + np.array([255, 60, 0]) * alpha).astype(np.uint8)
        image = Image.fromarray(rgb)
        draw = ImageDraw.Draw(image)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 190, 255))
        probability = f"skipped (quality {result.quality:.2f})" if result.skipped else \
            f"p {short_number(result.probability)}  smoothed {short_number(result.smoothed)}"
        names = verdicts.verdict_names(self.classes)
        colour = (200, 200, 200) if result.verdict not in names else \
            ((235, 70, 60) if len(names) == 2 and result.verdict == names[1] else (70, 210, 100))
        lines = [(f"frame {result.index}  t {result.time:.2f} s  {probability}", (255, 255, 0)),
                 (f"case: {result.verdict}  ({short_number(result.case_probability)})", colour)]
        step = self.font.getbbox("Ag")[3] + 4
        width = max(draw.textlength(text, font=self.font) for text, _ in lines)
        draw.rectangle((4, 4, 12 + width, 8 + step * len(lines)), fill=(0, 0, 0))
        for k, (text, fill) in enumerate(lines):
            draw.text((8, 6 + k * step), text, fill=fill, font=self.font)
        out = av.VideoFrame.from_ndarray(np.asarray(image)[:self.stream.height, :self.stream.width], format="rgb24")
        try:
            for packet in self.stream.encode(out):
                self.container.mux(packet)
        except OSError as error:  # PyAV's errors of a failed write (disk full) are OSErrors
            raise atomic.write_error(error, self.path) from None

    def _heat(self, model_frame: np.ndarray, field: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
        from PIL import Image

        try:
            cam = np.asarray(self.cam(model_frame, field), np.float32)  # (S, S) in [0, 1]
        except Exception as error:  # an optional overlay must never stop the stream
            import warnings

            warnings.warn(f"Grad-CAM overlay disabled: {type(error).__name__}: {error}", stacklevel=2)
            self.cam = None
            return None
        return np.asarray(Image.fromarray(cam, mode="F").resize(size, Image.Resampling.BILINEAR)).clip(0, 1)

    def close(self, keep: bool = True) -> None:
        """Finish the video and put it in place (``keep``), or throw it away."""
        if self.container is None:
            return
        try:
            if keep:
                for packet in self.stream.encode():
                    self.container.mux(packet)
            self.container.close()
        except OSError as error:
            self.pending.discard()
            raise atomic.write_error(error, self.path) from None
        except BaseException:
            self.pending.discard()
            raise
        if keep:
            self.pending.commit()
        else:
            self.pending.discard()


def _grad_cam_function(predictor):
    """``(frame, field of view mask) -> heat map`` from ``saliency.grad_cam`` and the PyTorch model, or None."""
    checkpoint = getattr(predictor, "checkpoint", None)
    if checkpoint is None:
        return None
    return lambda frame, field: grad_cam(checkpoint.model, frame, field=field)
