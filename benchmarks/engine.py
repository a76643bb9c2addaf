"""Benchmark: one full training step (forward + backward + SGD momentum) of the numpy engine,
side by side with the identical PyTorch model on the same number of cores.

Each contender runs alone in a fresh process, one after the other, for several rounds:
  engine  the kernelscope engine as a user runs it (threads=2: a partner process takes half
          of each batch when its probe finds that faster; timed after that first probe);
  torch   PyTorch as installed: NCHW, glibc's default malloc settings;
  tuned   PyTorch with GLIBC_TUNABLES (freed memory is kept instead of returned to the OS
          each step) and channels_last.
Per round each process reports the median step time after warm-up; the script prints, per
preset and batch, the median over rounds of those figures and of the per-round ratios
engine/torch (so both sides of a ratio saw the same machine), images/s and GFLOP/s.
Contenders never run at the same time: PyTorch's OpenMP threads keep spinning for a while
after each step, which would steal the engine's second core in a shared process.

    python benchmarks/engine.py            # full run (a few minutes)
    python benchmarks/engine.py --quick    # batch 64 only, fewer steps and rounds

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
            modules.append(
                torch.nn.Conv2d(layer.input_shape[0], layer.filters, layer.kernel, layer.stride, layer.padding)
            )
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
    def step():  # as engine.Trainer.train_step does it
        model.train_gradients(x, labels)
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


# A run's first split probe (engine/fast/adaptive.py) is part of its start: the engine's steps are
# timed once the probe has chosen split or local, as in every later step of a run (re-probes
# come every RECHECK_EVERY passes). At most this many extra warm-up steps wait for the choice.
SETTLE_STEPS = 60


def settle_split_choice(model, step):
    """Step until the model's split chooser has decided (at once when KERNELSCOPE_SPLIT forces
    a mode), at most SETTLE_STEPS times."""
    chooser = model.split_chooser
    for _ in range(SETTLE_STEPS):
        if chooser.forced is not None or chooser.chosen is not None:
            return
        step()


def measure(args):
    """Subprocess mode: time one contender alone; print JSON {"preset/batch": seconds}."""
    torch = None
    if args.role != "engine":
        import torch

        torch.set_num_threads(args.threads)
    results = {}
    for preset in args.presets:
        for batch in args.batches:
            model, x, labels = problem(preset, batch)
            if torch is None:
                model.threads = args.threads
                step = engine_stepper(
                    model, x, labels, engine.make_optimizer({"name": "sgd", "lr": 0.01, "momentum": 0.9})
                )
            else:
                step = torch_stepper(torch_model(model, torch), x, labels, torch, channels_last=args.role == "tuned")
            for _ in range(args.warmup):
                step()
            if torch is None:
                settle_split_choice(model, step)
            steps = args.medium_steps if preset == "medium" else args.steps
            results[f"{preset}/{batch}"] = statistics.median(timed(step) for _ in range(steps))
    print(json.dumps(results))


def run_contender(args, role):
    """One round of one contender in a fresh process: {"preset/batch": seconds}, or {}."""
    env = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    if role != "engine":
        env["KERNELSCOPE_MALLOC_TUNING"] = "0"  # building the engine model must not tune torch's process
    if role == "tuned":
        env["GLIBC_TUNABLES"] = TUNED_GLIBC
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--role",
        role,
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--medium-steps",
        str(args.medium_steps),
        "--warmup",
        str(args.warmup),
        "--presets",
        *args.presets,
        "--batches",
        *map(str, args.batches),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"{role} failed: {done.stderr.strip()[-500:]}")
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def blas_description():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed: BLAS unknown, batch parts run one after the other"
    rows = [
        f"{info.get('internal_api')} {info.get('version')} kernel={info.get('architecture')} threads={info.get('num_threads')}"
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return "; ".join(rows) or "no BLAS found"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 64 only, fewer steps and rounds")
    parser.add_argument("--presets", nargs="+", default=["small", "medium"])
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 40; --quick 20)")
    parser.add_argument("--medium-steps", type=int, default=None, help="timed steps for medium (default 15; --quick 8)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of engine, torch, tuned (default 5; --quick 3)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--role", choices=["engine", "torch", "tuned"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batches = args.batches or ([64] if args.quick else [32, 64, 128])
    args.steps = args.steps or (20 if args.quick else 40)
    args.medium_steps = args.medium_steps or (8 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 5)
    args.rounds = args.rounds or (3 if args.quick else 5)

    if args.role:
        measure(args)
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
    roles = ["engine"] + (["torch", "tuned"] if torch is not None else [])

    print(f"numpy {np.__version__}; BLAS: {blas_description()}")
    print(
        f"cpus: {os.cpu_count()}; threads: {args.threads} each"
        + (f"; torch {torch.__version__}" if torch else "; torch: not installed")
    )
    print(
        f"{args.rounds} rounds of {', '.join(roles)}, each alone in a fresh process; per round the median of"
        f" {args.steps} steps ({args.medium_steps} for medium) after {args.warmup} warm-up steps"
    )
    print(
        "load average before the run: "
        + ", ".join(f"{value:.2f}" for value in os.getloadavg())
        + " (figures from a busy machine are not comparable)"
    )
    print(flush=True)
    rounds = []
    for number in range(args.rounds):
        order = roles[number % len(roles) :] + roles[: number % len(roles)]  # who goes first rotates
        rounds.append({role: run_contender(args, role) for role in order})

    def median_of(role, key):
        values = [result[role][key] for result in rounds if key in result.get(role, {})]
        return statistics.median(values) if values else None

    def round_ratios(role, key):
        return [
            result["engine"][key] / result[role][key]
            for result in rounds
            if key in result.get("engine", {}) and key in result.get(role, {})
        ]

    header = f"{'preset':8} {'batch':>5} {'engine ms':>10} {'img/s':>8} {'GFLOP/s':>8}"
    if torch is not None:
        header += f" {'torch ms':>9} {'ratio':>6} {'(rounds)':>11} {'tuned ms':>9} {'ratio':>6} {'(rounds)':>11}"
    print(header)
    results = []
    for preset in args.presets:
        model = engine.build_model(preset)
        for batch in args.batches:
            key = f"{preset}/{batch}"
            engine_s = median_of("engine", key)
            if engine_s is None:
                continue
            flops = step_flops(model) * batch
            row = {
                "preset": preset,
                "batch": batch,
                "engine_ms": engine_s * 1e3,
                "images_per_s": batch / engine_s,
                "gflops": flops / engine_s / 1e9,
                "rounds": args.rounds,
                "engine_round_ms": [
                    result["engine"][key] * 1e3 for result in rounds if key in result.get("engine", {})
                ],
            }
            line = f"{preset:8} {batch:5d} {engine_s * 1e3:10.2f} {batch / engine_s:8.0f} {flops / engine_s / 1e9:8.1f}"
            for role in roles[1:]:
                seconds, ratios = median_of(role, key), round_ratios(role, key)
                if seconds is None or not ratios:
                    line += f" {'-':>9} {'-':>6} {'':>11}"
                    continue
                ratio = statistics.median(ratios)
                row.update(
                    {
                        f"{role}_ms": seconds * 1e3,
                        f"{role}_ratio": ratio,
                        f"{role}_round_ratios": ratios,
                        f"{role}_round_ms": [
                            result[role][key] * 1e3 for result in rounds if key in result.get(role, {})
                        ],
                    }
                )
                spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
                line += f" {seconds * 1e3:9.2f} {ratio:6.2f} {spread:>11}"
            print(line, flush=True)
            results.append(row)
    print()
    print(
        "ratio = median over rounds of (engine step time / torch step time); below 1: the engine is faster;"
        " (rounds) = the lowest and highest of those per-round ratios."
    )
    print("torch: PyTorch as installed (NCHW, glibc's default malloc settings), alone in its process.")
    print("tuned: PyTorch with GLIBC_TUNABLES=" + TUNED_GLIBC + " and channels_last.")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
