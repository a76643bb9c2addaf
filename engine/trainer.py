"""Training: a run's config, its snapshot schedule, and the one training loop.

`RunConfig` is the complete, validated description of a run (every default
filled in), parsed once at the boundary and passed down as is. `snapshot_steps`
says which steps a run stores (dense at first, spaced out geometrically, merged
with `snapshot_every`). `Trainer` builds dataset, model and optimizer from a
RunConfig and exposes one step at a time (`train_step`, `evaluate`,
`snapshot`), checkpoints that resume bit-identically and kernel overwrites.
`Trainer.events` is THE training loop: a generator of events (status, metrics,
snapshot, checkpoint requests, replies, done) that obeys commands (pause,
resume, stop, shutdown, set_kernel) and handles divergence. The server's worker,
the CLI and the tests all consume it; the engine never prints.
"""

from __future__ import annotations

import copy
import json
import math
import queue
import time
from dataclasses import asdict, dataclass, field
from typing import cast

import numpy as np

from engine import analyst, build_model
from engine.core import names
from engine.core.initializers import parse_init
from engine.core.losses import accuracy
from engine.core.model import normalize_spec
from engine.core.optimizers import make_optimizer
from engine.datasets import GENERATED_DATASETS, Dataset, normalize_dataset_spec, open_dataset
from engine.presets import PRESETS

