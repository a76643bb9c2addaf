"""Bad input: every limit, unknown names, NaN/inf, malformed JSON, wrong types, huge bodies, traversal.

Each case is answered 4xx with a message naming the field (and the limit or the
valid names), nothing reaches the engine, no run is created, and the server
keeps answering.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app import limits
from app.main import create_app
from tests.app.conftest import LONG, make_settings

CONV = {"type": "conv", "filters": 4, "kernel": 3}
HEAD = [{"type": "flatten"}, {"type": "dense", "units": 7}]


def spec(*layers, input_shape=None) -> dict:
    model = {"layers": [*layers, *HEAD]}
    if input_shape is not None:
        model["input"] = input_shape
    return model


def grid(side: int) -> list[list[float]]:
    return [[0.0] * side for _ in range(side)]


# (body, field the message starts with, words it must contain)
LIMIT_CASES = [
    (
        {"model": {"layers": [{"type": "relu"}] * (limits.MAX_LAYERS + 1)}},
        "model.layers",
        f"at most {limits.MAX_LAYERS} layers",
    ),
    (
        {"model": spec({**CONV, "filters": limits.MAX_FILTERS + 1})},
        "model.layers[0].filters",
        f"at most {limits.MAX_FILTERS}",
    ),
    (
        {
            "model": {
                "layers": [
                    {"type": "flatten"},
                    {"type": "dense", "units": limits.MAX_UNITS + 1},
                    {"type": "dense", "units": 7},
                ]
            }
        },
        "model.layers[1].units",
        f"at most {limits.MAX_UNITS}",
    ),
    (
        {"model": spec({**CONV, "kernel": limits.MAX_KERNEL + 1})},
        "model.layers[0].kernel",
        f"at most {limits.MAX_KERNEL}",
    ),
    (
        {"model": spec({**CONV, "kernel": [3, limits.MAX_KERNEL + 2]})},
        "model.layers[0].kernel",
        f"at most {limits.MAX_KERNEL}",
    ),
    (
        {"model": spec({**CONV, "padding": limits.MAX_PADDING + 1})},
        "model.layers[0].padding",
        f"at most {limits.MAX_PADDING}",
    ),
    (
        {"model": spec({**CONV, "stride": limits.MAX_STRIDE + 1})},
        "model.layers[0].stride",
        f"at most {limits.MAX_STRIDE}",
    ),
    (
        {"model": spec(CONV, input_shape=[1, limits.MAX_INPUT_SIDE + 1, 28])},
        "model.input",
        f"at most {limits.MAX_INPUT_SIDE}",
    ),
    (
        {"model": spec(CONV, input_shape=[limits.MAX_INPUT_CHANNELS + 1, 28, 28])},
        "model.input",
        f"at most {limits.MAX_INPUT_CHANNELS} channels",
    ),
    (
        {"dataset": {"name": "shapes", "size": limits.MAX_INPUT_SIDE + 1}},
        "dataset.size",
        f"at most {limits.MAX_INPUT_SIDE}",
    ),
    (
        {"dataset": {"name": "shapes", "n_train": limits.MAX_DATASET_EXAMPLES}},
        "dataset.n_train",
        f"at most {limits.MAX_DATASET_EXAMPLES}",
    ),
    (
        {"dataset": {"name": "marks", "n_train": limits.MAX_DATASET_EXAMPLES}},  # generated the same way
        "dataset.n_train",
        f"at most {limits.MAX_DATASET_EXAMPLES}",
    ),
    (
        {
            "model": {
                "layers": [
                    {"type": "flatten"},
                    {"type": "dense", "units": 4096},
                    {"type": "dense", "units": 4096},
                    {"type": "dense", "units": 7},
                ]
            }
        },
        "model",
        f"at most {limits.MAX_PARAMETERS} parameters",
    ),
    ({"model": "medium", "batch_size": limits.MAX_BATCH_SIZE}, "batch_size", f"at most {limits.MAX_STEP_VALUES}"),
    (
        {"model": spec({**CONV, "filters": 256, "padding": 5}, {"type": "conv", "filters": 256, "kernel": 3})},
        "model",
        f"at most {limits.MAX_FEATURE_MAP_VALUES} feature-map values",
    ),
    ({"batch_size": limits.MAX_BATCH_SIZE + 1}, "batch_size", f"less than or equal to {limits.MAX_BATCH_SIZE}"),
    ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
    ({"steps": limits.MAX_STEPS + 1}, "steps", f"less than or equal to {limits.MAX_STEPS}"),
    ({"steps": 0}, "steps", "greater than or equal to 1"),  # one rule: a run makes at least one step
    ({"snapshot_every": 0}, "snapshot_every", "greater than or equal to 1"),
    (
        {"steps": limits.MAX_STEPS, "snapshot_every": 1},
        "snapshot_every",
        f"at most {limits.MAX_SNAPSHOTS_PER_RUN} snapshots",
    ),
    ({"eval_every": limits.MAX_STEPS + 1}, "eval_every", f"less than or equal to {limits.MAX_STEPS}"),
    ({"optimizer": {"name": "sgd", "lr": limits.MAX_LR * 2}}, "optimizer.lr", f"at most {limits.MAX_LR}"),
    ({"optimizer": {"name": "adam", "lr": 0}}, "optimizer.lr", "> 0"),
    ({"optimizer": {"name": "sgd", "lr": -0.1}}, "optimizer.lr", "> 0"),
    (
        {"init": {"name": "kernel", "kernels": [grid(limits.MAX_HANDMADE_KERNEL_SIDE + 1)]}},
        "init.kernels[0]",
        f"at most {limits.MAX_HANDMADE_KERNEL_SIDE} rows",
    ),
    (
        {"init": {"name": "kernel", "kernels": ["x"] * (limits.MAX_HANDMADE_KERNELS + 1)}},
        "init.kernels",
        f"at most {limits.MAX_HANDMADE_KERNELS} kernels",
    ),
    (
        {"model": spec({**CONV, "init": {"name": "kernel", "kernels": [[[0.0] * 12] * 3]}})},
        "model.layers[0].init.kernels[0]",
        f"at most {limits.MAX_HANDMADE_KERNEL_SIDE} columns",
    ),
    ({"name": "n" * (limits.MAX_NAME_LENGTH + 1)}, "name", f"at most {limits.MAX_NAME_LENGTH} characters"),
]


@pytest.fixture
def client(data_dir):
    with TestClient(create_app(make_settings(data_dir, max_runs=1, max_queued=1))) as test_client:
        yield test_client


def assert_refused(response, field: str, words: str, status: int = 422) -> None:
    assert response.status_code == status, response.text
    message = response.json()["message"]
    assert message.startswith(field), message
    assert words in message, message


def assert_no_run_started(client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/api/runs").json()["runs"] == []


@pytest.mark.parametrize("body,field,words", LIMIT_CASES, ids=[f"{case[1]}-{i}" for i, case in enumerate(LIMIT_CASES)])
def test_each_limit_is_422_naming_field_and_limit(client, body, field, words):
    assert_refused(client.post("/api/runs", json=body), field, words)
    assert_no_run_started(client)


def test_limits_leave_the_presets_and_defaults_usable():
    from engine.trainer import RunConfig

    for preset in ("small", "demo", "medium", "deep"):
        limits.check_run_config(RunConfig.from_dict({"model": preset}).to_dict())
    limits.check_run_config(RunConfig.from_dict({"optimizer": {"name": "sgd", "lr": limits.MAX_LR}}).to_dict())


@pytest.mark.parametrize(
    "body,field,valid",
    [
        ({"init": "kaiming_sideways"}, "init", ["he_normal", "glorot_uniform", "zeros", "kernel"]),
        ({"init": {"name": "kernel", "kernels": ["x", "star"]}}, "init", ["sobel_x", "plus", "laplacian"]),
        ({"dataset": "imagenet"}, "dataset.name", ["shapes", "mnist", "cifar10"]),
        ({"model": "resnet152"}, "model", ["small", "demo", "medium"]),
        ({"model": {"layers": [{"type": "attention"}]}}, "model", ["conv", "maxpool", "dense", "leaky_relu"]),
        ({"optimizer": {"name": "lbfgs"}}, "optimizer.name", ["sgd", "adam"]),
    ],
)
def test_unknown_names_are_refused_with_the_valid_names(client, body, field, valid):
    response = client.post("/api/runs", json=body)
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert message.startswith(field), message
    for name in valid:
        assert name in message, (name, message)
    assert_no_run_started(client)


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]


@pytest.mark.parametrize("literal", NON_FINITE)
@pytest.mark.parametrize(
    "template,field",
    [
        ('{"optimizer": {"name": "sgd", "lr": %s}}', "optimizer.lr"),
        ('{"init": {"name": "normal", "std": %s}}', "init.std"),
        (
            '{"model": {"layers": [{"type": "leaky_relu", "slope": %s}, {"type": "flatten"}, {"type": "dense", "units": 7}]}}',
            "model.layers[0].slope",
        ),
        ('{"dataset": {"name": "shapes", "noise": %s}}', "dataset.noise"),
        ('{"steps": %s}', "steps"),
        ('{"init": {"name": "kernel", "kernels": [[[0, 1], [1, %s]]]}}', "init.kernels[0][1][1]"),
    ],
)
def test_nan_and_infinity_are_refused_wherever_a_number_is_taken(client, template, field, literal):
    """Python's json.dumps writes NaN/Infinity literals; they must be a 422, never a 500 or a run."""
    response = client.post("/api/runs", content=template % literal, headers={"content-type": "application/json"})
    assert_refused(response, field, "must be a finite number")
    assert_no_run_started(client)


