"""Every limit on what a run, a request or a command may ask for, in one place.

The engine accepts any size it can compute; a server shared by a classroom
must not, and `kernelscope train` keeps the same bounds. These numbers bound
the model (layers, filters, units, kernel size, input size, parameters, memory
of one training step, feature maps kept per snapshot), the training (batch
size, steps, snapshot and evaluation frequency, learning rate), hand-made
kernels, datasets, the teaching routes (init probe, comparisons, GIFs),
request bodies and the number of runs training or queued.

`check_run_config` applies them to a complete config (RunConfig.to_dict()) and
raises ValueError("field: problem") naming the field and the limit; the API
answers it with 422 and the CLI with exit code 2. `FIELD_LIMITS` states the
numeric fields' ranges once: the pydantic bodies take their bounds from it
(`bounds`), and GET /api/defaults serves it to the page's form.
"""

from __future__ import annotations

import math

from engine.datasets import GENERATED_DATASETS, MONITOR_SIZE, known_shape
from engine.trainer import MIN_STEPS  # the engine's rule: a run trains at least one step

# ---------------------------------------------------------------- the model
MAX_LAYERS = 64  # layers in one model spec
MAX_FILTERS = 256  # filters (output channels) of one conv layer
MAX_UNITS = 4096  # units of one dense layer
MAX_KERNEL = 11  # side of a conv kernel
MAX_STRIDE = 11  # conv or pool stride
MAX_PADDING = 11  # conv zero padding
MAX_POOL = 16  # side of a pooling window
MAX_INPUT_CHANNELS = 16  # channels of the model input
MAX_INPUT_SIDE = 128  # height and width of the model input
MAX_PARAMETERS = 5_000_000  # weights + biases of the whole model
# Floats one training step holds (batch x every layer's output and conv patches):
# 2**27 float32 values are 512 MiB.
MAX_STEP_VALUES = 2**27
# Feature-map values a snapshot keeps per probe image (all conv layers together).
MAX_FEATURE_MAP_VALUES = 131_072

# ---------------------------------------------------------------- the training
MAX_BATCH_SIZE = 512
MAX_STEPS = 1_000_000
MAX_SNAPSHOTS_PER_RUN = 20_000  # steps / snapshot_every
MAX_DENSE_SNAPSHOT_STEPS = 1000  # snapshot_schedule.dense_steps: every step is stored up to this one
MAX_SNAPSHOT_GROWTH = 10.0  # snapshot_schedule.growth: how fast the gaps between snapshots grow
MAX_LR = 10.0  # learning rate: finite, > 0 and at most this
MAX_WEIGHT_DECAY = 10.0
MAX_SEED = 2**32 - 1

# ---------------------------------------------------------------- hand-made kernels
MAX_HANDMADE_KERNELS = MAX_FILTERS  # kernels listed in one {"name": "kernel"} init
MAX_HANDMADE_KERNEL_SIDE = MAX_KERNEL  # side of one hand-made kernel grid

# ---------------------------------------------------------------- datasets
DATASETS_FOLDER = "datasets"  # dataset paths are relative to DATA/datasets
DATASET_PATH_RULE = (
    f"dataset.path is a folder relative to the data directory's {DATASETS_FOLDER}/ folder "
    f"(KERNELSCOPE_DATA/{DATASETS_FOLDER}); absolute paths, '..' and symlinks (folders or files) leading "
    "out of it are refused; hidden files and folders are ignored; an image_folder holds one sub-folder "
    "of PNG/JPEG images per class"
)
MAX_DATASET_EXAMPLES = 100_000  # n_train + n_val of the generated set; `limit` of file sets
MAX_DATASET_VALUES = 2**26  # examples x pixels of the generated set (256 MiB of float32)
MAX_PATH_LENGTH = 1024
DATASET_SCAN_IMAGES = 64  # image_folder: images decoded at POST to check them (spread over the classes)

