"""TLS and mutual TLS listeners (issue 11) with mosquitto_pub / mosquitto_sub (OpenSSL clients):
--cafile for TLS, --cert/--key for mutual TLS, and the reload of the certificates on SIGHUP and
when the files change. Certificates are made with the openssl CLI at test time (X.509 v3)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import _start_broker, _stop_broker
from mqtt_clients import MOSQUITTO_PUB, MosquittoSub


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def make_ca(dir: Path, name: str) -> None:
    """`{name}.pem` / `{name}.key`: a self-signed v3 CA."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30",
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=dir)


def issue(dir: Path, ca: str, name: str, cn: str, extensions: str) -> None:
    """`{name}.pem` / `{name}.key`: a v3 certificate signed by `ca` with `extensions`."""
    (dir / f"{name}.ext").write_text(extensions)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=dir)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "30",
            "-extfile", f"{name}.ext", cwd=dir)


SERVER_EXT = ("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
              "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
CLIENT_EXT = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """ca1 (the listener's server certificate `server.pem` and a client certificate
    `client.pem`), and ca2 with `server2.pem` to swap in."""
    make_ca(tmp_path, "ca1")
    make_ca(tmp_path, "ca2")
    issue(tmp_path, "ca1", "server", "localhost", SERVER_EXT)
    issue(tmp_path, "ca1", "client", "device-1", CLIENT_EXT)
    issue(tmp_path, "ca2", "server2", "localhost", SERVER_EXT)
    return tmp_path


CONFIG = """
[[listeners]]
name = "tls"
kind = "mqtts"
bind = "127.0.0.1:0"
tls = { cert = "server.pem", key = "server.key" }

[[listeners]]
name = "mtls"
kind = "mqtts"
bind = "127.0.0.1:0"
tls = { cert = "server.pem", key = "server.key", client_ca = "ca1.pem", client_auth = "required", use_identity_as_username = "cn" }
"""


def _tls_broker(pki: Path):
    broker = _start_broker(pki, CONFIG)
    try:
        ports = {}
        for name in ("tls", "mtls"):
            pattern = rf"listening for MQTT over TLS addr=127\.0\.0\.1:(\d+) listener=\"{name}\""
            assert broker.wait_for_log(pattern), broker.log()
            ports[name] = int(re.search(pattern, broker.log()).group(1))
        yield broker, ports
    finally:
        _stop_broker(broker)


@pytest.fixture
def tls_broker(pki: Path):
    """`tern serve` with a TLS listener and a mutual TLS one; yields (broker, {name: port})."""
    yield from _tls_broker(pki)


@pytest.fixture
def tls_broker_sighup_only(pki: Path, monkeypatch):
    """As `tls_broker`, with the poll of the files turned off (the tuning variable
    TERN_TLS_WATCH_INTERVAL_MS=0): a reload can then only come from SIGHUP."""
    monkeypatch.setenv("TERN_TLS_WATCH_INTERVAL_MS", "0")
    yield from _tls_broker(pki)


def pub(port: int, *args: str, topic: str = "tls/t", message: str = "m") -> subprocess.CompletedProcess:
    return subprocess.run(
        [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-m", message,
         "-q", "1", *args],
        capture_output=True, timeout=15, stdin=subprocess.DEVNULL)


def sub(broker, port: int, *tls_args: str) -> MosquittoSub:
    """mosquitto_sub on tls/# that exits after one message (and the ready message)."""
    return MosquittoSub((broker.host, port), ["tls/#"], qos=1, count=2, ready_topic="ready/tls",
                        extra=list(tls_args))


def put_ready(port: int, *tls_args: str) -> None:
    result = pub(port, *tls_args, "-r", topic="ready/tls", message="ready")
    assert result.returncode == 0, result.stderr


def test_mosquitto_over_tls_with_cafile(tls_broker, pki):
    """Issue 11, TLS: mosquitto_sub and mosquitto_pub with --cafile (the server certificate
    verified against its CA, name 127.0.0.1) exchange a message over TLS."""
    broker, ports = tls_broker
    ca = ["--cafile", str(pki / "ca1.pem")]
    put_ready(ports["tls"], *ca)
    s = sub(broker, ports["tls"], *ca)
    try:
        s.wait_ready()
        result = pub(ports["tls"], *ca, message="over tls")
        assert result.returncode == 0, result.stderr
        assert [l.payload for l in s.wait_data(1)] == [b"over tls"]
    finally:
        s.close()


def test_mosquitto_mutual_tls_required(tls_broker, pki):
    """Issue 11, mutual TLS: with --cert/--key from the client CA a client is served (its CN
    becomes the username); without a certificate the handshake is refused."""
    broker, ports = tls_broker
    ca = ["--cafile", str(pki / "ca1.pem")]
    cert = ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
    put_ready(ports["mtls"], *ca, *cert)
    s = sub(broker, ports["mtls"], *ca, *cert)
    try:
        s.wait_ready()
        result = pub(ports["mtls"], *ca, *cert, message="mutual")
        assert result.returncode == 0, result.stderr
        assert [l.payload for l in s.wait_data(1)] == [b"mutual"]
    finally:
        s.close()
    refused = pub(ports["mtls"], *ca, message="no certificate")
    assert refused.returncode != 0


CA_CNF = """[ ca ]
default_ca = CA_default
[ CA_default ]
database = index.txt
crlnumber = crlnumber
default_md = sha256
default_crl_days = 30
"""


def revoke_and_make_crl(dir: Path, ca: str, revoked: str) -> None:
    """`crl.pem`: the CRL of `ca` (made with `openssl ca`), revoking `{revoked}.pem`."""
    (dir / "ca.cnf").write_text(CA_CNF)
    (dir / "index.txt").write_text("")
    (dir / "crlnumber").write_text("01\n")
    openssl("ca", "-config", "ca.cnf", "-keyfile", f"{ca}.key", "-cert", f"{ca}.pem",
            "-revoke", f"{revoked}.pem", cwd=dir)
    openssl("ca", "-config", "ca.cnf", "-keyfile", f"{ca}.key", "-cert", f"{ca}.pem",
            "-gencrl", "-out", "crl.pem", cwd=dir)


def test_mosquitto_crl(pki):
    """Issue 11, mutual TLS with a CRL file (made by OpenSSL): mosquitto_pub with a revoked
    certificate is refused in the handshake, one with a valid certificate of the same CA is
    served, and one from a CA the listener trusts but has no CRL for is refused too (with
    `crl` set, unknown revocation status fails closed, as OpenSSL's CRL check)."""
    issue(pki, "ca1", "revoked", "revoked-1", CLIENT_EXT)
    issue(pki, "ca2", "uncovered", "uncovered-1", CLIENT_EXT)
    revoke_and_make_crl(pki, "ca1", "revoked")
    (pki / "client-cas.pem").write_text((pki / "ca1.pem").read_text()
                                        + (pki / "ca2.pem").read_text())
    config = ('[[listeners]]\nname = "crl"\nkind = "mqtts"\nbind = "127.0.0.1:0"\n'
              'tls = { cert = "server.pem", key = "server.key", client_ca = "client-cas.pem", '
              'client_auth = "required", crl = ["crl.pem"] }\n')
    broker = _start_broker(pki, config)
    try:
        pattern = r"listening for MQTT over TLS addr=127\.0\.0\.1:(\d+) listener=\"crl\""
        assert broker.wait_for_log(pattern), broker.log()
        port = int(re.search(pattern, broker.log()).group(1))
        ca = ["--cafile", str(pki / "ca1.pem")]

        def with_cert(name: str) -> subprocess.CompletedProcess:
            return pub(port, *ca, "--cert", str(pki / f"{name}.pem"),
                       "--key", str(pki / f"{name}.key"), message=name)

        valid = with_cert("client")
        assert valid.returncode == 0, valid.stderr
        assert with_cert("revoked").returncode != 0
        assert with_cert("uncovered").returncode != 0
        # The broker says why (debug log): rustls's CertificateError for each.
        assert broker.wait_for_log(r"invalid peer certificate: Revoked"), broker.log()
        assert broker.wait_for_log(r"invalid peer certificate: UnknownRevocationStatus"), \
            broker.log()
    finally:
        _stop_broker(broker)


def swap_certificate(pki: Path) -> None:
    """Replaces server.pem / server.key with the certificate of ca2 (key first: a reload
    between the two writes fails and keeps the old pair until the second)."""
    (pki / "server.key").write_bytes((pki / "server2.key").read_bytes())
    (pki / "server.pem").write_bytes((pki / "server2.pem").read_bytes())


def check_swapped(broker, port: int, pki: Path, before: MosquittoSub, timeout: float) -> None:
    """New connections get ca2's certificate (ca1 no longer verifies it) and the subscriber
    connected before the swap still gets messages."""
    deadline = time.monotonic() + timeout
    while True:
        result = pub(port, "--cafile", str(pki / "ca2.pem"), message="after reload")
        if result.returncode == 0:
            break
        assert time.monotonic() < deadline, f"not reloaded: {result.stderr!r}\n{broker.log()}"
        time.sleep(0.2)
    assert pub(port, "--cafile", str(pki / "ca1.pem")).returncode != 0
    assert [l.payload for l in before.wait_data(1)] == [b"after reload"]


def test_reload_on_sighup(tls_broker_sighup_only, pki):
    """Issue 11, reload: the files are swapped and tern gets SIGHUP; a new connection sees the
    new certificate, a connection opened before keeps working. The file poll is off, and the
    old certificate is still served after the swap until the signal: the SIGHUP did it."""
    broker, ports = tls_broker_sighup_only
    assert broker.wait_for_log(r"TLS files are not watched"), broker.log()
    ca1 = ["--cafile", str(pki / "ca1.pem")]
    put_ready(ports["tls"], *ca1)
    before = sub(broker, ports["tls"], *ca1)
    try:
        before.wait_ready()
        swap_certificate(pki)
        still_old = pub(ports["tls"], "--cafile", str(pki / "ca2.pem"), message="too early")
        assert still_old.returncode != 0, "reloaded without SIGHUP"
        assert broker.count_log(r"TLS certificates reloaded") == 0, broker.log()
        broker.proc.send_signal(signal.SIGHUP)
        assert broker.wait_for_log(r"SIGHUP: reloading TLS certificates"), broker.log()
        assert broker.wait_for_log(r"TLS certificates reloaded"), broker.log()
        check_swapped(broker, ports["tls"], pki, before, timeout=1.0)
    finally:
        before.close()


def test_reload_when_files_change(tls_broker, pki):
    """Issue 11, reload: the files are only swapped (no signal); within a few polls of the
    files (every 2 s) a new connection sees the new certificate, and one opened before keeps
    working."""
    broker, ports = tls_broker
    ca1 = ["--cafile", str(pki / "ca1.pem")]
    put_ready(ports["tls"], *ca1)
    before = sub(broker, ports["tls"], *ca1)
    try:
        before.wait_ready()
        swap_certificate(pki)
        check_swapped(broker, ports["tls"], pki, before, timeout=10.0)
    finally:
        before.close()


def make_server_key(dir: Path, name: str, kind: str) -> None:
    """`{name}.key` in the PEM form under test: RSA in PKCS#1 ("BEGIN RSA PRIVATE KEY"), ECDSA
    in SEC1 ("BEGIN EC PRIVATE KEY"), Ed25519 in PKCS#8 ("BEGIN PRIVATE KEY")."""
    if kind == "rsa":
        openssl("genrsa", "-traditional", "-out", f"{name}.key", "2048", cwd=dir)
        marker = "BEGIN RSA PRIVATE KEY"
    elif kind == "sec1":
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key",
                cwd=dir)
        marker = "BEGIN EC PRIVATE KEY"
    else:
        openssl("genpkey", "-algorithm", "ed25519", "-out", f"{name}.key", cwd=dir)
        marker = "BEGIN PRIVATE KEY"
    assert marker in (dir / f"{name}.key").read_text()


