"""Issue 12, SCRAM: "an MQTT 5 client doing SCRAM over AUTH".

paho-mqtt (2.2) cannot carry an enhanced authentication: it has no way to send AUTH and does not
handle an AUTH from the server. So the client here is a short one of our own in Python, written
from MQTT 5 section 3.1/3.15 and RFC 5802 with Python's own hashlib/hmac (it shares no code
with the broker's Rust). Beside it, mosquitto_pub logs in with a plain password against the same
file: a `mosquitto_passwd` file with `tern passwd --scram` lines added stays valid for both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import HOST, _start_broker, _stop_broker, tern_bin

TIMEOUT = 10


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value % 128
        value //= 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def auth_properties(method: str, data: str) -> bytes:
    props = b"\x15" + utf8(method) + b"\x16" + utf8(data)
    return varint(len(props)) + props


def connect(client_id: str, method: str, data: str) -> bytes:
    # Protocol name, level 5, flags: clean start; keep alive 30.
    header = utf8("MQTT") + bytes([5, 0x02]) + struct.pack(">H", 30)
    return packet(0x10, header + auth_properties(method, data) + utf8(client_id))


def auth(code: int, method: str, data: str) -> bytes:
    return packet(0xF0, bytes([code]) + auth_properties(method, data))


# Property identifier -> size in bytes, or "s" (string/binary), "p" (string pair), "v" (varint).
PROPERTY_KINDS = {
    0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "s", 0x0B: "v", 0x11: 4, 0x12: "s",
    0x13: 2, 0x15: "s", 0x16: "s", 0x17: 1, 0x19: 1, 0x1A: "s", 0x1C: "s", 0x1F: "s",
    0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: "p", 0x27: 4, 0x28: 1, 0x29: 1,
    0x2A: 1,
}


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def parse_properties(data: bytes, at: int) -> dict[int, bytes]:
    length, at = read_varint(data, at)
    end = at + length
    props: dict[int, bytes] = {}
    while at < end:
        ident = data[at]
        at += 1
        kind = PROPERTY_KINDS[ident]
        if kind == "s":
            (size,) = struct.unpack(">H", data[at:at + 2])
            props[ident] = data[at + 2:at + 2 + size]
            at += 2 + size
        elif kind == "p":
            for _ in range(2):
                (size,) = struct.unpack(">H", data[at:at + 2])
                at += 2 + size
        elif kind == "v":
            _, at = read_varint(data, at)
        else:
            at += kind
    return props


class Wire:
    def __init__(self, port: int):
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> tuple[int, bytes] | None:
        """(packet type, body) of the next packet, None once the broker closed."""
        while True:
            if len(self.buffer) >= 2:
                try:
                    length, at = read_varint(self.buffer, 1)
                except IndexError:
                    length, at = None, 0
                if length is not None and len(self.buffer) >= at + length:
                    kind = self.buffer[0] >> 4
                    body = self.buffer[at:at + length]
                    self.buffer = self.buffer[at + length:]
                    return kind, body
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


class Scram:
    """The client side of RFC 5802 with Python's hashlib and hmac."""

    def __init__(self, hash_name: str, user: str, password: str):
        self.hash_name = hash_name
        self.password = password
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.bare = f"n={user},r={self.nonce}"
        self.server_signature = b""

    def first(self) -> str:
        return "n,," + self.bare

    def final(self, server_first: str) -> str:
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        assert fields["r"].startswith(self.nonce) and len(fields["r"]) > len(self.nonce)
        salt = base64.b64decode(fields["s"])
        salted = hashlib.pbkdf2_hmac(self.hash_name, self.password.encode(), salt,
                                     int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", self.hash_name).digest()
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        without_proof = "c=biws,r=" + fields["r"]
        auth_message = f"{self.bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, self.hash_name).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", self.hash_name).digest()
        self.server_signature = hmac.new(server_key, auth_message, self.hash_name).digest()
        return without_proof + ",p=" + base64.b64encode(proof).decode()


