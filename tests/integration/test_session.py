"""Persistent sessions, redelivery, takeover, client ids, session limits.

[MQTT-3.1.2-4 .. -6], [MQTT-3.2.2-1 .. -3], [MQTT-4.4.0-1], [MQTT-3.1.4-2],
[MQTT-3.1.3-7 .. -9]."""

import threading
import time

import pytest

import mqttraw
from conftest import DEFAULTS, MOATD, Broker, moat_config
from util import collect_until, loop_of, raw, raw_connected, scaled, uniq, uniq_on_loop

pytestmark = pytest.mark.threaded


def _persistent(broker, cid, name="persistent", expect_sp=None, **kw):
    c = raw(broker, name=name)
    sp = c.connect(cid, clean_session=False, **kw)
    if expect_sp is not None:
        assert sp == expect_sp, "[MQTT-3.2.2-2/3] session-present %s, expected %s" % (sp, expect_sp)
    return c


def test_offline_messages_delivered_in_order_with_session_present(broker):
    """Clean session 0: subscriptions survive the disconnect, QoS 1 and 2
    messages published meanwhile are delivered on reconnect, in order, with
    session-present 1 [MQTT-3.1.2-4][MQTT-3.1.2-5][MQTT-3.2.2-2]."""
    cid = uniq("sess")
    t1, t2 = uniq("sess/q1/"), uniq("sess/q2/")
    c = _persistent(broker, cid, expect_sp=False)
    assert c.subscribe([(t1, 1), (t2, 2)]) == [1, 2]
    c.disconnect()

    expected = []
    with raw_connected(broker, name="pub") as pub:
        for i in range(10):
            pub.publish(t1, b"a%d" % i, qos=1)
            expected.append((t1, b"a%d" % i, 1))
            pub.publish(t2, b"b%d" % i, qos=2)
            expected.append((t2, b"b%d" % i, 2))
        pub.publish(t2, b"c-qos1-on-qos2-sub", qos=1)
        expected.append((t2, b"c-qos1-on-qos2-sub", 1))

    c = _persistent(broker, cid, expect_sp=True)
    try:
        got = [c.recv_publish() for _ in expected]
        assert [(p.topic, p.payload, p.qos) for p in got] == expected
        assert all(not p.retain for p in got)
        c.finish_qos2()
        # the subscription is still in place for live traffic
        with raw_connected(broker, name="pub2") as pub:
            pub.publish(t1, b"live", qos=1)
        p = c.recv_publish()
        assert (p.topic, p.payload, p.dup) == (t1, b"live", False)
        c.disconnect()
    finally:
        c.close()


def test_clean_session_discards_old_session(broker):
    """Clean session 1 on reconnect discards the stored session: session-present
    0, none of the queued messages, no old subscription [MQTT-3.1.2-6]; and a
    later clean-session-0 connect starts fresh (session-present 0)."""
    cid = uniq("sess-clean")
    topic = uniq("sess/clean/")
    c = _persistent(broker, cid, expect_sp=False)
    c.subscribe([(topic, 1)])
    c.disconnect()
    with raw_connected(broker, name="pub") as pub:
        for i in range(5):
            pub.publish(topic, b"old%d" % i, qos=1)

    c = raw(broker, name="clean")
    try:
        assert c.connect(cid, clean_session=True) is False
        sentinel = uniq("sess/clean-end/")
        c.subscribe([(sentinel, 1)])
        with raw_connected(broker, name="pub") as pub:
            pub.publish(topic, b"new-not-subscribed", qos=1)
            pub.publish(sentinel, b"e", qos=1)
        assert collect_until(c, sentinel) == []
        c.disconnect()
    finally:
        c.close()

    c = _persistent(broker, cid, expect_sp=False)
    c.disconnect()


