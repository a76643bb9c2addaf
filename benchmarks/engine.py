"""Benchmark: one full training step (forward + backward + SGD momentum) of the numpy engine,
side by side with the identical PyTorch model on the same number of threads.

For each preset ("small", "medium") and batch size it prints the median step time of the
engine and of PyTorch, measured in alternating rounds in one process (so both see the same
machine load), images/s, achieved GFLOP/s and the ratio engine/torch. It also runs a tuned
PyTorch reference in a subprocess (GLIBC_TUNABLES keeps freed memory instead of returning
it to the OS each step, and channels_last layout), because that setting only takes effect
at process start.

    python benchmarks/engine.py            # full run (a few minutes)
    python benchmarks/engine.py --quick    # fewer steps and batch 64 only

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, if set, can make numpy's BLAS pick a slow kernel; this
script restarts itself without them (and says so). Torch is optional: without it only the
engine is timed.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402

TUNED_GLIBC = "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295"
BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def step_flops(model):
    """Floating-point operations of one training step per example: forward, plus the weight
    gradient everywhere and the input gradient for every layer after the first weighted one."""
    forward = []
    for layer in model.layers:
        if layer.kind == "conv":
            out_c, out_h, out_w = layer.output_shape
            kernel_h, kernel_w = layer.kernel
            forward.append(2 * out_c * layer.input_shape[0] * kernel_h * kernel_w * out_h * out_w)
        elif layer.kind == "dense":
            forward.append(2 * layer.units * layer.input_shape[0])
        else:
            forward.append(0)
    first_weighted = next(i for i, flops in enumerate(forward) if flops)
    total = 0
    for index, flops in enumerate(forward):
        total += flops * (2 if index == first_weighted else 3)
    return total


def torch_model(model, torch):
    """The identical torch.nn.Sequential, with the engine model's weights loaded by name."""
    modules = []
    for layer in model.layers:
        if layer.kind == "conv":
            modules.append(torch.nn.Conv2d(layer.input_shape[0], layer.filters, layer.kernel, layer.stride, layer.padding))
        elif layer.kind == "relu":
            modules.append(torch.nn.ReLU())
        elif layer.kind == "maxpool":
            modules.append(torch.nn.MaxPool2d(layer.size, layer.stride))
        elif layer.kind == "flatten":
            modules.append(torch.nn.Flatten())
        elif layer.kind == "dense":
            modules.append(torch.nn.Linear(layer.input_shape[0], layer.units))
        else:
            raise ValueError(f"benchmark has no torch twin for layer type {layer.kind}")
    net = torch.nn.Sequential(*modules)
    net.load_state_dict({name: torch.from_numpy(value.copy()) for name, value in model.params.items()})
    return net


def engine_stepper(model, x, labels, optimizer):
    def step():
        logits = model.forward(x)
        _, dlogits = engine.softmax_cross_entropy(logits, labels)
        model.backward(dlogits, need_input_grad=False)
        optimizer.step(model.params, model.grads)

    return step


def torch_stepper(net, x, labels, torch, channels_last=False):
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    inputs = torch.from_numpy(x.copy())
    targets = torch.from_numpy(labels.astype(np.int64))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(inputs), targets)
        loss.backward()
        optimizer.step()

    return step


def timed(step):
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def problem(preset, batch, seed=0):
    rng = np.random.default_rng(seed)
    model = engine.build_model(preset, init="he_normal", seed=seed)
    x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    return model, x, labels


def run_torch_only(args):
    """Subprocess mode: time torch alone; print JSON {"preset/batch": seconds}."""
    import torch

    torch.set_num_threads(args.threads)
    results = {}
    for preset in args.presets:
        for batch in args.batches:
            model, x, labels = problem(preset, batch)
            step = torch_stepper(torch_model(model, torch), x, labels, torch, channels_last=args.channels_last)
            for _ in range(args.warmup):
                step()
            steps = args.medium_steps if preset == "medium" else args.steps
            results[f"{preset}/{batch}"] = statistics.median(timed(step) for _ in range(steps))
    print(json.dumps(results))


def cpu_time_comparison(args, torch):
    """Engine and torch on ONE thread each, median CPU time (time.process_time) per step.
    CPU time barely depends on what else the machine runs, so this still compares the work
    each does per step when wall-clock figures are spoilt by a busy machine."""
    print()
    print("one thread each, median CPU ms per step (load-independent view of the work per step):")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for preset in args.presets:
            for batch in args.batches:
                model, x, labels = problem(preset, batch)
                model.threads = 1
                engine_step = engine_stepper(model, x, labels, engine.make_optimizer({"name": "sgd", "lr": 0.01, "momentum": 0.9}))
                torch_step = torch_stepper(torch_model(model, torch), x, labels, torch)
                for _ in range(args.warmup):
                    engine_step()
                    torch_step()
                engine_cpu, torch_cpu = [], []
                for _ in range(args.medium_steps if preset == "medium" else args.steps):
                    for step, times in ((engine_step, engine_cpu), (torch_step, torch_cpu)):
                        start = time.process_time()
                        step()
                        times.append(time.process_time() - start)
                engine_ms, torch_ms = statistics.median(engine_cpu) * 1e3, statistics.median(torch_cpu) * 1e3
                print(f"{preset:8} {batch:5d}  engine {engine_ms:8.2f}  torch {torch_ms:8.2f}  ratio {engine_ms / torch_ms:5.2f}")
    finally:
        torch.set_num_threads(torch_threads)


