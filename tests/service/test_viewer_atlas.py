"""The atlas in the viewer, in the real Chromium (Playwright, :mod:`browsing`), against ``mucosa serve`` with a tiny
model that ``mucosa train`` wrote with its atlas: a case shows its similar confirmed cases and the atlas's vote,
a click puts a similar case's closest frame beside the case's own (keyboard operable, with alt text), a foreign
image is called `unfamiliar` with its frames marked on the timeline (and in the legend), a vote that names another
class than the verdict is flagged in words, and axe-core stays clean on the new panel."""

import httpx
import pytest

from browsing import axe_violations, mucosa_serve
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


def test_similar_cases_open_a_side_by_side_compare(page, base, atlas_run):
    drop(page, base, *patient_images(atlas_run.cohort, "P01"))
    assert page.locator("#atlas-note").is_hidden()
    assert "atlas vote (second opinion)" in page.text_content("#verdict-atlas")
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
