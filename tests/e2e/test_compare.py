"""The teaching views in a real browser: a comparison of constant vs He started
from the page (constant filters stay identical, He's diverge), the init probe
against its theory, the kernel editor putting a frozen X into a paused run,
and the fork / download buttons of the history bar."""

import re
import time

import numpy as np
from conftest import ARTIFACTS

TERMINAL = {"completed", "stopped", "diverged", "failed", "interrupted"}


def goto(page, url):
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")


def set_field(page, selector, value):
    page.fill(selector, value)
    page.locator(selector).dispatch_event("change")


def tiny_form(page):
    """The setup form asks for a small, short run."""
    page.select_option("#f-preset", "small")
    for selector, value in (("#f-batch", "16"), ("#f-steps", "40"), ("#f-every", "10")):
        set_field(page, selector, value)


def rgb_to_hex(css):
    """'rgb(37, 99, 235)' -> '#2563eb'."""
    return "#" + "".join(f"{int(v):02x}" for v in re.findall(r"\d+", css)[:3])


def test_compare_constant_vs_he_side_by_side(page, server, api):
    goto(page, f"{server}/")
    tiny_form(page)
    page.click('#view-tabs [data-view="compare"]')
    for box in page.locator(".compare-inits input").all():
        label = box.evaluate("b => b.parentElement.textContent.trim()")
        if (label in ("constant", "he_normal")) != box.is_checked():
            box.click()
    page.click("#btn-compare-start")
    page.wait_for_function(
        "(() => { const c = window.__kernelscope.compare; return c && c.runs.length === 2"
        " && c.runs.every(r => r.status === 'completed') && c.step === 40"
        " && ['constant', 'he_normal'].every(l => c.drawn[l] && c.drawn[l].step === 40); })()",
        timeout=120_000,
    )
    # the comparison stores snapshots on its own schedule, not the setup form's 10 steps
    every = api.get("/api/defaults").json()["comparison"]["snapshot_every"]
    ids = page.evaluate("window.__kernelscope.compare.runs.map(r => r.id)")
    assert every == 20 and [api.get(f"/api/runs/{i}").json()["config"]["snapshot_every"] for i in ids] == [every] * 2
    assert page.text_content("#compare-every") == f" · a snapshot every {every}"  # said beside the steps
    drawn = page.evaluate("window.__kernelscope.compare.drawn")
    constant = np.asarray(drawn["constant"]["weight"])
    he = np.asarray(drawn["he_normal"]["weight"])
    assert np.allclose(constant, constant[0:1], atol=1e-6), "constant filters drawn different"
    assert np.abs(he - he.mean(axis=0, keepdims=True)).max() > 0.05, "He filters drawn identical"
    assert drawn["constant"]["symmetry"] > 0.999 > drawn["he_normal"]["symmetry"]
    values = page.locator(".compare-card .meter-value").all_text_contents()
    assert values[0] == "1.000" and values[1] != "1.000"
    # one shared slider: back to step 0 shows both runs at step 0
    slider = page.locator("#compare-slider")
    slider.evaluate("s => { s.value = '0'; s.dispatchEvent(new Event('input')); }")
    page.wait_for_function(
        "(() => { const d = window.__kernelscope.compare.drawn;"
        " return d.constant.step === 0 && d.he_normal.step === 0; })()"
    )
    assert page.text_content("#compare-step") == "step 0"
    # the loss curves of both runs are overlaid in one chart
    assert page.evaluate("document.getElementById('compare-loss').data.filter(t => t.mode === 'lines').length") == 2
    # one legend names the runs in their chart colours, above all three charts
    legend = page.locator("#compare-legend .compare-legend-entry")
    assert legend.all_text_contents() == ["constant", "he_normal"]
    colours = page.evaluate(
        "document.getElementById('compare-loss').data.filter(t => t.mode === 'lines').map(t => t.line.color)"
    )
    swatches = legend.locator(".compare-swatch").evaluate_all("ss => ss.map(s => s.style.background)")
    assert len(set(colours)) == 2 and all(c.lower() in {rgb_to_hex(s) for s in swatches} for c in colours)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "compare-view.png"), full_page=True)


def test_init_probe_plots_measured_std_beside_the_theory(page, server):
    goto(page, f"{server}/")
    page.click('#view-tabs [data-view="probe"]')
    page.wait_for_function("window.__kernelscope.probe !== undefined", timeout=120_000)
    result = page.evaluate("window.__kernelscope.probe")
    labels = [entry["label"] for entry in result["results"]]
    assert labels == ["he_normal", "glorot_uniform", "normal(std=0.01)"]
    assert len(result["results"][0]["layers"]) == 30
    traces = page.evaluate("document.getElementById('probe-act').data.map(t => t.name)")
    assert "he_normal" in traces and "glorot_uniform theory" in traces
    assert page.evaluate("document.getElementById('probe-act').layout.yaxis.type") == "log"
    summary = page.text_content("#probe-summary")
    assert "he_normal: the activation std stays within" in summary
    assert "glorot_uniform: the activation std shrinks" in summary


