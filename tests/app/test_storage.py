"""The compact snapshot format (app/storage.py): it answers exactly what the earlier format
answered, it stays small, runs written in the earlier format are still served, and a damaged
file of either is an error naming run, step and file.

The earlier format's writer is kept below verbatim (as app/store.py had it) to write the
old-format fixtures from real training snapshots.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from app import limits
from app import store as files
from app.storage import DamagedFile, LocalStorage, SnapshotContext, decode_map, encode_map, recomputed_maps
from app.worker import build_trainer, drive_run
from engine import analysis
from engine.analyst import FEATURE_MAP_DIGITS
from engine.trainer import RunConfig, Trainer, TrainingControl, snapshot_steps
from tests.app.conftest import TINY

# ---------------------------------------------------------------- the earlier format's writer


def legacy_write_snapshot(data_dir, run_id, snapshot, params, feature_maps=None) -> int:
    """app/store.py's write_snapshot before the compact format: JSON without feature maps,
    the maps as float32 arrays, params as npz."""
    folder = files.snapshot_dir(data_dir, run_id)
    step = int(snapshot["step"])
    light = dict(snapshot)
    light_layers = []
    maps = {} if feature_maps is None else {str(k): np.asarray(v, np.float32) for k, v in feature_maps.items()}
    for layer in snapshot.get("layers", []):
        layer = dict(layer)
        if "feature_maps" in layer:
            values = layer.pop("feature_maps")
            maps.setdefault(str(layer.get("index")), np.asarray(values, dtype=np.float32))
        light_layers.append(layer)
    light["layers"] = light_layers
    files.write_npz_atomic(folder / f"{step}.npz", params)
    files.write_npz_atomic(folder / f"{step}.maps.npz", maps)
    files.write_json_atomic(folder / f"{step}.json", light)
    return step


def training_snapshots(config: dict, count: int):
    """(trainer, [(snapshot, params, maps)]) of `count` consecutive training steps."""
    trainer = Trainer(RunConfig.from_dict(config))
    taken = []
    for _ in range(count):
        snapshot, params = trainer.snapshot(feature_maps=False)
        taken.append((snapshot, params, analysis.feature_maps(trainer.model, trainer.dataset.probe_x)))
        trainer.train_step()
    return trainer, taken


def same_json(a, b) -> bool:
    """Equal as JSON text: also tells -0.0 from 0.0 and keeps the key order."""
    return json.dumps(a) == json.dumps(b)


# ---------------------------------------------------------------- the same answers


def without(entry: dict, *names: str) -> dict:
    return {key: value for key, value in entry.items() if key not in names}


def test_compact_snapshots_answer_exactly_what_the_earlier_format_answered(tmp_path):
    trainer, taken = training_snapshots({**TINY, "model": "demo"}, 6)
    context = SnapshotContext(trainer.spec, trainer.dataset.probe_x)
    compact = LocalStorage(tmp_path / "compact")
    for snapshot, params, maps in taken:
        legacy_write_snapshot(tmp_path / "legacy", "r", snapshot, params, maps)
        compact.write_snapshot("r", snapshot, params, maps, context)
    legacy = LocalStorage(tmp_path / "legacy")
    steps = [snapshot["step"] for snapshot, _, _ in taken]
    assert legacy.snapshot_steps("r") == compact.snapshot_steps("r") == steps
    for step in steps:
        assert same_json(compact.read_snapshot("r", step), legacy.read_snapshot("r", step))
        assert same_json(compact.read_snapshot("r", step, False), legacy.read_snapshot("r", step, False))
        assert compact.read_snapshot_text("r", step) == legacy.read_snapshot_text("r", step)
        # without the probe images (what event streams and the births route read): the rest, as it is
        whole = compact.read_snapshot("r", step, False)
        rest = {key: value for key, value in whole.items() if key != "probes"}
        assert "probes" in whole
        for storage in (compact, legacy):
            assert same_json(storage.read_snapshot("r", step, False, probes=False), rest)
            assert same_json(json.loads(storage.read_snapshot_text("r", step, probes=False)), rest)
            # without any array (what the births and summary routes read of every snapshot)
            light = storage.read_snapshot_without_arrays("r", step)
            assert light.keys() == rest.keys()
            assert same_json(light["layers"], [without(layer, "weight", "bias") for layer in rest["layers"]])
            assert same_json(without(light, "layers"), without(rest, "layers"))
        old, new = legacy.read_snapshot_params("r", step), compact.read_snapshot_params("r", step)
        assert list(old) == list(new)
        for name in old:
            assert new[name].dtype == old[name].dtype and np.array_equal(new[name], old[name])
        assert compact.snapshot_files("r", step).keys() == legacy.snapshot_files("r", step).keys()
    # what was left out really is left out: one file a step, probe images once per run
    stored = json.loads(np.load(compact.snapshot_path("r", steps[-1]))["snapshot.json"].tobytes())
    assert stored["probes"] is None and all(layer["weight"] is None for layer in stored["layers"])
    assert stored["stored"]["maps"] == "recomputed"
    assert sorted(p.name for p in compact.snapshot_dir("r").iterdir()) == sorted(
        f"{step}.snapshot.npz" for step in steps
    )


def test_snapshots_without_context_are_stored_whole_and_answer_the_same(tmp_path):
    """No probe images and spec (a caller that has none): the maps are plain codes, the JSON whole."""
    _, taken = training_snapshots(TINY, 2)
    snapshot, params, maps = taken[-1]
    legacy_write_snapshot(tmp_path / "legacy", "r", snapshot, params, maps)
    files.write_snapshot(tmp_path / "compact", "r", snapshot, params, maps)
    step = snapshot["step"]
    assert same_json(
        files.read_snapshot(tmp_path / "compact", "r", step), files.read_snapshot(tmp_path / "legacy", "r", step)
    )
    stored = json.loads(np.load(LocalStorage(tmp_path / "compact").snapshot_path("r", step))["snapshot.json"].tobytes())
    assert stored["stored"] == {"format": 2, "probes": False, "weights": [0, 3], "maps": "codes"}
    assert not LocalStorage(tmp_path / "compact").context_path("r").exists()


def map_cases():
    rng = np.random.default_rng(7)
    yield rng.standard_normal((4, 3, 6, 6)) * 3.7
    yield rng.standard_normal((2, 2, 5, 5)) * 1e-11  # decimals capped at 12
    yield rng.standard_normal((2, 2, 5, 5)) * 5e4  # decimals 0, codes beyond int16
    yield np.zeros((1, 2, 3, 3))
    small = rng.standard_normal((2, 3, 4, 4))
    small[0, 0, :2] = -1e-7  # rounds to -0.0
    small[1, 2, 3, 3] = -0.0
    yield small
    broken = rng.standard_normal((2, 2, 4, 4))
    broken[0, 1, 2, 2], broken[1, 0, 0, 0], broken[1, 1, 1, 1] = np.nan, np.inf, -np.inf
    yield broken
    yield rng.standard_normal((1, 1, 3, 3)) * 1e30  # codes not exact in float64: kept as float32


@pytest.mark.parametrize("case", range(7))
@pytest.mark.parametrize("prediction", ["none", "exact", "off"])
def test_a_map_decodes_to_exactly_what_rounded_serves(case, prediction):
    values = np.asarray(list(map_cases())[case], dtype=np.float32)
    rng = np.random.default_rng(case)
    predicted = {
        "none": None,
        "exact": values.astype(np.float64),
        "off": values.astype(np.float64) * (1 + 1e-3 * rng.standard_normal(values.shape)),
    }[prediction]
    parts = encode_map(values, predicted)
    served = analysis.rounded(values, FEATURE_MAP_DIGITS)
    assert same_json(decode_map(parts, predicted), served)
    # through an npz, as stored
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **parts)
    buffer.seek(0)
    with np.load(buffer) as loaded:
        assert same_json(decode_map({name: loaded[name] for name in loaded.files}, predicted), served)


def test_the_recomputed_maps_are_the_trained_maps_to_far_below_the_served_precision():
    trainer, taken = training_snapshots({**TINY, "model": "demo"}, 3)
    _, params, maps = taken[-1]
    again = recomputed_maps(trainer.spec, params, trainer.dataset.probe_x)
    assert again.keys() == maps.keys()
    for index, values in maps.items():
        scale = float(np.max(np.abs(values)))
        assert np.max(np.abs(again[index] - values)) < 1e-5 * scale


# ---------------------------------------------------------------- old runs still served


def test_a_run_written_in_the_earlier_format_is_served_as_before(client, data_dir):
    """Two runs holding the same snapshots, one in each format: every snapshot answer, the
    export's files and a resumed write agree."""
    trainer, taken = training_snapshots({**TINY, "model": "demo"}, 3)
    store = client.app.state.store
    legacy_id = store.create_run(trainer.config.to_dict(), status="completed")["id"]
    compact_id = store.create_run(trainer.config.to_dict(), status="completed")["id"]
    context = SnapshotContext(trainer.spec, trainer.dataset.probe_x)
    for snapshot, params, maps in taken:
        legacy_write_snapshot(data_dir, legacy_id, snapshot, params, maps)
        files.write_snapshot(data_dir, compact_id, snapshot, params, maps, context)
    steps = [snapshot["step"] for snapshot, _, _ in taken]
    for run_id in (legacy_id, compact_id):
        assert client.get(f"/api/runs/{run_id}/snapshots").json()["steps"] == steps
    for step in steps:
        for query in ("", "?feature_maps=false"):
            old = client.get(f"/api/runs/{legacy_id}/snapshots/{step}{query}")
            new = client.get(f"/api/runs/{compact_id}/snapshots/{step}{query}")
            assert old.status_code == new.status_code == 200
            assert old.content == new.content
        old_png = client.get(f"/api/runs/{legacy_id}/snapshots/{step}/filters.png")
        assert old_png.content == client.get(f"/api/runs/{compact_id}/snapshots/{step}/filters.png").content
    # a new snapshot of the old run is stored compactly and replaces nothing else
    snapshot, params, maps = taken[-1]
    later = {**snapshot, "step": 99}
    files.write_snapshot(data_dir, legacy_id, later, params, maps, context)
    assert files.snapshot_steps(data_dir, legacy_id) == [*steps, 99]
    assert same_json(files.read_snapshot(data_dir, legacy_id, 99)["layers"], snapshot_layers_with_maps(snapshot, maps))


