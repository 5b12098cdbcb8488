"""Issue 16, "network-namespace partitions as an extra suite that checks its capabilities and
skips when it cannot run": three `tern serve` nodes, each in a network namespace of its own,
joined by two bridges in a fourth ("switch") namespace: one network for cluster links, one for
MQTT, which the test's clients reach through a veth pair from this namespace. A partition sets
one node's cluster port on the switch down: its cluster links go silent (no reset, as a cut
cable), while clients still reach every node.

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and `ip` with netns support; otherwise every test
skips, naming what is missing; TERN_INTEROP_NETNS=0 turns it off on a machine where it could
run. Namespaces and links are removed at teardown, also after a failure or a timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from cluster_fixture import (
    Cluster,
    await_route,
    connect_retrying,
    log_time,
    subscribe_retrying,
)
from mqtt_clients import MQTTV5, PahoClient

#: `cluster.lease_ms`'s default, in seconds: how long the minority keeps its clients.
LEASE_S = 5.0
#: Port of every node's MQTT listener and cluster link (each node has its own addresses).
MQTT_PORT = 1883
CLUSTER_PORT = 7883


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _why_not() -> str | None:
    """Why this machine cannot run the suite, or None."""
    if os.environ.get("TERN_INTEROP_NETNS") == "0":
        return "turned off (TERN_INTEROP_NETNS=0)"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    probe = f"ternprobe{os.getpid()}"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()}"
        link = _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
                   check=False)
        if link.returncode != 0:
            return f"cannot create veth pairs: {link.stderr.strip()}"
        bridge = _ip("-n", probe, "link", "add", "b0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create bridges: {bridge.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`ip` failed: {error}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


class Network:
    """The namespaces and links; `remove()` undoes everything it made."""

    def __init__(self, size: int = 3):
        tag = os.getpid() % 100000
        self.prefix = f"tn{tag}"
        self.switch = f"{self.prefix}sw"
        self.nodes = [f"{self.prefix}n{i + 1}" for i in range(size)]
        self.host_link = f"{self.prefix}h"
        # Two /24s picked by process id, clear of this namespace's own addresses.
        used = _ip("-4", "-o", "addr", "show").stdout
        for second in range(100, 250, 2):
            cluster_net = f"10.{second}.{tag % 250}"
            mqtt_net = f"10.{second + 1}.{tag % 250}"
            if f" {cluster_net}." not in used and f" {mqtt_net}." not in used:
                break
        self.cluster_hosts = [f"{cluster_net}.{i + 1}" for i in range(size)]
        self.mqtt_hosts = [f"{mqtt_net}.{i + 1}" for i in range(size)]
        self.host_addr = f"{mqtt_net}.100"
        self.made: list[str] = []

    def build(self) -> None:
        sw = ["-n", self.switch]
        _ip("netns", "add", self.switch)
        self.made.append(self.switch)
        _ip(*sw, "link", "set", "lo", "up")
        for bridge in ("brc", "brm"):
            _ip(*sw, "link", "add", bridge, "type", "bridge")
            _ip(*sw, "link", "set", bridge, "up")
        for i, ns in enumerate(self.nodes):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            for kind, hosts in (("c", self.cluster_hosts), ("m", self.mqtt_hosts)):
                port = f"{kind}{i + 1}"
                _ip(*sw, "link", "add", port, "type", "veth", "peer", "name", f"{kind}0",
                    "netns", ns)
                _ip(*sw, "link", "set", port, "master", f"br{kind}")
                _ip(*sw, "link", "set", port, "up")
                _ip("-n", ns, "addr", "add", f"{hosts[i]}/24", "dev", f"{kind}0")
                _ip("-n", ns, "link", "set", f"{kind}0", "up")
        # This namespace reaches the MQTT network only.
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", "host", "netns",
            self.switch)
        self.made.append("link:" + self.host_link)
        _ip(*sw, "link", "set", "host", "master", "brm")
        _ip(*sw, "link", "set", "host", "up")
        _ip("addr", "add", f"{self.host_addr}/24", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")

    def partition(self, node_id: int) -> None:
        """Cuts node `node_id`'s cluster link (its MQTT side stays reachable)."""
        _ip("-n", self.switch, "link", "set", f"c{node_id}", "down")

    def heal(self, node_id: int) -> None:
        _ip("-n", self.switch, "link", "set", f"c{node_id}", "up")

    def remove(self) -> None:
        for item in reversed(self.made):
            if item.startswith("link:"):
                _ip("link", "del", item[5:], check=False)
            else:
                _ip("netns", "del", item, check=False)
        self.made.clear()


