"""MQTT over WebSockets with paho-mqtt (`transport="websockets"`), issue 11: QoS 0/1/2 both
ways, MQTT 3.1.1 and 5, a custom path, retained messages and wills, against a `ws` listener and
a `wss` one (WebSockets over TLS, with a v3 certificate made by the openssl CLI at test time).

Every test takes the `endpoint` fixture, parametrized by listener kind: the tests themselves
only pass `endpoint.client_options` to paho.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import pytest

from conftest import HOST, _start_broker, _stop_broker, free_port
from mqtt_clients import MQTTV5, PahoClient
from test_tls import SERVER_EXT, issue, make_ca

#: The listener kinds every test here runs against.
ENDPOINT_KINDS = ["ws", "wss"]
VERSIONS = {"v311": mqtt.MQTTv311, "v5": MQTTV5}
CUSTOM_PATH = "/tern/mqtt-ws"


@dataclass
class Endpoint:
    """A running tern with a WebSocket listener: `broker` (its TCP listener is `broker.port`),
    and what a paho client needs to reach the WebSocket listener."""

    broker: object
    port: int
    path: str
    #: Extra PahoClient arguments: transport, ws_path, and for wss the TLS settings.
    client_options: dict = field(default_factory=dict)


def _listener(kind: str, port: int, path: str | None, tmp_path) -> tuple[str, dict]:
    """The [[listeners]] table of `kind` and the paho options that go with it."""
    table = f'[[listeners]]\nname = "web"\nkind = "{kind}"\nbind = "{HOST}:{port}"\n'
    if path is not None:
        table += f'path = "{path}"\n'
    options = {"transport": "websockets", "ws_path": path or "/mqtt"}
    if kind == "wss":
        # A CA and a server certificate for 127.0.0.1, made once per test directory.
        if not (tmp_path / "server.pem").exists():
            make_ca(tmp_path, "ca")
            issue(tmp_path, "ca", "server", "localhost", SERVER_EXT)
        table += (f'tls = {{ cert = "{tmp_path / "server.pem"}", '
                  f'key = "{tmp_path / "server.key"}" }}\n')
        options["tls"] = {"ca_certs": str(tmp_path / "ca.pem")}
    elif kind != "ws":
        raise NotImplementedError(f"listener kind {kind}")
    return table, options


def _start(kind: str, tmp_path, path: str | None = None) -> Endpoint:
    for _ in range(3):
        port = free_port()
        table, options = _listener(kind, port, path, tmp_path)
        try:
            broker = _start_broker(tmp_path, table)
        except pytest.fail.Exception:
            continue  # the port was taken meanwhile
        return Endpoint(broker, port, path or "/mqtt", options)
    pytest.fail("could not start tern with a WebSocket listener")


@pytest.fixture(params=ENDPOINT_KINDS)
def endpoint(request, tmp_path):
    running = _start(request.param, tmp_path)
    request.node._tern_broker = running.broker
    try:
        yield running
    finally:
        _stop_broker(running.broker)


@pytest.fixture
def clients():
    made: list[PahoClient] = []
    yield made
    for client in made:
        client.close()


def ws_client(endpoint: Endpoint, clients: list, client_id: str, protocol, **kwargs):
    client = PahoClient(
        (HOST, endpoint.port), client_id, protocol, **endpoint.client_options, **kwargs)
    clients.append(client)
    return client


def tcp_client(endpoint: Endpoint, clients: list, client_id: str, protocol, **kwargs):
    client = PahoClient(endpoint.broker, client_id, protocol, **kwargs)
    clients.append(client)
    return client


@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub_over_websockets(endpoint, clients, unique, version, qos):
    """Issue 11: paho over WebSockets publishes and subscribes at each QoS, to and from another
    WebSocket client and a TCP client; payloads larger than a frame's worth arrive whole."""
    protocol = VERSIONS[version]
    sub = ws_client(endpoint, clients, f"{unique}-s", protocol)
    assert sub.connect().reason_code == 0
    assert sub.subscribe(f"{unique}/#", qos) == [qos]
    pub = ws_client(endpoint, clients, f"{unique}-p", protocol)
    pub.connect()
    tcp = tcp_client(endpoint, clients, f"{unique}-t", protocol)
    tcp.connect()
    big = bytes(range(256)) * 300  # 76.8 kB: several frames from the broker
    pub.publish(f"{unique}/ws", b"from ws", qos=qos)
    tcp.publish(f"{unique}/tcp", big, qos=qos)
    got = sub.wait_messages(2)
    assert {(m.topic, m.payload, m.qos) for m in got} == {
        (f"{unique}/ws", b"from ws", qos), (f"{unique}/tcp", big, qos)}
    sub.disconnect()


def test_custom_path(request, tmp_path, clients, unique):
    """Issue 11: the upgrade path is configurable; the default path is then refused (404)."""
    endpoint = _start("ws", tmp_path, CUSTOM_PATH)
    request.node._tern_broker = endpoint.broker
    try:
        client = ws_client(endpoint, clients, f"{unique}-c", mqtt.MQTTv311)
        assert client.connect().reason_code == 0
        client.subscribe(f"{unique}/t", 1)
        client.publish(f"{unique}/t", b"here", qos=1)
        [message] = client.wait_messages(1)
        assert message.payload == b"here"
        client.disconnect()

        options = dict(endpoint.client_options, ws_path="/mqtt")
        wrong = PahoClient((HOST, endpoint.port), f"{unique}-w", mqtt.MQTTv311, **options)
        clients.append(wrong)
        with pytest.raises(mqtt.WebsocketConnectionError):
            wrong.connect()
    finally:
        for client in clients:
            client.close()
        clients.clear()
        _stop_broker(endpoint.broker)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_retained_over_websockets(endpoint, clients, unique, version):
    """[MQTT-3.3.1-5] / [MQTT-3.3.1-6] over WebSockets: a retained message set by one client
    reaches a later subscriber with the retain flag."""
    protocol = VERSIONS[version]
    pub = ws_client(endpoint, clients, f"{unique}-p", protocol)
    pub.connect()
    pub.publish(f"{unique}/r", b"kept", qos=1, retain=True)
    late = ws_client(endpoint, clients, f"{unique}-l", protocol)
    late.connect()
    late.subscribe(f"{unique}/r", 1)
    [message] = late.wait_messages(1)
    assert (message.payload, message.qos, message.retain) == (b"kept", 1, True)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_will_on_abrupt_close_over_websockets(endpoint, clients, unique, version):
    """[MQTT-3.1.2-8] over WebSockets: the will is published when the network connection under
    the WebSocket closes without DISCONNECT (and without a close frame)."""
    protocol = VERSIONS[version]
    watcher = ws_client(endpoint, clients, f"{unique}-w", protocol)
    watcher.connect()
    watcher.subscribe(f"{unique}/will", 1)
    dying = ws_client(
        endpoint, clients, f"{unique}-d", protocol, will=(f"{unique}/will", b"gone", 1, False))
    dying.connect()
    dying.kill()
    [will] = watcher.wait_messages(1)
    assert (will.payload, will.qos) == (b"gone", 1)