def test_unacked_qos1_resent_with_dup_on_reconnect(broker):
    """[MQTT-4.4.0-1][MQTT-3.3.1-1] a QoS 1 PUBLISH that was received but not
    PUBACKed is re-sent after reconnect with DUP=1 and the original packet id;
    after PUBACK nothing is sent again."""
    cid = uniq("sess-dup")
    topic = uniq("sess/dup/")
    c = _persistent(broker, cid)
    c.subscribe([(topic, 1)])
    with raw_connected(broker, name="pub") as pub:
        pub.publish(topic, b"m1", qos=1)
        pub.publish(topic, b"m2", qos=1)
    first = [mqttraw.decode_publish(c.expect(mqttraw.PUBLISH)) for _ in range(2)]
    assert [(p.payload, p.qos, p.dup) for p in first] == [(b"m1", 1, False), (b"m2", 1, False)]
    c.disconnect()  # without PUBACK

    c = _persistent(broker, cid, expect_sp=True)
    try:
        again = [mqttraw.decode_publish(c.expect(mqttraw.PUBLISH)) for _ in range(2)]
        assert [(p.topic, p.payload, p.qos, p.dup, p.pid) for p in again] == [
            (topic, b"m1", 1, True, first[0].pid), (topic, b"m2", 1, True, first[1].pid)]
        for p in again:
            c.send(mqttraw.puback(p.pid))
        sentinel = uniq("sess/dup-end/")
        c.subscribe([(sentinel, 1)])
        with raw_connected(broker, name="pub") as pub:
            pub.publish(sentinel, b"e", qos=1)
        assert collect_until(c, sentinel) == []
        c.disconnect()
    finally:
        c.close()

    # and a third connection gets nothing from before
    c = _persistent(broker, cid, expect_sp=True)
    try:
        sentinel = uniq("sess/dup-end2/")
        c.subscribe([(sentinel, 1)])
        with raw_connected(broker, name="pub") as pub:
            pub.publish(sentinel, b"e", qos=1)
        assert collect_until(c, sentinel) == []
        c.disconnect()
    finally:
        c.close()


def test_unacked_qos1_resent_after_abrupt_close(broker):
    """Same as above, but the client vanishes without DISCONNECT (RST)."""
    cid = uniq("sess-rst")
    topic = uniq("sess/rst/")
    c = _persistent(broker, cid)
    c.subscribe([(topic, 1)])
    with raw_connected(broker, name="pub") as pub:
        pub.publish(topic, b"x", qos=1)
    p1 = mqttraw.decode_publish(c.expect(mqttraw.PUBLISH))
    c.abort()
    c = _persistent(broker, cid, expect_sp=True)
    try:
        p2 = mqttraw.decode_publish(c.expect(mqttraw.PUBLISH))
        assert (p2.payload, p2.dup, p2.pid) == (b"x", True, p1.pid)
        c.send(mqttraw.puback(p2.pid))
        c.disconnect()
    finally:
        c.close()


def test_qos2_pubrel_resent_after_reconnect(broker):
    """[MQTT-4.4.0-1] outbound QoS 2: client gets PUBLISH, sends PUBREC,
    disconnects before completing. On reconnect the broker re-sends the PUBREL
    (not the PUBLISH) with the same packet id; after PUBCOMP nothing more."""
    cid = uniq("sess-rel")
    topic = uniq("sess/rel/")
    c = _persistent(broker, cid)
    c.subscribe([(topic, 2)])
    with raw_connected(broker, name="pub") as pub:
        pub.publish(topic, b"exactly-once", qos=2)
    p = mqttraw.decode_publish(c.expect(mqttraw.PUBLISH))
    assert (p.payload, p.qos, p.dup) == (b"exactly-once", 2, False)
    c.send(mqttraw.pubrec(p.pid))
    rel = c.expect(mqttraw.PUBREL, flags=0x02)
    assert mqttraw.packet_id(rel) == p.pid
    c.disconnect()  # without PUBCOMP

    c = _persistent(broker, cid, expect_sp=True)
    try:
        rel = c.recv_packet()
        assert rel.type == mqttraw.PUBREL, "expected the PUBREL to be re-sent, got %r" % (rel,)
        assert rel.flags == 0x02 and mqttraw.packet_id(rel) == p.pid, rel
        c.send(mqttraw.pubcomp(p.pid))
        sentinel = uniq("sess/rel-end/")
        c.subscribe([(sentinel, 1)])
        with raw_connected(broker, name="pub") as pub:
            pub.publish(sentinel, b"e", qos=1)
        assert collect_until(c, sentinel) == []
        c.disconnect()
    finally:
        c.close()