def scram_connect(port: int, mechanism: str, client_id: str, user: str, password: str):
    """A SCRAM exchange at CONNECT; returns (CONNACK reason code, the wire, the client)."""
    hash_name = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[mechanism]
    client = Scram(hash_name, user, password)
    wire = Wire(port)
    wire.send(connect(client_id, mechanism, client.first()))
    kind, body = wire.recv()
    if kind == 2:  # refused at once
        return body[1], wire, client
    assert kind == 15 and body[0] == 0x18, (kind, body)
    props = parse_properties(body, 1)
    assert props[0x15].decode() == mechanism
    wire.send(auth(0x18, mechanism, client.final(props[0x16].decode())))
    kind, body = wire.recv()
    assert kind == 2, kind
    code = body[1]
    if code == 0:
        props = parse_properties(body, 2)
        assert props[0x15].decode() == mechanism
        # The client checks the server (RFC 5802: ServerSignature).
        expected = "v=" + base64.b64encode(client.server_signature).decode()
        assert props[0x16].decode() == expected
    return code, wire, client


@pytest.fixture
def scram_broker(request, tmp_path: Path):
    """A broker with `scram = true` and a password file made by `mosquitto_passwd` (alice)
    with a `tern passwd --scram` user added (sam)."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    passwords = tmp_path / "mixed.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "alice", "alice-pw"],
                   check=True, timeout=TIMEOUT)
    subprocess.run([str(tern_bin()), "passwd", "--scram", "-b", str(passwords), "sam",
                    "pencil"], check=True, timeout=TIMEOUT)
    (tmp_path / "tern.acl").write_text("pattern readwrite %u/#\n")
    config = (f'[auth]\npassword_file = "{passwords.name}"\nacl_file = "tern.acl"\n'
              "scram = true\n")
    running = _start_broker(tmp_path, config)
    request.node._tern_broker = running
    try:
        yield running
    finally:
        _stop_broker(running)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_at_connect_and_reauthentication(scram_broker, mechanism):
    """Both mechanisms at CONNECT, then a re-authentication (AUTH 0x19 ... AUTH 0x00 with the
    server's signature), with a client written in Python."""
    code, wire, _ = scram_connect(scram_broker.port, mechanism, "py-" + mechanism, "sam",
                                  "pencil")
    try:
        assert code == 0
        hash_name = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[mechanism]
        again = Scram(hash_name, "sam", "pencil")
        wire.send(auth(0x19, mechanism, again.first()))
        kind, body = wire.recv()
        assert kind == 15 and body[0] == 0x18
        server_first = parse_properties(body, 1)[0x16].decode()
        wire.send(auth(0x18, mechanism, again.final(server_first)))
        kind, body = wire.recv()
        assert kind == 15 and body[0] == 0x00
        expected = "v=" + base64.b64encode(again.server_signature).decode()
        assert parse_properties(body, 1)[0x16].decode() == expected
    finally:
        wire.close()


def test_scram_refusals(scram_broker):
    """A wrong password and an unknown user: CONNACK 0x86; a method not offered: 0x8C; the
    failures are logged without the password."""
    for user, password in [("sam", "pencil!"), ("nobody", "pencil")]:
        code, wire, _ = scram_connect(scram_broker.port, "SCRAM-SHA-256", "bad", user, password)
        wire.close()
        assert code == 0x86, (user, code)
    wire = Wire(scram_broker.port)
    wire.send(connect("m", "SCRAM-SHA-1", "n,,n=sam,r=abc"))
    kind, body = wire.recv()
    wire.close()
    assert (kind, body[1]) == (2, 0x8C)
    assert scram_broker.wait_for_log(r"auth failed.*SCRAM: the proof is wrong")
    assert "pencil" not in scram_broker.log()


def test_plain_passwords_beside_scram_lines(scram_broker):
    """mosquitto_pub with -u/-P: the mosquitto_passwd user and the `--scram` user both get in
    with their password; a wrong one is refused."""
    def pub(user, password):
        return subprocess.run(
            ["mosquitto_pub", "-h", HOST, "-p", str(scram_broker.port), "-t", f"{user}/x",
             "-m", "hi", "-q", "1", "-u", user, "-P", password],
            capture_output=True, text=True, timeout=TIMEOUT)

    for user, password in [("alice", "alice-pw"), ("sam", "pencil")]:
        done = pub(user, password)
        assert done.returncode == 0, (user, done.stderr)
    assert pub("sam", "wrong").returncode != 0
