"""QoS 0/1/2 delivery: mosquitto clients, paho, and raw sockets."""

import random
import re
import socket
import time

import pytest

import mqttraw
from util import Paho, collect_until, mosquitto_pub, mosquitto_sub, raw_connected, scaled, uniq

# Every integration broker runs 2 event loops: the whole file runs under TSan too.
pytestmark = [pytest.mark.threaded]

RX_RECV_PUBLISH = re.compile(r"received PUBLISH \(d(\d), q(\d), r(\d), m(\d+), '([^']*)'")


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_roundtrip_mosquitto_clients(broker, qos):
    """[MQTT-4.3] QoS 0/1/2 flows end to end with Debian's mosquitto_pub/mosquitto_sub."""
    topic = uniq("qos/mq/")
    sub = mosquitto_sub(broker, topic, qos=qos, count=3)
    try:
        assert "Subscribed (mid: 1): %d" % qos in sub.output()
        for i in range(3):
            out = mosquitto_pub(broker, topic, "msg%d" % i, qos=qos)
            if qos == 1:
                assert "received PUBACK" in out, out
            if qos == 2:
                assert "received PUBREC" in out and "received PUBCOMP" in out, out
        rc = sub.wait_exit(15)
        out = sub.output()
        assert rc == 0, out
    finally:
        sub.kill()
    lines = [l for l in out.splitlines() if l.startswith(topic + " ")]
    assert lines == ["%s msg%d" % (topic, i) for i in range(3)], out
    pubs = RX_RECV_PUBLISH.findall(out)
    assert len(pubs) == 3, out
    for dup, q, retain, _mid, t in pubs:
        assert (dup, int(q), retain, t) == ("0", qos, "0", topic), out
    if qos == 2:
        assert out.count("received PUBREL") == 3, out


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_roundtrip_paho(broker, qos):
    """paho publisher -> paho subscriber, 50 messages, QoS preserved, in order."""
    topic = uniq("qos/paho/")
    sub = Paho(broker, client_id=uniq("psub"))
    pub = Paho(broker, client_id=uniq("ppub"))
    try:
        assert sub.subscribe([(topic, qos)]) == [qos]
        for i in range(50):
            pub.publish(topic, "m%d" % i, qos=qos, wait=(qos > 0))
        got = [sub.get() for _ in range(50)]
        assert [m.payload for m in got] == [b"m%d" % i for i in range(50)]
        assert all(m.topic == topic and m.qos == qos and not m.retain for m in got)
    finally:
        sub.close()
        pub.close()


@pytest.mark.parametrize("sub_qos", [0, 1, 2])
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
def test_qos_downgrade(broker, sub_qos, pub_qos):
    """[MQTT-3.8.4-6] delivered QoS = min(published QoS, granted QoS); raw
    subscriber checks the exact PUBLISH flags (and no packet id for QoS 0)."""
    topic = uniq("qos/down/")
    with raw_connected(broker, name="sub") as sub, raw_connected(broker, name="pub") as pub:
        assert sub.subscribe([(topic, sub_qos)]) == [sub_qos]
        pub.publish(topic, b"payload", qos=pub_qos)
        pkt = sub.recv_packet()
        assert pkt.type == mqttraw.PUBLISH
        p = mqttraw.decode_publish(pkt)
        want = min(sub_qos, pub_qos)
        assert p.qos == want, pkt
        assert (p.topic, p.payload, p.retain, p.dup) == (topic, b"payload", False, False), pkt
        if want == 0:
            assert p.pid is None and len(pkt.body) == 2 + len(topic) + 7, pkt
        else:
            assert p.pid != 0, "[MQTT-2.3.1-1] packet id must be non-zero"
        sub.ack(p)


def test_qos_downgrade_mosquitto_clients(broker):
    """sub QoS 0, pub QoS 2 -> delivered with QoS 0 (seen by mosquitto_sub -d)."""
    topic = uniq("qos/down-mq/")
    sub = mosquitto_sub(broker, topic, qos=0, count=1)
    try:
        mosquitto_pub(broker, topic, "hi", qos=2)
        assert sub.wait_exit(15) == 0, sub.output()
    finally:
        sub.kill()
    pubs = RX_RECV_PUBLISH.findall(sub.output())
    assert [(q, t) for _, q, _, _, t in pubs] == [("0", topic)], sub.output()


