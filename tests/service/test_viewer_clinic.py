"""The viewer as a clinic uses it, in the real Chromium (Playwright, :mod:`browsing`), against ``mucosa serve``
with a model of the brain data's classes (glioblastoma, meningioma: neutral colours) whose circular field of
view is kept whole: a damaged recording says so everywhere, colours and probabilities are neutral and named,
the banner heads every page, axe-core finds no serious or critical WCAG 2.1 AA violation, everything works
from the keyboard and on a phone, /docs works offline, and several videos in one drop open a case each.

Screenshots (1280×800 and 390×844) go to $MUCOSA_SCREENSHOTS (default: a temporary folder); docs/serve/ holds
the ones the README and docs/serve.md show.
"""

import re
from urllib.parse import urlparse

import httpx
import pytest

from browsing import axe_violations, mucosa_serve, small_targets
from mucosa.service.presentation import BANNER, NEUTRAL

pytestmark = pytest.mark.realdata
CLASSES = ("glioblastoma", "meningioma")


@pytest.fixture(scope="module")
def base(brain_checkpoint, tmp_path_factory):
    with mucosa_serve(brain_checkpoint, tmp_path_factory.mktemp("clinic")) as url:
        yield url


def open_viewer(page, base: str) -> None:
    page.goto(base + "/")
    page.wait_for_selector("#model:has-text('glioblastoma / meningioma')", state="attached")  # hidden on phones


def drop(page, *paths) -> None:
    """Choose files as one drop and wait for the first case it opens (named after its first file) to be final."""
    page.set_input_files("#file", [str(path) for path in paths])
    page.wait_for_function("""(name) => document.querySelector('#case-name').textContent === name
        && document.querySelector('#verdict').dataset.state === 'final'""", arg=paths[0].name, timeout=120_000)


def opened(page, base: str) -> dict:
    return httpx.get(base + "/v1/cases/" + page.get_attribute("#dl-csv", "href").split("/")[3]).json()


def test_axe_finds_no_serious_or_critical_violation_on_any_view(page, base, brain_video):
    open_viewer(page, base)
    page.wait_for_selector("#cases .empty-list")  # the empty list (this test runs first), once the viewer has drawn it
    assert page.locator("#cases .empty-list").count() == 1
    assert axe_violations(page) == []
    drop(page, brain_video)
    page.check("#gradcam")
    page.wait_for_selector("#frame[data-gradcam=shown]", timeout=30_000)
    assert axe_violations(page) == []  # a case open
    page.set_viewport_size({"width": 390, "height": 844})
    assert axe_violations(page) == []  # on a phone
    page.goto(base + page.get_attribute("#dl-html", "href"))
    assert axe_violations(page) == []  # the report page


def test_several_videos_in_one_drop_open_a_case_each_with_progress_per_file(page, base, damaged):
    open_viewer(page, base)
    before = {c["id"] for c in httpx.get(base + "/v1/cases").json()}
    drop(page, damaged / "cut.mpg", damaged / "mid.mpg")
    rows = page.locator("#uploads li")
    assert rows.count() == 2
    for k, name in enumerate(("mid.mpg", "cut.mpg")):  # newest first
        assert name in rows.nth(k).inner_text() and "a case each" in rows.nth(k).inner_text()
        assert rows.nth(k).locator("progress").get_attribute("value") == "100"
    new = [c for c in httpx.get(base + "/v1/cases").json() if c["id"] not in before]
    assert sorted(c["files"][0] for c in new) == ["cut.mpg", "mid.mpg"] and len({c["id"] for c in new}) == 2
    page.wait_for_function("document.querySelectorAll('#cases .case-item').length >= 2")


def test_a_damaged_recording_says_so_on_the_header_the_timeline_and_the_report(page, base, damaged, shots):
    open_viewer(page, base)
    drop(page, damaged / "cut.mpg")
    case = opened(page, base)
    assert case["files"] == ["cut.mpg"] and case["warnings"] and case["frames_expected"] > case["frames_done"]
    header = page.inner_text("#case-warnings")
    assert page.is_visible("#case-warnings") and "Damaged recording" in header
    assert all(text in header for text in case["warnings"])
    assert f"{case['frames_done']} decoded of {case['frames_expected']} announced" in page.inner_text("#case-meta")
    timeline = page.locator("#timeline")
    missing = case["frames_expected"] - case["frames_done"]  # the timeline is drawn after the header: wait for it
    page.wait_for_function(f"document.querySelector('#timeline').dataset.missing === '{missing}'")
    assert int(timeline.get_attribute("data-missing")) == missing
    assert "announced by the video but not decoded" in page.inner_text("#timeline-summary")
    assert "damaged" in page.locator(f".case-item[data-id='{case['id']}']").inner_text()
    report = httpx.get(base + page.get_attribute("#dl-html", "href")).text
    assert "Damaged recording" in report and all(text in report for text in case["warnings"])
    page.screenshot(path=str(shots / "viewer-damaged-1280x800.png"))

    drop(page, damaged / "mid.mpg")  # noise in its middle: a gap between decoded frames
    assert int(page.get_attribute("#timeline", "data-gaps")) >= 1
    assert re.search(r"\d+ gaps? between decoded frames", page.inner_text("#timeline-summary"))


