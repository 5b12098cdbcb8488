"""`tern sub` and `tern pub` against Debian's mosquitto_sub and mosquitto_pub (issue 13: "a user
who swaps mosquitto_sub for tern sub in a script gets the same output").

Each parity test runs the mosquitto tool and the tern tool with the same arguments against the
same broker, for the same messages, and compares stdout byte for byte, the exit status, and
(where mosquitto prints one) the error message on stderr.

Synchronisation without sleeps: each subscriber also subscribes to a topic holding a retained
"ready" message; the first bytes on its stdout prove its SUBSCRIBE was handled, and only then
are the messages published.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import _start_broker, _stop_broker, tern_bin
from mqtt_clients import MOSQUITTO_PUB, MOSQUITTO_SUB, mosquitto_pub

WAIT = 10.0


class Tool:
    """A subscriber process whose stdout is collected by a thread."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.out = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while True:
            chunk = self.proc.stdout.read1(4096)
            if not chunk:
                return
            with self._lock:
                self.out.extend(chunk)

    def wait_output(self, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.out:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.005)
        raise AssertionError(f"{self.argv}: no output (exit {self.proc.poll()})")

    def finish(self, timeout: float = WAIT) -> tuple[int, bytes, bytes]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.argv} did not exit; stdout so far: {bytes(self.out)!r}")
        self._reader.join(timeout=2)
        return code, bytes(self.out), self.proc.stderr.read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def tools():
    made: list[Tool] = []

    def make(argv):
        tool = Tool(argv)
        made.append(tool)
        return tool

    yield make
    for tool in made:
        tool.close()


def sub_argv(which: str, broker, args: list[str]) -> list[str]:
    host, port = broker
    base = [MOSQUITTO_SUB] if which == "mosquitto" else [str(tern_bin()), "sub"]
    return [*base, "-h", host, "-p", str(port), *args]


def pub_argv(which: str, broker, args: list[str]) -> list[str]:
    host, port = broker
    base = [MOSQUITTO_PUB] if which == "mosquitto" else [str(tern_bin()), "pub"]
    return [*base, "-h", host, "-p", str(port), *args]


V5_PROPS = [
    "-D", "publish", "user-property", "k1", "v1",
    "-D", "publish", "user-property", "k2", "v2",
    "-D", "publish", "content-type", "text/plain",
    "-D", "publish", "response-topic", "reply/here",
    "-D", "publish", "correlation-data", "corr",
    "-D", "publish", "payload-format-indicator", "1",
]


def publish_set(broker, prefix: str, version: str, tmp_path: Path) -> int:
    """Publishes the test messages (mosquitto_pub); returns how many."""
    binary = tmp_path / "binary.bin"
    binary.write_bytes(bytes(range(256)))
    v5 = V5_PROPS if version == "mqttv5" else []
    mosquitto_pub(broker, "-t", f"{prefix}/a", "-m", "hello world", version=version)
    mosquitto_pub(broker, "-t", f"{prefix}/b", "-n", "-q", "1", version=version)
    mosquitto_pub(broker, "-t", f"{prefix}/c", "-f", str(binary), "-q", "2", version=version)
    mosquitto_pub(broker, "-t", f"{prefix}/d/e", "-m", "kept", "-r", "-q", "1", version=version)
    mosquitto_pub(broker, "-t", f"{prefix}/f", "-m", "ünïcode \"q\" \\", *v5, version=version)
    return 5


OUTPUT_CASES = [
    [],
    ["-v"],
    ["-N"],
    ["-v", "-N"],
    ["-q", "2", "-F", r"%t|%q|%r|%l|%x|%X|%5.2t|%-8t|%08l|%p|\t|%%"],
    ["-q", "1", "-F", r"%-10.3t|%010l|%10x|%-6p|\\|@@|%12X|%-4q"],
    ["-F", "%j"],
    ["-V", "mqttv5", "-F", "%t %P|%C|%R|%D|%F|%A|%S"],
    ["-V", "mqttv5", "-D", "subscribe", "subscription-identifier", "9", "-F", "%j|%S"],
    ["-V", "mqttv5", "-v", "-q", "2"],
    ["-V", "mqttv31", "-v"],
]

TST = re.compile(rb'"tst":"[^"]*"')


