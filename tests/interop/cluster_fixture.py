"""A Tern cluster of real processes for the interop suite (issue 16): node i (1-based) listens for
MQTT on 127.0.0.{i+1}:<free port> and for cluster links on 127.0.0.{i+1}:<free port> (on Linux
all of 127.0.0.0/8 is loopback), with its own directory, configuration file and data dir, the
other nodes as seeds and short Raft timers. Nodes can be SIGKILLed, SIGSTOPped / SIGCONTed and
restarted with the same data dir. At teardown every node still running gets SIGTERM at once and
must exit 0 within the shutdown rule (a SIGKILLed node is not checked).

The leader is read from the nodes' logs: openraft logs each vote a node commits to at info
("vote is changing from ... to T<term>-N<leader>:committed"); the highest term among the
running nodes names the current leader.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytest

from conftest import SHUTDOWN_TIMEOUT, START_TIMEOUT, tern_bin
from mqtt_clients import MQTTV5, PahoClient

#: Raft timers of the suite's clusters (the brief: heartbeat 100 ms, election 500 ms).
HEARTBEAT_MS = 100
ELECTION_TIMEOUT_MS = 500
#: A cluster-wide decision waits at most this long before the client is told to retry.
PROPOSAL_TIMEOUT_MS = 2000
#: Bound of the cluster's formation (all nodes started until a probe crossed every link).
FORM_TIMEOUT = 20.0
#: Bound of a route's spread (probes until one arrives).
ROUTE_TIMEOUT = 15.0
#: tern's own crates at debug (the connection lines the suite waits for); openraft at info (its
#: votes and role changes, without a line per heartbeat); the storage engine quiet.
LOG_FILTER = "debug,openraft=info,fjall=warn,lsm_tree=warn"

_PROBES = itertools.count(1)

_VOTE = re.compile(r"^(\S+)\s.*vote is changing from \S+ to T(\d+)-N(\d+):committed", re.M)


_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str) -> int:
    """A port free on `host` right now, never one this run handed out before (the kernel gives
    a just-closed port out again; a node's MQTT and cluster ports must differ)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port
    raise RuntimeError(f"no port left on {host} that this run has not handed out already")


def log_time(stamp: str) -> float:
    """A log line's timestamp (RFC 3339, UTC) as seconds since the epoch."""
    return datetime.strptime(stamp.rstrip("Z")[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=timezone.utc).timestamp()


class ClusterNode:
    """One `tern serve` of a cluster. `addr` is its MQTT (host, port), what the client wrappers
    take; `cluster_addr` its cluster link address."""

    def __init__(self, node_id: int, host: str, mqtt_port: int, cluster_port: int,
                 directory: Path, peers: list[str], *, command_prefix: list[str] | None = None,
                 mqtt_host: str | None = None, extra_config: str = "",
                 cluster_config: str = ""):
        self.node_id = node_id
        self.host = mqtt_host or host
        self.port = mqtt_port
        self.addr = (self.host, mqtt_port)
        self.cluster_addr = f"{host}:{cluster_port}"
        self.dir = directory
        self.command_prefix = command_prefix or []
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.starts = 0
        self.paused = False
        #: Set when the test killed the node (its exit is not checked).
        self.killed = False
        directory.mkdir(parents=True, exist_ok=True)
        seeds = ", ".join(f'"{peer}"' for peer in peers)
        self.config_path = directory / "tern.toml"
        self.config_path.write_text(
            f'listen = ["{self.host}:{mqtt_port}"]\n'
            f'data_dir = "{directory / "data"}"\n'
            'durability = "process"\nmin_free_disk = "0"\nsys_interval = 0\n'
            f"{extra_config.format(host=self.host)}"
            "[cluster]\n"
            f"node_id = {node_id}\n"
            f'bind = "{self.cluster_addr}"\n'
            f"seeds = [{seeds}]\n"
            f"heartbeat_ms = {HEARTBEAT_MS}\n"
            f"election_timeout_ms = {ELECTION_TIMEOUT_MS}\n"
            f"proposal_timeout_ms = {PROPOSAL_TIMEOUT_MS}\n"
            f"{cluster_config.format(node_id=node_id)}"
        )

    def __repr__(self) -> str:
        return f"node {self.node_id} ({self.host}:{self.port})"

    # --- process ----------------------------------------------------------------------------

    def launch(self) -> None:
        """Starts the process (without waiting for it to listen); a new log file per start."""
        self.starts += 1
        self.killed = False
        self.paused = False
        self.log_path = self.dir / f"tern-{self.starts}.log"
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        env["NO_COLOR"] = "1"
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [*self.command_prefix, str(tern_bin()), "serve", "--config",
                 str(self.config_path), "--log-level", LOG_FILTER],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env,
                cwd=self.dir,
            )

    def wait_listening(self, timeout: float = START_TIMEOUT) -> str | None:
        """Waits until the node accepts MQTT connections; None when it does, else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with {self.proc.returncode}"
            if "listening for MQTT over TCP" in self.log():
                try:
                    with socket.create_connection(self.addr, timeout=0.5):
                        return None
                except OSError:
                    pass
            time.sleep(0.02)
        return f"not listening within {timeout} s"

    def start(self) -> None:
        self.launch()
        problem = self.wait_listening()
        assert problem is None, f"{self} {problem}\n{self.tail()}"

    def kill(self) -> float:
        """SIGKILL (a crash: no shutdown); returns the time of the kill (time.time())."""
        assert self.proc is not None and self.proc.poll() is None, f"{self} is not running"
        if self.paused:
            self.proc.send_signal(signal.SIGCONT)
        at = time.time()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=SHUTDOWN_TIMEOUT)
        self.killed = True
        self.paused = False
        return at

    def pause(self) -> float:
        """SIGSTOP: the process stops dead, its sockets stay open."""
        at = time.time()
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True
        return at

    def resume(self) -> float:
        at = time.time()
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False
        return at

    def restart(self) -> None:
        """Starts the node again on its addresses, with its data dir."""
        assert self.proc is None or self.proc.poll() is not None, f"{self} still runs"
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- logs -------------------------------------------------------------------------------

    def log(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if len(re.findall(pattern, self.log())) >= count:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def votes(self) -> list[tuple[float, int, int]]:
        """(time, term, leader) of every vote this run of the node committed to."""
        return [(log_time(stamp), int(term), int(leader))
                for stamp, term, leader in _VOTE.findall(self.log())]


class Cluster:
    """N nodes (see the module's doc comment). `nodes[0]` is node 1."""

    def __init__(self, base: Path, size: int = 3, *, hosts: list[str] | None = None,
                 mqtt_hosts: list[str] | None = None,
                 command_prefixes: list[list[str]] | None = None, extra_config: str = "",
                 cluster_config: str = ""):
        """`extra_config`: top-level keys and tables for every node's file, before
        `[cluster]`; `{host}` in it is the node's MQTT host. `cluster_config`: more keys of
        `[cluster]` (`{node_id}` in it is the node's id)."""
        self.base = base
        self.size = size
        self.hosts = hosts or [f"127.0.0.{i + 2}" for i in range(size)]
        self.mqtt_hosts = mqtt_hosts or self.hosts
        self.command_prefixes = command_prefixes or [[] for _ in range(size)]
        self.extra_config = extra_config
        self.cluster_config = cluster_config
        self.nodes: list[ClusterNode] = []
        self.attempt = 0
        self._started = time.monotonic()
        #: Seconds from the first launch to the end of `wait_formed`.
        self.formed_in: float | None = None

    def node(self, node_id: int) -> ClusterNode:
        return self.nodes[node_id - 1]

    def _make_nodes(self, ports=None) -> None:
        self.attempt += 1
        if ports is None:
            ports = [(free_port(host), free_port(host))
                     for host in self.hosts]
        cluster_addrs = [f"{host}:{cport}" for host, (_, cport) in zip(self.hosts, ports)]
        self.nodes = [
            ClusterNode(
                i + 1, self.hosts[i], ports[i][0], ports[i][1],
                self.base / f"a{self.attempt}-node{i + 1}",
                [addr for j, addr in enumerate(cluster_addrs) if j != i],
                command_prefix=self.command_prefixes[i], mqtt_host=self.mqtt_hosts[i],
                extra_config=self.extra_config, cluster_config=self.cluster_config,
            )
            for i in range(self.size)
        ]

    def start(self, ports=None) -> None:
        """Starts every node at once and waits until each listens; retries with other ports
        when one was taken meanwhile (at most 3 attempts)."""
        problems = []
        for _ in range(3):
            self._make_nodes(ports)
            started = time.monotonic()
            for node in self.nodes:
                node.launch()
            failed = [(node, node.wait_listening()) for node in self.nodes]
            failed = [(node, problem) for node, problem in failed if problem is not None]
            if not failed:
                self._started = started
                return
            for node in self.nodes:
                if node.running:
                    node.proc.kill()
                    node.proc.wait(timeout=SHUTDOWN_TIMEOUT)
            problems += [f"{node}: {problem}\n{node.tail(20)}" for node, problem in failed]
            if ports is not None or not any(
                    "in use" in node.log() or "cannot listen" in node.log() for node, _ in failed):
                break
        pytest.fail("the cluster did not start:\n" + "\n".join(problems), pytrace=False)

    def wait_formed(self, timeout: float = FORM_TIMEOUT) -> None:
        """Waits until a subscriber on node 1 receives a probe published on every other node
        (routes replicated, links up), bounded."""
        first = self.nodes[0]
        subscriber = connect_retrying(first, "form-sub", timeout=timeout)
        try:
            subscribe_retrying(subscriber, "tern-form/#", 0, timeout=timeout)
            for node in self.nodes[1:]:
                await_route(subscriber, f"tern-form/{node.node_id}", node, timeout=timeout)
        finally:
            subscriber.close()
        self.formed_in = time.monotonic() - self._started

    def running(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running and not node.paused]

    def leader(self, among: list[ClusterNode] | None = None) -> tuple[int, int] | None:
        """(leader id, term) of the highest term the given running nodes committed to."""
        votes = [vote for node in (among or self.running()) for vote in node.votes()]
        if not votes:
            return None
        _, term, leader = max(votes, key=lambda vote: vote[1])
        return leader, term

    def wait_leader(self, *, newer_than: int = 0, among: list[ClusterNode] | None = None,
                    timeout: float = 15.0) -> tuple[int, int, float]:
        """Waits for a leader of a term above `newer_than` that every node of `among` (default:
        the running ones) has committed to; returns (leader, term, time of the first such vote
        in the logs)."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = among or self.running()
            per_node = [[vote for vote in node.votes() if vote[1] > newer_than]
                        for node in nodes]
            if all(per_node):
                latest = [max(votes, key=lambda vote: vote[1]) for votes in per_node]
                terms = {(term, leader) for _, term, leader in latest}
                if len(terms) == 1:
                    term, leader = terms.pop()
                    first = min(at for votes in per_node for at, t, _ in votes if t == term)
                    return leader, term, first
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no leader newer than term {newer_than} agreed by {nodes} in {timeout} s: "
                    f"{[node.votes()[-3:] for node in nodes]}")
            time.sleep(0.05)

    def stop(self) -> list[str]:
        """SIGTERM to every running node at once; returns the breaches of the shutdown rule."""
        problems = []
        waiting = []
        for node in self.nodes:
            if node.proc is None or node.killed:
                continue
            code = node.proc.poll()
            if code is not None:
                problems.append(f"{node} exited during the test with code {code}")
                continue
            if node.paused:
                node.resume()
            node.proc.send_signal(signal.SIGTERM)
            waiting.append(node)
        started = time.monotonic()
        for node in waiting:
            remaining = max(0.1, SHUTDOWN_TIMEOUT - (time.monotonic() - started))
            try:
                code = node.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=5)
                problems.append(f"{node} did not exit within {SHUTDOWN_TIMEOUT} s of SIGTERM")
                continue
            if code != 0:
                problems.append(f"{node} exited with {code} after SIGTERM")
        return problems

    def logs(self, lines: int = 80) -> str:
        return "\n".join(f"--- {node} (start {node.starts}) ---\n{node.tail(lines)}"
                         for node in self.nodes)


def connect_retrying(node: ClusterNode, client_id: str, protocol=MQTTV5,
                     timeout: float = ROUTE_TIMEOUT, **kwargs) -> PahoClient:
    """A connected paho client on `node`: a CONNECT a node cannot decide yet (its claim waits
    for a cluster that is forming or electing) is refused as retryable (0x88 Server
    unavailable, 3.x: 3): tries again every 100 ms, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        client = PahoClient(node.addr, client_id, protocol, **kwargs)
        try:
            result = client.connect(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
            if result.reason_code == 0:
                return client
            problem = f"CONNACK {result.reason_code:#x}"
        except (TimeoutError, OSError) as error:
            problem = repr(error)
        client.close()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{client_id} could not connect to {node} in {timeout} s: "
                               f"{problem}")
        time.sleep(0.1)


def subscribe_retrying(client: PahoClient, topic: str, qos: int = 1,
                       timeout: float = ROUTE_TIMEOUT) -> list[int]:
    """Subscribes until the SUBACK grants the filter: a SUBSCRIBE that needs a new route waits
    for the cluster to commit it and is refused, retryably (0x80 / 0x97 or so), when it could
    not (forming, electing, no quorum); tries again every 100 ms, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        codes = client.subscribe(topic, qos, timeout=max(1.0, min(
            PROPOSAL_TIMEOUT_MS / 1000 + 3, deadline - time.monotonic())))
        if codes and all(code < 0x80 for code in codes):
            return codes
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{client.client_id}: SUBSCRIBE {topic} refused ({codes}) for "
                               f"{timeout} s")
        time.sleep(0.1)


def await_route(subscriber: PahoClient, topic: str, node: ClusterNode,
                timeout: float = ROUTE_TIMEOUT, qos: int = 0,
                received: Callable[[], bool] | None = None) -> int:
    """Publishes probes (payload b"probe-<n>") to `topic` on `node` every 50 ms until
    `subscriber` has one on that topic (or `received()` says so), bounded; returns how many were
    sent. Routes spread through the cluster's log, so a subscription on one node is known on
    another a moment later."""
    publisher = connect_retrying(node, f"probe-{node.node_id}-{next(_PROBES)}", timeout=timeout)
    try:
        deadline = time.monotonic() + timeout
        sent = 0
        done = received or (lambda: any(m.topic == topic for m in subscriber.messages))
        while not done():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no probe on {topic} from {node} within {timeout} s")
            sent += 1
            publisher.publish(topic, b"probe-%d" % sent, qos=qos)
            time.sleep(0.05)
        return sent
    finally:
        publisher.close()


# --- fixtures (imported by the cluster test modules) ------------------------------------------


@pytest.fixture
def cluster(request, tmp_path):
    """A formed cluster of 3 nodes (`Cluster`); at teardown SIGTERM to every running node, each
    must exit 0 within the shutdown rule (SIGKILLed nodes are not checked)."""
    running = Cluster(tmp_path, 3)
    request.node._tern_cluster = running
    running.start()
    try:
        running.wait_formed()
        print(f"CLUSTER-TIMING formed seconds={running.formed_in:.3f}", flush=True)
        yield running
    finally:
        problems = running.stop()
        if problems:
            pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def clients(cluster):
    """Factories of clients on a node: `clients.paho(node, client_id, protocol, **kw)` and
    `clients.sub(node, topics, **kw)` (mosquitto_sub); all closed before the nodes stop."""
    from mqtt_clients import MosquittoSub

    class Clients:
        def __init__(self):
            self.made = []

        def paho(self, node: ClusterNode, client_id: str, protocol=MQTTV5, **kwargs):
            client = PahoClient(node.addr, client_id, protocol, **kwargs)
            self.made.append(client)
            return client

        def sub(self, node: ClusterNode, topics, **kwargs):
            sub = MosquittoSub(node.addr, topics, **kwargs)
            self.made.append(sub)
            return sub

    made = Clients()
    yield made
    for client in made.made:
        client.close()
