"""Issue 12: users and access rules seen by clients we did not write. Password files made by
the real `mosquitto_passwd -b -c` (Debian's mosquitto package) and by `tern passwd -b -c`;
mosquitto_pub / mosquitto_sub with -u/-P, right and wrong; an ACL file in Mosquitto's syntax.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import HOST, _start_broker, _stop_broker, tern_bin

ACL = """\
user alice
topic readwrite alice/#
topic read public/#
user bob
topic write public/#
"""

TIMEOUT = 10


def make_passwords(tmp_path: Path, maker: str) -> Path:
    path = tmp_path / f"{maker}.passwd"
    if maker == "mosquitto":
        if shutil.which("mosquitto_passwd") is None:
            pytest.skip("mosquitto_passwd is not installed")
        tool = ["mosquitto_passwd"]
    else:
        tool = [str(tern_bin()), "passwd"]
    subprocess.run([*tool, "-b", "-c", str(path), "alice", "alice-pw"], check=True,
                   timeout=TIMEOUT)
    subprocess.run([*tool, "-b", str(path), "bob", "bob-pw"], check=True, timeout=TIMEOUT)
    return path


@pytest.fixture(params=["mosquitto", "tern"])
def auth_broker(request, tmp_path):
    """A broker whose [auth] has a password file made by `mosquitto_passwd` or `tern passwd`,
    and an ACL file."""
    passwords = make_passwords(tmp_path, request.param)
    (tmp_path / "tern.acl").write_text(ACL)
    config = f'[auth]\npassword_file = "{passwords.name}"\nacl_file = "tern.acl"\n'
    running = _start_broker(tmp_path, config)
    request.node._tern_broker = running
    try:
        yield running
    finally:
        _stop_broker(running)


def pub(broker, user, password, topic, message, *extra):
    args = ["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-t", topic, "-m", message,
            "-q", "1", *extra]
    if user is not None:
        args += ["-u", user, "-P", password]
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)


def sub(broker, user, password, topic, *extra):
    args = ["mosquitto_sub", "-h", HOST, "-p", str(broker.port), "-t", topic, "-u", user,
            "-P", password, "-q", "1", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_right_and_wrong_passwords(auth_broker):
    """The right password gets in (mosquitto_pub exits 0); a wrong password, an unknown user
    and no username are refused (non-zero exit, 'not authorised' / 'bad user name')."""
    ok = pub(auth_broker, "alice", "alice-pw", "alice/x", "hello")
    assert ok.returncode == 0, ok.stderr
    for user, password in [("alice", "wrong"), ("mallory", "alice-pw")]:
        bad = pub(auth_broker, user, password, "alice/x", "hello")
        assert bad.returncode != 0
        assert "refused" in bad.stderr.lower() or "not authori" in bad.stderr.lower(), bad.stderr
    anonymous = pub(auth_broker, None, None, "alice/x", "hello")
    assert anonymous.returncode != 0
    assert auth_broker.wait_for_log(r"auth failed.*username=\"?mallory")
    assert "alice-pw" not in auth_broker.log()


def test_acl_delivers_what_may_be_read(auth_broker):
    """ACL: alice subscribes to public/# (readable) and gets bob's message (bob may write it);
    alice's subscription to a topic outside her rules is refused (mosquitto_sub, MQTT 5 SUBACK
    0x87: 'denied')."""
    watcher = sub(auth_broker, "alice", "alice-pw", "public/#", "-C", "1", "-W", "8")
    try:
        # Retry until the subscription is in place (one message is enough).
        for _ in range(50):
            sent = pub(auth_broker, "bob", "bob-pw", "public/news", "hi")
            assert sent.returncode == 0, sent.stderr
            try:
                out, err = watcher.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            pytest.fail("alice never received bob's message")
        assert out.strip() == "hi", err
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    denied = subprocess.run(
        ["mosquitto_sub", "-h", HOST, "-p", str(auth_broker.port), "-t", "secret/#",
         "-u", "alice", "-P", "alice-pw", "-V", "mqttv5", "-C", "1", "-W", "5"],
        capture_output=True, text=True, timeout=TIMEOUT)
    assert "denied" in (denied.stderr + denied.stdout).lower(), denied.stderr
