"""The page: GET / renders templates/index.html; /static serves the ES modules and CSS.

For create_app() one line is enough, because this router carries its own
static mount (FastAPI copies Mount routes when a router is included):

    from app.routes import pages
    app.include_router(pages.router)

GET /static/vendor/plotly.min.js serves plotly.js from the installed `plotly`
Python package (package_data/plotly.min.js), so the page needs no CDN. That
route is declared before the mount so it wins over the static directory.
"""

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates


def _asset_dirs() -> tuple[Path, Path]:
    """(templates_dir, static_dir): the checkout's folders or the installed copies (app/paths.py)."""
    from app import paths

    return paths.templates_dir(), paths.static_dir()


TEMPLATES_DIR, STATIC_DIR = _asset_dirs()
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
router = APIRouter(tags=["pages"])


def plotly_js_path() -> Path:
    """Where the installed plotly package keeps its minified plotly.js bundle."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


def _app_version() -> str:
    try:
        from importlib.metadata import version

        return version("kernelscope")
    except Exception:  # not installed: the page still works, only cache-busting is lost
        return "dev"


APP_VERSION = _app_version()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(request: Request):
    """The single page: setup, live view, history, step-through, run list."""
    return templates.TemplateResponse(request, "index.html", {"version": APP_VERSION})


@router.get("/static/vendor/plotly.min.js", include_in_schema=False)
def plotly_js():
    """plotly.js from the installed plotly package (no CDN)."""
    path = plotly_js_path()
    if not path.is_file():
        raise HTTPException(status_code=404, detail=f"plotly.min.js not found in the plotly package at {path}")
    return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})


class RevalidatedStaticFiles(StaticFiles):
    """Static files that browsers check (ETag, 304) before reusing.

    The ES modules import each other by plain names (./api.js), so a version
    query on the entry point does not reach them; without this, a browser may
    keep an old module after an upgrade.
    """

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


router.mount("/static", RevalidatedStaticFiles(directory=str(STATIC_DIR)), name="static")