# ---------------------------------------------------------------- requests
MAX_BODY_BYTES = 1_048_576  # request body (413 beyond)
MAX_IMAGE_PIXELS = 4_000_000  # one filters.png (a wider layer is drawn with fewer pixels per weight)
MAX_JSON_DEPTH = 32  # nesting of objects and arrays in a body
MAX_NAME_LENGTH = 200  # a run's label (or a comparison's)
MAX_METRICS_LIMIT = 10_000_000  # ?limit= of GET .../metrics
MAX_LAYER_INDEX = 10_000  # a spec index in a path or query
MAX_FILTER_INDEX = 100_000  # a filter index in a path
MAX_PNG_PIXEL = 64  # ?pixel= of filters.png: screen pixels per weight
MAX_PNG_SCALE = 1e6  # ?scale= of filters.png

# ---------------------------------------------------------------- teaching routes
MAX_COMPARED_INITS = 8  # runs of one comparison
MAX_PROBE_INITS = 8  # inits of one init probe
MAX_PROBE_DEPTH = 60  # plain stack of the init probe: conv layers
MAX_PROBE_WIDTH = 256  # ... filters per layer
MAX_PROBE_KERNEL = 7  # ... kernel side (odd)
MIN_PROBE_SIZE, MAX_PROBE_SIZE = 4, 64  # ... input side
MAX_PROBE_BATCH = 64
MAX_PROBE_REPEATS = 16  # independent weight draws averaged
# An init probe may multiply-add at most this much per init over all repeats (a 30-layer,
# 16-wide 3×3 stack on 16×16 inputs, batch 4, 4 repeats is about 1.1e9); beyond, the server would stall.
MAX_PROBE_MACS = 2_000_000_000
MAX_HANDMADE_SCALE = 1e3  # PUT .../kernels: unit-norm named kernel times at most this
MAX_GIF_FRAMES = 120
MIN_GIF_FRAME_MS, MAX_GIF_FRAME_MS = 20, 5000
MAX_GIF_PIXEL = 32  # ?pixel= of evolution.gif
# A GIF frame is the layer's filter grid; wide layers get fewer screen pixels per weight, and
# long GIFs fewer frames, so one request never draws more than this many pixels.
MAX_FRAME_PIXELS = 1_500_000
MAX_GIF_PIXELS = 60_000_000

# ---------------------------------------------------------------- event replays
# A viewer that reconnects with Last-Event-ID gets every metrics point it missed, read from
# the store in pages off the event loop. At most MAX_REPLAYS replays read at once (more wait
# their turn, holding nothing but a coroutine); one client (IP address) may have at most
# MAX_REPLAYS_PER_CLIENT replays running or waiting, beyond that 429 with Retry-After.
MAX_REPLAYS = 4
MAX_REPLAYS_PER_CLIENT = 4
REPLAY_PAGE_POINTS = 2000  # metric points read from the store per page (and per event at most)
REPLAY_RETRY_SECONDS = 2  # Retry-After of a refused replay
# Encoded replay pages are shared: viewers replaying the same stretch of a run (a storm of
# reconnects after a network blip) read and encode each page once. At most this many bytes of
# pages are kept, the least recently used going first.
REPLAY_CACHE_BYTES = 16 * 1024 * 1024

# ---------------------------------------------------------------- heavy renders
# filters.png, evolution.gif, export, filter explanations and the init probe share one pool
# (app/render.py RenderSlots): this many at once, this many more waiting, then 429.
MAX_RENDERS = 2
MAX_RENDERS_WAITING = 8
RENDER_RETRY_SECONDS = 5
# GET .../layers/{layer}/summary summarizes snapshots not summarized before for about this long
# (at least one), then answers with the steps done so far and how many are still pending: a long
# run's first summary arrives in parts the page draws as they come, and no request holds a
# render slot for long.
SUMMARY_SECONDS = 1.0

# ---------------------------------------------------------------- the database (distributed mode)
# A PostgreSQL that does not answer: the store gives up on a connection attempt after
# app/database.CONNECT_TIMEOUT_SECONDS and the API answers 503 with this Retry-After.
DATABASE_RETRY_SECONDS = 5

