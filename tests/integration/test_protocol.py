"""Raw-socket conformance checks; each case names the MQTT 3.1.1 statement it
checks. After every violation the same broker must still serve a normal
client and the process must be alive."""

import time

import pytest

import mqttraw as m
from util import collect_until, mosquitto_pub, mosquitto_sub, raw, raw_connected, roundtrip, scaled, uniq


def _closed_silently(c, what):
    data = c.expect_closed(scaled(5))
    # [MQTT-3.1.4-1]: an invalid CONNECT is closed without CONNACK; after
    # CONNECT nothing is owed to a client that broke the protocol either.
    assert data == b"", "%s: broker sent %r before closing" % (what, m.parse_all(data) or data)


# ------------------------------------------------------------ invalid first packets

PRE_CONNECT = [
    ("[MQTT-3.1.0-1] first packet PINGREQ", m.pingreq()),
    ("[MQTT-3.1.0-1] first packet PUBLISH", m.publish("a/b", b"x")),
    ("[MQTT-3.1.0-1] first packet SUBSCRIBE", m.subscribe(1, [("a/b", 0)])),
    ("[MQTT-3.1.0-1] first packet DISCONNECT", m.disconnect()),
    ("[MQTT-3.1.2-1] wrong protocol name", m.connect("p1", protocol_name="MQTX")),
    ("[MQTT-3.1.2-1] lower-case protocol name", m.connect("p1b", protocol_name="mqtt")),
    ("[MQTT-3.1.2-3] CONNECT reserved flag bit 0", m.connect("p2", reserved=True)),
    ("[MQTT-2.2.2-2] CONNECT fixed-header flags 0001", m.connect("p3", fixed_flags=1)),
    ("[MQTT-3.1.2-13] will flag 0 with will QoS 1", m.connect("p4", will_qos=1)),
    ("[MQTT-3.1.2-13] will flag 0 with will QoS 2", m.connect("p4b", will_qos=2)),
    ("[MQTT-3.1.2-15] will flag 0 with will retain", m.connect("p5", will_retain=True)),
    ("[MQTT-3.1.2-14] will QoS 3", m.connect("p6", will_topic="w/t", will_qos=3)),
    ("[MQTT-3.1.2-22] password flag without username flag", m.connect("p7", password="pw")),
    ("[MQTT-1.5.3-1] client id invalid UTF-8", m.connect(b"\xc3\x28bad")),
    ("[MQTT-1.5.3-2] client id with U+0000", m.connect(b"a\x00b")),
    ("[MQTT-2.2.3] remaining length in 5 bytes", b"\x10\xff\xff\xff\xff\x01"),
]


@pytest.mark.parametrize("what,data", PRE_CONNECT, ids=[c[0] for c in PRE_CONNECT])
def test_invalid_connect_closed(broker, what, data):
    with raw(broker, name="bad") as c:
        c.send(data, ignore_errors=True)
        _closed_silently(c, what)
    roundtrip(broker)


# ------------------------------------------------------------ after a good CONNECT

