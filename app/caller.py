"""Who is asking: the teacher, a learner of a class, or an anonymous reader (one per request).

security.RequestGuard calls `identify` once per request and keeps the answer in
the context variable `CALLER` (FastAPI copies the context into the thread a
plain `def` route runs in), so the run lookup and the run manager's quota gate
(app/classroom.py) read it with `current()` without any route passing it along.
Code outside a request (the CLI, tests driving the manager) acts as the teacher.
This module imports nothing of the app, so the guard can use it without a cycle.
"""

from __future__ import annotations

import contextvars
import hmac
from dataclasses import dataclass, field

SESSION_COOKIE = "kernelscope_session"  # the bearer token for GETs a browser cannot add a header to (EventSource)


@dataclass(frozen=True)
class Caller:
    role: str  # "teacher", "learner" or "anonymous"
    learner: dict = field(default_factory=dict)  # {"id", "class", "name"} for a learner

    @property
    def is_teacher(self) -> bool:
        return self.role == "teacher"

    @property
    def is_learner(self) -> bool:
        return self.role == "learner"


TEACHER = Caller("teacher")
ANONYMOUS = Caller("anonymous")
# Code outside a request (the CLI, tests driving the manager) acts as the teacher.
CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("kernelscope_caller", default=TEACHER)


def current() -> Caller:
    return CALLER.get()


def identify(learners, server_token: str | None, bearer: str | None, cookie: str | None, safe: bool) -> Caller:
    """The caller of one request; `learners` has learner_for_token(token) -> learner dict or None
    (app/classroom.py's ClassroomStore; None before the app has started). The cookie counts only
    for reads (no cross-site writes through it)."""
    given = bearer if bearer else (cookie if safe else None)
    if given:
        if server_token and hmac.compare_digest(given.encode(), server_token.encode()):
            return TEACHER
        learner = learners.learner_for_token(given) if learners is not None else None
        if learner is not None:
            return Caller("learner", learner)
    return ANONYMOUS if server_token else TEACHER  # no server token: everyone may do everything, as without classes