@pytest.mark.parametrize("args", OUTPUT_CASES, ids=lambda a: " ".join(a) or "default")
def test_sub_output_same_as_mosquitto_sub__issue13(broker, tools, unique, tmp_path, args):
    """The same messages (text, empty, binary, retained flag, UTF-8, MQTT 5 properties) print
    the same bytes from tern sub as from mosquitto_sub, for each output option; both exit 0
    after -C messages."""
    version = "mqttv5" if "mqttv5" in args else ("mqttv31" if "mqttv31" in args else "mqttv311")
    ready = f"{unique}/ready"
    mosquitto_pub(broker, "-t", ready, "-m", "ready", "-r", version=version)
    count = 1 + 5
    subs = {
        which: tools(sub_argv(which, broker, [
            "-t", f"{unique}/data/#", "-t", ready, "-C", str(count), "-i", f"{unique}{which[0]}",
            *args,
        ]))
        for which in ("mosquitto", "tern")
    }
    for sub in subs.values():
        sub.wait_output()
    publish_set(broker, f"{unique}/data", version, tmp_path)
    results = {which: sub.finish() for which, sub in subs.items()}
    m_code, m_out, m_err = results["mosquitto"]
    t_code, t_out, t_err = results["tern"]
    if "%j" in " ".join(args):
        m_out, t_out = TST.sub(b'"tst":""', m_out), TST.sub(b'"tst":""', t_out)
    assert m_code == 0, m_err
    assert t_out == m_out, f"tern:\n{t_out!r}\nmosquitto:\n{m_out!r}\ntern stderr: {t_err!r}"
    assert t_code == m_code


@pytest.mark.parametrize("which", ["mosquitto", "tern"])
def test_pub_payload_modes_same_as_mosquitto_pub__issue13(broker, tools, unique, tmp_path, which):
    """-m, -f, -s, -l, -n, -r and -q of tern pub put the same messages on the wire as
    mosquitto_pub's: a mosquitto_sub sees the same lines (QoS, retain, topic, payload in hex)."""
    ready = f"{unique}/ready"
    mosquitto_pub(broker, "-t", ready, "-m", "ready", "-r")
    file = tmp_path / "payload.bin"
    file.write_bytes(b"\x00\x01from a file\xff")
    cases = [
        (["-m", "plain"], None),
        (["-m", "qos1", "-q", "1"], None),
        (["-m", "qos2", "-q", "2", "-V", "mqttv5"], None),
        (["-f", str(file)], None),
        (["-s"], b"all of\nstdin\n"),
        (["-l", "-q", "1"], b"line one\n\nline three\r\nlast"),
        (["-n"], None),
        (["-m", "-dash"], None),
    ]
    expected = 1 + 3 + 1 + 1 + 4 + 1 + 1
    observers = {
        name: tools(sub_argv("mosquitto", broker, [
            "-t", f"{unique}/{name}/#", "-t", ready, "-C", str(expected), "-F", "%q %r %t %x",
            "-q", "2",
        ]))
        for name in ("m", "t")
    }
    for sub in observers.values():
        sub.wait_output()
    for name, tool in (("m", "mosquitto"), ("t", "tern")):
        for args, stdin in cases:
            run = subprocess.run(
                pub_argv(tool, broker, ["-t", f"{unique}/{name}/x", *args]),
                input=stdin, capture_output=True, timeout=WAIT,
                stdin=None if stdin is not None else subprocess.DEVNULL,
            )
            assert run.returncode == 0, (tool, args, run.stderr)
    outputs = {name: sub.finish() for name, sub in observers.items()}
    m_lines = outputs["m"][1].replace(f"{unique}/m/".encode(), b"T/").splitlines()
    t_lines = outputs["t"][1].replace(f"{unique}/t/".encode(), b"T/").splitlines()
    assert t_lines == m_lines
    assert len(m_lines) == expected