@pytest.mark.parametrize("one_packet", [True, False], ids=["one-subscribe", "two-subscribes"])
def test_overlapping_subscriptions_one_copy_highest_qos(broker, one_packet):
    """Overlapping `a/#` (QoS 0) and `a/b` (QoS 2): exactly ONE copy, at QoS 2
    ([MQTT-3.3.5-1]: delivered respecting the maximum QoS of all matching
    subscriptions)."""
    base = uniq("ov")
    with raw_connected(broker, name="sub") as sub, raw_connected(broker, name="pub") as pub:
        subs = [(base + "/#", 0), (base + "/b", 2)]
        if one_packet:
            assert sub.subscribe(subs) == [0, 2]
        else:
            assert sub.subscribe([subs[0]]) == [0]
            assert sub.subscribe([subs[1]]) == [2]
        pub.publish(base + "/b", b"x", qos=2)
        pub.publish(base + "/zz-sentinel", b"end", qos=2)
        got = collect_until(sub, base + "/zz-sentinel")
        assert [(p.topic, p.payload, p.qos) for p in got] == [(base + "/b", b"x", 2)], got


def test_overlapping_subscriptions_paho(broker):
    """Same as above with paho: one message, QoS 2 (QoS 1 publish -> QoS 1)."""
    base = uniq("ovp")
    sub = Paho(broker, client_id=uniq("psub"))
    pub = Paho(broker, client_id=uniq("ppub"))
    try:
        assert sub.subscribe([(base + "/#", 0), (base + "/b", 2),
                              (base + "-sentinel", 2)]) == [0, 2, 2]
        pub.publish(base + "/b", "x", qos=2)
        pub.publish(base + "/b", "y", qos=1)
        # paho hands QoS 2 messages over on PUBREL, so compare as a set and use
        # a QoS 2 sentinel (its PUBREL comes after the one for "x").
        pub.publish(base + "-sentinel", "end", qos=2)
        got = []
        while True:
            m = sub.get()
            if m.topic == base + "-sentinel":
                break
            got.append((m.topic, m.payload, m.qos))
        assert sorted(got) == [(base + "/b", b"x", 2), (base + "/b", b"y", 1)]
    finally:
        sub.close()
        pub.close()


@pytest.mark.parametrize("wait_first_pubrec", [True, False])
def test_qos2_exactly_once_with_dup_resend(broker, wait_first_pubrec):
    """[MQTT-4.3.3-2] A QoS 2 PUBLISH re-sent with DUP=1 (same packet id) before
    PUBREL must not be delivered twice: the receiver answers PUBREC each time
    and the subscriber gets exactly one copy."""
    topic = uniq("qos2/once/")
    sentinel = topic + "/sentinel"
    with raw_connected(broker, name="sub") as sub, raw_connected(broker, name="pub") as pub:
        assert sub.subscribe([(topic, 2), (sentinel, 2)]) == [2, 2]
        pid = 4242
        pub.send(mqttraw.publish(topic, b"once", qos=2, pid=pid))
        if wait_first_pubrec:
            rec = pub.expect(mqttraw.PUBREC, flags=0)
            assert mqttraw.packet_id(rec) == pid
        pub.send(mqttraw.publish(topic, b"once", qos=2, pid=pid, dup=True))
        for _ in range(1 if wait_first_pubrec else 2):
            rec = pub.expect(mqttraw.PUBREC, flags=0)
            assert mqttraw.packet_id(rec) == pid
        pub.send(mqttraw.pubrel(pid))
        comp = pub.expect(mqttraw.PUBCOMP, flags=0)
        assert mqttraw.packet_id(comp) == pid
        # After PUBCOMP the same packet id is a new message [MQTT-4.3.3-2].
        pub.publish(topic, b"second", qos=2, pid=pid)
        pub.publish(sentinel, b"end", qos=2)
        got = collect_until(sub, sentinel)
        assert [(p.payload, p.qos, p.dup) for p in got] == [(b"once", 2, False),
                                                             (b"second", 2, False)], got


