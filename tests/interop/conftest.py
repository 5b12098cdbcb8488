"""Fixtures of the interop suite: a fresh `tern serve` per test on a free loopback port.

The broker binary is $TERN_BIN (default: target/debug/tern under the repository root). Each test
gets its own broker process, so retained messages and sessions never leak between tests. At
teardown the broker gets SIGTERM and must exit with code 0 within 5 s (the shutdown rule). The
broker's log (stderr, at debug level) goes to a temporary file and is attached to the report of a
failing test.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from mqtt_clients import MosquittoSub, PahoClient  # noqa: E402

HOST = "127.0.0.1"
#: Time the broker has to start listening.
START_TIMEOUT = 10.0
#: The shutdown rule: exit 0 within this many seconds of SIGTERM.
SHUTDOWN_TIMEOUT = 5.0
#: Hard bound of one test (setup and call): a stuck test fails instead of hanging the run.
TEST_TIMEOUT = 30


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tern_config(toml): TOML configuration file contents for the broker of this test",
    )
    config.addinivalue_line(
        "markers",
        "test_timeout(seconds): a longer bound than TEST_TIMEOUT for this test (the watchdog)",
    )


def tern_bin() -> Path:
    configured = os.environ.get("TERN_BIN")
    path = Path(configured) if configured else REPO_ROOT / "target" / "debug" / "tern"
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on right now (it may be taken before we bind it: the
    caller retries). Never the same port twice in one run: the kernel hands a just-closed
    ephemeral port out again, so a test asking for two ports (a listener in the configuration
    and the broker's `--listen`) could otherwise be given one port for both."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no loopback port left that this run has not handed out already")


class Broker(tuple):
    """A running `tern serve`. Unpacks as (host, port); also gives the process and its log."""

    def __new__(cls, host: str, port: int, proc: subprocess.Popen, log_path: Path):
        self = super().__new__(cls, (host, port))
        self.host = host
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.stopped = False
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = SHUTDOWN_TIMEOUT):
        """Sends `sig` and waits up to `timeout` s for the exit; returns (exit code or None if
        still running, seconds waited). The fixture's teardown then only checks it is gone."""
        self.stopped = True
        self.proc.send_signal(sig)
        started = time.monotonic()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def count_log(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 5.0) -> bool:
        """Waits until `pattern` (a regex) occurs `count` times in the log; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.count_log(pattern) >= count:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def wait_client_gone(self, client_id: str, count: int = 1, timeout: float = 5.0) -> bool:
        """Waits until the broker has finished `count` connections of `client_id` (it logs
        "client disconnected" after the will, if any, has been published). This is a
        synchronisation point for negative checks; callers still pass if the log line never
        comes, they have then merely waited `timeout`."""
        pattern = r"client disconnected client_id=\"" + re.escape(client_id) + r"\" "
        return self.wait_for_log(pattern, count, timeout)


def _start_broker(tmp_path: Path, config_text: str | None) -> Broker:
    binary = tern_bin()
    if not binary.is_file():
        pytest.fail(
            f"tern binary not found at {binary}; build it with `cargo build -j2 -p tern` "
            "or set TERN_BIN",
            pytrace=False,
        )
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    env["NO_COLOR"] = "1"
    extra: list[str] = []
    if config_text is not None:
        config_path = tmp_path / "tern.toml"
        config_path.write_text(config_text)
        extra = ["--config", str(config_path)]

    failures = []
    for attempt in range(5):
        port = free_port()
        log_path = tmp_path / f"tern-{attempt}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [str(binary), "serve", "--listen", f"{HOST}:{port}", "--log-level", "debug",
                 *extra],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=env,
                cwd=tmp_path,
            )
        broker = Broker(HOST, port, proc, log_path)
        deadline = time.monotonic() + START_TIMEOUT
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            # Bound by us (not by whoever may have raced us to the port) once it says so.
            if "listening for MQTT over TCP" in broker.log():
                try:
                    with socket.create_connection((HOST, port), timeout=0.5):
                        ready = True
                        break
                except OSError:
                    pass
            time.sleep(0.01)
        if ready and proc.poll() is None:
            return broker
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
            pytest.fail(
                f"tern did not accept connections on port {port} within {START_TIMEOUT} s\n"
                + broker.log(),
                pytrace=False,
            )
        text = broker.log()
        failures.append(f"attempt {attempt} (port {port}): exit {proc.returncode}\n{text}")
        if "cannot listen" not in text:
            break  # not a port race: retrying would not help
    pytest.fail("tern failed to start:\n" + "\n".join(failures), pytrace=False)


def _stop_broker(broker: Broker) -> None:
    proc = broker.proc
    if broker.stopped:  # the test stopped it and checked the outcome itself
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        return
    early = proc.poll()
    if early is not None:
        pytest.fail(f"tern exited during the test with code {early}", pytrace=False)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = proc.wait(timeout=SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        pytest.fail(
            f"tern did not exit within {SHUTDOWN_TIMEOUT} s of SIGTERM (killed)", pytrace=False
        )
    elapsed = time.monotonic() - started
    assert code == 0, f"tern exited with code {code} after SIGTERM ({elapsed:.2f} s)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    broker = getattr(item, "_tern_broker", None)
    if broker is not None and report.failed:
        report.sections.append((f"tern log ({report.when})", broker.log() or "(empty)"))
    cluster = getattr(item, "_tern_cluster", None)  # cluster_fixture.py
    if cluster is not None and report.failed:
        report.sections.append((f"tern cluster logs ({report.when})", cluster.logs()))


@pytest.fixture
def broker(request, tmp_path):
    """Starts `tern serve` on a free loopback port; yields (host, port) (a `Broker`, which also
    has `.proc`, `.log()` and `.wait_for_log()`); at teardown sends SIGTERM and asserts exit code
    0 within 5 s."""
    marker = request.node.get_closest_marker("tern_config")
    config_text = marker.args[0] if marker else None
    running = _start_broker(tmp_path, config_text)
    request.node._tern_broker = running
    try:
        yield running
    finally:
        _stop_broker(running)


@pytest.fixture
def paho(broker, request):
    """Factory of connected-on-demand paho clients for `broker`; all are closed at teardown
    (before the broker stops)."""
    made: list[PahoClient] = []

    def make(client_id: str, protocol, **kwargs) -> PahoClient:
        client = PahoClient(broker, client_id, protocol, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def unique(request) -> str:
    """A topic prefix / client id stem unique to this test (short: MQTT 3.1 allows 23-character
    client identifiers)."""
    return "t%x" % (abs(hash(request.node.nodeid)) % 0xFFFFFF)


@pytest.fixture
def mosquitto_sub(broker):
    """Factory of `MosquittoSub` processes against `broker`; all are killed at teardown."""
    made: list[MosquittoSub] = []

    def make(topics, **kwargs) -> MosquittoSub:
        sub = MosquittoSub(broker, topics, **kwargs)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


class _TestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _watchdog(request):
    """Fails a test that runs longer than TEST_TIMEOUT seconds, or its `test_timeout` marker's
    (every wait in the suite is bounded already; this is the last line of defence). SIGALRM,
    main thread only."""
    marker = request.node.get_closest_marker("test_timeout")
    limit = marker.args[0] if marker else TEST_TIMEOUT
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum, frame):
        raise _TestTimeout(f"test exceeded {limit} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