# ---------------------------------------------------------------- runs at once
# The server's defaults and the ceilings KERNELSCOPE_MAX_RUNS / KERNELSCOPE_MAX_QUEUED
# may be set to (app/settings.py); beyond them POST /api/runs answers 429.
DEFAULT_MAX_RUNS = 2  # runs training at the same time (two cores)
DEFAULT_MAX_QUEUED = 16  # runs waiting for a slot
MAX_CONCURRENT_RUNS = 64
MAX_QUEUED_RUNS = 10_000

# Distributed mode (app/distributed.py, app/jobs.py): each run's Redis Stream keeps about this
# many newest events (older ones are read from the store); an ended run's stream expires after
# STREAM_TTL_SECONDS. A worker silent for WORKER_HEARTBEAT_SECONDS is taken for dead: its run is
# redelivered to another worker (KERNELSCOPE_WORKER_HEARTBEAT may set 1..600 s).
DEFAULT_STREAM_MAXLEN = 10_000
MIN_STREAM_MAXLEN, MAX_STREAM_MAXLEN = 100, 10_000_000
STREAM_TTL_SECONDS = 24 * 3600
WORKER_HEARTBEAT_SECONDS = 10.0

# ---------------------------------------------------------------- a class (app/classroom.py)
DEFAULT_CLASS_MAX_TRAINING = 1  # runs one learner may have training (running or paused) at once
DEFAULT_CLASS_MAX_QUEUED = 3  # runs one learner may have waiting in the queue
MAX_CLASS_MAX_TRAINING = 16  # the most a teacher may set per class
MAX_CLASS_MAX_QUEUED = 64
MAX_CLASS_NAME_LENGTH = 80  # a class's name
MAX_DISPLAY_NAME_LENGTH = 40  # a learner's display name
MAX_LEARNERS_PER_CLASS = 500
MAX_ASSIGNMENT_LENGTH = 4000  # an assignment's URL-hash config (characters)
MAX_ASSIGNMENT_TITLE_LENGTH = 120
JOIN_CODE_LENGTH = 10  # characters of a join code (alphabet of 32: 50 bits)
LEARNER_TOKEN_BYTES = 24  # random bytes of a learner token (192 bits)
JOIN_FAIL_DELAY_SECONDS = 0.5  # a wrong join code is answered 401 after this pause
QUOTA_RETRY_AFTER_SECONDS = 30  # Retry-After of a learner's 429 (a run of the demo takes minutes)
# Distributed mode: a worker that finds a learner at max_training puts their queued run back with
# this delay (Dramatiq's delay queue) and takes the next message meanwhile.
QUOTA_RECHECK_SECONDS = 2.0
WALL_POLL_SECONDS = 1.0  # the wall's one stream looks at the class's runs this often


# The range of every numeric field a form or a command line takes: {"min", "max"} and, where a
# bound itself is not allowed, "min_exclusive" / "max_exclusive". Served by GET /api/defaults.
FIELD_LIMITS: dict[str, dict] = {
    "steps": {"min": MIN_STEPS, "max": MAX_STEPS},
    "batch_size": {"min": 1, "max": MAX_BATCH_SIZE},
    "snapshot_every": {"min": 1, "max": MAX_STEPS},
    "eval_every": {"min": 1, "max": MAX_STEPS},
    "snapshot_schedule.dense_steps": {"min": 0, "max": MAX_DENSE_SNAPSHOT_STEPS},
    "snapshot_schedule.growth": {"min": 1, "min_exclusive": True, "max": MAX_SNAPSHOT_GROWTH},
    "seed": {"min": 0, "max": MAX_SEED},
    "lr": {"min": 0, "min_exclusive": True, "max": MAX_LR},
    "momentum": {"min": 0, "max": 1, "max_exclusive": True},
    "weight_decay": {"min": 0, "max": MAX_WEIGHT_DECAY},
    "dataset.n_train": {"min": 1, "max": MAX_DATASET_EXAMPLES},
    "dataset.n_val": {"min": 1, "max": MAX_DATASET_EXAMPLES},
    "comparison.inits": {"min": 1, "max": MAX_COMPARED_INITS},
    "probe.depth": {"min": 1, "max": MAX_PROBE_DEPTH},
    "probe.width": {"min": 1, "max": MAX_PROBE_WIDTH},
    "probe.kernel": {"min": 1, "max": MAX_PROBE_KERNEL},
    "probe.size": {"min": MIN_PROBE_SIZE, "max": MAX_PROBE_SIZE},
    "probe.batch": {"min": 1, "max": MAX_PROBE_BATCH},
    "probe.repeats": {"min": 1, "max": MAX_PROBE_REPEATS},
    "probe.inits": {"min": 1, "max": MAX_PROBE_INITS},
    "kernel.scale": {"min": 0, "min_exclusive": True, "max": MAX_HANDMADE_SCALE},
}


