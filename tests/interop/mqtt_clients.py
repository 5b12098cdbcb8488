"""Thin, bounded-wait wrappers around the third-party clients the suite drives: paho-mqtt 2.x
(Python, MQTT 3.1, 3.1.1 and 5) and mosquitto_pub / mosquitto_sub (Debian's mosquitto-clients).
Every wait has a deadline; nothing here can block for ever."""

from __future__ import annotations

import queue
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: Default bound of every wait, in seconds.
TIMEOUT = 5.0

PROTOCOLS = {"v31": mqtt.MQTTv31, "v311": mqtt.MQTTv311}
#: MQTT 5 is not in PROTOCOLS: the 3.x tests are parametrized over that dict.
MQTTV5 = mqtt.MQTTv5
MOSQUITTO_VERSIONS = {"v31": "mqttv31", "v311": "mqttv311"}


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    #: MQTT 5 only (None otherwise): the PUBLISH properties as paho decoded them.
    properties: Any = field(default=None, compare=False)
    #: MQTT 5 only: the topic as it was on the wire (empty when a known Topic Alias replaced it;
    #: `topic` is then the one the alias stands for) and the alias, if any.
    wire_topic: str | None = field(default=None, compare=False)
    topic_alias: int | None = field(default=None, compare=False)
    #: The packet identifier (for `PahoClient.ack` with `manual_ack`).
    mid: int = field(default=0, compare=False)

    def prop(self, name: str, default=None):
        """An MQTT 5 property of the message by its paho name (`ContentType`, `UserProperty`,
        ...), or `default` when absent."""
        if self.properties is None:
            return default
        return getattr(self.properties, name, default)


@dataclass(frozen=True)
class ConnectResult:
    reason_code: int
    session_present: bool
    #: MQTT 5 only: the CONNACK properties.
    properties: Any = field(default=None, compare=False)

    def prop(self, name: str, default=None):
        if self.properties is None:
            return default
        return getattr(self.properties, name, default)


@dataclass(frozen=True)
class DisconnectEvent:
    """One on_disconnect call: whether it came from a DISCONNECT packet of the server (MQTT 5),
    its reason code, and its properties."""

    from_server: bool
    reason_code: int
    properties: Any = field(default=None, compare=False)


def v5_properties(packet_type: int, **values) -> Properties:
    """A paho `Properties` of `packet_type` (a `PacketTypes` member) with the given values;
    `UserProperty` takes a list of (name, value) pairs, kept in order."""
    properties = Properties(packet_type)
    for name, value in values.items():
        if name == "UserProperty":
            for pair in value:
                properties.UserProperty = pair
        else:
            setattr(properties, name, value)
    return properties


