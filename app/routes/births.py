"""Births of a conv layer's filters: the step from which each filter's detector score stays above chance.

GET /api/runs/{id}/layers/{layer}/births reads the detector entries every stored snapshot
already holds (score, chance, `dead`, and the `brightness` label that is not a detector) and
asks engine.analysis.birth_step, the one home of the rule, for each filter's birth. A dead or
brightness snapshot counts as not above chance. The page's filter cards and the layer timeline
show these steps; nothing of the rule lives in the page.

Per (run, layer) the scores read so far are cached, so a live page asking again every few
seconds reads only the snapshots stored since.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, HTTPException, status

from app.deps import Run, StoreDep
from engine import analysis

router = APIRouter(prefix="/api/runs", tags=["explain"])

NOT_DETECTORS = {"dead", "brightness"}
_lock = threading.Lock()
_cache: dict[tuple[str, int], dict] = {}  # (run, layer) -> {"label", "filters", "rows": {step: (scores, chances)}}
_CACHE_RUNS = 64


def _layer_row(snapshot: dict, layer: int) -> tuple[str, list, list] | None:
    for entry in snapshot.get("layers", []):
        if entry.get("index") == layer and entry.get("type") == "conv":
            detectors = sorted(entry.get("detectors") or [], key=lambda d: d.get("filter", 0))
            scores = [None if d.get("dead") or d.get("label") in NOT_DETECTORS else d.get("score") for d in detectors]
            chances = [d.get("chance") for d in detectors]
            return entry.get("label") or f"layer {layer}", scores, chances
    return None


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
        known = _cache.get((run_id, layer)) or {"label": None, "rows": {}}
    rows = dict(known["rows"])
    label = known["label"]
    for step in steps:
        if step in rows:
            continue
        snapshot = store.read_snapshot(run_id, step, feature_maps=False)
        if snapshot is None:
            continue
        row = _layer_row(snapshot, layer)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"layer: {layer} is not a conv layer of run {run_id}")
        label, scores, chances = row
        rows[step] = (scores, chances)
    with _lock:
        if len(_cache) >= _CACHE_RUNS and (run_id, layer) not in _cache:
            _cache.pop(next(iter(_cache)))
        _cache[(run_id, layer)] = {"label": label, "rows": rows}
    ordered = [s for s in steps if s in rows]
    filters = max((len(rows[s][0]) for s in ordered), default=0)
    births = []
    for f in range(filters):
        scores = [rows[s][0][f] if f < len(rows[s][0]) else None for s in ordered]
        chances = [
            rows[s][1][f] if f < len(rows[s][1]) and rows[s][1][f] is not None else float("inf") for s in ordered
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
