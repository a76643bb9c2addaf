"""Security: the bearer token on every state-changing route, CORS only when configured,
loopback by default, and dataset paths confined to DATA/datasets."""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.security import OPEN_PATHS, resolve_dataset_path
from app.settings import Settings
from tests.app.conftest import LONG, make_settings, wait_for

TOKEN = "correct-horse-battery-staple"
SAFE = {"get", "head", "options"}


def state_changing_routes(app) -> list[tuple[str, str]]:
    """(METHOD, concrete path) for every documented route that is not a read, but for the one
    open on purpose (joining a class: OPEN_PATHS; tests/app/test_classroom.py)."""
    routes = []
    for path, operations in app.openapi()["paths"].items():
        if path in OPEN_PATHS:
            continue
        concrete = re.sub(r"\{[^}]+\}", "0", path)
        routes += [(method.upper(), concrete) for method in operations if method not in SAFE]
    return routes


@pytest.fixture
def guarded(data_dir):
    with TestClient(create_app(make_settings(data_dir, token=TOKEN))) as client:
        yield client


def test_every_state_changing_route_needs_the_bearer_token(guarded):
    routes = state_changing_routes(guarded.app)
    assert ("POST", "/api/runs") in routes and ("DELETE", "/api/runs/0") in routes and len(routes) >= 8
    for method, path in routes:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            {"Authorization": f"Bearer {TOKEN}x"},
        ):
            response = guarded.request(method, path, json={}, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in response.json()["message"]
    assert guarded.get("/api/runs").json()["runs"] == [], "a refused request must not have created a run"
    for method, path in routes:
        allowed = guarded.request(method, path, json={"steps": 1}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code != 401, (method, path, allowed.text)


def test_with_the_token_a_run_is_started_and_controlled_while_reads_stay_open(guarded):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    created = guarded.post("/api/runs", json=LONG, headers=auth)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    for path in (
        "/healthz",
        "/api/inits",
        "/api/datasets",
        "/api/presets",
        "/api/runs",
        f"/api/runs/{run_id}",
        f"/api/runs/{run_id}/metrics",
        f"/api/runs/{run_id}/snapshots",
    ):
        assert guarded.get(path).status_code == 200, path
    assert guarded.post(f"/api/runs/{run_id}/stop").status_code == 401
    assert guarded.post(f"/api/runs/{run_id}/stop", headers=auth).status_code == 200
    assert guarded.delete(f"/api/runs/{run_id}").status_code == 401
    assert guarded.delete(f"/api/runs/{run_id}", headers=auth).status_code == 204


def test_no_token_configured_means_no_token_needed(client):
    assert client.post("/api/runs", json={"steps": 1}).status_code == 201


def test_no_cors_unless_configured(client):
    origin = {"Origin": "http://evil.example"}
    assert "access-control-allow-origin" not in client.get("/api/runs", headers=origin).headers
    preflight = client.options("/api/runs", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_answers_only_the_configured_origins(data_dir):
    settings = make_settings(data_dir, token=TOKEN, cors_origins=("http://classroom.example:8080",))
    with TestClient(create_app(settings)) as client:
        good = {"Origin": "http://classroom.example:8080"}
        response = client.get("/api/runs", headers=good)
        assert response.headers["access-control-allow-origin"] == "http://classroom.example:8080"
        preflight = client.options(
            "/api/runs",
            headers={
                **good,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        refused = client.post("/api/runs", json={}, headers=good)  # the browser can read the 401
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "http://classroom.example:8080"
        other = client.get("/api/runs", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_settings_bind_loopback_by_default_and_read_cors_origins():
    assert Settings().host == "127.0.0.1"
    assert Settings.from_env({}).host == "127.0.0.1"
    assert Settings.from_env({}).cors_origins == ()
    assert Settings.from_env({}).token is None
    env = {"KERNELSCOPE_CORS_ORIGINS": "http://a.example, https://b.example:8443/", "KERNELSCOPE_TOKEN": "t"}
    settings = Settings.from_env(env)
    assert settings.cors_origins == ("http://a.example", "https://b.example:8443")
    assert settings.token == "t"
    with pytest.raises(ValueError, match="KERNELSCOPE_CORS_ORIGINS"):
        Settings.from_env({"KERNELSCOPE_CORS_ORIGINS": "evil.example"})


def test_cli_serve_binds_loopback_unless_told_otherwise(monkeypatch):
    from app import cli

    monkeypatch.delenv("KERNELSCOPE_HOST", raising=False)
    assert cli._settings().host == "127.0.0.1"


# ---------------------------------------------------------------- dataset paths


def make_image_folder(folder, classes=("a", "b"), per_class=12, size=12):
    rng = np.random.default_rng(0)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = (rng.random((size, size)) * 255).astype("uint8")
            Image.fromarray(pixels).save(folder / name / f"{index}.png")


def test_resolve_dataset_path_confines_to_the_datasets_folder(tmp_path):
    data_dir = tmp_path / "data"
    root = data_dir / "datasets"
    (root / "mnist" / "raw").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    os.symlink(outside, root / "escape")
    os.symlink(root / "mnist", root / "alias")
    assert resolve_dataset_path(data_dir, "mnist") == (root / "mnist").resolve()
    assert resolve_dataset_path(data_dir, "mnist/raw") == (root / "mnist" / "raw").resolve()
    assert resolve_dataset_path(data_dir, "alias") == (root / "mnist").resolve()  # a link that stays inside
    for bad, words in [
        ("../secret", "'..'"),
        ("mnist/../../secret", "'..'"),
        (str(outside), "absolute"),
        ("/etc/passwd", "absolute"),
        ("escape", "leads out"),
        ("escape/x", "leads out"),
        ("missing", "does not exist"),
        ("", "folder name"),
        (None, "folder name"),
        (3, "folder name"),
    ]:
        with pytest.raises(ValueError, match="dataset.path") as error:
            resolve_dataset_path(data_dir, bad)
        assert words in str(error.value), (bad, str(error.value))


def test_a_dataset_folder_trains_from_data_datasets_whatever_the_working_directory(data_dir, tmp_path, monkeypatch):
    make_image_folder(data_dir / "datasets" / "tiny")
    monkeypatch.chdir(tmp_path)  # a relative path must not be read from here
    with TestClient(create_app(make_settings(data_dir))) as client:
        body = {"model": "small", "dataset": {"name": "image_folder", "path": "tiny"}, "steps": 4, "batch_size": 4}
        created = client.post("/api/runs", json=body)
        assert created.status_code == 201, created.text
        run = wait_for(client, created.json()["id"], {"completed", "failed"})
        assert run["status"] == "completed", run["message"]
        assert run["config"]["dataset"]["path"] == "tiny"


def test_a_symlink_swapped_in_after_the_check_is_refused_when_the_run_starts(data_dir, tmp_path):
    make_image_folder(data_dir / "datasets" / "tiny")
    outside = tmp_path / "elsewhere"
    make_image_folder(outside)
    with TestClient(create_app(make_settings(data_dir, max_runs=1))) as client:
        blocker = client.post("/api/runs", json=LONG).json()["id"]
        body = {"model": "small", "dataset": {"name": "image_folder", "path": "tiny"}, "steps": 4, "batch_size": 4}
        queued = client.post("/api/runs", json=body).json()
        assert queued["status"] == "queued"
        (data_dir / "datasets" / "tiny").rename(tmp_path / "moved")
        os.symlink(outside, data_dir / "datasets" / "tiny")
        client.post(f"/api/runs/{blocker}/stop")
        run = wait_for(client, queued["id"], {"completed", "failed"})
        assert run["status"] == "failed"
        assert "dataset.path" in run["message"] and "leads out" in run["message"]
        deadline = time.monotonic() + 10
        while client.get("/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/healthz").json()["status"] == "ok"
