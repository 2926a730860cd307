"""Crash safety: acknowledged messages survive SIGKILL of the broker.

A raw-socket publisher (clean session 0) sends a numbered QoS 1 stream
("q1:SEQ" on crash/q1), a numbered QoS 2 stream ("q2:SEQ" on crash/q2) and
retained QoS 1 values ("vK" on crash/ret/N). A raw-socket subscriber (clean
session 0, QoS 2 subscription) is online and offline by turns, so messages
queue in the broker. The broker is killed with SIGKILL at random points and
restarted with the same configuration and data.

The clients behave as MQTT 3.1.1 requires, so the test knows exactly what was
acknowledged:
  - the publisher keeps every message until its PUBACK (QoS 1) or PUBCOMP
    (QoS 2) arrives; after a reconnect it resends them in order with DUP=1 and
    the same packet id, and sends PUBREL instead for QoS 2 messages whose
    PUBREC it already got;
  - the subscriber acknowledges everything, remembers the packet ids of QoS 2
    messages whose PUBREL it still awaits (across reconnects) and does not
    deliver a resend of such a packet id again; deliveries to the application
    are counted, not PUBLISH packets.

Afterwards every message whose PUBACK/PUBCOMP the publisher got must have
reached the subscriber, QoS 2 exactly once, QoS 1 at least once; after every
restart each retained topic holds the last value acknowledged before the kill
or a later one that was sent; at the end it holds the last value.

The pytest case runs moatd (durability "sync") and asserts. The same harness
runs longer, and against Debian's mosquitto, with scripts/crash-test (results
in docs/durability.md). Environment for the pytest case:
  MOAT_CRASH_SEED      seed of the kill points and of the subscriber schedule
  MOAT_CRASH_MESSAGES  messages per stream (default 1200, divided by the
                       timeout scale for sanitizer builds)
  MOAT_CRASH_KILLS     number of SIGKILLs (default 5)
"""

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import mqttraw  # noqa: E402
from util import SCALE, scaled  # noqa: E402

MOSQUITTO = os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto")

TOPIC_Q1 = "crash/q1"
TOPIC_Q2 = "crash/q2"
RET_TOPICS = ["crash/ret/%d" % i for i in range(4)]
RET_EVERY = 8          # one retained value per this many sequence numbers
WINDOW = 16            # publisher messages in flight (sent, not fully acknowledged)
BURST = 48             # publisher sends in bursts of this many messages
RUN_SECONDS = 8.0      # the paced stream lasts about this long (kills add to it)
PUB_ID = "crash-pub"
SUB_ID = "crash-sub"
PAYLOAD_RE = re.compile(r"^(q1|q2):(\d+)$")


def resolve_moatd():
    """Same resolution as conftest: $MOATD or <repo>/build/apps/moatd(/moatd)."""
    path = os.environ.get("MOATD") or os.path.join(REPO, "build", "apps", "moatd")
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "moatd")):
        path = os.path.join(path, "moatd")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConnLost(Exception):
    """The connection to the broker broke (killed broker, reset, timeout on send)."""


# ---------------------------------------------------------------- broker process