DEFAULT_OPTIMIZER = {"name": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": False, "weight_decay": 0.01}
# The optimizer a preset trains with when the config names none: the 20-layer
# plain "deep" stack stalls under the demo's SGD even with He init, Adam moves it.
PRESET_OPTIMIZERS = {"deep": {"name": "adam", "lr": 0.001}}
METRICS_FLUSH_SECONDS = 0.05  # the loop hands buffered metric points over at most this long after the first
PAUSED_POLL_SECONDS = 0.5  # while paused, the loop waits this long for each command
# Snapshots: every step for the first `dense_steps`, then gaps growing by `growth`
# per snapshot until a gap reaches snapshot_every (see snapshot_steps).
DEFAULT_SNAPSHOT_SCHEDULE = {"dense_steps": 20, "growth": 1.1}
# A run trains at least one step. Upper bounds on what a request may ask for (steps, batch,
# schedule) are the server's and the CLI's, in app/limits.py; the engine states only what
# makes a config meaningful.
MIN_STEPS = 1


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
    snapshot_schedule: dict = field(default_factory=lambda: dict(DEFAULT_SNAPSHOT_SCHEDULE))

    @classmethod
    def from_dict(cls, d: dict | None) -> RunConfig:
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
            parse_init(merged["init"])
        except ValueError as error:
            raise ValueError(f"init: {error}") from None

        dataset = normalize_dataset_spec(merged["dataset"])

        checked_spec = None
        if isinstance(model, dict):
            # check the spec now when its input shape is known without loading files
            known_input = [1, dataset["size"], dataset["size"]] if dataset["name"] in GENERATED_DATASETS else None
            if "input" in model or known_input is not None:
                try:
                    checked_spec = normalize_spec(model if "input" in model else {"input": known_input, **model})
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

        config = cls(
            model=model,
            init=copy.deepcopy(merged["init"]),
            dataset=dataset,
            optimizer=optimizer,
            batch_size=_check_int(merged, "batch_size", 1),
            steps=_check_int(merged, "steps", MIN_STEPS),
            seed=_check_int(merged, "seed", 0, 2**32 - 1),
            snapshot_every=_check_int(merged, "snapshot_every", 1),
            eval_every=_check_int(merged, "eval_every", 1),
            snapshot_schedule=_check_schedule(merged["snapshot_schedule"]),
        )
        # the spec as normalize_spec checked it, kept so the Trainer need not check it again; not a
        # dataclass field, so to_dict/asdict and equality never see it
        config._checked_spec = checked_spec  # type: ignore[attr-defined]
        return config

    def to_dict(self) -> dict:
        """JSON-able and complete: from_dict(to_dict()) gives the same config."""
        return copy.deepcopy(asdict(self))


def _check_schedule(value) -> dict:
    """A complete snapshot_schedule: {"dense_steps": int, "growth": number}, defaults filled in."""
    if not isinstance(value, dict):
        raise ValueError('snapshot_schedule: must be an object such as {"dense_steps": 20, "growth": 1.1}')
    unknown = sorted(set(value) - set(DEFAULT_SNAPSHOT_SCHEDULE))
    if unknown:
        raise ValueError(
            f"snapshot_schedule.{unknown[0]}: unknown field; allowed: {', '.join(DEFAULT_SNAPSHOT_SCHEDULE)}"
        )
    schedule = {**DEFAULT_SNAPSHOT_SCHEDULE, **{k: v for k, v in value.items() if v is not None}}
    dense = schedule["dense_steps"]
    if isinstance(dense, bool) or not isinstance(dense, (int, np.integer)) or dense < 0:
        raise ValueError(f"snapshot_schedule.dense_steps: must be an integer >= 0, got {dense!r}")
    growth = schedule["growth"]
    if (
        isinstance(growth, bool)
        or not isinstance(growth, (int, float, np.integer, np.floating))
        or not math.isfinite(growth)
        or not growth > 1
    ):
        raise ValueError(f"snapshot_schedule.growth: must be a number > 1, got {growth!r}")
    return {"dense_steps": int(dense), "growth": float(growth)}


def _early_snapshot_steps(config: RunConfig) -> list[int]:
    """The schedule's own steps (0..dense_steps, then growing gaps until a gap reaches
    snapshot_every), up to config.steps."""
    dense = min(config.snapshot_schedule["dense_steps"], config.steps)
    growth = config.snapshot_schedule["growth"]
    steps = list(range(dense + 1))
    step, gap = dense, 1.0
    while True:
        gap *= growth
        whole = max(1, round(gap))
        if whole >= config.snapshot_every or step + whole > config.steps:
            return steps
        step += whole
        steps.append(step)


def snapshot_rule(config: RunConfig):
    """step -> bool: whether a run of `config` stores a snapshot at that step.

    The rule of snapshot_steps without listing every step: step 0, the
    schedule's early steps, every multiple of snapshot_every and the last step.
    """
    early = frozenset(_early_snapshot_steps(config))
    every, last = config.snapshot_every, config.steps
    return lambda step: step in early or step % every == 0 or step == last


def snapshot_steps(config: RunConfig | dict) -> list[int]:
    """Every step at which a run of `config` stores a snapshot, ascending.

    Every step up to snapshot_schedule.dense_steps; then gaps of 1 growing by
    the factor snapshot_schedule.growth per snapshot (rounded) until a gap
    would reach snapshot_every; merged with every multiple of snapshot_every,
    step 0 and the last step.
    """
    config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    steps = set(_early_snapshot_steps(config))
    steps.update(range(0, config.steps + 1, config.snapshot_every))
    steps.add(config.steps)
    return sorted(steps)


def resolve_model_spec(model, dataset: Dataset, checked: tuple | None = None) -> dict:
    """The spec a run trains: a preset adapted to the dataset, or the given spec checked against it.

    A preset takes the dataset's input shape and its last dense layer takes the
    dataset's class count. A given spec without "input" takes the dataset's;
    with one, it must match, and its output must have one unit per class.
    `checked` is normalize_spec's answer for `model` already obtained by
    RunConfig.from_dict; it is used instead of checking the spec again.
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
            raise ValueError(
                f"model.input: the spec expects {list(spec['input'])} but dataset {dataset.name} gives {input_shape}"
            )
    if checked is not None and not isinstance(model, str) and checked[0]["input"] == input_shape:
        normalised, layers = checked
    else:
        try:
            normalised, layers = normalize_spec(spec)
        except ValueError as error:
            raise ValueError(f"model: {error}") from None
    outputs = layers[-1].output_shape
    if tuple(outputs) != (dataset.n_classes,):
        raise ValueError(
            f"model: the last layer gives output {list(outputs)} but dataset {dataset.name} has {dataset.n_classes} classes"
        )
    return normalised


class TrainingControl:
    """Commands for a running loop, safe to send from any thread (a queue the loop polls).

    The loop only needs `poll(timeout) -> command tuple | None`; a worker
    process passes its own object with that method (reading a pipe). Commands:
    ("pause",), ("resume",), ("stop",), ("shutdown",) and
    ("set_kernel", request_id, layer, filter, kernel, frozen).
    """

    def __init__(self) -> None:
        self._commands: queue.Queue = queue.Queue()

    def pause(self) -> None:
        self._commands.put(("pause",))

    def resume(self) -> None:
        self._commands.put(("resume",))

    def stop(self) -> None:
        self._commands.put(("stop",))

    def shutdown(self) -> None:
        self._commands.put(("shutdown",))

    def set_kernel(self, request_id, layer: int, filter: int, kernel, frozen: bool = False) -> None:
        self._commands.put(("set_kernel", request_id, layer, filter, kernel, frozen))

    def poll(self, timeout: float = 0.0):
        """The next command, waiting up to `timeout` seconds; None when there is none."""
        try:
            return self._commands.get(timeout=timeout) if timeout > 0 else self._commands.get_nowait()
        except queue.Empty:
            return None


class Trainer:
    """Trains one model on one dataset; see docs/ARCHITECTURE.md (Trainer API)."""

    def __init__(self, config: RunConfig | dict | None = None, dataset: Dataset | None = None):
        """`config`: a RunConfig made by RunConfig.from_dict, used as it is (no second parse);
        a dict, None, or a RunConfig built by hand (`RunConfig(steps=50)`, not yet checked) is
        parsed by RunConfig.from_dict (the boundary for scripts)."""
        checked = isinstance(config, RunConfig) and hasattr(config, "_checked_spec")
        if isinstance(config, RunConfig) and not checked:
            config = config.to_dict()
        self.config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
        self.dataset = (
            dataset if dataset is not None else open_dataset(cast(dict, self.config.dataset))
        )  # from_dict completed it
        self.spec = resolve_model_spec(self.config.model, self.dataset, getattr(self.config, "_checked_spec", None))
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
        """Loss and accuracy on the whole validation split (engine.analyst.evaluation)."""
        self.last_eval = analyst.evaluation(self.model, self.dataset.x_val, self.dataset.y_val)
        return dict(self.last_eval)

    def snapshot(self, feature_maps: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
        """(snapshot JSON as in docs/ARCHITECTURE.md, copies of all parameters)."""
        snapshot, _ = analyst.snapshot_content(
            self.model,
            analyst.SnapshotInputs.of(self.dataset),
            self.step,
            self._frozen_by_layer(),
            self.last_metrics,
            self.last_eval,
            feature_maps=feature_maps,
        )
        return snapshot, self.model.state_dict()

    def _frozen_by_layer(self) -> dict[int, list[int]]:
        return {index: self.frozen_filters(index) for index in self.model.conv_indices}

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
            raise ValueError(
                f"kernel: must have shape [{kh}, {kw}] or [{in_channels}, {kh}, {kw}], got {list(values.shape)}"
            )
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

    @staticmethod
    def checkpoint_config(checkpoint) -> RunConfig:
        """The RunConfig a checkpoint (a dict or loaded .npz) was written with."""
        try:
            return RunConfig.from_dict(json.loads(str(np.asarray(checkpoint["config"]))))
        except (KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"checkpoint: missing or unreadable config ({error})") from None

    @classmethod
    def restore(cls, checkpoint, dataset: Dataset | None = None, config: RunConfig | None = None) -> Trainer:
        """A Trainer continuing from `checkpoint` (a dict or loaded .npz).

        `config`: the checkpoint's RunConfig when the caller already read it
        (checkpoint_config), so it is not parsed twice.
        """
        config = config if config is not None else cls.checkpoint_config(checkpoint)
        try:
            step = int(np.asarray(checkpoint["step"]))
        except (KeyError, ValueError) as error:
            raise ValueError(f"checkpoint: missing or unreadable step ({error})") from None
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

    def events(
        self,
        control=None,
        checkpoint_every: int | None = None,
        snapshot_at_start: bool = True,
        flush_seconds: float = METRICS_FLUSH_SECONDS,
        analyst_mode: str = "inline",
    ):
        """THE training loop: train to config.steps, yielding events; see docs/ARCHITECTURE.md.

        The server's worker, the CLI and the tests all consume this generator.
        Events are yielded from the training thread while the loop is suspended,
        so a consumer that calls self.checkpoint() on a "checkpoint" event
        captures exactly that step. Events (dicts):
          {"type": "status", "status": "running"|"paused"|"completed"|"stopped"|"interrupted"|"diverged",
           "step", "message"}
          {"type": "metrics", "points": [{"step", "loss", "acc", "val_loss"?, "val_acc"?, "time"}, ...]}
              buffered, handed over at most every `flush_seconds` and before any other event
          {"type": "snapshot", "step", "snapshot": dict (no feature-map lists), "params": {name: array},
           "feature_maps": {conv index: array (probes, out, H, W)}}
              at every step of snapshot_steps(config) (the start step only if `snapshot_at_start`),
              and after a kernel is set
          {"type": "checkpoint", "step"}   a request: persist self.checkpoint() now; every
              `checkpoint_every` steps (None: never periodically) and on pause, stop, shutdown, completion
          {"type": "reply", "request_id", "error": str | None}   answer to a set_kernel command
          {"type": "done", "status", "step", "message"}   last
        `control`: anything with poll(timeout) -> command | None (TrainingControl;
        commands listed there). On divergence the weights stay at the last good
        step and no snapshot of the bad state is made.
        `analyst_mode` (engine/analyst.py): where the snapshots' content and the evaluations
        are computed. "inline" (the default): on the live model at their step, in the order
        above. "process" / "auto": from a copy of the weights in an analyst process while the
        loop trains on; a snapshot event then comes when it is ready, possibly after metrics of
        later steps, and a point with validation figures (and the points after it) waits for
        its evaluation. Every snapshot and evaluation is handed over before any checkpoint,
        status, reply or done event, so a checkpoint never precedes a snapshot of an earlier step.
        """
        cfg = self.config
        control = control if control is not None else TrainingControl()
        is_snapshot_step = snapshot_rule(cfg)
        points: list[dict] = []
        awaiting: dict[int, dict] = {}  # step -> its metric point, while its evaluation is computed
        snapshot_params: list[dict[str, np.ndarray]] = []  # the weights of each snapshot job, in job order
        first_buffered = 0.0
        side = analyst.make_analyst(self, analyst_mode)

        def flush():
            # the points up to the first one still waiting for its evaluation, in step order
            ready = next((i for i, point in enumerate(points) if point["step"] in awaiting), len(points))
            if ready:
                batch = points[:ready]
                del points[:ready]
                return [{"type": "metrics", "points": batch}]
            return []

        def submit(evaluate: bool, snapshot: bool) -> None:
            params = self.model.state_dict() if snapshot or side.copies_weights else None
            if snapshot:
                snapshot_params.append(cast(dict, params))
            frozen = self._frozen_by_layer() if snapshot else {}
            job = analyst.Job(self.step, evaluate, snapshot, params if side.copies_weights else None, frozen)
            job.last_metrics = dict(self.last_metrics)
            side.submit(job)

        def deliver(wait: bool = False):
            """Events of the side work finished so far (with `wait`: all of it), in step order."""
            out = []
            for result in side.results(wait):
                if result.eval is not None:
                    self.last_eval = dict(result.eval)
                    point = awaiting.pop(result.step, None)
                    if point is not None:  # the validation figures go before "time", as always
                        finished = point.pop("time")
                        point.update({key: value for key, value in result.eval.items() if value is not None})
                        point["time"] = finished
                if result.snapshot is not None:
                    out.extend(flush())
                    out.append(
                        {
                            "type": "snapshot",
                            "step": result.step,
                            "snapshot": result.snapshot,
                            "params": snapshot_params.pop(0),
                            "feature_maps": result.feature_maps,
                        }
                    )
            return out

        def status(name, message=None):
            return {"type": "status", "status": name, "step": self.step, "message": message}

        def finish(name, message=None, checkpoint=True):
            out = deliver(wait=True) + flush()
            if checkpoint:
                out.append({"type": "checkpoint", "step": self.step})
            out.append(status(name, message))
            out.append({"type": "done", "status": name, "step": self.step, "message": message})
            return out

        try:
            yield status("running")
            if snapshot_at_start and is_snapshot_step(self.step):
                submit(False, True)
                yield from deliver()
            paused = False
            while True:
                yield from deliver()
                command = control.poll(PAUSED_POLL_SECONDS if paused else 0.0)
                if command is not None:
                    kind = command[0]
                    if kind == "pause" and not paused:
                        paused = True
                        yield from deliver(wait=True)
                        yield from flush()
                        yield {"type": "checkpoint", "step": self.step}
                        yield status("paused")
                    elif kind == "resume" and paused:
                        paused = False
                        yield status("running")
                    elif kind == "stop":
                        yield from finish("stopped", "stopped by request")
                        return
                    elif kind == "shutdown":
                        message = command[1] if len(command) > 1 else "interrupted; resume to continue"
                        yield from finish("interrupted", message)
                        return
                    elif kind == "set_kernel":
                        _, request_id, layer, filter_index, kernel, frozen = command
                        try:
                            self.set_kernel(layer, filter_index, np.asarray(kernel, dtype=np.float32), frozen=frozen)
                        except (ValueError, IndexError, KeyError, TypeError) as error:
                            yield {"type": "reply", "request_id": request_id, "error": str(error)}
                        else:
                            submit(False, True)
                            yield from deliver(wait=True)
                            yield from flush()
                            yield {"type": "reply", "request_id": request_id, "error": None}
                    continue
                if paused:
                    continue
                if self.step >= cfg.steps:
                    yield from finish("completed")
                    return
                try:
                    point = self.train_step()
                except Diverged as error:
                    yield from finish("diverged", str(error), checkpoint=False)
                    return
                point["time"] = round(time.time(), 4)  # when the step finished (wall clock, for live latency)
                if not points:
                    first_buffered = time.monotonic()
                points.append(point)
                evaluate = self.step % cfg.eval_every == 0 or self.step == cfg.steps
                snapshot = is_snapshot_step(self.step)
                if evaluate:
                    awaiting[self.step] = point
                if evaluate or snapshot:
                    submit(evaluate, snapshot)
                    yield from deliver()
                if points and time.monotonic() - first_buffered >= flush_seconds:
                    yield from flush()
                if checkpoint_every and self.step % checkpoint_every == 0 and self.step < cfg.steps:
                    yield from deliver(wait=True)
                    yield from flush()
                    yield {"type": "checkpoint", "step": self.step}
        finally:
            side.close()

    def run(self, emit, control=None, **options) -> str:
        """Consume events() with emit(event); returns the final status (a convenience for scripts)."""
        status = "failed"
        for event in self.events(control, **options):
            emit(event)
            if event["type"] == "done":
                status = event["status"]
        return status
