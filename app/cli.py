"""The `kernelscope` command: serve the app, train in the terminal, list runs.

    kernelscope serve [--host --port --data]
    kernelscope worker [--data]   (distributed mode: trains queued runs; app/jobs.py)
    kernelscope train [--preset --init --steps --dataset --seed ...]
    kernelscope runs  [--data]
    kernelscope class create NAME | list | export ID   (a class for teaching: app/classroom.py)

`train` runs the engine's one training loop (`Trainer.events`) through the
same driver as the server's worker processes (app/worker.py `drive_run`) in
this process, with a rich progress bar (loss, accuracy, steps/s), and
stores the run in the same data directory, so `kernelscope serve` lists it
and can resume it. Ctrl+C checkpoints and leaves the run `interrupted`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app import limits
from app.settings import Settings

cli = typer.Typer(
    help="kernelscope: watch convolution kernels move from their initialization into detectors.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(soft_wrap=True)  # messages stay one line each when piped (no wrapping at 80 columns)
error_console = Console(stderr=True, soft_wrap=True)

DataOption = typer.Option(None, "--data", help="data directory (default: $KERNELSCOPE_DATA or ./kernelscope-data)")
OutOption = typer.Option(None, "--out", help="write the CSV here (default: standard output)")


def _settings(data: Path | None = None, host: str | None = None, port: int | None = None) -> Settings:
    """Settings from the environment, with command-line options taking precedence.

    The options are also written to the environment so the app factory and
    its worker processes see the same values.
    """
    if data is not None:
        os.environ["KERNELSCOPE_DATA"] = str(data)
    if host is not None:
        os.environ["KERNELSCOPE_HOST"] = host
    if port is not None:
        os.environ["KERNELSCOPE_PORT"] = str(port)
    try:
        return Settings.from_env()
    except ValueError as error:
        error_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


def _name_or_json(value: str | None, option: str):
    """A plain name, or a JSON object when the value starts with '{'."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            error_console.print(f"[red]error:[/red] {option}: not valid JSON ({error})")
            raise typer.Exit(2) from None
    return text


@cli.command()
def serve(
    host: str | None = typer.Option(None, help="interface to listen on (default 127.0.0.1)"),
    port: int | None = typer.Option(None, help="port (default 8000)"),
    data: Path | None = DataOption,
) -> None:
    """Run the web server (the page, the REST API and the event streams)."""
    import uvicorn

    settings = _settings(data, host, port)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=3,
        log_level="info",
    )


@cli.command()
def worker(data: Path | None = DataOption) -> None:
    """Train distributed mode's runs (KERNELSCOPE_BROKER_URL): one at a time, until SIGTERM/Ctrl+C."""
    settings = _settings(data)
    if settings.broker_url is None:
        error_console.print("[red]error:[/red] KERNELSCOPE_BROKER_URL: set it to the Redis URL the web servers use")
        raise typer.Exit(2)
    from app.jobs import run_worker

    run_worker(settings)


def _run_default(field: str) -> str:
    """The engine's default of a RunConfig field, as --help shows it (never re-stated here)."""
    from engine.trainer import RunConfig

    return str(getattr(RunConfig(), field))