def test_qos2_publish_resent_if_pubrec_never_sent(broker):
    """Outbound QoS 2 PUBLISH not yet PUBRECed is re-sent with DUP=1 after
    reconnect; the flow then completes once."""
    cid = uniq("sess-q2dup")
    topic = uniq("sess/q2dup/")
    c = _persistent(broker, cid)
    c.subscribe([(topic, 2)])
    with raw_connected(broker, name="pub") as pub:
        pub.publish(topic, b"q2", qos=2)
    p = mqttraw.decode_publish(c.expect(mqttraw.PUBLISH))
    c.disconnect()
    c = _persistent(broker, cid, expect_sp=True)
    try:
        p2 = mqttraw.decode_publish(c.expect(mqttraw.PUBLISH))
        assert (p2.payload, p2.qos, p2.dup, p2.pid) == (b"q2", 2, True, p.pid)
        c.ack(p2)
        c.finish_qos2()
        c.disconnect()
    finally:
        c.close()


def test_inbound_qos2_survives_publisher_reconnect(broker):
    """Publisher sends QoS 2 PUBLISH, gets PUBREC, reconnects (clean session 0)
    and re-sends the PUBLISH with DUP=1, then PUBREL: one delivery only."""
    cid = uniq("sess-pub2")
    topic = uniq("sess/pub2/")
    sentinel = topic + "/end"
    with raw_connected(broker, name="sub") as sub:
        sub.subscribe([(topic, 2), (sentinel, 1)])
        pub = _persistent(broker, cid, name="pub")
        pub.send(mqttraw.publish(topic, b"once", qos=2, pid=77))
        assert mqttraw.packet_id(pub.expect(mqttraw.PUBREC)) == 77
        pub.abort()
        pub = _persistent(broker, cid, name="pub", expect_sp=True)
        try:
            pub.send(mqttraw.publish(topic, b"once", qos=2, pid=77, dup=True))
            assert mqttraw.packet_id(pub.expect(mqttraw.PUBREC)) == 77
            pub.send(mqttraw.pubrel(77))
            assert mqttraw.packet_id(pub.expect(mqttraw.PUBCOMP)) == 77
            pub.publish(sentinel, b"e", qos=1)
            pub.disconnect()
        finally:
            pub.close()
        got = collect_until(sub, sentinel)
        assert [(p.payload, p.qos) for p in got] == [(b"once", 2)]
        sub.finish_qos2()


def test_takeover_closes_first_connection_and_session_continues(broker):
    """[MQTT-3.1.4-2] a second CONNECT with the same client id disconnects the
    first connection; with clean session 0 the session (subscriptions and
    queued messages) continues on the new connection."""
    cid = uniq("takeover")
    topic = uniq("sess/takeover/")
    first = _persistent(broker, cid, name="first", expect_sp=False)
    try:
        first.subscribe([(topic, 1)])
        with raw_connected(broker, name="pub") as pub:
            pub.publish(topic, b"before", qos=1)
        p = mqttraw.decode_publish(first.expect(mqttraw.PUBLISH))
        assert p.payload == b"before"  # not acknowledged by `first`

        second = _persistent(broker, cid, name="second", expect_sp=True)
        try:
            first.expect_closed(scaled(5))
            p2 = mqttraw.decode_publish(second.expect(mqttraw.PUBLISH))
            assert (p2.payload, p2.dup, p2.pid) == (b"before", True, p.pid)
            second.send(mqttraw.puback(p2.pid))
            with raw_connected(broker, name="pub") as pub:
                pub.publish(topic, b"after", qos=1)
            p3 = second.recv_publish()
            assert (p3.payload, p3.dup) == (b"after", False)
            second.ping()
            second.disconnect()
        finally:
            second.close()
    finally:
        first.close()


def test_takeover_with_clean_session(broker):
    """Takeover by a clean-session-1 connection: first closed, session-present
    0, the old subscription is gone."""
    cid = uniq("takeover-clean")
    topic = uniq("sess/takeover-clean/")
    first = _persistent(broker, cid, name="first")
    try:
        first.subscribe([(topic, 1)])
        second = raw(broker, name="second")
        try:
            assert second.connect(cid, clean_session=True) is False
            first.expect_closed(scaled(5))
            sentinel = uniq("sess/tc-end/")
            second.subscribe([(sentinel, 1)])
            with raw_connected(broker, name="pub") as pub:
                pub.publish(topic, b"no-sub", qos=1)
                pub.publish(sentinel, b"e", qos=1)
            assert collect_until(second, sentinel) == []
            second.disconnect()
        finally:
            second.close()
    finally:
        first.close()