def snapshot_layers_with_maps(snapshot, maps):
    layers = [dict(layer) for layer in snapshot["layers"]]
    for layer in layers:
        layer["feature_maps"] = analysis.rounded(maps[layer["index"]], FEATURE_MAP_DIGITS)
    return layers


def test_a_damaged_file_of_the_earlier_format_is_still_named(tmp_path):
    _, taken = training_snapshots(TINY, 1)
    snapshot, params, maps = taken[0]
    legacy_write_snapshot(tmp_path, "r", snapshot, params, maps)
    path = files.snapshot_dir(tmp_path, "r") / "0.json"
    path.write_text(path.read_text()[:100])
    with pytest.raises(DamagedFile, match=r"run r step 0: the stored file 0.json is damaged"):
        files.read_snapshot_text(tmp_path, "r", 0)


# ---------------------------------------------------------------- damaged compact files


@pytest.fixture
def compact_run(tmp_path):
    trainer, taken = training_snapshots({**TINY, "model": "demo"}, 2)
    storage = LocalStorage(tmp_path)
    for snapshot, params, maps in taken:
        storage.write_snapshot("r", snapshot, params, maps, SnapshotContext(trainer.spec, trainer.dataset.probe_x))
    return storage, taken[-1][0]["step"]


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("how", ["cut", "garble"])
def test_a_damaged_compact_snapshot_is_a_damaged_file_for_every_read(compact_run, where, how):
    storage, step = compact_run
    path = storage.snapshot_path("r", step)
    data = bytearray(path.read_bytes())
    at = int(len(data) * where)
    if how == "cut":
        del data[at:]
    else:
        for i in range(at, min(at + 16, len(data))):
            data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    reads = (
        lambda: storage.read_snapshot("r", step),
        lambda: storage.read_snapshot("r", step, feature_maps=False),
        lambda: storage.read_snapshot_text("r", step),
        lambda: storage.read_snapshot_params("r", step),
    )
    for read in reads:
        with pytest.raises(DamagedFile, match=rf"run r step {step}: the stored file {step}.snapshot.npz is damaged"):
            read()
    assert storage.read_snapshot("r", step - 1) is not None  # the other snapshots still read


