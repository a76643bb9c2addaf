"""GET /api/runs/{id}/layers/{layer}/births: each filter's birth step, from the snapshots' own detector entries."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from engine import analysis
from tests.app.conftest import TINY, make_settings, wait_for

RUN = {**TINY, "model": "demo", "steps": 60, "snapshot_every": 10}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("births") / "data")
    with TestClient(create_app(settings)) as client:
        run_id = client.post("/api/runs", json=RUN).json()["id"]
        wait_for(client, run_id, "completed")
        yield client, run_id


def test_births_are_birth_step_of_the_stored_scores(finished):
    client, run_id = finished
    steps = client.get(f"/api/runs/{run_id}/snapshots").json()["steps"]
    answer = client.get(f"/api/runs/{run_id}/layers/0/births")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["label"] == "conv1" and body["last_step"] == steps[-1]
    snapshots = [client.get(f"/api/runs/{run_id}/snapshots/{s}", params={"feature_maps": False}).json() for s in steps]
    filters = len(snapshots[0]["layers"][0]["detectors"])
    assert [b["filter"] for b in body["births"]] == list(range(filters))
    for f in range(filters):
        entries = [s["layers"][0]["detectors"][f] for s in snapshots]
        scores = [None if e["dead"] or e["label"] in ("dead", "brightness") else e["score"] for e in entries]
        expected = analysis.birth_step(steps, scores, [e["chance"] for e in entries])
        assert body["births"][f]["birth_step"] == expected
        if expected is not None:  # born: above chance at that snapshot and the two after it
            at = steps.index(expected)
            assert all(e["beats_chance"] for e in entries[at : at + 3])
    # asked again (cached), the same answer
    assert client.get(f"/api/runs/{run_id}/layers/0/births").json() == body


def test_births_of_a_layer_that_is_not_conv_is_404_naming_the_layer(finished):
    client, run_id = finished
    answer = client.get(f"/api/runs/{run_id}/layers/1/births")
    assert answer.status_code == 404 and "layer" in answer.json()["message"]
    assert client.get("/api/runs/nosuchrun/layers/0/births").status_code == 404
