"""The viewer's clinic workflow in the real Chromium (Playwright, :mod:`browsing`), against ``mucosa serve`` on a
case store: an upload with its exam fields, the case's stable link (opened directly and after a reload), search
and filters over the cases with their total, the review of a case against histology (every review kept), the
audit page counting it, a user of role viewer who sees the reviews but may not add one, and signing in and out
with a token (the sign-in form, a rejected token). axe-core stays clean and every target is 44 px on the new views.

The tests run in order on one server: the last one adds users (after which every request needs a token).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from browsing import ROOT, axe_violations, mucosa_serve, small_targets

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
EXAM = {"patient": "P-017", "exam_date": "2024-05-02", "region": "terminal ileum"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("review-store") / "store"


@pytest.fixture(scope="module")
def base(brain_checkpoint, store, tmp_path_factory):
    with mucosa_serve(brain_checkpoint, tmp_path_factory.mktemp("review"), "--store", str(store)) as url:
        yield url


def open_viewer(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#model:has-text('glioblastoma / meningioma')", state="attached")


def case_shown(page, name: str) -> None:
    page.wait_for_function("""(name) => document.querySelector('#case-name').textContent === name
        && document.querySelector('#verdict').dataset.state === 'final'""", arg=name, timeout=120_000)


def test_upload_with_exam_fields_link_reload_review_and_audit(browser, page, base, brain_video, shots):
    open_viewer(page, base + "/")
    page.click("#exam summary")
    page.fill("#exam-patient", EXAM["patient"])
    page.fill("#exam-date", EXAM["exam_date"])
    page.fill("#exam-region", EXAM["region"])
    assert "P-017" in page.inner_text("#exam summary")
    page.set_input_files("#file", str(brain_video))
    case_shown(page, brain_video.name)
    case_id = page.evaluate("location.hash").removeprefix("#/cases/")
    case = httpx.get(f"{base}/v1/cases/{case_id}").json()
    assert {key: case[key] for key in EXAM} == EXAM and case["reviewed"] is False and case["review"] is None
    assert page.inner_text("#case-exam") == "Patient P-017 · exam 2024-05-02 · terminal ileum"
    # the exam fields are cleared once the server took the upload: the next patient's video starts blank
    assert [page.input_value(f"#exam-{field}") for field in ("patient", "date", "region")] == ["", "", ""]
    assert page.inner_text("#exam-now") == "(cleared after the last upload)"
    assert "Filed under patient P-017 · exam 2024-05-02 · terminal ileum. Exam fields cleared" in \
        page.inner_text("#uploads")
    item = page.locator(f"#cases a.case-item[data-id='{case_id}']")
    assert item.get_attribute("href") == f"#/cases/{case_id}" and "patient P-017" in item.inner_text()
    exam_line = item.locator(".exam-line")  # the whole exam date, not cut at 1280 px
    assert "exam 2024-05-02" in exam_line.inner_text() and exam_line.evaluate("el => el.scrollWidth <= el.clientWidth")

    # the stable link opens the case in a new page, and again after a reload
    other = browser.new_page(viewport={"width": 1280, "height": 800})
    open_viewer(other, f"{base}/#/cases/{case_id}")
    case_shown(other, brain_video.name)
    other.reload()
    case_shown(other, brain_video.name)
    assert other.get_attribute(f".case-item[data-id='{case_id}']", "aria-current") == "true"
    other.close()

    # two reviews: both kept, oldest first; the list marks the case reviewed
    verdict = case["verdict"]["class"]
    page.click("#review summary")
    assert page.inner_text("#review-summary") == "(none yet)" and page.is_visible("#review-form")
    assert page.locator("#review-histology option").all_inner_texts()[1:] == [
        "glioblastoma", "meningioma", "none of the model's classes (other tissue)"]
    assert axe_violations(page) == []
    page.click("#review-submit")  # nothing chosen: one clear line, nothing sent
    assert page.inner_text("#review-error") == "Choose the histology."
    page.select_option("#review-histology", case["verdict"]["class"])
    assert page.is_hidden("#review-error")  # the field changed: the line that asked for it goes
    other = "meningioma" if verdict == "glioblastoma" else "glioblastoma"
    for histology, agrees, note in ((verdict, "true", "biopsy 3"), (other, "false", "")):
        page.select_option("#review-histology", histology)
        # the verdict is a class: agreement follows from the histology, set and not asked (the server's rule)
        chosen = page.locator(f"#review-form input[name=agrees][value={agrees}]")
        assert chosen.is_checked() and chosen.is_disabled() and verdict in page.inner_text("#review-agrees-why")
        page.fill("#review-note", note)
        count = page.locator("#reviews li[data-id]").count()
        page.click("#review-submit")
        page.wait_for_function(f"document.querySelectorAll('#reviews li[data-id]').length === {count + 1}")
    reviews = httpx.get(f"{base}/v1/cases/{case_id}").json()["reviews"]
    assert [(r["histology"], r["agrees"], r["note"]) for r in reviews] == [(verdict, True, "biopsy 3"),
                                                                            (other, False, "")]
    texts = page.locator("#reviews li").all_inner_texts()
    assert f"local: histology {verdict}, agrees with the verdict {verdict}" in texts[0] and "biopsy 3" in texts[0]
    assert f"histology {other}, disagrees" in texts[1]
    assert page.is_hidden("#review-error")
    page.wait_for_function(f"document.querySelector(\".case-item[data-id='{case_id}']\").textContent"
                           ".includes('reviewed: histology glioblastoma, disagrees')")  # the latest review

    # the audit page counts the case (the latest review's histology), by model version and by month
    page.click("#nav-audit")
    page.wait_for_selector("#audit-counted")
    assert page.evaluate("location.hash") == "#/audit" and page.evaluate("document.activeElement.id") == "audit-title"
    assert page.inner_text("#audit-counted").startswith("1 case counted.")
    assert page.inner_text("#audit-positive").startswith("Sensitivity is for meningioma, the model's positive class")
    figures = page.locator("#audit-body table").first.inner_text()
    for name in ("Accuracy", "Sensitivity", "Specificity"):
        assert name in figures
    right = 0  # the latest review's histology is the other class
    accuracy = next(line for line in figures.splitlines() if line.startswith("Accuracy")).split("\t")
    assert accuracy[1] == f"{right:.3f}" and accuracy[3] == f"{right} of 1" and " to " in accuracy[2]
    confusion = page.locator("#audit-body table").nth(1)
    assert "histology in rows" in confusion.inner_text()
    row = confusion.locator("tbody tr", has_text=other).locator("td")
    assert row.all_inner_texts() == (["1", "0"] if verdict == "glioblastoma" else ["0", "1"])
    page.wait_for_function("() => { const img = document.querySelector('#audit-calibration');"
                           " return img && img.naturalWidth > 0; }")
    assert "Calibration plot" in page.get_attribute("#audit-calibration", "alt")
    assert "2024-05" in page.inner_text("#audit-body")
    assert axe_violations(page) == []
    page.set_viewport_size({"width": 1280, "height": 1400})  # the whole page: its main area scrolls itself
    page.screenshot(path=str(shots / "viewer-audit-1280x1400.png"))
    page.select_option("#a-model", index=1)  # a model version: its filter goes into the address
    page.wait_for_function("location.hash.startsWith('#/audit?model=')")
    page.fill("#a-since", "2024-06-01")
    none_since = ("document.querySelector('#audit-counted') && "
                  "document.querySelector('#audit-counted').textContent.startsWith('0 cases counted.')")
    page.wait_for_function(none_since)
    page.reload()  # the audit's address keeps its filters
    page.wait_for_function(none_since)
    assert page.input_value("#a-since") == "2024-06-01" and page.input_value("#a-model") != ""
    page.set_viewport_size({"width": 390, "height": 844})
    assert small_targets(page) == [] and axe_violations(page) == []


def test_search_and_filters_over_the_cases_from_the_keyboard(page, base, frame_png, tmp_path):
    open_viewer(page, base + "/")
    page.click("#exam summary")
    page.fill("#exam-patient", "P-099")
    page.fill("#exam-date", "2999-01-01")  # refused before anything is sent
    page.set_input_files("#file", str(frame_png))
    page.wait_for_selector("#notice.error")
    assert page.inner_text("#notice") == "men-09-f40.png not sent: exam_date: 2999-01-01 is in the future"
    assert len(httpx.get(base + "/v1/cases").json()) == 1
    assert page.input_value("#exam-patient") == "P-099"  # a refused upload keeps its exam fields
    page.fill("#exam-date", "")
    page.set_input_files("#file", str(frame_png))
    case_shown(page, frame_png.name)
    page.wait_for_function("document.querySelectorAll('#cases .case-item').length === 2")
    assert page.inner_text("#cases-total") == "· 2"

    page.focus("#f-q")  # the search: typed, Enter; the list and its total follow
    page.keyboard.type("P-01")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#cases .case-item').length === 1")
    assert page.inner_text("#cases-total") == "· 1 found" and "P-017" in page.inner_text("#cases")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the filters open from the keyboard
    assert page.evaluate("document.querySelector('#more-filters').open")
    page.fill("#f-q", "")
    for field, value, patients in (("#f-reviewed", "true", ["P-017"]), ("#f-reviewed", "false", ["P-099"]),
                                   ("#f-reviewed", "", ["P-099", "P-017"])):
        page.select_option(field, value)
        page.wait_for_function("""(want) => [...document.querySelectorAll('#cases .exam-line')]
            .map((el) => el.textContent.split(' · ')[0]).join() === want""",
                               arg=",".join(f"patient {p}" for p in patients))
    page.fill("#f-since", "2024-05-01")
    page.fill("#f-until", "2024-05-03")
    page.wait_for_function("document.querySelectorAll('#cases .case-item').length === 1")
    assert "P-017" in page.inner_text("#cases") and "2 on" in page.inner_text("#filters-on")
    total = httpx.get(base + "/v1/cases", params={"since": "2024-05-01", "until": "2024-05-03"})
    assert total.headers["X-Total-Count"] == "1"
    page.select_option("#f-verdict", "none")
    page.wait_for_selector("#cases .empty-list:has-text('No case matches these filters.')")
    page.click("#f-clear")
    page.wait_for_function("document.querySelectorAll('#cases .case-item').length === 2")

    first = page.locator("#cases .case-item").last  # a case of the list opens with Enter, at its address
    first.focus()
    page.keyboard.press("Enter")
    page.wait_for_function("(href) => location.hash === href", arg=first.get_attribute("href"))
    page.wait_for_function("document.querySelector('#case-exam').textContent.startsWith('Patient P-017')")
    page.wait_for_function("document.activeElement.id === 'case-name'")  # the focus follows to the case
    page.goto(base + "/#/cases/nosuchcase")
    page.wait_for_selector("#notice.error")
    assert page.inner_text("#notice").startswith("Case nosuchcase: ")
    assert axe_violations(page) == []
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(base + "/")
    page.click("#exam summary")
    page.click("#more-filters summary")
    assert small_targets(page) == []


def test_a_viewer_sees_the_reviews_but_may_not_add_one(page, base, store, shots):
    case = httpx.get(base + "/v1/cases", params={"patient": "P-017"}).json()[0]
    tokens = {}
    for name, role in (("vera", "viewer"), ("rex", "reviewer")):
        added = subprocess.run([sys.executable, "-m", "mucosa", "users", "add", name, "--role", role, "--store",
                                str(store)], capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        tokens[name] = added.stdout.split()[-1]
    open_viewer(page, f"{base}/?token={tokens['vera']}#/cases/{case['id']}")
    case_shown(page, case["name"])
    assert page.url == f"{base}/#/cases/{case['id']}"  # the token is read, then taken out of the address bar
    assert "token" not in page.get_attribute("#dl-json", "href")  # a download sends it as a header
    with page.expect_download() as download:
        page.click("#dl-json")
    assert download.value.suggested_filename == Path(case["name"]).stem + "-report.json"  # the server's name
    assert json.loads(Path(download.value.path()).read_text())["case"]["id"] == case["id"]
    page.click("#review summary")
    assert page.is_hidden("#review-form") and page.locator("#reviews li[data-id]").count() == 2
    assert page.inner_text("#me") == "vera · viewer" and page.is_hidden("#delete")  # only an admin deletes
    assert page.inner_text("#review-why") == ("Signed in as vera, role viewer: only a reviewer or an admin records "
                                              "reviews.")
    refused = httpx.post(f"{base}/v1/cases/{case['id']}/review", json={"histology": "meningioma", "agrees": True},
                         headers={"Authorization": f"Bearer {tokens['vera']}"})
    assert refused.status_code == 403 and set(refused.json()) == {"detail"}

    # signing out forgets the token: the sign-in form alone, without the upload area or the list
    page.click("#signout")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.evaluate("sessionStorage.length") == 0 and page.is_hidden("#drop") and page.is_hidden("#cases")
    assert page.evaluate("document.activeElement.id") == "signin-token" and page.is_hidden("#signout")
    page.fill("#signin-token", "not-a-token")
    page.keyboard.press("Enter")
    page.wait_for_selector("#signin-error:not([hidden])")
    assert page.inner_text("#signin-error").startswith("Token rejected") and page.is_hidden("#drop")
    assert axe_violations(page) == []
    page.screenshot(path=str(shots / "viewer-signin-1280x800.png"))
    page.fill("#signin-token", tokens["rex"])
    page.click("#signin-submit")
    page.wait_for_function("document.querySelector('#me').textContent === 'rex · reviewer'")
    assert page.is_visible("#drop") and page.is_hidden("#signin")

    # a reviewer whose histology the server refuses reads why, in one line
    page.click(f".case-item[data-id='{case['id']}']")
    case_shown(page, case["name"])
    page.locator("#review").evaluate("details => { details.open = true; }")  # still open from before
    page.evaluate("document.querySelector('#review-histology').add(new Option('adenoma', 'adenoma'))")
    page.select_option("#review-histology", "adenoma")  # agreement set from it: no
    page.click("#review-submit")
    page.wait_for_selector("#review-error:not([hidden])")
    error = page.inner_text("#review-error")
    assert error.startswith("The review was not recorded: ") and "adenoma" in error and "\n" not in error
    assert page.get_attribute("#review-error", "role") == "alert"
    assert page.locator("#reviews li[data-id]").count() == 2
    page.set_viewport_size({"width": 390, "height": 844})  # a phone shows who is signed in, and sign out
    assert page.is_visible("#me") and page.is_visible("#signout") and small_targets(page) == []