class PahoClient:
    """A paho-mqtt 2.x client. Network loop: paho's own thread (`loop_start`) with automatic
    reconnection off, so a connection the broker closes stays closed; or, with
    `threaded=False`, driven by hand with `pump()` (the keep-alive test stops pumping)."""

    def __init__(
        self,
        broker,
        client_id: str,
        protocol,
        *,
        clean_session: bool = True,
        keepalive: int = 30,
        will: tuple | None = None,
        threaded: bool = True,
        manual_ack: bool = False,
        session_expiry: int | None = None,
        connect_properties: dict | None = None,
        transport: str = "tcp",
        ws_path: str = "/mqtt",
        ws_headers: dict | None = None,
        tls: dict | None = None,
    ):
        """`will` is (topic, payload, qos, retain) or, for MQTT 5, (topic, payload, qos, retain,
        {will property: value}). MQTT 5: `clean_session` is sent as Clean Start;
        `session_expiry` as the Session Expiry Interval and `connect_properties` (paho property
        names, e.g. {"TopicAliasMaximum": 10}) as further CONNECT properties.
        `transport` is "tcp" or "websockets" (then the upgrade goes to `ws_path`, with
        `ws_headers` added); `tls`, if given, are the arguments of paho's `tls_set` (e.g.
        {"ca_certs": path}, with "certfile" and "keyfile" for a client certificate): MQTT over
        TLS, or over WebSockets over TLS."""
        self.host, self.port = broker
        self.client_id = client_id
        self.keepalive = keepalive
        self.threaded = threaded
        self.v5 = protocol == MQTTV5
        self.clean_start = clean_session
        self.connect_properties: Properties | None = None
        if self.v5:
            values = dict(connect_properties or {})
            if session_expiry is not None:
                values["SessionExpiryInterval"] = session_expiry
            if values:
                self.connect_properties = v5_properties(PacketTypes.CONNECT, **values)
        else:
            assert session_expiry is None and connect_properties is None, "MQTT 5 only"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            # MQTT 5 has Clean Start (an argument of connect()) instead.
            clean_session=None if self.v5 else clean_session,
            protocol=protocol,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
            transport=transport,
        )
        if transport == "websockets":
            self.client.ws_set_options(path=ws_path, headers=ws_headers)
        if tls is not None:
            self.client.tls_set(**tls)
        # paho keeps at most 20 QoS>0 messages in flight by default and queues the rest.
        self.client.max_queued_messages_set(0)
        if will is not None:
            topic, payload, qos, retain, *rest = will
            will_properties = None
            if rest and rest[0]:
                will_properties = v5_properties(PacketTypes.WILLMESSAGE, **rest[0])
            self.client.will_set(
                topic, payload, qos=qos, retain=retain, properties=will_properties)
        self._cond = threading.Condition()
        self.messages: list[Received] = []
        self.connack: ConnectResult | None = None
        self.subacks: dict[int, list[int]] = {}
        self.unsubacks: set[int] = set()
        #: MQTT 5: reason code and properties of each PUBACK / PUBCOMP, by message id (paho
        #: also reports QoS 0 publishes, with 0; PUBREC codes are in `pubrecs`).
        self.pubacks: dict[int, tuple[int, Any]] = {}
        self.disconnected = threading.Event()
        self.disconnect_reason = None
        self.disconnects: list[DisconnectEvent] = []
        #: Topic aliases the server set up on this connection (MQTT 5), alias -> topic.
        self._aliases: dict[int, str] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        #: MQTT 5: reason code of each PUBREC, by message id (see `_observe_pubrec`).
        self.pubrecs: dict[int, int] = {}
        if self.v5:
            self._observe_pubrec()
        self._loop_started = False

    def _observe_pubrec(self) -> None:
        """paho 2 ignores the reason code of PUBREC (it sends PUBREL even after a refusal at 0x80
        or above, and on_publish then reports the PUBCOMP's code): record it by wrapping paho's
        private PUBREC handler of this one client."""
        handle = self.client._handle_pubrec

        def observed():
            try:
                # Variable header: packet identifier, then (MQTT 5, when the remaining length is
                # over 2) the reason code; absent means 0x00.
                body = bytes(self.client._in_packet["packet"])
                mid = int.from_bytes(body[:2], "big")
                with self._cond:
                    self.pubrecs[mid] = body[2] if len(body) > 2 else 0
                    self._cond.notify_all()
            except Exception:  # a paho change: leave it to paho
                pass
            return handle()

        self.client._handle_pubrec = observed

    # --- callbacks (paho's thread) ----------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.connack = ConnectResult(
                int(reason_code.value), bool(flags.session_present),
                properties if self.v5 else None)
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg):
        with self._cond:
            if not self.v5:
                self.messages.append(Received(
                    msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup),
                    mid=msg.mid))
                self._cond.notify_all()
                return
            # paho 2 does not resolve the Topic Aliases of the server: it hands over the topic
            # as sent (empty once the alias is known). Resolved here, in the order paho delivers
            # messages — which for QoS 2 is at PUBREL, so tests that check outbound aliases use
            # QoS 0 and 1 only.
            wire_topic = msg.topic
            alias = getattr(msg.properties, "TopicAlias", None)
            topic = wire_topic
            if alias is not None:
                if wire_topic:
                    self._aliases[alias] = wire_topic
                else:
                    topic = self._aliases.get(alias, "")
            self.messages.append(Received(
                topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup),
                properties=msg.properties, wire_topic=wire_topic, topic_alias=alias,
                mid=msg.mid))
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._cond:
            self.pubacks[mid] = (int(reason_code.value), properties)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self.subacks[mid] = [int(code.value) for code in reason_codes]
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self.unsubacks.add(mid)
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.disconnect_reason = reason_code
            self.disconnects.append(DisconnectEvent(
                bool(flags.is_disconnect_packet_from_server), int(reason_code.value),
                properties))
            self.disconnected.set()
            self._cond.notify_all()

    # --- waiting ----------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                if not self.threaded:
                    self._cond.release()
                    try:
                        if self.client.loop(0.02) != mqtt.MQTT_ERR_SUCCESS:
                            time.sleep(0.01)  # not connected: loop() returns at once
                    finally:
                        self._cond.acquire()
                    if time.monotonic() >= deadline:
                        break
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.1))
            if not predicate():
                raise TimeoutError(
                    f"{self.client_id}: timed out after {timeout} s waiting for {what}")

    def pump(self, duration: float) -> None:
        """Runs the network loop by hand for `duration` seconds (non-threaded clients)."""
        assert not self.threaded
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            if self.client.loop(min(0.02, max(0.0, deadline - time.monotonic()))):
                time.sleep(0.01)  # not connected: loop() returns at once

    # --- operations -------------------------------------------------------------------------

    def connect(self, timeout: float = TIMEOUT) -> ConnectResult:
        """Connects and waits for CONNACK."""
        with self._cond:
            self.connack = None
            self._aliases.clear()  # aliases belong to one connection [MQTT-3.3.2-7]
        self.disconnected.clear()
        if self.v5:
            self.client.connect(
                self.host, self.port, keepalive=self.keepalive,
                clean_start=bool(self.clean_start), properties=self.connect_properties)
        else:
            self.client.connect(self.host, self.port, keepalive=self.keepalive)
        if self.threaded:
            self.client.loop_start()
            self._loop_started = True
        self._wait(lambda: self.connack is not None, timeout, "CONNACK")
        return self.connack

    def subscribe(
        self, topics, qos: int = 0, timeout: float = TIMEOUT, *, options=None,
        subscription_id: int | None = None,
    ) -> list[int]:
        """Subscribes to one filter (with `qos`, or MQTT 5 `options`, a SubscribeOptions) or a
        list of (filter, qos or SubscribeOptions); MQTT 5: with `subscription_id` as the
        Subscription Identifier. Waits for SUBACK and returns its return / reason codes."""
        properties = None
        if subscription_id is not None:
            properties = v5_properties(
                PacketTypes.SUBSCRIBE, SubscriptionIdentifier=subscription_id)
        if isinstance(topics, str):
            if options is not None:
                result, mid = self.client.subscribe(
                    topics, options=options, properties=properties)
            else:
                result, mid = self.client.subscribe(topics, qos, properties=properties)
        else:
            result, mid = self.client.subscribe(list(topics), properties=properties)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        return self.wait_suback(mid, timeout)

    def wait_suback(self, mid: int, timeout: float = TIMEOUT) -> list[int]:
        """Waits for the SUBACK of a SUBSCRIBE sent with paho's own `subscribe` (message id
        `mid`, not waited for there); returns its return / reason codes."""
        self._wait(lambda: mid in self.subacks, timeout, f"SUBACK {mid}")
        return self.subacks[mid]

    def unsubscribe(self, topic: str, timeout: float = TIMEOUT) -> None:
        """Unsubscribes from one filter and waits for UNSUBACK."""
        result, mid = self.client.unsubscribe(topic)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe failed locally: {result}"
        self._wait(lambda: mid in self.unsubacks, timeout, f"UNSUBACK {mid}")

    def publish(
        self, topic: str, payload=b"", qos: int = 0, retain: bool = False, wait: bool = True,
        timeout: float = TIMEOUT, properties: dict | None = None,
    ):
        """Publishes; with `wait`, returns once the flow is complete (PUBACK / PUBCOMP received,
        or for QoS 0 the packet written). MQTT 5: `properties` maps paho property names to
        values (`UserProperty`: a list of pairs)."""
        props = None
        if properties:
            props = v5_properties(PacketTypes.PUBLISH, **properties)
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        if wait:
            self.wait_published(info, timeout)
        return info

    def wait_published(self, info, timeout: float = TIMEOUT) -> None:
        if self.threaded:
            info.wait_for_publish(timeout)
        else:
            self._wait(info.is_published, timeout, f"publish mid {info.mid}")
        if not info.is_published():
            raise TimeoutError(
                f"{self.client_id}: publish mid {info.mid} not completed in {timeout} s")

    def puback_reason(self, info) -> int:
        """MQTT 5: the reason code the server acknowledged publish `info` with (wait first)."""
        with self._cond:
            return self.pubacks[info.mid][0]

    def ack(self, message: Received) -> None:
        """Acknowledges `message` (clients made with `manual_ack`)."""
        self.client.ack(message.mid, message.qos)

    def wait_server_disconnect(self, timeout: float = TIMEOUT) -> DisconnectEvent:
        """MQTT 5: waits for a DISCONNECT from the server; returns it."""

        def from_server():
            return [event for event in self.disconnects if event.from_server]

        self._wait(lambda: bool(from_server()), timeout, "a DISCONNECT from the server")
        with self._cond:
            return from_server()[0]

    def wait_messages(
        self, count: int, timeout: float = TIMEOUT, topic: str | None = None
    ) -> list[Received]:
        """Waits until `count` messages (on `topic`, if given) have arrived; returns them."""
        self._wait(
            lambda: len(self._on(topic)) >= count,
            timeout,
            f"{count} message(s){' on ' + topic if topic else ''} (have {len(self._on(topic))})",
        )
        with self._cond:
            return self._on(topic)

    def wait_distinct(
        self, count: int, timeout: float = TIMEOUT, topic: str | None = None
    ) -> list[Received]:
        """Waits until `count` different payloads (on `topic`, if given) have arrived, for a
        test that allows second copies; returns every message (on `topic`) received."""

        def distinct() -> int:
            return len({m.payload for m in self._on(topic)})

        self._wait(
            lambda: distinct() >= count,
            timeout,
            f"{count} different payload(s){' on ' + topic if topic else ''} (have {distinct()})",
        )
        with self._cond:
            return self._on(topic)

    def _on(self, topic: str | None) -> list[Received]:
        """The messages received (on `topic`, if given)."""
        return [m for m in self.messages if topic is None or m.topic == topic]

    def wait_disconnected(self, timeout: float = TIMEOUT) -> None:
        self._wait(self.disconnected.is_set, timeout, "the connection to end")

    def wait_marker(self, topic: str, payload: bytes, timeout: float = TIMEOUT) -> list[Received]:
        """Waits for the message (`topic`, `payload`); returns everything received before it.
        The broker queues messages for a session in order, so a marker published after an event
        and received proves a message the event would have caused is not coming.

        Publish markers at QoS 2: paho (like libmosquitto) hands an incoming QoS 2 message to
        the application only when PUBREL arrives, so a QoS 0/1 marker can overtake an earlier
        QoS 2 message in `messages` although the broker sent them in order. A marker delivered
        at QoS 2 comes last; one delivered at a lower QoS means nothing was QoS 2."""
        self._wait(
            lambda: any(m.topic == topic and m.payload == payload for m in self.messages),
            timeout,
            f"marker {payload!r} on {topic}",
        )
        with self._cond:
            index = next(
                i for i, m in enumerate(self.messages) if m.topic == topic and m.payload == payload
            )
            return self.messages[:index]

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()

    def stop_loop(self) -> None:
        """Stops the network thread, leaving the connection open and silent."""
        if self._loop_started:
            self.client.loop_stop()
            self._loop_started = False

    def kill(self) -> None:
        """Ends the TCP connection abruptly, without DISCONNECT (as a crashed client would)."""
        sock = self.client.socket()
        assert sock is not None, "not connected"
        # Over WebSockets paho's socket is a wrapper around the real one.
        sock = getattr(sock, "_socket", sock)
        try:
            # shutdown() sends FIN at once, even while paho's thread is blocked in select().
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        self.stop_loop()

    def disconnect(
        self, timeout: float = TIMEOUT, reason_code: int | None = None,
        properties: dict | None = None,
    ) -> None:
        """Sends DISCONNECT (MQTT 5: with `reason_code` and `properties`, e.g.
        {"SessionExpiryInterval": 0}) and waits for the connection to close."""
        if reason_code is None and not properties:
            self.client.disconnect()
        else:
            self.client.disconnect(
                reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code or 0),
                properties=v5_properties(PacketTypes.DISCONNECT, **(properties or {})),
            )
        if not self.threaded:
            self.pump(0.05)
            self.disconnected.set()
        self.wait_disconnected(timeout)
        self.stop_loop()

    def close(self) -> None:
        """Best-effort cleanup at teardown."""
        try:
            if not self.disconnected.is_set() and self.client.is_connected():
                self.client.disconnect()
        except Exception:
            pass
        try:
            self.stop_loop()
        except Exception:
            pass
        try:
            sock = self.client.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass


