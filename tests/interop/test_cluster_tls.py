"""Issue 16, "TLS optional" on the links between nodes: a cluster of three `tern serve` processes
with `[cluster] tls` (certificates made here with the openssl command line: a CA, and a
certificate per node for its IP address), under paho and mosquitto clients; and a TLS client
that is not a node (openssl s_client without a certificate, then with one of another CA) is
refused by a node's cluster port; a node without `tls` cannot join a cluster that has it (both
sides log why)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from cluster_fixture import Cluster, ClusterNode, await_route, free_port
from conftest import SHUTDOWN_TIMEOUT
from mqtt_clients import MQTTV5, PahoClient, mosquitto_pub


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=30)
    assert result.returncode == 0, f"openssl {args}: {result.stderr.decode(errors='replace')}"


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
            cwd=directory)


def make_node(directory: Path, ca: str, name: str, ip: str) -> None:
    """A certificate for `ip` (an IP subject alternative name), good as server and client."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    (directory / f"{name}.ext").write_text(
        f"subjectAltName = IP:{ip}\nextendedKeyUsage = serverAuth, clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=directory)


@pytest.fixture
def tls_cluster(tmp_path):
    """A formed cluster of 3 nodes (127.0.0.2-.4) whose links are mutual TLS."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "cluster-ca")
    for node_id in (1, 2, 3):
        make_node(pki, "cluster-ca", f"node{node_id}", f"127.0.0.{node_id + 1}")
    running = Cluster(
        tmp_path, 3,
        cluster_config=(f'tls = {{{{ cert = "{pki}/node{{node_id}}.pem", '
                        f'key = "{pki}/node{{node_id}}.key", ca = "{pki}/cluster-ca.pem" }}}}\n'))
    running.pki = pki
    running.start()
    try:
        running.wait_formed()
        yield running
    finally:
        problems = running.stop()
        if problems:
            pytest.fail("; ".join(problems), pytrace=False)


@pytest.mark.test_timeout(60)
def test_a_tls_cluster_carries_qos1_from_mosquitto_pub_on_3_to_paho_on_1(tls_cluster, unique):
    """Subscribe on A (paho), publish on C (mosquitto_pub) at QoS 1 over TLS links: delivered in
    order; every node logged that its links use mutual TLS, none the plain-port warning."""
    subscriber = PahoClient(tls_cluster.node(1).addr, f"{unique}s", MQTTV5)
    try:
        subscriber.connect()
        assert subscriber.subscribe(f"{unique}/#", 1) == [1]
        await_route(subscriber, f"{unique}/probe", tls_cluster.node(3))
        for i in range(10):
            mosquitto_pub(tls_cluster.node(3).addr, "-t", f"{unique}/x", "-m", str(i), "-q", "1")
        got = subscriber.wait_messages(10, topic=f"{unique}/x", timeout=10)
        payloads = []
        for message in got:
            if message.payload not in payloads:
                payloads.append(message.payload)
        assert payloads == [str(i).encode() for i in range(10)]
    finally:
        subscriber.close()
    for node in tls_cluster.nodes:
        log = node.log()
        assert "cluster links use mutual TLS" in log, node.tail()
        assert "unauthenticated" not in log, node.tail()


def s_client(port_addr: str, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "s_client", "-connect", port_addr, "-alpn", "tern-cluster", *extra],
        cwd=cwd, input=b"", capture_output=True, timeout=20)


@pytest.mark.test_timeout(60)
def test_a_tls_client_without_a_cluster_certificate_is_refused(tls_cluster):
    """A node's cluster port completes no handshake with a client that shows no certificate, or
    one another CA signed (mutual TLS against the cluster's CA); one with a node's certificate
    gets through (the control)."""
    pki = tls_cluster.pki
    make_ca(pki, "other-ca")
    make_node(pki, "other-ca", "intruder", "127.0.0.9")
    target = tls_cluster.node(1).cluster_addr
    ca = ["-CAfile", "cluster-ca.pem", "-verify_return_error"]
    good = s_client(target, *ca, "-cert", "node2.pem", "-key", "node2.key", "-tls1_3", cwd=pki)
    assert good.returncode == 0, good.stdout.decode(errors="replace")[-2000:]
    for who in ([], ["-cert", "intruder.pem", "-key", "intruder.key"]):
        # TLS 1.3: the server checks the client's certificate after the client's Finished; it
        # then sends an alert, and s_client fails on its first read.
        refused = subprocess.run(
            ["openssl", "s_client", "-connect", target, "-alpn", "tern-cluster", *ca, *who,
             "-tls1_2"],
            cwd=pki, input=b"", capture_output=True, timeout=20)
        assert refused.returncode != 0, (who, refused.stdout.decode(errors="replace")[-2000:])
    assert tls_cluster.node(1).wait_for_log("TLS handshake failed", timeout=5.0), \
        tls_cluster.node(1).tail()


@pytest.mark.test_timeout(60)
def test_a_node_without_tls_cannot_join_and_both_sides_say_why(tls_cluster, tmp_path):
    """Mixed configuration (brief: "must fail cleanly, never fall back to plaintext"): a node
    without `[cluster] tls` whose seed is a TLS node never becomes a member; the TLS node logs
    the failed handshake; the plain node, dialled in TLS, logs that the peer speaks TLS; it
    stops cleanly on SIGTERM."""
    host = "127.0.0.5"
    plain = ClusterNode(4, host, free_port(host), free_port(host), tmp_path / "plain",
                        [tls_cluster.node(1).cluster_addr])
    plain.start()
    try:
        assert tls_cluster.node(1).wait_for_log(
            r"TLS handshake failed.*side=\"?accepted", timeout=10.0), tls_cluster.node(1).tail()
        probe = s_client(plain.cluster_addr, cwd=tls_cluster.pki)
        assert probe.returncode != 0, probe.stdout.decode(errors="replace")[-2000:]
        assert plain.wait_for_log("the peer speaks TLS and this node has no", timeout=5.0), \
            plain.tail()
        assert "cluster: forming" not in plain.log(), plain.tail()
        for node in tls_cluster.nodes:
            assert "admitting a node" not in node.log() or "node=4" not in node.log()
    finally:
        plain.proc.send_signal(signal.SIGTERM)
        code = plain.proc.wait(timeout=SHUTDOWN_TIMEOUT + 5)
    assert code == 0, plain.tail()
