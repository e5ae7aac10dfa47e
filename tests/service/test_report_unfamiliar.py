"""The case report (JSON, HTML, PDF) of an `unfamiliar` case, with the tiny model ``mucosa train`` wrote with its atlas:
the verdict says why, with its unfamiliarity ratio and share of unfamiliar frames (the viewer's words, from the
API's ``reason``), names no class as the call (captions, vote, similar cases), and its timeline marks the unfamiliar
frames in the viewer's colour; an in-domain case keeps its class words."""

import csv
import html
import io
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from mucosa.inference.verdict import percent, unfamiliar_reason
from mucosa.service.presentation import UNFAMILIAR_MARK
from mucosa.service.report import atlas_rows, timeline_csv
from serving import patient_images, pdf_text, poppler, serving, sine_png, upload, wait_done

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def reports(atlas_engine, atlas_run, tmp_path_factory):
    """The reports of a foreign image (`unfamiliar`) and of an in-domain patient's images: {name: (case, JSON, HTML,
    PDF bytes)}, and the model's classes."""
    folder = tmp_path_factory.mktemp("unfamiliar-report")
    found = {}
    with serving(atlas_engine) as (client, _):
        for name, paths in (("foreign", [sine_png(folder)]), ("own", patient_images(atlas_run.cohort, "P01")[:4])):
            case = wait_done(client, upload(client, "/v1/cases", *paths).json()["id"])
            if name == "foreign":  # signed off: the verdict judged is unfamiliar, not a class
                classes = client.get("/v1/model").json()["classes"]
                review = client.post(f"/v1/cases/{case['id']}/review", json={"histology": classes[0], "agrees": True})
                assert review.status_code == 201 and review.json()["verdict"] is None, review.text
                assert review.json()["verdict_text"] == "unfamiliar"
            base = f"/v1/cases/{case['id']}/report"
            found[name] = (case, client.get(f"{base}.json").json(), client.get(f"{base}.html").text,
                           client.get(f"{base}.pdf").content)
        classes = client.get("/v1/model").json()["classes"]
    return found, classes


def purple_pixels(pdf: bytes, folder) -> int:
    """How many pixels of the PDF's pages, rendered at 100 dpi, are the unfamiliar mark's colour."""
    (folder / "report.pdf").write_bytes(pdf)
    subprocess.run([poppler("pdftoppm"), "-r", "100", "-png", str(folder / "report.pdf"), str(folder / "page")],
                   check=True, capture_output=True)
    mark = np.array([int(UNFAMILIAR_MARK[k:k + 2], 16) for k in (1, 3, 5)], np.float64)
    return sum(int((np.abs(np.asarray(Image.open(page).convert("RGB"), np.float64) - mark).max(-1) < 40).sum())
               for page in folder.glob("page-*.png"))


def test_the_report_says_why_a_case_is_unfamiliar_and_names_no_call(reports, tmp_path):
    found, classes = reports
    case, data, page, pdf = found["foreign"]
    verdict = case["verdict"]
    assert verdict["label"] == "unfamiliar" and verdict["class"] is None and verdict["unfamiliarity_ratio"] > 1
    reason = data["verdict"]["reason"]
    assert reason == verdict["reason"]  # the API's words, which the viewer prints
    assert f"unfamiliarity ratio {verdict['unfamiliarity_ratio']:.2f}, where above 1 is unfamiliar" in reason
    assert f"{percent(verdict['unfamiliar'])} of its frames are marked unfamiliar" in reason
    assert data["verdict"]["network_alone"] == verdict["network_alone"]
    assert data["review"]["verdict"] == "unfamiliar" and "verdict_text" not in data["review"]
    text = " ".join(pdf_text(pdf, tmp_path).split())
    words = " ".join(html.unescape(re.sub("<[^>]+>", " ", page)).split())
    for shown in (text, words):
        assert f"Unfamiliar {reason}" in shown  # the heading, then why
        assert verdict["network_alone"] in shown
        assert "Agrees with the verdict yes (the verdict unfamiliar)" in shown
        assert "Verdict reviewed unfamiliar" in shown
        assert "Nearest atlas case 1 not similar: " in shown and "Similar case" not in shown
        assert "no second opinion" in shown and "Atlas vote (second opinion)" not in shown
        assert "its attention for its unsupported guess" in shown
        rule = shown.replace(" ".join(data["verdict"]["rule"].split()), "")  # the model's rule says "called"
        for cls in classes:
            assert f"called {cls}" not in rule.lower() and f"Grad-CAM of {cls}" not in shown, cls
    assert data["key_frames"] and all(f"frame {key['frame']}: the network's P(" in text for key in data["key_frames"])


