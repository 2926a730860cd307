"""The `moat` command-line client: moat pub / moat sub / moat init, run as real
processes against moatd and against Debian's mosquitto broker, interoperating
with Debian's mosquitto_pub / mosquitto_sub (see docs/cli.md).

Environment:
  MOAT   path of the moat binary (default: apps/moat/moat of the build tree that
         holds $MOATD when MOATD is set, else <repo>/build/apps/moat/moat)
  MOATD  path of the broker binary (see conftest.py)
"""

import base64
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import threading
import time
import tomllib

import pytest

import mqttraw
from conftest import MOATD, MOSQUITTO, REPO, Broker, free_port
from util import LineProc, mosquitto_pub, mosquitto_sub, raw_connected, scaled, uniq


def _resolve_moat():
    path = os.environ.get("MOAT")
    if not path and os.environ.get("MOATD"):
        # CTest sets MOATD only: take the moat built next to it (same build tree,
        # so the ASan stage tests the ASan moat).
        sibling = os.path.join(os.path.dirname(os.path.dirname(MOATD)), "moat", "moat")
        if os.path.isfile(sibling):
            path = sibling
    path = path or os.path.join(REPO, "build", "apps", "moat", "moat")
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "moat")):
        path = os.path.join(path, "moat")
    return path


MOAT = _resolve_moat()

RFC3339_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def _need_moat():
    if not (os.path.isfile(MOAT) and os.access(MOAT, os.X_OK)):
        pytest.skip("moat binary not found at %s (set MOAT)" % MOAT)


# ---------------------------------------------------------------- processes

def moat(*args, stdin=None, timeout=15.0):
    """Runs moat to completion; returns CompletedProcess (stdout/stderr bytes)."""
    return subprocess.run([MOAT] + [str(a) for a in args],
                          input=stdin if stdin is not None else b"",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=scaled(timeout))


def target(b):
    return ["-h", b.host, "-p", str(b.port)]


def assert_one_error_line(stderr, command):
    """Errors are one line on stderr, prefixed with the command."""
    text = stderr.decode("utf-8", "replace")
    lines = [l for l in text.splitlines() if l and not l.startswith("moat: ")]
    assert len(lines) == 1, "expected one error line, got:\n" + text
    assert lines[0].startswith("moat %s: " % command), lines[0]
    assert "Traceback" not in text and "terminate called" not in text
    return lines[0]


