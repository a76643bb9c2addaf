"""Data parallelism across processes: a partner process computes its part of each batch.

A training step of a small net is hundreds of short numpy calls. Python threads share one
interpreter lock, so two threads splitting the batch barely beat one. A partner is a second
Python process (running engine.fast.partner_main) with a replica of the model. For each forward
the main process writes the parameters and the partner's slice of the batch into a shared
memory file (the "arena"), sends a short command over the partner's stdin, computes its
own slice meanwhile, and reads the partner's logits back from the arena; backward works
the same way with the gradient of the loss and the weight gradients. The partner keeps its
slice's caches between the two, copies everything it reads out of the arena first, and
runs BLAS on one thread. Model.train_gradients does a whole training pass in one exchange
("train": the partner also gets its labels and computes its share of the loss).

The split is fixed by the batch size, and each part is computed by the same code either
way, so results are bit-identical with or without partners. If a partner cannot start or
dies, its part is computed in the main process instead, and that partner is not used again.
The partner exits when the main process closes its stdin (or dies). Linux / POSIX only;
elsewhere `partners()` returns nothing and the model runs its parts one after the other.
"""

import atexit
import itertools
import math
import mmap
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

_HEADER = struct.Struct("<I")
# How long close() waits for a partner to end on EOF before killing it: at load 30 on this 2-core
# machine a fresh partner took more than the 2 s allowed before to start and exit.
CLOSE_SECONDS = 15
_ALIGN = 64


def _send(stream, message):
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


# Before blocking on the channel, poll it for up to this long. Each side is idle only for
# the other's short serial work (loss, optimizer, bookkeeping) between exchanges, and a
# process woken from a blocking read on this virtual machine starts late and slow: measured
# with benchmarks/engine.py, small's batch-64 step took 0.94-0.95 of the time with polling
# (three alternating runs). Once the wait is longer, the blocking read costs no CPU.
SPIN_SECONDS = 0.002

# Polling pays only while a core is spare: when another process wants the core, each poll is
# a time slice taken from it (or from the other side of the exchange), so with the default
# policy "auto" a side polls only when no more threads are runnable than there are CPUs
# (/proc/loadavg, read before each wait: about 10 microseconds). KERNELSCOPE_PARTNER_SPIN=
# always|never|auto chooses (benchmarks/contention.py measures the three).
SPIN_POLICY = os.environ.get("KERNELSCOPE_PARTNER_SPIN", "auto").strip().lower()


def runnable_processes(path="/proc/loadavg"):
    """The number of runnable threads on the machine right now (this one included), or None
    where the kernel does not say."""
    try:
        with open(path, "rb") as source:
            return int(source.read().split()[3].split(b"/")[0])
    except (OSError, IndexError, ValueError):
        return None


def running_partners():
    """How many of this process's partners are runnable right now ('R' in /proc/PID/stat): a
    partner polls its channel for up to SPIN_SECONDS after its part of a pass, so a look at the
    machine just after a split pass finds it running, though it yields its core to any work."""
    if _partners_pid != os.getpid():
        return 0
    running = 0
    for partner in list(_partners):
        try:
            with open(f"/proc/{partner.process.pid}/stat", "rb") as source:
                state = source.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        running += state == b"R"
    return running


def spin_allowed(policy, runnable, cpus):
    """Whether to poll before blocking: always, never, or (auto) when the `runnable` threads
    (None when unknown), which include this one and the one we wait for, fit on `cpus`."""
    if policy == "always":
        return True
    if policy == "never" or runnable is None:
        return False
    return runnable <= cpus


_CPUS = os.cpu_count() or 1


def _spin_until_readable(stream, seconds):
    """Poll stream's file descriptor until it has data or `seconds` pass. The protocol has at
    most one message in flight, so nothing waits in the stream's own buffer meanwhile."""
    if not spin_allowed(SPIN_POLICY, None if SPIN_POLICY != "auto" else runnable_processes(), _CPUS):
        return
    deadline = time.perf_counter() + seconds
    descriptor = stream.fileno()
    while time.perf_counter() < deadline:
        if select.select([descriptor], [], [], 0)[0]:
            return