def test_refusals_name_the_kinds_of_the_files(page, base, brain_video, damaged, frame_png, tmp_path):
    (tmp_path / "notes.txt").write_text("not a video")
    open_viewer(page, base)
    for files, words in (((brain_video, damaged / "cut.mpg", tmp_path / "notes.txt"),
                          "2 videos and 1 file: notes.txt: not an image or video type mucosa reads"),
                         ((brain_video, frame_png, frame_png),
                          "1 video and 2 images: 1 video and 2 images given together: a case is one video")):
        page.set_input_files("#file", [str(f) for f in files])
        page.wait_for_selector("#notice.error")
        assert page.inner_text("#notice").startswith(words)
        assert page.get_attribute("#notice", "role") == "alert"  # an error is announced, as the verdict is
        page.evaluate("notice('')")


def test_neutral_colours_the_confidence_of_the_called_class_and_named_probabilities(page, base, brain_video):
    card = httpx.get(base + "/v1/model").json()
    assert card["colours"] == dict(zip(CLASSES, NEUTRAL[:2]))  # Okabe–Ito blue and orange: no clinical meaning
    open_viewer(page, base)
    drop(page, brain_video)
    verdict = opened(page, base)["verdict"]
    called = verdict["class"]
    confidence = verdict["score"] if called == "meningioma" else 1 - verdict["score"]
    assert page.inner_text("#verdict-score") == f"mean probability of {called} {confidence:.3f}"
    assert page.evaluate("getComputedStyle(document.querySelector('#verdict')).borderLeftColor") == \
        _rgb(card["colours"][called])
    total = sum(verdict["calls"].values())
    assert page.inner_text("#verdict-shares-text") == "called " + " · ".join(
        f"{c} {round(100 * verdict['calls'][c] / total)}% ({verdict['calls'][c]})" for c in CLASSES)
    texts = [page.inner_text(selector) for selector in ("#verdict", "#current", "#frame-badge")]
    texts += [page.get_attribute("#frame", "aria-label"), page.get_attribute("#timeline", "aria-valuetext")]
    numbers = 0
    for text in texts:  # every probability on the page names its class
        for match in re.finditer(r"\b[01]\.\d{3}\b", text):
            before = text[: match.start()].rstrip()
            assert re.search(r"(P\((glioblastoma|meningioma)\)|probability of (glioblastoma|meningioma))$", before), \
                (text, match.group())
            numbers += 1
    assert numbers >= 5


