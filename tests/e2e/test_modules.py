"""The page's pure modules, run in the browser they ship to: the URL hash
round trip, the request body, the latest-only fetcher that drops frames
instead of queueing them, and the step-through arithmetic against numpy."""

import numpy as np
import pytest
from conftest import open_page


@pytest.fixture(scope="module")
def modules(browser, server):
    """One loaded page shared by these tests (they only import modules into it)."""
    page, problems = open_page(browser)
    page.goto(f"{server}/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    problems.close_and_check(page)


def test_hash_round_trip_keeps_spec_inits_and_numbers(modules):
    result = modules.evaluate("""async () => {
        const s = await import('/static/js/state.js');
        const config = s.cloneConfig(s.BLANK_CONFIG);
        Object.assign(config, {
            preset: 'custom', lr: 0.003, momentum: 0.5, weightDecay: 0.125, batchSize: 17, steps: 999, seed: 42,
            snapshotEvery: 3, optimizer: 'adam', dataset: 'shapes',
            spec: {input: [1, 12, 12], layers: [{type: 'conv', filters: 2, kernel: 3, padding: 1},
                                               {type: 'relu'}, {type: 'flatten'}, {type: 'dense', units: 4}]},
            init: {name: 'uniform', a: 0.2},
            layerInits: {'0': {name: 'kernel', kernels: 'sobel_x'}},
        });
        const view = {run: 'abc123', scaling: 'filter', probe: 2, pace: 5, stepAxis: 'linear'};
        const back = s.hashToConfig(s.configToHash(config, view));
        return {same: JSON.stringify(back.config) === JSON.stringify(config), view: back.view,
                body: s.toRunRequest(config, {})};
    }""")
    assert result["same"]
    assert result["view"] == {"run": "abc123", "scaling": "filter", "probe": 2, "pace": 5, "stepAxis": "linear"}
    body = result["body"]
    assert body["model"]["layers"][0]["init"] == {"name": "kernel", "kernels": "sobel_x"}
    assert body["init"] == {"name": "uniform", "a": 0.2}
    assert body["optimizer"] == {"name": "adam", "lr": 0.003, "weight_decay": 0.125}
    assert (body["batch_size"], body["steps"], body["seed"], body["snapshot_every"]) == (17, 999, 42, 3)


def test_malformed_hash_falls_back_to_defaults(modules):
    config = modules.evaluate("""async () => {
        const s = await import('/static/js/state.js');
        const defaults = s.pageDefaults({run: {model: 'demo', init: 'glorot_normal', optimizer: {name: 'sgd', lr: 0.125, weight_decay: 0.5}},
                                         optimizers: {adam: {lr: 0.25, weight_decay: 0}}}, {});
        return [s.hashToConfig('#preset=custom&spec=%7Bnot-json&init=%7B%22x%22%3A1%7D&lr=abc&steps=12', defaults).config,
                s.hashToConfig('#opt=adam', defaults).config];
    }""")
    assert config[0]["preset"] == "demo"  # custom without a readable spec
    assert config[0]["init"] == {"name": "glorot_normal"}  # the server's default, not one of the page's own
    assert (config[0]["lr"], config[0]["weightDecay"]) == (0.125, 0.5)  # the server's defaults
    assert config[0]["steps"] == 12
    assert config[1]["weightDecay"] == 0  # a link from before the weight decay field: its optimizer's default


def test_latest_only_fetcher_keeps_one_request_and_drops_the_middle(modules):
    result = modules.evaluate("""async () => {
        const { LatestOnlyFetcher } = await import('/static/js/api.js');
        const started = [], results = [], releases = [];
        const fetcher = new LatestOnlyFetcher(
            (key) => { started.push(key); return new Promise((resolve) => releases.push(() => resolve(key * 10))); },
            (key, data) => results.push([key, data]));
        for (const step of [1, 2, 3, 4, 5]) fetcher.want(step);
        const inFlightAtOnce = started.length;
        releases.shift()();                  // answer step 1: only 5 is fetched next
        await new Promise((r) => setTimeout(r, 0));
        releases.shift()();
        await new Promise((r) => setTimeout(r, 0));
        return {started, results, inFlightAtOnce, dropped: fetcher.dropped, busy: fetcher.busy};
    }""")
    assert result["inFlightAtOnce"] == 1
    assert result["started"] == [1, 5]
    assert result["results"] == [[1, 10], [5, 50]]
    assert result["dropped"] == 3 and result["busy"] is False


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (1, 2)])
def test_convolve_pixel_matches_numpy(modules, stride, padding):
    rng = np.random.default_rng(stride * 10 + padding)
    x = rng.normal(size=(2, 7, 6)).round(4)
    w = rng.normal(size=(2, 3, 3)).round(4)
    out_h = (7 + 2 * padding - 3) // stride + 1
    out_w = (6 + 2 * padding - 3) // stride + 1
    got = modules.evaluate(
        """async ([x, w, stride, padding, outH, outW]) => {
        const { convolvePixel, outputSize } = await import('/static/js/stepthrough.js');
        const out = [];
        for (let y = 0; y < outH; y++) {
            const row = [];
            for (let i = 0; i < outW; i++) row.push(convolvePixel(x, w, 0.25, stride, padding, y, i).value);
            out.push(row);
        }
        return {out, h: outputSize(7, 3, stride, padding), w: outputSize(6, 3, stride, padding)};
    }""",
        [x.tolist(), w.tolist(), stride, padding, out_h, out_w],
    )
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    expected = np.array(
        [
            [(xp[:, i * stride : i * stride + 3, j * stride : j * stride + 3] * w).sum() + 0.25 for j in range(out_w)]
            for i in range(out_h)
        ]
    )
    assert (got["h"], got["w"]) == (out_h, out_w)
    np.testing.assert_allclose(np.array(got["out"]), expected, rtol=1e-12, atol=1e-12)


