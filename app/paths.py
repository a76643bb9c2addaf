"""Where the page's files are: the templates/ and static/ folders.

In a checkout (and an editable install) they sit at the top of the repository,
beside app/. An installed wheel carries them inside the package, as app/templates
and app/static (pyproject.toml maps them there). Server code asks these two
functions instead of building paths itself, so both layouts work.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent


def _first_existing(name: str) -> Path:
    """The checkout's top-level folder `name` if this is a checkout, else the installed copy."""
    in_checkout = (CHECKOUT_DIR / "pyproject.toml").is_file()
    candidates = ([CHECKOUT_DIR / name] if in_checkout else []) + [PACKAGE_DIR / name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"kernelscope's {name}/ folder is missing (looked in {tried})")


def templates_dir() -> Path:
    """The folder holding the Jinja2 templates (index.html, ...)."""
    return _first_existing("templates")


def static_dir() -> Path:
    """The folder holding the page's ES modules and CSS (js/, css/)."""
    return _first_existing("static")