def _receive(stream, spin_seconds=0.0):
    if spin_seconds > 0:
        _spin_until_readable(stream, spin_seconds)
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("partner channel closed")
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("partner channel closed")
    return pickle.loads(payload)


class Layout:
    """Where named arrays live in the arena: name -> (offset, shape, dtype)."""

    def __init__(self):
        self.entries = {}
        self.size = 0

    def add(self, name, shape, dtype):
        dtype = np.dtype(dtype)
        self.entries[name] = (self.size, tuple(int(size) for size in shape), dtype.str)
        nbytes = math.prod(shape) * dtype.itemsize
        self.size += -(-nbytes // _ALIGN) * _ALIGN
        return self


def _view(buffer, entry):
    offset, shape, dtype = entry
    count = math.prod(shape)
    return np.frombuffer(buffer, dtype=np.dtype(dtype), count=count, offset=offset).reshape(shape)


class Arena:
    """A shared memory file, mapped by both processes (unlinked once both have mapped it)."""

    def __init__(self, size, path=None):
        self.size = size
        if path is None:
            folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
            descriptor, self.path = tempfile.mkstemp(prefix="kernelscope-arena-", dir=folder)
            try:  # reserve the pages now: a full /dev/shm then fails here, not as SIGBUS later
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(descriptor, 0, size)
                else:  # macOS: no fallocate; the file is only sized
                    os.ftruncate(descriptor, size)
            except OSError:
                os.close(descriptor)
                os.unlink(self.path)
                raise
        else:
            self.path = path
            descriptor = os.open(path, os.O_RDWR)
        try:
            self.memory = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        self._views = {}

    def view(self, entry):
        """The array at a layout entry (offset, shape, dtype); made once per entry."""
        view = self._views.get(entry)
        if view is None:
            view = self._views[entry] = _view(self.memory, entry)
        return view

    def unlink(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------------------
# Main-process side
# ----------------------------------------------------------------------------------------


class Partner:
    """One partner process and the arena shared with it. Use `lock` around a forward or
    backward exchange (send ... collect) when several threads share partners."""

    def __init__(self):
        import engine

        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, environment.get("PYTHONPATH")]))
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            environment[variable] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from engine.fast.partner_main import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
            close_fds=True,
        )
        self.lock = threading.Lock()
        self.arena = None
        self.models = set()
        self.pending_drops = []  # models collected while the lock was held: dropped at the next exchange
        self.broken = False
        self._layouts = {}  # (model key, input shape, dtype) -> Layout in the arena
        self._current = None  # the Layout of the exchange under way

    def _call(self, message):
        _send(self.process.stdin, message)
        return self._answer()

    def _answer(self):
        reply = _receive(self.process.stdout, SPIN_SECONDS)
        if reply[0] != "ok":
            raise RuntimeError(f"partner failed: {reply[1]}")
        return reply

    def _ensure_arena(self, size):
        if self.arena is not None and self.arena.size >= size:
            return
        arena = Arena(max(size, 2 * (self.arena.size if self.arena else 0)))
        try:
            self._call(("arena", arena.path, arena.size))
        finally:
            arena.unlink()
        self.arena = arena

    def _ensure_model(self, key, spec):
        if key not in self.models:
            self._call(("model", key, spec))
            self.models.add(key)

    def forget(self, key):
        """Drop a model's replica (its Model was garbage-collected).

        This runs as a finalizer, at any allocation of any thread, possibly in the middle of an
        exchange whose lock this very thread holds (a model's step holds it while computing its
        own part): it never waits for the lock. When the lock is busy the drop is left for the
        next exchange (`_prepare`, which runs under the lock)."""
        if key not in self.models or self.broken:
            return
        if not self.lock.acquire(blocking=False):
            self.pending_drops.append(key)  # list.append is atomic: safe from a finalizer
            return
        try:
            self._drop(key)
        finally:
            self.lock.release()

    def _drop(self, key):
        """Tell the partner to drop a model's replica (the caller holds the lock)."""
        if key not in self.models or self.broken:
            return
        try:
            self._call(("drop", key))
        except (OSError, EOFError, RuntimeError):
            self.broken = True
        self.models.discard(key)
        self._layouts = {signature: value for signature, value in self._layouts.items() if signature[0] != key}

    def _prepare(self, key, spec, params, x, logits_shape):
        """Copy params and x into the arena (laid out once per model and input shape: inputs,
        then logits, gradients, dx and dlogits, none overlapping) and return the layout."""
        while self.pending_drops:
            self._drop(self.pending_drops.pop())
        self._ensure_model(key, spec)
        signature = (key, x.shape, x.dtype.str)
        if signature not in self._layouts:  # laid out once, and the partner told once
            layout = Layout()
            for name, value in params.items():
                layout.add(f"param:{name}", value.shape, x.dtype)
            layout.add("x", x.shape, x.dtype)
            layout.add("labels", x.shape[:1], np.int64)
            layout.add("logits", logits_shape, x.dtype)
            for name, value in params.items():
                layout.add(f"grad:{name}", value.shape, x.dtype)
            layout.add("dx", x.shape, x.dtype)
            layout.add("dlogits", logits_shape, np.float64)
            layout.number = next(_layout_numbers)
            self._call(("layout", layout.number, key, {name: tuple(entry) for name, entry in layout.entries.items()}))
            self._layouts[signature] = layout
        layout = self._layouts[signature]
        self._ensure_arena(layout.size)
        self._current = layout
        for name, value in params.items():
            np.copyto(self.arena.view(layout.entries[f"param:{name}"]), value, casting="unsafe")
        np.copyto(self.arena.view(layout.entries["x"]), x)
        return layout

    def send_forward(self, key, spec, params, x, logits_shape):
        """Start the forward of x (N, C, H, W) with params {name: array} on the partner."""
        layout = self._prepare(key, spec, params, x, logits_shape)
        _send(self.process.stdin, ("forward", key, layout.number))

    def collect_forward(self):
        """The logits of the forward started by send_forward (a copy)."""
        self._answer()
        return self.arena.view(self._current.entries["logits"]).copy()

    def send_backward(self, key, dlogits, need_input_grad):
        """Start the backward of the last forward with dlogits (the partner kept its caches)."""
        if dlogits.dtype.itemsize > 8:
            raise ValueError("dlogits wider than float64")
        entry = (self._current.entries["dlogits"][0], tuple(dlogits.shape), dlogits.dtype.str)
        np.copyto(self.arena.view(entry), dlogits)
        _send(self.process.stdin, ("backward", key, self._current.number, entry, need_input_grad))

    def collect_backward(self):
        """(grads {name: array}, dx or None) of the backward started by send_backward."""
        (_, has_dx) = self._answer()
        dx = self.arena.view(self._current.entries["dx"]).copy() if has_dx else None
        return self._grads(), dx

    def send_train(self, key, spec, params, x, labels, logits_shape, total):
        """Start forward, softmax cross-entropy (divided by the whole batch, `total`) and
        backward of x with labels on the partner, in one exchange."""
        layout = self._prepare(key, spec, params, x, logits_shape)
        np.copyto(self.arena.view(layout.entries["labels"]), labels, casting="unsafe")
        _send(self.process.stdin, ("train", key, layout.number, total))

    def collect_train(self):
        """(logits, loss summed over the part, grads {name: array}) of send_train."""
        _, loss_sum = self._answer()
        return self.arena.view(self._current.entries["logits"]).copy(), loss_sum, self._grads()

    def _grads(self):
        entries = self._current.entries
        return {
            name.split(":", 1)[1]: self.arena.view(entry).copy()
            for name, entry in entries.items()
            if name.startswith("grad:")
        }

    def close(self):
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:  # a partner still starting up (importing numpy on a busy machine) needs a while to see EOF
            self.process.wait(timeout=CLOSE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_partners: list[Partner] = []
_partners_pid = None
_partners_lock = threading.Lock()
_model_keys = itertools.count()
_layout_numbers = itertools.count()


def new_model_key():
    return next(_model_keys)


def partners(count):
    """Up to `count` working partners for this process (started on first use)."""
    global _partners, _partners_pid
    if count < 1 or not hasattr(os, "fork"):
        return []
    with _partners_lock:
        if _partners_pid != os.getpid():  # first use, or a forked child: the parent's are not ours
            _partners, _partners_pid = [], os.getpid()
        while len(_partners) < count:
            try:
                _partners.append(Partner())
            except OSError:
                break
        return [partner for partner in _partners[:count] if not partner.broken]


def forget_model(key):
    """Called when a Model is garbage-collected: partners drop its replica."""
    if _partners_pid == os.getpid():
        for partner in list(_partners):
            partner.forget(key)


def close_partners():
    """End this process's partners and wait for them (also run at interpreter exit)."""
    if _partners_pid != os.getpid():  # a forked child: the partners are its parent's
        return
    for partner in _partners:
        partner.close()
    _partners.clear()


atexit.register(close_partners)


# ----------------------------------------------------------------------------------------
# Partner-process side
# ----------------------------------------------------------------------------------------


def serve(commands, replies, build_model):
    """The partner's loop: read commands until the main process closes the channel.
    build_model(spec) makes the replica of a model (engine.fast.partner_main passes it in,
    so this module imports no model)."""
    arena = None
    models = {}
    layouts = {}  # layout number -> (model key, {name: arena entry})
    while True:
        try:
            message = _receive(commands, SPIN_SECONDS)
        except EOFError:
            return
        try:
            kind = message[0]
            if kind == "arena":
                arena = Arena(message[2], path=message[1])
                reply = ("ok",)
            elif kind == "model":
                _, key, spec = message
                models[key] = build_model(spec)
                reply = ("ok",)
            elif kind == "layout":
                _, number, key, entries = message
                layouts[number] = (key, entries)
                reply = ("ok",)
            elif kind == "drop":
                models.pop(message[1], None)
                layouts = {number: value for number, value in layouts.items() if value[0] != message[1]}
                reply = ("ok",)
            elif kind in ("forward", "train"):
                key, entries = message[1], layouts[message[2]][1]
                model = models[key]
                model.params = {
                    name.split(":", 1)[1]: arena.view(entry).copy()
                    for name, entry in entries.items()
                    if name.startswith("param:")
                }
                x = arena.view(entries["x"]).copy()
                if kind == "forward":
                    np.copyto(arena.view(entries["logits"]), model.forward(x))
                    reply = ("ok",)
                else:
                    logits, loss_sum = model.train_part(x, arena.view(entries["labels"]).copy(), message[3])
                    np.copyto(arena.view(entries["logits"]), logits)
                    for name, value in model.grads.items():
                        np.copyto(arena.view(entries[f"grad:{name}"]), value)
                    reply = ("ok", loss_sum)
            elif kind == "backward":
                _, key, number, dlogits_entry, need_input_grad = message
                entries = layouts[number][1]
                model = models[key]
                dx = model.backward(arena.view(dlogits_entry).copy(), need_input_grad=need_input_grad)
                for name, value in model.grads.items():
                    np.copyto(arena.view(entries[f"grad:{name}"]), value)
                if dx is not None:
                    np.copyto(arena.view(entries["dx"]), dx)
                reply = ("ok", dx is not None)
            else:
                raise ValueError(f"unknown command {kind!r}")
        except Exception as error:  # reported to the main process, which then computes the part itself
            reply = ("error", f"{type(error).__name__}: {error}")
        try:
            _send(replies, reply)
        except BrokenPipeError:  # the main process died mid-exchange (a run killed): nobody to answer
            _drop_unsent(replies)
            return


def _drop_unsent(stream):
    """Point stream's descriptor at /dev/null, so the reply still buffered for a reader that is
    gone is dropped when the stream closes instead of raising (and printing) a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)
