"""The JSON the API takes and answers with, as pydantic models (they document the routes at ``/docs``).

Request bodies are strict: a value of the wrong JSON type (``"name": 5``, ``"paths": "."``) or an unknown
field is refused (422), never converted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from mucosa.choices import ROLES
from mucosa.data.manifest import has_control

Probability = float | list[float] | None


def _no_control(value: str) -> str:
    """Refuse control and format characters (a NUL, U+0085, U+202E...); a note keeps its lines and tabs."""
    if has_control(value, allowed="\n\r\t"):
        raise ValueError("control or format characters are not allowed")
    return value


Note = Annotated[str, AfterValidator(_no_control)]


class Verdict(BaseModel):
    """A case's (or image's) verdict: the mean probability of its informative frames against the threshold."""

    state: Literal["queued", "running", "final", "error"] = Field(
        description="running while frames come in, final when the case is done, error when none can be given")
    label: str | None = Field(description="the verdict in the checkpoint's words, e.g. 'mucosal healing'; "
                                 "null without informative frames, on error, or while a running case with an atlas "
                                 "is still gathering the frames its case score needs (then text says so)")
    class_: str | None = Field(alias="class", description="the class the label stands for")
    text: str = Field(description="the label, or why there is none")
    score: Probability = Field(description="mean probability of the positive class over the informative "
                               "frames (one per class for more than two classes)")
    threshold: float
    frames: int = Field(description="informative frames the verdict rests on")
    total: int = Field(description="frames seen")
    calls: dict[str, int] = Field(default_factory=dict, description="informative frames called each class (a "
                                  "frame's own probability against the threshold): the share of frames per class")
    unfamiliar: float | None = Field(None, description="share of the informative frames the atlas finds unlike "
                                     "its confirmed cases (the label is 'unfamiliar' when the case as a whole is: "
                                     "see unfamiliarity_ratio); null without an atlas to tell")
    unfamiliarity_ratio: float | None = Field(None, description="how unlike the atlas's confirmed cases the case "
                                              "is (its median frame score joined with its texture view's), over the "
                                              "atlas's case threshold: above 1 the label is 'unfamiliar' (none "
                                              "while gathering frames); null without an atlas to tell")
    needed: int | None = Field(None, description="while a running case gathers frames: the informative frames it "
                               "must reach before the atlas can judge it (frames is how many it has); else null")
    atlas_vote: dict[str, Any] | None = Field(None, description="the atlas's nearest-neighbour vote once the case "
                                              "is done, a second opinion: {label, share}")
    reason: str | None = Field(None, description="why the label is 'unfamiliar', in words, with the "
                               "unfamiliarity ratio and the share of unfamiliar frames (null for any other label)")
    network_alone: str | None = Field(None, description="for the label 'unfamiliar': what the network alone would "
                                      "have called, worded as no verdict (null for any other label)")

    model_config = {"populate_by_name": True}


class ImagePrediction(BaseModel):
    classes: list[str]
    probabilities: dict[str, float] | None = Field(description="per class; null when the quality gate "
                                                      "dropped the image")
    probability: Probability = Field(description="of the positive class (binary models)")
    verdict: Verdict
    quality: float = Field(description="quality score in [0, 1]")
    quality_threshold: float
    dropped: bool = Field(description="the quality gate dropped the image: no probability, no verdict")
    threshold: float
    tiles: list[dict[str, Any]] | None = None
    gradcam: str | None = Field(None, description="with ?gradcam=1: the image with the Grad-CAM heat map "
                                   "of the predicted class, as a data:image/png;base64 URL")


class TimelinePoint(BaseModel):
    frame: int = Field(description="frame index in the video (position among the images' frames)")
    time: float | None = Field(description="seconds from the start of the video")
    quality: float
    dropped: bool = Field(description="below the quality gate: no probability")
    probability: Probability
    smoothed: Probability = Field(description="mean of the last `window` informative frames")
    called: str | None = Field(None, description="the class this frame's own probability calls (null when dropped)")
    source: int | None = Field(None, description="images: which image (0-based) the frame comes from")
    unfamiliar: bool | None = Field(None, description="the atlas finds this frame unlike its confirmed cases "
                                    "(null: dropped, or no atlas to tell)")
    unfamiliarity: float | None = Field(None, description="its distance to its k-th nearest atlas frame")


class ReviewIn(BaseModel):
    """``POST /v1/cases/{id}/review``: the histology and whether the reviewer agrees with the verdict."""

    model_config = ConfigDict(strict=True, extra="forbid")

    histology: str = Field(min_length=1, max_length=64, description="the histology's class (one of the model's)")
    agrees: bool = Field(description="the reviewer agrees with the verdict")
    note: Note = Field("", max_length=2000)


class ReviewOut(BaseModel):
    id: int
    case_id: str
    reviewer: str
    histology: str
    agrees: bool
    note: str
    at: str = Field(description="when, ISO 8601 (UTC)")
    model_version: str | None
    verdict: str | None = Field(description="the class the verdict judged called (null: none)")
    verdict_text: str | None = Field(None, description="the verdict judged, in words: 'unfamiliar' for a case unlike "
                                     "the atlas's, which calls no class")


class SimilarCases(BaseModel):
    """``GET /v1/cases/{id}/similar``: the confirmed cases of the atlas nearest a finished case."""

    atlas_vote: dict[str, float] | None = Field(description="the share of each class among the nearest atlas frames "
                                                "of other patients (null: none): a second opinion, unless the "
                                                "case is unfamiliar")
    similar: list[dict[str, Any]] = Field(description="the k nearest atlas cases, most alike first: rank, case, "
                                          "patient, label, distance, matched_frames, query_frames and closest "
                                          "frames (file, frame, distance, query_frame, thumbnail as a PNG data URL)")
    unfamiliar: bool | None = Field(description="the case's verdict is 'unfamiliar' (null: the atlas cannot tell): "
                                    "then atlas_vote is that of its nearest atlas frames, no second opinion, and "
                                    "the cases listed are the nearest, not similar")
    reason: str | None = Field(description="for an unfamiliar case, why (its unfamiliarity ratio and share of "
                               "unfamiliar frames) and what its vote and cases are; null otherwise")


class StoreInfo(BaseModel):
    backend: Literal["sqlite", "postgresql"]


class Me(BaseModel):
    name: str
    role: Literal[ROLES]
    store: StoreInfo


class CaseSummary(BaseModel):
    id: str
    name: str
    kind: Literal["video", "images"]
    files: list[str]
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float = Field(description="share of the frames processed, 0 to 1")
    frames_expected: int = Field(description="frames the video announces (images: how many were given); kept "
                                 "when fewer are decoded")
    frames_done: int = Field(description="frames decoded and processed so far")
    frames_dropped: int
    fps: float | None
    verdict: Verdict | None
    error: str | None
    warnings: list[str] = Field(description="damage found while decoding (frames decoded of those announced, "
                                "decode errors, gaps, an early end); the verdict rests on the frames that decoded")
    created: float
    started: float | None
    finished: float | None
    patient: str | None = Field(None, description="pseudonymous patient id")
    exam_date: str | None = Field(None, description="YYYY-MM-DD")
    region: str | None = None
    model_version: str | None = Field(None, description="the model that judged (or will judge) the case")
    reviewed: bool = False
    review: ReviewOut | None = Field(None, description="the latest review")


class CaseDetail(CaseSummary):
    timeline: list[TimelinePoint]
    reviews: list[ReviewOut] = Field(default_factory=list, description="every review, oldest first")


class CaseCreated(BaseModel):
    id: str
    status: str
    url: str
    events: str


class CasesCreated(BaseModel):
    """Several videos uploaded at once: a case each."""

    cases: list[CaseCreated]


class Problem(BaseModel):
    detail: str = Field(description="what is wrong, in one sentence")


PathText = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class CaseByPath(BaseModel):
    """``POST /v1/cases`` as JSON: files already under the server's ``--data-root``, by path."""

    model_config = ConfigDict(strict=True, extra="forbid")

    path: PathText | None = Field(None, description="a video, an image or a folder of images (one case), "
                                  "relative to --data-root")
    paths: list[PathText] | None = Field(None, min_length=1, max_length=10_000,
                                         description="several images of one case, relative to --data-root")
    name: str | None = Field(None, description="the case's name (default: its first file's)")
    patient: str | None = Field(None, description="pseudonymous patient id (at most 64 characters, never a name)")
    exam_date: str | None = Field(None, description="the exam's date, YYYY-MM-DD")
    region: str | None = Field(None, description="where the images were taken, e.g. 'terminal ileum'")

    @model_validator(mode="after")
    def _one_source(self) -> CaseByPath:
        if (self.path is None) == (self.paths is None):
            raise ValueError('send {"path": "FILE_OR_FOLDER"} or {"paths": [...]}, relative to --data-root')
        return self


class Health(BaseModel):
    """Liveness; the rest only for a request a user makes (their token, or a laptop's ``local``)."""

    status: str
    model: str | None = None
    runtime: str | None = None
    device: str | None = None
    cases: int | None = Field(None, description="cases in the store")
    queued: int | None = Field(None, description="jobs waiting for a worker")
