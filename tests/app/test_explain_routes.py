"""Explain routes: one filter's explanation (JSON and PNGs), the layer summary, and bad indexes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import limits
from app.main import create_app
from app.routes import explain as explain_routes
from app.store import DamagedFile, LocalStorage, Store, dumps_json, monitor_path, read_monitor, write_monitor
from engine import explain
from engine.datasets import load_dataset
from engine.trainer import resolve_model_spec
from tests.app.conftest import TINY, make_settings, wait_for

RUN = {**TINY, "model": "demo", "steps": 30, "snapshot_every": 10}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A client and one completed short run of the demo net (snapshots at 0, 10, 20, 30)."""
    settings = make_settings(tmp_path_factory.mktemp("explain") / "data")
    with TestClient(create_app(settings)) as client:
        run_id = client.post("/api/runs", json=RUN).json()["id"]
        wait_for(client, run_id, "completed")
        yield client, run_id


@pytest.fixture(scope="module")
def second(finished):
    """Another completed run on the same server (its caches untouched by the other tests), with
    its store and the monitor batch computed from its dataset, as runs had it before the monitor file."""
    client, _ = finished
    run_id = client.post("/api/runs", json={**RUN, "seed": 7}).json()["id"]
    wait_for(client, run_id, "completed")
    store: Store = client.app.state.store
    dataset = load_dataset(RUN["dataset"])
    return client, run_id, store, dataset, resolve_model_spec(RUN["model"], dataset)


def full_summary(client, run_id: str, layer: int) -> tuple[dict, int]:
    """The layer summary once nothing is pending, and how many requests it took."""
    for parts in range(1, 1000):
        body = client.get(f"/api/runs/{run_id}/layers/{layer}/summary").json()
        assert body["pending"] >= 0
        if body["pending"] == 0:
            return body, parts
    raise AssertionError("the summary never finished")


def test_filter_explanation_json(finished):
    client, run_id = finished
    steps = client.get(f"/api/runs/{run_id}/snapshots").json()["steps"]
    answer = client.get(f"/api/runs/{run_id}/snapshots/latest/filters/3/5")
    assert answer.status_code == 200
    body = answer.json()
    assert body["run_id"] == run_id and body["step"] == steps[-1]
    assert (body["layer"], body["label"], body["filter"], body["shape"]) == (3, "conv2", 5, [8, 3, 3])
    assert body["receptive_field"] == {"size": 10, "jump": 2, "offset": 0}
    patches = body["patches"]["items"]
    assert len(patches) == 9 and body["patches"]["images"] == 64
    assert [p["activation"] for p in patches] == sorted((p["activation"] for p in patches), reverse=True)
    assert all(np.asarray(p["pixels"]).shape == (1, 10, 10) and isinstance(p["label"], str) for p in patches)
    assert np.asarray(body["maximize"]["image"]).shape == (1, 10, 10)
    assert body["maximize"]["best_patch_activation"] == patches[0]["activation"]
    assert 0 <= body["spectrum"]["selectivity"] <= 1
    assert np.asarray(body["spectrum"]["magnitude"]).shape == (33, 33)
    assert 0 <= body["dead"]["share"] <= 1 and body["dead"]["activation"] == "relu"
    assert np.asarray(body["expanded"]["weight"]).shape == (1, 10, 10)
    trajectory = body["trajectory"]
    assert trajectory["steps"] == steps
    assert len(trajectory["norm"]) == len(trajectory["score"]) == len(steps)
    assert trajectory["relative_change"][0] == 0.0 and trajectory["relative_change"][-1] > 0
    # an explicit step gives that snapshot's weights
    first = client.get(f"/api/runs/{run_id}/snapshots/0/filters/0/2").json()
    snapshot = client.get(f"/api/runs/{run_id}/snapshots/0", params={"feature_maps": False}).json()
    np.testing.assert_allclose(first["weight"], snapshot["layers"][0]["weight"][2], atol=1e-4)