def test_empty_client_id_clean_session_accepted(broker):
    """[MQTT-3.1.3-6][MQTT-3.1.3-7] zero-length client id with clean session 1
    is accepted; two such clients can coexist."""
    a = raw(broker, name="anon-a")
    b = raw(broker, name="anon-b")
    try:
        assert a.connect("", clean_session=True) is False
        assert b.connect("", clean_session=True) is False
        topic = uniq("anon/")
        a.subscribe([(topic, 1)])
        b.publish(topic, b"hi", qos=1)
        assert a.recv_publish().payload == b"hi"
        a.ping()  # a was not kicked by b
        a.disconnect()
        b.disconnect()
    finally:
        a.close()
        b.close()


def test_empty_client_id_persistent_rejected(broker):
    """[MQTT-3.1.3-8] zero-length client id with clean session 0 -> CONNACK
    return code 2 (identifier rejected) and close [MQTT-3.2.2-5]."""
    with raw(broker, name="anon") as c:
        c.send(mqttraw.connect("", clean_session=False))
        pkt = c.expect(mqttraw.CONNACK)
        assert mqttraw.decode_connack(pkt) == (False, 2), pkt  # [MQTT-3.2.2-4] sp 0 on error
        c.expect_closed(scaled(5))


@pytest.mark.moat_only
def test_max_inflight_messages(start_broker):
    """limits.max_inflight_messages: at most N unacknowledged outbound QoS 1
    messages per session; each PUBACK releases one more."""
    broker = start_broker(max_inflight_messages=5)
    topic = uniq("sess/inflight/")
    with raw_connected(broker, name="slow") as sub, raw_connected(broker, name="pub") as pub:
        sub.subscribe([(topic, 1)])
        for i in range(12):
            pub.publish(topic, b"%d" % i, qos=1)
        got = [mqttraw.decode_publish(sub.expect(mqttraw.PUBLISH)) for _ in range(5)]
        assert [p.payload for p in got] == [b"%d" % i for i in range(5)]
        sub.expect_no_packet(scaled(0.5))  # absence check: window is full
        sub.send(mqttraw.puback(got[0].pid))
        p = mqttraw.decode_publish(sub.expect(mqttraw.PUBLISH))
        assert p.payload == b"5"
        sub.expect_no_packet(scaled(0.3))
        for q in got[1:] + [p]:
            sub.send(mqttraw.puback(q.pid))
        rest = [sub.recv_publish() for _ in range(6)]
        assert [q.payload for q in rest] == [b"%d" % i for i in range(6, 12)]


@pytest.mark.moat_only
def test_max_queued_messages_drops_and_logs(start_broker):
    """limits.max_queued_messages: an offline session keeps at most that many
    (plus in-flight) QoS>0 messages; the excess is dropped and logged at warn
    with "queue full". Kept messages are the oldest, in order."""
    broker = start_broker(max_queued_messages=10, max_inflight_messages=5)
    cid = uniq("sess-full")
    topic = uniq("sess/full/")
    c = _persistent(broker, cid)
    c.subscribe([(topic, 1)])
    c.disconnect()
    with raw_connected(broker, name="pub") as pub:
        for i in range(40):
            pub.publish(topic, b"%d" % i, qos=1)
    broker.wait_for_log(r"queue full", timeout=5)
    c = _persistent(broker, cid, expect_sp=True)
    try:
        sentinel = uniq("sess/full-end/")
        c.subscribe([(sentinel, 1)])
        with raw_connected(broker, name="pub") as pub:
            pub.publish(sentinel, b"e", qos=1)
        got = collect_until(c, sentinel, timeout=10)
        n = len(got)
        assert 10 <= n <= 15, "kept %d of 40 (max_queued 10, max_inflight 5)" % n
        assert [p.payload for p in got] == [b"%d" % i for i in range(n)]
        c.disconnect()
    finally:
        c.close()


