"""The page in a real browser against a real server: a learner starts a run,
watches the filters move, scrubs the history, steps through a convolution,
and shares the configuration by link."""

import math
import os
import re
import shutil
import time

import numpy as np
import pytest
from conftest import ARTIFACTS, REPO_ROOT, open_page, whole_run_view_on_screen

from engine.analysis import SERVED_DIGITS, rounding_decimals
from tests.engine.test_fast_vs_core import IDENTICAL_FILTERS_TOLERANCE

SMALL_RUN = {
    "model": "small",
    "init": "glorot_uniform",
    "dataset": "shapes",
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 32,
    "steps": 120,
    "seed": 1,
    "snapshot_every": 10,
}
TERMINAL = {"completed", "stopped", "diverged", "failed", "interrupted"}


def wait_until_finished(api, run_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/api/runs/{run_id}").json()
        if run["status"] in TERMINAL:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not finish within {timeout} s")


@pytest.fixture(scope="module")
def trained_run(api):
    """A small finished run (12 snapshots) for the history and step-through tests."""
    response = api.post("/api/runs", json=SMALL_RUN)
    assert response.status_code == 201, response.text
    run = wait_until_finished(api, response.json()["id"])
    assert run["status"] == "completed", run
    return run


def goto(page, url):
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")


def drawn(page):
    return page.evaluate("window.__kernelscope.drawn")


def wait_drawn(page, condition, timeout=120_000):
    """Wait until the filters on screen satisfy a JS condition on `d` (the drawn record)."""
    page.wait_for_function(
        f"(() => {{ const d = window.__kernelscope.drawn; return d !== null && ({condition}); }})()", timeout=timeout
    )
    return drawn(page)


DRAWN_AND_IMAGES = """() => [window.__kernelscope.drawn,
    [...document.querySelectorAll('.layer-panel[data-layer="0"] canvas.kernel')].map(c => c.toDataURL())]"""


def kernel_images(page, layer):
    return page.eval_on_selector_all(
        f'.layer-panel[data-layer="{layer}"] canvas.kernel', "cs => cs.map(c => c.toDataURL())"
    )


def kernel_pixel(shape, c, i, j):
    """(x, y) on a filter's canvas of weight (c, i, j), for a layer of weights shape (O, C, kh, kw):
    the filter's input channels are drawn as a table of kernels, cols = ceil(sqrt(2 C)) to a row."""
    kh, kw = shape[2], shape[3]
    cols = max(1, min(shape[1], math.ceil(math.sqrt(2 * shape[1]))))
    return (c % cols) * (kw + 1) + j, (c // cols) * (kh + 1) + i


def loss_points(page):
    return page.evaluate("window.__kernelscope.charts.loss.pointCount('train')")


def run_spec(api, run):
    """The model spec of a run: its own, or its preset's from GET /api/presets."""
    model = run["config"]["model"]
    if isinstance(model, dict):
        return model
    presets = api.get("/api/presets").json()
    if isinstance(presets, dict) and "presets" in presets:
        presets = presets["presets"]
    if isinstance(presets, list):
        presets = {p["name"]: p for p in presets}
    entry = presets[model]
    return entry.get("spec", entry)


def conv_pixel(x, w, b, stride, padding, y0, x0):
    """One output pixel of PyTorch-style conv2d (cross-correlation) with numpy."""
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    kh, kw = w.shape[1:]
    patch = xp[:, y0 * stride : y0 * stride + kh, x0 * stride : x0 * stride + kw]
    return float((patch * w).sum()), float((patch * w).sum() + b)


# ---------------------------------------------------------------------------


def test_start_run_from_page_filters_move_labels_appear_loss_grows(page, server, api):
    goto(page, f"{server}/#preset=demo&steps=800&every=10&bs=32")
    page.select_option("#f-init", "glorot_uniform")
    page.click("#btn-start")
    first = wait_drawn(page, "true")
    # the drawn record and the canvases read in one go: the run draws new frames meanwhile
    first, first_images = page.evaluate(DRAWN_AND_IMAGES)
    assert first_images, "no filter canvases were drawn for conv layer 0"
    run_id = page.evaluate("window.__kernelscope.state.view.run")
    assert f"run={run_id}" in page.evaluate("location.hash")
    assert api.get(f"/api/runs/{run_id}").json()["config"]["init"] in ("glorot_uniform", {"name": "glorot_uniform"})

    points_before = loss_points(page)
    # 100 steps on, or the last step when the run got that close to its end before the first frame
    wait_drawn(page, f"d.step >= Math.min({first['step'] + 100}, 800)")
    later, later_images = page.evaluate(DRAWN_AND_IMAGES)
    assert later["step"] > first["step"], (first["step"], later["step"])
    assert later["layers"]["0"] != first["layers"]["0"], "the drawn weights did not change"
    assert sum(a != b for a, b in zip(first_images, later_images)) >= len(first_images) // 2, (
        "most filter canvases should look different after 100 steps"
    )

    # the run list is polled every few seconds, but the open run's line keeps up with the stream
    page.wait_for_selector("#run-list li.current .run-progress")
    for _ in range(3):
        listed, header = (
            page.evaluate("""() => [document.querySelector('#run-list li.current .run-progress').textContent,
                                                document.getElementById('progress-text').textContent.replace(/ /g, '')]""")
        )
        assert listed == header
        page.wait_for_timeout(400)

    labels = page.eval_on_selector_all(
        '.layer-panel[data-layer="0"] .detector-label', "ls => ls.map(l => l.textContent)"
    )
    # a detector and its score ("?" below chance), or what a filter is when it is no detector
    label_pattern = r"[a-z_ ]+\?? \d\.\d\d|brightness · \d+% mean|dead"
    assert len(labels) == 8 and all(re.fullmatch(label_pattern, text) for text in labels), labels
    page.wait_for_function(f"window.__kernelscope.charts.loss.pointCount('train') > {points_before + 50}")

    # let the run finish, then keep a picture of the live view
    page.wait_for_selector("#run-badge.status-completed", timeout=240_000)
    page.wait_for_function("document.getElementById('progress-fill').dataset.fraction === '1'")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "live-view.png"))
    # the maps lie below the fold at 1280x800 and are fetched once they come on screen (run-view.js):
    # scrolled to, they catch up with the filters' last snapshot
    last = api.get(f"/api/runs/{run_id}/snapshots").json()["steps"][-1]
    page.eval_on_selector(".fmaps-panel", "p => p.scrollIntoView()")
    page.wait_for_function(
        f"window.__kernelscope.drawn?.step === {last} && window.__kernelscope.features?.step === {last}"
    )
    # the whole page, with a convolution step-through open, for the README
    page.locator('canvas.fmap[data-layer="0"][data-filter="0"]').click(position={"x": 40, "y": 40})
    page.wait_for_selector("#st-equation")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "live-view-full.png"), full_page=True)
    readme_picture = REPO_ROOT / "docs" / "screenshot.png"
    if os.environ.get("KERNELSCOPE_UPDATE_SCREENSHOT") == "1" or not readme_picture.exists():
        shutil.copyfile(ARTIFACTS / "live-view-full.png", readme_picture)


