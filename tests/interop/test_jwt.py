"""Issue 12, JWT: paho-mqtt with a token made here (HS256 with the standard library: hmac,
hashlib, base64) as the password; expired and tampered tokens refused; a subscribe claim
enforced (MQTT 5 SUBACK 0x87)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from paho.mqtt.client import MQTTv5, MQTTv311

from conftest import _start_broker, _stop_broker
from mqtt_clients import PahoClient

SECRET = b"interop secret for the JWT test"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    message = f"{header}.{payload}".encode()
    signature = hmac.new(SECRET, message, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


@pytest.fixture
def jwt_broker(request, tmp_path):
    (tmp_path / "jwt.secret").write_bytes(SECRET + b"\n")
    config = ('[auth]\njwt = { algorithms = ["HS256"], secret_file = "jwt.secret", '
              'audience = "tern", bind_client_id = "sub" }\n')
    running = _start_broker(tmp_path, config)
    request.node._tern_broker = running
    try:
        yield running
    finally:
        _stop_broker(running)


def client_with(broker, client_id, protocol, token):
    client = PahoClient((broker.host, broker.port), client_id, protocol)
    client.client.username_pw_set("device", token)
    return client


@pytest.mark.parametrize("protocol", [MQTTv311, MQTTv5])
def test_valid_token_gets_in(jwt_broker, protocol):
    token = hs256({"sub": "dev-a", "aud": "tern", "exp": int(time.time()) + 600})
    client = client_with(jwt_broker, "dev-a", protocol, token)
    try:
        assert client.connect().reason_code == 0
    finally:
        client.close()


@pytest.mark.parametrize("what", ["expired", "tampered", "other client"])
def test_bad_tokens_are_refused(jwt_broker, what):
    exp = int(time.time()) + 600
    token = hs256({"sub": "dev-b", "aud": "tern", "exp": exp})
    client_id = "dev-b"
    if what == "expired":
        token = hs256({"sub": "dev-b", "aud": "tern", "exp": int(time.time()) - 5})
    elif what == "tampered":
        header, _, signature = token.split(".")
        forged = b64url(json.dumps({"sub": "dev-b", "aud": "tern", "exp": exp + 9999}).encode())
        token = f"{header}.{forged}.{signature}"
    else:
        client_id = "dev-c"
    client = client_with(jwt_broker, client_id, MQTTv5, token)
    try:
        # 0x86 Bad User Name or Password.
        assert client.connect().reason_code == 0x86
    finally:
        client.close()


def test_subscribe_claim_is_enforced(jwt_broker):
    token = hs256({"sub": "dev-d", "aud": "tern", "exp": int(time.time()) + 600,
                   "subscribe": ["in/%c/#"], "publish": ["in/%c/x"]})
    client = client_with(jwt_broker, "dev-d", MQTTv5, token)
    try:
        assert client.connect().reason_code == 0
        assert client.subscribe("in/other/#", 1) == [0x87]
        assert client.subscribe("in/dev-d/#", 1) == [1]
        client.publish("in/dev-d/x", b"hello", qos=1)
        messages = client.wait_messages(1)
        assert messages[0].payload == b"hello"
    finally:
        client.close()