@pytest.fixture
def sys_broker(tmp_path):
    """Factory like start_broker, with $SYS counters published every second."""
    started = []

    def start(**overrides):
        opts = dict(DEFAULTS, **overrides)
        work = tmp_path / ("sys%d" % len(started))
        (work / "data").mkdir(parents=True)
        text = moat_config(str(work / "data"), opts)
        text = text.replace("[broker]\n", "[broker]\nsys_interval = 1\n", 1)
        conf = work / "moat.toml"
        conf.write_text(text)
        b = Broker([MOATD, "-c", str(conf)], cwd=str(work), config_path=str(conf))
        started.append(b)
        b.wait_listening()
        return b

    yield start
    for b in started:
        assert b.stop() == 0, b.log_text()


QUEUE_FULL_DROPS = "$SYS/broker/messages/dropped/queue_full"


class _FanInPublisher(threading.Thread):
    """Sends `count` QoS 1 PUBLISHes at once and counts the PUBACKs."""

    def __init__(self, client, topic, pubid, count):
        super().__init__(daemon=True)
        self.c, self.topic, self.pubid, self.count = client, topic, pubid, count
        self.acked = 0
        self.error = None

    def run(self):
        try:
            self.c.send(b"".join(mqttraw.publish(self.topic, b"%d:%d" % (self.pubid, j), qos=1,
                                                 pid=j + 1) for j in range(self.count)))
            acks = [mqttraw.packet_id(self.c.expect(mqttraw.PUBACK, flags=0))
                    for _ in range(self.count)]
            assert sorted(acks) == list(range(1, self.count + 1)), acks
            self.acked = len(acks)
            self.c.disconnect()
        except BaseException as e:  # reported by the test
            self.error = e


@pytest.mark.moat_only
@pytest.mark.parametrize("subscriber", ["offline", "stalled"])
def test_fan_in_full_queue_is_counted_and_logged(sys_broker, subscriber):
    """10 publishers x 20 QoS 1 messages, every one acknowledged, into one
    persistent session whose queue (max_queued_messages 10) fills while the
    subscriber is offline or connected but not reading. No acknowledged
    message disappears silently: acknowledged = delivered +
    $SYS/broker/messages/dropped/queue_full, and the drop is logged at warn.
    Publishers sit on both event loops, the subscriber on loop 0."""
    pubs_n, per_pub, max_queued, max_inflight = 10, 20, 10, 5
    broker = sys_broker(max_queued_messages=max_queued, max_inflight_messages=max_inflight,
                        log_level="info")
    topic = uniq("sess/fanin/")
    cid = uniq_on_loop("fanin-sub", 0, 2)
    sub = _persistent(broker, cid)
    assert sub.subscribe([(topic, 1)]) == [1]
    if subscriber == "offline":
        sub.disconnect()
    pub_ids = [uniq_on_loop("fanin-pub", i % 2, 2) for i in range(pubs_n)]
    assert sorted({loop_of(p, 2) for p in pub_ids}) == [0, 1]
    pubs = [_FanInPublisher(raw_connected(broker, client_id=p, name="pub%d" % i), topic, i, per_pub)
            for i, p in enumerate(pub_ids)]
    for p in pubs:
        p.start()
    for p in pubs:
        p.join(scaled(20))
    assert not [p for p in pubs if p.is_alive()], "publishers stuck"
    assert not [p.error for p in pubs if p.error], [p.error for p in pubs if p.error]
    acked = sum(p.acked for p in pubs)
    assert acked == pubs_n * per_pub
    broker.wait_for_log(r"queue full for client %s " % cid, timeout=5)

    if subscriber == "offline":
        sub = _persistent(broker, cid, expect_sp=True)
    with sub, raw_connected(broker, name="sys") as sysr:
        assert sysr.subscribe([(QUEUE_FULL_DROPS, 0)]) == [0]
        # Drain the subscriber (acknowledging), then read the next $SYS value,
        # until every acknowledged message is either delivered or counted.
        delivered, dropped, seen = [], 0, []
        deadline = time.monotonic() + scaled(20)
        while len(delivered) + dropped < acked:
            assert time.monotonic() < deadline, (
                "acknowledged %d, delivered %d, counted as dropped %d: %d lost silently "
                "($SYS values %r)" % (acked, len(delivered), dropped,
                                      acked - len(delivered) - dropped, seen))
            while True:
                try:
                    delivered.append(sub.recv_publish(timeout=0.2).payload)
                except TimeoutError:
                    break
            got = sysr.recv_publish(timeout=scaled(3))
            assert got.topic == QUEUE_FULL_DROPS, got
            dropped = int(got.payload)
            seen.append(dropped)
        assert len(delivered) + dropped == acked, (len(delivered), dropped, acked)
        assert len(set(delivered)) == len(delivered), "duplicates delivered"
        # Drop-new keeps the first messages: in flight plus a full queue.
        kept = max_queued if subscriber == "offline" else max_inflight + max_queued
        assert len(delivered) == kept, (len(delivered), delivered)
        sub.disconnect()