POST_CONNECT = [
    ("[MQTT-3.1.0-2] second CONNECT", m.connect("again")),
    ("[MQTT-3.3.1-4] PUBLISH with QoS 3", m.publish("a/b", b"x", flags=0x06, pid=5)),
    ("[MQTT-3.3.2-2] PUBLISH topic with +", m.publish("a/+/b", b"x")),
    ("[MQTT-3.3.2-2] PUBLISH topic with #", m.publish("a/#", b"x")),
    ("[MQTT-2.3.1-1] PUBLISH QoS 1 with packet id 0", m.publish("a/b", b"x", qos=1, pid=0)),
    ("[MQTT-2.3.1-1] PUBLISH QoS 2 with packet id 0", m.publish("a/b", b"x", qos=2, pid=0)),
    ("[MQTT-4.7.3-1] PUBLISH with empty topic", m.publish("", b"x")),
    ("[MQTT-1.5.3-2] PUBLISH topic with U+0000", m.publish(b"a/\x00/b", b"x")),
    ("[MQTT-1.5.3-1] PUBLISH topic invalid UTF-8", m.publish(b"a/\xc3\x28", b"x")),
    ("[MQTT-1.5.3-1] PUBLISH topic UTF-16 surrogate", m.publish(b"a/\xed\xa0\x80", b"x")),
    ("[MQTT-1.5.3-1] PUBLISH topic overlong encoding", m.publish(b"a/\xc0\xaf", b"x")),
    ("[MQTT-3.8.1-1] SUBSCRIBE flags 0000", m.subscribe(1, [("a/b", 0)], flags=0)),
    ("[MQTT-3.8.1-1] SUBSCRIBE flags 0011", m.subscribe(1, [("a/b", 0)], flags=3)),
    ("[MQTT-3.8.3-3] SUBSCRIBE with no filters", m.subscribe(1, [])),
    ("[MQTT-3-8.3-4] SUBSCRIBE requested QoS 3", m.subscribe(1, [("a/b", 3)])),
    ("[MQTT-3-8.3-4] SUBSCRIBE reserved QoS bits", m.subscribe(1, [("a/b", 0x41)])),
    ("[MQTT-1.5.3-2] SUBSCRIBE filter with U+0000", m.subscribe(1, [(b"a\x00", 0)])),
    ("[MQTT-1.5.3-1] SUBSCRIBE filter invalid UTF-8", m.subscribe(1, [(b"\xff/a", 0)])),
    ("[MQTT-2.3.1-1] SUBSCRIBE packet id 0", m.subscribe(0, [("a/b", 0)])),
    ("[MQTT-3.10.1-1] UNSUBSCRIBE flags 0000", m.unsubscribe(1, ["a/b"], flags=0)),
    ("[MQTT-3.10.3-2] UNSUBSCRIBE with no filters", m.unsubscribe(1, [])),
    ("[MQTT-3.6.1-1] PUBREL flags 0000", m.pubrel(9, flags=0)),
    ("[MQTT-2.2.2-2] PINGREQ flags 0001", m.packet(m.PINGREQ, 1)),
    ("[MQTT-2.2.2-2] DISCONNECT flags 0010", m.packet(m.DISCONNECT, 2)),
    ("[MQTT-2.2.2-2] PUBACK flags 0001", m.packet(m.PUBACK, 1, m.u16(3))),
    ("[MQTT-2.2.1] reserved packet type 0", m.packet(0, 0)),
    ("[MQTT-2.2.1] reserved packet type 15", m.packet(15, 0)),
    ("[MQTT-4.8.0-1] CONNACK sent by a client", m.packet(m.CONNACK, 0, b"\x00\x00")),
    ("[MQTT-4.8.0-1] SUBACK sent by a client", m.packet(m.SUBACK, 0, b"\x00\x01\x00")),
    ("[MQTT-4.8.0-1] PINGREQ with a body (remaining length must be 0)", m.packet(m.PINGREQ, 0, b"\x00")),
    ("[MQTT-2.2.3] remaining length in 5 bytes", b"\x30\xff\xff\xff\xff\x01"),
]


@pytest.mark.parametrize("what,data", POST_CONNECT, ids=[c[0] for c in POST_CONNECT])
def test_invalid_packet_after_connect_closed(broker, what, data):
    with raw_connected(broker, name="bad") as c:
        c.send(data, ignore_errors=True)
        _closed_silently(c, what)
    roundtrip(broker)


@pytest.mark.threaded  # two clients, two event loops in the broker: TSan stage too
def test_violation_closes_only_that_connection(broker):
    """Another client connected meanwhile is unaffected by a violation."""
    topic = uniq("proto/other/")
    with raw_connected(broker, name="bystander") as ok:
        ok.subscribe([(topic, 1)])
        with raw_connected(broker, name="bad") as bad:
            bad.send(m.publish("a/#", b"x"))
            _closed_silently(bad, "wildcard publish")
        ok.ping()
        with raw_connected(broker, name="pub") as pub:
            pub.publish(topic, b"still-here", qos=1)
        assert ok.recv_publish().payload == b"still-here"


# ------------------------------------------------------------ answered, not just closed

def test_unsupported_protocol_level(broker):
    """[MQTT-3.1.2-2] protocol level 7 -> CONNACK return code 1, then close."""
    with raw(broker, name="lvl7") as c:
        c.send(m.connect("lvl7", protocol_level=7))
        pkt = c.expect(m.CONNACK)
        assert m.decode_connack(pkt) == (False, 1), pkt
        assert c.expect_closed(scaled(5)) == b""
    roundtrip(broker)


def test_mqtt31_mqisdp_accepted(broker):
    """MQTT 3.1 clients (protocol name "MQIsdp", level 3) are accepted and can
    publish/subscribe."""
    topic = uniq("proto/31/")
    with raw(broker, name="v31") as c:
        c.send(m.connect("v31client", protocol_name="MQIsdp", protocol_level=3))
        assert m.decode_connack(c.expect(m.CONNACK)) == (False, 0)
        assert c.subscribe([(topic, 1)]) == [1]
        c.publish(topic, b"old-protocol", qos=1)
        p = c.recv_publish()
        assert (p.topic, p.payload, p.qos) == (topic, b"old-protocol", 1)
        c.disconnect()
    roundtrip(broker)


