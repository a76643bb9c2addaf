"""Guided lessons that ask before they show: data only, the one home of every lesson.

A lesson is a question about how conv kernels are initialized, answered by the learner
*before* training; the runs that answer it (one comparison: a base config and the inits that
differ); and a reveal: which measure of which run holds the answer, and where on the page it
shows (the symmetry meter, a chart, a filter's explanation). Nothing here is a result: every
number a reveal shows is measured in the learner's own runs.

Keys of a lesson (served as-is by GET /api/lessons, app/routes/lessons.py):
  id, title, question, choices [{id, text, range?: [lo, hi]}], expected (the choice the
  literature predicts), why (the explanation shown with the measured numbers),
  runs: {"base": run config, "inits": [init, ...]} or {"demo": name of a served demo config},
  measure: {"kind", "run" (index into the inits), "layer" (conv order: 0 = conv1), ...}
    kinds: "symmetry" (the layer's mean pairwise filter cosine, first and last snapshot),
           "val_accuracy" (the last validation accuracy), "detector_share" (share of the
           layer's filters whose detector score beats chance, from the layer summary),
           "relative_change" (‖W − W₀‖/‖W₀‖ of one filter at the last snapshot, from its
           explanation);
  a choice's `range` says which measured values agree with it, so the reveal can tell
  which choice the run supports;
  point_at: {"run": index, "target": "symmetry" | "chart-acc" | "chart-act" | "explain",
             "layer", "filter"?}: what the reveal opens and highlights;
  keeps: the page's views the lesson needs (every other control is hidden).
"""

from __future__ import annotations

HANDMADE_KERNELS = ["x", "plus", "sobel_x", "sobel_y", "laplacian", "identity"]

# Short runs of the demo net on the generated shapes: a lesson answers in about a minute.
_SHAPES_BASE = {
    "model": "demo",
    "dataset": "shapes",
    "batch_size": 32,
    "steps": 300,
    "snapshot_every": 10,
    "eval_every": 50,
    "seed": 0,
}