def test_history_slider_step_zero_equals_rest_snapshot(page, server, api, trained_run):
    run_id = trained_run["id"]
    steps = api.get(f"/api/runs/{run_id}/snapshots").json()
    steps = steps["steps"] if isinstance(steps, dict) else steps
    whole_run_view_on_screen(page)  # the maps of the slider's step are fetched while on screen
    goto(page, f"{server}/#run={run_id}")
    last = wait_drawn(page, f"d.step === {max(steps)}")
    assert page.eval_on_selector("#history-slider", "s => Number(s.max)") == len(steps) - 1

    page.focus("#history-slider")
    page.keyboard.press("Home")
    at_zero = wait_drawn(page, "d.step === 0")
    rest = api.get(f"/api/runs/{run_id}/snapshots/0").json()
    for layer in rest["layers"]:
        assert at_zero["layers"][str(layer["index"])] == layer["weight"], f"layer {layer['index']} differs from REST"
    assert "step 0" in page.text_content("#history-step")
    page.wait_for_function("window.__kernelscope.features && window.__kernelscope.features.step === 0")

    # the largest |weight| of layer 0 is drawn in the colormap's end colour (per-layer scaling)
    weight = np.array(rest["layers"][0]["weight"])
    f, c, i, j = np.unravel_index(np.abs(weight).argmax(), weight.shape)
    x, y = kernel_pixel(weight.shape, c, i, j)
    pixel = page.eval_on_selector(
        f'.layer-panel[data-layer="{rest["layers"][0]["index"]}"] .filter-card[data-filter="{f}"] canvas.kernel',
        f"c => Array.from(c.getContext('2d').getImageData({x}, {y}, 1, 1).data.slice(0, 3))",
    )
    assert pixel == ([178, 24, 43] if weight[f, c, i, j] > 0 else [33, 102, 172])

    # per-filter scaling: every filter's own largest |weight| reaches the end colour
    page.click('[data-scaling="filter"]')
    assert "scale=filter" in page.evaluate("location.hash")
    for f in range(weight.shape[0]):
        c, i, j = np.unravel_index(np.abs(weight[f]).argmax(), weight[f].shape)
        x, y = kernel_pixel(weight.shape, c, i, j)
        pixel = page.eval_on_selector(
            f'.layer-panel[data-layer="{rest["layers"][0]["index"]}"] .filter-card[data-filter="{f}"] canvas.kernel',
            f"c => Array.from(c.getContext('2d').getImageData({x}, {y}, 1, 1).data.slice(0, 3))",
        )
        assert pixel == ([178, 24, 43] if weight[f, c, i, j] > 0 else [33, 102, 172]), f"filter {f}"
    page.click('[data-scaling="layer"]')

    page.focus("#history-slider")
    page.keyboard.press("End")
    wait_drawn(page, f"d.step === {max(steps)}")
    assert last["layers"] == drawn(page)["layers"]

    # replay walks forward through the stored snapshots from the start
    page.keyboard.press("Home")
    wait_drawn(page, "d.step === 0")
    page.click("#btn-play")
    wait_drawn(page, f"d.step >= {steps[3]}")
    page.click("#btn-live")
    wait_drawn(page, f"d.step === {max(steps)}")
    assert page.eval_on_selector("#btn-live", "b => b.classList.contains('active')")