def test_kernel_editor_puts_a_frozen_x_into_a_paused_run_and_fork_starts_from_the_step(page, server, api):
    run = api.post(
        "/api/runs",
        json={
            "model": "small",
            "dataset": {"name": "shapes", "n_train": 256, "n_val": 64},
            "batch_size": 8,
            "steps": 100000,
            "snapshot_every": 1000,  # every early step is stored anyway; the storage budget refuses 10,000 snapshots
        },
    ).json()
    try:
        deadline = time.monotonic() + 60
        while api.get(f"/api/runs/{run['id']}").json()["step"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert api.post(f"/api/runs/{run['id']}/pause").json()["status"] == "paused"
        goto(page, f"{server}/#run={run['id']}")
        page.wait_for_function("window.__kernelscope.drawn !== null", timeout=60_000)
        page.click('#view-tabs [data-view="kernels"]')
        page.click('.ke-presets [data-pattern="x"]')
        page.wait_for_function("!document.getElementById('ke-put').disabled", timeout=10_000)
        page.select_option("#ke-run-layer", "0")
        set_field(page, "#ke-run-filter", "2")
        page.check("#ke-frozen")
        page.click("#ke-put")
        page.wait_for_function("document.getElementById('ke-put-note').textContent.includes('frozen')")
        latest = api.get(f"/api/runs/{run['id']}/snapshots/latest?feature_maps=0").json()
        layer0 = next(entry for entry in latest["layers"] if entry["index"] == 0)
        assert layer0["frozen"] == [2]
        kernel = np.asarray(layer0["weight"])[2, 0]
        assert kernel[0, 0] > 0 and kernel[1, 1] > 0 and kernel[0, 1] < 0, kernel
        assert abs(np.linalg.norm(kernel) - 1) < 1e-3  # unit L2 norm (snapshot JSON keeps 4 digits)

        # fork from the step on screen with another learning rate
        page.click('#view-tabs [data-view="live"]')
        page.click("#btn-fork")
        set_field(page, "#fork-lr", "0.01")
        set_field(page, "#fork-steps", str(latest["step"] + 20))
        page.click("#btn-fork-start")
        page.wait_for_function(
            f"window.__kernelscope.state.run && window.__kernelscope.state.run.id !== '{run['id']}'", timeout=30_000
        )
        child = page.evaluate("window.__kernelscope.state.run")
        assert child["meta"]["parent"] == run["id"]
        assert child["config"]["optimizer"]["lr"] == 0.01
        # the download buttons point at this run's files
        child_path = f"/api/runs/{child['id']}"
        deadline = time.monotonic() + 60
        while not api.get(f"{child_path}/snapshots").json()["steps"]:
            assert time.monotonic() < deadline, f"the fork made no snapshot: {api.get(child_path).json()}"
            time.sleep(0.2)
        page.wait_for_function("window.__kernelscope.state.steps.length > 0", timeout=30_000)
        # (a click that sets the links, then cancelled: the test reads them instead of downloading)
        for link in ("#btn-export", "#btn-gif"):
            page.eval_on_selector(
                link, "a => { a.addEventListener('click', e => e.preventDefault(), {once: true}); a.click(); }"
            )
        href = page.get_attribute("#btn-export", "href")
        assert href == f"/api/runs/{child['id']}/export"
        assert api.get(href).headers["content-type"] == "application/zip"
        gif = page.get_attribute("#btn-gif", "href")
        assert api.get(gif).headers["content-type"] == "image/gif"
    finally:
        api.post(f"/api/runs/{run['id']}/stop")


def test_kernel_editor_seeds_the_first_filters_of_a_new_run(page, server, api):
    goto(page, f"{server}/")
    tiny_form(page)
    page.click('#view-tabs [data-view="kernels"]')
    page.select_option("#ke-size", "3")
    page.click('.ke-presets [data-pattern="sobel_x"]')
    page.select_option("#ke-init-layer", "0")
    set_field(page, "#ke-init-count", "2")
    page.click("#ke-use-init")
    page.click('#view-tabs [data-view="live"]')
    page.click("#btn-start")
    page.wait_for_function("window.__kernelscope.drawn !== null && window.__kernelscope.state.run", timeout=60_000)
    run_id = page.evaluate("window.__kernelscope.state.run.id")
    weight = np.asarray(api.get(f"/api/runs/{run_id}/snapshots/0?feature_maps=0").json()["layers"][0]["weight"])
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / np.sqrt(12)
    assert np.allclose(weight[0, 0], sobel, atol=1e-4) and np.allclose(weight[1, 0], sobel, atol=1e-4)
    assert not np.allclose(weight[2, 0], sobel, atol=1e-2)
    api.post(f"/api/runs/{run_id}/stop")


def test_compare_cards_share_one_colour_scale_and_match_the_comparison_on_screen(page, server, api):
    """N(0, 0.01²) beside He at step 0: one colour scale for both cards, each printing its own max |w|;
    the comparison's own steps field decides the steps; the checkboxes say which inits are on screen,
    also after the depth demo opened its comparison."""
    goto(page, f"{server}/")
    tiny_form(page)
    page.click('#view-tabs [data-view="compare"]')
    assert page.input_value("#compare-steps") == "40"
    page.fill("#compare-steps", "")
    page.click("#btn-compare-start")
    assert page.text_content("#compare-status") == "steps: required"
    page.fill("#compare-steps", "20")
    for box in page.locator(".compare-inits input").all():
        label = box.evaluate("b => b.parentElement.textContent.trim()")
        if (label in ("normal(std=0.01)", "he_normal")) != box.is_checked():
            box.click()
    page.click("#btn-compare-start")
    page.wait_for_function(
        "(() => { const c = window.__kernelscope.compare; return c && c.runs.length === 2"
        " && c.runs.every(r => r.status === 'completed'); })()",
        timeout=120_000,
    )
    ids = page.evaluate("window.__kernelscope.compare.runs.map(r => r.id)")
    assert [api.get(f"/api/runs/{i}").json()["config"]["steps"] for i in ids] == [20, 20]
    page.locator("#compare-slider").evaluate("s => { s.value = '0'; s.dispatchEvent(new Event('input')); }")
    page.wait_for_function(
        "(() => { const d = window.__kernelscope.compare.drawn;"
        " return d['normal(std=0.01)']?.step === 0 && d.he_normal?.step === 0; })()"
    )
    drawn = page.evaluate("window.__kernelscope.compare.drawn")
    small, he = drawn["normal(std=0.01)"], drawn["he_normal"]
    assert small["scale"] == he["scale"] == he["maxAbs"]
    assert he["maxAbs"] / small["maxAbs"] > 10  # He's σ is 0.28 for conv1's fan_in of 25: ~28x larger
    texts = page.locator(".compare-card .compare-scale").all_text_contents()
    assert texts[0].startswith(f"max |w| {small['maxAbs']:.3g}") and texts[1].startswith(f"max |w| {he['maxAbs']:.3g}")
    # the faint init is drawn faint: its pixels stay near white on the shared scale
    spread = page.evaluate("""() => [...document.querySelectorAll('.compare-card canvas')].map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let far = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3]) far = Math.max(far, 247 - Math.min(d[i], d[i + 1], d[i + 2]));
        return far; })""")
    assert spread[0] < 25 < spread[1], spread
    checked = page.evaluate("""() => [...document.querySelectorAll('.compare-inits input')].filter(b => b.checked)
        .map(b => b.parentElement.textContent.trim())""")
    assert checked == ["normal(std=0.01)", "he_normal"]
    # each card states the losses its own run measured, up to the slider's step (none at step 0)
    assert page.locator(".compare-card .compare-loss-text").all_text_contents() == ["no loss measured yet"] * 2
    page.click("#compare-follow")
    page.wait_for_function(
        "[...document.querySelectorAll('.compare-card .compare-loss-text')]"
        ".every(t => t.textContent.endsWith('at step 20 (measured in this run)'))"
    )
    # the depth demo's comparison: the boxes follow it
    page.click('#view-tabs [data-view="probe"]')
    assert "0.35" not in page.text_content("#probe-view")
    page.click("#btn-depth-demo")
    page.wait_for_function("window.__kernelscope.compare.runs.length === 3")
    for run in page.evaluate("window.__kernelscope.compare.runs"):
        api.post(f"/api/runs/{run['id']}/stop")  # only its boxes are looked at; spare the CPU
    demo = api.get("/api/defaults").json()["demos"]["depth_stall"]["inits"]
    page.wait_for_function(f"document.querySelectorAll('.compare-inits input:checked').length === {len(demo)}")
    labels = page.evaluate("""() => [...document.querySelectorAll('.compare-inits input:checked')]
        .map(b => b.parentElement.textContent.trim())""")
    assert set(labels) == {"he_normal", "glorot_uniform", "normal(std=0.01)"}
