"""The contracts the page and the CLI rely on (docs/ARCHITECTURE.md, CONTRACTS): /api/defaults read from
the engine's and app/limits.py's single homes, POST /api/inits/describe, one validation rule for API
and CLI with a "did you mean" for unknown names, and event streams that end when the run has ended."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from app import limits
from app.cli import cli
from engine.core.initializers import DEFAULT_KERNELS
from engine.presets import DEMOS
from tests.app.conftest import LONG, TINY, read_events, wait_for, wait_for_step

# ---------------------------------------------------------------- /api/defaults


def test_defaults_serve_run_optimizers_demos_kernel_bank_and_limits(client):
    from engine.trainer import RunConfig

    defaults = client.get("/api/defaults").json()
    assert set(defaults) == {"run", "optimizers", "demos", "comparison", "kernel_bank", "limits"}
    assert defaults["run"] == RunConfig.from_dict({}).to_dict()
    assert set(defaults["optimizers"]) == {"sgd", "adam"}
    assert defaults["demos"]["depth_stall"] == DEMOS["depth_stall"]
    assert len(defaults["demos"]["depth_stall"]["inits"]) == 3
    assert defaults["kernel_bank"] == list(DEFAULT_KERNELS)
    served = defaults["limits"]
    for field in ("steps", "batch_size", "snapshot_every", "eval_every", "seed", "lr", "momentum", "weight_decay"):
        assert {"min", "max"} <= set(served[field]), field
    assert served["steps"] == {"min": 1, "max": limits.MAX_STEPS}
    assert served["batch_size"]["max"] == limits.MAX_BATCH_SIZE
    assert served["lr"] == {"min": 0, "min_exclusive": True, "max": limits.MAX_LR}


def test_a_default_changed_in_the_engine_is_what_defaults_serve(client, monkeypatch):
    import engine.trainer

    @dataclass
    class LongerRuns(engine.trainer.RunConfig):
        steps: int = 1234

    monkeypatch.setattr(engine.trainer, "RunConfig", LongerRuns)
    monkeypatch.setitem(DEMOS["depth_stall"]["base"], "steps", 77)
    monkeypatch.setitem(limits.FIELD_LIMITS["batch_size"], "max", 99)
    defaults = client.get("/api/defaults").json()
    assert defaults["run"]["steps"] == 1234
    assert defaults["demos"]["depth_stall"]["base"]["steps"] == 77
    assert defaults["limits"]["batch_size"]["max"] == 99


def test_every_served_limit_is_the_one_the_api_enforces(client):
    served = client.get("/api/defaults").json()["limits"]
    for field in ("steps", "batch_size", "snapshot_every", "eval_every"):
        for value in (served[field]["min"] - 1, served[field]["max"] + 1):
            response = client.post("/api/runs", json={field: value})
            assert response.status_code == 422, (field, value, response.text)
            assert response.json()["message"].startswith(field)
    too_fast = client.post("/api/runs", json={"optimizer": {"name": "sgd", "lr": served["lr"]["max"] * 2}})
    assert too_fast.status_code == 422 and too_fast.json()["message"].startswith("optimizer.lr")
    assert client.get("/api/runs").json()["runs"] == []


# ---------------------------------------------------------------- /api/inits/describe


def test_describe_gives_each_weight_layer_of_the_default_run(client):
    layers = client.post("/api/inits/describe", json={}).json()["layers"]
    assert [layer["label"] for layer in layers] == ["conv1", "conv2", "dense1"]
    conv1 = layers[0]
    assert (conv1["index"], conv1["type"], conv1["shape"]) == (0, "conv", [8, 1, 5, 5])
    assert (conv1["fan_in"], conv1["fan_out"]) == (25, 200)
    assert conv1["init"]["name"] == "he_normal" and conv1["law"] == "N(0, 2/fan_in)"
    assert math.isclose(conv1["std"], math.sqrt(2 / 25), rel_tol=1e-5) and conv1["bound"] is None
    assert "25" in conv1["text"]
    assert layers[2]["shape"][0] == 10  # one unit per class of the default dataset


def test_describe_follows_model_init_dataset_and_a_layers_own_init(client, data_dir):
    spec = {
        "layers": [
            {"type": "conv", "filters": 4, "kernel": 3, "init": {"name": "normal", "std": 0.05}},
            {"type": "relu"},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ]
    }
    body = {"model": spec, "init": "glorot_uniform", "dataset": "sklearn_digits"}
    conv, dense = client.post("/api/inits/describe", json=body).json()["layers"]
    assert conv["shape"] == [4, 1, 3, 3] and conv["init"] == {"name": "normal", "std": 0.05}
    assert math.isclose(conv["std"], 0.05)
    # sklearn_digits is served upscaled to 28x28 (engine/datasets.py), so a 3x3 conv leaves 26x26
    assert dense["shape"] == [10, 4 * 26 * 26] and dense["init"]["name"] == "glorot_uniform"
    assert math.isclose(dense["bound"], math.sqrt(6 / (4 * 26 * 26 + 10)), rel_tol=1e-5)
    (data_dir / limits.DATASETS_FOLDER / "anywhere").mkdir(parents=True)
    cifar = client.post(
        "/api/inits/describe", json={"model": "small", "dataset": {"name": "cifar10", "path": "anywhere"}}
    ).json()
    assert cifar["layers"][0]["shape"] == [8, 3, 3, 3] and cifar["layers"][0]["fan_in"] == 27


@pytest.mark.parametrize(
    "body,field",
    [
        ({"init": "He_Normal"}, "init"),
        ({"model": "Small"}, "model"),
        ({"dataset": "imagenet"}, "dataset.name"),
        ({"model": {"layers": [{"type": "conv", "filters": 0}]}}, "model"),
        ({"colour": 1}, "colour"),
        ({"dataset": {"noize": 0.1}}, "dataset.noize: unknown parameter"),
        (
            {"dataset": {"": 1}},
            "dataset: unknown parameter ''",
        ),  # a key that is no name: found by the fuzzer, was a 500
    ],
)
def test_describe_refuses_bad_input_naming_the_field(client, body, field):
    response = client.post("/api/inits/describe", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(field), response.json()["message"]


@pytest.mark.parametrize(
    "path,problem",
    [("nowhere", "does not exist"), ("../outside", "'..' is not allowed"), ("/etc", "not absolute")],
)
def test_describe_checks_a_file_datasets_path_as_a_run_would(client, data_dir, path, problem):
    """The setup form describes its model while the learner types a dataset's folder: a path a run
    would refuse is refused here too, at dataset.path, in the words POST /api/runs uses."""
    body = {"dataset": {"name": "mnist", "path": path}}
    described = client.post("/api/inits/describe", json=body)
    started = client.post("/api/runs", json=body)
    for response in (described, started):
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "dataset", "path"]
        assert problem in response.json()["message"], response.json()["message"]
    assert described.json()["message"] == started.json()["message"]
    (data_dir / limits.DATASETS_FOLDER / "digits").mkdir(parents=True)
    fine = client.post("/api/inits/describe", json={"dataset": {"name": "mnist", "path": "digits"}})
    assert fine.status_code == 200 and fine.json()["layers"][0]["shape"] == [8, 1, 5, 5]
    assert client.get("/api/runs").json()["runs"] == []


# ---------------------------------------------------------------- validation that helps


@pytest.mark.parametrize(
    "url,body,field,meant",
    [
        ("/api/runs", {"init": "He_Normal"}, "init", "he_normal"),
        ("/api/runs", {"init": {"name": "kernel", "kernels": ["x", "sobelx"]}}, "init", "sobel_x"),
        ("/api/runs", {"dataset": "Shapes"}, "dataset.name", "shapes"),
        ("/api/runs", {"model": "smal"}, "model", "small"),
        ("/api/runs", {"optimizer": {"name": "Adam"}}, "optimizer.name", "adam"),
        ("/api/runs", {"model": {"layers": [{"type": "Conv", "filters": 2}]}}, "model", "conv"),
        ("/api/init-probe", {"depth": 3, "width": 4, "activation": "Relu"}, "activation", "relu"),
        ("/api/comparisons", {"inits": ["zeros", "glorot_uniformm"]}, "inits.1", "glorot_uniform"),
    ],
)
def test_an_unknown_name_gets_the_closest_valid_one(client, url, body, field, meant):
    response = client.post(url, json=body)
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert message.startswith(field) and f"did you mean '{meant}'?" in message, message


def test_init_probe_of_nothing_probes_the_default_model(client):
    response = client.post("/api/init-probe", json={})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["spec"]["input"] == [1, 28, 28] and result["depth"] == 3
    assert [entry["init"] for entry in result["results"]] == DEMOS["depth_stall"]["inits"]


def test_zero_steps_are_refused_by_the_api_and_the_cli_alike(client, data_dir):
    response = client.post("/api/runs", json={"steps": 0})
    assert response.status_code == 422 and response.json()["message"].startswith("steps:")
    for option, value in (
        ("--steps", "0"),
        ("--batch-size", str(limits.MAX_BATCH_SIZE + 1)),
        ("--steps", str(limits.MAX_STEPS + 1)),
    ):
        result = CliRunner().invoke(cli, ["train", option, value, "--data", str(data_dir)])
        assert result.exit_code == 2, result.output
        assert option.removeprefix("--").replace("-", "_") in result.output, result.output


# ---------------------------------------------------------------- streams end


def stream_until_closed(client, run_id: str, headers=None, on_first_event=None) -> list[dict]:
    """Every event of GET .../events until the server closes the stream (the test fails, not hangs,
    if it never does: the reading thread is given up on after a generous while)."""
    events: list[dict] = []
    reacting: list[threading.Thread] = []

    def read():
        with client.stream("GET", f"/api/runs/{run_id}/events", headers=headers or {}) as response:
            assert response.status_code == 200
            for event in read_events(response):
                events.append(event)
                if len(events) == 1 and on_first_event is not None:
                    reacting.append(threading.Thread(target=on_first_event, daemon=True))
                    reacting[0].start()
        events.append({"closed": True})

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(300)
    assert events and events[-1] == {"closed": True}, f"the stream stayed open: {events[-3:]}"
    # the reaction's request ends before the test does: none is in flight when the client closes
    for thread in reacting:
        thread.join(60)
        assert not thread.is_alive(), "the request made on the first event never returned"
    return events[:-1]


def test_the_stream_of_an_ended_run_sends_what_is_left_and_closes(client):
    run_id = client.post("/api/runs", json=TINY).json()["id"]
    wait_for(client, run_id, "completed")
    events = stream_until_closed(client, run_id)
    assert [event["event"] for event in events] == ["status", "snapshot"]
    assert events[0]["data"]["status"] == "completed" and events[1]["data"]["step"] == TINY["steps"]
    missed = stream_until_closed(client, run_id, headers={"Last-Event-ID": "0"})  # a viewer that missed it all
    points = [point["step"] for event in missed if event["event"] == "metrics" for point in event["data"]["points"]]
    assert points == list(range(1, TINY["steps"] + 1))
    assert [event["event"] for event in missed][-2:] == ["status", "snapshot"]


def test_a_live_stream_closes_after_the_final_status(client):
    run_id = client.post("/api/runs", json=LONG).json()["id"]
    wait_for_step(client, run_id, 1)
    events = stream_until_closed(client, run_id, on_first_event=lambda: client.post(f"/api/runs/{run_id}/stop"))
    statuses = [event["data"]["status"] for event in events if event["event"] == "status"]
    assert statuses[0] == "running" and statuses[-1] == "stopped"
    assert events[-1]["event"] == "status"  # nothing after the final status
