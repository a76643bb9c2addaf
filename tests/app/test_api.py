"""The REST API through TestClient: every route, its answers and its error cases."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from tests.app.conftest import TINY, make_settings, wait_for


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """(client, run) for one tiny run trained to completion; shared by the read-only tests."""
    data_dir = tmp_path_factory.mktemp("api") / "data"
    with TestClient(create_app(make_settings(data_dir))) as client:
        response = client.post("/api/runs", json={**TINY, "name": "tiny"})
        assert response.status_code == 201, response.text
        run = wait_for(client, response.json()["id"], "completed")
        yield client, run


# ---------------------------------------------------------------- meta routes


def test_healthz_says_ok(done):
    client, _ = done
    assert client.get("/healthz").json()["status"] == "ok"


def test_inits_lists_every_law_of_the_design_card(done):
    client, _ = done
    body = client.get("/api/inits").json()
    inits = {entry["name"]: entry for entry in body["inits"]}
    for name in (
        "zeros",
        "constant",
        "normal",
        "uniform",
        "glorot_uniform",
        "glorot_normal",
        "he_normal",
        "he_uniform",
        "lecun_normal",
        "orthogonal",
        "kernel",
    ):
        assert name in inits
    assert inits["he_normal"]["law"] == "N(0, 2/fan_in)"
    assert inits["normal"]["params"] == {"std": 0.01}
    assert "xavier_uniform" in inits["glorot_uniform"]["aliases"]
    assert {"x", "sobel_x"} <= set(body["named_kernels"])


def test_datasets_and_presets(done):
    client, _ = done
    datasets = {d["name"]: d for d in client.get("/api/datasets").json()["datasets"]}
    assert "shapes" in datasets and "mnist" in datasets
    assert "X and plus detectors" in datasets["marks"]["description"]  # the page's way to the X filters
    presets = {p["name"]: p["spec"] for p in client.get("/api/presets").json()["presets"]}
    assert presets["demo"]["layers"][0]["type"] == "conv"


def test_defaults_are_what_a_run_that_names_nothing_trains_with(tmp_path):
    """The page fills its form from /api/defaults and /api/presets: a run started there
    unchanged must be the run `{}` (or `{"model": name}`) starts, optimizer included."""
    with TestClient(create_app(make_settings(tmp_path / "data"))) as client:
        defaults = client.get("/api/defaults").json()
        presets = {p["name"]: p for p in client.get("/api/presets").json()["presets"]}
        empty = client.post("/api/runs", json={"steps": 1}).json()["config"]
        assert empty == {**defaults["run"], "steps": 1}
        assert defaults["run"]["optimizer"] == presets["demo"]["optimizer"] == defaults["optimizers"]["sgd"]
        assert defaults["run"]["optimizer"]["lr"] == 0.02 and defaults["run"]["optimizer"]["weight_decay"] == 0.01
        assert defaults["optimizers"]["adam"]["lr"] == 0.001
        deep = client.post("/api/runs", json={"model": "deep", "steps": 1}).json()["config"]
        assert deep["optimizer"] == presets["deep"]["optimizer"] and deep["optimizer"]["name"] == "adam"
        adam = client.post("/api/runs", json={"optimizer": "adam", "steps": 1}).json()["config"]
        assert adam["optimizer"] == defaults["optimizers"]["adam"]


def test_openapi_documents_every_run_route(done):
    client, _ = done
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/pause",
        "/api/runs/{run_id}/resume",
        "/api/runs/{run_id}/stop",
        "/api/runs/{run_id}/metrics",
        "/api/runs/{run_id}/snapshots",
        "/api/runs/{run_id}/snapshots/{step}",
        "/api/runs/{run_id}/snapshots/{step}/filters.png",
        "/api/runs/{run_id}/events",
        "/healthz",
        "/api/inits",
        "/api/datasets",
        "/api/presets",
        "/api/defaults",
    ):
        assert path in paths, path
    assert client.get("/docs").status_code == 200


# ---------------------------------------------------------------- a finished run


def test_created_run_is_complete_and_listed(done):
    client, run = done
    assert run["status"] == "completed"
    assert run["step"] == TINY["steps"] == run["steps"]
    assert run["config"]["model"] == "small" and run["config"]["init"] == "he_normal"
    assert run["meta"] == {"name": "tiny"}
    assert run["metrics"]["step"] == TINY["steps"] and 0 <= run["metrics"]["acc"] <= 1
    assert "val_acc" in run["metrics"]
    assert run["latest_snapshot"] == TINY["steps"]
    listed = client.get("/api/runs").json()["runs"]
    assert [r["id"] for r in listed] == [run["id"]]


def test_a_run_states_its_normalised_model_so_clients_need_no_engine_defaults(done):
    """GET /api/runs/{id} serves the model the run trains with every default filled in (the page reads
    kernel sizes, strides, paddings, pool sizes and slopes there); the list stays lean."""
    from engine import PRESETS
    from engine.core.model import normalize_spec
    from engine.datasets import known_shape

    client, run = done
    spec = client.get(f"/api/runs/{run['id']}").json()["model_spec"]
    raw = PRESETS["small"]
    assert [layer["type"] for layer in spec["layers"]] == [layer["type"] for layer in raw["layers"]]
    shape, classes = known_shape(run["config"]["dataset"])
    assert spec["input"] == shape
    for layer in spec["layers"]:
        if layer["type"] == "conv":
            assert {"kernel", "stride", "padding", "init", "bias_init"} <= set(layer)
        if layer["type"] == "maxpool":
            assert {"size", "stride"} <= set(layer)
    assert spec["layers"][-1]["units"] == classes
    assert normalize_spec(spec)[0] == spec  # already normalised: normalising again changes nothing
    assert all(listed.get("model_spec") is None for listed in client.get("/api/runs").json()["runs"])


def test_metrics_have_every_step_and_validation_at_eval_steps(done):
    client, run = done
    points = client.get(f"/api/runs/{run['id']}/metrics").json()["points"]
    assert [p["step"] for p in points] == list(range(1, TINY["steps"] + 1))
    evaluated = [p["step"] for p in points if "val_loss" in p]
    assert evaluated == [15, 30]
    tail = client.get(f"/api/runs/{run['id']}/metrics", params={"since": 25, "limit": 3}).json()["points"]
    assert [p["step"] for p in tail] == [26, 27, 28]


def test_every_snapshot_is_kept_and_served(done):
    client, run = done
    from engine.trainer import snapshot_steps

    steps = client.get(f"/api/runs/{run['id']}/snapshots").json()["steps"]
    dense = run["config"]["snapshot_schedule"]["dense_steps"]
    assert steps == snapshot_steps(run["config"]) and steps[: dense + 1] == list(range(dense + 1))
    assert {0, 10, 20, 30} <= set(steps)
    snapshot = client.get(f"/api/runs/{run['id']}/snapshots/10").json()
    assert snapshot["step"] == 10
    conv = snapshot["layers"][0]
    assert conv["index"] == 0 and conv["shape"] == [8, 1, 3, 3]
    assert [layer["label"] for layer in snapshot["layers"]] == ["conv1", "conv2"]
    assert np.asarray(conv["weight"]).shape == (8, 1, 3, 3)
    assert len(conv["detectors"]) == 8
    assert np.asarray(conv["feature_maps"]).shape[1] == 8
    light = client.get(f"/api/runs/{run['id']}/snapshots/10", params={"feature_maps": 0}).json()
    assert all("feature_maps" not in layer for layer in light["layers"])
    assert light["layers"][0]["weight"] == conv["weight"]


def test_filters_png_of_a_wide_layer_is_drawn_smaller_never_larger_than_the_cap(done, monkeypatch):
    from app import limits as run_routes  # the cap lives in app/limits.py

    client, run = done
    url = f"/api/runs/{run['id']}/snapshots/0/filters.png"
    monkeypatch.setattr(run_routes, "MAX_IMAGE_PIXELS", 10_000)  # layer 3 at pixel 4 would be 460 x 68
    response = client.get(url, params={"layer": 3, "pixel": 4})
    assert response.status_code == 200
    pixel = int(response.headers["x-kernelscope-pixel"])
    width, height = Image.open(io.BytesIO(response.content)).size
    assert pixel < 4 and width * height <= 10_000
    assert (width, height) == (4 * (8 * 3 * pixel + 7 * 2) + 5 * 4, 4 * (3 * pixel) + 5 * 4)
    monkeypatch.setattr(run_routes, "MAX_IMAGE_PIXELS", 100)  # not even one pixel per weight fits
    refused = client.get(url, params={"layer": 3})
    assert refused.status_code == 422 and "layer: [16, 8, 3, 3] is too large to draw" in refused.text
    monkeypatch.undo()
    assert client.get(url, params={"layer": 3, "pixel": 4}).headers["x-kernelscope-pixel"] == "4"


def test_latest_snapshot_is_the_last_step(done):
    client, run = done
    latest = client.get(f"/api/runs/{run['id']}/snapshots/latest?feature_maps=0").json()
    assert latest["step"] == TINY["steps"]


def test_snapshots_change_as_training_moves_the_kernels(done):
    client, run = done
    first = np.asarray(client.get(f"/api/runs/{run['id']}/snapshots/0?feature_maps=0").json()["layers"][0]["weight"])
    last = np.asarray(client.get(f"/api/runs/{run['id']}/snapshots/30?feature_maps=0").json()["layers"][0]["weight"])
    assert not np.allclose(first, last)


def test_filters_png_is_a_grid_in_a_diverging_colormap(done):
    client, run = done
    response = client.get(f"/api/runs/{run['id']}/snapshots/0/filters.png", params={"layer": 3, "pixel": 4})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "RGB"
    # layer 3 has 16 filters of 8 input channels, 3x3: a 4x4 grid of blocks
    assert image.size == (4 * (8 * 3 * 4 + 7 * 2) + 5 * 4, 4 * (3 * 4) + 5 * 4)
    first_layer = client.get(f"/api/runs/{run['id']}/snapshots/0/filters.png").content
    assert Image.open(io.BytesIO(first_layer)).size != image.size  # default is the first conv layer
    # default scale = the layer's largest |weight|: that weight is drawn darkest red or blue
    colours = {tuple(c) for c in np.asarray(Image.open(io.BytesIO(first_layer))).reshape(-1, 3)}
    assert (103, 0, 31) in colours or (5, 48, 97) in colours
    # a huge scale washes every weight out to near white (the colour of zero)
    washed = client.get(f"/api/runs/{run['id']}/snapshots/0/filters.png", params={"scale": 1000, "pixel": 1}).content
    pixels = np.asarray(Image.open(io.BytesIO(washed)))
    inside_first_kernel = pixels[4:7, 4:7].reshape(-1, 3)
    assert inside_first_kernel.min() >= 240


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
        ({"batch_size": 100000}, "batch_size", "less than or equal to 512"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),  # one rule: a run makes at least one step
        ({"seed": "abc"}, "seed", "integer"),
        ({"snapshot_every": 0}, "snapshot_every", "greater than or equal to 1"),
        ({"steps": 1_000_000, "snapshot_every": 1}, "snapshot_every", "at most 20000 snapshots"),
        ({"colour": "red"}, "colour", "not a field here"),
        ({"lr": 0.1}, "lr", 'not a field here (an optimizer setting goes inside "optimizer"'),
        ({"model": "nope"}, "model", "unknown preset"),
        ({"model": {"layers": [{"type": "wobble"}]}}, "model", "wobble"),
        ({"init": "bogus"}, "init", "unknown init"),
        ({"init": {"name": "normal", "std": -1}}, "init", ">= 0"),
        ({"dataset": "imagenet"}, "dataset.name", "unknown dataset"),
        ({"dataset": {"name": "mnist"}}, "dataset.path", "required"),
        ({"optimizer": {"name": "sgd", "lr": -1}}, "optimizer", "lr"),
    ],
)
def test_bad_run_config_is_422_naming_the_field(done, body, field, words):
    client, _ = done
    response = client.post("/api/runs", json=body)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["message"].startswith(field), answer
    assert words in answer["message"]
    assert isinstance(answer["detail"], list) and answer["detail"][0]["loc"][0] == "body"


def test_body_that_is_not_json_is_422(done):
    client, _ = done
    response = client.post("/api/runs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "message" in response.json()


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/{missing}",
        "/api/runs/{missing}/metrics",
        "/api/runs/{missing}/snapshots",
        "/api/runs/{missing}/snapshots/0",
        "/api/runs/{missing}/snapshots/latest/filters.png",
        "/api/runs/{missing}/events",
    ],
)
def test_unknown_run_is_404_naming_it(done, path):
    client, _ = done
    response = client.get(path.format(missing="abc123"))
    assert response.status_code == 404
    assert "abc123" in response.json()["message"]


@pytest.mark.parametrize("method, suffix", [("post", "/pause"), ("post", "/resume"), ("post", "/stop"), ("delete", "")])
def test_control_of_unknown_run_is_404(done, method, suffix):
    client, _ = done
    response = getattr(client, method)(f"/api/runs/abc123{suffix}")
    assert response.status_code == 404


def test_malformed_run_id_is_422(done):
    client, _ = done
    response = client.get("/api/runs/" + "x" * 65)
    assert response.status_code == 422 and "run_id" in response.json()["message"]


def test_snapshot_errors(done):
    client, run = done
    base = f"/api/runs/{run['id']}/snapshots"
    stored = client.get(base).json()["steps"]
    unstored = next(step for step in range(run["step"]) if step not in stored)
    assert client.get(f"{base}/{unstored}").status_code == 404
    bad_step = client.get(f"{base}/seven")
    assert bad_step.status_code == 422 and bad_step.json()["message"].startswith("step")
    assert client.get(f"{base}/-1").status_code == 422
    not_conv = client.get(f"{base}/0/filters.png", params={"layer": 1})
    assert not_conv.status_code == 422 and "conv layers are [0, 3]" in not_conv.json()["message"]
    bad_scale = client.get(f"{base}/0/filters.png", params={"scale": 0})
    assert bad_scale.status_code == 422 and bad_scale.json()["message"].startswith("scale")
    bad_flag = client.get(f"{base}/0", params={"feature_maps": "maybe"})
    assert bad_flag.status_code == 422 and bad_flag.json()["message"].startswith("feature_maps")
    assert client.get(f"/api/runs/{run['id']}/metrics", params={"limit": 0}).status_code == 422


@pytest.mark.parametrize("action", ["pause", "resume", "stop"])
def test_control_of_a_completed_run_is_409(done, action):
    client, run = done
    response = client.post(f"/api/runs/{run['id']}/{action}")
    assert response.status_code == 409
    assert "completed" in response.json()["message"]


# ---------------------------------------------------------------- tokens


def test_token_guards_every_state_changing_route(data_dir):
    with TestClient(create_app(make_settings(data_dir, token="s3cret"))) as client:
        assert client.post("/api/runs", json={"colour": 1}).status_code == 401
        assert client.post("/api/runs/abc/pause").status_code == 401
        assert client.delete("/api/runs/abc").status_code == 401
        wrong = client.post("/api/runs", json=TINY, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "authorization" in wrong.json()["message"]
        assert client.get("/api/runs").status_code == 200  # reading needs no token
        made = client.post("/api/runs", json=TINY, headers={"Authorization": "Bearer s3cret"})
        assert made.status_code == 201
        wait_for(client, made.json()["id"], "completed")


def test_no_cors_headers_by_default(done):
    client, _ = done
    response = client.get("/api/runs", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers


def test_run_records_are_json_files_and_rows(done):
    client, run = done
    folder = client.app.state.store.run_dir(run["id"])
    assert (folder / "checkpoint.npz").is_file()
    with np.load(folder / "snapshots" / "0.snapshot.npz") as stored:  # one compact file a step (app/storage.py)
        assert json.loads(stored["snapshot.json"].tobytes())["step"] == 0
    assert not list(folder.rglob("*.tmp"))