def test_mqtt31_resumed_session_connack_byte_is_reserved(broker):
    """MQTT 3.1 has no session-present flag: the first byte of its CONNACK is
    reserved and 0, also when a persistent session is resumed; the queued
    message is delivered all the same."""
    topic, cid = uniq("proto/31s/"), uniq("v31s")
    with raw(broker, name="v31a") as c:
        c.send(m.connect(cid, clean_session=False, protocol_name="MQIsdp", protocol_level=3))
        assert c.expect(m.CONNACK).body == b"\x00\x00"
        assert c.subscribe([(topic, 1)]) == [1]
        c.disconnect()
    with raw_connected(broker, name="v31pub") as p:
        p.publish(topic, b"while-away", qos=1)
    with raw(broker, name="v31b") as c:
        c.send(m.connect(cid, clean_session=False, protocol_name="MQIsdp", protocol_level=3))
        assert c.expect(m.CONNACK).body == b"\x00\x00"
        got = c.recv_publish()
        assert (got.topic, got.payload, got.qos) == (topic, b"while-away", 1)
        c.disconnect()
    # The same session over MQTT 3.1.1 does get the flag.
    with raw(broker, name="v311") as c:
        assert c.connect(cid, clean_session=False) is True
        c.disconnect()


def test_mqtt31_real_clients_session_will_and_qos2(broker):
    """Debian's mosquitto clients speaking MQTT 3.1 (-V mqttv31): a persistent
    session of mosquitto_sub keeps its subscription while the client is gone,
    its will is published when it is killed, and a QoS 2 message published by
    mosquitto_pub -V mqttv31 meanwhile is delivered once when it is back."""
    topic, will, cid = uniq("proto/31r/"), uniq("proto/31w/"), uniq("v31r")
    v31 = ["-V", "mqttv31", "-c", "-i", cid]
    with raw_connected(broker, name="v31watch") as w:
        w.subscribe([(will, 1)])
        sub = mosquitto_sub(broker, topic, qos=2, count=1,
                            extra=v31 + ["--will-topic", will, "--will-payload", "gone", "--will-qos", "1"])
        sub.kill()  # SIGKILL: no DISCONNECT, so the will goes out
        got = w.recv_publish(timeout=scaled(5))
        assert (got.topic, got.payload) == (will, b"gone")
    out = mosquitto_pub(broker, topic, "offline-qos2", qos=2, extra=["-V", "mqttv31"])
    assert "received PUBREC" in out and "received PUBCOMP" in out, out
    sub = mosquitto_sub(broker, topic, qos=2, count=1, extra=v31)
    try:
        assert sub.wait_exit(15) == 0, sub.output()
    finally:
        sub.kill()
    lines = [l for l in sub.output().splitlines() if l.startswith(topic + " ")]
    assert lines == [topic + " offline-qos2"], sub.output()


def test_mqisdp_with_level_4_rejected(broker):
    """Protocol name and level must agree: "MQIsdp" with level 4 is not 3.1.1;
    the broker must not accept it as a normal session (CONNACK rc 1 or close)."""
    with raw(broker, name="mix") as c:
        c.send(m.connect("mix", protocol_name="MQIsdp", protocol_level=4))
        data = c.expect_closed(scaled(5))
        pkts = m.parse_all(data)
        assert all(p.type == m.CONNACK and m.decode_connack(p)[1] != 0 for p in pkts), pkts
    roundtrip(broker)


def test_pingreq_pingresp(broker):
    """[MQTT-3.12.4-1] PINGREQ is answered with PINGRESP (0xD0 0x00)."""
    with raw_connected(broker, name="ping") as c:
        for _ in range(3):
            c.send(m.pingreq())
            pkt = c.recv_packet()
            assert (pkt.type, pkt.flags, pkt.body) == (m.PINGRESP, 0, b"")
        c.disconnect()
    roundtrip(broker)


def test_connack_shape(broker):
    """[MQTT-3.2.2-1] CONNACK for clean session: exactly 20 02 00 00."""
    with raw(broker, name="shape") as c:
        c.send(m.connect(uniq("shape")))
        pkt = c.recv_packet()
        assert m.packet(pkt.type, pkt.flags, pkt.body) == b"\x20\x02\x00\x00"


@pytest.mark.parametrize("bad", ["a/#/b", "proto/x#", "a+", "", "proto/+x"])
def test_subscribe_invalid_filter_closes(broker, bad):
    """[MQTT-4.7.1-2][MQTT-4.7.1-3][MQTT-4.7.3-1] a malformed filter (`#` not
    last or not alone in its level, `+` not alone, empty) is a protocol
    violation, so the connection is closed [MQTT-4.8.0-1] without a SUBACK,
    even when a valid filter comes first in the same packet."""
    base = uniq("proto/subs")
    with raw_connected(broker, name="sub") as c:
        c.send(m.subscribe(1, [(base + "/+/y", 1), (bad, 1)]))
        assert c.expect_closed() == b"", "no SUBACK may precede the close"
    roundtrip(broker)


