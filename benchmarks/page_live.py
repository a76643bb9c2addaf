"""Benchmark: how many redraws per second the page draws, and how many snapshots it drops, live and at each pace.

A real server (uvicorn on 127.0.0.1, temporary data directory) trains the
default run (with more steps, so it outlasts the measurement) while Debian's
headless Chromium shows it. The page's debug hook records every filter redraw
(window.__kernelscope.frameLog: step and mode). For each way of watching —
live, then the pace control at 1, 2, 5, 10 and 20 stored snapshots per second
(each pace played from step 0 while training goes on) — the script measures
for `--seconds` and reports:

  redraws/s             filter redraws per second
  snapshots dropped     stored snapshots between two consecutive redraws that were never drawn.
                        At a pace it must be 0: the player plays every stored snapshot, reading the
                        stored steps again when the event stream coalesced some away. Live follows
                        the newest snapshot by design (one draw per animation frame, and a busy
                        viewer's stream coalesces to the newest event), so there it counts the
                        snapshots stored faster than the page draws, not a fault.
  waits                 pace ticks that waited for the snapshot before to arrive (the player never skips)
  behind                how many stored snapshots the screen was behind the newest at the end

    python benchmarks/page_live.py                 # 6 s per mode
    python benchmarks/page_live.py --seconds 15

Never calls `playwright install`; needs /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/
from tests.live_server import uvicorn_command  # noqa: E402  (the one server command line)

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELSCOPE_")}
    env["KERNELSCOPE_DATA"] = data_dir
    process = subprocess.Popen(
        uvicorn_command(port),
        cwd=REPO_ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start within 30 s")


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def dropped_between(frames: list[dict], stored: list[int]) -> int:
    """Stored snapshots lying strictly between two consecutive drawn steps (not drawn in between)."""
    index = {step: i for i, step in enumerate(stored)}
    drawn = [f["step"] for f in frames if f["step"] in index]
    return sum(max(0, index[b] - index[a] - 1) for a, b in zip(drawn, drawn[1:]) if b > a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per mode")
    parser.add_argument(
        "--steps", type=int, default=20_000, help="steps of the default run (long enough to outlast it)"
    )
    args = parser.parse_args()
    paces = ["live", "1", "2", "5", "10", "20"]
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        process, base = start_server(data_dir)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(f"{base}/")
                page.wait_for_selector("body[data-ready=true]")
                page.fill("#f-steps", str(args.steps))
                page.locator("#f-steps").dispatch_event("change")
                page.click("#btn-start")
                page.wait_for_function(
                    "window.__kernelscope.state.view.run || document.getElementById('form-error').textContent"
                )
                if page.text_content("#form-error"):
                    raise SystemExit(f"the server refused the run: {page.text_content('#form-error')}")
                page.wait_for_function("window.__kernelscope.drawn !== null", timeout=120_000)
                run_id = page.evaluate("window.__kernelscope.state.view.run")
                for pace in paces:
                    page.select_option("#pace", pace)  # "live" jumps to live; a pace plays from step 0
                    page.evaluate("(() => { const k = window.__kernelscope; k.frameLog = []; k.paceWaits = 0; })()")
                    train_start = httpx.get(f"{base}/api/runs/{run_id}").json()["step"]
                    started = time.monotonic()
                    time.sleep(args.seconds)
                    frames, waits = page.evaluate("[window.__kernelscope.frameLog, window.__kernelscope.paceWaits]")
                    # at a pace only the player's frames count (a live frame still on its way when the
                    # pace was chosen is not one the player skipped)
                    frames = frames if pace == "live" else [f for f in frames if f["mode"] == "history"]
                    elapsed = time.monotonic() - started
                    stored = httpx.get(f"{base}/api/runs/{run_id}/snapshots").json()["steps"]
                    train_end = httpx.get(f"{base}/api/runs/{run_id}").json()["step"]
                    shown = frames[-1]["step"] if frames else None
                    rows.append(
                        {
                            "mode": pace if pace == "live" else f"{pace}/s",
                            "redraws": len(frames) / elapsed,
                            "dropped": dropped_between(frames, stored),
                            "waits": waits,
                            "behind": len([s for s in stored if shown is not None and s > shown]),
                            "steps_per_s": (train_end - train_start) / elapsed,
                            "first": frames[0]["step"] if frames else None,
                            "last": shown,
                        }
                    )
                    page.click("#btn-live")
                httpx.post(f"{base}/api/runs/{run_id}/stop")
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=30)

    print(
        f"default run with {args.steps} steps, {args.seconds:.0f} s per mode, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"  {'mode':>6}  {'redraws/s':>9}  {'snapshots dropped':>17}  {'waits':>5}  {'behind':>6}  {'train steps/s':>13}  steps drawn"
    )
    for r in rows:
        print(
            f"  {r['mode']:>6}  {r['redraws']:9.1f}  {r['dropped']:17d}  {r['waits']:5d}  {r['behind']:6d}  "
            f"{r['steps_per_s']:13.1f}  {r['first']}..{r['last']}"
        )


if __name__ == "__main__":
    main()