@pytest.mark.parametrize("picture", ["patches", "maximize", "spectrum", "expanded"])
def test_filter_pictures_are_png(finished, picture):
    client, run_id = finished
    answer = client.get(f"/api/runs/{run_id}/snapshots/10/filters/3/1/{picture}.png")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_layer_filter_and_step_name_what_exists(finished):
    client, run_id = finished
    answer = client.get(f"/api/runs/{run_id}/snapshots/latest/filters/5/0")
    assert answer.status_code == 404
    assert answer.json()["message"] == "layer: layer 5 is not a conv layer; conv layers: 0 (conv1), 3 (conv2)"
    answer = client.get(f"/api/runs/{run_id}/snapshots/latest/filters/0/8")
    assert answer.status_code == 404
    assert answer.json()["message"] == "filter: filter 8 does not exist in layer 0 (conv1); filters: 0..7"
    assert client.get(f"/api/runs/{run_id}/snapshots/latest/filters/0/-1").status_code == 404
    assert client.get(f"/api/runs/{run_id}/snapshots/latest/filters/3/99/patches.png").status_code == 404
    answer = client.get(f"/api/runs/{run_id}/snapshots/999999/filters/0/0")  # a step the run never stored
    assert answer.status_code == 404 and answer.json()["message"].startswith("step:")
    answer = client.get(f"/api/runs/{run_id}/snapshots/soon/filters/0/0")
    assert answer.status_code == 422 and "step" in answer.json()["message"]
    assert client.get("/api/runs/nosuchrun/snapshots/latest/filters/0/0").status_code == 404
    answer = client.get(f"/api/runs/{run_id}/layers/6/summary")
    assert answer.status_code == 404 and "conv layers: 0 (conv1), 3 (conv2)" in answer.json()["message"]


def test_layer_summary_over_time(finished):
    client, run_id = finished
    steps = client.get(f"/api/runs/{run_id}/snapshots").json()["steps"]
    body, _ = full_summary(client, run_id, 0)
    assert (body["layer"], body["label"], body["filters"]) == (0, "conv1", 8)
    assert [p["step"] for p in body["points"]] == steps
    for point in body["points"]:
        assert 0 <= point["dead_filters"] <= 8
        assert 0 <= point["selective_share"] <= 1 and 0 <= point["detector_share"] <= 1
        assert 0 <= point["mean_score"] <= 1
    assert 0 < body["score_chance"] < 1 and 0 < body["selectivity_chance"] < 1
    # the filter route's dead verdicts agree with the summary's count at the same step
    dead = sum(
        client.get(f"/api/runs/{run_id}/snapshots/{steps[-1]}/filters/0/{f}").json()["dead"]["dead"] for f in range(8)
    )
    assert body["points"][-1]["dead_filters"] == dead


# ---------------------------------------------------------------- the stored monitor batch


def test_the_monitor_batch_is_stored_when_the_run_starts(second):
    _, run_id, store, dataset, spec = second
    assert monitor_path(store.data_dir, run_id).is_file()
    monitor = store.read_monitor(run_id)
    np.testing.assert_array_equal(monitor["x"], dataset.monitor_x)
    np.testing.assert_array_equal(monitor["y"], dataset.monitor_y)
    assert monitor["classes"] == list(dataset.classes) and monitor["spec"] == spec


