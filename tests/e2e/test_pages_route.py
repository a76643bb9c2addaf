"""app/routes/pages.py without a browser: the page, its modules and plotly.js
are served by the app itself (no CDN), and browsers revalidate the modules."""

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.routes.pages import plotly_js_path


@pytest.fixture(scope="module")
def client(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("KERNELSCOPE_DATA", str(tmp_path_factory.mktemp("pages-data")))
    monkeypatch_module.delenv("KERNELSCOPE_TOKEN", raising=False)
    with TestClient(create_app()) as client:
        yield client


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_index_loads_plotly_and_the_entry_module_from_this_server(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert '<script src="/static/vendor/plotly.min.js' in html
    assert '<script type="module" src="/static/js/main.js' in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN


def test_plotly_comes_from_the_installed_package(client):
    response = client.get("/static/vendor/plotly.min.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.content == plotly_js_path().read_bytes()


@pytest.mark.parametrize(
    "path",
    ["js/main.js", "js/state.js", "js/api.js", "js/charts.js", "js/filters.js", "js/stepthrough.js", "css/app.css"],
)
def test_modules_are_served_and_revalidated(client, path):
    response = client.get(f"/static/{path}")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-cache"
    again = client.get(f"/static/{path}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


def test_nothing_outside_static_is_reachable(client):
    assert client.get("/static/../app/main.py").status_code == 404
    assert client.get("/static/%2e%2e/app/main.py").status_code == 404
    assert client.get("/static/js/no-such-module.js").status_code == 404
