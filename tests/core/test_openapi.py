import json
import os
import shutil
import subprocess

import pytest
from openapi_spec_validator import validate

from tests.helpers import require


def test_openapi_document_is_valid_openapi_3(make_app):
    app, client = make_app()
    r = client.get("/openapi.json")
    assert r.status == 200
    spec = r.body
    assert spec["openapi"].startswith("3.")
    validate(spec)
    paths = spec["paths"]
    for path in ("/aip/v9.2/login", "/aip/v9.2/jobs", "/aip/v9.2/jobs/{job_id}", "/aip/v9.2/jobs/{job_id}/output",
                 "/aip/v9.2/hosts", "/aip/v9.2/queues", "/aip/v9.2/users", "/aip/v9.2/cluster", "/aip/v9.2/health"):
        assert path in paths, path
    # Errors are documented, and public routes need no token.
    assert "404" in paths["/aip/v9.2/jobs/{job_id}"]["get"]["responses"]
    assert paths["/aip/v9.2/login"]["post"]["security"] == []
    # Headers a client sends are parameters (generated clients and "Try it out" can send them).
    for path in ("/aip/v9.2/jobs", "/aip/v9.2/vis/submit"):
        assert "Idempotency-Key" in {p["name"] for p in paths[path]["post"]["parameters"] if p["in"] == "header"}
    assert "415" in paths["/aip/v9.2/jobs"]["post"]["responses"]
    # PATCH /jobs/{id}: the body names at least one field, and no other (an empty one is a 422).
    change = spec["components"]["schemas"]["JobChange"]
    assert paths["/aip/v9.2/jobs/{job_id}"]["patch"]["requestBody"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/JobChange"}
    assert change["minProperties"] == 1 and change["additionalProperties"] is False
    assert set(change["properties"]) == {"name", "queue", "timeLimitMinutes"}
    # The same document under the prefix.
    assert client.get("/openapi.json").body == client.flask.get("/aip/v9.2/openapi.json").get_json()


def test_swagger_ui_is_served_from_local_files(make_app):
    _, client = make_app()
    page = client.flask.get("/aip/v9.2/swagger/index.html")
    assert page.status_code == 200
    html = page.data.decode()
    assert "http://" not in html and "https://" not in html      # no CDN
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert asset in html
        assert client.flask.get(f"/aip/v9.2/swagger/{asset}").status_code == 200
    assert client.flask.get("/aip/v9.2/swagger/../../secret.key").status_code == 404


@pytest.fixture
def live_gateway(tmp_path):
    """A real gunicorn serving the mock backend on a free loopback port."""
    import socket
    import sys
    import time
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, GATEWAY_WORK_DIR=str(tmp_path / "work"))
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    proc = subprocess.Popen([gunicorn, "-b", f"127.0.0.1:{port}", "-w", "1", "--threads", "4",
                             "gateway:create_app()"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    import requests
    while time.time() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/aip/v9.2/health", timeout=5)
            break
        except requests.RequestException:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=20)


def test_swagger_ui_lists_the_operations_in_headless_chromium(live_gateway, tmp_path, artifacts_dir):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require(chromium is not None, "Debian chromium is not installed")
    url = f"{live_gateway}/aip/v9.2/swagger/index.html"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000", "--dump-dom", url]
    dom = subprocess.run(cmd, capture_output=True, timeout=120).stdout.decode()
    with open(os.path.join(artifacts_dir, "swagger-dom.html"), "w") as fh:
        fh.write(dom)
    # Swagger UI rendered the document: operation blocks with their paths and summaries.
    assert "opblock" in dom, "Swagger UI did not render (see test-artifacts/swagger-dom.html)"
    for text in ("/aip/v9.2/jobs", "/aip/v9.2/login", "Submit a job", "List hosts"):
        assert text in dom, text
    shot = tmp_path / "swagger.png"
    subprocess.run([*cmd[:-2], f"--screenshot={shot}", "--window-size=1280,2000", url], capture_output=True,
                   timeout=120)
    if shot.exists():
        shutil.copy(shot, os.path.join(artifacts_dir, "swagger.png"))
    assert json.loads(json.dumps({"ok": True}))["ok"]
