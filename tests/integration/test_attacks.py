"""Known attacks on MQTT brokers as regression tests (docs/security.md,
"Known attacks"). Each case sends the input behind a published broker CVE or
a classic abuse over a raw socket, then asserts that moatd is still up, that
the offending connection was closed (or, for floods, bounded by a limit), and
that a well-behaved client connected on the side keeps working with normal
latency: a QoS 1 round trip through the broker within LATENCY seconds."""

import socket
import struct
import time

import pytest

import mqttraw
from mqttraw import mqtt_string, packet, u16
from util import collect_until, raw, raw_connected, scaled, uniq

pytestmark = [pytest.mark.moat_only]

LATENCY = 0.25  # seconds for one round trip on an idle loopback broker (scaled)


class SideClient:
    """A subscriber/publisher pair on the side that measures round trips."""

    def __init__(self, broker):
        self.topic = uniq("side/")
        self.sub = raw_connected(broker, name="side-sub")
        self.pub = raw_connected(broker, name="side-pub")
        assert self.sub.subscribe([(self.topic, 1)]) == [1]

    def round_trip(self):
        t0 = time.monotonic()
        self.pub.publish(self.topic, b"ping", qos=1)
        got = self.sub.recv_publish()
        took = time.monotonic() - t0
        assert (got.topic, got.payload) == (self.topic, b"ping")
        return took

    def check(self):
        took = min(self.round_trip() for _ in range(3))
        assert took < scaled(LATENCY), "side round trip took %.3f s" % took

    def close(self):
        self.sub.close()
        self.pub.close()


@pytest.fixture
def broker(start_broker):
    return start_broker(threads=2, connect_timeout=2)


@pytest.fixture
def side(broker):
    s = SideClient(broker)
    s.check()
    yield s
    s.check()
    assert broker.alive()
    s.close()


def closed_after(broker, data, connect_first=True):
    """Sends `data` (after a valid CONNECT when asked) and asserts the broker
    closes the connection; returns the packets received before the close."""
    with raw(broker, name="attacker") as c:
        if connect_first:
            c.connect(uniq("atk"))
        c.send(data, ignore_errors=True)
        return mqttraw.parse_all(c.expect_closed())


# (name, bytes after CONNECT, whether a CONNECT goes first)
MALFORMED = [
    # Remaining length in 5 bytes: the 5th continuation byte is malformed.
    ("remaining_length_5_bytes", b"\x30\xff\xff\xff\xff\x7f", True),
    # 268,435,455 (the largest 4-byte value) announced, far over max_packet_size:
    # refused from the header alone, nothing is buffered.
    ("remaining_length_max", b"\x30\xff\xff\xff\x7f" + b"\x00\x01a", True),
    # Protocol name length 0xffff in a 12-byte CONNECT.
    ("connect_string_past_end", packet(1, 0, b"\xff\xff" + b"MQTT\x04\x02\x00\x3c\x00\x01x"), False),
    # PUBLISH topic length past the packet end.
    ("publish_topic_past_end", packet(3, 0, b"\x10\x00" + b"a/b"), True),
    # SUBSCRIBE filter length past the end.
    ("subscribe_filter_past_end", packet(8, 2, u16(1) + b"\x00\x50ab\x00"), True),
    ("publish_qos1_packet_id_0", packet(3, 2, mqtt_string("a") + u16(0) + b"x"), True),
    ("publish_qos3", packet(3, 6, mqtt_string("a") + u16(1) + b"x"), True),
    ("publish_wildcard_plus", mqttraw.publish("a/+/b", b"x"), True),
    ("publish_wildcard_hash", mqttraw.publish("a/#", b"x"), True),
    ("publish_topic_nul", mqttraw.publish("a\x00b", b"x"), True),
    ("publish_topic_invalid_utf8", packet(3, 0, mqtt_string(b"a\xff\xfe") + b"x"), True),
    ("publish_topic_surrogate", packet(3, 0, mqtt_string(b"a\xed\xa0\x80") + b"x"), True),
    ("publish_topic_empty", packet(3, 0, mqtt_string(b"") + b"x"), True),
    ("subscribe_no_filters", packet(8, 2, u16(1)), True),
    ("subscribe_qos3", packet(8, 2, u16(1) + mqtt_string("a") + b"\x03"), True),
    ("unsubscribe_no_filters", packet(10, 2, u16(1)), True),
    ("second_connect", mqttraw.connect(uniq("again")), True),
    ("first_packet_not_connect", mqttraw.publish("a", b"x"), False),
    ("ack_before_connect", b"\x40\x02\x00\x01", False),
    ("connect_client_id_nul", mqttraw.connect("a\x00b"), False),
    ("connect_client_id_invalid_utf8", packet(1, 0, mqtt_string("MQTT") + b"\x04\x02\x00\x3c"
                                              + mqtt_string(b"\xc3\x28")), False),
    ("will_topic_wildcard", mqttraw.connect(uniq("w"), will_topic="a/#", will_payload=b"x"), False),
    ("will_topic_plus", mqttraw.connect(uniq("w"), will_topic="+", will_payload=b"x"), False),
    ("reserved_connect_flag", mqttraw.connect(uniq("r"), reserved=True), False),
    ("reserved_packet_type_15", b"\xf0\x00", True),
]