def test_key_formats(tmp_path):
    """Issue 11, TLS: server keys in PEM as RSA (PKCS#1), ECDSA (SEC1) and Ed25519 (PKCS#8) are
    loaded, and mosquitto_pub completes a TLS handshake with each."""
    make_ca(tmp_path, "ca")
    listeners = []
    for kind in ("rsa", "sec1", "ed25519"):
        make_server_key(tmp_path, kind, kind)
        (tmp_path / f"{kind}.ext").write_text(SERVER_EXT)
        openssl("req", "-new", "-key", f"{kind}.key", "-out", f"{kind}.csr",
                "-subj", "/CN=localhost", cwd=tmp_path)
        openssl("x509", "-req", "-in", f"{kind}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{kind}.pem", "-days", "30",
                "-extfile", f"{kind}.ext", cwd=tmp_path)
        listeners.append(f'[[listeners]]\nname = "{kind}"\nkind = "mqtts"\n'
                         f'bind = "127.0.0.1:0"\n'
                         f'tls = {{ cert = "{kind}.pem", key = "{kind}.key" }}\n')
    broker = _start_broker(tmp_path, "\n".join(listeners))
    try:
        for kind in ("rsa", "sec1", "ed25519"):
            pattern = rf"listening for MQTT over TLS addr=127\.0\.0\.1:(\d+) listener=\"{kind}\""
            assert broker.wait_for_log(pattern), broker.log()
            port = int(re.search(pattern, broker.log()).group(1))
            result = pub(port, "--cafile", str(tmp_path / "ca.pem"), message=kind)
            assert result.returncode == 0, (kind, result.stderr)
    finally:
        _stop_broker(broker)