@pytest.fixture
def netns_cluster(request, tmp_path):
    """A formed 3-node cluster, node i in namespace <prefix>n<i> (see the module's doc)."""
    reason = _why_not()
    if reason is not None:
        pytest.skip(f"network-namespace partitions: {reason}")
    network = Network()
    cluster = None
    try:
        network.build()
        cluster = Cluster(
            tmp_path, 3, hosts=network.cluster_hosts, mqtt_hosts=network.mqtt_hosts,
            command_prefixes=[["ip", "netns", "exec", ns] for ns in network.nodes],
            # Not loopback: Tern wants authentication named; these networks are the test's own.
            extra_config="[auth]\nallow_anonymous = true\n")
        request.node._tern_cluster = cluster
        cluster.start(ports=[(MQTT_PORT, CLUSTER_PORT)] * 3)
        cluster.wait_formed()
        print(f"CLUSTER-TIMING netns-formed seconds={cluster.formed_in:.3f}", flush=True)
        yield cluster, network
    finally:
        problems = []
        if cluster is not None:
            for node in cluster.nodes:
                if node.running:
                    # Healed first, so a shutdown's last proposals have somewhere to go.
                    network.heal(node.node_id)
            problems = cluster.stop()
        network.remove()
        if problems:
            pytest.fail("; ".join(problems), pytrace=False)


