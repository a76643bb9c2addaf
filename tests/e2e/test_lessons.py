"""A guided lesson in a real browser, from question to reveal: the learner answers before
anything trains, one click starts the lesson's runs (short ones: #lesson_steps), and the reveal
prints the number measured in those runs and highlights where the page shows it."""

import pytest


def test_symmetry_lesson_from_question_to_reveal(server, api, page):
    lesson = api.get("/api/lessons/symmetry").json()
    page.goto(f"{server}/#lesson=symmetry&lesson_steps=20")
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("#lesson-panel")
    assert lesson["question"] in page.inner_text("#lesson-panel")
    # the controls the lesson does not need are hidden
    assert page.is_hidden("#setup") and page.is_hidden("#view-tabs")
    # it asks before it shows: no run starts without an answer
    assert page.is_disabled("#lesson-start")
    runs_before = len(api.get("/api/runs").json()["runs"])
    assert len(api.get("/api/runs").json()["runs"]) == runs_before
    page.click('#lesson-panel label[data-choice="different"]')
    page.click("#lesson-start")
    page.wait_for_function("window.__kernelscope.lesson.phase === 'running'")
    runs = page.evaluate("window.__kernelscope.lesson.runs")
    assert len(runs) == len(lesson["runs"]["inits"])
    assert all(api.get(f"/api/runs/{r}").json()["config"]["steps"] == 20 for r in runs)
    page.wait_for_selector("#lesson-reveal-button", timeout=300_000)
    page.click("#lesson-reveal-button")
    page.wait_for_selector("#lesson-reveal")
    page.wait_for_function("window.__kernelscope.lesson.focus !== undefined")
    state = page.evaluate("window.__kernelscope.lesson")

    # the number is the one measured in the lesson's run, not a figure of the page
    measured_run = runs[lesson["measure"]["run"]]
    snapshot = api.get(f"/api/runs/{measured_run}/snapshots/latest?feature_maps=0").json()
    conv1 = [layer for layer in snapshot["layers"] if layer["type"] == "conv"][0]
    assert state["measured"]["value"] == pytest.approx(conv1["symmetry"], abs=1e-12)
    assert f"{conv1['symmetry']:.3f}" == page.inner_text("#lesson-measured")
    supported = [c["id"] for c in lesson["choices"] if c["range"][0] <= conv1["symmetry"] < c["range"][1]]
    assert state["measured"]["supports"] == supported[0]
    verdict = page.inner_text("#lesson-verdict")
    assert ("your prediction holds" in verdict) == (supported[0] == "different")
    # the reveal points at the symmetry meter of the measured run's conv1
    assert page.evaluate("window.__kernelscope.state.view.run") == runs[lesson["point_at"]["run"]]
    focus = page.locator(f'.layer-panel[data-layer="{conv1["index"]}"] .meter.lesson-focus')
    assert focus.count() == 1

    page.click("#lesson-leave")
    page.wait_for_selector("#lesson-panel", state="detached")
    assert page.is_visible("#setup")
    assert "lesson=" not in page.evaluate("location.hash")
