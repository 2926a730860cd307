"""Fixtures for the moatd integration tests.

Environment:
  MOATD                    path of the broker binary (default <repo>/build/apps/moatd)
  MOAT_TEST_TIMEOUT_SCALE  float multiplying every timeout (ASan/TSan builds: 2-10)
  MOAT_TEST_BROKER         "moat" (default) or "mosquitto": run the suite's client
                           side against Debian's /usr/sbin/mosquitto (harness sanity
                           check only; tests marked moat_only are skipped)
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from util import SCALE, scaled  # noqa: E402

def _resolve_moatd():
    path = os.environ.get("MOATD") or os.path.join(REPO, "build", "apps", "moatd")
    # With CMake's per-target folders the binary may live one level further down.
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "moatd")):
        path = os.path.join(path, "moatd")
    return path


MOATD = _resolve_moatd()
BROKER_KIND = os.environ.get("MOAT_TEST_BROKER", "moat")
MOSQUITTO = os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto")

LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")

DEFAULTS = {
    "threads": 2,
    "log_level": "debug",
    "connect_timeout": 2,
    "max_packet_size": 1048576,
    "max_inflight_messages": 20,
    "max_queued_messages": 1000,
    "limits_extra": {},  # further [limits] keys, moatd only
}


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def moat_config(data_dir, opts, listeners=None):
    if listeners is None:
        listeners = [{"name": "local", "bind": "127.0.0.1:0",
                      "transport": "tcp", "auth": ["anonymous"]}]
    lines = [
        "[broker]",
        "data_dir = %s" % toml_value(data_dir),
        "threads = %s" % toml_value(opts["threads"]),
        "",
        "[log]",
        "level = %s" % toml_value(opts["log_level"]),
        "",
        "[limits]",
        "connect_timeout = %s" % toml_value(opts["connect_timeout"]),
        "max_packet_size = %s" % toml_value(opts["max_packet_size"]),
        "max_inflight_messages = %s" % toml_value(opts["max_inflight_messages"]),
        "max_queued_messages = %s" % toml_value(opts["max_queued_messages"]),
    ] + ["%s = %s" % (k, toml_value(v)) for k, v in opts["limits_extra"].items()] + [
        "",
    ]
    for lst in listeners:
        lines.append("[[listener]]")
        for k, v in lst.items():
            lines.append("%s = %s" % (k, toml_value(v)))
        lines.append("")
    return "\n".join(lines)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Broker:
    """A running broker process whose stderr is collected line by line."""

    def __init__(self, argv, cwd, config_path=None, kind="moat"):
        self.argv = argv
        self.kind = kind
        self.config_path = config_path
        self.logs = []
        self.host = None
        self.port = None
        self.listeners = []  # (host, port) in log order
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                self.logs.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self):
        return self.proc.pid

    def log_mark(self):
        """Index to pass as `since` to wait_for_log to only look at newer lines."""
        with self._cond:
            return len(self.logs)

    def find_log(self, regex, since=0):
        rx = re.compile(regex)
        with self._cond:
            for line in self.logs[since:]:
                m = rx.search(line)
                if m:
                    return m
        return None

    def wait_for_log(self, regex, timeout=10.0, since=0, scale=True):
        """Wait until a log line (from index `since`) matches `regex`; returns the
        match. Fails the test on timeout or if the broker exits first."""
        return self.wait_for_log_at(regex, timeout, since, scale)[0]

    def wait_for_log_at(self, regex, timeout=10.0, since=0, scale=True):
        """Like wait_for_log but returns (match, index of the matching line)."""
        rx = re.compile(regex)
        if scale:
            timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        idx = since
        with self._cond:
            while True:
                while idx < len(self.logs):
                    m = rx.search(self.logs[idx])
                    idx += 1
                    if m:
                        return m, idx - 1
                if self._eof:
                    raise AssertionError(
                        "broker exited (rc=%s) before logging /%s/; log:\n%s"
                        % (self.proc.poll(), regex, "\n".join(self.logs)))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no log line /%s/ within %.1fs; log tail:\n%s"
                                         % (regex, timeout, "\n".join(self.logs[-40:])))
                self._cond.wait(left)

    def log_text(self):
        with self._cond:
            return "\n".join(self.logs)

    def wait_listening(self, count=1):
        if self.kind == "mosquitto":
            deadline = time.monotonic() + scaled(10)
            while True:
                try:
                    socket.create_connection((self.host, self.port), timeout=1).close()
                    return
                except OSError:
                    if self.proc.poll() is not None:
                        raise AssertionError("mosquitto exited:\n" + self.log_text())
                    if time.monotonic() > deadline:
                        raise AssertionError("mosquitto not listening:\n" + self.log_text())
                    time.sleep(0.05)
        idx = 0
        while len(self.listeners) < count:
            m, i = self.wait_for_log_at(LISTEN_RE.pattern, timeout=10, since=idx)
            idx = i + 1
            self.listeners.append((m.group(1), int(m.group(2))))
        self.host, self.port = self.listeners[0]

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Signal the broker by PID and wait for it; returns the exit code."""
        self.stopped = True
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError("broker did not exit within %.1fs of signal %d; log tail:\n%s"
                                 % (scaled(timeout), sig, "\n".join(self.logs[-60:])))
        self._reader.join(5)
        return self.proc.returncode