def _rgb(colour: str) -> str:
    r, g, b = (int(colour[k:k + 2], 16) for k in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_the_banner_heads_every_page_and_report(page, base, brain_video):
    for width, height in ((1280, 800), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        open_viewer(page, base)
        banner = page.locator(".banner strong")
        assert banner.inner_text() == BANNER and banner.is_visible() and banner.bounding_box()["y"] < 30
    if not page.locator("#cases .case-item").count():
        drop(page, brain_video)
    case_id = httpx.get(base + "/v1/cases").json()[0]["id"]
    page.goto(f"{base}/v1/cases/{case_id}/report.html")
    assert page.inner_text("header.banner") == BANNER
    page.goto(base + "/docs")
    page.wait_for_selector(".information-container")
    assert BANNER in page.inner_text(".information-container")
    pdf = httpx.get(f"{base}/v1/cases/{case_id}/report.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")  # its text: tests/service/test_report.py


def focus_ring(page) -> dict:
    """The focused element and the outline it (or the drop zone or toggle holding it) shows."""
    return page.evaluate("""() => {
        const el = document.activeElement, ring = el.closest('.drop, .toggle') || el, style = getComputedStyle(ring);
        return {id: el.id, cls: String(el.className), outline: style.outlineStyle,
                width: parseFloat(style.outlineWidth)};
    }""")


def test_keyboard_reaches_and_operates_everything_with_a_visible_focus_ring(page, base, brain_video, damaged):
    open_viewer(page, base)
    drop(page, brain_video, damaged / "cut.mpg")  # two cases: the first opens
    page.wait_for_function("document.querySelectorAll('#cases .case-item').length >= 2")
    first = page.inner_text("#case-name")
    page.focus("body")
    reached = {}
    for _ in range(60):
        page.keyboard.press("Tab")
        ring = focus_ring(page)
        key = ring["id"] or ("case-item" if "case-item" in ring["cls"] else ring["cls"])
        reached.setdefault(key, ring)
        if key == "timeline":
            break
    for control in ("file", "case-item", "dl-report", "dl-csv", "delete", "play", "seek", "gradcam", "timeline"):
        assert control in reached, (control, list(reached))
        assert reached[control]["outline"] != "none" and reached[control]["width"] >= 2, reached[control]

    other = page.locator(".case-item:not([aria-current])").first  # a case of the list, opened with Enter
    other.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('#case-name').textContent !== {first!r}")
    page.wait_for_function("document.activeElement.id === 'case-name'")  # the focus goes to the case opened
    page.wait_for_selector("#verdict[data-state=final]")
    page.focus("#play")
    page.keyboard.press("Space")
    assert page.get_attribute("#play", "aria-label") == "pause"
    page.keyboard.press("Space")
    assert page.get_attribute("#play", "aria-label") == "play"
    page.focus("#timeline")
    page.keyboard.press("Home")
    assert page.get_attribute("#timeline", "aria-valuenow") == "1"  # frames counted from 1, as shown
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#timeline", "aria-valuenow") == "2"
    page.wait_for_selector("#frame[data-frame='1']")
    page.keyboard.press("End")
    count = int(page.get_attribute("#timeline", "data-points"))
    assert int(page.get_attribute("#timeline", "aria-valuenow")) == count
    assert page.inner_text("#pos").startswith(f"frame {count} of {count} · ")
    page.keyboard.press("Space")  # space plays and pauses with the focus on the timeline too
    assert page.get_attribute("#play", "aria-label") == "pause"
    page.keyboard.press("Space")
    assert page.get_attribute("#play", "aria-label") == "play"
    page.focus("#gradcam")
    page.keyboard.press("Space")
    assert page.is_checked("#gradcam")

    # text alternatives of the frame and the timeline; only the verdict is announced
    assert page.get_attribute("#frame", "role") == "img"
    assert "P(meningioma)" in page.get_attribute("#frame", "aria-label")
    assert page.get_attribute("#timeline", "role") == "slider" and page.inner_text("#timeline-summary").startswith(
        "The timeline plots P(meningioma) for")
    regions = "[aria-live], [role=status], [role=alert], [role=log], [role=timer], [role=marquee], output"
    live = page.evaluate(f"[...document.querySelectorAll('{regions}')].map((el) => el.id)")
    assert live == ["verdict-label"]


def test_a_phone_shows_the_frame_and_the_verdict_at_once_and_every_target_is_44_px(browser, base, brain_video,
                                                                                   shots):
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    open_viewer(page, base)
    # no case open: the upload control comes first and says "choose" (nothing is dropped on a phone)
    assert page.is_visible("#drop >> text=Choose videos or images") and page.is_hidden("#drop >> text=Drop pCLE")
    upload, empty = (page.locator(selector).bounding_box() for selector in ("#drop", "#empty"))
    assert upload["y"] + upload["height"] <= 844 and upload["y"] < empty["y"]
    assert page.is_visible("#me") and page.inner_text("#me") == "local · admin"  # who is signed in
    drop(page, brain_video)
    page.wait_for_selector("#frame[data-frame]")
    assert page.evaluate("window.scrollY") == 0
    for selector in ("#frame", "#verdict-label", "#verdict-score"):
        box = page.locator(selector).bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= 844, (selector, box)
    assert page.evaluate("document.documentElement.scrollWidth <= 390")
    assert small_targets(page) == []
    legend = page.locator("#legend > span").evaluate_all("items => items.map((i) => i.getBoundingClientRect().height)")
    assert len(legend) >= 5 and max(legend) < 24, legend  # each entry on one line, not a word per line
    page.screenshot(path=str(shots / "viewer-390x844.png"))
    for width, height in ((768, 1024), (1280, 800)):  # a tablet, a desktop
        page.set_viewport_size({"width": width, "height": height})
        assert small_targets(page) == [] and page.evaluate(f"document.documentElement.scrollWidth <= {width}")
    page.close()


def test_docs_work_offline(browser, base):
    context = browser.new_context()
    outside = []

    def local_only(route):
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", local_only)
    page = context.new_page()
    page.goto(base + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    operations = page.locator(".opblock-summary-path").all_inner_texts()
    paths = {op.replace("\u200b", "") for op in operations}
    assert {"/v1/cases", "/v1/cases/{case_id}/report.pdf", "/v1/predict"} <= paths
    assert outside == []
    context.close()