LESSONS: list[dict] = [
    {
        "id": "symmetry",
        "title": "Why random? All-zero and constant kernels",
        "question": "Every conv kernel starts at the same value: all zeros in one run, all 0.1 in another "
        "(a third starts from random He-normal kernels). After training, what are the 8 conv1 "
        "filters of the constant run?",
        "choices": [
            {
                "id": "different",
                "text": "8 different edge and X detectors: training breaks the tie",
                "range": [-1.0, 0.9],
            },
            {"id": "similar", "text": "Somewhat alike, but no longer copies", "range": [0.9, 0.999]},
            {
                "id": "identical",
                "text": "8 copies of one filter: equal filters get equal gradients, "
                "so they never become different (zeros even stay zero)",
                "range": [0.999, 1.0001],
            },
        ],
        "expected": "identical",
        "why": "A conv layer's filters are interchangeable: if they start equal, each receives the same "
        "gradient and they move together forever. Random init breaks this symmetry; mean zero keeps "
        "the layer's output centred.",
        "runs": {"base": _SHAPES_BASE, "inits": ["zeros", {"name": "constant", "value": 0.1}, "he_normal"]},
        "measure": {
            "kind": "symmetry",
            "run": 1,
            "layer": 0,
            "text": "mean pairwise cosine similarity of the conv1 filters (1.0 = all identical)",
        },
        "point_at": {"run": 1, "target": "symmetry", "layer": 0},
        "keeps": ["live"],
    },
    {
        "id": "scale",
        "title": "Why this variance? N(0, 0.01²) vs Glorot vs He in a deep net",
        "question": "A plain 20-layer ReLU net (the deep preset) starts once from N(0, 0.01²), once from "
        "Glorot (variance 2/(fan_in+fan_out)) and once from He (variance 2/fan_in). Within "
        "300 steps, what does the N(0, 0.01²) run reach?",
        "choices": [
            {
                "id": "chance",
                "text": "It stays near chance: the signal shrinks in every layer and the "
                "gradient vanishes before it reaches conv1",
                "range": [0.0, 0.2],
            },
            {"id": "slower", "text": "It learns, only more slowly than He", "range": [0.2, 0.6]},
            {"id": "same", "text": "It learns as well as He: small weights are safe", "range": [0.6, 1.0]},
        ],
        "expected": "chance",
        "why": "Each ReLU conv layer multiplies the activation variance by about fan_in·σ²/2. He picks σ² = "
        "2/fan_in so that factor is 1 (He et al. 2015); Glorot keeps it near 1 for linear layers "
        "(Glorot & Bengio 2010). With σ = 0.01 and the fans of these 3×3 layers the factor is far "
        "below 1: after 20 layers almost nothing is left of the input, and of the gradient.",
        "runs": {"demo": "depth_stall"},
        "measure": {"kind": "val_accuracy", "run": 2, "text": "validation accuracy of the N(0, 0.01²) run"},
        "point_at": {"run": 2, "target": "chart-act"},
        "keeps": ["live"],
    },
    {
        "id": "detectors",
        "title": "From random to detectors",
        "question": "conv1 starts from random He-normal kernels and trains on the shapes (lines, X, plus, "
        "circles...). At the end, what share of its 8 filters match an edge, X, plus or blob "
        "template better than 99% of random kernels do?",
        "choices": [
            {"id": "none", "text": "None: they stay random-looking", "range": [0.0, 0.01]},
            {"id": "some", "text": "Some of them: a few become detectors", "range": [0.01, 0.75]},
            {"id": "most", "text": "Most or all of them", "range": [0.75, 1.0001]},
        ],
        "expected": "some",
        "why": "Nothing tells a filter to become an edge detector: gradient descent pulls each random kernel "
        "towards whatever pattern helps the loss, and oriented edges and X shapes are what tells "
        "these classes apart. The explanation panel shows which image patches now excite it most.",
        "runs": {"base": _SHAPES_BASE, "inits": ["he_normal"]},
        "measure": {
            "kind": "detector_share",
            "run": 0,
            "layer": 0,
            "text": "share of conv1 filters whose detector score beats chance",
        },
        "point_at": {"run": 0, "target": "explain", "layer": 0, "filter": "best"},
        "keeps": ["live"],
    },
    {
        "id": "handmade",
        "title": "Hand-made kernels vs learned ones",
        "question": "conv1 starts with hand-made kernels: an X, a plus, Sobel x and y, a Laplacian and the "
        "identity (the other filters random), trained on the marks (small x and + glyphs). "
        "At the end, the X kernel (filter 0) has...",
        "choices": [
            {"id": "kept", "text": "stayed almost as drawn (changed by less than 25%)", "range": [0.0, 0.25]},
            {"id": "adjusted", "text": "been adjusted but kept its shape (25% to 100%)", "range": [0.25, 1.0]},
            {
                "id": "rewritten",
                "text": "been rewritten into something else (changed by more than 100%)",
                "range": [1.0, 1.0e9],
            },
        ],
        "expected": "kept",
        "why": "A hand-made kernel that already detects what the classes differ in gets small gradients, so "
        "training keeps it; kernels that do not help are rewritten. Compare the filter's trajectory "
        "with those of the random filters beside it.",
        "runs": {
            "base": {**_SHAPES_BASE, "dataset": "marks"},
            "inits": [{"name": "kernel", "kernels": HANDMADE_KERNELS, "fallback": "he_normal"}, "he_normal"],
        },
        "measure": {
            "kind": "relative_change",
            "run": 0,
            "layer": 0,
            "filter": 0,
            "text": "‖W − W₀‖ / ‖W₀‖ of the X kernel (conv1 filter 0) at the last step",
        },
        "point_at": {"run": 0, "target": "explain", "layer": 0, "filter": 0},
        "keeps": ["live"],
    },
]

LESSON_IDS = [lesson["id"] for lesson in LESSONS]