# --- mosquitto_pub / mosquitto_sub ----------------------------------------------------------

MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "mosquitto_pub"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "mosquitto_sub"
#: mosquitto_sub output: one line per message. %x is the payload in hex, so binary is exact.
SUB_FORMAT = r"%q\t%r\t%t\t%x"


def mosquitto_pub(
    broker, *args: str, version: str = "mqttv311", input: bytes | None = None,
    timeout: float = 10.0,
):
    """Runs mosquitto_pub against `broker` (with `input` on its stdin) and asserts it
    succeeded."""
    host, port = broker
    cmd = [MOSQUITTO_PUB, "-h", host, "-p", str(port), "-V", version, *args]
    result = subprocess.run(
        cmd, capture_output=True, timeout=timeout, input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"{cmd} exited {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    )
    return result


@dataclass(frozen=True)
class SubLine:
    qos: int
    retain: bool
    topic: str
    payload: bytes


def parse_sub_line(line: bytes) -> SubLine:
    qos, retain, topic, payload_hex = line.rstrip(b"\n").split(b"\t")
    return SubLine(int(qos), retain == b"1", topic.decode(), bytes.fromhex(payload_hex.decode()))


class MosquittoSub:
    """A mosquitto_sub process whose output lines are parsed into `SubLine`s by a reader
    thread. With `ready_topic`, that filter is added to the subscription and `wait_ready()`
    waits for the retained message the caller put there: once it has arrived, the broker has
    handled the whole SUBSCRIBE."""

    def __init__(
        self,
        broker,
        topics: Sequence[str],
        *,
        version: str = "mqttv311",
        qos: int = 0,
        count: int | None = None,
        client_id: str | None = None,
        ready_topic: str | None = None,
        extra: Iterable[str] = (),
        wait_seconds: int = 15,
    ):
        host, port = broker
        self.ready_topic = ready_topic
        all_topics = list(topics) + ([ready_topic] if ready_topic else [])
        cmd = [MOSQUITTO_SUB, "-h", host, "-p", str(port), "-V", version, "-q", str(qos),
               "-F", SUB_FORMAT, "-W", str(wait_seconds)]
        if client_id:
            cmd += ["-i", client_id]
        if count is not None:
            cmd += ["-C", str(count)]
        for topic in all_topics:
            cmd += ["-t", topic]
        cmd += list(extra)
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self._lines: queue.Queue = queue.Queue()
        self.lines: list[SubLine] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _take(self, deadline: float) -> bool:
        """Moves one line into `lines`; False at end of output or deadline."""
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        if line is None:
            self._lines.put(None)
            return False
        if line.startswith(b"Timed out"):
            return True
        self.lines.append(parse_sub_line(line))
        return True

    def wait_for(self, predicate: Callable[[list[SubLine]], bool], timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not predicate(self.lines):
            if not self._take(deadline):
                raise TimeoutError(
                    f"mosquitto_sub: no {what} within {timeout} s; got {self.lines!r}; "
                    f"exit {self.proc.poll()}; stderr {self._stderr()!r}"
                )
        return self.lines

    def wait_ready(self, timeout: float = TIMEOUT) -> None:
        assert self.ready_topic
        self.wait_for(
            lambda ls: any(l.topic == self.ready_topic for l in ls), timeout, "ready message")

    def data(self) -> list[SubLine]:
        """Lines other than the ready message."""
        return [l for l in self.lines if l.topic != self.ready_topic]

    def wait_data(self, count: int, timeout: float = TIMEOUT) -> list[SubLine]:
        self.wait_for(lambda ls: len(self.data()) >= count, timeout, f"{count} message(s)")
        return self.data()

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        while self._take(time.monotonic()):
            pass
        return code

    def _stderr(self) -> bytes:
        if self.proc.poll() is None:
            return b"(running)"
        try:
            return self.proc.stderr.read() or b""
        except Exception:
            return b""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)

    def close(self) -> None:
        try:
            self.kill()
        except Exception:
            pass
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except Exception:
                pass