def test_diverging_colormap_is_white_at_zero_and_symmetric(modules):
    colors = modules.evaluate("""async () => {
        const { divergingColor } = await import('/static/js/filters.js');
        return [-2, -1, -0.5, 0, 0.5, 1, 2].map(divergingColor);
    }""")
    assert colors[3] == [247, 247, 247]
    assert colors[0] == colors[1] == [33, 102, 172]  # clipped beyond the scale
    assert colors[5] == colors[6] == [178, 24, 43]
    assert colors[2][2] > colors[2][0] and colors[4][0] > colors[4][2]  # blue below zero, red above


def test_a_filters_input_channels_are_drawn_as_a_table_of_kernels(modules):
    """Eight 3x3 kernels (a filter over 8 input channels) go in a 4 x 2 table, 1 px apart: each
    kernel's marked weight is painted at its own cell, and the gaps stay transparent."""
    got = modules.evaluate("""async () => {
        const { paintGrid, tileGrid } = await import('/static/js/filters.js');
        const tiles = Array.from({length: 8}, (_, t) => [[0, 0, 0], [0, 0, t % 2 ? -1 : 1], [0, 0, 0]]);
        const canvas = document.createElement('canvas');
        paintGrid(canvas, tiles, (v) => [v > 0 ? 255 : 0, 0, v < 0 ? 255 : 0]);
        const pixel = (x, y) => Array.from(canvas.getContext('2d').getImageData(x, y, 1, 1).data);
        return {size: [canvas.width, canvas.height], grids: [1, 3, 8, 16].map((n) => tileGrid(n)),
                marked: tiles.map((_, t) => pixel((t % 4) * 4 + 2, Math.floor(t / 4) * 4 + 1)),
                gap: pixel(3, 0), rowGap: pixel(0, 3), plain: pixel(0, 0)};
    }""")
    assert got["size"] == [4 * 4 - 1, 2 * 4 - 1]
    assert got["grids"] == [
        {"cols": 1, "rows": 1},
        {"cols": 3, "rows": 1},
        {"cols": 4, "rows": 2},
        {"cols": 6, "rows": 3},
    ]
    assert got["marked"] == [[0, 0, 255, 255] if t % 2 else [255, 0, 0, 255] for t in range(8)]
    assert got["gap"][3] == 0 and got["rowGap"][3] == 0
    assert got["plain"] == [0, 0, 0, 255]


