"""Message ordering across broker threads [MQTT-4.6.0-6] (threads = 2).

Each publisher sends numbered QoS 1 messages ("pubid:seq") with a window of
unacknowledged PUBLISHes; each subscriber acknowledges everything and checks
that, per publisher, the sequence is complete, strictly increasing and free of
duplicates."""

import os
import threading
import time

import pytest

import mqttraw
from util import fnv1a64, loop_of, scaled, uniq, uniq_on_loop

pytestmark = [pytest.mark.threaded]

WINDOW = 64  # outbound QoS 1 PUBLISHes a publisher keeps unacknowledged
LOOPS = 2  # the brokers here run 2 event loops; a client's loop is loop_of(id)


def test_loop_of_matches_broker_hash():
    """util.loop_of is broker::shard_of: FNV-1a 64 (published test vectors)
    modulo the loop count, so the placement asserted below is the broker's."""
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8
    assert [loop_of(s, 2) for s in ("", "a", "foobar")] == [1, 0, 0]
    assert loop_of("foobar", 3) == 0x85944171F73967E8 % 3
    assert loop_of("anything", 1) == 0


def _ids(prefix, loops):
    """Client identifiers owned by the given event loops, in that order."""
    ids = [uniq_on_loop(prefix, loop, LOOPS) for loop in loops]
    assert [loop_of(cid, LOOPS) for cid in ids] == list(loops)
    return ids


def _broker(start_broker):
    # Large queue: a slow Python subscriber must not make the broker drop.
    return start_broker(threads=LOOPS, max_queued_messages=200000,
                        log_level=os.environ.get("MOAT_ORDERING_LOG_LEVEL", "info"))


class Publisher(threading.Thread):
    def __init__(self, broker, pubid, topic, count, deadline, client_id=None):
        super().__init__(daemon=True)
        self.broker, self.pubid, self.topic, self.count = broker, pubid, topic, count
        self.client_id = client_id or uniq("pub%d-" % pubid)
        self.deadline = deadline
        self.error = None
        self.sent = 0
        self.acked = 0

    def run(self):
        try:
            c = mqttraw.Client(self.broker.host, self.broker.port, timeout=scaled(10),
                               name="pub%d" % self.pubid)
            c.connect(self.client_id)
            outstanding = set()
            seq = 0
            while self.acked < self.count:
                batch = []
                while seq < self.count and len(outstanding) < WINDOW:
                    pid = seq % 65535 + 1
                    batch.append(mqttraw.publish(self.topic, "%d:%d" % (self.pubid, seq),
                                                 qos=1, pid=pid))
                    outstanding.add(pid)
                    seq += 1
                if batch:
                    c.send(b"".join(batch))
                    self.sent = seq
                left = self.deadline - time.monotonic()
                assert left > 0, "publisher %d: out of time" % self.pubid
                pkt = c.recv_packet(left)
                assert pkt.type == mqttraw.PUBACK, "publisher %d got %r" % (self.pubid, pkt)
                pid = mqttraw.packet_id(pkt)
                assert pid in outstanding, "publisher %d: PUBACK for unknown id %d" % (self.pubid, pid)
                outstanding.remove(pid)
                self.acked += 1
            c.disconnect()
        except BaseException as e:  # reported by the main thread
            self.error = e


class Subscriber(threading.Thread):
    def __init__(self, broker, subid, filters, expected_total, deadline,
                 client_id=None, clean_session=True):
        super().__init__(daemon=True)
        self.broker, self.subid, self.expected_total = broker, subid, expected_total
        self.deadline = deadline
        self.error = None
        self.seqs = {}  # pubid -> list of seq in arrival order
        self.received = 0
        self.ready = threading.Event()
        self.c = mqttraw.Client(broker.host, broker.port, timeout=scaled(10),
                                name="sub%d" % subid)
        sp = self.c.connect(client_id or uniq("sub%d-" % subid), clean_session=clean_session)
        if filters:
            assert self.c.subscribe(filters) == [q for _, q in filters]
        else:
            assert sp, "expected a stored session"

    def run(self):
        c = self.c
        try:
            buf = c.buf  # may already hold PUBLISHes that came right after CONNACK
            # PUBLISHes stashed while waiting for the SUBACK come first.
            stashed = b"".join(mqttraw.packet(p.type, p.flags, p.body) for p in c.pending)
            c.pending.clear()
            buf[0:0] = stashed
            while True:
                pos = 0
                acks = []
                view = memoryview(buf)
                try:
                    while True:
                        pkt, n = mqttraw.try_parse(view[pos:])
                        if pkt is None:
                            break
                        pos += n
                        assert pkt.type == mqttraw.PUBLISH, "subscriber %d got %r" % (
                            self.subid, pkt)
                        p = mqttraw.decode_publish(pkt)
                        assert p.qos == 1, "subscriber %d: %r" % (self.subid, p)
                        assert not p.dup, "subscriber %d: unexpected DUP %r" % (self.subid, p)
                        pubid, seq = (int(x) for x in p.payload.decode().split(":"))
                        self.seqs.setdefault(pubid, []).append(seq)
                        self.received += 1
                        acks.append(mqttraw.puback(p.pid))
                finally:
                    view.release()
                del buf[:pos]
                if acks:
                    c.send(b"".join(acks))
                if self.received >= self.expected_total:
                    break
                left = self.deadline - time.monotonic()
                assert left > 0, "subscriber %d: out of time after %d/%d messages" % (
                    self.subid, self.received, self.expected_total)
                data = mqttraw._recv_some(c.sock, min(left, 1.0))
                if data is None:
                    continue
                assert data != b"", "subscriber %d: connection closed" % self.subid
                buf += data
            c.disconnect()
        except BaseException as e:
            self.error = e

    def check(self, pubids, count):
        problems = []
        for pubid in pubids:
            seqs = self.seqs.get(pubid, [])
            if seqs == list(range(count)):
                continue
            seen = set()
            for i, s in enumerate(seqs):
                if s in seen:
                    problems.append("pub %d: duplicate seq %d at position %d" % (pubid, s, i))
                    break
                if i and s <= seqs[i - 1]:
                    problems.append("pub %d: seq %d after %d (position %d)" % (
                        pubid, s, seqs[i - 1], i))
                    break
                seen.add(s)
            missing = sorted(set(range(count)) - set(seqs))
            if missing:
                problems.append("pub %d: %d missing (first %s)" % (pubid, len(missing), missing[:5]))
        return problems