@cli.command()
def train(
    # Every option defaults to the engine's RunConfig default (`kernelscope train` = POST /api/runs {}),
    # and the config is bounded by app/limits.py exactly as the server bounds it.
    preset: str | None = typer.Option(
        None, "--preset", "--model", help="preset name, or a model spec as JSON", show_default=_run_default("model")
    ),
    init: str | None = typer.Option(
        None,
        help='initializer name, or JSON such as {"name": "normal", "std": 0.02}',
        show_default=_run_default("init"),
    ),
    steps: int | None = typer.Option(None, help="training steps", show_default=_run_default("steps")),
    dataset: str | None = typer.Option(
        None,
        help='dataset name, or JSON such as {"name": "mnist", "path": "..."}',
        show_default=_run_default("dataset"),
    ),
    seed: int | None = typer.Option(None, help="seed for init and data order", show_default=_run_default("seed")),
    batch_size: int | None = typer.Option(None, help="examples per step", show_default=_run_default("batch_size")),
    optimizer: str | None = typer.Option(None, help='"sgd", "adam", or JSON such as {"name": "sgd", "lr": 0.05}'),
    lr: float | None = typer.Option(None, help="learning rate (overrides the optimizer's)"),
    snapshot_every: int | None = typer.Option(
        None, help="steps between snapshots", show_default=_run_default("snapshot_every")
    ),
    eval_every: int | None = typer.Option(
        None, help="steps between validation passes", show_default=_run_default("eval_every")
    ),
    name: str | None = typer.Option(None, help="a label for the run"),
    data: Path | None = DataOption,
) -> None:
    """Train one run here with a progress bar; the server shows it afterwards."""
    from app import limits
    from app.store import Store
    from app.worker import RunRecorder, build_trainer, drive_run
    from engine.trainer import RunConfig

    settings = _settings(data)
    optimizer_spec = _name_or_json(optimizer, "--optimizer")
    if isinstance(optimizer_spec, str):
        optimizer_spec = {"name": optimizer_spec}
    if lr is not None:
        optimizer_spec = {**(optimizer_spec or {}), "lr": lr}
    request = {
        "model": _name_or_json(preset, "--preset"),
        "init": _name_or_json(init, "--init"),
        "dataset": _name_or_json(dataset, "--dataset"),
        "optimizer": optimizer_spec,
        "batch_size": batch_size,
        "steps": steps,
        "seed": seed,
        "snapshot_every": snapshot_every,
        "eval_every": eval_every,
    }
    try:
        run_config = RunConfig.from_dict({k: v for k, v in request.items() if v is not None})
        limits.check_run_config(run_config.to_dict())
    except ValueError as error:
        error_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None

    store = Store(settings.data_dir, settings.database_url)
    meta = {"cli": True, **({"name": name} if name else {})}
    config = run_config.to_dict()
    run = store.create_run(config, status="running", meta=meta, owner_pid=os.getpid())
    run_id = run["id"]
    recorder = RunRecorder(store, run_id)
    interrupted = {"flag": False}
    previous_handler = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum, frame):
        interrupted["flag"] = True
        signal.signal(signal.SIGINT, previous_handler)  # a second Ctrl+C ends at once

    signal.signal(signal.SIGINT, on_interrupt)
    console.print(f"run [bold]{run_id}[/bold] → {store.run_dir(run_id)}")
    try:
        trainer = build_trainer(settings.data_dir, run_id, run_config)
    except (ValueError, OSError) as error:
        store.update_run(run_id, status="failed", message=str(error))
        error_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("acc {task.fields[acc]}"),
        TextColumn("{task.fields[rate]} steps/s"),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task(run_id, total=config["steps"], completed=trainer.step, loss="-", acc="-", rate="-")
    rate_window: list[tuple[float, int]] = [(time.monotonic(), trainer.step)]

    def emit(message) -> None:
        recorder.record(message)
        if message[0] == "metrics" and message[1]:
            point = message[1][-1]
            now = time.monotonic()
            rate_window.append((now, point["step"]))
            while len(rate_window) > 2 and now - rate_window[0][0] > 5.0:
                rate_window.pop(0)
            (t0, s0), (t1, s1) = rate_window[0], rate_window[-1]
            rate = f"{(s1 - s0) / (t1 - t0):.1f}" if t1 > t0 else "-"
            progress.update(
                task,
                completed=point["step"],
                loss=f"{point.get('loss', float('nan')):.3f}",
                acc=f"{point.get('acc', float('nan')):.3f}",
                rate=rate,
            )

    class InterruptControl:
        """Ctrl+C (a flag set by the signal handler) becomes the loop's shutdown command."""

        def poll(self, timeout: float):
            if interrupted["flag"]:
                return ("shutdown", "interrupted with Ctrl+C; resume it from the server")
            if timeout > 0:
                time.sleep(timeout)  # paused: never happens here, the CLI sends no pause
            return None

    try:
        with progress:
            status = drive_run(trainer, settings.data_dir, run_id, emit, InterruptControl(), settings.checkpoint_every)
    except Exception as error:
        store.update_run(run_id, status="failed", message=f"{type(error).__name__}: {error}")
        raise
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    final = store.get_run(run_id)
    metrics = final["metrics"] or {}
    summary = ", ".join(
        f"{key} {metrics[key]:.4f}" for key in ("loss", "acc", "val_loss", "val_acc") if metrics.get(key) is not None
    )
    console.print(
        f"run [bold]{run_id}[/bold] {final['status']} at step {final['step']}"
        + (f": {summary}" if summary else "")
        + (f" ({final['message']})" if final["message"] else "")
    )
    store.close()
    if status not in ("completed", "interrupted", "stopped"):
        raise typer.Exit(1)