ACL_BY_CN = """\
pattern readwrite devices/%u/#
pattern readwrite ready/%u
"""

IDENTITY_CONFIG = """
[[listeners]]
name = "mtls"
kind = "mqtts"
bind = "127.0.0.1:0"
tls = { cert = "server.pem", key = "server.key", client_ca = "ca1.pem", client_auth = "required", use_identity_as_username = "cn" }
auth = { acl_file = "tern.acl" }
"""


def test_certificate_identity_is_the_username_of_the_access_rules(pki):
    """Issue 12, "mutual TLS identity as username": the client certificate's CN (device-1)
    is the username the ACL's `%u` sees. mosquitto_sub with the certificate may subscribe to
    devices/device-1/# and gets what mosquitto_pub sends there; devices/device-2/# is refused
    (MQTT 5 SUBACK 0x87: 'denied')."""
    (pki / "tern.acl").write_text(ACL_BY_CN)
    broker = _start_broker(pki, IDENTITY_CONFIG)
    try:
        pattern = r"listening for MQTT over TLS addr=127\.0\.0\.1:(\d+) listener=\"mtls\""
        assert broker.wait_for_log(pattern), broker.log()
        port = int(re.search(pattern, broker.log()).group(1))
        tls = ["--cafile", str(pki / "ca1.pem"), "--cert", str(pki / "client.pem"),
               "--key", str(pki / "client.key")]
        ready = pub(port, *tls, "-r", topic="ready/device-1", message="ready")
        assert ready.returncode == 0, ready.stderr
        s = MosquittoSub((broker.host, port), ["devices/device-1/#"], qos=1, count=2,
                         ready_topic="ready/device-1", extra=tls)
        try:
            s.wait_ready()
            sent = pub(port, *tls, topic="devices/device-1/temp", message="21.5")
            assert sent.returncode == 0, sent.stderr
            assert [l.payload for l in s.wait_data(1)] == [b"21.5"]
        finally:
            s.close()
        denied = subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "devices/device-2/#",
             "-V", "mqttv5", "-C", "1", "-W", "5", *tls],
            capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
        assert "denied" in (denied.stderr + denied.stdout).lower(), denied.stderr
    finally:
        _stop_broker(broker)