def test_log_charts_label_each_decade_once_they_span_several(modules):
    """Gradient scales span many decades: a log chart then labels one tick per decade (two
    past six decades) so the labels do not overlap; a narrow range keeps 1-2-5 ticks."""
    ticks = modules.evaluate("""async () => {
        const { LineChart } = await import('/static/js/charts.js');
        const div = document.createElement('div');
        div.style.width = '300px'; div.style.height = '200px';
        document.body.append(div);
        const chart = new LineChart(div, {title: 'gradient std', log: true});
        const seen = [];
        for (const [low, high] of [[1, 5], [1e-5, 1e-2], [1e-9, 1e-1], [0.2, 3]]) {
            chart.reset();
            chart.setSeries('conv 0', [0, 1, 2], [low, Math.sqrt(low * high), high]);
            chart.flush();   // the chart's state drawn now (the scheduler would draw it a frame later)
            seen.push(div.layout.yaxis.dtick);
        }
        chart.reset();
        chart.addDataPoint('conv 0', 0, 1e-6);
        chart.addDataPoint('conv 0', 1, 1e-3);
        chart.flush();
        seen.push(div.layout.yaxis.dtick);
        div.remove();
        return seen;
    }""")
    assert ticks == ["D2", 1, 2, "D2", 1]


def test_a_log_chart_draws_exact_zeros_apart_not_at_some_small_number(modules):
    """A std of exactly 0 (zero weights) has no place on a log scale: the chart keeps it, draws it
    as a marker on the plot's bottom edge (a hidden 0-1 axis) and says what it is, instead of
    dropping it or drawing it at a tiny value that would read as that value."""
    got = modules.evaluate("""async () => {
        const { LineChart } = await import('/static/js/charts.js');
        const div = document.createElement('div');
        div.style.width = '300px'; div.style.height = '200px';
        document.body.append(div);
        const chart = new LineChart(div, {title: 'activation std', log: true});
        chart.setSeries('conv1', [0, 10, 20, 30], [0, 0, 0.5, 0.25]);
        chart.addDataPoint('conv1', 40, 0);
        chart.flush();
        const traces = div.data.map(t => ({meta: t.meta ?? null, x: [...t.x], y: [...t.y], axis: t.yaxis ?? 'y'}));
        const notes = div.layout.yaxis2.ticktext;
        const count = chart.pointCount('conv1');
        div.remove();
        return {traces, notes, count, first: div.layout.yaxis, second: div.layout.yaxis2};
    }""")
    line = next(t for t in got["traces"] if t["meta"] is None)
    zeros = next(t for t in got["traces"] if t["meta"] == "zeros")
    assert line["x"] == [20, 30] and line["y"] == [0.5, 0.25] and line["axis"] == "y"
    assert zeros["x"] == [0, 10, 40] and zeros["axis"] == "y2"
    # the zeros' strip lies under the log plot, apart from it, and its one tick says 0
    assert got["second"]["range"] == [0, 1] and got["second"]["domain"][1] < got["first"]["domain"][0]
    assert got["notes"] == ["0 ▽"]
    assert got["count"] == 5