@pytest.mark.parametrize("qos", [1, 2])
def test_incoming_dup_delivered_with_dup_0(broker, qos):
    """[MQTT-3.3.1-3] the DUP flag of an incoming PUBLISH is not propagated:
    the broker sends the message on to subscribers with DUP=0."""
    topic = uniq("qos/dup/")
    with raw_connected(broker, name="sub") as sub, raw_connected(broker, name="pub") as pub:
        assert sub.subscribe([(topic, qos)]) == [qos]
        pid = 77
        pub.send(mqttraw.publish(topic, b"first-send-with-dup", qos=qos, pid=pid, dup=True))
        ack = pub.expect(mqttraw.PUBACK if qos == 1 else mqttraw.PUBREC, flags=0)
        assert mqttraw.packet_id(ack) == pid
        if qos == 2:
            pub.send(mqttraw.pubrel(pid))
            assert mqttraw.packet_id(pub.expect(mqttraw.PUBCOMP, flags=0)) == pid
        p = sub.recv_publish()
        assert (p.payload, p.qos, p.dup) == (b"first-send-with-dup", qos, False), p
        sub.finish_qos2()


def test_qos1_packet_id_reused_after_puback_is_new_message(broker):
    """[MQTT-4.3.2-2] receiver rules: once the PUBACK is sent, a PUBLISH with
    the same packet id is a new publication, delivered again, even with
    DUP=1 and the same payload."""
    topic = uniq("qos1/reuse/")
    sentinel = topic + "/sentinel"
    with raw_connected(broker, name="sub") as sub, raw_connected(broker, name="pub") as pub:
        assert sub.subscribe([(topic, 1), (sentinel, 1)]) == [1, 1]
        pid = 9
        for dup in (False, False, True):
            pub.send(mqttraw.publish(topic, b"same", qos=1, pid=pid, dup=dup))
            assert mqttraw.packet_id(pub.expect(mqttraw.PUBACK, flags=0)) == pid
        pub.publish(sentinel, b"end", qos=1)
        got = collect_until(sub, sentinel)
        assert [(p.payload, p.qos, p.dup) for p in got] == [(b"same", 1, False)] * 3, got


def test_qos1_puback_carries_packet_id(broker):
    """[MQTT-4.3.2-2] PUBACK with the PUBLISH's packet id, for several in flight."""
    topic = uniq("qos1/pid/")
    with raw_connected(broker, name="pub") as pub:
        pids = [7, 65535, 1, 300]
        for pid in pids:
            pub.send(mqttraw.publish(topic, b"x", qos=1, pid=pid))
        acks = [mqttraw.packet_id(pub.expect(mqttraw.PUBACK, flags=0)) for _ in pids]
        assert acks == pids


def test_raw_subscriber_qos2_flow(broker):
    """Outbound QoS 2: PUBLISH -> PUBREC -> PUBREL(flags 0010) -> PUBCOMP, and
    the broker does not resend the PUBLISH afterwards."""
    topic = uniq("qos2/out/")
    with raw_connected(broker, name="sub") as sub, raw_connected(broker, name="pub") as pub:
        sub.subscribe([(topic, 2)])
        pub.publish(topic, b"a", qos=2)
        pkt = sub.expect(mqttraw.PUBLISH)
        p = mqttraw.decode_publish(pkt)
        assert (p.qos, p.dup, p.retain, p.payload) == (2, False, False, b"a")
        sub.send(mqttraw.pubrec(p.pid))
        rel = sub.expect(mqttraw.PUBREL, flags=0x02)
        assert mqttraw.packet_id(rel) == p.pid
        sub.send(mqttraw.pubcomp(p.pid))
        pub.publish(topic, b"b", qos=0)
        nxt = mqttraw.decode_publish(sub.expect(mqttraw.PUBLISH))
        assert (nxt.payload, nxt.qos) == (b"b", 0)


