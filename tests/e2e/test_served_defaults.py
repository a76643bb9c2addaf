"""The page holds no rule of its own: a run default changed in the engine shows in
GET /api/defaults and in the page's form, and the form's bounds are the served limits."""

import sys

import httpx
from conftest import Server, open_page

# A server whose engine has other run defaults: RunConfig (the one home of the
# defaults) is replaced, before the app is imported, by a subclass that changes three.
CHANGED = {"steps": 1234, "snapshot_every": 7, "init": "lecun_normal"}
LAUNCH = f"""
import dataclasses, sys
import engine.trainer as trainer

@dataclasses.dataclass
class ChangedDefaults(trainer.RunConfig):
    steps: int = {CHANGED["steps"]}
    snapshot_every: int = {CHANGED["snapshot_every"]}
    init: dict | str = {CHANGED["init"]!r}

trainer.RunConfig = ChangedDefaults
import uvicorn
uvicorn.run("app.main:create_app", factory=True, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def test_a_default_changed_in_the_engine_reaches_the_api_and_the_form(browser, tmp_path):
    server = Server(tmp_path, command=lambda port: [sys.executable, "-c", LAUNCH, str(port)])
    try:
        run = httpx.get(f"{server.base}/api/defaults", timeout=30).json()["run"]
        assert {key: run[key] for key in CHANGED} == CHANGED
        page, problems = open_page(browser)
        page.goto(f"{server.base}/")
        page.wait_for_selector("body[data-ready=true]")
        assert page.input_value("#f-steps") == "1234"
        assert page.input_value("#f-every") == "7"
        assert page.input_value("#f-init") == "lecun_normal"
        page.wait_for_selector("#init-table[data-described=true]")
        laws = page.eval_on_selector_all("#init-table .law", "ls => ls.map(l => l.textContent)")
        assert laws and all("N(0, 1/fan_in)" in law for law in laws), laws
        # and "start training" with nothing changed asks for that run
        body = page.evaluate("""async () => {
            const s = await import('/static/js/state.js');
            const state = window.__kernelscope.state;
            return s.toRunRequest(state.config, state.presets);
        }""")
        assert (body["steps"], body["snapshot_every"], body["init"]) == (1234, 7, "lecun_normal")
        problems.close_and_check(page, server)
    finally:
        server.stop()


def test_the_forms_bounds_are_the_served_limits(page, server, api):
    limits = api.get("/api/defaults").json()["limits"]
    page.goto(f"{server}/")
    page.wait_for_selector("body[data-ready=true]")
    fields = {
        "f-lr": "lr",
        "f-momentum": "momentum",
        "f-wd": "weight_decay",
        "f-batch": "batch_size",
        "f-steps": "steps",
        "f-seed": "seed",
        "f-every": "snapshot_every",
    }
    for element, key in fields.items():
        bound = limits.get(key, {})
        for side in ("min", "max"):
            shown = page.get_attribute(f"#{element}", side)
            if bound.get(side) is None:
                assert shown is None, (element, side, shown)
            else:
                assert float(shown) == float(bound[side]), (element, side, shown, bound)
    assert limits["steps"]["min"] >= 1
    # a number beyond the served bound is refused by the form, naming the field and the bound
    page.fill("#f-batch", str(limits["batch_size"]["max"] + 1))
    page.locator("#f-batch").dispatch_event("change")
    assert f"≤ {limits['batch_size']['max']}" in page.text_content("#form-error")
    assert "batch size" in page.text_content("#form-error")
    page.fill("#f-steps", "")
    page.locator("#f-steps").dispatch_event("change")
    assert "required" in page.text_content("#form-error")


def test_an_empty_number_field_says_required_and_starts_nothing(page, server, api):
    """Every number of the setup form, the init's own parameter included: emptied, the form names
    the field and says "required" (not the server's "must be > 0.0, got 0" for a 0 read from
    nothing), and "start training" sends no run; an exclusive served bound is written as one."""
    limits = api.get("/api/defaults").json()["limits"]
    page.goto(f"{server}/")
    page.wait_for_selector("body[data-ready=true]")
    posted = []
    page.on("request", lambda r: r.method == "POST" and r.url.endswith("/api/runs") and posted.append(r.url))
    page.select_option("#f-optimizer", "sgd")
    page.select_option("#f-init", "normal")  # an init with a number parameter (std)
    page.wait_for_selector('#f-init-param input[data-param="std"]')
    fields = {
        "#f-lr": "learning rate",
        "#f-momentum": "momentum",
        "#f-wd": "weight decay",
        "#f-batch": "batch size",
        "#f-steps": "steps",
        "#f-seed": "seed",
        "#f-every": "snapshot every",
        '#f-init-param input[data-param="std"]': "init std",
    }
    for selector, label in fields.items():
        before = page.input_value(selector)
        page.fill(selector, "")
        page.locator(selector).dispatch_event("change")
        error = page.text_content("#form-error")
        assert f"{label}: required" in error and "must be" not in error, (selector, error)
        assert page.input_value(selector) == ""  # the form keeps what the learner left, and says so
        page.click("#btn-start")
        assert f"{label}: required" in page.text_content("#form-error")
        page.fill(selector, before)
        page.locator(selector).dispatch_event("change")
        assert page.text_content("#form-error") == "", (selector, page.text_content("#form-error"))
    assert posted == []
    # momentum's served bound is exclusive at the top: its maximum itself is refused, as "<"
    top = limits["momentum"]["max"]
    assert limits["momentum"].get("max_exclusive") is True
    page.fill("#f-momentum", str(top))
    page.locator("#f-momentum").dispatch_event("change")
    assert f"momentum: expected a number ≥ {limits['momentum']['min']} and < {top}, got {top}" in page.text_content(
        "#form-error"
    )