def test_init_figures_on_the_page_are_the_engines(modules):
    """The law and σ or bound the setup panel shows for a layer is the engine's own for that
    layer's shape and the init's parameters (POST /api/inits/describe); the page computes none."""
    from engine.core.initializers import INITIALIZERS

    cases = [
        ("normal", {"std": 0.03}),
        ("uniform", {"a": 0.2}),
        ("glorot_uniform", {}),
        ("glorot_normal", {}),
        ("he_normal", {}),
        ("he_uniform", {}),
        ("lecun_normal", {}),
        ("orthogonal", {"gain": 2.0}),
    ]
    for name, params in cases:
        modules.select_option("#f-init", name)
        for key, value in params.items():
            modules.fill(f"#f-init-param input[data-param={key}]", str(value))
            modules.locator(f"#f-init-param input[data-param={key}]").dispatch_event("change")
        rows = modules.eval_on_selector_all(".init-layer", "rs => rs.map(r => r.dataset.layer)")
        spec = modules.evaluate("window.__kernelscope.state.presets[window.__kernelscope.state.config.preset]")
        assert rows, "the setup panel lists no conv layers"
        expected = []
        channels = spec["input"][0] if "input" in spec else 1
        for layer in spec["layers"]:
            if layer["type"] != "conv":
                continue
            k = layer.get("kernel", 3)
            shape = (layer["filters"], channels, k, k)
            channels = layer["filters"]
            expected.append(INITIALIZERS[name].describe(shape, **params)["text"])
        modules.wait_for_function(
            """(expected) => {
            const laws = [...document.querySelectorAll('#init-table .law')].map(l => l.textContent);
            return document.getElementById('init-table').dataset.described === 'true'
                && laws.length === expected.length && laws.every((text, i) => text === expected[i]);
        }""",
            arg=expected,
            timeout=30_000,
        )


def test_step_through_tolerance_is_the_stored_precision(modules):
    """A map stored at 3 decimals from inputs at 4 and weights at 5: the exact sum rounded as stored
    agrees; a value off by more than the rounding of map, inputs and weights together does not."""
    rng = np.random.default_rng(0)
    image = np.round(rng.random((1, 6, 6)), 4)
    kernel = np.round(rng.normal(0, 0.3, (1, 3, 3)), 5)
    exact = sum(float((image[0, y : y + 3, x : x + 3] * kernel[0]).sum()) for y, x in [(1, 2)])
    stored = np.round(rng.normal(0, 1, (4, 4)), 3)
    stored[1, 2] = round(exact, 3)
    result = modules.evaluate(
        """async ([image, kernel, stored]) => {
        const s = await import('/static/js/stepthrough.js');
        const r = s.convolvePixel(image, kernel, 0, 1, 0, 1, 2);
        const ctx = { input: image, kernel, bias: 0, stored };
        return [s.storedDecimals(stored), s.storedDecimals(image), s.storedDecimals(kernel), r.value,
                s.agreementTolerance(ctx, r)];
    }""",
        [image.tolist(), kernel.tolist(), stored.tolist()],
    )
    decimals_map, decimals_in, decimals_w, value, tolerance = result
    assert (decimals_map, decimals_in, decimals_w) == (3, 4, 5)
    assert abs(stored[1, 2] - value) <= tolerance  # no false "differs"
    bound = 0.5e-3 + np.abs(kernel).sum() * 0.5e-4 + np.abs(image[0, 1:4, 2:5]).sum() * 0.5e-5
    assert bound <= tolerance < bound + 1e-4  # and no wider than the rounding explains