def bounds(field: str) -> dict:
    """pydantic Field keywords (ge/gt/le/lt, or min_length/max_length for lists) for a FIELD_LIMITS entry."""
    limit = FIELD_LIMITS[field]
    if field.endswith(".inits"):
        return {"min_length": limit["min"], "max_length": limit["max"]}
    return {
        ("gt" if limit.get("min_exclusive") else "ge"): limit["min"],
        ("lt" if limit.get("max_exclusive") else "le"): limit["max"],
    }


def check_field(field: str, value, name: str | None = None) -> None:
    """ValueError("name: must be ..., got value") when `value` is outside FIELD_LIMITS[field]."""
    limit = FIELD_LIMITS[field]
    name = name or field
    low = value > limit["min"] if limit.get("min_exclusive") else value >= limit["min"]
    high = value < limit["max"] if limit.get("max_exclusive") else value <= limit["max"]
    if not (low and high):
        lower = ">" if limit.get("min_exclusive") else ">="
        upper = "<" if limit.get("max_exclusive") else "at most"
        raise ValueError(f"{name}: must be {lower} {limit['min']} and {upper} {limit['max']}, got {value}")


def _at_most(field: str, value, limit, what: str = "") -> None:
    if value > limit:
        what = f" {what}" if what else ""
        raise ValueError(f"{field}: at most {limit}{what}, got {value}")


def _finite_number(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field}: must be a finite number, got {value!r}")
    return float(value)