def _same(a, b, path="") -> None:
    """Nested JSON values equal: numbers to 1e-9 relative (same inputs, same computation)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


@pytest.mark.parametrize(("layer", "filter"), [(0, 6), (3, 11)])
def test_explanations_from_the_stored_batch_equal_those_from_the_dataset(second, layer, filter):
    client, run_id, store, dataset, spec = second
    steps = store.snapshot_steps(run_id)
    answer = client.get(f"/api/runs/{run_id}/snapshots/{steps[-2]}/filters/{layer}/{filter}").json()
    history = (steps, [store.read_snapshot_params(run_id, step)[f"{layer}.weight"] for step in steps])
    expected = explain.explain_filter(
        spec,
        store.read_snapshot_params(run_id, steps[-2]),
        layer,
        filter,
        dataset.monitor_x,
        dataset.monitor_y,
        dataset.classes,
        history=history,
    )
    expected = {"run_id": run_id, "step": steps[-2], **expected}
    _same(answer, json.loads(dumps_json(expected)))


def test_a_damaged_monitor_file_is_a_500_naming_it(second, tmp_path):
    client, run_id, store, _, _ = second
    path = monitor_path(store.data_dir, run_id)
    whole = path.read_bytes()
    try:
        path.write_bytes(whole[: len(whole) // 2])  # cut short
        for url in (f"/api/runs/{run_id}/snapshots/10/filters/0/3", f"/api/runs/{run_id}/layers/0/summary"):
            answer = client.get(url)
            assert answer.status_code == 500, url
            assert answer.json()["detail"]["file"] == "monitor.npz"
            assert answer.json()["message"].startswith(f"monitor batch: run {run_id}: the stored file monitor.npz")
    finally:
        path.write_bytes(whole)
    assert client.get(f"/api/runs/{run_id}/snapshots/10/filters/0/3").status_code == 200


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda a: a.pop("spec"), "it has no spec"),
        (lambda a: a.update(y=a["y"][:-1]), "y is not one integer label per image"),
        (lambda a: a.update(y=a["y"] + 100), "a label lies outside"),
        (lambda a: a.update(x=a["x"][:, :, :5]), "spec is not a model spec for these images"),
        (lambda a: a.update(spec=np.array("{not json")), "spec is not JSON"),
    ],
)
def test_a_monitor_file_whose_arrays_do_not_fit_is_damaged(tmp_path, change, reason):
    from app.store import write_npz_atomic

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 1, 8, 8)).astype(np.float32), np.arange(6) % 3
    write_monitor(tmp_path, "r1", x, y, ["a", "b", "c"], {"input": [1, 8, 8], "layers": []})
    monitor = read_monitor(tmp_path, "r1")
    np.testing.assert_array_equal(monitor["x"], x)
    assert monitor["classes"] == ["a", "b", "c"] and monitor["spec"] == {"input": [1, 8, 8], "layers": []}
    with np.load(monitor_path(tmp_path, "r1")) as data:
        arrays = {name: data[name] for name in data.files}
    change(arrays)
    write_npz_atomic(monitor_path(tmp_path, "r1"), arrays)
    with pytest.raises(DamagedFile, match=reason):
        read_monitor(tmp_path, "r1")
    assert read_monitor(tmp_path, "no-such-run") is None


def test_a_run_stored_without_a_monitor_file_gets_one_built_from_its_dataset(second):
    client, run_id, store, dataset, spec = second
    path = monitor_path(store.data_dir, run_id)
    path.unlink()
    assert client.get(f"/api/runs/{run_id}/snapshots/20/filters/3/2").status_code == 200
    monitor = store.read_monitor(run_id)
    np.testing.assert_array_equal(monitor["x"], dataset.monitor_x)
    assert monitor["spec"] == spec


def test_a_summary_in_parts_has_the_numbers_of_one_computed_per_snapshot(second, monkeypatch):
    """With no time to spare each request summarizes one snapshot: `pending` counts down, every
    part's points are a prefix of the steps, and the rows (one model reused, only the layers'
    own arrays read) are what engine.explain.layer_summary gives on each whole snapshot."""
    client, run_id, store, dataset, spec = second
    monkeypatch.setattr(limits, "SUMMARY_SECONDS", 0.0)
    steps = store.snapshot_steps(run_id)
    for layer in (0, 3):
        pending = []
        for _ in steps:
            body = client.get(f"/api/runs/{run_id}/layers/{layer}/summary").json()
            pending.append(body["pending"])
            assert [p["step"] for p in body["points"]] == steps[: len(steps) - body["pending"]]
        assert pending == list(range(len(steps) - 1, -1, -1))
        for point in body["points"]:
            expected = explain.layer_summary(
                spec, store.read_snapshot_params(run_id, point["step"]), layer, dataset.monitor_x
            )
            for key in ("dead_filters", "selective_share", "mean_score", "detector_share"):
                assert point[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), (layer, point["step"], key)
        assert body["score_chance"] == pytest.approx(expected["score_chance"])
        again, parts = full_summary(client, run_id, layer)
        assert parts == 1 and again["points"] == body["points"]


def test_reading_some_arrays_of_a_snapshot_checks_them_like_reading_all(tmp_path):
    """read_snapshot_arrays gives exactly the arrays read_snapshot_params gives (dtype, shape,
    values) and finds a garbled byte or a cut file as a DamagedFile naming the file."""
    from app.store import read_snapshot_arrays, read_snapshot_params, snapshot_dir, write_npz_atomic

    rng = np.random.default_rng(2)
    params = {
        "0.weight": rng.standard_normal((8, 1, 5, 5)).astype(np.float32),
        "0.bias": np.zeros(8, dtype=np.float32),
        "3.weight": np.asfortranarray(rng.standard_normal((4, 3))),
        "count": np.array(7),
    }
    path = snapshot_dir(tmp_path, "r1") / "10.npz"
    write_npz_atomic(path, params)
    whole = read_snapshot_params(tmp_path, "r1", 10)
    some = read_snapshot_arrays(tmp_path, "r1", 10, ["3.weight", "0.weight", "count", "absent"])
    assert sorted(some) == ["0.weight", "3.weight", "count"]
    for name, value in some.items():
        assert value.dtype == whole[name].dtype and value.shape == whole[name].shape
        np.testing.assert_array_equal(value, whole[name])
    assert read_snapshot_arrays(tmp_path, "r1", 20, ["0.weight"]) is None
    raw = bytearray(path.read_bytes())
    at = bytes(raw).index(params["0.weight"].tobytes()[:16]) + 40  # inside 0.weight's data
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DamagedFile, match="10.npz"):
        read_snapshot_arrays(tmp_path, "r1", 10, ["0.weight"])
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(DamagedFile, match="10.npz"):
        read_snapshot_arrays(tmp_path, "r1", 10, ["count"])


def test_snapshots_stored_without_summaries_are_summarized_here(finished, monkeypatch):
    """The route serves the summary rows the analyst stored with a run's snapshots. A run stored
    before the analyst kept them (its snapshot files rewritten here without them) gets the same
    points: the route computes each row itself, one snapshot per request with no time to spare."""
    client, _ = finished
    run_id = client.post("/api/runs", json={**RUN, "seed": 11}).json()["id"]
    wait_for(client, run_id, "completed")
    store: Store = client.app.state.store
    steps = store.snapshot_steps(run_id)
    with monkeypatch.context() as patch:  # the rows the analyst stored are served, not computed again
        patch.setattr(explain_routes.explain, "layer_summary", lambda *args, **kwargs: pytest.fail("recomputed"))
        stored = {layer: full_summary(client, run_id, layer)[0]["points"] for layer in (0, 3)}
    assert all(len(points) == len(steps) for points in stored.values())
    files = LocalStorage(store.data_dir)
    for step in steps:
        path = files.snapshot_path(run_id, step)
        with np.load(path) as data:
            members = {name: data[name] for name in data.files}
        value = json.loads(members["snapshot.json"].tobytes().decode())
        for layer in value["layers"]:
            layer.pop("summary", None)
        members["snapshot.json"] = np.frombuffer(dumps_json(value).encode(), dtype=np.uint8)
        np.savez_compressed(path, **members)
        for layer in (0, 3):
            assert explain_routes.stored_summary(store.read_snapshot_without_arrays(run_id, step), layer) is None
    explain_routes._summaries.items.clear()
    monkeypatch.setattr(limits, "SUMMARY_SECONDS", 0.0)
    for layer in (0, 3):
        pending = [client.get(f"/api/runs/{run_id}/layers/{layer}/summary").json()["pending"] for _ in steps]
        assert pending == list(range(len(steps) - 1, -1, -1))
        computed = full_summary(client, run_id, layer)[0]["points"]
        assert [p["step"] for p in computed] == steps
        for mine, theirs in zip(computed, stored[layer]):
            for key in ("dead_filters", "selective_share", "mean_score", "detector_share"):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12), (layer, mine["step"], key)