@cli.command("runs")
def list_runs(data: Path | None = DataOption) -> None:
    """List the runs stored in the data directory."""
    from app.store import Store

    settings = _settings(data)
    store = Store(settings.data_dir, settings.database_url)
    runs = store.list_runs()
    store.close()
    if not runs:
        console.print(f"no runs in {settings.data_dir}")
        return
    columns = ("id", "status", "step", "model", "init", "loss", "acc", "val_acc", "created")
    rows = [_run_row(run) for run in runs]
    if not console.is_terminal:  # piped or redirected: whole values, one tab-separated line per run
        for row in (columns, *rows):
            print("\t".join(row))
        return
    table = Table(title=f"runs in {settings.data_dir}")
    for column in columns:
        table.add_column(
            column,
            justify="right" if column in ("step", "loss", "acc", "val_acc") else "left",
            no_wrap=column in ("id", "status", "step"),
        )
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _run_row(run) -> tuple:
    """One run as the text cells of `kernelscope runs`."""
    config, metrics = run["config"], run["metrics"] or {}
    model = config.get("model") if isinstance(config.get("model"), str) else "custom"
    init = config.get("init")
    init = init.get("name") if isinstance(init, dict) else init

    def number(key):
        value = metrics.get(key)
        return "-" if value is None else f"{value:.3f}"

    return (
        run["id"],
        run["status"],
        f"{run['step']}/{config.get('steps', '?')}",
        str(model),
        str(init),
        number("loss"),
        number("acc"),
        number("val_acc"),
        datetime.fromtimestamp(run["created"]).strftime("%Y-%m-%d %H:%M"),
    )


# ---------------------------------------------------------------- kernelscope class (app/classroom.py)

class_cli = typer.Typer(
    help="Classes for teaching: create one (a join code for learners), list them, export a CSV.", no_args_is_help=True
)
cli.add_typer(class_cli, name="class")


@class_cli.command("create")
def class_create(
    name: str = typer.Argument(..., help="the class's name"),
    max_training: int = typer.Option(
        limits.DEFAULT_CLASS_MAX_TRAINING,
        help="runs one learner may have training",
        min=1,
        max=limits.MAX_CLASS_MAX_TRAINING,
    ),
    max_queued: int = typer.Option(
        limits.DEFAULT_CLASS_MAX_QUEUED, help="runs one learner may have queued", min=1, max=limits.MAX_CLASS_MAX_QUEUED
    ),
    data: Path | None = DataOption,
) -> None:
    """Create a class; prints its join code (for the learners) and its wall's address (for you)."""
    from app.classroom import ClassroomStore

    settings = _settings(data)
    rooms = ClassroomStore(settings.data_dir, settings.database_url)
    try:
        klass = rooms.create_class(name, max_training, max_queued)
    except ValueError as error:
        error_console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    finally:
        rooms.close()
    print(f"class {klass['id']}: {klass['name']}")
    print(f"join code: {klass['join_code']}")
    print(f"wall: http://{settings.host}:{settings.port}/class/{klass['id']}")
    if not settings.token:
        print(
            "note: KERNELSCOPE_TOKEN is not set, so any visitor may act as the teacher; "
            "start the server with a token for a class"
        )


@class_cli.command("list")
def class_list(data: Path | None = DataOption) -> None:
    """The classes of the data directory: id, name, join code, learners, quotas."""
    from app.classroom import ClassroomStore

    settings = _settings(data)
    rooms = ClassroomStore(settings.data_dir, settings.database_url)
    try:
        for klass in rooms.list_classes():
            print(
                "\t".join(
                    (
                        klass["id"],
                        klass["name"],
                        klass["join_code"],
                        f"{len(rooms.learners(klass['id']))} learners",
                        f"training<={klass['max_training']} queued<={klass['max_queued']}",
                    )
                )
            )
    finally:
        rooms.close()


@class_cli.command("export")
def class_export(
    class_id: str = typer.Argument(..., help="the class id (kernelscope class list)"),
    out: Path | None = OutOption,
    data: Path | None = DataOption,
) -> None:
    """CSV of the class: learners, their runs, inits, final accuracy, conv1 detector counts."""
    from app.classroom import ClassNotFound, ClassroomStore, export_csv
    from app.store import Store

    settings = _settings(data)
    rooms, store = (
        ClassroomStore(settings.data_dir, settings.database_url),
        Store(settings.data_dir, settings.database_url),
    )
    try:
        rooms.get_class(class_id)
        text = export_csv(store, rooms, class_id)
    except ClassNotFound:
        error_console.print(f"[red]class_id: no class {escape(class_id)!r}[/red]")
        raise typer.Exit(2) from None
    finally:
        rooms.close()
        store.close()
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")


def main() -> None:
    from app.store import DatabaseUnavailable

    try:
        cli()
    except DatabaseUnavailable as error:  # distributed mode: PostgreSQL is down or unreachable
        error_console.print(f"[red]error:[/red] {error}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
