"""``POST /v1/predict``: one image → probabilities, verdict, quality, dropped (``?gradcam=1``: the overlay)."""

from __future__ import annotations

import base64
import shutil
import uuid

import anyio
from fastapi import APIRouter, Query, Request

from mucosa.service import schemas
from mucosa.service.dependencies import EngineDep, LimiterDep, SettingsDep, WorkspaceDep
from mucosa.service.engine import ModelOutputError, media_kind
from mucosa.service.problems import problem
from mucosa.service.reading import UnreadableMedia, UnsupportedMedia
from mucosa.service.routes.common import API_VERSION, MEDIA_ERRORS, finalize, media_error, read_upload, upload_body

__all__ = ["router"]

router = APIRouter(tags=["predict"])


@router.post("/predict", response_model=schemas.ImagePrediction, response_model_exclude_none=False,
             responses=MEDIA_ERRORS, openapi_extra=upload_body("one image (PNG, TIFF, JPEG, BMP)", many=False))
async def predict(request: Request, engine: EngineDep, settings: SettingsDep, workspace: WorkspaceDep,
                  limiter: LimiterDep, gradcam: bool = Query(False, description="add the Grad-CAM overlay")):
    """One image: class probabilities, verdict, quality score and whether the quality gate dropped it."""
    folder = workspace / "requests" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    try:
        upload = await read_upload(request, folder, settings)
        if len(upload.files) != 1:
            raise problem(422, f"send exactly one image in the form's file field ({len(upload.files)} sent)")
        path = finalize(upload.files[0], 0)
        if media_kind(path) == "video":
            raise problem(415, f"{upload.files[0].name}: a video; POST it to /{API_VERSION}/cases")
        try:
            result = await anyio.to_thread.run_sync(engine.predict_image, path, gradcam, limiter=limiter)
        except (UnsupportedMedia, UnreadableMedia, ModelOutputError) as error:
            raise media_error(error) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    png = result.pop("gradcam_png", None)
    if png is not None:
        result["gradcam"] = "data:image/png;base64," + base64.b64encode(png).decode()
    return result