def test_unsubscribe_invalid_filter_closes(broker):
    """[MQTT-4.7.1-2] the same rule holds for UNSUBSCRIBE."""
    with raw_connected(broker, name="unsub") as c:
        c.send(m.unsubscribe(2, ["a/#/b"]))
        c.expect_closed()
    roundtrip(broker)


def test_subscribe_valid_wildcards_granted(broker):
    """[MQTT-4.7.1-2/3] `#`, `+`, `+/+`, `a/#`, `/`, `a//b` are valid filters."""
    with raw_connected(broker, name="sub") as c:
        filters = [("#", 0), ("+", 1), ("+/+", 2), ("a/#", 0), ("/", 1), ("a//b", 2), ("+/#", 0)]
        assert c.subscribe(filters) == [q for _, q in filters]
    roundtrip(broker)


@pytest.mark.threaded  # two clients, two event loops in the broker: TSan stage too
def test_unsubscribe_stops_delivery(broker):
    """[MQTT-3.10.4-1/-4/-5] UNSUBACK with the same packet id, also for a filter
    that was never subscribed; no delivery after UNSUBACK."""
    topic = uniq("proto/unsub/")
    with raw_connected(broker, name="sub") as c, raw_connected(broker, name="pub") as pub:
        c.subscribe([(topic, 1), (topic + "/end", 1)])
        c.unsubscribe([topic, "never/subscribed"], pid=321)
        pub.publish(topic, b"gone", qos=1)
        pub.publish(topic + "/end", b"e", qos=1)
        assert collect_until(c, topic + "/end") == []


@pytest.mark.threaded  # two clients, two event loops in the broker: TSan stage too
def test_topic_matching_is_exact(broker):
    """[MQTT-4.7.3] topic levels are case sensitive and `/` is significant."""
    base = uniq("proto/case")
    with raw_connected(broker, name="sub") as c, raw_connected(broker, name="pub") as pub:
        c.subscribe([(base + "/A", 1), (base + "/end", 1)])
        for t in (base + "/a", base + "/A/", "/" + base + "/A", base + "/A"):
            pub.publish(t, t.encode(), qos=1)
        pub.publish(base + "/end", b"e", qos=1)
        got = collect_until(c, base + "/end")
        assert [p.topic for p in got] == [base + "/A"]


@pytest.mark.moat_only
def test_no_connect_within_connect_timeout(start_broker):
    """limits.connect_timeout: a connection that sends nothing is closed after
    about connect_timeout seconds; one that sent half a CONNECT too."""
    broker = start_broker(connect_timeout=1)
    silent = raw(broker, name="silent")
    partial = raw(broker, name="partial")
    try:
        partial.send(m.connect("partial")[:6])
        t0 = time.monotonic()
        assert silent.expect_closed(scaled(1 + 3)) == b""
        elapsed = time.monotonic() - t0
        assert elapsed >= 0.8, "closed too early: %.2fs" % elapsed
        assert partial.expect_closed(scaled(3)) == b""
    finally:
        silent.close()
        partial.close()
    roundtrip(broker)


@pytest.mark.moat_only
def test_connect_in_time_is_not_closed(start_broker):
    """A client that connects within connect_timeout stays connected past it."""
    broker = start_broker(connect_timeout=0.5)
    with raw_connected(broker, name="quick") as c:
        time.sleep(1.0)  # behaviour under test is the connect timer
        c.ping()


LOGGED = [
    ("reserved-flag", None, m.connect("x", reserved=True)),
    ("qos3", "connect", m.publish("a/b", b"x", flags=0x06, pid=1)),
    ("5-byte-length", "connect", b"\x30\xff\xff\xff\xff\x01"),
    ("subscribe-flags", "connect", m.subscribe(1, [("a/b", 0)], flags=0)),
]


@pytest.mark.moat_only
@pytest.mark.parametrize("name,pre,data", LOGGED, ids=[c[0] for c in LOGGED])
def test_protocol_error_logged_with_peer_address(broker, name, pre, data):
    """A malformed packet logs (debug) a line with `protocol error` and the peer
    address (our local port)."""
    mark = broker.log_mark()
    with raw(broker, name="bad") as c:
        port = c.local_port
        if pre:
            c.connect(uniq("c"))
        c.send(data, ignore_errors=True)
        c.expect_closed(scaled(5))
    rx = r"(?=.*protocol error)(?=.*127\.0\.0\.1\]?:%d\b)" % port
    broker.wait_for_log(rx, timeout=5, since=mark)
    roundtrip(broker)
