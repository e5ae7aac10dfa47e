"""Grad-CAM in the API and the viewer's frames: the heat map never leaves the field of view found by
preprocessing (a circular pCLE field kept whole has black corners; there the heat must be zero)."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from mucosa.data.fov import field_mask
from mucosa.data.preparation import iter_frames
from serving import serving, upload, wait_done

pytestmark = [pytest.mark.realdata, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def untinted_outside_the_field(png: bytes, fov) -> np.ndarray:
    """The overlay's pixels (RGB) inside the field of view, after checking that outside it, inside the model's
    box, every pixel is gray (R = G = B): no heat there."""
    with Image.open(io.BytesIO(png)) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    x0, y0, x1, y1 = fov.box
    outside = ~field_mask(fov, (y1 - y0, x1 - x0))
    assert outside[:8, :8].all() and outside.mean() > 0.15  # the black corners of the disc's box
    outside[[0, -1], :] = outside[:, [0, -1]] = False  # the box's outline
    crop = rgb[y0:y1, x0:x1]
    assert (crop[outside].max(axis=1) == crop[outside].min(axis=1)).all()
    return crop[~outside]


def test_predict_gradcam_has_no_heat_outside_the_field_of_view(brain_engine, frame_png):
    (frame,) = list(iter_frames(frame_png, brain_engine.prep))
    assert frame.fov.kind == "disc"
    with serving(brain_engine) as (client, _):
        result = upload(client, "/v1/predict?gradcam=1", frame_png).json()
    png = base64.b64decode(result["gradcam"].split(",", 1)[1])
    inside = untinted_outside_the_field(png, frame.fov)
    assert (inside.max(axis=1) - inside.min(axis=1) > 40).mean() > 0.05  # while the tissue is tinted


def test_case_frame_gradcam_has_no_heat_outside_the_field_of_view(brain_engine, brain_video, tmp_path):
    first = next(iter_frames(brain_video, brain_engine.prep))
    with serving(brain_engine, store=str(tmp_path / "store")) as (client, _):
        case = wait_done(client, upload(client, "/v1/cases", brain_video).json()["id"])
        used = next(row["frame"] for row in case["timeline"][40:] if not row["dropped"])
        response = client.get(f"/v1/cases/{case['id']}/frames/{used}.png?gradcam=1")
        again = client.get(f"/v1/cases/{case['id']}/frames/{used}.png?gradcam=1")
    assert response.status_code == 200 and again.content == response.content  # the second from the kept file
    kept = [p for p in (tmp_path / "store").rglob("*.png") if case["id"] in p.parts]
    assert kept and any(p.read_bytes() == response.content for p in kept)
    assert not list((tmp_path / "store").rglob("*.tmp"))  # kept whole: written beside it, then renamed
    inside = untinted_outside_the_field(response.content, first.fov)
    assert (inside.max(axis=1) - inside.min(axis=1) > 40).mean() > 0.05
