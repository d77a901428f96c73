"""The manual builds strictly and works in a browser: one page of each kind (tutorial, how-to,
reference, explanation) renders, its navigation leads where it says, and its images load.

The site is built with ``mkdocs build --strict`` (as test.sh does), served over HTTP on
127.0.0.1 (MkDocs' directory URLs need a server) and driven in Debian's headless Chromium
through the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port, no extra
package).
"""

from __future__ import annotations

import base64
import fcntl
import functools
import http.server
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# page -> a link in its navigation (href as written in the built page) and the page it opens
PAGES = {
    "tutorial": ("tutorials/first-federation/", "../join-as-a-lab/", "Join a federation as a lab"),
    "how-to": ("how-to/read-the-dashboards/", "../export-a-policy/", "Export and publish a policy"),
    "reference": ("reference/run-config/", "../node-config/", "Node config"),
    "explanation": ("explanation/architecture/", "../security-model/", "Security model"),
}


def build_site(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out),
         "--config-file", str(REPO / "mkdocs.yml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is missing: scripts/setup.sh installs the docs extra")
        pytest.skip("mkdocs not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    done = build_site(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def _above_4(fd: int) -> int:
    """``fd`` moved to a number above 4, so that placing the pipe ends at 3 and 4 in the child
    cannot overwrite one with the other."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return moved


class Browser:
    """Headless Chromium driven over the DevTools protocol on fds 3/4 (NUL-framed JSON)."""

    def __init__(self, exe: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        to_chrome_r, from_chrome_w = _above_4(to_chrome_r), _above_4(from_chrome_w)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-quic", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                "--window-size=1400,1000", "about:blank"]
        # bash (dash takes single-digit fds only) puts the pipe ends where Chromium expects
        # them: it reads 3 and writes 4
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}', exe, *args],
            pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (it must be visible there)."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2, w: r.width}; })()")
        assert box and box["w"] > 0, f"{selector}: not on the page or not visible"
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box["x"],
                      y=box["y"], button="left", clickCount=1)
        self.wait_event("Page.loadEventFired")

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"),
                          dtype=np.float32)

    def close(self) -> None:
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(server, chromium, tmp_path_factory):
    b = Browser(chromium, tmp_path_factory.mktemp("profile"))
    yield b
    b.close()


_TITLE = "document.querySelector('article h1').textContent.replace('¶', '').trim()"
_IMAGES = """Promise.all(Array.from(document.images).map(i => i.complete ? null :
  new Promise(r => { i.onload = i.onerror = r; }))).then(() =>
  Array.from(document.images).map(i => ({src: i.getAttribute('src'), w: i.naturalWidth})))"""


@pytest.mark.parametrize("kind", sorted(PAGES))
def test_a_page_of_each_kind_renders_navigates_and_loads_its_images(kind, browser, server,
                                                                    site):
    page, link, target_title = PAGES[kind]
    browser.open(server + page)
    title = browser.evaluate(_TITLE)
    words = browser.evaluate("document.querySelector('article').innerText.split(/\\s+/).length")
    assert title and words > 150, (page, title, words)
    pixels = browser.screenshot()
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01, f"{page}: blank screenshot"
    # the theme's stylesheet and script loaded (a page without them is plain HTML)
    assert browser.evaluate("getComputedStyle(document.querySelector('.md-header')).position")\
        in ("sticky", "fixed")

    images = browser.evaluate(_IMAGES)
    assert all(i["w"] > 0 for i in images), (page, images)
    if kind in ("tutorial", "how-to"):  # their screenshots and plots (docs/images/*.png)
        assert any(i["src"].endswith(".png") for i in images), images

    browser.click(f".md-sidebar--primary a.md-nav__link[href='{link}']")
    assert browser.evaluate("location.href") == urljoin(server + page, link)
    assert browser.evaluate(_TITLE) == target_title


def test_every_image_in_docs_is_used_and_every_used_image_exists(site):
    images = {p.relative_to(REPO / "docs") for p in (REPO / "docs" / "images").glob("*.png")}
    assert images, "docs/images/*.png"
    for image in images:
        assert (site / image).is_file(), image
    pages = "".join(p.read_text() for p in (REPO / "docs").rglob("*.md"))
    assert all(image.name in pages for image in images)


def test_the_strict_build_fails_on_a_broken_link_or_anchor(tmp_path):
    """What test.sh relies on: with mkdocs.yml's validation settings, --strict turns a link to
    a missing page or anchor into a failed build (on a two-page site: the real one is slow)."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs not installed")
    config = (REPO / "mkdocs.yml").read_text()
    validation = re.search(r"^validation:\n(?:  .*\n)+", config, re.M)
    assert validation, "mkdocs.yml: no validation block"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[ok](other.md#there)\n")
    (docs / "other.md").write_text("# Other\n\n## There\n")
    (tmp_path / "mkdocs.yml").write_text(f"site_name: t\n{validation[0]}")

    def build() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=tmp_path,
            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True,
            timeout=120, check=False)

    assert build().returncode == 0
    for broken in ("[gone](no-such-page.md)", "[gone](other.md#nowhere)"):
        (docs / "index.md").write_text(f"# Home\n\n{broken}\n")
        done = build()
        said = done.stdout + done.stderr
        assert done.returncode != 0 and "strict mode" in said, (broken, said)
        assert broken.split("(")[1].split("#")[-1].rstrip(")") in said