def test_constant_init_gives_identical_filters_and_symmetry_one(page, server):
    goto(page, f"{server}/#preset=small&steps=60&every=10&bs=16")
    page.select_option("#f-init", "constant")
    page.click("#btn-start")
    d = wait_drawn(page, "d.step >= 30")
    for index, weight in d["layers"].items():
        # the engine's promise (tests/engine/test_fast_vs_core.py): identical filters stay identical
        # to IDENTICAL_FILTERS_TOLERANCE of the layer's largest weight (BLAS may round identical rows
        # of an edge tile apart), and the page gets them rounded to SERVED_DIGITS significant digits of that
        # weight (engine.analysis.rounded): a difference below the served unit may round to one unit
        weight = np.array(weight)
        served_unit = 10.0 ** -rounding_decimals(weight, np.isfinite(weight), SERVED_DIGITS)
        spread = np.abs(weight - weight[0]).max()
        allowed = IDENTICAL_FILTERS_TOLERANCE * np.abs(weight).max() + served_unit
        assert spread <= allowed, f"filters of conv layer {index} differ by {spread}"
        meter = page.locator(f'.layer-panel[data-layer="{index}"] .meter')
        assert float(meter.get_attribute("data-symmetry")) == pytest.approx(1.0, abs=1e-6)
        assert meter.locator(".meter-value").text_content() == "1.000"
        assert "symmetry never broken" in meter.locator(".meter-note").text_content()
    largest_pixel_difference = page.eval_on_selector_all(
        '.layer-panel[data-layer="0"] canvas.kernel',
        """cs => {
            const pixels = cs.map(c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
            return Math.max(...pixels.map(p => p.length !== pixels[0].length ? 255
                : Math.max(...p.map((v, i) => Math.abs(v - pixels[0][i])))));
        }""",
    )
    assert largest_pixel_difference <= 1, "constant-init filters should be drawn identically"
    page.wait_for_selector("#run-badge.status-completed", timeout=240_000)