def run_both(kind: str, broker, args: list[str], stdin: bytes | None = None):
    argv = sub_argv if kind == "sub" else pub_argv
    results = {}
    for which in ("mosquitto", "tern"):
        run = subprocess.run(
            argv(which, broker, args), input=stdin, capture_output=True, timeout=WAIT,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
        results[which] = run
    return results["mosquitto"], results["tern"]


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_exit_options_same_as_mosquitto_sub__issue13(broker, unique, version):
    """-E (exit at SUBACK), --retained-only (exit at the first fresh message), -R (skip
    retained), -T (filter out), -W (exit 27, "Timed out") behave as mosquitto_sub's."""
    for n in range(3):
        mosquitto_pub(broker, "-t", f"{unique}/r/{n}", "-m", f"retained {n}", "-r", version=version)
    m, t = run_both("sub", broker, ["-t", f"{unique}/#", "-E", "-V", version])
    assert (t.returncode, t.stdout) == (m.returncode, m.stdout) == (0, b"")
    # -W with the retained messages only: printed, then "Timed out" and 27 (2 s: the retained
    # messages must arrive before it, on a loaded machine too).
    m, t = run_both("sub", broker, ["-t", f"{unique}/#", "-W", "2", "-v", "-V", version,
                                    "-T", f"{unique}/r/1"])
    assert m.returncode == 27 and m.stderr.strip() == b"Timed out"
    assert (t.returncode, t.stderr, sorted(t.stdout.splitlines())) == (
        m.returncode, m.stderr, sorted(m.stdout.splitlines()))
    # -R: retained messages are not printed, so -W ends it with nothing printed.
    m, t = run_both("sub", broker, ["-t", f"{unique}/#", "-W", "1", "-R", "-V", version])
    assert (t.returncode, t.stdout) == (m.returncode, m.stdout) == (27, b"")


@pytest.fixture
def auth_broker(request, tmp_path):
    """A broker that wants a password (one user, made by `tern passwd`)."""
    subprocess.run([str(tern_bin()), "passwd", "-b", "-c", str(tmp_path / "passwd"), "alice",
                    "alice-pw"], check=True, timeout=WAIT)
    running = _start_broker(tmp_path, '[auth]\npassword_file = "passwd"\n')
    request.node._tern_broker = running
    try:
        yield running
    finally:
        _stop_broker(running)


@pytest.mark.parametrize("version", ["mqttv31", "mqttv311", "mqttv5"])
def test_refused_connection_messages_and_status__issue13(auth_broker, version):
    """A refused CONNECT prints mosquitto's "Connection error: ..." line(s) on stderr and exits
    with the CONNACK code (3.x) or the reason code (5), from tern sub and tern pub alike."""
    for kind, args in (("sub", ["-t", "a"]), ("pub", ["-t", "a", "-m", "x"])):
        m, t = run_both(kind, auth_broker, [*args, "-V", version, "-u", "nobody", "-P", "x"])
        assert m.returncode != 0
        assert (t.returncode, t.stderr, t.stdout) == (m.returncode, m.stderr, m.stdout), kind


def test_unreachable_and_usage_errors__issue13(broker):
    """No broker on the port: "Error: Connection refused", status 1; no topic: status 1."""
    closed = ("127.0.0.1", 1)
    for kind, args in (("sub", ["-t", "a"]), ("pub", ["-t", "a", "-m", "x"])):
        m, t = run_both(kind, closed, args)
        assert (t.returncode, t.stderr) == (m.returncode, m.stderr) == (1, b"Error: Connection refused\n")
    m, t = run_both("sub", broker, [])
    assert t.returncode == m.returncode == 1
    assert m.stderr.splitlines()[0] == t.stderr.splitlines()[0]
    # Two payload options, or an unknown option: a usage error, status 1 for both.
    for kind, args in (("pub", ["-t", "a", "-m", "x", "-n"]), ("sub", ["-t", "a", "--bogus"])):
        m, t = run_both(kind, broker, args)
        assert t.returncode == m.returncode == 1, (kind, t.stderr)


def test_url_and_will__issue13(broker, tools, unique):
    """-L mqtt://host:port/topic subscribes and publishes like -h/-p/-t; the --will-* of a tern
    sub that dies is published by the broker to a mosquitto_sub."""
    host, port = broker
    watcher = tools(sub_argv("mosquitto", broker, [
        "-t", f"{unique}/will", "-t", f"{unique}/url", "-v", "-C", "2"]))
    mosquitto_pub(broker, "-t", f"{unique}/url", "-m", "ready", "-r")
    watcher.wait_output()
    url_sub = tools([str(tern_bin()), "sub", "-L", f"mqtt://{host}:{port}/{unique}/url", "-C", "1"])
    url_sub.wait_output()
    code, out, _ = url_sub.finish()
    assert (code, out) == (0, b"ready\n")
    dying = tools([str(tern_bin()), "sub", "-h", host, "-p", str(port), "-t", f"{unique}/x",
                   "--will-topic", f"{unique}/will", "--will-payload", "gone", "-d"])
    dying.wait_output()  # the debug lines: connected
    dying.proc.kill()
    code, out, _ = watcher.finish()
    assert out == f"{unique}/url ready\n{unique}/will gone\n".encode()


def test_remove_retained_clears_what_it_prints__issue13(broker, unique):
    """--remove-retained: each retained message received is cleared (an empty retained
    publish), so a later mosquitto_sub finds none."""
    for n in range(2):
        mosquitto_pub(broker, "-t", f"{unique}/r/{n}", "-m", f"old {n}", "-r")
    host, port = broker
    run = subprocess.run(
        [str(tern_bin()), "sub", "-h", host, "-p", str(port), "-t", f"{unique}/r/#",
         "--remove-retained", "-C", "2", "-v"],
        capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == [f"{unique}/r/0 old 0".encode(),
                                                f"{unique}/r/1 old 1".encode()]
    after = subprocess.run(
        [MOSQUITTO_SUB, "-h", host, "-p", str(port), "-t", f"{unique}/r/#", "-W", "1"],
        capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL,
    )
    assert (after.returncode, after.stdout) == (27, b"")


from test_tls import pki, tls_broker  # noqa: E402,F401 (fixtures: a CA and a TLS broker)


def test_tls_cafile_and_client_certificate__issue13(tls_broker, pki, tools):  # noqa: F811
    """--cafile (the broker's certificate checked against its CA) and --cert/--key (mutual TLS)
    of tern pub and tern sub; without a client certificate the mutual TLS listener refuses."""
    broker, ports = tls_broker
    ca = ["--cafile", str(pki / "ca1.pem")]
    cert = ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
    for name, extra in (("tls", ca), ("mtls", ca + cert)):
        where = ("127.0.0.1", ports[name])
        ready = subprocess.run(pub_argv("tern", where, ["-t", f"{name}/ready", "-m", "ready",
                                                        "-r", *extra]),
                               capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL)
        assert ready.returncode == 0, ready.stderr
        sub = tools(sub_argv("tern", where, ["-t", f"{name}/#", "-C", "2", "-v", *extra]))
        sub.wait_output()
        sent = subprocess.run(pub_argv("tern", where, ["-t", f"{name}/x", "-m", f"over {name}",
                                                       "-q", "1", *extra]),
                              capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL)
        assert sent.returncode == 0, sent.stderr
        code, out, err = sub.finish()
        assert (code, out) == (0, f"{name}/ready ready\n{name}/x over {name}\n".encode()), err
    refused = subprocess.run(pub_argv("tern", ("127.0.0.1", ports["mtls"]), ["-t", "x", "-m", "x",
                                                                             *ca]),
                             capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL)
    assert refused.returncode != 0


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_persistent_session_c_and_x__issue13(broker, unique, version):
    """-c (MQTT 5: with -x) keeps the session: a QoS 1 message published while the subscriber
    is away is delivered when it comes back, to tern sub as to mosquitto_sub."""
    outputs = {}
    for which in ("mosquitto", "tern"):
        cid = f"{unique}{which[0]}"
        topic = f"{unique}/{which}/q"
        session = ["-c", "-i", cid, "-q", "1", "-V", version]
        if version == "mqttv5":
            session += ["-x", "60"]
        first = subprocess.run(sub_argv(which, broker, ["-t", topic, "-E", *session]),
                               capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL)
        assert first.returncode == 0, first.stderr
        mosquitto_pub(broker, "-t", topic, "-m", "while away", "-q", "1", version=version)
        back = subprocess.run(sub_argv(which, broker, ["-t", topic, "-C", "1", "-v", *session]),
                              capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL)
        outputs[which] = (back.returncode, back.stdout.replace(which.encode(), b"X"))
    assert outputs["tern"] == outputs["mosquitto"] == (0, f"{unique}/X/q while away\n".encode())


@pytest.mark.parametrize("fmt", [["-v"], ["-F", "%t|%p|%q"]], ids=["v", "F"])
def test_sub_topic_aliases_same_output_as_mosquitto_sub__issue13(broker, tools, unique, fmt):
    """Review 13 MUST #2, MQTT 5 3.3.2.3.4 and MQTT-3.3.2-12: with `-D connect
    topic-alias-maximum 10`, Tern (default outbound_topic_aliases = 64) sends each topic once
    and then its alias alone with an empty topic; tern sub resolves it and prints what
    mosquitto_sub prints for the same messages. mosquitto_sub runs without the option: the
    libmosquitto here (2.0.11) does not resolve inbound aliases (it ends with "A network
    protocol error occurred" on the first alias-only PUBLISH), so it gets whole topics."""
    ready = f"{unique}/ready"
    mosquitto_pub(broker, "-t", ready, "-m", "ready", "-r", version="mqttv5")
    topics = [f"{unique}/data/a", f"{unique}/data/b/long/topic", f"{unique}/data/a"]
    count = 1 + 2 * len(topics)
    aliases = {"tern": ["-D", "connect", "topic-alias-maximum", "10"], "mosquitto": []}
    subs = {
        which: tools(sub_argv(which, broker, [
            "-V", "mqttv5", *aliases[which],
            "-t", f"{unique}/data/#", "-t", ready, "-C", str(count), "-i", f"{unique}{which[0]}",
            *fmt,
        ]))
        for which in ("mosquitto", "tern")
    }
    for sub in subs.values():
        sub.wait_output()
    for round_ in range(2):
        for n, topic in enumerate(topics):
            mosquitto_pub(broker, "-t", topic, "-m", f"m{round_}{n}", "-q", "1", version="mqttv5")
    results = {which: sub.finish() for which, sub in subs.items()}
    m_code, m_out, m_err = results["mosquitto"]
    t_code, t_out, t_err = results["tern"]
    assert m_code == 0, m_err
    assert m_out.count(f"{unique}/data/a".encode()) == 4, m_out
    assert t_out == m_out, f"tern:\n{t_out!r}\nmosquitto:\n{m_out!r}\ntern stderr: {t_err!r}"
    assert t_code == m_code