def test_a_compact_snapshot_whose_json_is_not_a_snapshot_is_damaged(compact_run):
    storage, step = compact_run
    path = storage.snapshot_path("r", step)
    members = dict(np.load(path))  # a whole zip whose JSON member is replaced
    members["snapshot.json"] = np.frombuffer(b'{"step": 12345, "layers": []', dtype=np.uint8)
    np.savez_compressed(path, **members)
    with pytest.raises(DamagedFile, match="not valid JSON"):
        storage.read_snapshot("r", step)
    members["snapshot.json"] = np.frombuffer(b'{"step": 12345, "layers": []}', dtype=np.uint8)
    np.savez_compressed(path, **members)
    with pytest.raises(DamagedFile, match="not a snapshot of this step"):
        storage.read_snapshot_text("r", step)
    with pytest.raises(DamagedFile, match="not a snapshot of this step"):
        storage.read_snapshot_without_arrays("r", step)


def test_damaged_probe_images_name_the_snapshot_being_read(compact_run):
    storage, step = compact_run
    path = storage.context_path("r")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DamagedFile, match=rf"run r step {step}: the stored file snapshot_context.npz is damaged"):
        storage.read_snapshot("r", step, feature_maps=False)
    assert storage.read_snapshot_params("r", step) is not None  # the parameters do not need them