def test_non_finite_numbers_in_query_parameters_are_refused(client):
    run_id = client.post("/api/runs", json={**LONG, "steps": 10}).json()["id"]
    for value in ("nan", "inf", "-inf", "1e999"):
        response = client.get(f"/api/runs/{run_id}/snapshots/0/filters.png", params={"scale": value})
        assert response.status_code == 422, (value, response.text)
        assert response.json()["message"].startswith("scale"), response.text


@pytest.mark.parametrize(
    "body,field",
    [
        ({"batch_size": "ten"}, "batch_size"),
        ({"batch_size": 8.5}, "batch_size"),
        ({"steps": True}, "steps"),
        ({"steps": [10]}, "steps"),
        ({"model": 5}, "model"),
        ({"model": {"layers": "conv"}}, "model"),
        ({"model": spec({**CONV, "filters": "8"})}, "model"),
        ({"init": 3}, "init"),
        ({"dataset": ["shapes"]}, "dataset"),
        ({"dataset": {"name": "shapes", "n_train": "all"}}, "dataset.n_train"),
        ({"optimizer": {"name": "sgd", "lr": "fast"}}, "optimizer.lr"),
        ({"name": 42}, "name"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_wrong_types_are_422_naming_the_field(client, body, field):
    response = client.post("/api/runs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(field), response.text
    assert_no_run_started(client)


@pytest.mark.parametrize("text", ['{"steps": 10', "{'steps': 10}", "steps=10", '{"steps": 10,}', "[1, 2", "\x00"])
def test_malformed_json_is_422_saying_where(client, text):
    response = client.post("/api/runs", content=text, headers={"content-type": "application/json"})
    assert_refused(response, "body", "not valid JSON")
    assert_no_run_started(client)


def test_deep_nesting_and_lone_surrogates_are_422(client):
    deep = '{"init": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert_refused(
        client.post("/api/runs", content=deep, headers={"content-type": "application/json"}),
        "body",
        f"more than {limits.MAX_JSON_DEPTH} levels",
    )
    shallow_but_deep = '{"init": ' + "[" * (limits.MAX_JSON_DEPTH + 2) + "]" * (limits.MAX_JSON_DEPTH + 2) + "}"
    assert_refused(
        client.post("/api/runs", content=shallow_but_deep, headers={"content-type": "application/json"}),
        "init",
        f"more than {limits.MAX_JSON_DEPTH} levels",
    )
    assert_refused(
        client.post("/api/runs", content='{"name": "\\ud800"}', headers={"content-type": "application/json"}),
        "name",
        "valid Unicode",
    )
    assert_no_run_started(client)


def test_huge_bodies_are_413_with_or_without_a_length(client):
    huge = b'{"name": "' + b"x" * limits.MAX_BODY_BYTES + b'"}'
    response = client.post("/api/runs", content=huge, headers={"content-type": "application/json"})
    assert_refused(response, "body", f"at most {limits.MAX_BODY_BYTES} bytes", status=413)

    def chunks():  # no Content-Length: the guard counts what arrives
        for _ in range(limits.MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    response = client.post("/api/runs", content=chunks(), headers={"content-type": "application/json"})
    assert_refused(response, "body", f"at most {limits.MAX_BODY_BYTES} bytes", status=413)
    assert_no_run_started(client)


@pytest.mark.parametrize("path", ["../../etc", "/etc", "mnist/../../../etc", "..", "./../x", "C:\\Windows", "a\x00b"])
def test_dataset_paths_cannot_leave_the_datasets_folder(client, path):
    response = client.post("/api/runs", json={"dataset": {"name": "mnist", "path": path}})
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith("dataset.path"), response.text
    assert_no_run_started(client)


@pytest.mark.parametrize(
    "url",
    [
        "/api/runs/..%2F..%2Fetc",
        "/api/runs/../../etc/passwd",
        "/api/runs/%2e%2e/snapshots",
        "/api/runs/abc/snapshots/..%2F1",
        "/api/runs/abc/snapshots/-1",
        "/api/runs/" + "a" * 65,
    ],
)
def test_traversal_in_urls_is_404_or_422(client, url):
    assert client.get(url).status_code in (404, 422)


@pytest.mark.parametrize("step", ["\u00b3", "\u0663", "1\u00b2", "\uff11"])  # ³, Arabic-Indic 3, 1², fullwidth 1
def test_a_step_must_be_ascii_digits_not_any_unicode_digit(client, step):
    run_id = client.post("/api/runs", json={"steps": 5, "snapshot_every": 5}).json()["id"]
    for url in (f"/api/runs/{run_id}/snapshots/{step}", f"/api/runs/{run_id}/snapshots/{step}/filters.png"):
        response = client.get(url)
        assert response.status_code == 422, response.text
        assert response.json()["message"].startswith("step: must be a non-negative integer"), response.text


def test_runs_beyond_the_slots_and_the_queue_are_429_naming_the_setting(client):
    first = client.post("/api/runs", json=LONG)
    second = client.post("/api/runs", json=LONG)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json()["status"] == "queued"
    third = client.post("/api/runs", json=LONG)
    assert third.status_code == 429, third.text
    assert "KERNELSCOPE_MAX_QUEUED" in third.json()["message"]
    for run in (first, second):
        client.post(f"/api/runs/{run.json()['id']}/stop")
