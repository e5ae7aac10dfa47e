"""The atlas in the viewer, in the real Chromium (Playwright, :mod:`browsing`), against ``mucosa serve`` with a tiny
model that ``mucosa train`` wrote with its atlas: a case shows its similar confirmed cases and the atlas's vote,
a click puts a similar case's closest frame beside the case's own (keyboard operable, with alt text; the atlas's
frame is its 48-pixel thumbnail, said so and not blown up), a foreign image is called `unfamiliar` with its frames
marked on the timeline (and in the legend) and no class named as the call anywhere (badge, current frame, the
frames' shares, the vote, the similar cases), a vote that names another class than the verdict is flagged in words
(for a still image too, and against an unfamiliar case's unsupported guess), an atlas that is not calibrated is said
to be unable to tell unfamiliar frames, and axe-core stays clean on the new panel. What is drawn after the case's
verdict is waited for before it is read."""

import re
import shutil

import httpx
import pytest

from browsing import axe_violations, mucosa_serve
from mucosa.inference.verdict import GATHERING
from serving import patient_images, sine_png


@pytest.fixture(scope="module")
def base(atlas_run, tmp_path_factory):
    with mucosa_serve(atlas_run.best, tmp_path_factory.mktemp("atlas-viewer")) as url:
        yield url


def drop(page, base, *paths) -> None:
    page.goto(base + "/")
    page.wait_for_function("() => document.querySelector('#model').textContent.includes('threshold')")
    page.set_input_files("#file", [str(path) for path in paths])
    page.wait_for_function("""(name) => document.querySelector('#case-name').textContent === name
        && document.querySelector('#verdict').dataset.state === 'final'""", arg=paths[0].name, timeout=120_000)


def expect(locator):
    """Playwright's assertions, which wait for the element to be drawn (imported here: playwright may be missing)."""
    from playwright.sync_api import expect

    return expect(locator)