def test_birth_ticks_born_at_nearby_steps_never_cover_each_other(modules):
    """A conv layer's timeline with births crowded together (the usual case: many filters are born
    within a few snapshots of each other): each tick lies at its step on the log axis, filters born
    at the same step share a tick that lists them, and no two ticks' boxes overlap."""
    got = modules.evaluate("""async () => {
        const { FilterLayerView } = await import('/static/js/filters.js');
        const box = document.createElement('div');
        box.style.width = '420px';
        document.body.prepend(box);
        const weight = Array.from({length: 16}, (_, f) => [[[f, 0, 0], [0, 1, 0], [0, 0, -f]]]);
        const layer = {index: 0, label: 'conv1', type: 'conv', shape: [16, 1, 3, 3], weight, symmetry: 0.1, detectors: []};
        const steps = [12, 13, 13, 14, 15, 15, 15, 15, 16, 40, 41, 2900, 2950, null, null, 3000];
        const births = steps.map((s, f) => ({filter: f, birth_step: s}));
        const view = new FilterLayerView(box, layer);
        view.birthInfo = {last: 3000, step: 15};
        view.update(layer, {births, step: 15});
        const track = box.querySelector('.birth-track').getBoundingClientRect();
        const ticks = [...box.querySelectorAll('.birth-tick')].map((t) => {
            const r = t.getBoundingClientRect();
            return {filters: t.dataset.filters, step: Number(t.dataset.step), text: t.textContent,
                    left: r.left, right: r.right, top: r.top, bottom: r.bottom,
                    centre: (r.left + r.right) / 2 - track.left, inside: r.top >= track.top - 0.5 && r.bottom <= track.bottom + 0.5};
        });
        box.remove();
        return {ticks, width: track.width};
    }""")
    ticks = got["ticks"]
    born = sorted(f for t in ticks for f in map(int, t["filters"].split(",")))
    assert born == [f for f in range(16) if f not in (13, 14)]
    assert {t["step"] for t in ticks} == {12, 13, 14, 15, 16, 40, 41, 2900, 2950, 3000}
    assert next(t for t in ticks if t["step"] == 15)["text"] == "4 filters"
    assert next(t for t in ticks if t["step"] == 13)["text"] == "1,2"
    for t in ticks:  # at its step on the log axis from 1 to the newest step
        assert abs(t["centre"] - got["width"] * np.log10(1 + t["step"]) / np.log10(3001)) < 1.5
        assert t["inside"]
    for i, a in enumerate(ticks):
        for b in ticks[i + 1 :]:
            apart = (
                a["right"] <= b["left"] or b["right"] <= a["left"] or a["bottom"] <= b["top"] or b["bottom"] <= a["top"]
            )
            assert apart, (a, b)


def test_the_births_axis_reaches_the_step_on_screen_when_a_live_run_has_passed_the_births_answer(modules):
    """The births are asked of the server every few seconds; a live run's newer snapshot is drawn
    meanwhile. Its step's mark stays on the timeline (the axis reaches it), the ticks move to their
    steps on the longer axis, and the text names the axis it draws."""
    got = modules.evaluate("""async () => {
        const { FilterLayerView } = await import('/static/js/filters.js');
        const box = document.createElement('div');
        box.style.width = '420px';
        document.body.prepend(box);
        const weight = Array.from({length: 4}, (_, f) => [[[f, 0, 0], [0, 1, 0], [0, 0, -f]]]);
        const layer = {index: 0, label: 'conv1', type: 'conv', shape: [4, 1, 3, 3], weight, symmetry: 0.1, detectors: []};
        const births = [{filter: 0, birth_step: 20}, {filter: 1, birth_step: null}, {filter: 2, birth_step: 60},
                        {filter: 3, birth_step: null}];
        const view = new FilterLayerView(box, layer);
        const shown = [];
        const tracks = [];
        for (const step of [100, 110, 120, 100]) {  // births known to step 100; the live view reaches 120
            view.birthInfo = {last: 100, step};
            view.update(layer, {births, step});
            tracks.push(box.querySelector('.birth-track'));
            const track = box.querySelector('.birth-track').getBoundingClientRect();
            const now = box.querySelector('.birth-now').getBoundingClientRect();
            const tick = box.querySelector('.birth-tick[data-step="60"]').getBoundingClientRect();
            shown.push({step, width: track.width, now: (now.left + now.right) / 2 - track.left,
                        tick: (tick.left + tick.right) / 2 - track.left,
                        text: box.querySelector('.birth-text').textContent});
        }
        box.remove();
        // past the births' answer the axis ends at a round step: steps 110 and 120 share it, and the
        // ticks are not laid out (measured) again for the second
        return {shown, sameAxis: tracks[1] === tracks[2], newAxis: tracks[0] !== tracks[1]};
    }""")
    assert got["sameAxis"] and got["newAxis"]
    for shown in got["shown"]:
        end = 120 if shown["step"] > 100 else 100
        assert abs(shown["now"] - shown["width"] * np.log10(1 + shown["step"]) / np.log10(1 + end)) < 1.5
        assert 0 <= shown["now"] <= shown["width"] + 0.5
        assert abs(shown["tick"] - shown["width"] * np.log10(61) / np.log10(1 + end)) < 1.5
        assert shown["text"] == f"births (log steps 1–{end}): 2 of 4 filters"