@pytest.mark.test_timeout(75)
@pytest.mark.parametrize("cut", ["follower", "leader"])
def test_partitioned_node_majority_goes_on_minority_refuses_then_converges(
        netns_cluster, unique, cut):
    """Issue 16 "Partitions": one node (a follower, or the leader: the other two then elect a
    new one) cut off from the others. The majority goes on (a new
    client connects, a new route spreads, messages flow between its nodes); on the minority
    side existing sessions keep working along known routes (a local publish reaches a local
    subscriber), a CONNECT that needs a new claim gets CONNACK 0x88 Server unavailable and a
    new route's SUBSCRIBE a SUBACK failure (both retryable); after the heal every node agrees on
    one leader and a message published on any node reaches subscribers on every node."""
    cluster, network = netns_cluster
    made: list[PahoClient] = []

    def client(node, name, **kwargs) -> PahoClient:
        made.append(PahoClient(node.addr, f"{unique}{name}", MQTTV5, **kwargs))
        return made[-1]

    pending: list[str] = []  # the minority's refusals, checked at the end (after the heal)
    try:
        leader, term, _ = cluster.wait_leader()
        if cut == "leader":
            minority = leader
        else:
            minority = max(node.node_id for node in cluster.nodes if node.node_id != leader)
        lone = cluster.node(minority)
        majority = [node for node in cluster.nodes if node.node_id != minority]
        # A session on the minority node, subscribed before the partition.
        old = client(lone, "old", keepalive=60)
        old.connect()
        subscribe_retrying(old, f"{unique}/#", 1)
        await_route(old, f"{unique}/probe", majority[0])
        # And a publisher there (a new connection there would need a claim, refused below).
        local = client(lone, "loc")
        local.connect(timeout=10)

        held_before = lone.log().count("cluster: lease held")
        network.partition(minority)
        cut_at = time.monotonic()
        cut_wall = time.time()
        # The minority's known routes and local traffic keep working (within its lease).
        local.publish(f"{unique}/local", b"still-here", qos=1, timeout=10)
        old.wait_messages(1, topic=f"{unique}/local", timeout=5)
        # New routes and new claims on the minority side fail, retryably.
        codes = old.subscribe(f"{unique}-min/#", 1, timeout=10)
        accepted = bool(codes) and codes[0] < 0x80
        if accepted:
            pending.append(f"minority SUBACK of a new route: {codes}, not a failure")
        newcomer = client(lone, "new")
        asked = time.monotonic()
        try:
            connack = newcomer.connect(timeout=10)
            if connack.reason_code != 0x88:
                pending.append(f"minority CONNACK {connack.reason_code:#x}, not 0x88")
        except TimeoutError:
            pending.append("minority CONNECT: no CONNACK within 10 s")
        refused_in = time.monotonic() - asked
        elected = 0.0
        if cut == "leader":
            # The first vote for the new leader in the majority's logs, from the cut.
            _, _, first_vote = cluster.wait_leader(newer_than=term, among=majority, timeout=15)
            elected = first_vote - cut_wall
        # The majority goes on: a new client, a new route between its nodes.
        fresh = connect_retrying(majority[0], f"{unique}maj", keepalive=60)
        made.append(fresh)
        subscribe_retrying(fresh, f"{unique}-maj/#", 1)
        await_route(fresh, f"{unique}-maj/probe", majority[1], timeout=15)
        majority_route = time.monotonic() - cut_at
        # Long enough for the minority to miss several heartbeats and stand for election.
        time.sleep(max(0.0, 3.0 - (time.monotonic() - cut_at)))
        # Past its lease (cluster.lease_ms) the minority closes its clients (MQTT 5: 0x9C Use
        # another server), so that the majority may take their client ids over.
        closed = [event.reason_code for event in old.disconnects if event.from_server]
        if closed:
            assert closed[0] == 0x9C, f"minority closed its client with {closed[0]:#x}"
        partitioned_for = time.monotonic() - cut_at

        network.heal(minority)
        healed = time.monotonic()
        # The minority's lease settles before clients go there again: held again if it ran
        # out, or past the point where it would have run out.
        deadline = time.monotonic() + 20
        while True:
            text = lone.log()
            if "quorum lost past the lease" in text:
                if text.count("cluster: lease held") > held_before:
                    break
            elif time.monotonic() - cut_at > LEASE_S + 1:
                break
            assert time.monotonic() < deadline, "the minority never held its lease again"
            time.sleep(0.05)
        new_leader, new_term, _ = cluster.wait_leader(among=cluster.nodes, timeout=20)
        agreed = time.monotonic() - healed
        lost = re.search(r"^(\S+)\s.*quorum lost past the lease", lone.log(), re.M)
        lease_lost = f"{log_time(lost.group(1)) - cut_wall:.3f}" if lost else "never"
        # Convergence: a subscriber on every node receives what is published on every node.
        subscribers = []
        for node in cluster.nodes:
            sub = connect_retrying(node, f"{unique}c{node.node_id}", keepalive=60, timeout=20)
            made.append(sub)
            subscribe_retrying(sub, f"{unique}-all/#", 1)
            subscribers.append(sub)
        for node in cluster.nodes:
            topic = f"{unique}-all/probe{node.node_id}"
            await_route(subscribers[0], topic, node, timeout=20, received=lambda t=topic: all(
                any(m.topic == t for m in list(sub.messages)) for sub in subscribers))
        converged = time.monotonic() - healed
        if accepted and not closed:
            # The route the minority accepted during the partition spread after the heal.
            await_route(old, f"{unique}-min/probe", majority[0], timeout=20)
        publishers = []
        for node in cluster.nodes:
            publisher = connect_retrying(node, f"{unique}p{node.node_id}", timeout=20)
            made.append(publisher)
            publishers.append(publisher)
        for i in range(5):
            for node, publisher in zip(cluster.nodes, publishers):
                publisher.publish(f"{unique}-all/from{node.node_id}", b"%d" % i, qos=1)
        for sub in subscribers:
            for node in cluster.nodes:
                got = sub.wait_messages(5, topic=f"{unique}-all/from{node.node_id}", timeout=10)
                assert [m.payload for m in got][:5] == [b"%d" % i for i in range(5)]
        print("CLUSTER-TIMING netns-partition", f"cut={cut}", f"minority={minority}",
              f"majority_elected_s={elected:.3f}",
              f"majority_route_s={majority_route:.3f}", f"partitioned_s={partitioned_for:.3f}",
              f"leader_agreed_after_heal_s={agreed:.3f}", f"converged_s={converged:.3f}",
              f"term={term}->{new_term}", f"leader={leader}->{new_leader}",
              f"minority_connect_s={refused_in:.3f}", f"minority_clients_closed={closed}",
              f"lease_lost_after_s={lease_lost}",
              f"pending={pending}", flush=True)
    finally:
        for made_client in made:
            made_client.close()
    if pending:
        pytest.fail("the minority did not refuse retryably: " + "; ".join(pending))