def _run(broker, pub_specs, sub_specs, count, total_time=60, pub_ids=None, sub_ids=None):
    """pub_specs: list of (pubid, topic); sub_specs: list of (filters, [pubids it should see]);
    pub_ids / sub_ids: client identifiers (default: random, so random loops)."""
    deadline = time.monotonic() + scaled(total_time)
    sub_ids = sub_ids or [None] * len(sub_specs)
    pub_ids = pub_ids or [None] * len(pub_specs)
    subs = [Subscriber(broker, i, filters, count * len(pubids), deadline, client_id=cid)
            for i, ((filters, pubids), cid) in enumerate(zip(sub_specs, sub_ids))]
    pubs = [Publisher(broker, pubid, topic, count, deadline, client_id=cid)
            for (pubid, topic), cid in zip(pub_specs, pub_ids)]
    for t in subs + pubs:
        t.start()
    for t in pubs + subs:
        t.join(max(deadline - time.monotonic(), 0) + 5)
    stuck = [t for t in pubs + subs if t.is_alive()]
    errors = ["%s: %r" % (t.name, t.error) for t in pubs + subs if t.error]
    progress = ["pub%d sent %d acked %d" % (p.pubid, p.sent, p.acked) for p in pubs] + [
        "sub%d received %d/%d" % (s.subid, s.received, s.expected_total) for s in subs]
    assert not stuck and not errors, "errors %s; stuck %s; progress: %s" % (
        errors, [t.name for t in stuck], progress)
    problems = []
    for s, (_, pubids) in zip(subs, sub_specs):
        problems += ["sub%d %s" % (s.subid, p) for p in s.check(pubids, count)]
    assert not problems, "\n".join(problems[:40])
    assert broker.alive()


def test_fan_in(start_broker):
    """8 publishers -> 1 subscriber on one topic, 2000 QoS 1 messages each;
    the subscriber on loop 0, the publishers 4 on each loop (so half of them
    deliver across loops)."""
    broker = _broker(start_broker)
    topic = uniq("ord/in/")
    pub_ids = _ids("pub-", [0, 1] * 4)
    sub_ids = _ids("sub-", [0])
    _run(broker, [(i, topic) for i in range(8)], [([(topic, 1)], list(range(8)))], 2000,
         pub_ids=pub_ids, sub_ids=sub_ids)


def test_fan_out(start_broker):
    """1 publisher -> 8 subscribers, 2000 QoS 1 messages; the publisher on
    loop 1, the subscribers 4 on each loop."""
    broker = _broker(start_broker)
    topic = uniq("ord/out/")
    pub_ids = _ids("pub-", [1])
    sub_ids = _ids("sub-", [0, 1] * 4)
    _run(broker, [(0, topic)], [([(topic, 1)], [0]) for _ in range(8)], 2000,
         pub_ids=pub_ids, sub_ids=sub_ids)


def test_mix(start_broker):
    """4 publishers on their own topics -> 4 subscribers using different
    filters (`+`, `#`, exact topics, overlapping), 1500 messages each."""
    broker = _broker(start_broker)
    base = uniq("ord/mix")
    pubs = [(i, "%s/p%d" % (base, i)) for i in range(4)]
    subs = [
        ([(base + "/+", 1)], [0, 1, 2, 3]),
        ([(base + "/#", 1)], [0, 1, 2, 3]),
        ([(base + "/p0", 1), (base + "/p2", 1)], [0, 2]),
        ([(base + "/#", 1), (base + "/p1", 1), (base + "/p3", 1)], [0, 1, 2, 3]),
    ]
    _run(broker, pubs, subs, 1500)


def test_offline_queue_keeps_order(start_broker):
    """A persistent subscriber is offline while 4 publishers send 500 QoS 1
    messages each; on reconnect each publisher's sequence arrives complete
    and in order."""
    broker = _broker(start_broker)
    topic = uniq("ord/offline/")
    cid = uniq("ord-offline")
    first = mqttraw.Client(broker.host, broker.port, timeout=scaled(10), name="first")
    first.connect(cid, clean_session=False)
    first.subscribe([(topic, 1)])
    first.disconnect()
    deadline = time.monotonic() + scaled(60)
    pubs = [Publisher(broker, i, topic, 500, deadline) for i in range(4)]
    for p in pubs:
        p.start()
    for p in pubs:
        p.join(max(deadline - time.monotonic(), 0) + 5)
        assert not p.is_alive() and p.error is None, (p.name, p.error, p.sent, p.acked)
    sub = Subscriber(broker, 0, None, 2000, deadline, client_id=cid, clean_session=False)
    sub.start()
    sub.join(max(deadline - time.monotonic(), 0) + 5)
    assert not sub.is_alive() and sub.error is None, (sub.error, sub.received)
    problems = sub.check(range(4), 500)
    assert not problems, "\n".join(problems)