@pytest.mark.parametrize("name,data,connect_first", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_closes_only_that_connection(broker, side, name, data, connect_first):
    got = closed_after(broker, data, connect_first)
    # Nothing is acknowledged before the close (a refused CONNECT may get its CONNACK).
    assert all(p.type == mqttraw.CONNACK and p.body[1] != 0 for p in got), got


def test_subscribe_with_65400_levels_is_refused(broker, side):
    """CVE-2019-11779: a filter of some 65400 '/' overflowed a broker's stack.
    Here it is over max_topic_length/max_topic_levels: SUBACK 0x80."""
    with raw_connected(broker, name="levels") as c:
        assert c.subscribe([("/" * 65400, 0), ("ok", 0)]) == [0x80, 0]
        c.ping()


def test_qos2_duplicate_ids_without_pubrel_stay_bounded(broker, side):
    """CVE-2023-28366: QoS 2 PUBLISHes with the same packet id, never
    completed, must not grow memory per message."""
    with raw_connected(broker, name="dup") as c:
        for _ in range(2000):
            c.send(mqttraw.publish("d", b"x", qos=2, pid=7))
        for _ in range(2000):
            assert mqttraw.packet_id(c.expect(mqttraw.PUBREC)) == 7


def test_huge_number_of_subscriptions(broker, side):
    """One SUBSCRIBE with 5000 filters: max_subscriptions_per_client (1000)
    grants the first, refuses the rest, and the connection stays usable."""
    filters = [("many/%d" % i, 0) for i in range(5000)]
    with raw_connected(broker, name="subs") as c:
        granted = c.subscribe(filters, timeout=scaled(20))
        assert granted[:1000] == [0] * 1000 and set(granted[1000:]) == {0x80}
        c.ping()
    broker.wait_for_log(r"limit max_subscriptions_per_client hit by 127\.0\.0\.1")


def test_retained_flood_is_bounded(start_broker):
    b = start_broker(threads=2, limits_extra={"max_retained_messages": 300})
    s = SideClient(b)
    with raw_connected(b, name="flood") as c:
        for i in range(2000):
            c.send(mqttraw.publish("flood/%d" % i, b"r" * 100, qos=0, retain=True))
        c.ping(timeout=scaled(20))  # every PUBLISH before it was handled
    b.wait_for_log(r"limit max_retained_messages hit by 127\.0\.0\.1")
    with raw_connected(b, name="late") as late, raw_connected(b, name="end") as end:
        late.subscribe([("flood/#", 0)])
        end.publish("flood/end", b"", qos=1)
        got = collect_until(late, "flood/end", timeout=20)
        assert len(got) == 300
    s.check()
    s.close()


def test_half_open_connect_is_closed_by_connect_timeout(broker, side):
    """Slowloris: a CONNECT started and never finished is closed after
    connect_timeout (2 s here), not held for ever."""
    with raw(broker, name="slow") as c:
        full = mqttraw.connect(uniq("slow"))
        c.send(full[:6])
        t0 = time.monotonic()
        c.expect_closed(timeout=scaled(2 + 5))
        assert time.monotonic() - t0 >= 1.5


def test_thousands_of_idle_connections(broker, side):
    """2000 connections opened and never used: the side client keeps its
    latency and every idle connection is closed after connect_timeout."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    socks = []
    try:
        for _ in range(2000):
            s = socket.create_connection((broker.host, broker.port), timeout=scaled(10))
            socks.append(s)
        side.check()
        deadline = time.monotonic() + scaled(20)
        for s in socks:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                assert s.recv(16) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in socks:
            s.close()
