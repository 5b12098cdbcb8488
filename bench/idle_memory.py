#!/usr/bin/env python3
"""bench/idle_memory.py: what an idle MQTT connection costs Tern, by transport.

For each transport a fresh `tern serve` (in-memory state) is started; `--warm` connections are
opened first (the allocator's and runtime's one-time growth), then the RSS of the broker is read
(/proc/PID/status VmRSS), `--clients` more connections are opened, each completing CONNECT /
CONNACK (MQTT 3.1.1, keep-alive 0, so nothing happens while they idle), and after `--settle`
seconds the RSS is read again. The figure is the growth divided by the number of connections;
run both transports in one run to compare them on the same binary and machine.

    bench/idle_memory.py                               # tcp and ws, 2000 clients each
    bench/idle_memory.py --transport ws --clients 5000 --tern target/release/tern

WebSocket connections upgrade by hand (the request and the first frame, the CONNECT, in one
write) so that no client library's buffers are in the measurement; the broker's side is what is
measured either way.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def connect_packet(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, keep-alive 0."""
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x00"
    payload = struct.pack("!H", len(cid)) + cid
    body = variable + payload
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


def masked_binary_frame(payload: bytes) -> bytes:
    assert len(payload) < 126
    mask = b"\x00\x00\x00\x00"  # a zero mask leaves the payload as it is
    return bytes([0x82, 0x80 | len(payload)]) + mask + payload


def read_until(sock: socket.socket, done) -> bytes:
    data = b""
    while not done(data):
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed by the broker after {data!r}")
        data += chunk
    return data


def open_tcp(port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(connect_packet(client_id))
    connack = read_until(sock, lambda d: len(d) >= 4)
    assert connack[:4] == b"\x20\x02\x00\x00", connack
    return sock


def open_ws(port: int, client_id: str, path: str = "/mqtt") -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    ).encode()
    sock.sendall(request + masked_binary_frame(connect_packet(client_id)))

    def complete(data: bytes) -> bool:
        end = data.find(b"\r\n\r\n")
        return end >= 0 and len(data) >= end + 4 + 6

    data = read_until(sock, complete)
    assert data.startswith(b"HTTP/1.1 101 "), data
    end = data.find(b"\r\n\r\n") + 4
    assert data[end:end + 6] == b"\x82\x04\x20\x02\x00\x00", data[end:]
    return sock


def measure(tern: Path, transport: str, clients: int, warm: int, settle: float) -> float:
    tcp_port, ws_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="tern-idle-") as tmp:
        config = Path(tmp) / "tern.toml"
        config.write_text(
            f'listen = ["{HOST}:{tcp_port}"]\ndurability = "memory"\nlog_level = "warn"\n'
            f'[limits]\nmax_connections = {clients + warm + 100}\n'
            f'[[listeners]]\nname = "ws"\nkind = "ws"\nbind = "{HOST}:{ws_port}"\n'
        )
        proc = subprocess.Popen(
            [str(tern), "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            cwd=tmp,
        )
        try:
            opener = open_tcp if transport == "tcp" else open_ws
            port = tcp_port if transport == "tcp" else ws_port
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("tern did not start")
                    time.sleep(0.05)
            socks = [opener(port, f"warm-{i}") for i in range(warm)]
            time.sleep(settle)
            before = rss_bytes(proc.pid)
            socks += [opener(port, f"idle-{i}") for i in range(clients)]
            time.sleep(settle)
            after = rss_bytes(proc.pid)
            for sock in socks:
                sock.close()
            return (after - before) / clients
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", default="tcp,ws",
                        help="tcp, ws or both comma-separated (default tcp,ws)")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before each reading")
    parser.add_argument("--tern", type=Path, default=ROOT / "target" / "debug" / "tern")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.clients + args.warm + 100
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    for transport in args.transport.split(","):
        if transport not in ("tcp", "ws"):
            print(f"unknown transport {transport!r}", file=sys.stderr)
            return 2
        per = measure(args.tern, transport, args.clients, args.warm, args.settle)
        print(f"{transport}: {per / 1024:.2f} KiB ({per:.0f} bytes) per idle connection "
              f"({args.clients} connections, {args.tern.name} {args.tern.parent.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
