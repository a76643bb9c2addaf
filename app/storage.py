"""The file layer: where a run's snapshots, parameters and checkpoint are kept, and how.

`LocalStorage(data_dir)` is the one implementation (a folder per run under data_dir/runs,
a shared volume in distributed mode); an object store would implement the same methods.
Every file is written atomically (temp file + os.replace) and checked whole when it is
read: a file damaged behind the server's back raises `DamagedFile` naming run, step and
file, never bad data.

A snapshot is stored compactly, one zip (`<step>.snapshot.npz`) per step, holding only what
cannot be recomputed from the rest:

- `snapshot.json`: the snapshot JSON without the probe images, the conv kernels and biases
  (equal to the rounded parameters) and the feature maps;
- `params/<name>`: every parameter (float32, exact; deflated);
- `maps/<index>.*`: each conv layer's feature maps as the API serves them (FEATURE_MAP_DIGITS
  significant digits of the array's largest value, engine.analysis.rounded): the integer
  codes value * 10**decimals, stored as their difference from the same maps recomputed in
  float64 from the stored parameters and probe images. That difference is almost always 0,
  so the maps cost little, and decoding gives back exactly the values served before.
- Once per run, `snapshot_context.npz`: the probe images (float32, exact) and the model spec
  the maps are recomputed with.

Snapshots written by the earlier format (`<step>.json` + `<step>.maps.npz` + `<step>.npz`:
the whole JSON, float32 maps, params) are read as they are. Both answer the same JSON.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.analysis import rounded, rounding_decimals
from engine.analyst import FEATURE_MAP_DIGITS

SNAPSHOT_SUFFIX = ".snapshot.npz"
CONTEXT_FILE = "snapshot_context.npz"
CHECKPOINT_FILE = "checkpoint.npz"
MONITOR_FILE = "monitor.npz"  # the run's monitor batch and spec, for explanations
LEGACY_SUFFIXES = (".json", ".maps.npz", ".npz")  # the earlier format's three files of a step
FORMAT = 2  # the compact snapshot format (1: the earlier three files)
# A temp file of an atomic write older than this (seconds) was left by a killed writer.
TEMP_FILE_MAX_AGE = 3600.0
CONTEXTS_CACHED = 64  # runs whose probe images a process keeps decoded
PROBES_PLACEHOLDER = "\u0000probe images\u0000"  # stands for the probe images' text while a snapshot is encoded
_CONTEXTS: dict[str, tuple[tuple, tuple[SnapshotContext, str]]] = {}
_CONTEXT_LOCK = threading.Lock()
_EXACT_INTEGERS = 2.0**53  # codes beyond this are no longer exact in float64: such a map is kept as float32


# ---------------------------------------------------------------- damaged files


class DamagedFile(Exception):
    """A stored file of a run exists but cannot be read as what it should be."""

    def __init__(self, run_id: str, what: str, step: int | None, path: Path, reason: str):
        self.run_id, self.what, self.step, self.path, self.reason = run_id, what, step, Path(path), reason
        at = f" step {step}" if step is not None else ""
        super().__init__(f"{what}: run {run_id}{at}: the stored file {self.path.name} is damaged ({reason})")


class SnapshotGone(Exception):
    """A snapshot whose run was deleted while it was being read: the readers answer as for an
    absent snapshot (None), not as for damage."""

    def __init__(self, run_id: str, step: int):
        super().__init__(f"run {run_id} step {step}: deleted while it was read")


def load_npz(path: Path, run_id: str, what: str, step: int | None, names=None) -> dict[str, np.ndarray] | None:
    """Every array of an npz file, or only those of `names` it has (None when the file is
    absent); DamagedFile when what is read does not load whole.

    Reading each member checks its zip CRC, so a garbled byte is found, not only a cut.
    """
    try:
        if names is not None:
            return _npz_members(path, names)
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        return None
    except Exception as error:  # BadZipFile, EOFError, ValueError, zlib.error, OSError: all mean damage
        raise DamagedFile(run_id, what, step, path, f"{type(error).__name__}: {error}") from None


def _npz_members(path: Path, names) -> dict[str, np.ndarray]:
    """The arrays `names` of an npz file that has them, read with zipfile and numpy's .npy header
    reader: what np.load gives (zip CRC checked, no pickles), at about half its cost per file,
    which counts when a trajectory reads one array of every snapshot."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        members = set(archive.namelist())
        for name in names:
            if f"{name}.npy" not in members:
                continue
            raw = archive.read(f"{name}.npy")  # checks the CRC
            header = io.BytesIO(raw)
            version = np.lib.format.read_magic(header)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
            if dtype.hasobject:
                raise ValueError(f"{name}: object arrays are not allowed")
            count = math.prod(shape)
            flat = np.frombuffer(raw, dtype=dtype, count=count, offset=header.tell())
            arrays[name] = flat.reshape(shape, order="F" if fortran else "C").copy()
    return arrays


