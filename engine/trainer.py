"""Training: a run's config and the step-wise loop a server or CLI drives.

`RunConfig` is the complete, validated description of a run (every default
filled in). `Trainer` builds dataset, model and optimizer from it and exposes
one step at a time (`train_step`, `evaluate`, `snapshot`), checkpoints that
resume bit-identically, kernel overwrites with optional freezing, and `run`, a
loop that reports through an `emit` callback (it never prints) and obeys a
`TrainingControl` (pause / resume / stop) from another thread.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from dataclasses import asdict, dataclass, field

import numpy as np

from engine import analysis
from engine.core import initializers, names
from engine.datasets import GENERATED_DATASETS, Dataset, load_dataset, normalize_dataset_spec
from engine.core.losses import accuracy, softmax_cross_entropy
from engine import build_model
from engine.core.model import normalize_spec
from engine.core.optimizers import make_optimizer
from engine.presets import PRESETS

DEFAULT_OPTIMIZER = {"name": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": False, "weight_decay": 0.01}
# The optimizer a preset trains with when the config names none: the 20-layer
# plain "deep" stack stalls under the demo's SGD even with He init, Adam moves it.
PRESET_OPTIMIZERS = {"deep": {"name": "adam", "lr": 0.001}}
EVAL_CHUNK = 500
METRICS_FLUSH_EVERY = 10
FEATURE_MAP_DIGITS = 4


def run_optimizer(model: dict | str, optimizer: dict | None = None) -> dict:
    """The complete optimizer settings a run of `model` trains with, given the
    (possibly partial, possibly absent) optimizer of its config: no optimizer
    means the preset's own (PRESET_OPTIMIZERS) or DEFAULT_OPTIMIZER; SGD fields
    not given take DEFAULT_OPTIMIZER's, other optimizers' fields their class
    defaults. ValueError on an unknown optimizer or field."""
    if optimizer is None:
        optimizer = PRESET_OPTIMIZERS.get(model, {"name": "sgd"}) if isinstance(model, str) else {"name": "sgd"}
    defaults = DEFAULT_OPTIMIZER if optimizer.get("name", "sgd") == "sgd" else {}
    return make_optimizer({**defaults, **optimizer}).config()


class Diverged(Exception):
    """Loss or gradient became NaN/inf at `step`; the model keeps its last good weights."""

    def __init__(self, step: int, message: str):
        super().__init__(f"diverged at step {step}: {message}")
        self.step = step
        self.message = message


def _check_int(d: dict, key: str, minimum: int, maximum: int | None = None) -> int:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{key}: must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        limit = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{key}: must be {limit}, got {value}")
    return int(value)


@dataclass
class RunConfig:
    """Everything that defines a run; `RunConfig()` is the default demo.

    SGD fields not given take DEFAULT_OPTIMIZER. Without an optimizer, a
    preset listed in PRESET_OPTIMIZERS uses its own ("deep": Adam, lr 0.001).
    """

    model: dict | str = "demo"
    init: dict | str = "he_normal"
    dataset: dict | str = "shapes"
    optimizer: dict = field(default_factory=lambda: dict(DEFAULT_OPTIMIZER))
    batch_size: int = 64
    steps: int = 3000
    seed: int = 0
    snapshot_every: int = 10
    eval_every: int = 100

    @classmethod
    def from_dict(cls, d: dict | None) -> "RunConfig":
        """Validate and fill defaults; ValueError("field: problem") on bad input."""
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise ValueError("config: must be an object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown field; allowed: {', '.join(sorted(known))}")
        base = asdict(cls())
        merged = {**base, **{k: v for k, v in d.items() if v is not None}}

        model = merged["model"]
        if isinstance(model, str):
            if model not in PRESETS:
                raise ValueError(f"model: {names.unknown('preset', model, PRESETS, 'choose one of')}")
        elif not isinstance(model, dict):
            raise ValueError("model: must be a preset name or a spec object")

        try:
            initializers.parse_init(merged["init"])
        except ValueError as error:
            raise ValueError(f"init: {error}") from None

        dataset = normalize_dataset_spec(merged["dataset"])

        if isinstance(model, dict):
            # check the spec now when its input shape is known without loading files
            known_input = [1, dataset["size"], dataset["size"]] if dataset["name"] in GENERATED_DATASETS else None
            if "input" in model or known_input is not None:
                try:
                    normalize_spec(model if "input" in model else {"input": known_input, **model})
                except ValueError as error:
                    raise ValueError(f"model: {error}") from None
            model = copy.deepcopy(model)

        optimizer = d.get("optimizer")
        if isinstance(optimizer, str):
            optimizer = {"name": optimizer}
        if optimizer is not None and not isinstance(optimizer, dict):
            raise ValueError("optimizer: must be an object such as {'name': 'sgd', 'lr': 0.02}")
        try:
            optimizer = run_optimizer(model, optimizer)
        except ValueError as error:
            message = str(error)
            raise ValueError(message if message.startswith("optimizer") else f"optimizer: {message}") from None

        return cls(
            model=model,
            init=copy.deepcopy(merged["init"]),
            dataset=dataset,
            optimizer=optimizer,
            batch_size=_check_int(merged, "batch_size", 1, 4096),
            steps=_check_int(merged, "steps", 0, 10_000_000),
            seed=_check_int(merged, "seed", 0, 2**32 - 1),
            snapshot_every=_check_int(merged, "snapshot_every", 1),
            eval_every=_check_int(merged, "eval_every", 1),
        )

    def to_dict(self) -> dict:
        """JSON-able and complete: from_dict(to_dict()) gives the same config."""
        return copy.deepcopy(asdict(self))


def resolve_model_spec(model, dataset: Dataset) -> dict:
    """The spec a run trains: a preset adapted to the dataset, or the given spec checked against it.

    A preset takes the dataset's input shape and its last dense layer takes the
    dataset's class count. A given spec without "input" takes the dataset's;
    with one, it must match, and its output must have one unit per class.
    """
    input_shape = list(dataset.input_shape)
    if isinstance(model, str):
        spec = copy.deepcopy(PRESETS[model])
        spec["input"] = input_shape
        if spec["layers"][-1]["type"] == "dense":
            spec["layers"][-1]["units"] = dataset.n_classes
    else:
        spec = copy.deepcopy(model)
        spec.setdefault("input", input_shape)
        if list(spec["input"]) != input_shape:
            raise ValueError(f"model.input: the spec expects {list(spec['input'])} but dataset {dataset.name} gives {input_shape}")
    try:
        normalised, layers = normalize_spec(spec)
    except ValueError as error:
        raise ValueError(f"model: {error}") from None
    outputs = layers[-1].output_shape
    if tuple(outputs) != (dataset.n_classes,):
        raise ValueError(f"model: the last layer gives output {list(outputs)} but dataset {dataset.name} has {dataset.n_classes} classes")
    return normalised


class TrainingControl:
    """Pause / resume / stop a run from another thread (threading.Event based)."""

    def __init__(self):
        self._running = threading.Event()
        self._running.set()
        self._stopped = threading.Event()

    def pause(self):
        self._running.clear()

    def resume(self):
        self._running.set()

    def stop(self):
        self._stopped.set()
        self._running.set()

    def is_paused(self) -> bool:
        return not self._running.is_set()

    def is_stopped(self) -> bool:
        return self._stopped.is_set()

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block while paused (up to `timeout` seconds); True when free to continue."""
        self._running.wait(timeout)
        return self._running.is_set() and not self._stopped.is_set()