def test_click_feature_map_pixel_steps_through_the_right_sum(page, server, api, trained_run):
    run_id = trained_run["id"]
    whole_run_view_on_screen(page)
    goto(page, f"{server}/#run={run_id}")
    page.wait_for_function("window.__kernelscope.features !== null")
    spec = run_spec(api, trained_run)
    convs = [i for i, layer in enumerate(spec["layers"]) if layer["type"] == "conv"]

    canvas = page.locator(f'canvas.fmap[data-layer="{convs[0]}"][data-filter="2"]')
    box = canvas.bounding_box()
    canvas.click(position={"x": box["width"] * 0.45, "y": box["height"] * 0.55})
    page.wait_for_selector("#st-equation")
    shown = page.evaluate("window.__kernelscope.stepThrough")
    snapshot = api.get(f"/api/runs/{run_id}/snapshots/{shown['step']}").json()
    layer = next(entry for entry in snapshot["layers"] if entry["index"] == convs[0])
    conv = spec["layers"][convs[0]]
    x = np.array(snapshot["probes"][shown["probe"]])
    w = np.array(layer["weight"][shown["filter"]])
    total, value = conv_pixel(
        x, w, layer["bias"][shown["filter"]], conv.get("stride", 1), conv.get("padding", 0), shown["y"], shown["x"]
    )
    assert shown["filter"] == 2 and shown["layer"] == convs[0]
    assert shown["sum"] == pytest.approx(total, rel=1e-9, abs=1e-12)
    assert shown["value"] == pytest.approx(value, rel=1e-9, abs=1e-12)
    stored = np.array(layer["feature_maps"][shown["probe"]][shown["filter"]])
    assert abs(stored[shown["y"], shown["x"]] - value) <= 2e-3 * np.abs(stored).max()
    assert float(page.get_attribute("#st-equation", "data-value")) == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert page.evaluate(f"({value!r}).toPrecision(5)") in page.text_content("#st-equation")
    # the stored value is shown with the digits the snapshot has, not padded to look exact
    held = page.text_content("#st-equation .st-term.stored b")
    in_snapshot = float(stored[shown["y"], shown["x"]])
    assert held == page.evaluate("v => String(v)", in_snapshot)

    # the next position slides the window one pixel to the right
    page.click("#st-next")
    moved = page.evaluate("window.__kernelscope.stepThrough")
    assert (moved["y"], moved["x"]) == (
        (shown["y"], shown["x"] + 1) if shown["x"] + 1 < stored.shape[1] else (shown["y"] + 1, 0)
    )

    # a deeper layer reads layer 0's maps after ReLU and max-pooling
    page.locator(f'canvas.fmap[data-layer="{convs[1]}"][data-filter="0"]').click(position={"x": 5, "y": 5})
    deep = page.evaluate("window.__kernelscope.stepThrough")
    assert deep["layer"] == convs[1]
    maps = np.array(layer["feature_maps"][deep["probe"]])
    for kind in spec["layers"][convs[0] + 1 : convs[1]]:
        if kind["type"] == "relu":
            maps = np.maximum(maps, 0)
        elif kind["type"] == "maxpool":
            s = kind["size"]
            c, h, w_ = maps.shape
            maps = maps[:, : h // s * s, : w_ // s * s].reshape(c, h // s, s, w_ // s, s).max(axis=(2, 4))
    deep_layer = next(entry for entry in snapshot["layers"] if entry["index"] == convs[1])
    deep_conv = spec["layers"][convs[1]]
    total, _ = conv_pixel(
        maps,
        np.array(deep_layer["weight"][0]),
        0.0,
        deep_conv.get("stride", 1),
        deep_conv.get("padding", 0),
        deep["y"],
        deep["x"],
    )
    assert deep["sum"] == pytest.approx(total, rel=1e-9, abs=1e-12)


def test_reload_with_url_hash_restores_the_configuration(page, server, browser):
    goto(page, f"{server}/")
    page.select_option("#f-preset", "small")
    page.select_option("#f-init", "normal")
    page.fill("#f-init-param input", "0.02")
    page.locator("#f-init-param input").dispatch_event("change")
    row = page.locator('.init-layer[data-layer="3"]')
    row.locator("select").first.select_option("kernel")
    row.locator("select[data-param=kernels]").select_option("x")
    for selector, value in (
        ("#f-lr", "0.03"),
        ("#f-wd", "0.002"),
        ("#f-batch", "32"),
        ("#f-steps", "123"),
        ("#f-seed", "7"),
    ):
        page.fill(selector, value)
        page.locator(selector).dispatch_event("change")
    page.select_option("#f-optimizer", "adam")  # edited fields stay as the learner set them
    config = page.evaluate("window.__kernelscope.state.config")
    assert config["init"] == {"name": "normal", "std": 0.02}
    assert config["layerInits"] == {"3": {"name": "kernel", "kernels": "x"}}
    assert (
        config["lr"],
        config["weightDecay"],
        config["batchSize"],
        config["steps"],
        config["seed"],
        config["optimizer"],
    ) == (0.03, 0.002, 32, 123, 7, "adam")
    # the law and its figure for each layer's fans, as the engine states them: N(0, std²) → σ = 0.02 on layer 0
    page.wait_for_selector("#init-table[data-described=true]")
    assert "σ = 0.02" in page.text_content('.init-layer[data-layer="0"] .law')
    url = page.url

    again, problems = open_page(browser)
    goto(again, url)
    assert again.evaluate("window.__kernelscope.state.config") == config
    assert again.input_value("#f-preset") == "small"
    assert again.input_value("#f-init") == "normal"
    assert again.input_value("#f-init-param input") == "0.02"
    assert again.input_value("#f-lr") == "0.03"
    assert again.input_value("#f-wd") == "0.002"
    assert again.input_value("#f-steps") == "123"
    assert again.locator('.init-layer[data-layer="3"] select[data-param=kernels]').input_value() == "x"
    problems.close_and_check(again)


def test_the_form_starts_as_the_default_run_and_optimizer_fields_follow_the_choice(page, server, api):
    """Unchanged, the form is the run `{}` starts (the README's demo); switching to Adam
    or to the deep preset brings their own learning rate unless the learner set one."""
    goto(page, f"{server}/")
    defaults = api.get("/api/defaults").json()

    def form():
        return {
            "optimizer": page.input_value("#f-optimizer"),
            **{key: float(page.input_value(f"#f-{key}")) for key in ("lr", "momentum", "wd", "steps")},
        }

    sgd, adam = defaults["optimizers"]["sgd"], defaults["optimizers"]["adam"]
    assert form() == {
        "optimizer": "sgd",
        "lr": sgd["lr"],
        "momentum": sgd["momentum"],
        "wd": sgd["weight_decay"],
        "steps": defaults["run"]["steps"],
    }
    body = page.evaluate("""async () => {
        const s = await import('/static/js/state.js');
        const state = window.__kernelscope.state;
        return s.toRunRequest(state.config, state.presets);
    }""")
    started = api.post("/api/runs", json={**body, "steps": 1}).json()["config"]
    assert started == {**defaults["run"], "steps": 1}

    page.select_option("#f-optimizer", "adam")
    assert (form()["lr"], form()["wd"]) == (adam["lr"], adam["weight_decay"])
    page.select_option("#f-optimizer", "sgd")
    assert form()["lr"] == sgd["lr"]
    deep = {p["name"]: p["optimizer"] for p in api.get("/api/presets").json()["presets"]}["deep"]
    page.select_option("#f-preset", "deep")
    assert (form()["optimizer"], form()["lr"]) == (deep["name"], deep["lr"])
    page.select_option("#f-preset", "demo")
    page.fill("#f-lr", "0.07")
    page.locator("#f-lr").dispatch_event("change")
    page.select_option("#f-optimizer", "adam")
    assert form()["lr"] == 0.07


def test_a_stored_run_config_put_into_the_form_starts_the_same_run(page, server, api):
    """Opening a run fills the form with its config (applyRunConfig); started again from
    there, the server must store the same config."""
    goto(page, f"{server}/")
    stored = api.post(
        "/api/runs",
        json={
            "model": "small",
            "init": {"name": "normal", "std": 0.02},
            "dataset": "marks",
            "batch_size": 16,
            "optimizer": {"name": "adam", "lr": 0.003, "weight_decay": 0.001},
            "seed": 5,
            "steps": 1,
            "snapshot_every": 7,
        },
    ).json()["config"]
    body = page.evaluate(
        """async (stored) => {
        const s = await import('/static/js/state.js');
        const config = s.applyRunConfig(s.cloneConfig(s.BLANK_CONFIG), stored);
        return s.toRunRequest(config, window.__kernelscope.state.presets);
    }""",
        stored,
    )
    assert api.post("/api/runs", json=body).json()["config"] == stored


def test_he_figures_follow_each_layers_fans(page, server):
    goto(page, f"{server}/#preset=small")
    page.select_option("#f-init", "he_normal")
    page.wait_for_selector("#init-table[data-described=true]")
    for row in page.locator(".init-layer").all():
        fan_in = int(re.search(r"fan_in (\d+)", row.text_content()).group(1))
        assert f"σ = {math.sqrt(2 / fan_in):.3g}" in row.locator(".law").text_content()


@pytest.mark.parametrize("viewport", [(1280, 800), (420, 900)])
def test_run_list_opens_a_run_and_the_page_fits_the_window(browser, server, trained_run, viewport):
    page, problems = open_page(browser, viewport)
    goto(page, f"{server}/")
    item = page.locator(f'#run-list li[data-run="{trained_run["id"]}"]')
    assert "completed" in item.text_content()
    item.locator("button").click()
    wait_drawn(page, "d.step > 0")
    assert page.evaluate("window.__kernelscope.state.view.run") == trained_run["id"]
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), "the page scrolls sideways"
    problems.close_and_check(page)


