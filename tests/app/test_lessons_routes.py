"""The lesson routes: every lesson is served whole, starts runs the comparison route accepts,
and its reveal names a run and choices that exist; an unknown lesson is a 404 naming the lessons."""

from __future__ import annotations

from engine.lessons import LESSON_IDS

REQUIRED = {"symmetry", "scale", "detectors", "handmade"}
MEASURES = {"symmetry", "val_accuracy", "detector_share", "relative_change"}
TARGETS = {"symmetry", "chart-acc", "chart-act", "explain"}


def test_lessons_are_served_with_their_start_request(client):
    response = client.get("/api/lessons")
    assert response.status_code == 200
    lessons = response.json()["lessons"]
    assert REQUIRED <= {lesson["id"] for lesson in lessons}
    assert [lesson["id"] for lesson in lessons] == LESSON_IDS
    for lesson in lessons:
        assert lesson["question"] and len(lesson["choices"]) >= 2
        assert lesson["expected"] in {choice["id"] for choice in lesson["choices"]}
        inits = lesson["runs"]["inits"]
        assert 0 <= lesson["measure"]["run"] < len(inits), lesson["id"]
        assert 0 <= lesson["point_at"]["run"] < len(inits), lesson["id"]
        assert lesson["measure"]["kind"] in MEASURES
        assert lesson["point_at"]["target"] in TARGETS
        start = lesson["start"]
        assert (start["method"], start["path"]) == ("POST", "/api/comparisons")
        assert start["body"]["inits"] == inits


def test_the_scale_lesson_runs_the_served_depth_demo(client):
    lesson = client.get("/api/lessons/scale").json()
    demo = client.get("/api/defaults").json()["demos"]["depth_stall"]
    assert lesson["start"]["body"]["base"]["model"] == demo["base"]["model"] == "deep"
    assert lesson["start"]["body"]["inits"] == demo["inits"]


def test_a_lesson_starts_its_runs_through_the_comparison_route(client):
    lesson = client.get("/api/lessons/symmetry").json()
    body = lesson["start"]["body"]
    body["base"] = {**body["base"], "steps": 2, "dataset": {"name": "shapes", "n_train": 64, "n_val": 16}}
    response = client.post(lesson["start"]["path"], json=body)
    assert response.status_code == 201, response.text
    assert len(response.json()["run_ids"]) == len(lesson["runs"]["inits"])
    for run_id in response.json()["run_ids"]:
        client.post(f"/api/runs/{run_id}/stop")


def test_an_unknown_lesson_is_a_404_naming_the_lessons(client):
    response = client.get("/api/lessons/nope")
    assert response.status_code == 404
    message = response.json()["message"]
    assert "lesson" in message and all(name in message for name in REQUIRED)
