"""Explain routes: one filter's explanation (JSON and PNGs), the layer summary, and bad indexes."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
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
    body = client.get(f"/api/runs/{run_id}/layers/0/summary").json()
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
