"""Configuration handling and process lifecycle of moatd."""

import os
import re
import signal
import socket
import subprocess

import pytest

import conftest
from conftest import DEFAULTS, MOATD, Broker, moat_config
import mqttraw
from util import raw_connected, roundtrip, scaled

pytestmark = pytest.mark.moat_only


@pytest.fixture(autouse=True)
def _need_moatd():
    if not (os.path.isfile(MOATD) and os.access(MOATD, os.X_OK)):
        pytest.skip("moatd binary not found at %s" % MOATD)


def _good_config(tmp_path):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return moat_config(str(data), dict(DEFAULTS))


def _run_bad(tmp_path, text, name="bad.toml"):
    """Run moatd on a config that must be rejected; returns stderr."""
    path = tmp_path / name
    path.write_text(text)
    try:
        r = subprocess.run([MOATD, "-c", str(path)], cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=scaled(10))
    except subprocess.TimeoutExpired as e:
        raise AssertionError("moatd accepted a bad config and kept running; stderr:\n%s"
                             % (e.stderr or b"").decode("utf-8", "replace"))
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode != 0, "moatd exited 0 on a bad config; stderr:\n" + err
    assert r.returncode > 0, "moatd died of signal %d on a bad config:\n%s" % (-r.returncode, err)
    assert "listening on" not in err + r.stdout.decode("utf-8", "replace"), err
    return path, err


def _line_of(text, needle):
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise ValueError(needle)


def _assert_file_line(err, path, line):
    rx = re.escape(path.name) + r":" + str(line) + r"\b"
    assert re.search(rx, err), "stderr lacks %s:%d:\n%s" % (path.name, line, err)


def _insert_after(text, header, line):
    assert header in text
    return text.replace(header + "\n", header + "\n" + line + "\n", 1)


@pytest.mark.parametrize("section,key", [
    ("[broker]", "bogus"),
    ("[log]", "colour"),
    ("[limits]", "max_connections_typo"),
    ("[[listener]]", "tls_cert"),
])
def test_unknown_key_rejected(tmp_path, section, key):
    text = _insert_after(_good_config(tmp_path), section, "%s = 1" % key)
    path, err = _run_bad(tmp_path, text)
    _assert_file_line(err, path, _line_of(text, "%s = 1" % key))
    assert key in err, err


def test_unknown_table_rejected(tmp_path):
    text = _good_config(tmp_path) + "\n[bogus_table]\nx = 1\n"
    path, err = _run_bad(tmp_path, text)
    _assert_file_line(err, path, _line_of(text, "[bogus_table]"))
    assert "bogus_table" in err, err


@pytest.mark.parametrize("key,old,new", [
    ("threads", "threads = 2", 'threads = "x"'),
    ("max_packet_size", "max_packet_size = 1048576", 'max_packet_size = "big"'),
    ("connect_timeout", "connect_timeout = 2", "connect_timeout = true"),
    ("data_dir", "data_dir = ", "data_dir = 5 #"),
    ("bind", 'bind = "127.0.0.1:0"', "bind = 8080"),
    ("auth", 'auth = ["anonymous"]', 'auth = "anonymous"'),
])
def test_wrong_type_rejected(tmp_path, key, old, new):
    text = _good_config(tmp_path)
    assert old in text
    line = _line_of(text, old)
    lines = text.splitlines()
    lines[line - 1] = new
    text = "\n".join(lines) + "\n"
    path, err = _run_bad(tmp_path, text)
    _assert_file_line(err, path, line)
    assert key in err, err


def test_invalid_log_level_rejected(tmp_path):
    text = _good_config(tmp_path).replace('level = "debug"', 'level = "loud"')
    path, err = _run_bad(tmp_path, text)
    _assert_file_line(err, path, _line_of(text, 'level = "loud"'))
    assert "level" in err, err


def test_toml_syntax_error_rejected(tmp_path):
    text = _good_config(tmp_path).replace("threads = 2", "threads = ")
    path, err = _run_bad(tmp_path, text)
    _assert_file_line(err, path, _line_of(text, "threads = "))


