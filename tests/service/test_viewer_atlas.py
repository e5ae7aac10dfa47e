"""The atlas in the viewer, in the real Chromium (Playwright, :mod:`browsing`), against ``mucosa serve`` with a tiny
model that ``mucosa train`` wrote with its atlas: a case shows its similar confirmed cases and the atlas's vote,
a click puts a similar case's closest frame beside the case's own (keyboard operable, with alt text), a foreign
image is called `unfamiliar` with its frames marked on the timeline, and axe-core stays clean on the new panel."""

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
    assert axe_violations(page) == []
    items.first.focus()
    page.keyboard.press("Enter")  # keyboard operable
    page.wait_for_selector("#compare:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "compare-close"
    for image in ("#compare-ours", "#compare-theirs"):
        page.wait_for_function(f"() => document.querySelector('{image}').naturalWidth > 0")
        assert page.get_attribute(image, "alt")
    assert "confirmed case" in page.get_attribute("#compare-theirs", "alt")
    assert axe_violations(page) == []
    page.keyboard.press("Escape")
    assert page.locator("#compare").is_hidden()
    assert page.evaluate("document.activeElement.classList.contains('similar-item')")


def test_a_foreign_image_is_unfamiliar_and_marked(page, base, tmp_path):
    drop(page, base, sine_png(tmp_path))
    assert page.text_content("#verdict-label") == "Unfamiliar"
    assert "unfamiliar" in page.get_attribute("#verdict", "class")
    assert "100%" in page.text_content("#verdict-score")
    assert page.get_attribute("#timeline", "data-unfamiliar") == "1"
    assert "marked unfamiliar" in page.text_content("#timeline-summary")
    assert axe_violations(page) == []
