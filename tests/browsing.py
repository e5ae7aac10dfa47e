"""The viewer in a real browser, as the browser tests drive it (importable from every test folder: pytest's
pythonpath): ``mucosa serve`` in a subprocess on a free localhost port, Debian's chromium through Playwright,
axe-core (npm) injected into a page, and the touch targets of a page measured.

A missing tool (playwright, chromium, axe-core) skips a test, or fails it when MUCOSA_REQUIRE_REAL_DATA=1 (CI).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MUCOSA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
# what a finger can hit (WCAG 2.5.5, Apple's and Google's guidelines): 44 CSS pixels a side
TOUCH = 44
TARGETS = "a[href], button, input[type=range], [role=slider], label.toggle, label.drop, summary, select"


def missing(reason: str, install: str = "apt-get install chromium; pip install playwright"):
    """Skip, or in CI (MUCOSA_REQUIRE_REAL_DATA=1) fail, for want of a tool."""
    if os.environ.get("MUCOSA_REQUIRE_REAL_DATA") == "1":
        pytest.fail(f"{reason} but MUCOSA_REQUIRE_REAL_DATA=1 (install: {install})", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mucosa_serve(checkpoint: Path, tmp: Path, *options: str):
    """``mucosa serve`` with ``TMPDIR=tmp`` and its case store in ``tmp/store`` (unless ``options`` name one:
    never the user's own); yields its base URL; checks that it stops cleanly (exit 0, no temporary files
    left)."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(tmp), "MUCOSA_STORE": str(tmp / "store")}
    with open(tmp / f"serve-{port}.log", "w+") as log:
        process = subprocess.Popen([sys.executable, "-m", "mucosa", "serve", "--checkpoint", str(checkpoint),
                                    "--port", str(port), *options], env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
            assert process.poll() is None, "the server stopped: " + Path(log.name).read_text()
        try:
            yield base
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(30)
            log.seek(0)
            output = log.read()
    assert process.returncode == 0, output
    assert not list(tmp.glob("mucosa-serve-*")), "temporary files left after the server stopped:\n" + output


def axe_violations(page, impacts=("serious", "critical")) -> list[str]:
    """axe-core's WCAG 2.1 A and AA violations of the page as it is now, of the given impacts: one line each
    (rule, impact, the first elements)."""
    if not AXE.is_file():
        missing(f"axe-core is not installed ({AXE})", "npm ci (package.json at the repository root)")
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("""() => axe.run(document, {runOnly: {type: 'tag',
        values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}, resultTypes: ['violations']})""")
    return [f"{v['id']} ({v['impact']}): {v['help']} — " + "; ".join(n["html"][:120] for n in v["nodes"][:3])
            for v in result["violations"] if v["impact"] in impacts]


def small_targets(page) -> list[str]:
    """The visible controls smaller than :data:`TOUCH` pixels a side: ``"<tag#id.class> WxH"`` each."""
    return page.evaluate("""([selector, touch]) => [...document.querySelectorAll(selector)].filter((el) => {
        const box = el.getBoundingClientRect(), style = getComputedStyle(el);
        return box.width > 0 && box.height > 0 && style.visibility !== 'hidden'
            && (box.width < touch || box.height < touch);
    }).map((el) => {
        const box = el.getBoundingClientRect();
        return `${el.tagName.toLowerCase()}#${el.id}.${el.className} ${Math.round(box.width)}x`
            + `${Math.round(box.height)}`;
    })""", [TARGETS, TOUCH])
