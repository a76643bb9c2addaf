"""The server's parts on their own: settings, store, renderer, and the bounded event fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3

import numpy as np
import pytest

from app import render
from app.runs import MAX_PENDING_BATCHES, RunManager
from app.settings import Settings
from app.store import RunNotFound, Store, write_bytes_atomic, write_snapshot
from tests.app.conftest import make_settings

# ---------------------------------------------------------------- settings


def test_settings_defaults_and_environment():
    assert Settings.from_env({}) == Settings()
    assert (Settings().host, Settings().port) == ("127.0.0.1", 8000)
    settings = Settings.from_env(
        {
            "KERNELSCOPE_DATA": "/tmp/x",
            "KERNELSCOPE_PORT": "9000",
            "KERNELSCOPE_MAX_RUNS": "3",
            "KERNELSCOPE_TOKEN": "t",
        }
    )
    assert (str(settings.data_dir), settings.port, settings.max_runs, settings.token) == ("/tmp/x", 9000, 3, "t")
    assert Settings().worker_nice == 10 and Settings.from_env({"KERNELSCOPE_WORKER_NICE": "0"}).worker_nice == 0


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("KERNELSCOPE_PORT", "http", "expected an integer"),
        ("KERNELSCOPE_PORT", "70000", "between 0 and 65535"),
        ("KERNELSCOPE_MAX_RUNS", "0", "between 1 and"),
        ("KERNELSCOPE_WORKER_NICE", "20", "between 0 and 19"),
    ],
)
def test_bad_setting_names_the_variable(name, value, words):
    with pytest.raises(ValueError, match=f"{name}: .*{words}"):
        Settings.from_env({name: value})


# ---------------------------------------------------------------- store


def test_store_runs_round_trip_and_survive_reopening(tmp_path):
    store = Store(tmp_path)
    run = store.create_run({"steps": 5}, meta={"name": "a"})
    store.update_run(run["id"], status="running", step=3, metrics={"step": 3, "loss": 1.5})
    store.close()
    again = Store(tmp_path)
    stored = again.get_run(run["id"])
    assert (stored["status"], stored["step"], stored["metrics"]["loss"], stored["meta"]) == (
        "running",
        3,
        1.5,
        {"name": "a"},
    )
    with contextlib.closing(sqlite3.connect(tmp_path / "kernelscope.db")) as db:  # WAL is kept in the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError, match="status"):
        again.update_run(run["id"], status="sleeping")
    with pytest.raises(RunNotFound):
        again.get_run("nope")


def test_event_sequence_numbers_only_grow(tmp_path):
    store = Store(tmp_path)
    run_id = store.create_run({})["id"]
    assert store.next_seq(run_id) == 1
    assert store.next_seq(run_id, 2) == 2
    assert store.next_seq(run_id) == 4


def test_metrics_replace_a_retrained_step_and_replay_by_sequence(tmp_path):
    store = Store(tmp_path)
    run_id = store.create_run({})["id"]
    store.add_metrics(run_id, [{"step": 1, "loss": 2.0, "acc": 0.1}, {"step": 2, "loss": 1.9, "acc": 0.2}], seq=5)
    store.add_metrics(run_id, [{"step": 3, "loss": float("nan"), "acc": 0.3, "val_acc": 0.25}], seq=8)
    store.truncate_metrics(run_id, after_step=2)  # a resume from the step-2 checkpoint
    store.add_metrics(run_id, [{"step": 3, "loss": 1.7, "acc": 0.3}], seq=9)
    assert store.metrics(run_id) == [
        {"step": 1, "loss": 2.0, "acc": 0.1},
        {"step": 2, "loss": 1.9, "acc": 0.2},
        {"step": 3, "loss": 1.7, "acc": 0.3},
    ]
    assert [seq for seq, _ in store.metrics_between_seq(run_id, 5, 100)] == [9]


def test_snapshot_files_split_feature_maps_and_reassemble(tmp_path):
    snapshot = {"step": 7, "layers": [{"index": 0, "weight": [[[[1.0]]]], "feature_maps": [[[[0.5]]]]}]}
    write_snapshot(tmp_path, "r1", snapshot, {"0.weight": np.ones((1, 1, 1, 1), np.float32)})
    store = Store(tmp_path)
    assert store.snapshot_steps("r1") == [7]
    assert store.read_snapshot("r1", 7) == snapshot
    assert "feature_maps" not in json.loads(store.read_snapshot_text("r1", 7))["layers"][0]
    assert store.read_snapshot_params("r1", 7)["0.weight"].shape == (1, 1, 1, 1)
    assert store.read_snapshot("r1", 8) is None


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.json"
    write_bytes_atomic(path, b"old")

    with pytest.raises(TypeError):
        write_bytes_atomic(path, object())  # fails mid-write
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.json"]  # no temp file left behind


def test_delete_run_removes_rows_and_folder(tmp_path):
    store = Store(tmp_path)
    run_id = store.create_run({})["id"]
    store.add_metrics(run_id, [{"step": 1, "loss": 1.0}], seq=1)
    write_snapshot(tmp_path, run_id, {"step": 0, "layers": []}, {})
    store.delete_run(run_id)
    assert not store.run_dir(run_id).exists()
    assert store.metrics(run_id) == []
    with pytest.raises(RunNotFound):
        store.get_run(run_id)


# ---------------------------------------------------------------- renderer


def test_colormap_is_white_at_zero_and_diverges_by_sign():
    colours = render.diverging_rgb(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]), scale=1.0)
    assert tuple(colours[2]) == (247, 247, 247)
    assert colours[1][2] > colours[1][0]  # negative: blue
    assert colours[4][0] > colours[4][2]  # positive: red
    assert (colours[0] == colours[1]).all() and (colours[5] == colours[4]).all()  # saturates at ±scale
    assert colours[3][1] > colours[4][1]  # half-way is lighter than full
    with pytest.raises(ValueError, match="scale"):
        render.diverging_rgb(np.zeros(2), scale=0)


def test_filter_grid_lays_out_filters_and_channels():
    weight = np.zeros((5, 2, 3, 3))
    weight[4, 1, 0, 0] = 1.0
    image = render.filter_grid(weight, pixel=2, gap=1)
    rows, cols = render.grid_shape(5)
    assert (rows, cols) == (2, 3)
    block_w = 2 * 3 * 2 + 1
    assert image.size == (cols * block_w + (cols + 1) * 2, rows * 6 + (rows + 1) * 2)
    pixels = np.asarray(image)
    # filter 4 sits in row 1, col 1; its channel 1 starts after channel 0 and a gap
    top, left = 2 + 1 * (6 + 2), 2 + 1 * (block_w + 2) + (6 + 1)
    assert tuple(pixels[top, left]) == (103, 0, 31)  # the +1 weight, darkest red at auto scale
    assert tuple(pixels[top, left - 7]) == (247, 247, 247)  # channel 0 is zero: white
    assert render.png_bytes(image)[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_zero_layer_draws_white_not_nan():
    pixels = np.asarray(render.filter_grid(np.zeros((1, 1, 2, 2)), pixel=1, gap=0))
    assert (pixels == 247).all()


# ---------------------------------------------------------------- event fan-out


def test_a_slow_viewer_has_bounded_state_and_still_gets_every_point(tmp_path):
    store = Store(tmp_path)
    manager = RunManager(make_settings(tmp_path), store)
    run_id = store.create_run({"steps": 5000}, status="running")["id"]
    channel = manager.channel(run_id)

    async def scenario():
        stream = manager.stream(run_id, None)
        first = await stream.__anext__()
        assert first.kind == "status"
        (subscription,) = channel.subscribers
        # the viewer reads nothing while 500 batches of 10 points arrive
        for batch in range(500):
            channel.record(("metrics", [{"step": batch * 10 + i + 1, "loss": 1.0, "acc": 0.5} for i in range(10)]))
            assert len(subscription.pending) <= MAX_PENDING_BATCHES
        channel.record(("status", "completed", 5000, None))
        steps, ids, last_status = [], [first.seq], None
        while last_status != "completed":
            event = await stream.__anext__()
            ids.append(event.seq)
            assert event.wire.startswith(f"event: {event.kind}\n".encode())
            if event.kind == "metrics":
                steps += [p["step"] for p in json.loads(event.data)["points"]]
            elif event.kind == "status":
                last_status = json.loads(event.data)["status"]
        await stream.aclose()
        return steps, ids

    steps, ids = asyncio.run(scenario())
    assert steps == list(range(1, 5001))
    assert ids == sorted(set(ids))
    assert not channel.subscribers  # closing the stream unsubscribes


def test_reconnecting_viewer_gets_missed_metrics_before_status(tmp_path):
    store = Store(tmp_path)
    manager = RunManager(make_settings(tmp_path), store)
    run_id = store.create_run({}, status="running")["id"]
    channel = manager.channel(run_id)
    channel.record(("metrics", [{"step": 1, "loss": 1.0}]))
    seen = store.get_run(run_id)["event_seq"]
    channel.record(("metrics", [{"step": 2, "loss": 0.9}]))
    channel.record(("metrics", [{"step": 3, "loss": 0.8}]))

    async def scenario():
        stream = manager.stream(run_id, seen)
        items = [await stream.__anext__() for _ in range(2)]
        await stream.aclose()
        return items

    items = asyncio.run(scenario())
    assert [event.kind for event in items] == ["metrics", "status"]  # missed batches come as one event
    assert [p["step"] for p in json.loads(items[0].data)["points"]] == [2, 3]
    assert seen < items[0].seq < items[1].seq