# ---------------------------------------------------------------- atomic files and JSON


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_bytes_atomic(path, dumps_json(obj).encode("utf-8"))


def npz_bytes(arrays: dict, compressed: bool = False) -> bytes:
    """The arrays as an npz file's bytes (deflated with `compressed`)."""
    buffer = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    # mypy takes any **mapping as possibly filling savez's `allow_pickle: bool`; the keys are array names
    save(buffer, **{name: np.asarray(value) for name, value in arrays.items()})  # type: ignore[arg-type]
    return buffer.getvalue()


def write_npz_atomic(path: Path, arrays: dict, compressed: bool = False) -> None:
    write_bytes_atomic(path, npz_bytes(arrays, compressed))


def json_safe(obj):
    """The value with NaN/inf as None (JSON has no infinity; browsers' JSON.parse rejects it)
    and numpy arrays and scalars as lists and numbers: the one NaN-to-None cleaner."""
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj) -> str:
    """Compact JSON; falls back to cleaning NaN/inf/numpy values only when needed."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):
        return json.dumps(json_safe(obj), separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------- feature maps as codes


class SnapshotContext(NamedTuple):
    """What every snapshot of a run shares: the model spec (resolved, with its input) and the
    probe images (P, C, H, W) its feature maps are computed on."""

    spec: dict
    probes: np.ndarray


def recomputed_maps(spec: dict, params: dict, probes: np.ndarray) -> dict[int, np.ndarray]:
    """Every conv layer's output for the probe images, in float64 with the reference engine:
    the prediction the stored codes are relative to (the same on every machine to far below
    the served precision)."""
    from engine.core.model import normalize_spec

    _, layers = normalize_spec(spec)
    convs = [index for index, layer in enumerate(layers) if layer.kind == "conv"]
    maps: dict[int, np.ndarray] = {}
    x = np.asarray(probes, dtype=np.float64)
    with np.errstate(all="ignore"):
        for index, layer in enumerate(layers[: max(convs, default=-1) + 1]):
            layer_params = {
                part: np.asarray(params[f"{index}.{part}"], dtype=np.float64) for part in layer.param_shapes()
            }
            x, _ = layer.forward(x, layer_params)
            if layer.kind == "conv":
                maps[index] = x
    return maps


def _predicted_codes(predicted: np.ndarray | None, shape: tuple, scale: float) -> np.ndarray:
    if predicted is None or predicted.shape != shape:
        return np.zeros(shape, dtype=np.int64)
    with np.errstate(all="ignore"):
        codes = np.rint(predicted * scale)
    usable = np.isfinite(codes) & (np.abs(codes) < _EXACT_INTEGERS)
    return np.where(usable, codes, 0.0).astype(np.int64)


def _smallest_int(values: np.ndarray) -> np.ndarray:
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if values.size == 0 or (values.min() >= info.min and values.max() <= info.max):
            return values.astype(dtype)
    return values


def encode_map(values, predicted: np.ndarray | None) -> dict[str, np.ndarray]:
    """The arrays that give back `values` (one conv layer's maps) rounded as the API serves them.

    codes = rint(value * 10**decimals) (numpy's round), stored minus the predicted codes;
    `nonfinite` and `negzero` list the flat positions served as null and as -0.0. A map whose
    codes would not be exact integers in float64 is kept as float32 (`raw`), as before.
    """
    array = np.asarray(values, dtype=np.float32).astype(np.float64)
    finite = np.isfinite(array)
    decimals = rounding_decimals(array, finite, FEATURE_MAP_DIGITS)
    scale = 10.0**decimals
    codes = np.rint(np.where(finite, array, 0.0) * scale)
    if codes.size and float(np.max(np.abs(codes))) >= _EXACT_INTEGERS:
        return {"raw": array.astype(np.float32)}
    parts = {
        "codes": _smallest_int(codes.astype(np.int64) - _predicted_codes(predicted, array.shape, scale)),
        "decimals": np.array(decimals, dtype=np.int8),
    }
    negzero = np.flatnonzero((codes == 0) & np.signbit(codes)).astype(np.int32)
    if negzero.size:
        parts["negzero"] = negzero
    if not finite.all():
        parts["nonfinite"] = np.flatnonzero(~finite).astype(np.int32)
    return parts


def decode_map(parts: dict[str, np.ndarray], predicted: np.ndarray | None) -> list:
    """The nested lists engine.analysis.rounded gives for the maps `parts` was encoded from."""
    if "raw" in parts:
        return rounded(parts["raw"], FEATURE_MAP_DIGITS)
    residual = parts["codes"]
    scale = 10.0 ** int(parts["decimals"])
    codes = (residual.astype(np.int64) + _predicted_codes(predicted, residual.shape, scale)).astype(np.float64)
    flat = codes.reshape(-1)
    if "negzero" in parts:
        flat[parts["negzero"]] = -0.0
    result = codes / scale
    if "nonfinite" not in parts:
        return result.tolist()
    served = result.astype(object)  # None where the value was not finite, as rounded gives it
    served.reshape(-1)[parts["nonfinite"]] = None
    return served.tolist()


def _stored_json(members: dict[str, np.ndarray], run_id: str, step: int, path: Path) -> dict:
    """The JSON member of a compact snapshot's file, checked to be a snapshot of `step`."""
    try:
        value = json.loads(members["snapshot.json"].tobytes().decode("utf-8"))
    except (KeyError, ValueError) as error:
        raise DamagedFile(run_id, "snapshot", step, path, f"not valid JSON: {error}") from None
    if (
        not isinstance(value, dict)
        or value.get("step") != step
        or not isinstance(value.get("layers"), list)
        or not isinstance(value.get("stored"), dict)
    ):
        raise DamagedFile(run_id, "snapshot", step, path, "not a snapshot of this step")
    return value


def _params(members: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The parameters among a compact snapshot's members, by state-dict name."""
    return {name.removeprefix("params/"): array for name, array in members.items() if name.startswith("params/")}


# ---------------------------------------------------------------- the local directory


class LocalStorage:
    """A run's files in data_dir/runs/<id>/: snapshots/<step>.snapshot.npz (or the earlier
    three files of a step), snapshot_context.npz and checkpoint.npz."""

    def __init__(self, data_dir: Path | str):
        self.data_dir = Path(data_dir)

    # -- places

    def run_dir(self, run_id: str) -> Path:
        return self.data_dir / "runs" / run_id

    def snapshot_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "snapshots"

    def checkpoint_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / CHECKPOINT_FILE

    def context_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / CONTEXT_FILE

    def monitor_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / MONITOR_FILE

    def snapshot_path(self, run_id: str, step: int) -> Path:
        return self.snapshot_dir(run_id) / f"{step}{SNAPSHOT_SUFFIX}"

    # -- listing

    def snapshot_steps(self, run_id: str) -> list[int]:
        """Every step with a stored snapshot (either format), ascending."""
        try:
            names = os.listdir(self.snapshot_dir(run_id))
        except FileNotFoundError:
            return []
        steps = set()
        for name in names:
            stem, _, ext = name.partition(".")
            if ext in ("json", SNAPSHOT_SUFFIX[1:]) and stem.isascii() and stem.isdigit():
                steps.add(int(stem))
        return sorted(steps)

    def latest_snapshot_step(self, run_id: str) -> int | None:
        steps = self.snapshot_steps(run_id)
        return steps[-1] if steps else None

    def sizes(self, run_id: str) -> dict[str, int]:
        """Bytes stored for the run by kind: snapshots, legacy_snapshots, context, checkpoint, monitor, other."""
        totals = dict.fromkeys(("snapshots", "legacy_snapshots", "context", "checkpoint", "monitor", "other"), 0)
        for folder, _, names in os.walk(self.run_dir(run_id)):
            for name in names:
                try:
                    size = os.path.getsize(os.path.join(folder, name))
                except FileNotFoundError:
                    continue
                if name.endswith(SNAPSHOT_SUFFIX):
                    kind = "snapshots"
                elif name.endswith(LEGACY_SUFFIXES) and name.partition(".")[0].isdigit():
                    kind = "legacy_snapshots"
                elif name == CONTEXT_FILE:
                    kind = "context"
                elif name == CHECKPOINT_FILE:
                    kind = "checkpoint"
                elif name == MONITOR_FILE:
                    kind = "monitor"
                else:
                    kind = "other"
                totals[kind] += size
        return totals

    # -- writing

    def write_snapshot(
        self,
        run_id: str,
        snapshot: dict,
        params: dict,
        feature_maps: dict | None = None,
        context: SnapshotContext | None = None,
    ) -> int:
        """Store one snapshot (the engine's snapshot JSON and its parameters) in one file.

        feature_maps: {conv layer index: array (probes, out, H, W)}; when None they are taken
        from the snapshot's layers (nested lists, as Trainer.snapshot gives). With `context`
        the probe images and model spec are kept once per run and the maps stored relative to
        their recomputation; without it a snapshot is stored whole (maps as plain codes).
        Whatever is left out is left out only when it is recomputed exactly from what is kept.
        """
        step = int(snapshot["step"])
        params = {name: np.asarray(value) for name, value in params.items()}
        shared = self._shared_context(run_id, context)
        light = dict(snapshot)
        stored: dict = {"format": FORMAT, "probes": False, "weights": [], "maps": "codes"}
        maps = {} if feature_maps is None else {str(k): v for k, v in feature_maps.items()}
        layers = []
        for layer in snapshot.get("layers", []):
            layer = dict(layer)
            if "feature_maps" in layer:
                maps.setdefault(str(layer.get("index")), layer.pop("feature_maps"))
            if self._kernels_recomputable(layer, params):
                layer["weight"] = layer["bias"] = None
                stored["weights"].append(layer["index"])
            layers.append(layer)
        light["layers"] = layers
        if shared is not None and "probes" in light and light["probes"] == rounded(shared.probes, FEATURE_MAP_DIGITS):
            light["probes"] = None
            stored["probes"] = True
        predicted: dict[int, np.ndarray] = {}
        if shared is not None and maps:
            try:
                predicted = recomputed_maps(shared.spec, params, shared.probes)
                stored["maps"] = "recomputed"
            except (KeyError, ValueError, IndexError, TypeError):  # params that do not fit the spec
                predicted = {}
        light["stored"] = stored
        members: dict[str, np.ndarray] = {"snapshot.json": np.frombuffer(dumps_json(light).encode(), dtype=np.uint8)}
        members.update({f"params/{name}": value for name, value in params.items()})
        for key, values in maps.items():
            guess = predicted.get(int(key)) if key.lstrip("-").isdigit() else None
            for part, array in encode_map(values, guess).items():
                members[f"maps/{key}.{part}"] = array
        write_bytes_atomic(self.snapshot_path(run_id, step), npz_bytes(members, compressed=True))
        self._remove_legacy(run_id, step)
        return step

    @staticmethod
    def _kernels_recomputable(layer: dict, params: dict) -> bool:
        index = layer.get("index")
        weight, bias = params.get(f"{index}.weight"), params.get(f"{index}.bias")
        if layer.get("type") != "conv" or "weight" not in layer or "bias" not in layer or weight is None:
            return False
        if bias is None or layer["bias"] is None:
            return False
        return layer["weight"] == rounded(weight) and layer["bias"] == rounded(bias)

    def _shared_context(self, run_id: str, context: SnapshotContext | None) -> SnapshotContext | None:
        """The run's stored context, written now if the run has none; None when `context` is
        None or differs from the stored one (then the snapshot is stored whole)."""
        if context is None:
            return None
        spec_text = dumps_json(context.spec)
        probes = np.asarray(context.probes, dtype=np.float32)
        try:
            stored = self.read_context(run_id)
        except DamagedFile:
            return None  # earlier snapshots refer to it: it stays, and this one is stored whole
        if stored is None:
            write_npz_atomic(
                self.context_path(run_id),
                {"probes": probes, "spec.json": np.frombuffer(spec_text.encode(), dtype=np.uint8)},
                compressed=True,
            )
            return SnapshotContext(json.loads(spec_text), probes)
        if dumps_json(stored.spec) != spec_text or not np.array_equal(stored.probes, probes):
            return None
        return stored

    def _remove_legacy(self, run_id: str, step: int) -> None:
        for suffix in LEGACY_SUFFIXES:
            try:
                os.unlink(self.snapshot_dir(run_id) / f"{step}{suffix}")
            except FileNotFoundError:
                pass

    def remove_snapshots_after(self, run_id: str, step: int) -> None:
        """Delete every snapshot newer than `step` (a run resumed from an older checkpoint)."""
        for later in self.snapshot_steps(run_id):
            if later > step:
                try:
                    os.unlink(self.snapshot_path(run_id, later))
                except FileNotFoundError:
                    pass
                self._remove_legacy(run_id, later)

    def write_checkpoint(self, run_id: str, arrays: dict) -> None:
        write_npz_atomic(self.checkpoint_path(run_id), arrays, compressed=True)

    def delete_run(self, run_id: str) -> None:
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    # -- reading

    def read_context(self, run_id: str, step: int | None = None) -> SnapshotContext | None:
        """The run's probe images and model spec (None without them); a damage names `step`,
        the snapshot being read."""
        found = self._cached_context(run_id, step)
        return None if found is None else found[0]

    def _cached_context(self, run_id: str, step: int | None) -> tuple[SnapshotContext, str] | None:
        """(the run's context, its probe images as the snapshot JSON's text), read once per
        version of the file by this process (every snapshot read needs them)."""
        path = self.context_path(run_id)
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        key, version = str(path), (info.st_ino, info.st_mtime_ns, info.st_size)
        with _CONTEXT_LOCK:
            cached = _CONTEXTS.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        arrays = load_npz(path, run_id, "snapshot", step)
        if arrays is None:
            return None
        try:
            context = SnapshotContext(json.loads(arrays["spec.json"].tobytes().decode("utf-8")), arrays["probes"])
        except (KeyError, ValueError) as error:
            raise DamagedFile(run_id, "snapshot", step, path, f"{type(error).__name__}: {error}") from None
        found = (context, dumps_json(rounded(context.probes, FEATURE_MAP_DIGITS)))
        with _CONTEXT_LOCK:
            _CONTEXTS[key] = (version, found)
            while len(_CONTEXTS) > CONTEXTS_CACHED:
                _CONTEXTS.pop(next(iter(_CONTEXTS)))
        return found

    def _context_missing(self, run_id: str, step: int) -> Exception:
        """What to raise when a snapshot that refers to its run's context finds none: the run was
        deleted meanwhile (its snapshot read, then its folder removed), so the snapshot is gone
        too; or, with the run still there, a damaged run."""
        if not self.run_dir(run_id).exists():
            return SnapshotGone(run_id, step)
        return DamagedFile(run_id, "snapshot", step, self.context_path(run_id), "the run's probe images are missing")

    def _read_compact(self, run_id: str, step: int) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(the stored JSON, every member) of a compact snapshot, each member checked; None if absent."""
        path = self.snapshot_path(run_id, step)
        members = load_npz(path, run_id, "snapshot", step)
        if members is None:
            return None
        return _stored_json(members, run_id, step, path), members

    def _complete(
        self, run_id: str, step: int, value: dict, members: dict, as_text: bool = False, probes: bool = True
    ) -> tuple[dict, SnapshotContext | None, str | None]:
        """The stored JSON with what was left out put back (in place), the run's context if
        needed, and with `as_text` the probe images' JSON text, for which value["probes"] then
        holds PROBES_PLACEHOLDER. Without `probes`, the probe images are left out."""
        stored = value.pop("stored")
        if not probes:
            value.pop("probes", None)
            stored["probes"] = False
        params = _params(members)
        needs_context = stored.get("probes") or stored.get("maps") == "recomputed"
        found = self._cached_context(run_id, step) if needs_context else None
        context, probes_text = (None, None) if found is None else found
        if stored.get("probes"):
            if probes_text is None:
                raise self._context_missing(run_id, step)
            value["probes"] = PROBES_PLACEHOLDER if as_text else json.loads(probes_text)
        else:
            probes_text = None
        recomputed = set(stored.get("weights", []))
        for layer in value["layers"]:
            if layer.get("index") in recomputed:
                try:
                    layer["weight"] = rounded(params[f"{layer['index']}.weight"])
                    layer["bias"] = rounded(params[f"{layer['index']}.bias"])
                except KeyError as error:
                    path = self.snapshot_path(run_id, step)
                    raise DamagedFile(run_id, "snapshot", step, path, f"no parameter {error}") from None
        return value, context, probes_text

    def read_snapshot(self, run_id: str, step: int, feature_maps: bool = True, probes: bool = True) -> dict | None:
        """One snapshot as a dict (the engine's snapshot JSON), or None if absent.

        Feature maps come back as nested lists rounded like Trainer.snapshot rounds them. Without
        `probes` the probe images are left out: a reader of the kernels or detectors of many
        snapshots skips decoding the same images each time.
        """
        try:
            return self._read_snapshot(run_id, step, feature_maps, probes)
        except SnapshotGone:
            return None

    def _read_snapshot(self, run_id: str, step: int, feature_maps: bool, probes: bool) -> dict | None:
        compact = self._read_compact(run_id, step)
        if compact is None:
            snapshot = self._read_legacy(run_id, step, feature_maps)
            if snapshot is not None and not probes:
                snapshot.pop("probes", None)
            return snapshot
        value, members = compact
        mode = value["stored"].get("maps")
        snapshot, context, _ = self._complete(run_id, step, value, members, probes=probes)
        if not feature_maps:
            return snapshot
        predicted: dict[int, np.ndarray] = {}
        if mode == "recomputed":
            if context is None:
                raise self._context_missing(run_id, step)
            predicted = recomputed_maps(context.spec, _params(members), context.probes)
        parts: dict[str, dict[str, np.ndarray]] = {}
        for name, array in members.items():
            if name.startswith("maps/"):
                key, _, part = name[5:].rpartition(".")
                parts.setdefault(key, {})[part] = array
        for layer in snapshot["layers"]:
            key = str(layer.get("index"))
            if key in parts:
                guess = predicted.get(int(key)) if key.lstrip("-").isdigit() else None
                try:
                    layer["feature_maps"] = decode_map(parts[key], guess)
                except (KeyError, IndexError, ValueError) as error:
                    path = self.snapshot_path(run_id, step)
                    raise DamagedFile(run_id, "snapshot", step, path, f"feature maps: {error}") from None
        return snapshot

    def read_snapshot_text(self, run_id: str, step: int, probes: bool = True) -> str | None:
        """The snapshot JSON without feature maps as text, or None if absent. Without `probes`,
        the probe images are left out (they are the same in every snapshot of a run)."""
        try:
            return self._read_snapshot_text(run_id, step, probes)
        except SnapshotGone:
            return None

    def _read_snapshot_text(self, run_id: str, step: int, probes: bool) -> str | None:
        compact = self._read_compact(run_id, step)
        if compact is None:
            text, value = self._legacy_json(run_id, step)
            if probes or value is None:
                return text
            value.pop("probes", None)
            return dumps_json(value)
        value, _, probes_text = self._complete(run_id, step, *compact, as_text=True, probes=probes)
        text = dumps_json(value)
        if probes_text is None:
            return text
        marker = json.dumps(PROBES_PLACEHOLDER)
        if text.count(marker) != 1:  # the snapshot's own text holds the marker: no splicing
            value["probes"] = json.loads(probes_text)
            return dumps_json(value)
        return text.replace(marker, probes_text)

    def read_snapshot_params(self, run_id: str, step: int) -> dict[str, np.ndarray] | None:
        compact = self._read_compact(run_id, step)
        if compact is None:
            return load_npz(self.snapshot_dir(run_id) / f"{step}.npz", run_id, "snapshot", step)
        return _params(compact[1])

    def read_snapshot_arrays(self, run_id: str, step: int, names) -> dict[str, np.ndarray] | None:
        """Only the named parameter arrays of one snapshot (those it has), each checked like
        read_snapshot_params checks every array: a reader that needs a few layers skips the rest."""
        names = list(names)
        path = self.snapshot_path(run_id, step)
        if path.exists():
            found = load_npz(path, run_id, "snapshot", step, [f"params/{name}" for name in names])
            return None if found is None else _params(found)
        return load_npz(self.snapshot_dir(run_id) / f"{step}.npz", run_id, "snapshot", step, names)

    def read_snapshot_without_arrays(self, run_id: str, step: int) -> dict | None:
        """One snapshot's JSON without its arrays (no weights, biases, feature maps or probe
        images; detectors, stats, summary rows and metrics as stored), or None if absent. Of a
        compact snapshot only its JSON member is read: for readers of many snapshots' detectors
        or summary rows, whose weights would cost a read and a rounding each."""
        path = self.snapshot_path(run_id, step)
        members = load_npz(path, run_id, "snapshot", step, ["snapshot.json"])
        if not members:  # absent, or a legacy file: read the usual way
            value = self.read_snapshot(run_id, step, feature_maps=False, probes=False)
        else:
            value = _stored_json(members, run_id, step, path)
            value.pop("stored")
            value.pop("probes", None)
        if value is not None:
            for layer in value["layers"]:
                for name in ("weight", "bias", "feature_maps"):
                    layer.pop(name, None)
        return value

    # -- the monitor batch

    def write_monitor(self, run_id: str, x, y, classes, spec: dict) -> None:
        """Store the run's monitor batch: images x (N, C, H, W) in the model's input scale, labels y
        (N,), the class names and the model spec the run trains (JSON text)."""
        write_npz_atomic(
            self.monitor_path(run_id),
            {
                "x": np.asarray(x, dtype=np.float32),
                "y": np.asarray(y, dtype=np.int64),
                "classes": np.asarray([str(name) for name in classes], dtype=str),
                "spec": np.array(json.dumps(spec, sort_keys=True)),
            },
            compressed=True,
        )

    def read_monitor(self, run_id: str) -> dict | None:
        """{"x", "y", "classes" (list of str), "spec" (dict)} of the run's monitor batch; None when the
        run has none; DamagedFile when it does not load whole or its arrays do not fit together."""
        path = self.monitor_path(run_id)
        arrays = load_npz(path, run_id, "monitor batch", None)
        if arrays is None:
            return None

        def damaged(reason: str) -> DamagedFile:
            return DamagedFile(run_id, "monitor batch", None, path, reason)

        missing = [name for name in ("x", "y", "classes", "spec") if name not in arrays]
        if missing:
            raise damaged(f"it has no {', '.join(missing)}")
        x, y, classes = arrays["x"], arrays["y"], arrays["classes"]
        if x.ndim != 4 or x.dtype != np.float32 or not np.all(np.isfinite(x)):
            raise damaged(f"x is not finite float32 images (N, C, H, W): {x.dtype} {x.shape}")
        if y.shape != (len(x),) or y.dtype.kind != "i":
            raise damaged(f"y is not one integer label per image: {y.dtype} {y.shape}")
        if classes.ndim != 1 or classes.dtype.kind != "U" or len(classes) == 0:
            raise damaged(f"classes is not a list of names: {classes.dtype} {classes.shape}")
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise damaged(f"a label lies outside 0..{len(classes) - 1}")
        try:
            spec = json.loads(str(arrays["spec"]))
        except ValueError as error:
            raise damaged(f"spec is not JSON: {error}") from None
        if not isinstance(spec, dict) or list(spec.get("input") or []) != list(x.shape[1:]):
            raise damaged("spec is not a model spec for these images")
        return {"x": x, "y": y, "classes": [str(name) for name in classes], "spec": spec}

    def snapshot_files(self, run_id: str, step: int) -> dict[str, bytes]:
        """The step's snapshot in the export's layout ({step}.json without maps, {step}.maps.npz
        float32 maps as served, {step}.npz params); empty if absent."""
        if not self.snapshot_path(run_id, step).exists():
            files = {}
            for suffix in LEGACY_SUFFIXES:
                path = self.snapshot_dir(run_id) / f"{step}{suffix}"
                if path.exists():
                    files[f"{step}{suffix}"] = path.read_bytes()
            return files
        snapshot = self.read_snapshot(run_id, step, feature_maps=True)
        params = self.read_snapshot_params(run_id, step)
        if snapshot is None or params is None:
            return {}
        maps = {}
        for layer in snapshot["layers"]:
            if "feature_maps" in layer:
                maps[str(layer["index"])] = np.array(layer.pop("feature_maps"), dtype=np.float32)
        return {
            f"{step}.json": dumps_json(snapshot).encode("utf-8"),
            f"{step}.maps.npz": npz_bytes(maps),
            f"{step}.npz": npz_bytes(params),
        }

    def read_checkpoint(self, run_id: str) -> dict[str, np.ndarray] | None:
        """The run's checkpoint arrays, None without one; DamagedFile when it does not load whole
        or has no step."""
        path = self.checkpoint_path(run_id)
        checkpoint = load_npz(path, run_id, "checkpoint", None)
        if checkpoint is not None and "step" not in checkpoint:
            raise DamagedFile(run_id, "checkpoint", None, path, "it has no step")
        return checkpoint

    # -- the earlier format

    def _legacy_json(self, run_id: str, step: int) -> tuple[str | None, dict | None]:
        path = self.snapshot_dir(run_id) / f"{step}.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None, None
        try:
            text = raw.decode("utf-8")
            value = json.loads(text)
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise DamagedFile(run_id, "snapshot", step, path, f"not valid JSON: {error}") from None
        if not isinstance(value, dict) or value.get("step") != step or not isinstance(value.get("layers"), list):
            raise DamagedFile(run_id, "snapshot", step, path, "not a snapshot of this step")
        return text, value

    def _read_legacy(self, run_id: str, step: int, feature_maps: bool) -> dict | None:
        _, snapshot = self._legacy_json(run_id, step)
        if snapshot is None or not feature_maps:
            return snapshot
        maps = load_npz(self.snapshot_dir(run_id) / f"{step}.maps.npz", run_id, "snapshot", step) or {}
        for layer in snapshot.get("layers", []):
            key = str(layer.get("index"))
            if key in maps:
                layer["feature_maps"] = rounded(maps[key], FEATURE_MAP_DIGITS)
        return snapshot
