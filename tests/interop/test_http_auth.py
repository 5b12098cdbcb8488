"""Issue 12, HTTP: the broker asks a service started here (Python's http.server, HTTP/1.1
keep-alive) about each CONNECT; mosquitto_pub and paho-mqtt are let in or refused by its
answer; its permissions are enforced (MQTT 5 SUBACK 0x87); a service that is down refuses
with 0x88 (fail closed)."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from paho.mqtt.client import MQTTv5, MQTTv311

from conftest import HOST, _start_broker, _stop_broker, free_port
from mqtt_clients import PahoClient

TIMEOUT = 10
USERS = {"alice": "alice-pw", "dev": "dev-pw"}


class AuthHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        AuthHandler.seen.append(request)
        user = request.get("username")
        if USERS.get(user) != request.get("password"):
            answer = {"result": "deny"}
        elif user == "dev":
            answer = {"result": "allow", "subscribe": ["in/%c/#"], "publish": ["in/%c/x"]}
        else:
            answer = {"result": "allow"}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def service():
    server = ThreadingHTTPServer((HOST, 0), AuthHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    AuthHandler.seen = []
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def start(request, tmp_path, port):
    config = f'[auth]\nhttp = {{ url = "http://{HOST}:{port}/mqtt/auth", cache_ttl_s = 0 }}\n'
    running = _start_broker(tmp_path, config)
    request.node._tern_broker = running
    return running


@pytest.fixture
def http_broker(request, tmp_path, service):
    running = start(request, tmp_path, service)
    try:
        yield running
    finally:
        _stop_broker(running)


def pub(broker, user, password):
    args = ["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-t", "t/http", "-m", "hi",
            "-q", "1", "-u", user, "-P", password]
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)


def test_mosquitto_pub_allowed_and_denied(http_broker):
    assert pub(http_broker, "alice", "alice-pw").returncode == 0
    denied = pub(http_broker, "alice", "wrong")
    assert denied.returncode != 0
    assert [r["password"] for r in AuthHandler.seen] == ["alice-pw", "wrong"]
    assert all(r["peer_address"] == HOST and r["transport"] == "mqtt" for r in AuthHandler.seen)


@pytest.mark.parametrize("protocol", [MQTTv311, MQTTv5])
def test_paho_allowed_and_denied(http_broker, protocol):
    # paho 2 reports 3.1.1's return code 4 as its MQTT 5 equivalent, 0x86.
    for password, code in [("alice-pw", 0), ("nope", 0x86)]:
        client = PahoClient((http_broker.host, http_broker.port), "p-" + password, protocol)
        client.client.username_pw_set("alice", password)
        try:
            assert client.connect().reason_code == code
        finally:
            client.close()
    assert AuthHandler.seen[-1]["protocol_version"] == (5 if protocol == MQTTv5 else 4)


def test_permissions_from_the_answer(http_broker):
    client = PahoClient((http_broker.host, http_broker.port), "dev-9", MQTTv5)
    client.client.username_pw_set("dev", "dev-pw")
    try:
        assert client.connect().reason_code == 0
        assert client.subscribe("in/other/#", 1) == [0x87]
        assert client.subscribe("in/dev-9/#", 1) == [1]
        client.publish("in/dev-9/x", b"hello", qos=1)
        assert client.wait_messages(1)[0].payload == b"hello"
    finally:
        client.close()


def test_service_down_fails_closed(request, tmp_path):
    port = free_port()  # nobody listens there: the service is down
    running = start(request, tmp_path, port)
    try:
        client = PahoClient((running.host, running.port), "down", MQTTv5)
        client.client.username_pw_set("alice", "alice-pw")
        try:
            # 0x88 Server unavailable: retryable, never let in.
            assert client.connect().reason_code == 0x88
        finally:
            client.close()
        assert running.wait_for_log(r"HTTP authentication failed")
    finally:
        _stop_broker(running)