def check_run_config(config: dict) -> None:
    """Apply every limit to a complete run config (RunConfig.to_dict()); ValueError names field and limit."""
    for field in ("batch_size", "steps", "snapshot_every", "eval_every", "seed"):
        check_field(field, config[field])
    if "snapshot_schedule" in config:
        for key in ("dense_steps", "growth"):
            check_field(f"snapshot_schedule.{key}", config["snapshot_schedule"][key])
    if config["steps"] // config["snapshot_every"] > MAX_SNAPSHOTS_PER_RUN:
        needed = -(-config["steps"] // MAX_SNAPSHOTS_PER_RUN)
        raise ValueError(
            f"snapshot_every: a run keeps at most {MAX_SNAPSHOTS_PER_RUN} snapshots; "
            f"with steps={config['steps']} use snapshot_every >= {needed}"
        )
    check_optimizer(config["optimizer"])
    check_init("init", config["init"])
    check_dataset(config["dataset"])
    check_model(config["model"], config["dataset"], config["batch_size"])


def check_optimizer(optimizer: dict) -> None:
    check_field("lr", _finite_number("optimizer.lr", optimizer.get("lr")), "optimizer.lr")
    for key, value in optimizer.items():
        if key != "name" and not isinstance(value, bool):
            _finite_number(f"optimizer.{key}", value)
            if key in FIELD_LIMITS:
                check_field(key, value, f"optimizer.{key}")


def check_init(field: str, init) -> None:
    """Bound the numbers of an init; a hand-made kernel init bounds its kernels' count and size."""
    if not isinstance(init, dict):
        return
    for key, value in init.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _finite_number(f"{field}.{key}", value)
    if init.get("name") != "kernel":
        return
    kernels = init.get("kernels")
    if isinstance(kernels, (list, tuple)):
        _at_most(f"{field}.kernels", len(kernels), MAX_HANDMADE_KERNELS, "kernels")
        for index, grid in enumerate(kernels):
            if not isinstance(grid, str):
                _check_grid(f"{field}.kernels[{index}]", grid)
    if "fallback" in init:
        check_init(f"{field}.fallback", init["fallback"])


def _check_grid(field: str, grid) -> None:
    """A hand-made kernel: rows of numbers (2-d) or channels of rows (3-d), each side bounded."""
    depth, node = 0, grid
    while isinstance(node, (list, tuple)) and node:
        depth += 1
        node = node[0]
    if depth not in (2, 3):
        return  # not a grid: the engine names the problem
    channels = grid if depth == 3 else [grid]
    _at_most(field, len(channels), MAX_INPUT_CHANNELS, "channels in a hand-made kernel")
    for channel in channels:
        if not isinstance(channel, (list, tuple)):
            continue
        _at_most(field, len(channel), MAX_HANDMADE_KERNEL_SIDE, "rows in a hand-made kernel")
        for row in channel:
            if isinstance(row, (list, tuple)):
                _at_most(field, len(row), MAX_HANDMADE_KERNEL_SIDE, "columns in a hand-made kernel")


def check_dataset(dataset: dict) -> None:
    """Bound the size of the generated set and of file sets (`limit`); numbers must be finite."""
    from engine.datasets import DATASETS, dataset_available

    name = dataset.get("name")
    if name in DATASETS and not dataset_available(name):
        raise ValueError(f"dataset.name: {name} cannot load on this server ({DATASETS[name]['description']})")
    for key, value in dataset.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _finite_number(f"dataset.{key}", value)
    if "path" in dataset and dataset["path"] is not None:
        if not isinstance(dataset["path"], str):
            raise ValueError(f"dataset.path: must be a folder name under {DATASETS_FOLDER}/, got {dataset['path']!r}")
        _at_most("dataset.path", len(dataset["path"]), MAX_PATH_LENGTH, "characters")
    if dataset.get("limit") is not None:
        _at_most("dataset.limit", dataset["limit"], MAX_DATASET_EXAMPLES, "examples")
    if dataset.get("size") is not None:
        _at_most("dataset.size", dataset["size"], MAX_INPUT_SIDE, "pixels")
    if "val_fraction" in dataset and not 0 < dataset["val_fraction"] < 1:
        raise ValueError(f"dataset.val_fraction: must be between 0 and 1, got {dataset['val_fraction']}")
    if name in GENERATED_DATASETS:
        examples = dataset["n_train"] + dataset["n_val"]
        _at_most("dataset.n_train", examples, MAX_DATASET_EXAMPLES, "examples (n_train + n_val)")
        values = examples * dataset["size"] ** 2
        if values > MAX_DATASET_VALUES:
            raise ValueError(
                f"dataset.n_train: (n_train + n_val) x size^2 must be at most {MAX_DATASET_VALUES} pixels, got {values}"
            )


def check_dataset_files(config: dict, real_path: str) -> None:
    """Look at a file dataset before its run is queued, cheaply: an image folder's class folders,
    image count, and a bounded sample decoded for damage and size; then bound the model on the
    shape found. ValueError names dataset.path (or the field the shape breaks)."""
    from engine.datasets import DatasetError, check_image_folder

    dataset = config["dataset"]
    if dataset.get("name") != "image_folder":
        return
    cap = min(MAX_DATASET_EXAMPLES, dataset.get("limit") or MAX_DATASET_EXAMPLES)
    try:
        shape = check_image_folder(
            real_path, dataset.get("size"), bool(dataset.get("color")), cap, MAX_INPUT_SIDE, DATASET_SCAN_IMAGES
        )
    except DatasetError as error:
        text = str(error).replace(str(real_path), str(dataset["path"]))  # never the server's own path
        raise ValueError(text if text.startswith("dataset.path: ") else f"dataset.path: {text}") from None
    check_model(config["model"], {**dataset, "size": max(shape[1:])}, config["batch_size"])


def check_model(model, dataset: dict, batch_size: int) -> None:
    """Bound a model spec layer by layer, then its parameters and the memory one step needs."""
    from engine.core.model import normalize_spec
    from engine.presets import PRESETS

    spec = PRESETS[model] if isinstance(model, str) else model
    layers = spec.get("layers") or []
    _at_most("model.layers", len(layers), MAX_LAYERS, "layers")
    input_shape, _ = known_shape(dataset)  # the engine states each dataset's shape
    if isinstance(model, dict) and "input" in model:
        input_shape = list(model["input"])
    elif isinstance(model, str) and input_shape is None:
        input_shape = list(spec["input"])
    if input_shape is not None:
        if len(input_shape) == 3:
            _at_most("model.input", input_shape[0], MAX_INPUT_CHANNELS, "channels")
        _at_most("model.input", max(input_shape[1:] or input_shape), MAX_INPUT_SIDE, "pixels per side")
    for index, layer in enumerate(layers):
        field = f"model.layers[{index}]"
        _check_layer_fields(field, layer)
    if input_shape is None:
        return
    try:
        _, built = normalize_spec({"input": input_shape, "layers": layers})
    except ValueError:
        return  # the engine reports the misfit itself when the run builds its model
    sizes = _layer_sizes(built)
    parameters, step_values, feature_values = sizes["parameters"], sizes["step_values"], sizes["feature_values"]
    _at_most("model", parameters, MAX_PARAMETERS, "parameters")
    _at_most("model", feature_values, MAX_FEATURE_MAP_VALUES, "feature-map values per image (conv outputs)")
    if step_values * batch_size > MAX_STEP_VALUES:
        raise ValueError(
            f"batch_size: batch_size x values per example ({step_values}) must be at most {MAX_STEP_VALUES}; "
            f"use batch_size <= {max(1, MAX_STEP_VALUES // step_values)} or a smaller model"
        )


def _layer_sizes(built) -> dict:
    """Counts of a normalised model: parameters, floats of one step per example, conv outputs
    (feature-map values) per image, conv weights, filters, parameter arrays and conv layers."""
    sizes = dict.fromkeys(
        ("parameters", "step_values", "feature_values", "conv_weights", "filters", "arrays", "convs"), 0
    )
    for layer in built:
        shapes = layer.param_shapes()
        sizes["parameters"] += sum(math.prod(shape) for shape in shapes.values())
        sizes["arrays"] += len(shapes)
        sizes["step_values"] += math.prod(layer.output_shape)
        if layer.kind == "conv":
            sizes["step_values"] += layer.input_shape[0] * math.prod(layer.kernel) * math.prod(layer.output_shape[1:])
            sizes["feature_values"] += math.prod(layer.output_shape)
            sizes["conv_weights"] += math.prod(shapes["weight"])
            sizes["filters"] += layer.output_shape[0]
            sizes["convs"] += 1
    return sizes


# ---------------------------------------------------------------- storage
# What one stored snapshot costs, from the model's shapes (the compact format of app/storage.py,
# measured on the demo and medium presets, rounded up): the parameters 4 bytes each (float32,
# deflated: weights hardly compress), a zip entry per array (the parameters and up to three
# per conv layer), the JSON about 60 bytes a filter (its analysis, deflated) plus a fixed part,
# and the feature maps 0.05 bytes a conv output value of each probe image (stored as their
# difference from their recomputation, almost all zeros). The probe images are kept once per
# run (4 bytes a pixel); a checkpoint holds the parameters and up to two optimizer states
# beside them, with the recent metric points. The run's monitor file (app/storage.py) holds the
# dataset's monitor batch (at most engine.datasets.MONITOR_SIZE images, 4 bytes a pixel), labels and spec.
PROBE_IMAGES = 4
SNAPSHOT_FIXED_BYTES = 1024
SNAPSHOT_ARRAY_BYTES = 150  # zip entry and .npy header of one stored array
SNAPSHOT_FILTER_BYTES = 60
SNAPSHOT_MAP_VALUE_BYTES = 0.05
CHECKPOINT_FIXED_BYTES = 256 * 1024  # recent metric points and the config
# Defaults of the server's settings KERNELSCOPE_MAX_RUN_STORAGE and KERNELSCOPE_MIN_FREE_DISK (bytes):
MAX_RUN_STORAGE_BYTES = 1 << 30  # one run's snapshots and checkpoint (422 at POST beyond)
# The disk keeps this much free: a run whose estimate (plus what active runs may still
# write) does not fit is refused at POST with 507, and /healthz reports `disk_low` below it.
MIN_FREE_DISK_BYTES = 64 << 20
DISK_RETRY_SECONDS = 5.0  # after a full disk: how often the server tries to write again


def estimate_run_storage(config: dict) -> int | None:
    """Bytes a run of `config` (RunConfig.to_dict()) stores at most: every scheduled snapshot
    (engine.trainer.snapshot_steps) and its checkpoint; None when its shapes are unknown here."""
    from engine.core.model import normalize_spec
    from engine.presets import PRESETS
    from engine.trainer import snapshot_steps

    model = config["model"]
    spec = PRESETS[model] if isinstance(model, str) else model
    input_shape, _ = known_shape(config["dataset"])
    if isinstance(model, dict) and "input" in model:
        input_shape = list(model["input"])
    elif isinstance(model, str) and input_shape is None:
        input_shape = list(spec["input"])
    if input_shape is None:
        return None
    try:
        _, built = normalize_spec({"input": input_shape, "layers": spec.get("layers") or []})
    except ValueError:
        return None
    sizes = _layer_sizes(built)
    per_snapshot = (
        SNAPSHOT_FIXED_BYTES
        + 4 * sizes["parameters"]
        + SNAPSHOT_ARRAY_BYTES * (sizes["arrays"] + 3 * sizes["convs"])
        + SNAPSHOT_FILTER_BYTES * sizes["filters"]
        + math.ceil(SNAPSHOT_MAP_VALUE_BYTES * PROBE_IMAGES * sizes["feature_values"])
    )
    probe_images = 4 * PROBE_IMAGES * math.prod(input_shape)
    checkpoint = CHECKPOINT_FIXED_BYTES + 3 * 4 * sizes["parameters"]
    monitor = SNAPSHOT_FIXED_BYTES + MONITOR_SIZE * (4 * math.prod(input_shape) + 8)
    return len(snapshot_steps(config)) * per_snapshot + probe_images + checkpoint + monitor


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"


def check_storage(
    config: dict, data_dir, active_configs=(), budget: int = MAX_RUN_STORAGE_BYTES, reserve: int = MIN_FREE_DISK_BYTES
) -> None:
    """A run must fit its own `budget` (ValueError naming snapshot_every, 422) and, together with
    what the active runs (`active_configs`) may still write, the free disk less `reserve`
    (StorageFull, 507): the total budget is the disk."""
    import shutil

    from app.store import StorageFull

    needed = estimate_run_storage(config)
    if needed is None:
        return
    if needed > budget:
        raise ValueError(
            f"snapshot_every: this run would store about {_mib(needed)} of snapshots (a run may store at most "
            f"{_mib(budget)}); store fewer snapshots (larger snapshot_every, smaller "
            f"snapshot_schedule.dense_steps), fewer steps or a smaller model"
        )
    pending = sum(estimate_run_storage(other) or 0 for other in active_configs)
    free = shutil.disk_usage(data_dir).free
    if needed + pending + reserve > free:
        raise StorageFull(
            f"storage: this run needs about {_mib(needed)} and the active runs up to {_mib(pending)} more, "
            f"but the data directory's disk has {_mib(free)} free (and keeps {_mib(reserve)} spare)"
        )


def _check_layer_fields(field: str, layer) -> None:
    if not isinstance(layer, dict):
        return
    kind = layer.get("type")
    bounds = {"filters": MAX_FILTERS, "units": MAX_UNITS, "stride": MAX_STRIDE, "padding": MAX_PADDING}
    bounds["kernel"] = MAX_KERNEL
    if kind in ("maxpool", "avgpool"):
        bounds["size"] = MAX_POOL
    for key, limit in bounds.items():
        value = layer.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        for number in values:
            if isinstance(number, int) and not isinstance(number, bool):
                _at_most(f"{field}.{key}", number, limit)
    for key in ("slope",):
        if key in layer and layer[key] is not None:
            _finite_number(f"{field}.{key}", layer[key])
    for key in ("init", "bias_init"):
        if layer.get(key) is not None:
            check_init(f"{field}.{key}", layer[key])
