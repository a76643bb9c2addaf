"""Births of a conv layer's filters: the step from which each filter's detector score stays above chance.

GET /api/runs/{id}/layers/{layer}/births reads the detector entries every stored snapshot
already holds (score, chance, `dead`, and the `brightness` label that is not a detector) and
asks engine.analysis.birth_step, the one home of the rule, for each filter's birth. A dead or
brightness snapshot counts as not above chance. The page's filter cards and the layer timeline
show these steps; nothing of the rule lives in the page.

Per run the scores of every conv layer read so far are cached, so a live page asking again
every few seconds, layer by layer, reads each snapshot stored since once (its JSON only, not its arrays).
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, HTTPException, status

from app.deps import Run, StoreDep
from engine import analysis

router = APIRouter(prefix="/api/runs", tags=["explain"])

NOT_DETECTORS = {"dead", "brightness"}
_lock = threading.Lock()
# run -> {step: {conv layer index: (label, scores, chances)}}: every conv layer of a snapshot is
# read at once, so the page asking for each layer in turn reads each snapshot once
_cache: dict[str, dict[int, dict[int, tuple[str, list, list]]]] = {}
_CACHE_RUNS = 64


def _layer_rows(snapshot: dict) -> dict[int, tuple[str, list, list]]:
    """{conv layer index: (label, scores, chances)} of one snapshot's detector entries."""
    rows = {}
    for entry in snapshot.get("layers", []):
        if entry.get("type") == "conv":
            detectors = sorted(entry.get("detectors") or [], key=lambda d: d.get("filter", 0))
            scores = [None if d.get("dead") or d.get("label") in NOT_DETECTORS else d.get("score") for d in detectors]
            chances = [d.get("chance") for d in detectors]
            rows[entry.get("index")] = (entry.get("label") or f"layer {entry.get('index')}", scores, chances)
    return rows


@router.get(
    "/{run_id}/layers/{layer}/births",
    responses={404: {"description": "no such run, no snapshot yet, or no such conv layer"}},
)
def layer_births(store: StoreDep, run: Run, layer: int) -> dict:
    """Per filter of conv layer `layer`: its birth step (engine.analysis.birth_step over the
    detector scores of every stored snapshot), or null while it has none."""
    run_id = run["id"]
    steps = store.snapshot_steps(run_id)
    if not steps:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"step: run {run_id} has no snapshot yet")
    with _lock:
        known = dict(_cache.get(run_id) or {})
    for step in steps:
        if step not in known:
            snapshot = store.read_snapshot_without_arrays(run_id, step)
            if snapshot is not None:
                known[step] = _layer_rows(snapshot)
    with _lock:
        if len(_cache) >= _CACHE_RUNS and run_id not in _cache:
            _cache.pop(next(iter(_cache)))
        _cache[run_id] = known
    stored = [s for s in steps if s in known]
    if stored and layer not in known[stored[-1]]:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"layer: {layer} is not a conv layer of run {run_id}")
    rows = {s: known[s][layer] for s in stored if layer in known[s]}  # step -> (label, scores, chances)
    ordered = list(rows)
    label = rows[ordered[-1]][0] if ordered else None
    filters = max((len(rows[s][1]) for s in ordered), default=0)
    births = []
    for f in range(filters):
        scores = [rows[s][1][f] if f < len(rows[s][1]) else None for s in ordered]
        chances = [
            rows[s][2][f] if f < len(rows[s][2]) and rows[s][2][f] is not None else float("inf") for s in ordered
        ]
        births.append({"filter": f, "birth_step": analysis.birth_step(ordered, scores, chances)})
    return {
        "run_id": run_id,
        "layer": layer,
        "label": label,
        "persist": analysis.BIRTH_PERSIST,
        "last_step": ordered[-1] if ordered else None,
        "births": births,
    }
