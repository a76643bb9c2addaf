"""Issue 18 in a real browser: the formation of the detectors at the learner's pace, honest axes,
before/after cards with births, marks for dead, brightness and frozen filters, the step-through
without false warnings, shared colour scales in the compare view, and a page that reads and
navigates well (hash change, 420 px)."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
from conftest import ARTIFACTS, open_page, whole_run_view_on_screen

TERMINAL = {"completed", "stopped", "diverged", "failed", "interrupted"}


def goto(page, url):
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")


def wait_finished(api, run_id, timeout=900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/api/runs/{run_id}").json()
        if run["status"] in TERMINAL:
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish within {timeout} s")


def start_small_run(api, n_train: int, **config) -> str:
    """Start a run of the small model on a small shapes set (64 validation images); its id."""
    dataset = {"name": "shapes", "n_train": n_train, "n_val": 64}
    response = api.post("/api/runs", json={"model": "small", "dataset": dataset, **config})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def conv1_weights(api, run_id, steps):
    return {
        s: np.asarray(
            api.get(f"/api/runs/{run_id}/snapshots/{s}", params={"feature_maps": 0}).json()["layers"][0]["weight"],
            dtype=np.float64,
        )
        for s in steps
    }


def test_default_run_at_a_pace_redraws_conv1_forty_times_before_it_moved_half_way(page, server, api):
    """The default run, played at 10 snapshots/s while it trains: conv1 is redrawn with visibly
    different pixels at least 40 times before the step where it has moved half of its total
    distance ||W_t - W_0|| (measured afterwards from the stored snapshots)."""
    goto(page, f"{server}/#pace=10")  # the pace is part of a shared link, like the view's other options
    assert "pace=10" in page.evaluate("location.hash")
    page.evaluate("window.__kernelscope.frameLog = []")
    page.click("#btn-start")
    page.wait_for_function("window.__kernelscope.state.view.run !== null")
    run_id = page.evaluate("window.__kernelscope.state.view.run")
    assert page.input_value("#pace") == "10"
    # while it trains the page plays stored snapshots, behind live, and says so
    page.wait_for_function("window.__kernelscope.state.mode === 'history' && window.__kernelscope.frameLog.length > 5")
    assert page.eval_on_selector("#btn-play", "b => b.classList.contains('active')")
    run = wait_finished(api, run_id)
    assert run["status"] == "completed", run
    assert run["config"]["steps"] == api.get("/api/defaults").json()["run"]["steps"]

    steps = api.get(f"/api/runs/{run_id}/snapshots").json()["steps"]
    weights = conv1_weights(api, run_id, steps)
    distance = {s: float(np.linalg.norm(weights[s] - weights[0])) for s in steps}
    half_step = next(s for s in steps if distance[s] >= 0.5 * distance[steps[-1]])

    page.wait_for_function(f"window.__kernelscope.frameLog.some(f => f.step >= {half_step})", timeout=300_000)
    frames = page.evaluate("window.__kernelscope.frameLog")
    before = [f for f in frames if f["step"] < half_step and f["mode"] == "history"]
    changed = sum(1 for a, b in zip(before, before[1:]) if a["conv1"] != b["conv1"] and b["step"] > a["step"])
    assert changed >= 40, (half_step, changed, len(before))
    # played in order, every stored snapshot before the half-way step, one after the other, none skipped
    played = sorted(set(f["step"] for f in before))
    assert [f["step"] for f in before] == sorted(f["step"] for f in before)
    stored_before = [s for s in steps if s < half_step]
    assert played == stored_before, (played, stored_before)
    # the learner can make that phase last 30 s or more: at the slowest pace the control offers, one
    # stored snapshot per tick (every one drawn, as above), the snapshots before the half-way step
    # take len / pace seconds — the pace's arithmetic, not this machine's clock
    paces = [float(v) for v in page.eval_on_selector_all("#pace option", "os => os.map(o => o.value)") if v != "live"]
    assert len(stored_before) / min(paces) >= 30, (len(stored_before), paces)

    # jump to live on request
    page.click("#btn-live")
    assert page.evaluate("window.__kernelscope.state.mode") == "live"
    assert page.evaluate("window.__kernelscope.state.view.pace") == "live"
    page.wait_for_function(f"window.__kernelscope.drawn.step === {steps[-1]}")


@pytest.fixture(scope="module")
def young_run(api):
    """A run stopped early: still young, so its charts default to a log step axis."""
    run_id = start_small_run(api, n_train=512, steps=2000, batch_size=16, seed=3)
    deadline = time.monotonic() + 300
    while api.get(f"/api/runs/{run_id}").json()["step"] < 60 and time.monotonic() < deadline:
        time.sleep(0.3)
    api.post(f"/api/runs/{run_id}/stop")
    return wait_finished(api, run_id)


def test_young_run_charts_use_a_log_step_axis_with_decade_ticks_and_the_slider_marked(page, server, young_run):
    whole_run_view_on_screen(page)
    goto(page, f"{server}/#run={young_run['id']}")
    page.wait_for_function("window.__kernelscope.drawn !== null")
    charts = ["chart-loss", "chart-acc", "chart-act", "chart-grad", "chart-dead", "chart-selective", "chart-score"]
    axes = f"""() => {charts}.map(id => {{
        const x = (document.getElementById(id).layout || {{}}).xaxis || {{}}; return [x.type, x.dtick, x.exponentformat]; }})"""
    # the charts draw in the frames after the page opened the run (charts.js scheduler); every one
    # of them, the layer summaries included, on the same step axis
    page.wait_for_function(f"JSON.stringify(({axes})()) === JSON.stringify({[['log', 1, 'none']] * len(charts)})")
    assert page.inner_text("#step-axis-auto") == "axis: auto (log)"
    labels = page.eval_on_selector_all("#chart-loss .xtick text", "ts => ts.map(t => t.textContent)")
    assert labels and all(text in {"1", "10", "100", "1000"} for text in labels), labels
    # the toggle: linear, then back
    page.click("[data-step-axis=linear]")
    page.wait_for_function(f"({axes})().every(a => a[0] === 'linear')")
    assert "axis=linear" in page.evaluate("location.hash")
    assert page.inner_text("#step-axis-auto") == "axis: auto (log)"  # what auto would pick, said while linear is on
    page.click("[data-step-axis=log]")
    # the slider's step is a red line with its number on every chart, where the step lies on its axis
    page.eval_on_selector("#history-slider", "s => { s.value = '5'; s.dispatchEvent(new Event('input')); }")
    step = page.evaluate("window.__kernelscope.state.historyStep")
    # the charts fill in as the run's history arrives; the marker follows each redraw
    page.wait_for_function(f"{charts}.every(id => !document.querySelector('#' + id + ' .step-marker').hidden)")
    for chart in charts:
        marker = page.evaluate(f"""() => {{
            const c = document.getElementById('{chart}'), m = c.querySelector('.step-marker'), xa = c._fullLayout.xaxis;
            return {{hidden: m.hidden, step: m.dataset.step, text: m.textContent, left: parseFloat(m.style.left),
                     expected: xa._offset + xa.l2p(Math.log10(Math.max({step}, 1))), log: xa.type}}; }}""")
        assert not marker["hidden"] and marker["step"] == str(step) and marker["text"] == f"step {step}", marker
        assert marker["log"] == "log" and abs(marker["left"] - marker["expected"]) < 1.0, marker
    # overlapping series are told apart by dash and marker
    page.wait_for_function("(document.getElementById('chart-act').data || []).length >= 3")
    # (a series of many points draws its markers on a thinned copy of itself, and exact zeros apart)
    traces = page.evaluate(
        "document.getElementById('chart-act').data.filter(t => !t.meta)"
        ".map(t => [t.line.dash, t.marker.symbol, t.name])"
    )
    assert len({t[0] for t in traces}) == len(traces) and len({t[1] for t in traces}) == len(traces)
    assert {t[2] for t in traces} >= {"conv1", "conv2"}


@pytest.fixture(scope="module")
def finished_run(api):
    """A short run trained to its end: its snapshots span early and late steps."""
    return wait_finished(api, start_small_run(api, n_train=256, steps=120, batch_size=8, seed=4, snapshot_every=10))


def test_auto_step_axis_follows_the_step_on_screen_and_the_toggle_always_wins(page, server, api, finished_run):
    """The "auto" axis is log while the step on screen lies in the first quarter of the run, whatever step
    training reached: a finished run opens linear (live shows its last step), turns log when the
    slider or the player shows an early snapshot, linear again for a late one; log and linear
    override it at any step."""
    whole_run_view_on_screen(page)
    run_id, total = finished_run["id"], finished_run["config"]["steps"]
    assert finished_run["status"] == "completed"
    goto(page, f"{server}/#run={run_id}")
    page.wait_for_function("window.__kernelscope.drawn !== null")
    steps = page.evaluate("window.__kernelscope.state.steps")
    early = max(i for i, s in enumerate(steps) if 0 < s < total / 4)
    late = next(i for i, s in enumerate(steps) if s >= total / 4)
    charts = ["chart-loss", "chart-acc", "chart-act", "chart-grad", "chart-dead", "chart-selective", "chart-score"]

    def axes_become(kind):
        page.wait_for_function(
            f"{charts}.every(id => (document.getElementById(id).layout?.xaxis || {{}}).type === '{kind}')"
        )

    def show(index):
        page.eval_on_selector(
            "#history-slider", f"s => {{ s.value = '{index}'; s.dispatchEvent(new Event('input')); }}"
        )

    axes_become("linear")  # live: the last step, past the first quarter
    assert page.inner_text("#step-axis-auto") == "axis: auto (linear)"
    # every chart of the run spans the same steps, 0 to the last, whichever points it holds
    ranges = f"{charts}.map(id => JSON.stringify(document.getElementById(id).layout.xaxis.range))"
    page.wait_for_function(f"new Set({ranges}).size === 1")
    low, high = page.evaluate(f"document.getElementById('{charts[0]}').layout.xaxis.range")
    assert low < 0 < total < high < total * 1.05
    # the std charts name each layer as the engine does (conv1, …, dense1), not by type and index
    described = api.post(
        "/api/inits/describe", json={k: finished_run["config"][k] for k in ("model", "init", "dataset")}
    )
    labels = {layer["label"] for layer in described.json()["layers"]}
    page.wait_for_function(
        f"new Set(document.getElementById('chart-act').data.map(t => t.name)).size === {len(labels)}"
    )
    assert set(page.evaluate("document.getElementById('chart-act').data.map(t => t.name)")) == labels
    show(early)
    axes_become("log")
    assert page.inner_text("#step-axis-auto") == "axis: auto (log)"
    assert page.evaluate("window.__kernelscope.state.historyStep") == steps[early]
    show(late)
    axes_become("linear")
    # the player: log while it plays the early snapshots of this finished run, at the slowest pace
    show(0)
    page.select_option("#pace", "1")
    page.wait_for_function("window.__kernelscope.state.historyStep > 0")
    axes_become("log")
    page.click("#btn-play")  # pause
    # the toggle overrides auto at any step
    page.click("[data-step-axis=linear]")
    axes_become("linear")
    show(late)
    page.click("[data-step-axis=log]")
    axes_become("log")
    assert page.evaluate("window.__kernelscope.state.view.stepAxis") == "log"
    page.click("[data-step-axis=auto]")
    axes_become("linear")


def test_the_view_event_says_when_snapshots_play_and_going_live_is_one_view(page, server, finished_run):
    """The page's other modules (the explain drawer, fork, export) follow "kernelscope:view": it
    says whether stored snapshots play (the step moves by itself), says so again on pause, and
    going live from playing is one view, not a stop on the played step first (the drawer would
    ask the server to explain that step on its way to live)."""
    goto(page, f"{server}/#run={finished_run['id']}")
    page.evaluate(
        """() => { window.views = [];
        document.addEventListener('kernelscope:view', (e) => window.views.push(e.detail)); }"""
    )
    page.select_option("#pace", "1")
    page.wait_for_function("window.views.some(v => v.playing && v.mode === 'history')")
    page.click("#btn-play")  # pause
    page.wait_for_function("!window.views[window.views.length - 1].playing")
    assert page.evaluate("window.views[window.views.length - 1].mode") == "history"
    page.click("#btn-play")  # play on from the step on screen
    page.wait_for_function("window.views[window.views.length - 1].playing")
    before = page.evaluate("window.views.length")
    page.click("#btn-live")
    page.wait_for_function(f"window.views.length > {before}")  # the click's views come in one task
    after = page.evaluate(f"window.views.slice({before})")
    assert [(v["mode"], v["playing"]) for v in after] == [("live", False)], after


def test_cards_show_the_step0_kernel_births_and_honest_labels(page, server, api, young_run):
    run_id = young_run["id"]
    whole_run_view_on_screen(page)  # the maps are fetched while on screen
    goto(page, f"{server}/#run={run_id}")
    page.wait_for_function("window.__kernelscope.drawn !== null")
    assert page.eval_on_selector_all(".layer-name", "ns => ns.map(n => n.textContent)")[:2] == ["conv1", "conv2"]
    page.wait_for_function("window.__kernelscope.features !== null")  # the maps come with their own request
    assert page.eval_on_selector_all(".fmap-title", "ns => ns.map(n => n.textContent)")[:2] == ["conv1", "conv2"]
    # the step-0 kernel beside each card, as stored at step 0
    page.wait_for_selector('.layer-panel[data-layer="0"] canvas.kernel0')
    assert (
        page.eval_on_selector_all('.layer-panel[data-layer="0"] .kernel-then', "ts => ts.filter(t => !t.hidden).length")
        == 8
    )
    # births as the server states them, on the cards and on the layer's timeline
    births = api.get(f"/api/runs/{run_id}/layers/0/births").json()["births"]
    page.wait_for_function(
        "document.querySelectorAll('.layer-panel[data-layer=\"0\"] .birth-label')[0].textContent !== ''"
    )
    shown = page.eval_on_selector_all('.layer-panel[data-layer="0"] .birth-label', "ls => ls.map(l => l.textContent)")
    expected = [f"born at step {b['birth_step']}" if b["birth_step"] is not None else "not born yet" for b in births]
    assert shown == expected
    ticks = page.eval_on_selector_all('.layer-panel[data-layer="0"] .birth-tick', "ts => ts.map(t => t.textContent)")
    assert sorted(ticks) == sorted(str(b["filter"]) for b in births if b["birth_step"] is not None)
    # captions: dead filters say dead, brightness filters their mean share, no score for either
    snapshot = api.get(f"/api/runs/{run_id}/snapshots/latest", params={"feature_maps": 0}).json()
    for layer in snapshot["layers"]:
        captions = page.eval_on_selector_all(
            f'.layer-panel[data-layer="{layer["index"]}"] .detector-label', "ls => ls.map(l => l.textContent)"
        )
        for det, caption in zip(layer["detectors"], captions):
            if det["dead"]:
                assert caption == "dead"
            elif det["label"] == "brightness":
                assert caption == f"brightness · {round(det['mean_share'] * 100)}% mean"
            else:
                assert caption.startswith(det["label"].replace("_", " "))
    # labels are 12 px or more and at least 4.5:1 against their card
    contrast = page.evaluate("""() => [...document.querySelectorAll('.detector-label')].map(l => {
        const lum = (c) => { const [r, g, b] = c.match(/\\d+/g).slice(0, 3).map(v => { v /= 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
        let node = l, bg = 'rgba(0, 0, 0, 0)';
        while (node && /rgba\\(0, 0, 0, 0\\)|transparent/.test(bg)) { bg = getComputedStyle(node).backgroundColor; node = node.parentElement; }
        const a = lum(getComputedStyle(l).color), b = lum(bg);
        return [parseFloat(getComputedStyle(l).fontSize), (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]; })""")
    assert contrast and all(size >= 12 and ratio >= 4.5 for size, ratio in contrast), contrast


def test_step_through_agrees_with_every_stored_pixel_it_shows(page, server, young_run):
    whole_run_view_on_screen(page)
    goto(page, f"{server}/#run={young_run['id']}")
    page.wait_for_function("window.__kernelscope.features !== null")
    for f, (fx, fy) in [(0, (0.05, 0.05)), (3, (0.5, 0.4)), (7, (0.9, 0.9))]:
        canvas = page.locator(f'canvas.fmap[data-layer="0"][data-filter="{f}"]')
        box = canvas.bounding_box()
        canvas.click(position={"x": fx * box["width"], "y": fy * box["height"]})
        page.wait_for_selector("#st-equation[data-agrees]")
        assert page.eval_on_selector("#st-equation", "e => e.dataset.agrees") == "true"
        assert page.locator(".st-term.stored.mismatch").count() == 0


def test_pasting_a_link_into_the_same_tab_opens_that_run(page, server, young_run, api):
    other = api.post(
        "/api/runs",
        json={
            "model": "small",
            "dataset": {"name": "shapes", "n_train": 256, "n_val": 64},
            "steps": 20,
            "batch_size": 8,
            "seed": 5,
        },
    ).json()["id"]
    wait_finished(api, other)
    goto(page, f"{server}/#run={young_run['id']}")
    page.wait_for_function(f"window.__kernelscope.state.run?.id === '{young_run['id']}'")
    page.evaluate(f"location.hash = '#run={other}&steps=20'")
    page.wait_for_function(f"window.__kernelscope.state.run?.id === '{other}'")
    assert page.input_value("#f-steps") == "20"
    page.wait_for_function(f"document.getElementById('run-title').textContent === 'run {other}'")


def test_at_420_px_the_filters_come_before_the_folded_setup_form(browser, server, young_run):
    page, problems = open_page(browser, viewport=(420, 900))
    try:
        goto(page, f"{server}/#run={young_run['id']}")
        page.wait_for_function("window.__kernelscope.drawn !== null")
        filters_top = page.eval_on_selector("#filter-board", "e => e.getBoundingClientRect().top")
        setup_top = page.eval_on_selector("#setup", "e => e.getBoundingClientRect().top")
        assert filters_top < setup_top
        assert page.eval_on_selector("#setup-details", "d => d.open") is False
        page.click("#setup-details > summary")
        assert page.eval_on_selector("#setup-details", "d => d.open") is True
        # nothing wider than the screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 420
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "narrow-420.png"), full_page=True)
    finally:
        page.context.close()
    assert problems.items == []


def test_kernel_editor_starts_at_its_layers_size_keeps_its_confirmation_and_names_the_init(page, server, api):
    goto(page, f"{server}/")
    page.click('#view-tabs [data-view="kernels"]')
    demo = api.post("/api/inits/describe", json={"model": "demo", "init": "he_normal"}).json()["layers"]
    conv1 = demo[0]
    assert page.input_value("#ke-size") == str(conv1["shape"][2])  # 5×5 for the default model's conv1
    assert page.locator(".ke-cell").count() == conv1["shape"][2] ** 2
    page.wait_for_function("document.querySelector('#ke-init-layer option')?.textContent.startsWith('conv1')")
    page.fill("#ke-init-count", "2")
    page.locator("#ke-init-count").dispatch_event("input")
    assert page.text_content("#ke-init-what") == f"conv1: filters 0–1 of its {conv1['shape'][0]} start as this kernel"
    page.click("#ke-use-init")
    note = page.text_content("#ke-init-note")
    assert note.startswith("✓ set: conv1 filters 0–1 start as your kernel")
    page.wait_for_timeout(2500)  # the editor re-reads the form every second: the confirmation stays
    assert page.text_content("#ke-init-note") == note
    # the setup form says the learner's kernel is used, not the bank's names
    page.click('#view-tabs [data-view="live"]')
    option = page.eval_on_selector(
        '#init-table .init-layer[data-layer="0"] select[data-param="kernels"]', "s => s.selectedOptions[0].textContent"
    )
    assert option.startswith("your drawn kernel: filters 0–1") and "bank" not in option
    page.fill("#f-steps", "20")
    page.locator("#f-steps").dispatch_event("change")
    page.click("#btn-start")
    page.wait_for_function("window.__kernelscope.state.run")
    run_id = page.evaluate("window.__kernelscope.state.run.id")
    page.wait_for_function(f"document.querySelector('#run-list li[data-run=\"{run_id}\"] .run-meta')")
    meta = page.text_content(f'#run-list li[data-run="{run_id}"] .run-meta')
    assert "own kernel in 2 filters, rest he_normal" in meta and "custom" not in meta, meta
    wait_finished(api, run_id)
    # the run list updates its status without a reload
    page.wait_for_function(
        f"document.querySelector('#run-list li[data-run=\"{run_id}\"] .badge').textContent === 'completed'"
    )


def test_live_view_draws_at_a_bounded_rate_and_ends_on_the_last_snapshot_with_its_maps(page, server, api):
    """A page left open on a fast run must not take the cores the run trains on: live, the filters
    are redrawn at most `drawsPerSecond` times a second and the feature maps asked for at most
    every `mapsIntervalMs` (the page's own limits, read from it), whatever the snapshot rate; and
    once the run ends, the newest snapshot is on screen, feature maps included."""
    whole_run_view_on_screen(page)  # filters and maps at once
    goto(page, f"{server}/#steps=600")
    limits = page.evaluate("window.__kernelscope.liveLimits")
    page.evaluate("window.__kernelscope.frameLog = []; window.__kernelscope.liveMapsAsked = []")
    # each change of the header's progress text: when, and which CSS transitions ran then
    page.evaluate(
        """() => {
          window.headerChanges = [];
          new MutationObserver(() => window.headerChanges.push(
            { at: performance.now(), transitions: document.getAnimations()
                .filter((a) => a instanceof CSSTransition && a.playState === 'running')
                .map((a) => `${a.transitionProperty} on ${a.effect?.target?.className}`) }
          )).observe(document.getElementById('progress-text'), { childList: true, characterData: true, subtree: true });
        }"""
    )
    page.click("#btn-start")
    page.wait_for_function("window.__kernelscope.state.view.run !== null")
    run_id = page.evaluate("window.__kernelscope.state.view.run")
    run = wait_finished(api, run_id)
    assert run["status"] == "completed", run
    last = api.get(f"/api/runs/{run_id}/snapshots").json()["steps"][-1]
    page.wait_for_function(f"window.__kernelscope.drawn?.step === {last}")
    page.wait_for_function(f"window.__kernelscope.features?.step === {last}")

    # a new snapshot drawn live (the same one drawn again, when its births or init figures arrive, is no new frame)
    live = [f for f in page.evaluate("window.__kernelscope.frameLog") if f["mode"] == "live"]
    draws = [b["at"] for a, b in zip(live, live[1:]) if b["step"] != a["step"]]
    asked = page.evaluate("window.__kernelscope.liveMapsAsked")
    assert len(draws) >= 2 and len(asked) >= 2, (len(draws), asked)
    # a timer never fires early: these bounds hold on any machine, a slow one only draws less often.
    # A frame is logged when its drawing ends, so two frames' logs lie at least the interval less
    # the longer draw apart.
    longest_draw = max(page.evaluate("window.__kernelscope.drawMs.filters"))
    assert np.diff(draws).min() >= 1000 / limits["drawsPerSecond"] - longest_draw - 2, (
        np.diff(draws).min(),
        longest_draw,
    )
    assert np.diff(asked).min() >= limits["mapsIntervalMs"] - 2, np.diff(asked).min()
    # the header follows the stream in the same live frames (at most drawsPerSecond), besides once
    # per run-list poll (every 2 s), not once per event; and no transition keeps the browser
    # drawing between them (the bars' width transitions, restarted by every event, kept it drawing
    # about 60 frames a second; a spinner's rotation runs on the compositor and is left out)
    changes = page.evaluate("window.headerChanges")
    assert len(changes) >= 2, changes
    span = changes[-1]["at"] - changes[0]["at"]
    frame_gap = max(1.0, 1000 / limits["drawsPerSecond"] - longest_draw - 2)
    assert len(changes) <= span / frame_gap + span / 2000 + 3, (len(changes), span)
    assert all(not c["transitions"] for c in changes), changes


@contextlib.contextmanager
def live_run_on_page(page, server, api):
    """Start a long default run from the page and follow it live (frameLog and liveMapsAsked
    recording, three live frames drawn); yields its id and stops it after."""
    goto(page, f"{server}/#steps=3000")
    page.evaluate("window.__kernelscope.liveMapsAsked = []; window.__kernelscope.frameLog = []")
    page.click("#btn-start")
    page.wait_for_function("window.__kernelscope.state.view.run !== null")
    run_id = page.evaluate("window.__kernelscope.state.view.run")
    try:
        page.wait_for_function("window.__kernelscope.frameLog.filter(f => f.mode === 'live').length >= 3")
        yield run_id
    finally:
        api.post(f"/api/runs/{run_id}/stop")


def test_live_feature_maps_off_screen_are_not_asked_for_until_they_come_on_screen(page, server, api):
    """Each live map request makes the server decode a stored snapshot and the browser redraw,
    on the cores the run trains on: while the learner watches the filters with the maps scrolled
    below, none is asked for; scrolled into view, the live maps are fetched and drawn."""
    with live_run_on_page(page, server, api):
        # once the filters are drawn, this layout puts the maps below the fold (and the observer's margin)
        below = page.eval_on_selector(".fmaps-panel", "p => p.getBoundingClientRect().top - window.innerHeight")
        assert below > 300, below
        # from then on, more live frames of filters and not one map request
        page.evaluate("window.__kernelscope.liveMapsAsked = []; window.__kernelscope.frameLog = []")
        page.wait_for_function("window.__kernelscope.frameLog.filter(f => f.mode === 'live').length >= 5")
        page.wait_for_timeout(1500)
        assert page.evaluate("window.__kernelscope.liveMapsAsked") == []
        features = page.evaluate("window.__kernelscope.features?.step ?? null")
        page.eval_on_selector(".fmaps-panel", "p => p.scrollIntoView()")
        page.wait_for_function("window.__kernelscope.liveMapsAsked.length >= 1")
        page.wait_for_function(
            f"(window.__kernelscope.features?.step ?? -1) > {features if features is not None else -1}"
        )
        assert page.eval_on_selector_all("#fmap-board canvas", "cs => cs.length") > 0


def test_live_filters_wait_while_another_tab_is_open_and_show_the_newest_on_return(page, server, api):
    """While the learner looks at another tab of the page, the live filters are not painted into
    canvases no one sees; back on the run, the newest snapshot is drawn at once."""
    with live_run_on_page(page, server, api):
        page.click('#view-tabs [data-view="probe"]')
        page.wait_for_timeout(300)  # a frame already under way may end
        page.evaluate("window.__kernelscope.frameLog = []")
        newest = "window.__kernelscope.state.latestSnapshot.step"  # the newest snapshot the page received
        before = page.evaluate(newest)
        # the run goes on, and its stream brings snapshots well past that one, however busy the machine
        page.wait_for_function(f"{newest} > {before + 20}")
        received = page.evaluate(newest)
        assert page.evaluate("window.__kernelscope.frameLog") == []
        page.click('#view-tabs [data-view="live"]')
        page.wait_for_function("window.__kernelscope.frameLog.filter(f => f.mode === 'live').length >= 1")
        drawn = page.evaluate("window.__kernelscope.frameLog[0].step")
        # the first frame on return is a snapshot received while away, not the one left on screen
        assert drawn >= received > before, (before, received, drawn)


def test_on_a_phone_the_live_maps_keep_following_the_run_with_the_filters_scrolled_away(browser, server, api):
    """At 420 px the charts stand between the filters and the maps: a learner watching the maps
    has the filters far above the screen, and the maps must still follow the run."""
    page, problems = open_page(browser, viewport=(420, 900))
    try:
        with live_run_on_page(page, server, api):
            page.eval_on_selector(".fmaps-panel", "p => p.scrollIntoView()")
            above = page.eval_on_selector("#filter-board", "b => -b.getBoundingClientRect().bottom")
            assert above > 300, above  # beyond the observer's margin: the filters count as off screen
            page.wait_for_function("window.__kernelscope.features?.step != null")
            first = page.evaluate("window.__kernelscope.features.step")
            page.wait_for_function(f"window.__kernelscope.features.step > {first}", timeout=30_000)
    finally:
        page.context.close()
    assert problems.items == [], problems.items