def test_the_dataset_form_states_the_path_rule_the_api_serves(page, server, api):
    """The rule for dataset.path has one home, /api/datasets; the form shows it as served and
    offers only the datasets the server lists (those that can load here)."""
    from pathlib import Path

    goto(page, f"{server}/")
    served = api.get("/api/datasets").json()
    assert served["path_rule"] and page.text_content("#f-dataset-rule") == served["path_rule"]
    # shown only beside a dataset that reads files from a path: a generated one has none
    assert page.input_value("#f-dataset") == "shapes" and not page.is_visible("#f-dataset-rule")
    offered = page.eval_on_selector_all("#f-dataset option", "options => options.map(o => o.value)")
    assert set(offered) <= {d["name"] for d in served["datasets"]}
    scripts = Path(__file__).resolve().parents[2] / "static" / "js"
    assert not [p.name for p in scripts.glob("*.js") if "relative to the data directory" in p.read_text()]


def test_a_dataset_that_reads_files_gets_its_folder_field_and_the_servers_word_on_it(browser, server, live_server, api):
    """A dataset whose served params take a path (GET /api/datasets) gets a folder field; without a
    folder the form asks for one and sends no describe request (it must fail); a folder the server
    refuses (describe, then start) is refused beside the field in the server's words; a folder it
    takes brings the figures back; a generated dataset sends no path."""
    import json

    page, problems = open_page(browser)
    described = []
    page.on(
        "request",
        lambda r: (
            r.url.endswith("/api/inits/describe") and r.method == "POST" and described.append(json.loads(r.post_data))
        ),
    )
    try:
        goto(page, f"{server}/")
        page.wait_for_selector("#init-table[data-described=true]")
        assert not page.is_visible("#f-dataset-path")
        served = {d["name"]: d for d in api.get("/api/datasets").json()["datasets"]}
        assert "path" in served["image_folder"]["params"] and "path" not in served["shapes"]["params"]

        described.clear()
        page.select_option("#f-dataset", "image_folder")
        page.wait_for_selector("#f-dataset-path", state="visible")
        assert page.is_visible("#f-dataset-rule")
        assert page.text_content("#dataset-path-error") == "dataset.path: required for this dataset"
        page.wait_for_selector("#init-table[data-described=waiting]")
        assert "dataset folder" in page.text_content("#init-table .law")
        assert page.text_content("#form-error") == "dataset folder: required"
        page.wait_for_timeout(500)
        assert described == [], described  # no request that must fail

        # a folder that does not exist: the server's 422 beside the field
        page.fill("#f-dataset-path", "nowhere")
        page.locator("#f-dataset-path").dispatch_event("change")
        expected = api.post("/api/inits/describe", json={"dataset": {"name": "image_folder", "path": "nowhere"}})
        assert expected.status_code == 422
        page.wait_for_function(
            f"document.getElementById('dataset-path-error').textContent === {json.dumps(expected.json()['message'])}"
        )
        assert described[-1]["dataset"] == {"name": "image_folder", "path": "nowhere"}
        assert page.get_attribute("#f-dataset-path", "aria-invalid") == "true"
        assert "dpath=nowhere" in page.evaluate("location.hash")

        # a folder that exists: described again, the figures come back
        (live_server.data_dir / "datasets" / "empty-folder").mkdir(parents=True, exist_ok=True)
        page.fill("#f-dataset-path", "empty-folder")
        page.locator("#f-dataset-path").dispatch_event("change")
        page.wait_for_selector("#init-table[data-described=true]")
        assert page.text_content("#dataset-path-error") == ""
        assert "fan_in" in page.text_content("#init-table .law")
        # ... but it holds no images: starting is refused at dataset.path, said beside the field too
        page.fill("#f-steps", "5")
        page.locator("#f-steps").dispatch_event("change")
        page.click("#btn-start")
        page.wait_for_function("document.getElementById('dataset-path-error').textContent !== ''")
        refusal = page.text_content("#dataset-path-error")
        assert refusal.startswith("dataset.path:") and page.text_content("#form-error") == refusal
        page.screenshot(path=str(ARTIFACTS / "dataset-folder.png"))

        # a generated dataset: no field, no path sent
        page.select_option("#f-dataset", "shapes")
        page.wait_for_selector("#f-dataset-path", state="hidden")
        page.wait_for_selector("#init-table[data-described=true]")
        assert described[-1]["dataset"] == "shapes"
        assert "dpath" not in page.evaluate("location.hash")
        sent = [d["dataset"] for d in described]
        assert all(isinstance(d, str) or d.get("path") for d in sent), sent
    finally:
        page.context.close()
    # the only problems are the two refusals this test asked for (and the console's note of each)
    refused = sorted(p for p in problems.items if p.startswith("HTTP "))
    assert refused == [f"HTTP 422: {server}/api/inits/describe", f"HTTP 422: {server}/api/runs"], problems.items
    others = [p for p in problems.items if not p.startswith("HTTP ")]
    assert all("status of 422" in p or "422" in p for p in others), problems.items
