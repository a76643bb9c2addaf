"""The README's API section is a working manual: every POST and PUT it shows is sent, in order, and
answers 2xx; every POST and PUT route of the app has an example there."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from tests.app.conftest import wait_for, wait_for_step

README = Path(__file__).resolve().parents[2] / "README.md"
BASE = "http://127.0.0.1:8000"


def readme_requests() -> list[tuple[str, str, dict | None]]:
    """(method, path, body) of every `curl -X POST|PUT` in the README's API section, in order."""
    text = README.read_text()
    section = text[text.index("## API\n") :]
    section = section[: section.index("\n## ", 1)]
    commands = re.sub(r"\\\n\s*", " ", section)  # join continued lines
    requests = []
    for line in commands.splitlines():
        line = line.strip()
        if not line.startswith("curl ") or not re.search(r"-X (POST|PUT)\b", line):
            continue
        words = shlex.split(line.split(" #")[0])
        method = words[words.index("-X") + 1]
        url = next(word for word in words if word.startswith(BASE))
        body = json.loads(words[words.index("-d") + 1]) if "-d" in words else None
        requests.append((method, url[len(BASE) :], body))
    return requests


def template(path: str) -> str:
    """/api/runs/RUN/kernels/0/3 -> /api/runs/{}/kernels/{}/{}: the shape of a route path."""
    return re.sub(r"/(RUN|CLASS|\d+)(?=/|$)", "/{}", path)


def test_the_readme_shows_an_example_of_every_post_and_put_route(client):
    shown = {(method, template(path)) for method, path, _ in readme_requests()}
    routes = client.get("/openapi.json").json()["paths"]
    for path, operations in routes.items():
        for method in operations:
            if method.upper() in ("POST", "PUT"):
                assert (method.upper(), re.sub(r"\{[^}]+\}", "{}", path)) in shown, (method, path)


def test_every_readme_request_body_works(client):
    requests = readme_requests()
    assert requests[0][:2] == ("POST", "/api/runs"), "the first example starts the run the others use"
    started = []
    run_id = None
    klass = {}  # the class the README's classroom examples create: its id (CLASS) and join code (CODE)
    for method, path, body in requests:
        if run_id is not None:
            path = path.replace("RUN", run_id)
        if klass:
            path = path.replace("CLASS", klass["id"])
            body = json.loads(json.dumps(body).replace('"CODE"', json.dumps(klass["join_code"])))
        if path.endswith("/pause"):
            wait_for_step(client, run_id, 1)  # a run can be paused once it trains
        if path.endswith("/fork") or "/kernels/" in path:
            wait_for(client, run_id, {"running", "paused"})
        response = client.request(method, path, json=body)
        assert 200 <= response.status_code < 300, (method, path, body, response.text)
        answer = response.json() if response.content else {}  # 204: no body
        if path == "/api/runs":
            run_id = answer["id"]
        if path == "/api/classes":
            klass = answer
        started += [answer["id"]] if path.endswith(("/api/runs", "/fork")) else answer.get("run_ids", [])
    for run in started:  # leave nothing training
        client.delete(f"/api/runs/{run}")