def test_the_report_timeline_marks_unfamiliar_frames(reports, tmp_path):
    found, _ = reports
    for name, (case, _, page, pdf) in found.items():
        marked = sum(bool(row["unfamiliar"]) for row in case["timeline"])
        assert (name == "foreign") <= bool(marked), name  # the foreign image's one frame is marked
        assert (UNFAMILIAR_MARK in page.lower()) == bool(marked), name  # the SVG timeline of the HTML page
        assert ("unfamiliar frame (unlike the atlas)" in page) == bool(marked), name  # its legend
        folder = tmp_path / name
        folder.mkdir()
        assert (purple_pixels(pdf, folder) > 0) == bool(marked), name


def test_an_in_domain_case_keeps_its_class_words(reports, tmp_path):
    found, _ = reports
    case, data, page, pdf = found["own"]
    verdict = case["verdict"]
    assert verdict["class"] and verdict["reason"] is None and data["verdict"]["reason"] is None
    text = " ".join(pdf_text(pdf, tmp_path).split())
    for shown in (text, " ".join(html.unescape(re.sub("<[^>]+>", " ", page)).split())):
        assert f"mean probability of {verdict['class']}" in shown
        assert "Atlas vote (second" in shown and "Similar case 1" in shown  # the PDF's label cell wraps
        assert "unsupported guess" not in shown and "not similar" not in shown


def test_timeline_csv_ends_with_each_frames_call_and_whether_it_is_unfamiliar(reports):
    found, classes = reports
    for name, (case, *_) in found.items():
        table = list(csv.DictReader(io.StringIO(timeline_csv(case, classes))))
        assert list(table[0])[-2:] == ["called", "unfamiliar"], name  # appended: the old columns keep their order
        assert [row["called"] for row in table] == [row["called"] or "" for row in case["timeline"]], name
        assert [row["unfamiliar"] for row in table] == [
            "" if row["unfamiliar"] is None else str(int(row["unfamiliar"])) for row in case["timeline"]], name
        assert {row["dropped"] for row in table} <= {"0", "1"}, name  # the same 1/0 as its dropped column
    assert "1" in [row["unfamiliar"] for row in csv.DictReader(io.StringIO(timeline_csv(found["foreign"][0],
                                                                                        classes)))]


def test_a_few_unfamiliar_frames_read_under_one_percent_not_none():
    """4 unfamiliar frames of 820 (the brain case a new user saw marked on the timeline) are not "0%"."""
    data = {"atlas": {"available": True, "vote": {"label": "glioma", "share": 0.996}, "unfamiliar": 4 / 820,
                      "similar": []}, "verdict": {}}
    rows = dict(atlas_rows(data))
    assert rows["Unfamiliar frames"] == "<1% of the informative frames"
    assert rows["Atlas vote (second opinion)"] == "glioma (>99% of the nearest confirmed frames)"
    assert "<1% of its frames are marked unfamiliar" in unfamiliar_reason(4 / 820, 1.2)
    assert "0% of its frames" in unfamiliar_reason(0.0, 1.2)


def test_an_uncalibrated_atlas_says_in_the_report_why_it_cannot_tell():
    """A report read away from the viewer (its header note) still says why no frame is marked: the atlas is not
    calibrated, in the card's words."""
    from mucosa.service.atlas import NOT_CALIBRATED

    data = {"atlas": {"available": True, "note": NOT_CALIBRATED, "vote": {"label": "glioma", "share": 1.0},
                      "unfamiliar": None, "similar": []}, "verdict": {}}
    assert dict(atlas_rows(data))["Unfamiliar frames"] == NOT_CALIBRATED