@pytest.mark.moat_only
def test_queue_bytes_limit_drops_oldest_when_configured(start_broker):
    """limits.max_queued_bytes with queue_full = "drop-oldest": an offline
    session keeps the newest messages that fit, in order, and the drops are
    logged."""
    cid = uniq("sess-bytes")
    topic = uniq("sess/bytes/")
    per_msg = len(topic) + 10  # topic + payload, as counted by the broker
    broker = start_broker(max_queued_messages=100, max_inflight_messages=2,
                          limits_extra={"max_queued_bytes": 5 * per_msg + per_msg // 2,
                                        "queue_full": "drop-oldest"})
    c = _persistent(broker, cid)
    c.subscribe([(topic, 1)])
    c.disconnect()
    with raw_connected(broker, name="pub") as pub:
        for i in range(30):
            pub.publish(topic, b"msg-%06d" % i, qos=1)
    broker.wait_for_log(r"queue full for client %s .*dropped \(oldest first\)" % cid, timeout=5)
    c = _persistent(broker, cid, expect_sp=True)
    try:
        got = [c.recv_publish() for _ in range(5)]  # acknowledged as they come
        assert [p.payload for p in got] == [b"msg-%06d" % i for i in range(25, 30)]
        c.expect_no_packet(scaled(0.5))
        c.disconnect()
    finally:
        c.close()


@pytest.mark.moat_only
def test_session_expiry_counts_offline_time_across_restarts(tmp_path):
    """[store] session_expiry: a persistent session offline for longer is
    removed, and the time it spent offline before a restart counts (its stored
    record keeps since when, on the wall clock). A session that was connected
    when moatd stopped counts from the restart."""
    import signal
    import time

    from conftest import DEFAULTS, MOATD, Broker, moat_config

    expiry = 4
    workdir = tmp_path / "expiry"
    workdir.mkdir()
    (workdir / "data").mkdir()
    conf = workdir / "moat.toml"
    conf.write_text(moat_config(str(workdir / "data"), dict(DEFAULTS, log_level="info"))
                    + "\n[store]\nsession_expiry = %d\n" % expiry)

    def start():
        b = Broker([MOATD, "-c", str(conf)], cwd=str(workdir), config_path=str(conf))
        b.wait_listening()
        return b

    gone, online = uniq("gone-"), uniq("online-")
    b = start()
    try:
        c = _persistent(b, gone, expect_sp=False)
        assert c.subscribe([("expiry/#", 1)]) == [1]
        c.disconnect()
        offline_at = time.monotonic()
        keep = _persistent(b, online, name="online", expect_sp=False)
        assert keep.subscribe([("expiry/#", 1)]) == [1]
        assert b.stop(signal.SIGTERM, 10) == 0
        keep.close()
    finally:
        if b.alive():
            b.stop(signal.SIGKILL, 10)
    # Offline for longer than the expiry in all, most of it before the restart.
    time.sleep(max(0.0, offline_at + expiry - 1.0 - time.monotonic()))
    b = start()
    try:
        # The connected one has been offline only since the restart: still there.
        c = _persistent(b, online, name="online-again", expect_sp=True)
        c.disconnect()
        # Expired about `expiry` s after it went offline, not `expiry` s after the
        # restart (which would be 3 s later still).
        b.wait_for_log(r"session of client %s expired after %d s offline" % (gone, expiry),
                       timeout=max(0.1, offline_at + expiry + 2.5 - time.monotonic()), scale=False)
        c = _persistent(b, gone, name="gone-again", expect_sp=False)
        c.disconnect()
    finally:
        assert b.stop(signal.SIGTERM, 10) == 0
