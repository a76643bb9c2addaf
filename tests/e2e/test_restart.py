"""The run list after life outside the page: a run trained from the CLI and a
run whose server was killed mid-training both show up, open, and the killed
one resumes from the page; pause, resume and stop work from the header."""

import subprocess
import sys
import time

import httpx
from conftest import REPO_ROOT, Server, open_page


def test_cli_run_and_interrupted_run_open_and_resume_from_the_page(browser, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "train",
            "--preset",
            "small",
            "--init",
            "lecun_normal",
            "--steps",
            "20",
            "--snapshot-every",
            "10",
            "--batch-size",
            "16",
            "--name",
            "from the terminal",
            "--data",
            str(data),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr

    first = Server(data)
    run = httpx.post(
        f"{first.base}/api/runs", json={"model": "small", "steps": 100000, "batch_size": 16, "snapshot_every": 1000}
    ).json()
    deadline = time.monotonic() + 120
    while httpx.get(f"{first.base}/api/runs/{run['id']}/snapshots").json()["steps"][-1:] < [10]:
        assert time.monotonic() < deadline, "the run made no snapshots"
        time.sleep(0.3)
    first.kill()

    second = Server(data)
    try:
        page, problems = open_page(browser)
        page.goto(f"{second.base}/")
        page.wait_for_selector("body[data-ready=true]")
        runs = httpx.get(f"{second.base}/api/runs").json()["runs"]
        cli_run = next(r for r in runs if r["id"] != run["id"])
        assert "completed" in page.text_content(f'#run-list li[data-run="{cli_run["id"]}"]')
        item = page.locator(f'#run-list li[data-run="{run["id"]}"]')
        assert "interrupted" in item.text_content()

        page.locator(f'#run-list li[data-run="{cli_run["id"]}"] button').click()
        page.wait_for_function("window.__kernelscope.drawn && window.__kernelscope.drawn.step === 20")
        assert page.input_value("#f-init") == "lecun_normal"  # its config is loaded into the form

        item.locator("button").click()
        stored = httpx.get(f"{second.base}/api/runs/{run['id']}/snapshots").json()["steps"]
        page.wait_for_function(f"window.__kernelscope.drawn && window.__kernelscope.drawn.step === {stored[-1]}")
        assert page.is_visible("#btn-resume") and page.is_hidden("#btn-pause")
        page.click("#btn-resume")
        page.wait_for_selector("#run-badge.status-running")
        page.wait_for_function(f"window.__kernelscope.drawn.step > {stored[-1]}")

        page.click("#btn-pause")
        page.wait_for_selector("#run-badge.status-paused")
        paused_at = httpx.get(f"{second.base}/api/runs/{run['id']}").json()["step"]
        time.sleep(1.0)
        assert httpx.get(f"{second.base}/api/runs/{run['id']}").json()["step"] == paused_at
        assert page.is_visible("#btn-resume") and page.is_hidden("#btn-pause")
        page.click("#btn-resume")
        page.wait_for_selector("#run-badge.status-running")
        page.wait_for_function(f"window.__kernelscope.state.run.step > {paused_at}")
        page.click("#btn-stop")
        page.wait_for_selector("#run-badge.status-stopped")
        problems.close_and_check(page, second)
    finally:
        second.stop()
