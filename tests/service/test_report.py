"""The case report as JSON, HTML and PDF (``/v1/cases/{id}/report.json|html|pdf``): what it must hold, checked
against the case itself, and a PDF that renders to a page that is not blank (poppler's pdftoppm, as CI runs
it)."""

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest

from mucosa.service.presentation import BANNER
from mucosa.service.report import ReportParts, report_data, report_html
from mucosa.service.report_pdf import report_pdf
from serving import pdf_text, poppler, serving, upload, wait_done

pytestmark = [pytest.mark.realdata, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def pages_as_png(pdf: bytes, tmp_path: Path) -> list[np.ndarray]:
    """Every page rendered by pdftoppm (50 dpi), gray."""
    (tmp_path / "report.pdf").write_bytes(pdf)
    subprocess.run([poppler("pdftoppm"), "-r", "50", "-png", str(tmp_path / "report.pdf"), str(tmp_path / "page")],
                   check=True, capture_output=True)
    return [np.asarray(Image.open(path).convert("L"), np.float64) for path in sorted(tmp_path.glob("page-*.png"))]


@pytest.fixture(scope="module")
def reported(brain_engine, damaged):
    """A case from a video cut short, with neutral classes: (client, the case, its URL)."""
    with serving(brain_engine) as (client, _):
        case = wait_done(client, upload(client, "/v1/cases", damaged / "cut.mpg").json()["id"])
        yield client, case, f"/v1/cases/{case['id']}"


def test_report_json_holds_the_case_model_verdict_interval_key_frames_and_warnings(reported, brain_engine):
    client, case, base = reported
    answer = client.get(f"{base}/report.json")
    assert answer.headers["content-disposition"] == 'attachment; filename="cut-report.json"'  # as the PDF's
    report = answer.json()
    classes = ["glioblastoma", "meningioma"]
    assert report["banner"] == BANNER == "Research use only — not a medical device"
    assert report["case"]["id"] == case["id"] and report["case"]["frames_expected"] > report["case"]["frames_decoded"]
    model = report["model"]
    assert model["weights_sha256"] == brain_engine.checkpoint.weights_sha256 and len(model["weights_sha256"]) == 64
    assert model["name"] == "brain.ckpt" and model["version"] == client.get("/v1/model").json()["mucosa_version"]
    verdict, rows = report["verdict"], [r for r in case["timeline"] if not r["dropped"]]
    score = case["verdict"]["score"]
    assert verdict["class"] == case["verdict"]["class"] in classes
    assert verdict["confidence"] == pytest.approx(score if verdict["class"] == "meningioma" else 1 - score)
    called = {c: sum(r["probability"] >= 0.5 if c == "meningioma" else r["probability"] < 0.5 for r in rows)
              for c in classes}
    assert {s["class"]: s["frames"] for s in verdict["shares"]} == called
    assert sum(s["share"] for s in verdict["shares"]) == pytest.approx(1)
    interval, exact = verdict["interval"], binomtest(called[verdict["class"]], len(rows)).proportion_ci()
    assert (interval["low"], interval["high"]) == pytest.approx((exact.low, exact.high))
    assert interval["low"] <= interval["share"] <= interval["high"] and "Clopper" in interval["method"]
    for key in report["key_frames"]:  # the most confident frame called each class
        mine = [r for r in rows if r["called"] == key["class"]]
        p = [r["probability"] if key["class"] == "meningioma" else 1 - r["probability"] for r in mine]
        assert key["frame"] == mine[int(np.argmax(p))]["frame"] and key["probability"] == pytest.approx(max(p))
        assert client.get(key["images"]["gradcam"]).headers["content-type"] == "image/png"
    assert {k["class"] for k in report["key_frames"]} == {c for c in classes if called[c]}
    assert report["warnings"] == case["warnings"] and "the file ends early (cut short?)" in report["warnings"]
    assert report["review"] is None and report["exam"] == {}


def test_report_pdf_renders_pages_that_are_not_blank_and_say_it_all(reported, brain_engine, tmp_path):
    client, case, base = reported
    response = client.get(f"{base}/report.pdf")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"] == 'attachment; filename="cut-report.pdf"'
    assert response.content.startswith(b"%PDF")
    pages = pages_as_png(response.content, tmp_path)
    assert len(pages) >= 2 and all(page.std() > 20 for page in pages)  # a blank page has none
    assert all(page[:20].mean() < 120 for page in pages)  # the dark banner on top of every page
    text = " ".join(pdf_text(response.content, tmp_path).split())
    report = client.get(f"{base}/report.json").json()
    for words in (BANNER, case["id"], brain_engine.checkpoint.weights_sha256, "Damaged recording",
                  "the file ends early (cut short?)", f"{case['frames_done']} decoded of {case['frames_expected']}",
                  "Clopper–Pearson", "Key frames", "Not reviewed yet", report["verdict"]["label"].capitalize(),
                  *(f"frame {key['frame']}" for key in report["key_frames"])):
        assert words in text, words
    assert text.count(BANNER) >= len(pages)


def test_report_html_embeds_the_timeline_and_key_frames(reported):
    client, case, base = reported
    page = client.get(f"{base}/report.html").text
    report = client.get(f"{base}/report.json").json()
    assert BANNER in page and "<svg" in page and "the file ends early (cut short?)" in page
    assert page.count('src="data:image/png;base64,') == len(report["key_frames"]) >= 1
    assert "P(meningioma)" in page  # the timeline names the class of its probability


def test_exam_fields_and_a_reviewers_sign_off_are_reported_when_present(reported, tmp_path):
    client, case, _ = reported
    card = client.get("/v1/model").json()
    given = {**case, "patient": "P-0042", "exam_date": "2026-03-02", "region": "sigmoid colon",
             "review": {"reviewer": "Dr. Ana Müller", "decision": "agrees with the verdict", "signed": "2026-03-03"}}
    data = report_data(given, card)
    assert data["exam"] == {"patient": "P-0042", "exam_date": "2026-03-02", "region": "sigmoid colon"}  # the API's
    parts = ReportParts(data, timeline_png=_png(), timeline_svg="<svg></svg>")
    page = report_html(parts)
    text = " ".join(pdf_text(report_pdf(parts), tmp_path).split())
    for words in ("Patient P-0042", "Exam date 2026-03-02", "Region sigmoid colon", "Dr. Ana Müller",
                  "agrees with the verdict"):
        assert words in page.replace("</th><td>", " ") and words in text, words
    assert "Not reviewed yet" not in text


def test_the_sign_off_says_yes_or_no_in_words_and_stays_on_one_page(reported, tmp_path):
    client, case, _ = reported
    card = client.get("/v1/model").json()
    review = {"reviewer": "dr r", "histology": "meningioma", "agrees": False, "note": "biopsy 3",
              "at": "2026-03-03T10:00:00+00:00", "model_version": "brain.ckpt:0123", "verdict": "glioblastoma"}
    for warnings in range(0, 60, 5):  # the sign-off moves down a page and a bit: somewhere a page ends in it
        data = report_data({**case, "warnings": [f"warning {n}" for n in range(warnings)], "review": review}, card)
        parts = ReportParts(data, timeline_png=_png(), timeline_svg="<svg></svg>")
        assert "<th scope='row'>Agrees with the verdict</th><td>no</td>" in report_html(parts)
        pages = [" ".join(page.split()) for page in pdf_text(report_pdf(parts), tmp_path).split("\f")]
        signed = next(page for page in pages if "Reviewer sign-off" in page)
        assert "Agrees with the verdict no" in signed and "Verdict reviewed glioblastoma" in signed, warnings
        assert "False" not in " ".join(pages)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 120), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_class_colours_are_neutral_unless_the_classes_are_the_inflammation_pair(engine, brain_engine):
    from mucosa.service.presentation import CLINICAL, NEUTRAL

    inflammation = {"control": CLINICAL["mucosal healing"], "active": CLINICAL["active inflammation"]}
    brain = {"glioblastoma": NEUTRAL[0], "meningioma": NEUTRAL[1]}  # Okabe–Ito blue and orange
    for model, expected in ((engine, inflammation), (brain_engine, brain)):
        with serving(model) as (client, _):
            assert client.get("/v1/model").json()["colours"] == expected


def test_report_errors_are_one_sentence(reported):
    client, case, base = reported
    for url, status in ((f"{base}/report.pdf?download=maybe", 422), ("/v1/cases/nope/report.json", 404),
                        ("/v1/cases/nope/report.pdf", 404)):
        response = client.get(url)
        assert response.status_code == status and isinstance(response.json()["detail"], str)