def test_stalled_reader_gets_every_byte(start_broker):
    """A subscriber that stops reading makes the broker's gather writes stop
    part-way through a message (its socket buffers are full); when it reads
    again, the writes resume at the right byte. Every message arrives whole,
    QoS 0, 1 and 2 mixed, with sizes around the remaining-length boundaries,
    each QoS in publishing order [MQTT-4.6.0-6]."""
    broker = start_broker(max_queued_messages=5000, max_inflight_messages=20)
    topic = uniq("stall/")
    sub = mqttraw.Client(broker.host, broker.port, name="stalled")
    # A fixed receive buffer (no autotuning up to tens of MB), still several
    # times loopback's 64 KB segment so the transfer does not crawl.
    sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sub.connect(uniq("stalled-"))
    assert sub.subscribe([(topic, 2)]) == [2]
    sizes = [0, 1, 121, 122, 123, 124, 125, 126, 127, 128, 16375, 16376, 16377, 16378, 65536, 300000]
    sent = []  # (qos, payload)
    pub = mqttraw.Client(broker.host, broker.port, name="pub")
    pub.connect(uniq("pub-"))
    # Every (QoS, size) pair 3 times, then 20 large QoS 0 messages: the QoS 0
    # bytes alone (about 8 MB) are more than the socket buffers between the two
    # hold (the broker's send buffer grows to 4 MB at most).
    plan = [(n % 3, sizes[n % len(sizes)]) for n in range(len(sizes) * 9)] + [(0, 400000)] * 20
    for n, (qos, size) in enumerate(plan):
        payload = (b"%06d:" % n + random.Random(n).randbytes(size))[:size]
        pub.publish(topic, payload, qos=qos)
        sent.append((qos, payload))
    pub.disconnect()
    # Only now does the subscriber read.
    got = {0: [], 1: [], 2: []}
    want = {q: [p for qq, p in sent if qq == q] for q in (0, 1, 2)}
    deadline = time.monotonic() + scaled(60)
    while sum(len(v) for v in got.values()) < len(sent):
        left = deadline - time.monotonic()
        assert left > 0, "got %s of %s" % ({q: len(v) for q, v in got.items()},
                                           {q: len(v) for q, v in want.items()})
        p = sub.recv_publish(timeout=left)
        assert p.topic == topic and not p.retain, p
        got[p.qos].append(p.payload)
    sub.finish_qos2()
    for q in (0, 1, 2):
        assert len(got[q]) == len(want[q]), q
        for k, (a, b) in enumerate(zip(got[q], want[q])):
            assert a == b, "QoS %d message %d: %d bytes %r... instead of %d bytes %r..." % (
                q, k, len(a), a[:12], len(b), b[:12])
    sub.disconnect()
    assert broker.alive()


def test_subscription_reaches_every_loop_before_its_suback(broker):
    """Once a client has its SUBACK, a message published by another client on
    any event loop reaches it, even while the store has commits in flight: the
    subscription is in every loop's index before the SUBACK leaves. A durable
    subscriber fed a QoS 1 stream keeps both loops committing meanwhile."""
    import threading

    load_topic = uniq("qos/load/")
    durable = raw_connected(broker, uniq("load-sub"), name="load-sub", clean_session=False)
    durable.subscribe([(load_topic, 1)])
    stop = threading.Event()
    errors = []

    def load():
        try:
            with raw_connected(broker, name="load-pub") as pub:
                deadline = time.monotonic() + scaled(60)
                while not stop.is_set() and time.monotonic() < deadline:
                    pub.publish(load_topic, b"x" * 100, qos=1)
        except Exception as e:  # reported below
            errors.append(e)

    def drain():
        try:
            while not stop.is_set():
                try:
                    durable.recv_publish(timeout=0.5)
                except TimeoutError:
                    pass
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=load), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    try:
        for i in range(40):  # client ids hash to either loop: both pairings occur
            topic = uniq("qos/fresh/")
            with raw_connected(broker, name="fresh-sub") as sub, raw_connected(broker, name="fresh-pub") as pub:
                assert sub.subscribe([(topic, 0)]) == [0]
                pub.publish(topic, b"%d" % i, qos=0)
                got = sub.recv_publish(timeout=scaled(5))
                assert (got.topic, got.payload) == (topic, b"%d" % i)
                sub.disconnect()
                pub.disconnect()
    finally:
        stop.set()
        for t in threads:
            t.join(scaled(15))
        durable.close()
    assert not errors, errors