def test_the_step_through_replays_layers_as_the_normalised_spec_states_them(modules):
    """The layers between two convs are replayed from the run's normalised spec (GET /api/runs/{id}
    model_spec): the leaky slope and the pool size it states, no default of the page's own; a spec
    that lacks a conv's kernel is not normalised and is refused rather than guessed."""
    rng = np.random.default_rng(4)
    maps = rng.normal(size=(2, 6, 6)).round(4)
    got = modules.evaluate(
        """async (maps) => {
        const { convLayers } = await import('/static/js/state.js');
        const { layerInput } = await import('/static/js/stepthrough.js');
        const conv = (filters, kernel, padding) => ({type: 'conv', filters, kernel, stride: 1, padding, init: null, bias_init: null});
        const spec = {input: [1, 6, 6], layers: [conv(2, [3, 3], 1), {type: 'leaky_relu', slope: 0.25},
                      {type: 'maxpool', size: [2, 3], stride: null}, conv(1, 1, 0)]};
        const snapshot = {probes: [[maps[0]]], layers: [{index: 0, feature_maps: [maps]}]};
        let refused = null;
        try { convLayers({input: [1, 6, 6], layers: [{type: 'conv', filters: 2}]}); } catch (e) { refused = e.message; }
        return {input: layerInput(spec, snapshot, 3, 0), layers: convLayers(spec), refused};
    }""",
        maps.tolist(),
    )
    leaky = np.where(maps > 0, maps, 0.25 * maps)
    pooled = leaky.reshape(2, 3, 2, 2, 3).max(axis=(2, 4))  # 2x3 windows side by side (stride null)
    assert np.allclose(np.asarray(got["input"]), pooled)
    assert [(c["index"], c["kernel"], c["inChannels"]) for c in got["layers"]] == [(0, [3, 3], 1), (3, [1, 1], 2)]
    assert got["refused"] and '"kernel" missing' in got["refused"]


def test_a_chart_off_screen_waits_and_is_drawn_when_it_comes_on_screen(modules):
    """A learner watching the filters does not pay for the charts scrolled below them: a chart off
    screen keeps its new points and is not redrawn; scrolled into view, it is drawn with all of them."""
    got = modules.evaluate("""async () => {
        const { LineChart } = await import('/static/js/charts.js');
        const frames = (n) => new Promise((done) => {
            const next = (k) => (k ? requestAnimationFrame(() => next(k - 1)) : done());
            next(n);
        });
        const wait = (ms) => new Promise((done) => setTimeout(done, ms));
        const far = document.createElement('div');
        far.style.marginTop = '6000px';
        const div = document.createElement('div');
        div.style.width = '300px'; div.style.height = '200px';
        far.append(div);
        document.body.append(far);
        const chart = new LineChart(div, {title: 'far below'});
        await frames(3);                              // the observer's first answer: off screen
        for (let step = 1; step <= 5; step += 1) chart.addDataPoint('train', step, 1 / step);
        chart.setStepSpan([0, 10]);
        await wait(1600);                             // past a live round and a layout round
        const off = {drawn: div.data !== undefined, count: chart.pointCount('train')};
        div.scrollIntoView();
        const deadline = performance.now() + 10000;
        while (chart.pointCount('train') < 5 && performance.now() < deadline) await wait(50);
        const on = {drawn: div.data !== undefined, count: chart.pointCount('train'), x: div.data?.[0]?.x};
        far.remove();
        window.scrollTo(0, 0);
        return {off, on};
    }""")
    assert got["off"] == {"drawn": False, "count": 0}
    assert got["on"]["drawn"] and got["on"]["count"] == 5 and got["on"]["x"] == [1, 2, 3, 4, 5]
