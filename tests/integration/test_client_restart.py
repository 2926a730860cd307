"""The client library's reconnect and resend, seen through `moat pub`/`moat sub
--reconnect`, while the broker is stopped and restarted mid-stream.

Two brokers: moatd with its durable store (durability "sync"), killed with
SIGKILL; and Debian's mosquitto with persistence on, stopped with SIGTERM (it
writes its sessions to disk only then: a SIGKILL would lose them, see
docs/durability.md). Either way the broker keeps every session, so every loss
or duplicate the test could see would be the client's.

A publisher streams numbered QoS 1 or QoS 2 messages from stdin; a persistent
subscriber counts them. Both reconnect by themselves. QoS 2 must arrive exactly
once, QoS 1 at least once, and nothing may be missing."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from util import scaled

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MOAT = os.environ.get("MOAT") or os.path.join(REPO, "build", "apps", "moat", "moat")
MOSQUITTO = os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto")
COUNT = 1500
ACKED_BEFORE_RESTART = 50  # of the COUNT // 2 written before the restart


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    def __init__(self, tmp_path):
        self.port = free_port()
        self.dir = tmp_path / "mosquitto"
        self.dir.mkdir()
        self.conf = self.dir / "mosquitto.conf"
        # Every packet logged (d1 = DUP flag): the evidence of resends.
        self.log = self.dir / "mosquitto.log"
        self.conf.write_text(
            "listener %d 127.0.0.1\nallow_anonymous true\npersistence true\n"
            "persistence_location %s/\nautosave_interval 3600\nmax_queued_messages 0\n"
            "set_tcp_nodelay true\nlog_dest file %s\nlog_type all\n" % (self.port, self.dir, self.log))
        if os.geteuid() == 0:
            # Run as root, mosquitto drops to user "mosquitto", which cannot write here.
            self.conf.write_text(self.conf.read_text() + "user root\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + scaled(10)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, "mosquitto exited"
                assert time.monotonic() < deadline, "mosquitto is not listening"
                time.sleep(0.02)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)  # mosquitto saves its sessions on SIGTERM
        self.proc.wait(timeout=scaled(10))


class Moatd:
    def __init__(self, tmp_path):
        from conftest import MOATD
        self.binary = MOATD
        self.port = free_port()
        self.dir = tmp_path / "moatd"
        self.dir.mkdir()
        self.conf = self.dir / "moat.toml"
        self.conf.write_text(
            # The publisher may reconnect first and fill the subscriber's queue: no
            # limit here, as for mosquitto (max_queued_messages 0).
            '[broker]\ndata_dir = "data"\nthreads = 2\n[limits]\nmax_queued_messages = 100000000\n'
            '[store]\ndurability = "sync"\n'
            '[[listener]]\nname = "l"\nbind = "127.0.0.1:%d"\nauth = ["anonymous"]\n' % self.port)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + scaled(10)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, "moatd exited"
                assert time.monotonic() < deadline, "moatd is not listening"
                time.sleep(0.02)

    def stop(self):
        self.proc.kill()  # SIGKILL: nothing is flushed on the way out
        self.proc.wait(timeout=scaled(10))


@pytest.fixture(params=["moatd", "mosquitto"])
def broker_proc(request, tmp_path):
    m = Moatd(tmp_path) if request.param == "moatd" else Mosquitto(tmp_path)
    m.start()
    yield m
    if m.proc.poll() is None:
        m.proc.terminate()
        m.proc.wait()


def lines_of(stream, into, ready=None, marker=None, count=1):
    """Collects lines; sets `ready` once `count` of them contain `marker`."""
    seen = 0
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        into.append(line)
        if ready is not None and marker in line:
            seen += 1
            if seen == count:
                ready.set()


@pytest.mark.parametrize("qos", [1, 2])
def test_stream_survives_broker_restart(broker_proc, qos):
    mosquitto = broker_proc
    common = ["-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", str(qos), "--reconnect", "-c", "-d"]
    # No -C: at QoS 1 duplicates are allowed, so the count of lines says nothing.
    sub = subprocess.Popen([MOAT, "sub", "-t", "restart/#", "-i", "restart-sub-%d" % qos] + common,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got, sub_log = [], []
    ready = threading.Event()
    threading.Thread(target=lines_of, args=(sub.stdout, got), daemon=True).start()
    threading.Thread(target=lines_of, args=(sub.stderr, sub_log, ready, "subscribed to"), daemon=True).start()
    assert ready.wait(scaled(10)), "subscriber not ready:\n" + "\n".join(sub_log)

    pub = subprocess.Popen([MOAT, "pub", "-t", "restart/x", "-l", "-i", "restart-pub-%d" % qos] + common,
                           stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    pub_log = []
    # Set on the reader thread as soon as the broker acknowledged the first
    # messages: the broker is stopped then, with most of them still in flight.
    pub_flowing = threading.Event()
    ack = "received PUBACK" if qos == 1 else "received PUBCOMP"

    def pub_lines():
        lines_of(pub.stderr, pub_log, pub_flowing, ack, count=ACKED_BEFORE_RESTART)

    threading.Thread(target=pub_lines, daemon=True).start()
    try:
        pub.stdin.write(b"".join(b"%d\n" % i for i in range(COUNT // 2)))
        pub.stdin.flush()
        # Mid-stream: as soon as messages flow, restart with many in flight.
        assert pub_flowing.wait(scaled(20)), "no messages acknowledged:\n" + "\n".join(pub_log[-20:])
        mosquitto.stop()
        mosquitto.start()
        pub.stdin.write(b"".join(b"%d\n" % i for i in range(COUNT // 2, COUNT)))
        pub.stdin.close()
        assert pub.wait(timeout=scaled(60)) == 0, "publisher failed:\n" + "\n".join(pub_log[-20:])
        want = {str(i) for i in range(COUNT)}
        deadline = time.monotonic() + scaled(30)
        while not want.issubset(got) and time.monotonic() < deadline:
            time.sleep(0.01)
        sub.send_signal(signal.SIGTERM)
        assert sub.wait(timeout=scaled(10)) == 0, "subscriber failed:\n" + "\n".join(sub_log[-15:])
    finally:
        for p in (pub, sub):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sum("received CONNACK" in l for l in pub_log) >= 2, "the publisher never reconnected"
    # The resend path was exercised: when the publisher noticed the broker
    # gone (its first "reconnecting" line), messages it had sent were still
    # unacknowledged (moat pub -d: one "sending PUBLISH" line per message, one
    # "received PUBACK/PUBCOMP" per acknowledgement, in order on stderr).
    lost_at = next((i for i, l in enumerate(pub_log) if "reconnecting" in l), None)
    assert lost_at is not None, "the publisher never lost its connection:\n" + "\n".join(pub_log[-20:])
    before = pub_log[:lost_at]
    sent = sum("sending PUBLISH" in l for l in before)
    acked = sum(("received PUBACK" in l or "received PUBCOMP" in l) for l in before)
    assert sent - acked > 0, "nothing was in flight when the broker went away (%d sent, %d acknowledged)" % (
        sent, acked)
    print("in flight when the broker went away: %d of %d sent" % (sent - acked, sent))
    if isinstance(broker_proc, Mosquitto):
        # mosquitto logs every packet: after its restart the publisher sent
        # again, as the protocol says, what the old connection left unfinished:
        # PUBLISH with the DUP flag (d1) for what had no PUBACK/PUBREC, and at
        # QoS 2 PUBREL for what had its PUBREC but no PUBCOMP.
        log = broker_proc.log.read_text(errors="replace")
        restarts = [m.start() for m in re.finditer(r"mosquitto version \S+ starting", log)]
        assert len(restarts) == 2, "expected one restart in the mosquitto log"
        old, new = log[:restarts[1]], log[restarts[1]:]
        me = "restart-pub-%d" % qos
        resent = len(re.findall(r"Received PUBLISH from %s \(d1, q%d" % (me, qos), new))
        if qos == 2:
            recd = set(re.findall(r"Sending PUBREC to %s \(m(\d+)," % me, old))
            released = set(re.findall(r"Received PUBREL from %s \(Mid: (\d+)\)" % me, old))
            again = set(re.findall(r"Received PUBREL from %s \(Mid: (\d+)\)" % me, new))
            resent += len((recd - released) & again)
        print("packets the publisher resent after the restart: %d" % resent)
        assert resent > 0, "the publisher resent nothing after mosquitto's restart"
    assert sum("received CONNACK" in l for l in sub_log) >= 2, "the subscriber never reconnected"
    counts = {}
    for payload in got:
        counts[payload] = counts.get(payload, 0) + 1
    missing = [i for i in range(COUNT) if str(i) not in counts]
    assert not missing, "%d messages lost, first %s" % (len(missing), missing[:10])
    dups = {k: v for k, v in counts.items() if v > 1}
    if qos == 2:
        assert not dups, "QoS 2 delivered more than once: %s" % list(dups.items())[:10]
