"""Benchmark: how many live updates per second the page draws, and whether it falls behind.

A real server (uvicorn on 127.0.0.1, temporary data directory) trains a run
with a snapshot every few steps while Debian's headless Chromium shows it.
Every 200 ms the script reads, from the page's debug hook, the step of the
filters on screen and of the feature maps on screen, and from the API the
newest stored snapshot. Reported (the issue's target in brackets):

  snapshot events/s reaching the page, filter redraws/s       [>= 5 when the engine is that fast]
  feature-map redraws/s (each one a REST fetch, one in flight)
  lag of the filters and feature maps behind the newest snapshot, in snapshots,
      median and p95                                           [bounded: frames dropped, never queued]
  median time of one redraw (ms), filters and feature maps

    python benchmarks/page_live.py                    # small preset, snapshot every 2 steps, 20 s
    python benchmarks/page_live.py --preset demo --every 5 --seconds 30

Never calls `playwright install`; needs /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELSCOPE_")}
    env["KERNELSCOPE_DATA"] = data_dir
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
                                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                               cwd=REPO_ROOT, env=env)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--every", type=int, default=2, help="snapshot every N steps")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time after warm-up")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data_dir:
        process, base = start_server(data_dir)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                steps = 20_000 * args.every   # the server keeps at most 20,000 snapshots per run
                page.goto(f"{base}/#preset={args.preset}&steps={steps}&every={args.every}&bs=32")
                page.wait_for_selector("body[data-ready=true]")
                page.click("#btn-start")
                page.wait_for_function("window.__kernelscope.state.view.run || document.getElementById('form-error').textContent")
                if page.text_content("#form-error"):
                    raise SystemExit(f"the server refused the run: {page.text_content('#form-error')}")
                page.wait_for_function("window.__kernelscope.features !== null", timeout=120_000)
                run_id = page.evaluate("window.__kernelscope.state.view.run")
                time.sleep(3)  # warm-up

                counters = ("snapshotsReceived", "framesDrawn", "featureFramesDrawn", "framesDropped")
                def read():
                    return page.evaluate(
                        "(() => { const k = window.__kernelscope; return {" + ", ".join(f"{c}: k.{c}" for c in counters)
                        + ", drawn: k.drawn.step, features: k.features.step, run: k.state.run.step}; })()")

                start, started = read(), time.monotonic()
                lag_filters, lag_features = [], []
                while time.monotonic() - started < args.seconds:
                    newest = httpx.get(f"{base}/api/runs/{run_id}/snapshots").json()["steps"][-1]
                    now = read()
                    lag_filters.append(max(0, newest - now["drawn"]) / args.every)
                    lag_features.append(max(0, newest - now["features"]) / args.every)
                    time.sleep(0.2)
                end, elapsed = read(), time.monotonic() - started
                draw_ms = page.evaluate("window.__kernelscope.drawMs")
                httpx.post(f"{base}/api/runs/{run_id}/stop")
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=30)

    def rate(key):
        return (end[key] - start[key]) / elapsed

    print(f"preset {args.preset}, snapshot every {args.every} steps, {elapsed:.1f} s measured, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  training steps/s                 {(end['run'] - start['run']) / elapsed:8.1f}")
    print(f"  snapshot events/s at the page    {rate('snapshotsReceived'):8.1f}")
    print(f"  filter redraws/s                 {rate('framesDrawn'):8.1f}   (target >= 5 when events arrive that fast)")
    print(f"  feature-map redraws/s            {rate('featureFramesDrawn'):8.1f}")
    print(f"  live snapshots dropped           {end['framesDropped'] - start['framesDropped']:8d}")
    print(f"  filters behind newest, snapshots  median {statistics.median(lag_filters):.1f}, p95 {percentile(lag_filters, 95):.1f}")
    print(f"  feature maps behind, snapshots    median {statistics.median(lag_features):.1f}, p95 {percentile(lag_features, 95):.1f}")
    print(f"  one redraw, median ms            filters {statistics.median(draw_ms['filters']):.1f}, "
          f"feature maps {statistics.median(draw_ms['featureMaps']):.1f}")


if __name__ == "__main__":
    main()