def _start(tmp_path, name, opts, listeners=None, extra_args=()):
    opts = dict(DEFAULTS, **opts)
    workdir = tmp_path / name
    workdir.mkdir()
    data_dir = workdir / "data"
    data_dir.mkdir()
    if BROKER_KIND == "mosquitto":
        port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text("\n".join([
            "listener %d 127.0.0.1" % port,
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type all",
            "max_inflight_messages %d" % opts["max_inflight_messages"],
            "max_queued_messages %d" % opts["max_queued_messages"],
            "max_packet_size %d" % opts["max_packet_size"],
            "",
        ]))
        b = Broker([MOSQUITTO, "-c", str(conf)], cwd=str(workdir),
                   config_path=str(conf), kind="mosquitto")
        b.host, b.port = "127.0.0.1", port
        b.listeners = [(b.host, b.port)]
    else:
        if not (os.path.isfile(MOATD) and os.access(MOATD, os.X_OK)):
            pytest.skip("moatd binary not found at %s (set MOATD)" % MOATD)
        conf = workdir / "moat.toml"
        conf.write_text(moat_config(str(data_dir), opts, listeners))
        b = Broker([MOATD, "-c", str(conf)] + list(extra_args), cwd=str(workdir),
                   config_path=str(conf))
    b.workdir = workdir
    b.opts = opts
    try:
        b.wait_listening(len(listeners) if listeners else 1)
    except BaseException:
        if b.alive():
            os.kill(b.pid, signal.SIGKILL)
            b.proc.wait(10)
        raise
    return b


def _teardown(b):
    if getattr(b, "stopped", False):
        return  # stopped (and checked) by the test itself
    if not b.alive():
        rc = b.proc.returncode
        print("broker had already exited with %s; log:\n%s" % (rc, b.log_text()))
        raise AssertionError("broker died during the test (exit %s)" % rc)
    rc = b.stop(signal.SIGTERM, 10)
    if rc != 0:
        print("broker log:\n" + b.log_text())
    assert rc == 0, "broker exit code after SIGTERM was %s" % rc


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def start_broker(tmp_path, request):
    """Factory: start_broker(threads=..., connect_timeout=..., log_level=..., ...)."""
    started = []

    def factory(listeners=None, **overrides):
        unknown = set(overrides) - set(DEFAULTS)
        if unknown:
            raise TypeError("unknown broker overrides: %s" % sorted(unknown))
        b = _start(tmp_path, "broker%d" % len(started), overrides, listeners)
        started.append(b)
        return b

    yield factory
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for i, b in enumerate(started):
            print("---- broker%d log (last 150 lines) ----" % i)
            print("\n".join(b.logs[-150:]))
    errors = []
    for b in started:
        try:
            _teardown(b)
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)


@pytest.fixture
def broker(start_broker):
    return start_broker()


def pytest_collection_modifyitems(config, items):
    if BROKER_KIND != "mosquitto":
        return
    skip = pytest.mark.skip(reason="moatd-specific (MOAT_TEST_BROKER=mosquitto)")
    for item in items:
        if "moat_only" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return "broker under test: %s (%s), timeout scale %.2f" % (
        BROKER_KIND, MOATD if BROKER_KIND == "moat" else MOSQUITTO, SCALE)