class Trainer:
    """Trains one model on one dataset; see docs/ARCHITECTURE.md (Trainer API)."""

    def __init__(self, config: RunConfig | dict | None = None, dataset: Dataset | None = None):
        self.config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
        self.dataset = dataset if dataset is not None else load_dataset(self.config.dataset)
        self.spec = resolve_model_spec(self.config.model, self.dataset)
        self.model = build_model(self.spec, init=self.config.init, seed=self.config.seed)
        self.optimizer = make_optimizer(self.config.optimizer)
        self.step = 0
        self.last_metrics: dict = {}
        self.last_eval: dict = {}

    # -- one step at a time --------------------------------------------------------

    def train_step(self) -> dict:
        """One optimizer step on the next batch -> {"step", "loss", "acc"}; raises Diverged."""
        cfg = self.config
        attempt = self.step + 1
        indices = self.dataset.batch_indices(self.step, cfg.batch_size, cfg.seed)
        x, y = self.dataset.x_train[indices], self.dataset.y_train[indices]
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught below as divergence
            loss, logits = self.model.train_gradients(x, y)
            if not math.isfinite(loss):
                raise Diverged(attempt, f"loss is {loss}")
        for name, grad in self.model.grads.items():
            if not np.isfinite(grad).all():
                raise Diverged(attempt, f"gradient of {name} is not finite")
        self.optimizer.step(self.model.params, self.model.grads)
        self.step = attempt
        self.last_metrics = {"step": self.step, "loss": round(loss, 6), "acc": round(accuracy(logits, y), 6)}
        return dict(self.last_metrics)

    def evaluate(self) -> dict:
        """Loss and accuracy on the whole validation split."""
        x, y = self.dataset.x_val, self.dataset.y_val
        total_loss = 0.0
        correct = 0.0
        for start in range(0, len(x), EVAL_CHUNK):
            logits = self.model.forward(x[start : start + EVAL_CHUNK])
            labels = y[start : start + EVAL_CHUNK]
            loss, _ = softmax_cross_entropy(logits, labels)
            total_loss += loss * len(labels)
            correct += accuracy(logits, labels) * len(labels)
        val_loss = total_loss / len(x)
        self.last_eval = {
            "val_loss": round(val_loss, 6) if math.isfinite(val_loss) else None,
            "val_acc": round(correct / len(x), 6),
        }
        return dict(self.last_eval)

    def snapshot(self, feature_maps: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
        """(snapshot JSON as in docs/ARCHITECTURE.md, copies of all parameters)."""
        model, data = self.model, self.dataset
        stats = analysis.layer_stats(model, data.monitor_x, data.monitor_y)
        maps = analysis.feature_maps(model, data.probe_x) if feature_maps else {}
        layers = []
        for index in model.conv_indices:
            weight = model.params[f"{index}.weight"]
            entry = {"index": index, "name": str(index), "type": "conv"}
            entry.update(analysis.conv_layer_summary(weight, model.params.get(f"{index}.bias")))
            entry["frozen"] = self.frozen_filters(index)
            if feature_maps:
                entry["feature_maps"] = analysis.rounded(maps[index], FEATURE_MAP_DIGITS)
            layers.append(entry)
        if self.last_metrics:
            metrics = {"loss": self.last_metrics["loss"], "acc": self.last_metrics["acc"]}
        else:
            monitor_logits = model.forward(data.monitor_x)
            loss, _ = softmax_cross_entropy(monitor_logits, data.monitor_y)
            metrics = {"loss": round(loss, 6) if math.isfinite(loss) else None,
                       "acc": round(accuracy(monitor_logits, data.monitor_y), 6)}
        metrics.update(self.last_eval)
        snapshot = {
            "step": self.step,
            "layers": layers,
            "stats": stats,
            "probes": analysis.rounded(data.probe_x, FEATURE_MAP_DIGITS),
            "probe_labels": list(data.probe_labels),
            "metrics": metrics,
        }
        return snapshot, model.state_dict()

    # -- kernels -------------------------------------------------------------------

    def frozen_filters(self, layer: int) -> list[int]:
        """Filters of conv layer `layer` whose kernels the optimizer keeps fixed."""
        rows = self.optimizer.frozen.get(f"{layer}.weight", [])
        if rows is None:
            return list(range(self.model.params[f"{layer}.weight"].shape[0]))
        return list(rows)

    def set_kernel(self, layer: int, filter: int, kernel, frozen: bool = False) -> None:
        """Overwrite one filter's kernel (2-d: the same for every input channel; 3-d: (in, kh, kw)).

        Its momentum/moment state is cleared; `frozen` keeps it fixed from now on,
        otherwise it trains (and is unfrozen if it was frozen).
        """
        if layer not in self.model.conv_indices:
            raise ValueError(f"layer: {layer} is not a conv layer; conv layers are {self.model.conv_indices}")
        name = f"{layer}.weight"
        weight = self.model.params[name]
        out_channels, in_channels, kh, kw = weight.shape
        if isinstance(filter, bool) or not isinstance(filter, (int, np.integer)) or not 0 <= filter < out_channels:
            raise ValueError(f"filter: must be an integer in 0..{out_channels - 1}, got {filter!r}")
        try:
            values = np.asarray(kernel, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("kernel: must be a 2-d or 3-d array of numbers") from None
        if values.shape == (kh, kw):
            values = np.broadcast_to(values, (in_channels, kh, kw))
        if values.shape != (in_channels, kh, kw):
            raise ValueError(f"kernel: must have shape [{kh}, {kw}] or [{in_channels}, {kh}, {kw}], got {list(values.shape)}")
        if not np.isfinite(values).all():
            raise ValueError("kernel: values must be finite numbers")
        weight[filter] = values
        for slot in self.optimizer.state.get(name, {}).values():
            if slot.shape == weight.shape:
                slot[filter] = 0
        if frozen:
            self.optimizer.freeze(name, filters=[filter])
        else:
            self.optimizer.unfreeze(name, filters=[filter])

    # -- checkpoints ---------------------------------------------------------------

    def checkpoint(self) -> dict[str, np.ndarray]:
        """Everything needed to continue bit-identically, as arrays (np.savez-able).

        The data position is the step (batch order is a function of seed and
        step), so config + step + parameters + optimizer state suffice.
        """
        state = {
            "config": np.array(json.dumps(self.config.to_dict())),
            "step": np.array(self.step, dtype=np.int64),
            "metrics": np.array(json.dumps({"train": self.last_metrics, "eval": self.last_eval})),
        }
        for name, value in self.model.params.items():
            state[f"params/{name}"] = value.copy()
        for key, value in self.optimizer.state_dict().items():
            state[f"optimizer/{key}"] = np.asarray(value).copy()
        return state

    @classmethod
    def restore(cls, checkpoint, dataset: Dataset | None = None) -> "Trainer":
        """A Trainer continuing from `checkpoint` (a dict or loaded .npz)."""
        try:
            config = json.loads(str(np.asarray(checkpoint["config"])))
            step = int(np.asarray(checkpoint["step"]))
        except (KeyError, ValueError) as error:
            raise ValueError(f"checkpoint: missing or unreadable config/step ({error})") from None
        trainer = cls(config, dataset)
        keys = list(checkpoint.keys()) if hasattr(checkpoint, "keys") else list(checkpoint.files)
        params = {k.split("/", 1)[1]: np.asarray(checkpoint[k]) for k in keys if k.startswith("params/")}
        trainer.model.load_state_dict(params)
        optimizer_state = {k.split("/", 1)[1]: np.asarray(checkpoint[k]) for k in keys if k.startswith("optimizer/")}
        trainer.optimizer.load_state_dict(optimizer_state)
        trainer.step = step
        if "metrics" in keys:
            metrics = json.loads(str(np.asarray(checkpoint["metrics"])))
            trainer.last_metrics = metrics.get("train", {})
            trainer.last_eval = metrics.get("eval", {})
        return trainer

    # -- the loop ------------------------------------------------------------------

    def run(self, emit, control: TrainingControl | None = None) -> str:
        """Train to config.steps, reporting through emit(event); returns the final status.

        Events (dicts, emitted synchronously from this thread, so calling
        self.checkpoint() inside emit captures exactly that step):
          {"type": "status", "status": "running"|"paused"|"completed"|"stopped"|"diverged",
           "step": int, "message": str | None}
          {"type": "metrics", "points": [{"step", "loss", "acc", "val_loss"?, "val_acc"?}, ...]}
          {"type": "snapshot", "step": int, "snapshot": dict, "params": {name: array}}
          {"type": "done", "status": ..., "step": int, "message": str | None}
        A snapshot is emitted at step 0 (when starting fresh), every
        snapshot_every steps and at the last step; validation runs every
        eval_every steps and at the last step. On divergence the model keeps
        the weights of the last good step and no snapshot of the bad state is made.
        """
        cfg = self.config
        control = control or TrainingControl()
        points: list[dict] = []

        def flush():
            if points:
                emit({"type": "metrics", "points": list(points)})
                points.clear()

        def finish(status, message=None):
            flush()
            emit({"type": "status", "status": status, "step": self.step, "message": message})
            emit({"type": "done", "status": status, "step": self.step, "message": message})
            return status

        emit({"type": "status", "status": "running", "step": self.step, "message": None})
        if self.step == 0:
            self._emit_snapshot(emit)
        while self.step < cfg.steps:
            if control.is_paused() and not control.is_stopped():
                flush()
                emit({"type": "status", "status": "paused", "step": self.step, "message": None})
                while not control.wait_while_paused(timeout=0.5):
                    if control.is_stopped():
                        break
                if not control.is_stopped():
                    emit({"type": "status", "status": "running", "step": self.step, "message": None})
            if control.is_stopped():
                return finish("stopped")
            try:
                point = self.train_step()
            except Diverged as error:
                return finish("diverged", error.message)
            last = self.step == cfg.steps
            if self.step % cfg.eval_every == 0 or last:
                point.update(self.evaluate())
            points.append(point)
            if self.step % cfg.snapshot_every == 0 or last:
                flush()
                self._emit_snapshot(emit)
            elif len(points) >= METRICS_FLUSH_EVERY:
                flush()
        return finish("completed")

    def _emit_snapshot(self, emit):
        snapshot, params = self.snapshot()
        emit({"type": "snapshot", "step": self.step, "snapshot": snapshot, "params": params})
