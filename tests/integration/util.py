"""Shared helpers: timeout scaling, paho wrapper, mosquitto_* client wrappers,
and broker health checks."""

import itertools
import json
import os
import queue
import subprocess
import threading
import time

import mqttraw

SCALE = float(os.environ.get("MOAT_TEST_TIMEOUT_SCALE", "1") or "1")

_uniq = itertools.count(1)


def scaled(seconds):
    return seconds * SCALE


def uniq(prefix="t"):
    """A name unique within this test process."""
    return "%s%d-%d" % (prefix, os.getpid(), next(_uniq))


def raw(broker, name="raw", timeout=10.0):
    return mqttraw.Client(broker.host, broker.port, timeout=scaled(timeout), name=name)


def raw_connected(broker, client_id=None, name=None, **kw):
    c = raw(broker, name=name or client_id or "raw")
    c.connect(client_id if client_id is not None else uniq("c"), **kw)
    return c


def collect_until(client, sentinel_topic, timeout=10.0, ack=True):
    """Receive PUBLISH packets until one on `sentinel_topic` arrives; returns
    the publishes received before it. Used to prove absence of a delivery
    without sleeping: the sentinel is published after the thing that must
    not be delivered."""
    deadline = time.monotonic() + scaled(timeout)
    got = []
    while True:
        left = deadline - time.monotonic()
        pkt = client.recv_packet(max(left, 0.001))
        assert pkt.type == mqttraw.PUBLISH, "expected PUBLISH, got %r" % (pkt,)
        pub = mqttraw.decode_publish(pkt)
        if ack:
            client.ack(pub)
        if pub.topic == sentinel_topic:
            return got
        got.append(pub)


def roundtrip(broker, qos=1):
    """Fresh subscriber + publisher; asserts one message goes through.
    Also asserts the broker process is still alive."""
    assert broker.alive(), "broker process died; log tail:\n" + "\n".join(broker.logs[-40:])
    topic = uniq("health/")
    with raw_connected(broker, name="health-sub") as sub, \
            raw_connected(broker, name="health-pub") as pub:
        assert sub.subscribe([(topic, qos)]) == [qos]
        pub.publish(topic, b"ping", qos=qos)
        got = sub.recv_publish()
        assert (got.topic, got.payload, got.qos) == (topic, b"ping", qos)
        sub.disconnect()
        pub.disconnect()
    assert broker.alive()


# ---------------------------------------------------------------- paho

class Paho:
    """paho-mqtt 1.6 client on its own network thread with bounded waits."""

    def __init__(self, broker, client_id="", clean_session=True, keepalive=60,
                 will=None, username=None, password=None):
        import paho.mqtt.client as mqtt
        self.mqtt = mqtt
        self.c = mqtt.Client(client_id=client_id, clean_session=clean_session,
                             protocol=mqtt.MQTTv311,
                             reconnect_on_failure=False)  # never reconnect silently
        if will is not None:
            self.c.will_set(*will)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None
        self.subacks = {}
        self._sub_cond = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = self._on_subscribe
        self.c.connect("127.0.0.1" if broker.host is None else broker.host,
                       broker.port, keepalive)
        self.c.loop_start()
        assert self.connected.wait(scaled(10)), "paho: no CONNACK"
        assert self.connack[1] == 0, "paho: CONNACK rc %s" % (self.connack,)

    def _on_connect(self, c, u, flags, rc):
        self.connack = (flags.get("session present", 0), rc)
        self.connected.set()

    def _on_disconnect(self, c, u, rc):
        self.disconnected.set()

    def _on_subscribe(self, c, u, mid, granted):
        with self._sub_cond:
            self.subacks[mid] = granted
            self._sub_cond.notify_all()

    def subscribe(self, topics):
        """topics: list of (filter, qos). Returns granted QoS list."""
        rc, mid = self.c.subscribe(topics)
        assert rc == 0
        with self._sub_cond:
            ok = self._sub_cond.wait_for(lambda: mid in self.subacks, scaled(10))
            assert ok, "paho: no SUBACK"
            return list(self.subacks[mid])

    def publish(self, topic, payload, qos=0, retain=False, wait=True):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        if wait:
            info.wait_for_publish(scaled(10))
            assert info.is_published(), "paho: publish not acknowledged"
        return info

    def get(self, timeout=10.0):
        try:
            return self.messages.get(timeout=scaled(timeout))
        except queue.Empty:
            raise AssertionError("paho: no message within %.1fs" % scaled(timeout))

    def close(self):
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


