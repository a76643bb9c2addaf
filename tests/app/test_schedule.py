"""The snapshot schedule through the API: served in /api/defaults, taken by POST /api/runs, checked there."""

from __future__ import annotations

import pytest

from app import limits
from engine.trainer import RunConfig
from tests.app.conftest import TINY, wait_for


def test_defaults_serve_the_engines_schedule(client):
    served = client.get("/api/defaults").json()["run"]["snapshot_schedule"]
    assert served == RunConfig.from_dict({}).snapshot_schedule


def test_a_run_stores_the_snapshots_its_schedule_names(client):
    from engine.trainer import snapshot_steps

    config = {**TINY, "steps": 25, "snapshot_schedule": {"dense_steps": 4, "growth": 2.0}}
    response = client.post("/api/runs", json=config)
    assert response.status_code == 201, response.text
    run = wait_for(client, response.json()["id"], "completed")
    assert run["config"]["snapshot_schedule"] == {"dense_steps": 4, "growth": 2.0}
    steps = client.get(f"/api/runs/{run['id']}/snapshots").json()["steps"]
    assert (
        steps == snapshot_steps(run["config"]) == [0, 1, 2, 3, 4, 6, 10, 18, 20, 25]
    )  # gaps 2, 4, 8; 16 >= 10 ends them


@pytest.mark.parametrize(
    "schedule, field",
    [
        ({"growth": 0.5}, "snapshot_schedule.growth"),
        ({"dense_steps": "all"}, "snapshot_schedule.dense_steps"),
        ({"dense_steps": limits.MAX_DENSE_SNAPSHOT_STEPS + 1}, "snapshot_schedule.dense_steps"),
        ({"every": 3}, "snapshot_schedule.every"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field(client, schedule, field):
    response = client.post("/api/runs", json={"snapshot_schedule": schedule})
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(field)
