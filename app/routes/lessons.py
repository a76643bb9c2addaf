"""Lesson routes: the guided lessons of engine/lessons.py, served as data for the page.

GET /api/lessons lists them; GET /api/lessons/{id} gives one (404 naming the lessons that exist).
Each lesson comes with `start`: the request that starts the runs answering it (a POST to
/api/comparisons with its body), so the page sends it as given and assembles no config of its
own. A lesson may name a served demo instead of its own runs ("depth_stall": the deep-net
comparison of engine/presets.py DEMOS, also served by /api/defaults), so that config keeps one home.
"""

from __future__ import annotations

import copy

from fastapi import APIRouter, HTTPException, status

from app.teaching_schemas import ComparisonCreate
from engine.lessons import LESSON_IDS, LESSONS
from engine.presets import DEMOS

router = APIRouter(prefix="/api/lessons", tags=["lessons"])


def lesson_out(lesson: dict) -> dict:
    """A lesson with its runs resolved and the comparison request that starts them."""
    out = copy.deepcopy(lesson)
    runs = out.pop("runs")
    if "demo" in runs:
        demo = DEMOS[runs["demo"]]
        runs = {"base": copy.deepcopy(demo["base"]), "inits": copy.deepcopy(demo["inits"]), "demo": runs["demo"]}
    body = {"base": runs["base"], "inits": runs["inits"], "name": f"lesson: {lesson['title']}"}
    ComparisonCreate.model_validate(body)  # a lesson the comparison route would refuse is a bug here
    out["runs"] = runs
    out["start"] = {"method": "POST", "path": "/api/comparisons", "body": body}
    return out


@router.get("")
def list_lessons() -> dict:
    """Every lesson: question, choices, the runs that answer it, and what its reveal measures."""
    return {"lessons": [lesson_out(lesson) for lesson in LESSONS]}


@router.get("/{lesson_id}", responses={404: {"description": "no such lesson (the message lists them)"}})
def get_lesson(lesson_id: str) -> dict:
    for lesson in LESSONS:
        if lesson["id"] == lesson_id:
            return lesson_out(lesson)
    raise HTTPException(
        status.HTTP_404_NOT_FOUND, detail=f"lesson: no lesson {lesson_id[:64]!r}; lessons are {', '.join(LESSON_IDS)}"
    )