def test_a_snapshot_whose_run_is_deleted_while_it_is_read_is_absent_not_damaged(compact_run, monkeypatch):
    """DELETE of a run while the page reads one of its snapshots: the snapshot's file was read,
    then the folder went, and with it the probe images the snapshot refers to. The reader answers
    as for any absent snapshot (None: 404), not as for a damaged one (500)."""
    storage, step = compact_run
    assert storage.read_snapshot("r", step, feature_maps=False) is not None  # the context is cached now
    read_compact = storage._read_compact

    def read_then_delete(run_id, at):
        found = read_compact(run_id, at)
        storage.delete_run(run_id)
        return found

    monkeypatch.setattr(storage, "_read_compact", read_then_delete)
    assert storage.read_snapshot("r", step) is None
    assert storage.read_snapshot_text("r", step) is None


def test_probe_images_missing_from_a_run_that_is_still_there_are_damage(compact_run):
    storage, step = compact_run
    storage.context_path("r").unlink()
    with pytest.raises(DamagedFile, match="the run's probe images are missing"):
        storage.read_snapshot("r", step, feature_maps=False)
    with pytest.raises(DamagedFile, match="the run's probe images are missing"):
        storage.read_snapshot_text("r", step)


# ---------------------------------------------------------------- how much a run stores

MAX_DEFAULT_RUN_BYTES = 10_000_000  # issue 21: the default run stores 10 MB or less


@pytest.mark.parametrize("model", ["demo", "medium"])
def test_the_default_run_stores_at_most_10_mb_and_the_estimate_follows_the_real_size(tmp_path, model):
    """The default config (model "demo") and the wider "medium" preset, shortened to 10 steps
    (the full 3000 take minutes here): the largest snapshot file times the default schedule's
    snapshot count (337), plus the probe images, the monitor batch and the checkpoint (with room for the 2000
    metric points it keeps at the end), is the full run's size. Snapshots of a longer run hold
    the same arrays (their values change, not their count). For the default run it is <= 10 MB;
    app/limits.py's estimate at POST is above it, by less than a third."""
    full = RunConfig.from_dict({"model": model})
    short = RunConfig.from_dict({"model": model, "steps": 10})
    trainer = build_trainer(tmp_path, "r", short)
    assert (
        drive_run(trainer, tmp_path, "r", lambda message: None, TrainingControl(), checkpoint_every=10) == "completed"
    )
    storage = LocalStorage(tmp_path)
    assert storage.snapshot_steps("r") == snapshot_steps(short)
    largest = max(storage.snapshot_path("r", step).stat().st_size for step in storage.snapshot_steps("r"))
    sizes = storage.sizes("r")
    assert sizes["legacy_snapshots"] == sizes["other"] == 0
    recent_points = 2000 * 120  # CHECKPOINT_POINTS_KEPT points of about 120 bytes, before deflate
    projected = largest * len(snapshot_steps(full)) + sizes["context"] + sizes["monitor"] + sizes["checkpoint"]
    projected += recent_points
    if model == "demo":
        assert full.to_dict() == RunConfig.from_dict({}).to_dict()
        assert projected <= MAX_DEFAULT_RUN_BYTES
    estimate = limits.estimate_run_storage(full.to_dict())
    assert projected <= estimate <= 4 / 3 * projected