# ---------------------------------------------------------------- mosquitto_* tools

class LineProc:
    """A subprocess whose stdout+stderr lines are collected by a thread."""

    def __init__(self, argv):
        self.argv = argv
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for raw_line in iter(self.proc.stdout.readline, b""):
            with self.cond:
                self.lines.append(raw_line.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, substring, timeout=10.0):
        deadline = time.monotonic() + scaled(timeout)
        with self.cond:
            while True:
                for line in self.lines:
                    if substring in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.t.is_alive()):
                    raise AssertionError("%s: no line containing %r; output:\n%s"
                                         % (self.argv[0], substring, "\n".join(self.lines)))
                self.cond.wait(min(left, 0.2))

    def wait_exit(self, timeout=10.0):
        try:
            rc = self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("%s did not exit; output:\n%s" % (self.argv, self.output()))
        self.t.join(5)
        return rc

    def output(self):
        with self.cond:
            return "\n".join(self.lines)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def mosquitto_sub(broker, topic, qos=0, count=1, wait=10, extra=()):
    """Start mosquitto_sub -d -v and wait until its SUBACK was received."""
    # stdbuf: mosquitto_sub block-buffers stdout on a pipe; we need its lines live.
    argv = ["stdbuf", "-oL", "mosquitto_sub", "-d", "-v", "-h", broker.host, "-p", str(broker.port),
            "-t", topic, "-q", str(qos), "-C", str(count), "-W", str(int(scaled(wait)) + 1)]
    argv += list(extra)
    p = LineProc(argv)
    p.wait_line("Subscribed (mid:")
    return p


def mosquitto_pub(broker, topic, message=None, qos=0, retain=False, null=False, extra=()):
    argv = ["mosquitto_pub", "-d", "-h", broker.host, "-p", str(broker.port),
            "-t", topic, "-q", str(qos)]
    if retain:
        argv.append("-r")
    if null:
        argv.append("-n")
    else:
        argv += ["-m", message]
    argv += list(extra)
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=scaled(15))
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, "mosquitto_pub failed (%d):\n%s" % (r.returncode, out)
    return out


# The audit log ([log] audit, docs/audit.md): JSON lines written by the broker.
def audit_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line]


def wait_audit(path, pred, timeout=10.0, what="audit line", count=1):
    """The audit lines that satisfy `pred`, once there are at least `count`."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        lines = audit_lines(path)
        found = [e for e in lines if pred(e)]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("no %s within %.1fs; audit:\n%s" % (
                what, scaled(timeout), "\n".join(json.dumps(e) for e in lines)))
        time.sleep(0.02)  # polling a file written by the broker's audit thread


# ---------------------------------------------------------------- event loops

def fnv1a64(data):
    """64-bit FNV-1a of `data` (bytes), as src/broker/shard.cpp computes it."""
    h = 14695981039346656037
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def loop_of(client_id, n):
    """The event loop (shard) that owns `client_id` in a broker with `n` loops:
    broker::shard_of, FNV-1a of the identifier's bytes modulo n."""
    if n <= 1:
        return 0
    return fnv1a64(client_id.encode("utf-8")) % n


def uniq_on_loop(prefix, loop, n):
    """A uniq() client identifier owned by event loop `loop` of `n`."""
    while True:
        cid = uniq(prefix)
        if loop_of(cid, n) == loop:
            return cid