class BrokerProc:
    """moatd or mosquitto on a fixed port and data folder, started again after
    each kill. Each incarnation (epoch) logs to its own file in `workdir`."""

    def __init__(self, kind, workdir, durability="sync", autosave=1800, moatd=None,
                 threads=2, engine="rocksdb"):
        self.kind = kind
        self.workdir = str(workdir)
        self.port = free_port()
        self.epoch = 0
        self.proc = None
        self.log_paths = []
        os.makedirs(self.workdir, exist_ok=True)
        if kind == "moatd":
            self.binary = moatd or resolve_moatd()
            data_dir = os.path.join(self.workdir, "data")
            self.conf = os.path.join(self.workdir, "moat.toml")
            with open(self.conf, "w") as f:
                f.write("\n".join([
                    "[broker]",
                    'data_dir = "%s"' % data_dir,
                    "threads = %d" % threads,
                    "sys_interval = 0",
                    "",
                    "[log]",
                    'level = "debug"',
                    "",
                    "[limits]",
                    "connect_timeout = 5",
                    "max_inflight_messages = 20",
                    "max_queued_messages = 1000000",
                    "",
                    "[store]",
                    'engine = "%s"' % engine,
                    'durability = "%s"' % durability,
                    "",
                    "[[listener]]",
                    'name = "local"',
                    'bind = "127.0.0.1:%d"' % self.port,
                    'transport = "tcp"',
                    'auth = ["anonymous"]',
                    "",
                ]))
            self.argv = [self.binary, "-c", self.conf]
        elif kind == "mosquitto":
            self.binary = MOSQUITTO
            self.conf = os.path.join(self.workdir, "mosquitto.conf")
            lines = [
                "listener %d 127.0.0.1" % self.port,
                "allow_anonymous true",
                "persistence true",
                "persistence_location %s/" % self.workdir,
                "autosave_interval %d" % autosave,
                "max_queued_messages 0",
                "max_inflight_messages 20",
                "set_tcp_nodelay true",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
            ]
            if os.geteuid() == 0:
                # As root, mosquitto drops to user "mosquitto", which cannot write here.
                lines.append("user root")
            with open(self.conf, "w") as f:
                f.write("\n".join(lines) + "\n")
            self.argv = [self.binary, "-c", self.conf]
        else:
            raise ValueError(kind)

    def start(self, timeout=15.0):
        """Start a new incarnation and wait (bounded) until it accepts connections."""
        self.epoch += 1
        path = os.path.join(self.workdir, "broker-%d.log" % self.epoch)
        self.log_paths.append(path)
        with open(path, "wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + scaled(timeout)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError("%s exited with %s at start (epoch %d); log:\n%s"
                                     % (self.kind, self.proc.returncode, self.epoch,
                                        self.log_tail(60)))
            if time.monotonic() > deadline:
                raise AssertionError("%s not listening on port %d within %.1fs; log:\n%s"
                                     % (self.kind, self.port, scaled(timeout), self.log_tail(60)))
            time.sleep(0.01)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL by PID (unless already sent) and reap."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(scaled(10))
        assert self.proc.returncode == -signal.SIGKILL, \
            "%s exited with %s before the kill" % (self.kind, self.proc.returncode)

    def terminate(self, timeout=15.0):
        """SIGTERM by PID; returns the exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError("%s did not exit within %.1fs of SIGTERM; log:\n%s"
                                 % (self.kind, scaled(timeout), self.log_tail(60)))

    def cleanup(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, n=40, epoch=None):
        path = self.log_paths[(epoch or self.epoch) - 1]
        try:
            with open(path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def grep_logs(self, regex, limit=40):
        rx = re.compile(regex)
        out = []
        for i, path in enumerate(self.log_paths, 1):
            try:
                with open(path, "rb") as f:
                    for line in f.read().decode("utf-8", "replace").splitlines():
                        if rx.search(line):
                            out.append("[epoch %d] %s" % (i, line))
            except OSError:
                pass
        return out[:limit]

    def check_store(self):
        """moatd --check-store on the (stopped) data: (exit status, output)."""
        r = subprocess.run(self.argv + ["--check-store"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=scaled(30))
        return r.returncode, r.stdout.decode("utf-8", "replace")

    def version(self):
        try:
            r = subprocess.run([self.binary, "--version"] if self.kind == "moatd"
                               else [self.binary, "-h"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
            return r.stdout.decode("utf-8", "replace").strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"


# ---------------------------------------------------------------- shared record

class Msg:
    __slots__ = ("idx", "kind", "seq", "topic", "payload", "qos", "retain",
                 "state", "pid", "sent_epoch", "acked_epoch", "sends")

    def __init__(self, idx, kind, seq, topic, payload, qos, retain):
        self.idx, self.kind, self.seq = idx, kind, seq
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain
        self.state = "new"   # new -> await_ack | await_rec -> await_comp -> done
        self.pid = None
        self.sent_epoch = None
        self.acked_epoch = None
        self.sends = 0


class Run:
    """State shared by the publisher, the subscriber and the kill controller."""

    def __init__(self, broker, messages, seed, log):
        self.broker = broker
        self.messages = messages
        self.seed = seed
        self._log = log
        self._log_lock = threading.Lock()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.anomalies = []          # unexpected protocol behaviour (texts)
        self.notes = Counter()       # tolerated events, counted for the summary
        self.plan = []
        ret_k = 0
        for seq in range(messages):
            for kind, topic, qos in (("q1", TOPIC_Q1, 1), ("q2", TOPIC_Q2, 2)):
                self.plan.append(Msg(len(self.plan), kind, seq, topic,
                                     ("%s:%d" % (kind, seq)).encode(), qos, False))
            if seq % RET_EVERY == 0:
                topic = RET_TOPICS[ret_k % len(RET_TOPICS)]
                self.plan.append(Msg(len(self.plan), "ret", ret_k, topic,
                                     ("v%d" % ret_k).encode(), 1, True))
                ret_k += 1
        self.sent_upto = 0           # plan index of the next message never sent
        self.kill_point = None       # the publisher sets kill_due on reaching it
        self.kill_exact = False      # and kills the broker itself at that moment
        self.kill_at = None          # sent_upto when it did
        self.kill_due = threading.Event()

    def log(self, text):
        with self._log_lock:
            self._log(text)

    def anomaly(self, text):
        with self.lock:
            self.anomalies.append("[epoch %d] %s" % (self.broker.epoch, text))
        self.log("ANOMALY: " + text)

    def note(self, key, n=1):
        with self.lock:
            self.notes[key] += n

    def retained_acked(self):
        """topic -> highest value index acknowledged so far (-1: none)."""
        out = {t: -1 for t in RET_TOPICS}
        for m in self.plan:
            if m.kind == "ret" and m.state == "done":
                out[m.topic] = max(out[m.topic], m.seq)
        return out

    def retained_sent(self):
        out = {t: -1 for t in RET_TOPICS}
        for m in self.plan:
            if m.kind == "ret" and m.sends > 0:
                out[m.topic] = max(out[m.topic], m.seq)
        return out


def connect_retry(run, client_id, name, deadline_s=20.0, timeout=5.0):
    """Connect (clean session 0) as soon as the broker accepts; bounded.
    Returns (client, session_present) or (None, None) if run.stop is set."""
    deadline = time.monotonic() + scaled(deadline_s)
    last = None
    while not run.stop.is_set():
        c = None
        try:
            c = mqttraw.Client("127.0.0.1", run.broker.port, timeout=scaled(timeout), name=name)
            c.send(mqttraw.connect(client_id, clean_session=False, keepalive=0))
            pkt = c.expect(mqttraw.CONNACK, scaled(timeout))
            sp, rc = mqttraw.decode_connack(pkt)
            if rc != 0:
                run.anomaly("%s: CONNACK return code %d" % (name, rc))
                c.close()
            else:
                return c, sp
        except (OSError, mqttraw.ConnectionClosed) as e:   # refused, reset, timeout
            last = e
            if c is not None:
                c.close()
        if time.monotonic() > deadline:
            raise AssertionError("%s: could not connect within %.1fs (last error %r)"
                                 % (name, scaled(deadline_s), last))
        time.sleep(0.01)
    return None, None


def send(c, data):
    try:
        c.sock.sendall(data)
    except OSError as e:
        raise ConnLost(repr(e))


# ---------------------------------------------------------------- publisher

class Publisher(threading.Thread):
    def __init__(self, run, rate):
        super().__init__(name="crash-publisher", daemon=True)
        self.run_ = run
        self.rate = rate          # new messages per second (0: as fast as acks allow)
        self.inflight = OrderedDict()  # pid -> Msg, in first-send order
        self.next_pid = 1
        self.connects = 0
        self.error = None
        self.done = threading.Event()

    def alloc_pid(self):
        while True:
            pid = self.next_pid
            self.next_pid = self.next_pid % 65535 + 1
            if pid not in self.inflight:
                return pid

    def run(self):
        try:
            self._run()
        except BaseException as e:  # reported by the controller
            self.error = e
            self.run_.log("publisher failed: %r" % (e,))
        finally:
            self.done.set()

    def _run(self):
        r = self.run_
        plan = r.plan
        c = None
        t0 = time.monotonic()
        last_progress = time.monotonic()
        while not r.stop.is_set():
            if r.sent_upto >= len(plan) and not self.inflight:
                break
            if c is None:
                c, sp = connect_retry(r, PUB_ID, "publisher")
                if c is None:
                    break
                if self.connects and not sp:
                    r.anomaly("publisher: session not present after reconnect (%d in flight)"
                              % len(self.inflight))
                self.connects += 1
                last_progress = time.monotonic()
                try:
                    for pid, m in self.inflight.items():   # resend in order
                        if m.state == "await_comp":
                            send(c, mqttraw.pubrel(pid))
                            r.note("publisher: PUBREL resent")
                        else:
                            send(c, mqttraw.publish(m.topic, m.payload, qos=m.qos,
                                                    retain=m.retain, dup=True, pid=pid))
                            m.sends += 1
                            r.note("publisher: PUBLISH resent (DUP)")
                except ConnLost:
                    c.close()
                    c = None
                    continue
            try:
                # Fill the window with new messages. Paced by `rate` on average, in
                # bursts of BURST messages sent as fast as the acknowledgements come,
                # so that kills find a full window in flight.
                allowed = (len(plan) if not self.rate else
                           (int((time.monotonic() - t0) * self.rate / BURST) + 1) * BURST)
                while (r.sent_upto < len(plan) and len(self.inflight) < WINDOW
                       and r.sent_upto < allowed):
                    m = plan[r.sent_upto]
                    m.pid = self.alloc_pid()
                    m.state = "await_ack" if m.qos == 1 else "await_rec"
                    m.sent_epoch = r.broker.epoch
                    m.sends += 1
                    self.inflight[m.pid] = m
                    with r.lock:
                        r.sent_upto += 1
                    send(c, mqttraw.publish(m.topic, m.payload, qos=m.qos, retain=m.retain,
                                            pid=m.pid))
                    if r.kill_point is not None and r.sent_upto >= r.kill_point:
                        if r.kill_exact:
                            # Kill right after this PUBLISH left: a full window in flight.
                            os.kill(r.broker.proc.pid, signal.SIGKILL)
                        r.kill_at = r.sent_upto
                        r.kill_point = None
                        r.kill_due.set()
                try:
                    pkt = c.recv_packet(0.02 if self.inflight or r.sent_upto >= len(plan)
                                        else 0.005)
                except TimeoutError:
                    if self.inflight and time.monotonic() - last_progress > scaled(15):
                        r.anomaly("publisher: no acknowledgement for %.0fs, %d in flight "
                                  "(oldest %s); reconnecting"
                                  % (scaled(15), len(self.inflight),
                                     next(iter(self.inflight.values())).payload))
                        c.close()
                        c = None
                    continue
                last_progress = time.monotonic()
                self._handle(c, pkt)
            except (ConnLost, mqttraw.ConnectionClosed, OSError) as e:
                r.note("publisher: connection lost")
                r.log("publisher: connection lost (%s), %d in flight" % (
                    type(e).__name__, len(self.inflight)))
                c.close()
                c = None
        if c is not None:
            try:
                send(c, mqttraw.disconnect())
            except ConnLost:
                pass
            c.close()

    def _handle(self, c, pkt):
        r = self.run_
        if pkt.type not in (mqttraw.PUBACK, mqttraw.PUBREC, mqttraw.PUBCOMP):
            r.anomaly("publisher: unexpected packet %r" % (pkt,))
            return
        pid = mqttraw.packet_id(pkt)
        m = self.inflight.get(pid)
        if pkt.type == mqttraw.PUBACK:
            if m is None or m.qos != 1:
                r.anomaly("publisher: PUBACK for packet id %d not awaiting one (%s)"
                          % (pid, m.payload if m else "unknown"))
                return
            self._done(m)
        elif pkt.type == mqttraw.PUBREC:
            if m is None or m.qos != 2:
                # PUBREC for a finished id: only after a resend of its PUBLISH, which
                # we never do once PUBREC arrived; answer as the spec says.
                r.anomaly("publisher: PUBREC for packet id %d not in flight" % pid)
                send(c, mqttraw.pubrel(pid))
                return
            if m.state == "await_comp":
                r.note("publisher: duplicate PUBREC")
            m.state = "await_comp"
            send(c, mqttraw.pubrel(pid))
        else:  # PUBCOMP
            if m is None or m.qos != 2 or m.state != "await_comp":
                r.anomaly("publisher: PUBCOMP for packet id %d not awaiting one (%s)"
                          % (pid, m.payload if m else "unknown"))
                return
            self._done(m)

    def _done(self, m):
        with self.run_.lock:
            m.state = "done"
            m.acked_epoch = self.run_.broker.epoch
        del self.inflight[m.pid]


# ---------------------------------------------------------------- subscriber

class Subscriber(threading.Thread):
    def __init__(self, run, rng):
        super().__init__(name="crash-subscriber", daemon=True)
        self.run_ = run
        self.rng = rng
        self.awaiting_rel = {}     # pid -> payload: QoS 2 delivered, PUBREL not yet seen
        self.deliveries = {"q1": Counter(), "q2": Counter()}
        self.delivery_epochs = {"q1": {}, "q2": {}}
        self.unknown = []          # payloads that were never published
        self.subscribed = False
        self.online = False
        self.connects = 0
        self.offline_periods = 0
        self.ready = threading.Event()     # first SUBACK received
        self.drain = threading.Event()     # stay online from now on
        self.complete = threading.Event()  # every sequence number of both streams seen
        self.last_packet = time.monotonic()
        self.last_delivery = time.monotonic()
        self.error = None
        self.done = threading.Event()

    def is_complete(self):
        n = self.run_.messages
        return len(self.deliveries["q1"]) == n and len(self.deliveries["q2"]) == n

    def run(self):
        try:
            self._run()
        except BaseException as e:
            self.error = e
            self.run_.log("subscriber failed: %r" % (e,))
        finally:
            self.done.set()

    def _run(self):
        r = self.run_
        while not r.stop.is_set():
            c, sp = connect_retry(r, SUB_ID, "subscriber", deadline_s=30)
            if c is None:
                return
            self.connects += 1
            self.online = True
            try:
                if self.subscribed is True and not sp:
                    r.anomaly("subscriber: session not present after reconnect; "
                              "subscribing again (%d QoS 2 ids awaiting PUBREL dropped)"
                              % len(self.awaiting_rel))
                    # A client that finds no session on the server discards its own
                    # session state [MQTT-3.2.2-2 ff.]: a real client would, too.
                    self.awaiting_rel.clear()
                    self.subscribed = False
                if self.subscribed is not True:
                    pid = 1
                    send(c, mqttraw.subscribe(pid, [(TOPIC_Q1, 2), (TOPIC_Q2, 2)]))
                    self.subscribed = "pending"
                online = self.rng.uniform(0.2, 1.0)
                until = time.monotonic() + online
                while not r.stop.is_set():
                    if not self.drain.is_set() and time.monotonic() >= until:
                        break
                    try:
                        pkt = c.recv_packet(0.05)
                    except TimeoutError:
                        # Complete: every sequence number seen, no QoS 2 handshake
                        # open, and the broker has nothing more to send (quiet).
                        if (self.drain.is_set() and self.is_complete() and not self.awaiting_rel
                                and time.monotonic() - self.last_packet > scaled(0.5)):
                            self.complete.set()
                        continue
                    self.last_packet = time.monotonic()
                    self._handle(c, pkt)
                if r.stop.is_set():
                    try:
                        send(c, mqttraw.disconnect())
                    except ConnLost:
                        pass
                    c.close()
                    return
                # Go offline: a clean DISCONNECT, a plain close or a reset.
                self.online = False
                how = self.rng.choice(("disconnect", "close", "reset"))
                if how == "disconnect":
                    try:
                        send(c, mqttraw.disconnect())
                    except ConnLost:
                        pass
                    c.close()
                elif how == "close":
                    c.close()
                else:
                    c.abort()
            except (ConnLost, mqttraw.ConnectionClosed, OSError) as e:
                self.online = False
                r.note("subscriber: connection lost")
                r.log("subscriber: connection lost (%s)" % type(e).__name__)
                c.close()
                continue
            self.offline_periods += 1
            r.stop.wait(self.rng.uniform(0.1, 0.7))

    def _deliver(self, pub):
        r = self.run_
        m = PAYLOAD_RE.match(pub.payload.decode("utf-8", "replace"))
        if m is None or int(m.group(2)) >= r.messages:
            self.unknown.append(pub.payload)
            r.anomaly("subscriber: unknown payload %r on %s" % (pub.payload, pub.topic))
            return
        kind, seq = m.group(1), int(m.group(2))
        want_topic, want_qos = (TOPIC_Q1, 1) if kind == "q1" else (TOPIC_Q2, 2)
        if pub.topic != want_topic or pub.qos != want_qos:
            r.anomaly("subscriber: %r arrived on %s at QoS %d" % (pub.payload, pub.topic, pub.qos))
        self.last_delivery = time.monotonic()
        with r.lock:
            self.deliveries[kind][seq] += 1
            self.delivery_epochs[kind].setdefault(seq, []).append(r.broker.epoch)

    def _handle(self, c, pkt):
        r = self.run_
        if pkt.type == mqttraw.SUBACK:
            if self.subscribed != "pending" or pkt.body[2:] != bytes([2, 2]):
                r.anomaly("subscriber: unexpected SUBACK %r" % (pkt,))
            self.subscribed = True
            self.ready.set()
            return
        if pkt.type == mqttraw.PUBREL:
            pid = mqttraw.packet_id(pkt)
            if self.awaiting_rel.pop(pid, None) is None:
                # Legitimate after a crash: our PUBCOMP may not have been stored.
                r.note("subscriber: PUBREL for an id not awaited (answered)")
            send(c, mqttraw.pubcomp(pid))
            return
        if pkt.type != mqttraw.PUBLISH:
            r.anomaly("subscriber: unexpected packet %r" % (pkt,))
            return
        pub = mqttraw.decode_publish(pkt)
        if pub.dup:
            r.note("subscriber: PUBLISH with DUP")
        if pub.qos == 1:
            self._deliver(pub)
            send(c, mqttraw.puback(pub.pid))
        elif pub.qos == 2:
            if pub.pid in self.awaiting_rel:
                # A resend of a message already delivered: do not deliver it again.
                if self.awaiting_rel[pub.pid] != pub.payload:
                    r.anomaly("subscriber: QoS 2 packet id %d reused for %r while %r awaits "
                              "PUBREL (dropped as a duplicate, as a client must)"
                              % (pub.pid, pub.payload, self.awaiting_rel[pub.pid]))
                else:
                    r.note("subscriber: QoS 2 resend of an id awaiting PUBREL")
                if not pub.dup:
                    r.anomaly("subscriber: QoS 2 resend of packet id %d without DUP" % pub.pid)
            else:
                self._deliver(pub)
                self.awaiting_rel[pub.pid] = pub.payload
            send(c, mqttraw.pubrec(pub.pid))
        else:
            self._deliver(pub)


# ---------------------------------------------------------------- retained check

def read_retained(port, wait=5.0):
    """Fresh clean-session subscriber to crash/ret/+: topic -> value index of the
    retained message it gets on subscribing (absent topics are missing)."""
    c = mqttraw.Client("127.0.0.1", port, timeout=scaled(5), name="retained-check")
    try:
        c.connect("crash-ret-check", clean_session=True)
        c.send(mqttraw.subscribe(1, [("crash/ret/+", 1)]))
        got = {}
        suback = False
        deadline = time.monotonic() + scaled(wait)
        while time.monotonic() < deadline:
            try:
                pkt = c.recv_packet(0.05)
            except TimeoutError:
                if suback and time.monotonic() - t_suback > scaled(0.3):
                    # Retained messages are sent with or right after the SUBACK;
                    # a short quiet period after it ends the read.
                    break
                continue
            if pkt.type == mqttraw.SUBACK:
                suback = True
                t_suback = time.monotonic()
                continue
            if pkt.type != mqttraw.PUBLISH:
                continue
            pub = mqttraw.decode_publish(pkt)
            c.ack(pub)
            if pub.retain and pub.topic not in got:
                got[pub.topic] = int(pub.payload.decode()[1:])
            if len(got) == len(RET_TOPICS):
                break
        try:
            c.disconnect(timeout=scaled(5))
        except (OSError, AssertionError, mqttraw.ConnectionClosed):
            pass
        return got
    finally:
        c.close()


def check_retained(got, acked, sent):
    """Errors if a retained value is older than the last acknowledged one or was
    never sent."""
    errors = []
    for t in RET_TOPICS:
        if acked[t] < 0 and t not in got:
            continue
        v = got.get(t)
        if v is None:
            errors.append("%s: no retained message, last acknowledged v%d" % (t, acked[t]))
        elif v < acked[t]:
            errors.append("%s: retained v%d, older than the acknowledged v%d" % (t, v, acked[t]))
        elif v > sent[t]:
            errors.append("%s: retained v%d was never sent (last sent v%d)" % (t, v, sent[t]))
    return errors


# ---------------------------------------------------------------- the run

def run_crash(broker, messages, kills, seed, seconds=RUN_SECONDS, log=print, drain_timeout=30.0):
    """Run the whole scenario against `broker` (a BrokerProc, not started).
    Returns a result dict; result["failures"] lists what broke the guarantees."""
    rng = random.Random(seed)
    run = Run(broker, messages, seed, log)
    total = len(run.plan)
    rate = total / seconds if seconds else 0
    run.log("crash run: broker %s, seed %d, %d messages per stream, %d plan entries, %d kills, "
        "rate %.0f/s, port %d" % (broker.kind, seed, messages, total, kills, rate, broker.port))
    # Kill points: plan positions spread over the middle of the run.
    lo, hi = int(total * 0.05), int(total * 0.9)
    points = sorted(rng.sample(range(lo, hi), kills)) if kills else []
    sub_rng = random.Random(rng.random())
    retained_errors = []
    kill_log = []
    t_start = time.monotonic()
    broker.start()
    pub = Publisher(run, rate)
    sub = Subscriber(run, sub_rng)
    sub.start()
    # The stream starts once the subscription exists (earlier messages have no
    # subscriber to go to).
    if not sub.ready.wait(scaled(10)):
        run.stop.set()
        raise AssertionError("subscriber got no SUBACK: %r" % (sub.error,))
    pub.start()
    try:
        for i, point in enumerate(points, 1):
            # The publisher signals the moment it sends plan entry `point`; the kill
            # follows within 0-4 ms, mostly with a full window in flight.
            run.kill_due.clear()
            # Most kills land exactly when the publisher sends plan entry `point`
            # (mid-burst, window full); the others up to 0.3 s later (acks and
            # queued deliveries draining, subscriber reconnecting).
            exact = rng.random() < 0.6
            run.kill_exact = exact
            run.kill_point = point
            deadline = time.monotonic() + scaled(60)
            late = False
            while not run.kill_due.wait(0.05):
                with run.lock:
                    all_sent = run.sent_upto >= total
                if all_sent:
                    # A late kill (the last one not exact, or a slow restart)
                    # let the publisher pass this point and send everything:
                    # no new PUBLISH will signal it, so kill now, while the
                    # last acknowledgements and deliveries are under way.
                    run.kill_point = None
                    late = not run.kill_due.is_set()
                    break
                if time.monotonic() > deadline:
                    raise AssertionError("publisher stuck at %d/%d before kill %d"
                                         % (run.sent_upto, total, i))
            if late:
                at = run.sent_upto
            elif exact:
                at = run.kill_at
            else:
                time.sleep(rng.uniform(0, 0.3))
                at = run.sent_upto
            in_flight = len(pub.inflight)
            sub_online = sub.online
            broker.kill()
            time.sleep(0.05)   # let the clients take in what was sent before the kill
            with run.lock:
                acked = run.retained_acked()
                n_acked = sum(1 for m in run.plan if m.state == "done")
            kill_log.append((i, at, n_acked, in_flight, sub_online))
            run.log("kill %d (epoch %d): %d sent, %d acknowledged, ~%d in flight, subscriber %s"
                    % (i, broker.epoch, at, n_acked, in_flight,
                       "online" if sub_online else "offline"))
            time.sleep(rng.uniform(0, 0.3))
            broker.start()
            got = read_retained(broker.port)
            with run.lock:
                sent = run.retained_sent()
            for e in check_retained(got, acked, sent):
                retained_errors.append("after kill %d: %s" % (i, e))
        # Publisher finishes (every message acknowledged), then the subscriber drains.
        pub.done.wait(scaled(120))
        if not pub.done.is_set():
            raise AssertionError("publisher did not finish: %d/%d sent, %d in flight"
                                 % (run.sent_upto, total, len(pub.inflight)))
        # Drain: until complete, or nothing new delivered for a while (lost messages
        # never come), bounded by drain_timeout.
        sub.drain.set()
        t_drain = time.monotonic()
        while not sub.complete.wait(0.05) and not sub.done.is_set():
            now = time.monotonic()
            if now - t_drain > scaled(drain_timeout):
                break
            if now - max(t_drain, sub.last_delivery) > scaled(3):
                break
        run.stop.set()
        sub.done.wait(scaled(10))
        final_retained = read_retained(broker.port)
    finally:
        run.stop.set()
        pub.done.wait(scaled(10))
        sub.done.wait(scaled(10))
    elapsed = time.monotonic() - t_start
    with run.lock:
        final_acked = run.retained_acked()
        final_sent = run.retained_sent()

    # ---- evaluate
    failures = []
    if pub.error:
        failures.append("publisher error: %r" % (pub.error,))
    if sub.error:
        failures.append("subscriber error: %r" % (sub.error,))
    acked = {"q1": [], "q2": []}
    acked_before_kill = {"q1": 0, "q2": 0}
    for m in run.plan:
        if m.kind in acked and m.state == "done":
            acked[m.kind].append(m)
            if m.acked_epoch < broker.epoch:
                acked_before_kill[m.kind] += 1
    lost = {}
    lost_before_kill = {}
    for kind in ("q1", "q2"):
        lost[kind] = [m.seq for m in acked[kind] if sub.deliveries[kind][m.seq] == 0]
        lost_before_kill[kind] = [m.seq for m in acked[kind]
                                  if sub.deliveries[kind][m.seq] == 0
                                  and m.acked_epoch < broker.epoch]
    lost_detail = ["%s (pid %d, sent in epoch %d, acknowledged in epoch %d, sent %d times)"
                   % (m.payload.decode(), m.pid, m.sent_epoch, m.acked_epoch, m.sends)
                   for kind in ("q1", "q2") for m in acked[kind]
                   if sub.deliveries[kind][m.seq] == 0]
    received = {k: len(sub.deliveries[k]) for k in ("q1", "q2")}
    q2_dups = sorted(s for s, n in sub.deliveries["q2"].items() if n > 1)
    q1_dups = sorted(s for s, n in sub.deliveries["q1"].items() if n > 1)
    unacked = [m.payload.decode() for m in run.plan if m.state != "done"]
    if unacked:
        failures.append("%d messages never acknowledged: %s" % (len(unacked), unacked[:10]))
    for kind in ("q1", "q2"):
        if lost[kind]:
            failures.append("%s: %d acknowledged messages lost (%d acknowledged before a kill), "
                            "seq %s" % (kind, len(lost[kind]), len(lost_before_kill[kind]),
                                        _ranges(lost[kind])))
    if q2_dups:
        failures.append("q2: %d messages delivered more than once: %s"
                        % (len(q2_dups), ", ".join("%d x%d (epochs %s)" % (
                            s, sub.deliveries["q2"][s], sub.delivery_epochs["q2"][s])
                            for s in q2_dups[:10])))
    final_errors = check_retained(final_retained, final_acked, final_sent)
    for t in RET_TOPICS:
        if final_sent[t] >= 0 and final_retained.get(t) != final_sent[t]:
            final_errors.append("%s: retained %s at the end, last value v%d"
                                % (t, "v%d" % final_retained[t] if t in final_retained
                                   else "nothing", final_sent[t]))
    failures += retained_errors
    failures += ["at the end: " + e for e in sorted(set(final_errors))]
    if run.anomalies:
        failures.append("%d protocol anomalies: %s" % (len(run.anomalies),
                                                        "; ".join(run.anomalies[:10])))
    return {
        "broker": broker.kind,
        "seed": seed,
        "messages": messages,
        "kills": len(kill_log),
        "kill_log": kill_log,
        "acked": {k: len(v) for k, v in acked.items()},
        "acked_before_kill": acked_before_kill,
        "received": received,
        "lost": {k: len(v) for k, v in lost.items()},
        "lost_seqs": lost,
        "lost_detail": lost_detail,
        "q2_duplicates": len(q2_dups),
        "q2_duplicate_seqs": q2_dups,
        "q1_duplicates": len(q1_dups),
        "retained_checks": len(kill_log) + 1,
        "retained_errors": retained_errors + final_errors,
        "final_retained": final_retained,
        "anomalies": list(run.anomalies),
        "notes": dict(run.notes),
        "publisher_connects": pub.connects,
        "subscriber_connects": sub.connects,
        "subscriber_offline_periods": sub.offline_periods,
        "elapsed": elapsed,
        "failures": failures,
    }


def _ranges(seqs, limit=20):
    """[1,2,3,7] -> '1-3, 7' (first `limit` ranges)."""
    out = []
    seqs = sorted(seqs)
    i = 0
    while i < len(seqs) and len(out) < limit:
        j = i
        while j + 1 < len(seqs) and seqs[j + 1] == seqs[j] + 1:
            j += 1
        out.append(str(seqs[i]) if i == j else "%d-%d" % (seqs[i], seqs[j]))
        i = j + 1
    if i < len(seqs):
        out.append("...")
    return ", ".join(out)


def summary(res):
    lines = [
        "broker %s, seed %d, %d messages per stream, %d kills, %.1fs"
        % (res["broker"], res["seed"], res["messages"], res["kills"], res["elapsed"]),
    ]
    for kind, name in (("q1", "QoS 1"), ("q2", "QoS 2")):
        lines.append("  %s: acknowledged %d (%d before a kill), received %d distinct, lost %d%s"
                     % (name, res["acked"][kind], res["acked_before_kill"][kind],
                        res["received"][kind], res["lost"][kind],
                        (", duplicated %d" % res["q2_duplicates"]) if kind == "q2"
                        else (", redelivered %d (allowed)" % res["q1_duplicates"])))
        if res["lost_seqs"][kind]:
            lines.append("    lost seq: %s" % _ranges(res["lost_seqs"][kind]))
    if res["lost_detail"]:
        lines.append("    e.g. " + "; ".join(res["lost_detail"][:4]))
    if res["q2_duplicate_seqs"]:
        lines.append("    QoS 2 duplicated seq: %s" % _ranges(res["q2_duplicate_seqs"]))
    lines.append("  retained: %d checks, %s; final %s"
                 % (res["retained_checks"],
                    "OK" if not res["retained_errors"] else
                    "%d errors: %s" % (len(res["retained_errors"]),
                                       "; ".join(res["retained_errors"][:6])),
                    " ".join("%s=v%d" % (t.rsplit("/", 1)[1], v)
                             for t, v in sorted(res["final_retained"].items()))))
    if res["kill_log"]:
        lines.append("  kills at plan position (in flight, subscriber): " + ", ".join(
            "%d (%d, %s)" % (k[1], k[3], "on" if k[4] else "off") for k in res["kill_log"]))
    lines.append("  connects: publisher %d, subscriber %d (offline %d times)"
                 % (res["publisher_connects"], res["subscriber_connects"],
                    res["subscriber_offline_periods"]))
    if res["notes"]:
        lines.append("  events: " + ", ".join("%s %d" % kv for kv in sorted(res["notes"].items())))
    if res["anomalies"]:
        lines.append("  anomalies (%d): %s" % (len(res["anomalies"]),
                                               "; ".join(res["anomalies"][:8])))
    lines.append("  RESULT: " + ("PASS" if not res["failures"] else "FAIL"))
    return "\n".join(lines)


# ---------------------------------------------------------------- pytest

def _env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


import pytest  # noqa: E402  (after the harness, which scripts/crash-test uses alone)


# "interval" and "none" fsync later, but their writes reach the operating system
# before the acknowledgement: killing the process must lose nothing either.
@pytest.mark.moat_only
@pytest.mark.parametrize("durability", ["sync", "interval", "none"])
def test_sigkill_loses_no_acknowledged_message(tmp_path, durability):
    moatd = resolve_moatd()
    if not (os.path.isfile(moatd) and os.access(moatd, os.X_OK)):
        pytest.skip("moatd binary not found at %s (set MOATD)" % moatd)
    seed = _env_int("MOAT_CRASH_SEED", random.SystemRandom().randrange(1, 2 ** 31))
    messages = _env_int("MOAT_CRASH_MESSAGES", max(200, int(1200 / max(SCALE, 1.0))))
    kills = _env_int("MOAT_CRASH_KILLS", 5)
    print("MOAT_CRASH_SEED=%d (set it to replay the same kill points)" % seed)
    broker = BrokerProc("moatd", tmp_path / "moatd", durability=durability, moatd=moatd)
    try:
        res = run_crash(broker, messages, kills, seed)
        print(summary(res))
        rc = broker.terminate()
        assert rc == 0, "moatd exit status after SIGTERM: %s; log:\n%s" % (rc, broker.log_tail())
        src, out = broker.check_store()
        print(out)
        if res["failures"]:
            print("---- moatd warnings/errors over all epochs ----")
            print("\n".join(broker.grep_logs(r" (warn|error) ", 60)))
            print("---- last epoch log tail ----")
            print(broker.log_tail(80))
        assert not res["failures"], "seed %d:\n%s" % (seed, "\n".join(res["failures"]))
        assert res["kills"] == kills
        assert src == 0, "moatd --check-store exit %d:\n%s" % (src, out)
        # Everything was acknowledged end to end: nothing may stay queued.
        assert re.search(r"queued messages 0 \(0 in flight\)", out), out
        assert re.search(r"QoS 2 ids awaiting PUBREL 0", out), out
    finally:
        broker.cleanup()