def torch_reference(args, tuned):
    """Torch alone in a fresh process: default (no malloc tuning at all, NCHW) or tuned
    (GLIBC_TUNABLES set at process start, channels_last)."""
    env = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    env["KERNELSCOPE_MALLOC_TUNING"] = "0"  # building the engine model must not tune this process
    if tuned:
        env["GLIBC_TUNABLES"] = TUNED_GLIBC
    command = [sys.executable, os.path.abspath(__file__), "--torch-only", "--threads", str(args.threads),
               "--steps", str(args.steps), "--medium-steps", str(args.medium_steps), "--warmup", str(args.warmup),
               "--presets", *args.presets,
               "--batches", *map(str, args.batches)] + (["--channels-last"] if tuned else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"torch reference failed: {done.stderr.strip()[-500:]}")
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def blas_description():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed: BLAS unknown, batch parts run one after the other"
    rows = [f"{info.get('internal_api')} {info.get('version')} kernel={info.get('architecture')} threads={info.get('num_threads')}"
            for info in threadpool_info() if info.get("user_api") == "blas"]
    return "; ".join(rows) or "no BLAS found"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 64 only, fewer steps")
    parser.add_argument("--presets", nargs="+", default=["small", "medium"])
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 40; --quick 15)")
    parser.add_argument("--medium-steps", type=int, default=None, help="timed steps for medium (default 20; --quick 8)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--cpu-time", action="store_true",
                        help="also compare CPU time per step on one thread each (useful on a busy machine)")
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batches = args.batches or ([64] if args.quick else [32, 64, 128])
    args.steps = args.steps or (15 if args.quick else 40)
    args.medium_steps = args.medium_steps or (8 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 5)

    if args.torch_only:
        run_torch_only(args)
        return

    removed = [name for name in BLAS_OVERRIDES if name in os.environ]
    if removed:
        env = {key: value for key, value in os.environ.items() if key not in BLAS_OVERRIDES}
        env["KERNELSCOPE_BENCH_UNSET"] = ",".join(f"{name}={os.environ[name]}" for name in removed)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if os.environ.get("KERNELSCOPE_BENCH_UNSET"):
        print(f"note: unset {os.environ['KERNELSCOPE_BENCH_UNSET']} for this benchmark process")

    try:
        import torch
    except ImportError:
        torch = None
    if args.no_torch:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)

    print(f"numpy {np.__version__}; BLAS: {blas_description()}")
    print(f"cpus: {os.cpu_count()}; engine threads: {args.threads}"
          + (f"; torch {torch.__version__} threads: {torch.get_num_threads()}" if torch else "; torch: not installed"))
    print(f"median of {args.steps} steps ({args.medium_steps} for medium) after {args.warmup} warm-up steps;"
          " engine and torch steps alternate")
    print("load average before the run: " + ", ".join(f"{value:.2f}" for value in os.getloadavg())
          + " (figures from a busy machine are not comparable)")
    print()
    default = torch_reference(args, tuned=False) if torch is not None else {}
    tuned = torch_reference(args, tuned=True) if torch is not None else {}

    header = f"{'preset':8} {'batch':>5} {'engine ms':>10} {'img/s':>8} {'GFLOP/s':>8}"
    if torch is not None:
        header += f" {'torch ms':>9} {'ratio':>6} {'alone ms':>9} {'ratio':>6} {'tuned ms':>9} {'ratio':>6}"
    print(header)
    results = []
    for preset in args.presets:
        for batch in args.batches:
            model, x, labels = problem(preset, batch)
            model.threads = args.threads
            flops = step_flops(model) * batch
            engine_step = engine_stepper(model, x, labels, engine.make_optimizer({"name": "sgd", "lr": 0.01, "momentum": 0.9}))
            torch_step = torch_stepper(torch_model(model, torch), x, labels, torch) if torch is not None else None
            for _ in range(args.warmup):
                engine_step()
                if torch_step:
                    torch_step()
            engine_times, torch_times = [], []
            for _ in range(args.medium_steps if preset == "medium" else args.steps):
                engine_times.append(timed(engine_step))
                if torch_step:
                    torch_times.append(timed(torch_step))
            engine_s = statistics.median(engine_times)
            row = {"preset": preset, "batch": batch, "engine_ms": engine_s * 1e3, "images_per_s": batch / engine_s,
                   "gflops": flops / engine_s / 1e9}
            line = f"{preset:8} {batch:5d} {engine_s * 1e3:10.2f} {batch / engine_s:8.0f} {flops / engine_s / 1e9:8.1f}"
            if torch_step:
                torch_s = statistics.median(torch_times)
                row.update({"torch_ms": torch_s * 1e3, "ratio": engine_s / torch_s})
                line += f" {torch_s * 1e3:9.2f} {engine_s / torch_s:6.2f}"
                for key, reference in (("alone", default), ("tuned", tuned)):
                    seconds = reference.get(f"{preset}/{batch}")
                    if seconds:
                        row.update({f"{key}_torch_ms": seconds * 1e3, f"{key}_ratio": engine_s / seconds})
                        line += f" {seconds * 1e3:9.2f} {engine_s / seconds:6.2f}"
                    else:
                        line += f" {'-':>9} {'-':>6}"
            print(line, flush=True)
            results.append(row)
    print()
    print("ratio = engine step time / torch step time (below 1: the engine is faster).")
    print("torch: the same model in this process, steps alternating with the engine's; this process")
    print("  keeps freed memory (engine.model.keep_freed_memory), which helps torch here too.")
    print("alone: torch by itself in a fresh process with glibc's default malloc settings, NCHW.")
    print("tuned: torch by itself with GLIBC_TUNABLES=" + TUNED_GLIBC + " and channels_last.")
    if args.cpu_time and torch is not None:
        cpu_time_comparison(args, torch)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
