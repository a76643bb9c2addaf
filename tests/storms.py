"""Storms a real server must weather: the stored runs they hit and how the server's memory is read.

The render storm's run has a wide second conv layer (64 filters over 64 channels, 5×5) and
enough snapshots that its evolution GIF is as large as the limits allow (limits.MAX_GIF_PIXELS),
and its export carries every snapshot. The snapshots are real Trainer snapshots of that model,
the weights drifting a little each step, written by the store as a training run writes them.
tests/app/test_render_storm.py and benchmarks/render_storm.py share it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WIDE_MODEL = {
    "input": [1, 28, 28],
    "layers": [
        {"type": "conv", "filters": 64, "kernel": 5},
        {"type": "relu"},
        {"type": "conv", "filters": 64, "kernel": 5},
        {"type": "relu"},
        {"type": "maxpool", "size": 4},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ],
}
WIDE_LAYER = 2  # the spec index of the wide conv layer
WIDE_RUN = {
    "model": WIDE_MODEL,
    "dataset": {"name": "shapes", "n_train": 64, "n_val": 16},
    "batch_size": 4,
    "steps": 1000,
    "snapshot_every": 1,
    "eval_every": 1000,
}


def seed_wide_run(data_dir: Path, snapshots: int = 60) -> str:
    """A completed run of WIDE_MODEL with `snapshots` stored snapshots (steps 0 .. snapshots-1)."""
    from app.store import Store, write_snapshot
    from app.worker import EVENT_ID_STRIDE
    from engine.trainer import RunConfig, Trainer

    config = RunConfig.from_dict(WIDE_RUN)
    trainer = Trainer(config)
    snapshot, params = trainer.snapshot()
    store = Store(data_dir)
    run_id = store.create_run(config.to_dict(), status="completed")["id"]
    rng = np.random.default_rng(0)
    for step in range(snapshots):
        params = {name: value + rng.normal(0, 0.002, value.shape).astype(value.dtype) for name, value in params.items()}
        write_snapshot(store.data_dir, run_id, {**snapshot, "step": step}, params)
        seq = store.next_seq(run_id, EVENT_ID_STRIDE)
        store.add_metrics(run_id, [{"step": step, "loss": 2.3 - step / 100, "acc": 0.1}], seq)
    store.update_run(run_id, step=snapshots - 1)
    store.close()
    return run_id


def memory_mib(pid: int) -> dict[str, float]:
    """The process's resident memory now (VmRSS) and at its peak so far (VmHWM), in MiB."""
    figures = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                figures[key] = int(value.split()[0]) / 1024
    return figures