class MoatProc:
    """A running moat: stdout collected raw, stderr collected line by line."""

    def __init__(self, args, stdin=subprocess.DEVNULL):
        self.argv = [MOAT] + [str(a) for a in args]
        self.cond = threading.Condition()
        self.out = bytearray()
        self.err = []
        self.proc = subprocess.Popen(self.argv, stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.threads = [threading.Thread(target=self._read_out, daemon=True),
                        threading.Thread(target=self._read_err, daemon=True)]
        for t in self.threads:
            t.start()

    def _read_out(self):
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            with self.cond:
                self.out += chunk
                self.cond.notify_all()

    def _read_err(self):
        for raw in iter(self.proc.stderr.readline, b""):
            with self.cond:
                self.err.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()

    def _wait(self, pred, what, timeout):
        deadline = time.monotonic() + scaled(timeout)
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise AssertionError("%s: %s not seen within %.1fs\nstdout: %r\nstderr:\n%s"
                                         % (self.argv, what, scaled(timeout), bytes(self.out),
                                            "\n".join(self.err)))
                if self.proc.poll() is not None and not any(t.is_alive() for t in self.threads):
                    if pred():
                        break
                    raise AssertionError("%s exited (%s) before %s\nstdout: %r\nstderr:\n%s"
                                         % (self.argv, self.proc.returncode, what,
                                            bytes(self.out), "\n".join(self.err)))
                self.cond.wait(min(left, 0.2))

    def wait_err(self, substring, count=1, timeout=10.0):
        self._wait(lambda: sum(substring in l for l in self.err) >= count,
                   "stderr line %r (x%d)" % (substring, count), timeout)

    def wait_ready(self, filters=1, timeout=10.0):
        """moat sub -d prints one 'subscribed to' line per granted filter."""
        self.wait_err("moat: subscribed to ", filters, timeout)

    def wait_out_lines(self, n, timeout=10.0):
        self._wait(lambda: self.out.count(b"\n") >= n, "%d stdout lines" % n, timeout)

    def wait_exit(self, timeout=10.0):
        try:
            rc = self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("%s did not exit within %.1fs\nstdout: %r\nstderr:\n%s"
                                 % (self.argv, scaled(timeout), bytes(self.out), "\n".join(self.err)))
        for t in self.threads:
            t.join(5)
        return rc

    def stdout(self):
        with self.cond:
            return bytes(self.out)

    def lines(self):
        return self.stdout().decode("utf-8").splitlines()

    def json_lines(self):
        return [json.loads(l) for l in self.lines()]

    def stderr(self):
        with self.cond:
            return "\n".join(self.err)

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def moat_sub(b, *args):
    """Starts `moat sub -d` and waits until the broker acknowledged every filter."""
    p = MoatProc(["sub", "-d"] + target(b) + list(args))
    p.wait_ready(filters=sum(1 for a in args if a == "-t"))
    return p


# ---------------------------------------------------------------- brokers

@pytest.fixture
def mosquitto_broker(tmp_path):
    """Debian's mosquitto on a free loopback port, stopped by PID."""
    if not os.path.isfile(MOSQUITTO):
        pytest.skip("mosquitto not installed at %s" % MOSQUITTO)
    port = free_port()
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    conf = workdir / "mosquitto.conf"
    conf.write_text("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "log_dest stderr\n" % port)
    b = Broker([MOSQUITTO, "-c", str(conf)], cwd=str(workdir), config_path=str(conf),
               kind="mosquitto")
    b.host, b.port = "127.0.0.1", port
    b.listeners = [(b.host, b.port)]
    try:
        b.wait_listening()
        yield b
    finally:
        if b.alive():
            os.kill(b.pid, signal.SIGTERM)
            try:
                b.proc.wait(scaled(10))
            except subprocess.TimeoutExpired:
                os.kill(b.pid, signal.SIGKILL)
                b.proc.wait(10)


@pytest.fixture(params=["moatd", "mosquitto"])
def any_broker(request):
    """The same test against moatd and against Debian's mosquitto."""
    if request.param == "moatd":
        return request.getfixturevalue("broker")
    return request.getfixturevalue("mosquitto_broker")


class FakeBroker:
    """A scripted MQTT server for answers real brokers do not give easily:
    CONNACK `connack_rc`, and SUBACK with `suback_codes`."""

    def __init__(self, connack_rc=0, suback_codes=None):
        self.connack_rc = connack_rc
        self.suback_codes = suback_codes
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.host, self.port = self.sock.getsockname()
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.settimeout(scaled(10))
        buf = bytearray()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while True:
                    pkt, n = mqttraw.try_parse(buf)
                    if pkt is None:
                        break
                    del buf[:n]
                    if pkt.type == mqttraw.CONNECT:
                        conn.sendall(mqttraw.packet(mqttraw.CONNACK, 0, bytes([0, self.connack_rc])))
                        if self.connack_rc:
                            return
                    elif pkt.type == mqttraw.SUBSCRIBE:
                        conn.sendall(mqttraw.packet(mqttraw.SUBACK, 0,
                                                    pkt.body[:2] + bytes(self.suback_codes)))
                    elif pkt.type == mqttraw.DISCONNECT:
                        return
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self.sock.close()
        self.t.join(5)


# ---------------------------------------------------------------- interoperability

@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_to_mosquitto_sub(any_broker, qos):
    topic = uniq("cli/pub/")
    sub = mosquitto_sub(any_broker, topic, qos=qos)
    r = moat("pub", *target(any_broker), "-t", topic, "-m", "hello q%d" % qos, "-q", qos)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    line = sub.wait_line("%s hello q%d" % (topic, qos))
    assert line == "%s hello q%d" % (topic, qos)
    assert sub.wait_exit() == 0
    # mosquitto_sub -d: "received PUBLISH (d0, qN, r0, ...)" with the QoS granted.
    assert re.search(r"received PUBLISH \(d0, q%d, r0" % qos, sub.output()), sub.output()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_pub_to_sub(any_broker, qos):
    topic = uniq("cli/sub/")
    p = moat_sub(any_broker, "-t", topic, "-q", qos, "-C", 1, "--format", "json")
    mosquitto_pub(any_broker, topic, "hi from mosquitto", qos=qos)
    assert p.wait_exit() == 0, p.stderr()
    [m] = p.json_lines()
    assert m["topic"] == topic and m["payload"] == "hi from mosquitto"
    assert m["qos"] == qos and m["retain"] is False
    assert RFC3339_MS_UTC.match(m["received_at"]), m
    assert list(m) == ["topic", "qos", "retain", "payload", "received_at"]


def test_retained_and_skip_retained(any_broker):
    topic = uniq("cli/retained/")
    r = moat("pub", *target(any_broker), "-t", topic, "-m", "stale", "-r", "-q", 1)
    assert r.returncode == 0, r.stderr
    # A later subscriber gets the retained message, flagged.
    p = MoatProc(["sub"] + target(any_broker) + ["-t", topic, "-C", 1, "--format", "json", "-W", 10])
    assert p.wait_exit() == 0, p.stderr()
    [m] = p.json_lines()
    assert (m["payload"], m["retain"]) == ("stale", True)
    # -R: the retained one is not printed (nor counted); a live one is.
    p = moat_sub(any_broker, "-t", topic, "-R", "-C", 1, "-v")
    assert moat("pub", *target(any_broker), "-t", topic, "-m", "fresh").returncode == 0
    assert p.wait_exit() == 0, p.stderr()
    assert p.lines() == ["%s fresh" % topic]
    assert "r1" in p.stderr()  # the retained message did arrive (debug line)


def test_will_on_sigkill(any_broker):
    will = uniq("cli/will/")
    watcher = mosquitto_sub(any_broker, will, qos=1)
    p = moat_sub(any_broker, "-t", uniq("cli/idle/"), "--will-topic", will,
                 "--will-payload", "moat sub died", "--will-qos", 1)
    p.signal(signal.SIGKILL)
    p.wait_exit()
    watcher.wait_line("%s moat sub died" % will)
    assert watcher.wait_exit() == 0


@pytest.mark.parametrize("retain", [True, False])
def test_will_retain(any_broker, retain):
    """--will-retain: the will becomes the topic's retained value, so a client
    that subscribes after the death still learns of it; without the flag it
    does not."""
    will = uniq("cli/wretain/")
    # A watcher proves the will was published before the late subscriber comes.
    watcher = moat_sub(any_broker, "-t", will, "-q", 1, "-C", 1, "--format", "json")
    p = moat_sub(any_broker, "-t", uniq("cli/idle/"), "--will-topic", will, "--will-payload", "gone",
                 "--will-qos", 1, *(["--will-retain"] if retain else []))
    p.signal(signal.SIGKILL)
    p.wait_exit()
    assert watcher.wait_exit() == 0, watcher.stderr()
    [m] = watcher.json_lines()
    # Live delivery to an existing subscriber: MQTT-3.3.1-9 clears the flag.
    assert (m["topic"], m["payload"], m["qos"], m["retain"]) == (will, "gone", 1, False), m
    late = moat_sub(any_broker, "-t", will, "-q", 1, "-C", 1, "--format", "json")
    if not retain:
        # Nothing retained: the first message the late subscriber gets is a
        # sentinel published after it subscribed.
        r = moat("pub", *target(any_broker), "-t", will, "-m", "sentinel", "-q", 1)
        assert r.returncode == 0, r.stderr
    assert late.wait_exit() == 0, late.stderr()
    [m] = late.json_lines()
    want = ("gone", True) if retain else ("sentinel", False)
    assert (m["topic"], m["qos"]) == (will, 1), m
    assert (m["payload"], m["retain"]) == want, m
    if retain:  # clear it, as a user would
        assert moat("pub", *target(any_broker), "-t", will, "-r", "-n").returncode == 0


def test_persistent_session(any_broker):
    topic = uniq("cli/session/")
    cid = uniq("moat-cli-")
    p = moat_sub(any_broker, "-c", "-i", cid, "-q", 1, "-t", topic)
    p.signal(signal.SIGTERM)
    assert p.wait_exit() == 0, p.stderr()
    assert "sending DISCONNECT" in p.stderr()
    r = moat("pub", *target(any_broker), "-t", topic, "-m", "while away", "-q", 1)
    assert r.returncode == 0, r.stderr
    p = MoatProc(["sub", "-d"] + target(any_broker) + ["-c", "-i", cid, "-q", 1, "-t", topic,
                                                       "-C", 1, "-W", 10])
    assert p.wait_exit() == 0, p.stderr()
    assert p.lines() == ["while away"]
    assert "session present 1" in p.stderr()


def test_mosquitto_pub_retained_to_sub(any_broker):
    topic = uniq("cli/mretained/")
    mosquitto_pub(any_broker, topic, "stale", qos=1, retain=True)
    # Subscribed after the publish: only the retained copy can arrive, flagged.
    p = MoatProc(["sub"] + target(any_broker) + ["-t", topic, "-C", 1, "--format", "json",
                                                 "-W", int(scaled(10))])
    assert p.wait_exit() == 0, p.stderr()
    [m] = p.json_lines()
    assert (m["topic"], m["payload"], m["retain"]) == (topic, "stale", True)
    # -R: the stale retained message arrives but is neither printed nor counted.
    p = moat_sub(any_broker, "-t", topic, "-q", 1, "-R", "-C", 1, "--format", "json")
    mosquitto_pub(any_broker, topic, "fresh", qos=1)
    assert p.wait_exit() == 0, p.stderr()
    [m] = p.json_lines()
    assert (m["payload"], m["retain"]) == ("fresh", False)
    assert re.search(r"received PUBLISH \(q\d, r1", p.stderr()), p.stderr()  # arrived, not printed


def test_pub_retained_to_mosquitto_sub(any_broker):
    topic = uniq("cli/rpub/")
    r = moat("pub", *target(any_broker), "-t", topic, "-m", "kept", "-r", "-q", 1)
    assert r.returncode == 0, r.stderr
    # Subscribed after the publish: only the retained copy can arrive.
    sub = mosquitto_sub(any_broker, topic, qos=1)
    sub.wait_line("%s kept" % topic)
    assert sub.wait_exit() == 0
    assert re.search(r"received PUBLISH \(d0, q1, r1", sub.output()), sub.output()


def test_will_of_mosquitto_sub_on_sigkill(any_broker):
    will = uniq("cli/mwill/")
    watcher = moat_sub(any_broker, "-t", will, "-q", 1, "-C", 1, "-v")
    victim = mosquitto_sub(any_broker, uniq("cli/idle/"), qos=1, wait=60,
                           extra=["--will-topic", will, "--will-payload", "mosquitto_sub died",
                                  "--will-qos", "1"])
    os.kill(victim.proc.pid, signal.SIGKILL)  # stdbuf execs mosquitto_sub: the same PID
    victim.wait_exit()
    assert watcher.wait_exit() == 0, watcher.stderr()
    assert watcher.lines() == ["%s mosquitto_sub died" % will]


def test_persistent_session_mosquitto_sub(any_broker):
    """mosquitto_sub's persistent session collects what moat pub sends while it is away."""
    topic = uniq("cli/msession/")
    cid = uniq("mosq-cli-")
    # -E: subscribe, then disconnect cleanly, leaving the session on the broker.
    first = mosquitto_sub(any_broker, topic, qos=1, extra=["-c", "-i", cid, "-E"])
    assert first.wait_exit() == 0, first.output()
    r = moat("pub", *target(any_broker), "-t", topic, "-m", "while away", "-q", 1)
    assert r.returncode == 0, r.stderr
    # Not the mosquitto_sub helper, which waits for a SUBACK: the queued message
    # may arrive, and -C 1 end the client, before it.
    again = LineProc(["stdbuf", "-oL", "mosquitto_sub", "-d", "-v", *target(any_broker),
                      "-c", "-i", cid, "-q", "1", "-t", topic, "-C", "1",
                      "-W", str(int(scaled(10)))])
    again.wait_line("%s while away" % topic)
    assert again.wait_exit() == 0, again.output()


def test_persistent_session_mosquitto_pub(any_broker):
    """moat sub's persistent session collects what mosquitto_pub sends while it is away."""
    topic = uniq("cli/msession/")
    cid = uniq("moat-cli-")
    p = moat_sub(any_broker, "-c", "-i", cid, "-q", 1, "-t", topic)
    p.signal(signal.SIGTERM)
    assert p.wait_exit() == 0, p.stderr()
    assert "sending DISCONNECT" in p.stderr()
    mosquitto_pub(any_broker, topic, "while away", qos=1)
    p = MoatProc(["sub", "-d"] + target(any_broker) + ["-c", "-i", cid, "-q", 1, "-t", topic,
                                                       "-C", 1, "-W", int(scaled(10))])
    assert p.wait_exit() == 0, p.stderr()
    assert p.lines() == ["while away"]
    assert "session present 1" in p.stderr()


def test_unix_socket(tmp_path):
    """--unix, against mosquitto listening on a Unix socket (moatd has none yet)."""
    if not os.path.isfile(MOSQUITTO):
        pytest.skip("mosquitto not installed at %s" % MOSQUITTO)
    path = tmp_path / "mqtt.sock"
    conf = tmp_path / "mosquitto.conf"
    # Run as root, mosquitto drops to user "mosquitto", who may not enter tmp_path.
    user = pwd.getpwuid(os.getuid()).pw_name
    conf.write_text("user %s\nlistener 0 %s\nallow_anonymous true\nlog_dest stderr\n" % (user, path))
    b = Broker([MOSQUITTO, "-c", str(conf)], cwd=str(tmp_path), kind="mosquitto")
    try:
        b.wait_for_log("running")
        deadline = time.monotonic() + scaled(10)
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        topic = uniq("cli/unix/")
        p = MoatProc(["sub", "-d", "--unix", path, "-t", topic, "-C", 1, "-v"])
        p.wait_ready()
        r = moat("pub", "--unix", path, "-t", topic, "-m", "over unix", "-q", 1)
        assert r.returncode == 0, r.stderr
        assert p.wait_exit() == 0, p.stderr()
        assert p.lines() == ["%s over unix" % topic]
    finally:
        b.stop()


def test_clean_session_off_needs_id(broker):
    r = moat("sub", *target(broker), "-c", "-t", "x")
    assert r.returncode == 1
    assert "-i" in assert_one_error_line(r.stderr, "sub")


# ---------------------------------------------------------------- moat pub sources

def test_line_mode(broker):
    topic = uniq("cli/lines/")
    p = moat_sub(broker, "-t", topic, "-q", 1, "-C", 4, "--format", "json")
    r = moat("pub", *target(broker), "-t", topic, "-l", "-q", 1, stdin=b"one\ntwo\n\nlast-no-newline")
    assert r.returncode == 0, r.stderr
    assert p.wait_exit() == 0, p.stderr()
    assert [m["payload"] for m in p.json_lines()] == ["one", "two", "", "last-no-newline"]


def test_line_mode_many_lines_qos2(broker):
    topic = uniq("cli/manylines/")
    n = 300
    p = moat_sub(broker, "-t", topic, "-q", 2, "-C", n)
    body = "".join("line %d\n" % i for i in range(n)).encode()
    r = moat("pub", *target(broker), "-t", topic, "-l", "-q", 2, stdin=body)
    assert r.returncode == 0, r.stderr
    assert p.wait_exit() == 0, p.stderr()
    assert p.lines() == ["line %d" % i for i in range(n)]


def test_null_message(broker):
    topic = uniq("cli/null/")
    p = moat_sub(broker, "-t", topic, "-C", 2, "-v")
    assert moat("pub", *target(broker), "-t", topic, "-n").returncode == 0
    assert moat("pub", *target(broker), "-t", topic, "-m", "").returncode == 0
    assert p.wait_exit() == 0, p.stderr()
    # As mosquitto_sub -v: an empty payload prints "(null)".
    assert p.lines() == ["%s (null)" % topic] * 2


def test_file_binary_payload_json_base64(broker, tmp_path):
    topic = uniq("cli/file/")
    data = bytes(range(256)) + b"\xff\xfe"
    f = tmp_path / "payload.bin"
    f.write_bytes(data)
    p = moat_sub(broker, "-t", topic, "-C", 2, "--format", "json")
    assert moat("pub", *target(broker), "-t", topic, "-f", f, "-q", 1).returncode == 0
    # A NUL byte makes a payload "not UTF-8" for JSON output too.
    assert moat("pub", *target(broker), "-t", topic, "-m", "caf\u00e9 \u2713").returncode == 0
    assert p.wait_exit() == 0, p.stderr()
    first, second = p.json_lines()
    assert "payload" not in first
    assert base64.b64decode(first["payload_base64"]) == data
    assert second["payload"] == "caf\u00e9 \u2713" and "payload_base64" not in second


def test_file_missing_is_usage_error(broker, tmp_path):
    r = moat("pub", *target(broker), "-t", "x", "-f", tmp_path / "nope")
    assert r.returncode == 1
    assert_one_error_line(r.stderr, "pub")


def test_whole_stdin(broker):
    topic = uniq("cli/stdin/")
    p = moat_sub(broker, "-t", topic, "-C", 1, "--format", "json")
    r = moat("pub", *target(broker), "-t", topic, "-s", stdin=b"multi\nline\n")
    assert r.returncode == 0, r.stderr
    assert p.wait_exit() == 0
    assert p.json_lines()[0]["payload"] == "multi\nline\n"


def test_exactly_one_message_source(broker):
    for args in (["-m", "a", "-n"], ["-l", "-s"], []):
        r = moat("pub", *target(broker), "-t", "x", *args)
        assert r.returncode == 1, args
        assert_one_error_line(r.stderr, "pub")


# ---------------------------------------------------------------- moat sub output

def test_verbose_and_no_newline(broker):
    topic = uniq("cli/n/")
    p = moat_sub(broker, "-t", topic, "-C", 2, "-N")
    q = moat_sub(broker, "-t", topic, "-C", 2, "-v", "-N")
    for m in ("ab", "cd"):
        assert moat("pub", *target(broker), "-t", topic, "-m", m, "-q", 1).returncode == 0
    assert p.wait_exit() == 0 and q.wait_exit() == 0
    assert p.stdout() == b"abcd"
    assert q.stdout() == ("%s ab%s cd" % (topic, topic)).encode()


def test_filter_out_and_several_filters(broker):
    base = uniq("cli/T/")
    p = moat_sub(broker, "-t", base + "/a/#", "-t", base + "/b", "-T", base + "/a/skip/#",
                 "-v", "-C", 2, "-q", 1)
    for t, m in ((base + "/a/skip/1", "hidden"), (base + "/a/keep", "one"), (base + "/b", "two")):
        assert moat("pub", *target(broker), "-t", t, "-m", m, "-q", 1).returncode == 0
    assert p.wait_exit() == 0, p.stderr()
    assert p.lines() == [base + "/a/keep one", base + "/b two"]


def test_keepalive_pings_keep_an_idle_client_connected(broker):
    """-k 1: moatd closes a client silent for 1.5 keep-alive intervals
    (MQTT-3.1.2-24); moat sub -k 1 stays connected well past that because it
    sends PINGREQ when idle."""
    topic = uniq("cli/keepalive/")
    cid = uniq("moat-ka-")
    p = moat_sub(broker, "-k", 1, "-i", cid, "-t", topic, "-C", 1)
    assert "keep-alive 1 s" in p.stderr(), p.stderr()
    idle_from = time.monotonic()
    # Control: a client with the same keep-alive that never pings is closed.
    # The wait for that close is also the first part of moat sub's idle time.
    silent_id = uniq("silent-")
    with raw_connected(broker, silent_id, keepalive=1) as silent:
        silent.expect_closed(scaled(10))
    assert time.monotonic() - idle_from >= 1.0
    # The broker logs that close: the pattern checked for moat sub below is real.
    broker.wait_for_log(r"client %s from \S+ disconnected" % re.escape(silent_id))
    # Stay idle for 3 keep-alive intervals in all (twice what moatd allows).
    rest = idle_from + 3.0 - time.monotonic()
    if rest > 0:
        time.sleep(rest)
    assert not broker.find_log(r"client %s from \S+ disconnected" % re.escape(cid)), broker.log_text()
    assert p.proc.poll() is None, p.stderr()
    # Still the same connection: the message arrives, with no reconnect.
    assert moat("pub", *target(broker), "-t", topic, "-m", "still here").returncode == 0
    assert p.wait_exit() == 0, p.stderr()
    assert p.lines() == ["still here"]
    assert sum("received CONNACK" in l for l in p.err) == 1, p.stderr()
    # -d shows the keep-alive traffic, as mosquitto_sub -d does.
    assert sum("sending PINGREQ" in l for l in p.err) >= 2, p.stderr()
    assert sum("received PINGRESP" in l for l in p.err) >= 2, p.stderr()


def test_timeout_exit_5(broker):
    t0 = time.monotonic()
    r = moat("sub", *target(broker), "-t", uniq("cli/quiet/"), "-W", 1, "-C", 1)
    assert r.returncode == 5, r.stderr
    assert "timed out" in assert_one_error_line(r.stderr, "sub")
    assert time.monotonic() - t0 < scaled(5)


def test_sigint_disconnects_cleanly(broker):
    p = moat_sub(broker, "-t", uniq("cli/int/"))
    p.signal(signal.SIGINT)
    assert p.wait_exit() == 0
    assert "sending DISCONNECT" in p.stderr()


def test_refused_subscriptions():
    fake = FakeBroker(suback_codes=[0x80, 0x01])
    try:
        p = MoatProc(["sub", "-d", "-h", fake.host, "-p", fake.port, "-t", "no/#", "-t", "yes/#",
                      "-q", 1])
        p.wait_err("moat: subscribed to 'yes/#' (granted QoS 1)")
        assert "moat sub: subscription to no/# refused by the broker" in p.stderr()
        p.signal(signal.SIGTERM)
        assert p.wait_exit() == 0
    finally:
        fake.close()
    fake = FakeBroker(suback_codes=[0x80])
    try:
        r = moat("sub", "-h", fake.host, "-p", fake.port, "-t", "no/#")
        assert r.returncode == 3, r.stderr
        assert b"subscription to no/# refused by the broker" in r.stderr
    finally:
        fake.close()


# ---------------------------------------------------------------- exit codes

def test_unreachable_exit_2():
    port = free_port()  # bound and closed again: nothing listens there
    for cmd in (["pub", "-t", "x", "-m", "y"], ["sub", "-t", "x"]):
        r = moat(cmd[0], "-h", "127.0.0.1", "-p", port, *cmd[1:])
        assert r.returncode == 2, r.stderr
        assert "cannot connect" in assert_one_error_line(r.stderr, cmd[0])


@pytest.mark.parametrize("args,needle", [
    (["pub", "-t", "a/+", "-m", "x"], "wildcards"),
    (["pub", "-t", "a/#", "-m", "x"], "wildcards"),
    (["sub", "-t", "a/#/b"], "invalid topic filter"),
    (["pub", "-t", "a", "-m", "x", "-V", "5"], "MQTT 5 is not supported yet"),
    (["sub", "-t", "a", "-V", "mqttv5"], "MQTT 5 is not supported yet"),
    (["pub", "-t", "a", "-m", "x", "-q", "3"], "qos"),
    (["pub", "-t", "a", "-m", "x", "--no-such-flag"], "no-such-flag"),
    (["pub", "-t", "a", "-m", "x", "-P", "secret"], "-u"),
    (["pub", "-t", "a", "-m", "x", "--will-payload", "p"], "--will-topic"),
])
def test_usage_errors_exit_1(args, needle):
    # Nothing listens on port 1: a usage error must be found before connecting.
    r = moat(*args, "-p", "1")
    assert r.returncode == 1, r.stderr
    assert needle in assert_one_error_line(r.stderr, args[0])


def test_usage_errors_name_their_command(tmp_path):
    """A flag error of any command names that command, and no command at all
    lists every command."""
    path = str(tmp_path / "pw")
    r = moat("passwd", "-b", path, "alice", "pw", "--argon2-memory", "lots")
    assert r.returncode == 1, r.stderr
    assert "--argon2-memory" in assert_one_error_line(r.stderr, "passwd")
    assert not os.path.exists(path)
    r = moat("keygen")
    assert r.returncode == 1 and "--kind is required" in assert_one_error_line(r.stderr, "keygen")
    r = moat()
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith("moat: a command is required: pub, sub, init, passwd, bench, probe, "
                               "keygen, seal, open"), lines


@pytest.mark.moat_only  # mosquitto 2.0 admits MQTT 3.1 identifiers longer than 23 characters
def test_identifier_rejected_exit_3(broker):
    r = moat("pub", *target(broker), "-V", "mqttv31", "-i", "x" * 30, "-t", "a", "-m", "x")
    assert r.returncode == 3, r.stderr
    line = assert_one_error_line(r.stderr, "pub")
    assert "connection refused: identifier rejected (CONNACK 2)" in line


def test_mqtt31_works(broker):
    topic = uniq("cli/v31/")
    p = moat_sub(broker, "-t", topic, "-V", "31", "-C", 1)
    assert moat("pub", *target(broker), "-V", "mqttv31", "-t", topic, "-m", "old").returncode == 0
    assert p.wait_exit() == 0
    assert p.lines() == ["old"]


@pytest.mark.parametrize("rc,exit_code,text", [
    (4, 4, "authentication failed: bad user name or password (CONNACK 4)"),
    (5, 4, "authentication failed: not authorized (CONNACK 5)"),
    (3, 3, "connection refused: server unavailable (CONNACK 3)"),
])
def test_connack_refusals(rc, exit_code, text):
    fake = FakeBroker(connack_rc=rc)
    try:
        r = moat("pub", "-h", fake.host, "-p", fake.port, "-u", "u", "-P", "p", "-t", "a", "-m", "x")
    finally:
        fake.close()
    assert r.returncode == exit_code, r.stderr
    assert text in assert_one_error_line(r.stderr, "pub")


def test_client_id_prefix(broker):
    topic = uniq("cli/prefix/")
    p = moat_sub(broker, "-t", topic, "-I", "pre-", "-C", 1)
    assert "client id 'pre-%d'" % p.proc.pid in p.stderr()
    assert moat("pub", *target(broker), "-t", topic, "-m", "x").returncode == 0
    assert p.wait_exit() == 0


# ---------------------------------------------------------------- moat init, --version, --help

def test_init_writes_a_valid_config(tmp_path):
    d = tmp_path / "setup"
    r = moat("init", d)
    assert r.returncode == 0, r.stderr
    conf = d / "moat.toml"
    assert conf.is_file()
    assert ("moatd -c %s" % conf).encode() in r.stdout
    text = conf.read_text()
    assert 'bind = "127.0.0.1:1883"' in text and 'data_dir = "data"' in text
    # The defaults docs/cli.md promises: a mutual-TLS listener on 8883 beside
    # the password-only loopback one.
    listeners = {l["name"]: l for l in tomllib.loads(text)["listener"]}
    assert sorted(listeners) == ["local", "tls"], listeners
    local, tls = listeners["local"], listeners["tls"]
    assert (local["bind"], local["transport"], local["auth"]) == ("127.0.0.1:1883", "tcp", ["password"])
    assert (tls["bind"], tls["transport"]) == ("0.0.0.0:8883", "tls"), tls
    assert tls["auth"] == ["certificate", "password"], tls
    t = tls["tls"]
    assert (t["client_cert"], t["ca"], t["crl"], t["identity_from"]) == \
        ("required", "ca.crt", ["ca.crl"], "cn"), t
    assert (t["cert"], t["key"], t["min_version"]) == ("server.crt", "server.key", "1.2"), t
    for name in ("ca.crt", "ca.crl", "server.crt", "server.key"):
        assert (d / name).is_file(), name
    if not (os.path.isfile(MOATD) and os.access(MOATD, os.X_OK)):
        pytest.skip("moatd binary not found at %s (set MOATD)" % MOATD)
    c = subprocess.run([MOATD, "--check-config", "-c", str(conf)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=scaled(10))
    assert c.returncode == 0, c.stdout
    assert b"valid" in c.stdout
    # A folder that is not empty is refused, unless --force.
    r = moat("init", d)
    assert r.returncode == 1
    assert_one_error_line(r.stderr, "init")
    assert moat("init", d, "--force").returncode == 0


def test_version_and_help():
    r = moat("--version")
    assert r.returncode == 0 and re.match(rb"^moat \d+\.\d+\.\d+\n$", r.stdout), r.stdout
    for cmd in ("pub", "sub", "init"):
        r = moat(cmd, "--help")
        assert r.returncode == 0 and b"Usage" in r.stdout, r
    assert b"-h,--host" in moat("sub", "--help").stdout
