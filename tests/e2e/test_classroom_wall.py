"""A class in real browsers: a teacher's wall and two learners, each in their own browser context.

The server has a token (the teacher's). The teacher opens the wall first and
signs in with the token; two learners join with the code from the top bar, one
starts the teacher's pushed assignment (zeros) with one click, the other a run
of their own (He). The wall, fed by its one event stream, shows both learners'
filters at one colour scale while they train, groups them by init, and the
"same step" slider puts both at step 0. One learner's name is a <script>.
"""

import httpx
import numpy as np
import pytest
from conftest import Server, open_page

from tests.live_server import uvicorn_command

TOKEN = "teacher-token-for-the-browser-test"
STEPS = 40
ASSIGNMENT = f"preset=small&init=zeros&bs=16&steps={STEPS}&every=10"
SCRIPT_NAME = "<script>window.__pwned=1</script>"


@pytest.fixture
def class_server(tmp_path):
    (tmp_path / "data").mkdir()
    running = Server(
        tmp_path / "data", command=lambda port: ["env", f"KERNELSCOPE_TOKEN={TOKEN}", *uvicorn_command(port)]
    )
    yield running
    running.stop()


def ready(page, url):
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")


def join(page, problems, url, code, name):
    ready(page, url)
    # before joining, the page is an anonymous visitor of a server with a token: its form's
    # POST /api/inits/describe is refused (401) as on any such server; from here on it must be clean
    problems.items[:] = [item for item in problems.items if "401" not in item]
    page.fill("#join-code", code)
    page.fill("#join-name", name)
    page.click("#join-button")
    page.wait_for_selector("#class-me")


def test_two_learners_and_the_teacher_wall(browser, class_server):
    base = class_server.base
    teacher = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, timeout=30) as api:
        klass = api.post("/api/classes", json={"name": "Kernels 101"}, headers=teacher).json()
        assert (
            api.put(
                f"/api/classes/{klass['id']}/assignment",
                headers=teacher,
                json={"title": "zeros", "hash": "#" + ASSIGNMENT},
            ).status_code
            == 200
        )

    wall, wall_problems = open_page(browser)
    ada, ada_problems = open_page(browser)
    bob, bob_problems = open_page(browser)
    try:
        # the teacher opens the wall: without the token it asks for it
        ready(wall, f"{base}/class/{klass['id']}")
        assert wall.locator("#wall-signin").is_visible()
        wall.fill("#wall-token", TOKEN)
        wall.click("#wall-signin-button")
        wall.wait_for_selector("#wall-head:not([hidden])")
        wall.wait_for_selector("body[data-ready=true]")
        assert klass["join_code"] in wall.locator("#wall-code").text_content()

        # two learners join; Ada starts the assignment, Bob (a <script> name) a He run of his own
        join(ada, ada_problems, f"{base}/", klass["join_code"], "Ada")
        ada.wait_for_selector("#assignment-button")
        ada.click("#assignment-button")
        join(
            bob,
            bob_problems,
            f"{base}/#preset=small&init=he_normal&bs=16&steps={STEPS}&every=10",
            klass["join_code"],
            SCRIPT_NAME,
        )
        bob.click("#btn-start")

        # the wall's one stream brings both tiles, live, to the end of their runs
        wall.wait_for_function(
            f"""(() => {{ const t = [...window.__kernelscope.wall.live.values()];
                return t.length === 2 && t.every(x => x.run && x.run.weight && x.run.status === 'completed'
                    && x.run.snapshot_step === {STEPS}); }})()""",
            timeout=240_000,
        )
        state = wall.evaluate("""(() => { const w = window.__kernelscope.wall;
            return {received: w.tilesReceived, scale: w.scale,
                    tiles: [...w.live.values()].map(t => ({name: t.name, init: t.run.init, weight: t.run.weight}))}; })()""")
        assert state["received"] > 2  # the tiles changed while the wall was open, not only once
        by_name = {tile["name"]: tile for tile in state["tiles"]}
        assert by_name["Ada"]["init"] == "zeros" and by_name[SCRIPT_NAME]["init"] == "he_normal"
        largest = max(np.abs(np.asarray(tile["weight"])).max() for tile in state["tiles"])
        assert state["scale"] == pytest.approx(largest, rel=1e-9)  # one scale: the wall's largest |weight|
        assert f"±{largest:.3g}"[:4] in wall.locator("#wall-scale").text_content()
        assert wall.locator(".wall-tile canvas").count() == 2

        # the <script> name is text on the wall, never markup
        names = wall.locator(".wall-name").all_text_contents()
        assert SCRIPT_NAME in names
        assert wall.evaluate("window.__pwned") is None
        assert wall.locator("#wall-tiles script").count() == 0

        # group by init: zeros and he_normal stand apart
        wall.check("#wall-group")
        wall.wait_for_function("document.querySelectorAll('.wall-group').length === 2")
        groups = wall.locator(".wall-group").evaluate_all("nodes => nodes.map(n => n.dataset.init)")
        assert sorted(groups) == ["he_normal", "zeros"]

        # the same-step slider puts both tiles at step 0
        wall.check("#wall-same-step")
        wall.locator("#wall-step").evaluate("(s) => { s.value = '0'; s.dispatchEvent(new Event('input')); }")
        wall.wait_for_function("""(() => { const w = window.__kernelscope.wall;
            return w.step === 0 && [...document.querySelectorAll('.wall-tile canvas')].length === 2
                && [...document.querySelectorAll('.wall-tile canvas')].every(c => c.dataset.step === '0'); })()""")
        at_zero = wall.evaluate("[...window.__kernelscope.wall.atStep.values()].map(t => [t.name, t.run.weight])")
        zero_weights = dict((name, np.asarray(weight)) for name, weight in at_zero)
        assert np.all(zero_weights["Ada"] == 0)  # zeros at step 0
        assert np.abs(zero_weights[SCRIPT_NAME]).max() > 0
        # back to live: the latest step again
        wall.uncheck("#wall-same-step")
        wall.wait_for_function(f"""[...document.querySelectorAll('.wall-tile canvas')]
            .every(c => c.dataset.step === '{STEPS}')""")
    finally:
        for page in (wall, ada, bob):
            page.context.close()
    # the wall's first look (before the token) is the one expected refusal
    expected = [
        item
        for item in wall_problems.items
        if not (item.startswith("HTTP 404") and item.endswith(klass["id"]) or "404" in item and "console" in item)
    ]
    assert expected == [] and ada_problems.items == [] and bob_problems.items == []


def test_the_wall_stream_ends_when_the_server_stops(class_server):
    """An open wall does not keep a stopping server waiting (like the run streams)."""
    teacher = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=class_server.base, timeout=60) as api:
        klass = api.post("/api/classes", json={"name": "stopping"}, headers=teacher).json()
        api.post("/api/classes/join", json={"code": klass["join_code"], "name": "Ada"})
        with api.stream("GET", f"/api/classes/{klass['id']}/events", headers=teacher) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("event:")) == "event: tile"
            class_server.process.terminate()
            rest = list(lines)  # returns only because the server ended the stream
        assert all(not line.startswith("event:") or line == "event: tile" for line in rest)
    # uvicorn exits by re-raising the SIGTERM it handled once it has shut down
    assert class_server.process.wait(timeout=60) in (0, -15)