def test_missing_config_file(tmp_path):
    missing = tmp_path / "does-not-exist.toml"
    r = subprocess.run([MOATD, "-c", str(missing)], cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=scaled(10))
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode > 0, err
    assert "does-not-exist.toml" in err, err


def _listening_on_1883():
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", 1883))
        return True
    except OSError:
        return False
    finally:
        s.close()


STARTED_RE = r"started: (\d+) event loop\(s\), data in (\S+)"


def test_no_config_defaults_to_localhost_1883(tmp_path):
    """Without -c the broker listens on 127.0.0.1:1883, runs one event loop
    per core, keeps its data in ./moat-data of the working directory and logs
    to stderr (nothing on stdout)."""
    if _listening_on_1883():
        pytest.skip("something already listens on 127.0.0.1:1883")
    stdout = tmp_path / "stdout.txt"
    work = tmp_path / "work"
    work.mkdir()
    # The shell execs moatd with stdout to a file: the Broker sees stderr only.
    b = Broker(["sh", "-c", 'exec "$0" >"$1"', MOATD, str(stdout)], cwd=str(work))
    try:
        try:
            m = b.wait_for_log(conftest.LISTEN_RE.pattern, timeout=10)
        except AssertionError:
            if b.proc.poll() is not None and re.search(r"(?i)in use", b.log_text()):
                pytest.skip("port 1883 was taken meanwhile: " + b.log_text()[-300:])
            raise
        assert (m.group(1), m.group(2)) == ("127.0.0.1", "1883"), m.group(0)
        started = b.wait_for_log(STARTED_RE, timeout=10)
        assert int(started.group(1)) == os.cpu_count(), started.group(0)
        assert os.path.normpath(started.group(2)) == "moat-data", started.group(0)
        assert (work / "moat-data").is_dir(), sorted(os.listdir(work))
        b.host, b.port = "127.0.0.1", 1883
        roundtrip(b)
    finally:
        rc = b.stop(signal.SIGTERM)
    assert rc == 0, b.log_text()
    assert stdout.read_text() == "", "moatd wrote to stdout:\n" + stdout.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_clean_exit(start_broker, sig):
    """SIGTERM/SIGINT -> exit code 0, also with clients connected."""
    broker = start_broker()
    c = raw_connected(broker, name="connected")
    try:
        c.subscribe([("x/#", 1)])
        rc = broker.stop(sig)
        assert rc == 0, broker.log_text()
        c.expect_closed(scaled(5))
    finally:
        c.close()


def test_two_listeners(start_broker):
    """Two [[listener]] tables: both log their port and serve clients; a message
    crosses listeners."""
    listeners = [
        {"name": "one", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["anonymous"]},
        {"name": "two", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["anonymous"]},
    ]
    broker = start_broker(listeners=listeners)
    assert len(broker.listeners) == 2
    (h1, p1), (h2, p2) = broker.listeners
    assert p1 != p2
    sub = mqttraw.Client(h1, p1, timeout=scaled(10), name="on-one")
    pub = mqttraw.Client(h2, p2, timeout=scaled(10), name="on-two")
    try:
        sub.connect("l1")
        pub.connect("l2")
        sub.subscribe([("cross/t", 1)])
        pub.publish("cross/t", b"across", qos=1)
        assert sub.recv_publish().payload == b"across"
    finally:
        sub.close()
        pub.close()


def test_threads_zero_means_per_core(start_broker):
    """threads = 0 (the default) runs one event loop per core."""
    broker = start_broker(threads=0)
    started = broker.wait_for_log(STARTED_RE, timeout=10)
    assert int(started.group(1)) == os.cpu_count(), started.group(0)
    roundtrip(broker)


def test_threads_configured(start_broker):
    """threads = 3 runs exactly 3 event loops (the log is not just the core count)."""
    broker = start_broker(threads=3)
    started = broker.wait_for_log(STARTED_RE, timeout=10)
    assert int(started.group(1)) == 3, started.group(0)
    roundtrip(broker)


@pytest.mark.parametrize("level", ["trace", "debug", "info"])
def test_log_levels_accepted(start_broker, level):
    """(warn/error would hide the info-level "listening on" line the harness needs.)"""
    broker = start_broker(log_level=level)
    roundtrip(broker)
