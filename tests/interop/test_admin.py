"""Issue 13: the admin listener of a running `tern serve` — the token generated into the data
directory (0600), calls without it refused, `tern ctl` against it, and the dashboard in headless
Chromium showing the connected clients (paho), with a screenshot kept under
target/interop-artifacts/."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from paho.mqtt.client import MQTTv5, MQTTv311

from conftest import REPO_ROOT, tern_bin

ADMIN = "[admin]\nbind = \"127.0.0.1:0\"\n"
ARTIFACTS = REPO_ROOT / "target" / "interop-artifacts"


def admin_url(broker) -> str:
    assert broker.wait_for_log(r"the dashboard addr=\S+"), "the admin listener never started"
    return "http://" + re.search(r"the dashboard addr=(\S+)", broker.log()).group(1)


def token_path(broker) -> Path:
    # The broker runs in the test's temporary directory: data_dir is ./tern-data.
    return broker.log_path.parent / "tern-data" / "admin.token"


def http(url: str, token: str | None = None, method: str = "GET"):
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def ctl(url: str, broker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(tern_bin()), "ctl", "--url", url, "--data-dir", str(token_path(broker).parent), *args],
        capture_output=True, text=True, timeout=10,
    )


@pytest.mark.tern_config(ADMIN)
def test_token_generated_and_required(broker):
    url = admin_url(broker)
    path = token_path(broker)
    token = path.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    status, _, body = http(url + "/api/v1/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    for route in ["/api/v1/stats", "/api/v1/clients", "/api/v1/config", "/api/openapi.json"]:
        status, headers, body = http(url + route)
        assert status == 401, route
        assert headers.get("www-authenticate", headers.get("WWW-Authenticate")) == 'Bearer realm="tern"'
        status, _, _ = http(url + route, token="0" * 64)
        assert status == 401, route
        status, _, _ = http(url + route, token=token)
        assert status == 200, route
    status, _, _ = http(url + "/metrics")
    assert status == 200  # metrics_auth = false


@pytest.mark.tern_config(ADMIN)
def test_ctl_against_a_running_broker(broker, paho, unique):
    url = admin_url(broker)
    clients = [paho(f"{unique}-a", MQTTv311), paho(f"{unique}-b", MQTTv5)]
    for client in clients:
        client.connect()
    done = ctl(url, broker, "--json", "stats")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["connections"] == 2
    assert stats["version"]
    table = ctl(url, broker, "stats")
    assert "connections: 2" in table.stdout
    listed = ctl(url, broker, "--json", "clients")
    assert listed.returncode == 0, listed.stderr
    ids = {c["client_id"] for c in json.loads(listed.stdout)}
    assert ids == {f"{unique}-a", f"{unique}-b"}
    refused = subprocess.run(
        [str(tern_bin()), "ctl", "--url", url, "--token", "x" * 32, "stats"],
        capture_output=True, text=True, timeout=10,
    )
    assert refused.returncode == 1
    assert "(401)" in refused.stderr


def chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def browse(browser: str, profile: Path, url: str, *args: str) -> str:
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", "--virtual-time-budget=6000",
         f"--user-data-dir={profile}", *args, url],
        capture_output=True, text=True, timeout=25,
    )
    return done.stdout


@pytest.mark.tern_config(ADMIN)
def test_dashboard_shows_the_clients(broker, paho, unique, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (tests/interop/install-clients.sh installs it)")
    url = admin_url(broker)
    token = token_path(broker).read_text().strip()
    ids = [f"{unique}-d{i}" for i in range(3)]
    for client_id in ids:
        paho(client_id, MQTTv5).connect()
    page = f"{url}/#token={token}"
    dom = browse(browser, tmp_path / "profile", page, "--dump-dom")
    assert 'data-loaded="true"' in dom, dom
    assert 'id="stat-connections">3<' in dom, dom
    assert "<dd id=\"store-state\">accepting</dd>" in dom, dom
    status, _, body = http(url + "/api/v1/clients", token=token)
    listed = {c["client_id"] for c in json.loads(body)["items"]}
    assert listed == set(ids), listed
    for client_id in ids:
        assert f'data-client-id="{client_id}"' in dom, client_id
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    browse(browser, tmp_path / "profile2", page, "--window-size=1280,1100", f"--screenshot={shot}")
    assert shot.read_bytes()[:4] == b"\x89PNG"