def test_similar_cases_open_a_side_by_side_compare(page, base, atlas_run):
    drop(page, base, *patient_images(atlas_run.cohort, "P01"))
    assert page.locator("#atlas-note").is_hidden()
    assert "atlas vote (second opinion)" in page.text_content("#verdict-atlas")
    assert "not checked" not in page.text_content("#verdict-atlas")  # a calibrated atlas checks every case
    page.wait_for_selector("#similar-list button", timeout=30_000)
    items = page.locator("#similar-list button")
    assert 1 <= items.count() <= 5
    assert all(alt.startswith("closest frame") for alt in items.locator("img").evaluate_all(
        "imgs => imgs.map(i => i.alt)"))
    case_id = page.evaluate("location.hash").removeprefix("#/cases/")
    similar = httpx.get(f"{base}/v1/cases/{case_id}/similar", params={"k": 5}).json()["similar"]
    first = similar[0]
    for found, text in zip(similar, items.all_inner_texts()):  # how many frames found it: the order's first key
        assert f"found by {found['matched_frames']} of {found['query_frames']} frames" in text, text
        assert f"distance {found['distance']:.3f}" in text and found["closest"][0]["file"] in text
    assert "0 is identical, smaller is closer" in page.inner_text("#similar-about")
    assert "unfamiliar (unlike the atlas)" in page.inner_text("#legend")
    assert axe_violations(page) == []
    items.first.focus()
    page.keyboard.press("Enter")  # keyboard operable
    page.wait_for_selector("#compare:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "compare-close"
    for image in ("#compare-ours", "#compare-theirs"):
        page.wait_for_function(f"() => document.querySelector('{image}').naturalWidth > 0")
        assert page.get_attribute(image, "alt")
    assert "confirmed case" in page.get_attribute("#compare-theirs", "alt")
    # the atlas keeps 48-pixel thumbnails: shown at twice that, smoothly, and said to be one
    expect(page.locator("#compare-theirs-size")).to_contain_text("atlas thumbnail, 48 px")
    assert page.locator("#compare-theirs").bounding_box()["width"] == 96
    assert page.eval_on_selector("#compare-theirs", "i => getComputedStyle(i).imageRendering") == "auto"
    assert page.inner_text("#compare-head") == "Compare with a confirmed case"
    assert page.text_content("#similar-title") == "Similar confirmed cases"
    caption = page.inner_text("#compare-theirs-caption")  # the list's distance, the file rather than the case id
    assert f"distance {first['distance']:.3f} as listed" in caption and first["closest"][0]["file"] in caption
    assert first["case"] not in caption + page.get_attribute("#compare-theirs", "alt")
    assert page.inner_text("#compare-ours-caption").startswith("This case · frame ")
    assert axe_violations(page) == []
    page.keyboard.press("Escape")
    assert page.locator("#compare").is_hidden()
    assert page.evaluate("document.activeElement.classList.contains('similar-item')")

    # the atlas's vote against the verdict: flagged in words when it names another class, else not
    verdict = httpx.get(f"{base}/v1/cases/{case_id}").json()["verdict"]
    assert page.is_visible("#verdict-disagrees") == (verdict["atlas_vote"]["label"] != verdict["class"])
    card = httpx.get(f"{base}/v1/model").json()
    for vote in card["classes"]:
        page.evaluate("""(vote) => { S.summary = {...S.summary, verdict: {...S.summary.verdict,
            atlas_vote: {label: vote, share: 0.8}}}; renderVerdict(); }""", vote)
        shown = page.is_visible("#verdict-disagrees")
        assert shown == (vote != verdict["class"])
        if shown:
            assert page.inner_text("#verdict-disagrees").startswith(
                f"⚠ The atlas's vote disagrees with the verdict: most of the nearest confirmed frames are {vote} (80%)")
            assert axe_violations(page) == []
    # a share of frames above 0 but under 1% is not "0%" (the brain case's 4 unfamiliar frames of 820)
    assert page.evaluate("[0, 4 / 820, 0.5, 816 / 820, 1].map(pct)") == ["0%", "<1%", "50%", ">99%", "100%"]
    page.evaluate("""() => { S.summary = {...S.summary, verdict: {...S.summary.verdict, unfamiliar: 4 / 820}};
        renderVerdict(); }""")
    assert "unfamiliar frames <1%" in page.text_content("#verdict-atlas")
    # live, before the atlas can judge the case (too few frames): the server's words, no class nor its colour
    page.evaluate("""(text) => { S.summary = {...S.summary, status: "running", verdict: {...S.summary.verdict,
        state: "running", label: null, class: null, text, atlas_vote: null, frames: 13, needed: 64}};
        renderVerdict(); }""", GATHERING)
    assert page.text_content("#verdict-label") == GATHERING.capitalize()
    assert "pending" in page.get_attribute("#verdict", "class")
    assert page.text_content("#verdict-score").startswith("13 of the 64 informative frames read")
    assert page.evaluate("getComputedStyle(document.querySelector('#verdict')).getPropertyValue('--tone')") not in [
        page.evaluate("(cls) => colourOf(cls)", cls) for cls in card["classes"]]
    page.evaluate("() => { showFrame(); drawTimeline(); }")  # nor does a frame, or the timeline, name the call
    assert "neutral" in page.get_attribute("#verdict-shares", "class")
    assert page.text_content("#verdict-shares-text").startswith("No class is called until")
    assert page.text_content("#frame-badge").startswith("network: P(")
    assert "not judged yet" in page.text_content("#current") and "Called" not in page.text_content("#current")
    assert "unfamiliar" in page.get_attribute("#legend", "class")  # the legend's no-class style, but not the word
    assert "no class called: not judged yet" in page.text_content("#legend")
    assert "unfamiliar frames" not in page.text_content("#verdict-atlas")  # a share of a few frames says nothing

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the similar cases as wide as the verdict
    widths = [page.locator(panel).bounding_box()["width"] for panel in ("#similar", "#verdict", ".timeline")]
    assert abs(widths[0] - widths[1]) < 1 and abs(widths[0] - widths[2]) < 1, widths


def test_a_foreign_image_is_unfamiliar_and_marked(page, base, tmp_path):
    drop(page, base, sine_png(tmp_path))
    assert page.text_content("#verdict-label") == "Unfamiliar"
    assert "unfamiliar" in page.get_attribute("#verdict", "class")
    assert "unlike the confirmed cases" in page.text_content("#verdict-score")
    assert "100% of its frames are marked" in page.text_content("#verdict-score")
    assert page.get_attribute("#timeline", "data-unfamiliar") == "1"
    assert "marked unfamiliar" in page.text_content("#timeline-summary")
    assert axe_violations(page) == []


def test_an_unfamiliar_case_names_no_class_as_the_call(page, base, tmp_path):
    """The sine image is `unfamiliar` (ratio far above 1): the verdict's words are the server's reason (the report's
    too), the network's call is said only as what it alone would say, in greys, and the nearest atlas cases are
    headed as not similar, the vote as no second opinion."""
    drop(page, base, sine_png(tmp_path))
    case_id = page.evaluate("location.hash").removeprefix("#/cases/")
    verdict = httpx.get(f"{base}/v1/cases/{case_id}").json()["verdict"]
    classes = httpx.get(f"{base}/v1/model").json()["classes"]
    assert verdict["label"] == "unfamiliar" and verdict["unfamiliarity_ratio"] > 1
    expect(page.locator("#similar-title")).to_have_text("Nearest atlas cases — this recording is unlike all of them")
    expect(page.locator("#similar-about")).to_contain_text("Not similar")
    expect(page.locator("#similar-list button").first).to_be_visible(timeout=30_000)
    score = page.locator("#verdict-score")
    expect(score).to_have_text(verdict["reason"])
    report = httpx.get(f"{base}/v1/cases/{case_id}/report.json").json()["verdict"]
    assert report["reason"] == verdict["reason"]  # one wording, the server's
    assert f"unfamiliarity ratio {verdict['unfamiliarity_ratio']:.2f}" in verdict["reason"]
    assert "100% of its frames are marked unfamiliar" in verdict["reason"]
    # a review of it judged the verdict unfamiliar (it calls no class), and the review list says so
    review = httpx.post(f"{base}/v1/cases/{case_id}/review", json={"histology": classes[0], "agrees": True})
    assert review.status_code == 201, review.text
    words = page.evaluate("(r) => reviewWords(r)", review.json())
    assert f"histology {classes[0]}, agrees with the verdict unfamiliar (model " in words, words

    badge = re.compile(rf"^network: P\(({'|'.join(classes)})\) \d\.\d{{3}} · frame unfamiliar$")
    expect(page.locator("#frame-badge")).to_have_text(badge)
    expect(page.locator("#current")).to_contain_text("Network alone")
    terms = page.locator("#current dt").all_inner_texts()
    assert "Called" not in terms and "Unfamiliar frame" in terms, terms
    expect(page.locator("#verdict-shares-text")).to_have_text(verdict["network_alone"])
    assert verdict["network_alone"].startswith("The network alone, not a verdict")
    expect(page.locator("#verdict-shares")).to_have_class(re.compile(r"\bneutral\b"))
    fills = page.eval_on_selector_all("#verdict-shares span", "s => s.map(e => getComputedStyle(e).backgroundColor)")
    assert fills and set(fills) <= {"rgb(107, 118, 132)", "rgb(170, 180, 193)"}, fills
    expect(page.locator("#verdict-atlas")).to_contain_text("no second opinion (the nearest atlas frames are not")
    assert "atlas vote (second opinion)" not in page.inner_text("#verdict-atlas")
    shown = " ".join(page.inner_text(where) for where in ("#verdict", "#frame-badge", "#current"))
    shown += page.get_attribute("#frame", "aria-label") + page.get_attribute("#timeline", "aria-valuetext")
    for cls in classes:
        assert f"called {cls}" not in shown.lower() and f"Grad-CAM of {cls}" not in shown, cls
    assert page.is_visible("#legend .lg-network") and not page.is_visible("#legend .lg-class")
    assert "no class called: unfamiliar" in page.inner_text("#legend")
    assert axe_violations(page) == []

    # the nearest atlas frames' vote against the network's unsupported guess: said, and neither is a verdict
    guess = classes[1] if verdict["score"] >= verdict["threshold"] else classes[0]
    assert page.is_visible("#verdict-disagrees") == (verdict["atlas_vote"]["label"] != guess)
    for vote in classes:
        page.evaluate("""(vote) => { S.summary = {...S.summary, verdict: {...S.summary.verdict,
            atlas_vote: {label: vote, share: 0.8}}}; renderVerdict(); }""", vote)
        assert page.is_visible("#verdict-disagrees") == (vote != guess)
        if vote != guess:
            assert page.inner_text("#verdict-disagrees") == (
                f"⚠ The network's unsupported guess ({guess}) and most of the nearest atlas frames ({vote}, 80%) "
                "disagree. Neither is a verdict: this recording is unlike the confirmed cases.")
            assert axe_violations(page) == []

    page.locator("#similar-list button").first.click()
    expect(page.locator("#compare-head")).to_have_text("Compare with a nearest atlas case (not similar)")
    page.check("#gradcam")  # the heat map is the network's attention for a guess, not the evidence of a call
    expect(page.locator("#frame-badge")).to_have_text("Grad-CAM: the network's attention for its unsupported guess",
                                                      timeout=30_000)


def test_a_still_images_vote_against_its_class_is_flagged(page, base, atlas_run):
    """One in-domain still image whose atlas vote names another class than its verdict (P03's: the tiny model calls
    them all one class, the atlas votes the other): the notice is shown, as for a video."""
    image = patient_images(atlas_run.cohort, "P03")[0]
    drop(page, base, image)
    case_id = page.evaluate("location.hash").removeprefix("#/cases/")
    verdict = httpx.get(f"{base}/v1/cases/{case_id}").json()["verdict"]
    assert verdict["class"] and verdict["reason"] is None and verdict["network_alone"] is None
    if verdict["atlas_vote"]["label"] == verdict["class"]:
        pytest.fail(f"the tiny model's vote agrees with its class on {image.name}: choose another image")
    expect(page.locator("#verdict-disagrees")).to_contain_text("The atlas's vote disagrees with the verdict")
    expect(page.locator("#frame-badge")).to_have_text(re.compile(rf"^{verdict['class']} · P\({verdict['class']}\) "))
    assert "Called" in page.locator("#current dt").all_inner_texts()


def test_an_uncalibrated_atlas_is_said_to_be_unable_to_tell(page, atlas_run, tmp_path):
    """The served model's atlas could not calibrate (one patient, too few validation frames): the viewer says, in
    the server's words and whole (not cut short on a phone, nor crowding out the model's name), that mucosa cannot
    tell whether a recording is unlike its training data."""
    from mucosa.inference.atlas import load
    from mucosa.service.atlas import NOT_CALIBRATED

    for model in ("best.ckpt", "best.onnx", "best.int8.onnx"):
        shutil.copyfile(atlas_run.best.parent / model, tmp_path / model)
    atlas = load(atlas_run.best.parent / "atlas")
    atlas.calibration = None
    atlas.save(tmp_path / "atlas")
    with mucosa_serve(tmp_path / "best.ckpt", tmp_path) as url:
        page.goto(url + "/")
        page.wait_for_function("() => document.querySelector('#model').textContent.includes('threshold')")
        expect(page.locator("#atlas-note")).to_be_visible()
        expect(page.locator("#atlas-note")).to_have_text(NOT_CALIBRATED)
        assert axe_violations(page) == []
        assert page.locator("#legend .lg-unfamiliar").count() == 0  # no frame can be marked: the legend shows no mark
        clipped = "e => e.scrollWidth > e.clientWidth || e.scrollHeight > e.clientHeight"
        assert page.eval_on_selector("#model", "e => e.clientWidth") >= 200  # beside the note, the model is named
        for width, height in ((1280, 800), (1024, 768), (390, 844)):  # the whole sentence, on a phone too
            page.set_viewport_size({"width": width, "height": height})
            assert not page.eval_on_selector("#atlas-note", clipped), width
        page.set_viewport_size({"width": 1280, "height": 800})
        drop(page, url, *patient_images(atlas_run.cohort, "P01"))  # a case's class says it stands unchecked
        expect(page.locator("#verdict-atlas")).to_contain_text("not checked for recordings unlike the training data")
