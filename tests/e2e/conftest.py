"""Browser tests' fixtures: a real kernelscope server and Debian's headless Chromium.

The server is `uvicorn app.main:create_app --factory` in a subprocess on a free
port with a temporary KERNELSCOPE_DATA. The browser is /usr/bin/chromium driven
by Playwright (never `playwright install`). Nothing is skipped: a missing
Chromium or Playwright fails the tests with a message saying what to install.

Every page a test opens records console errors, page errors and failed
requests; the `page` fixture fails the test if any occurred.
"""

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.live_server import free_port, uvicorn_command, wait_until_healthy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"


class Server:
    """A kernelscope server in a subprocess: `uvicorn app.main:create_app --factory`, or
    `command(port)` when given (a server started another way, e.g. with an engine default changed)."""

    def __init__(self, data_dir: Path, port: int | None = None, command=None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # the test server's own settings only: no token, limits or data dir from the caller's shell
        env = {key: value for key, value in os.environ.items() if not key.startswith("KERNELSCOPE_")}
        env["KERNELSCOPE_DATA"] = str(self.data_dir)
        self.log_path = self.data_dir / f"server-{self.port}.log"
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            (command or uvicorn_command)(self.port), cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        if wait_until_healthy(self.base, self.process, timeout=30, interval=0.2) is not None:
            self.kill()
            pytest.fail(f"the server did not start; its log:\n{self.log_path.read_text()}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def kill(self):
        """SIGKILL, as a crash or a pulled plug would."""
        self.process.kill()
        self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """A real server on a free port, with its own empty data directory (`data_dir`)."""
    running = Server(tmp_path_factory.mktemp("kernelscope-data"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def server(live_server):
    """Base URL of the session's real server."""
    return live_server.base


@pytest.fixture(scope="session")
def api(server):
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the browser tests need the Python package playwright (pip install playwright); "
            "they drive Debian's chromium and never download a browser"
        )
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageProblems:
    """What went wrong in a page: console errors, uncaught exceptions, failed requests."""

    def __init__(self, page):
        self.items = []
        page.on("console", lambda m: m.type == "error" and self.items.append(f"console error: {m.text}"))
        page.on("pageerror", lambda e: self.items.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._answered)
        self.server_errors = []  # 5xx answers, whose bodies name the error (read before the page closes)

    def _answered(self, response):
        if response.status >= 400:
            self.items.append(f"HTTP {response.status}: {response.url}")
        if response.status >= 500:
            self.server_errors.append(response)

    def server_error_bodies(self) -> list[str]:
        bodies = []
        for response in self.server_errors:
            try:
                bodies.append(f"{response.url}: {response.text()[:2000]}")
            except Exception as error:  # the body is gone once the page navigated away
                bodies.append(f"{response.url}: (body unavailable: {error})")
        return bodies

    def close_and_check(self, page, server: "Server | None" = None) -> None:
        """Close the page's context (which hands over the events still pending), then fail naming
        every problem the page had; a 5xx answer adds its body, read before closing, and, given
        the server, the last tracebacks of its log."""
        bodies = self.server_error_bodies()
        page.context.close()
        if bodies and server is not None:
            bodies.append(server_log_tracebacks(server))
        assert self.items == [], "the page had problems:\n" + "\n".join(self.items + bodies)

    def _failed(self, request):
        failure = request.failure or ""
        # The page closes a run's event stream itself when the run ends, and a
        # reload cancels the open stream; Chromium reports both as ERR_ABORTED.
        if request.url.endswith("/events") and "ERR_ABORTED" in failure:
            return
        self.items.append(f"request failed: {request.url} {failure}")


def open_page(browser, viewport=(1280, 800)):
    """A new page with problem recording; returns (page, problems)."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    # generous: on a busy 2-core machine a run shares the CPU with the browser and other suites
    page.set_default_timeout(90_000)
    return page, PageProblems(page)


def whole_run_view_on_screen(page) -> None:
    """A viewport tall enough for the whole run view (filters, charts and feature maps): what is
    off screen is not drawn or fetched until it comes on screen (static/js/charts.js,
    run-view.js), and these tests read all of it at once."""
    page.set_viewport_size({"width": 1280, "height": 2600})


def server_log_tracebacks(server: Server, last: int = 3) -> str:
    """The last tracebacks in a server's log: what a 5xx answer was, for a failure far from here (CI)."""
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError as error:
        return f"(server log unreadable: {error})"
    blocks = text.split("Traceback (most recent call last):")[1:]
    return "\n".join("Traceback (most recent call last):" + block[:4000] for block in blocks[-last:])


@pytest.fixture
def page(browser, request):
    """A 1280×800 page; the test fails if the page logged an error or a request failed. A 5xx
    answer adds its body and, for the session's server, the tracebacks its log holds."""
    page, problems = open_page(browser)
    page.problems = problems
    yield page
    problems.close_and_check(
        page, request.getfixturevalue("live_server") if "live_server" in request.fixturenames else None
    )
