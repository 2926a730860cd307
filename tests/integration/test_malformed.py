"""Garbage on the wire: every bad connection is closed by the broker while a
well-behaved paho client stays connected and keeps getting round trips."""

import random
import time

import pytest

import mqttraw as m
from util import Paho, raw, roundtrip, scaled, uniq

# Every integration broker runs 2 event loops: the whole file runs under TSan too.
pytestmark = [pytest.mark.threaded]

SEED = 0x5EED1
MAX_PACKET = 64 * 1024


def _connect_body(client_id=b"cid"):
    return m.mqtt_string("MQTT") + bytes([4, 0x02]) + m.u16(0) + m.mqtt_string(client_id)


# Complete packets (remaining length consistent with the bytes sent) whose
# content is cut short or whose inner lengths run past the packet end.
PRE_CONNECT_CASES = [
    ("connect-rl0", m.packet(m.CONNECT, 0, b"")),
    ("connect-name-cut", m.packet(m.CONNECT, 0, b"\x00\x04MQ")),
    ("connect-no-flags", m.packet(m.CONNECT, 0, b"\x00\x04MQTT\x04")),
    ("connect-no-keepalive", m.packet(m.CONNECT, 0, b"\x00\x04MQTT\x04\x02\x00")),
    ("connect-no-client-id", m.packet(m.CONNECT, 0, b"\x00\x04MQTT\x04\x02\x00\x3c")),
    ("connect-protoname-len-ffff", m.packet(m.CONNECT, 0, b"\xff\xffMQTT\x04\x02\x00\x3c\x00\x00")),
    ("connect-clientid-len-past-end", m.packet(m.CONNECT, 0,
                                               b"\x00\x04MQTT\x04\x02\x00\x3c\x01\xf4abc")),
    ("connect-will-flag-no-will", m.packet(m.CONNECT, 0,
                                           b"\x00\x04MQTT\x04\x06\x00\x3c\x00\x01a")),
    ("connect-will-topic-past-end", m.packet(m.CONNECT, 0,
                                             b"\x00\x04MQTT\x04\x06\x00\x3c\x00\x01a\x00\x10w")),
    ("connect-will-msg-missing", m.packet(m.CONNECT, 0,
                                          b"\x00\x04MQTT\x04\x06\x00\x3c\x00\x01a\x00\x01w")),
    ("connect-username-missing", m.packet(m.CONNECT, 0,
                                          b"\x00\x04MQTT\x04\x82\x00\x3c\x00\x01a")),
    ("connect-password-past-end", m.packet(m.CONNECT, 0,
                                           b"\x00\x04MQTT\x04\xc2\x00\x3c\x00\x01a\x00\x01u\x00\x09p")),
    ("connect-huge-remaining-length", b"\x10\xff\xff\xff\x7f"),
    ("connect-over-max-packet-size", b"\x10" + m.encode_remaining_length(MAX_PACKET + 1)),
    ("rl-5-bytes", b"\x10\x80\x80\x80\x80\x01"),
    ("all-zero", b"\x00" * 64),
    ("all-ff", b"\xff" * 64),
    ("http-request", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
    ("tls-client-hello", bytes.fromhex("160301007a0100007603035b")),
]

POST_CONNECT_CASES = [
    ("publish-rl0", m.packet(m.PUBLISH, 0, b"")),
    ("publish-rl1", m.packet(m.PUBLISH, 0, b"\x00")),
    ("publish-topic-len-ffff", m.packet(m.PUBLISH, 0, b"\xff\xffa/b")),
    ("publish-topic-len-past-end", m.packet(m.PUBLISH, 0, b"\x00\x09a/b")),
    ("publish-qos1-no-packet-id", m.packet(m.PUBLISH, 2, b"\x00\x03a/b")),
    ("publish-qos1-half-packet-id", m.packet(m.PUBLISH, 2, b"\x00\x03a/b\x01")),
    ("publish-huge-remaining-length", b"\x30\xff\xff\xff\x7f"),
    ("publish-over-max-packet-size", b"\x32" + m.encode_remaining_length(MAX_PACKET + 1)),
    ("subscribe-rl0", m.packet(m.SUBSCRIBE, 2, b"")),
    ("subscribe-only-packet-id", m.packet(m.SUBSCRIBE, 2, b"\x00\x01")),
    ("subscribe-filter-past-end", m.packet(m.SUBSCRIBE, 2, b"\x00\x01\x00\x20a/b\x00")),
    ("subscribe-missing-qos", m.packet(m.SUBSCRIBE, 2, b"\x00\x01\x00\x03a/b")),
    ("subscribe-second-filter-cut", m.packet(m.SUBSCRIBE, 2, b"\x00\x01\x00\x01a\x00\x00\x05x")),
    ("unsubscribe-filter-past-end", m.packet(m.UNSUBSCRIBE, 2, b"\x00\x01\x00\x09a")),
    ("unsubscribe-half-packet-id", m.packet(m.UNSUBSCRIBE, 2, b"\x00")),
    ("puback-rl0", m.packet(m.PUBACK, 0, b"")),
    ("puback-rl1", m.packet(m.PUBACK, 0, b"\x01")),
    ("puback-rl3", m.packet(m.PUBACK, 0, b"\x00\x01\x00")),
    ("pubrec-rl1", m.packet(m.PUBREC, 0, b"\x01")),
    ("pubrel-rl0", m.packet(m.PUBREL, 2, b"")),
    ("pubcomp-rl3", m.packet(m.PUBCOMP, 0, b"\x00\x01\x00")),
    ("disconnect-with-body", m.packet(m.DISCONNECT, 0, b"\x00")),
    ("rl-5-bytes", b"\x30\x80\x80\x80\x80\x01"),
]


@pytest.fixture
def env(start_broker):
    broker = start_broker(connect_timeout=1, max_packet_size=MAX_PACKET)
    health = Paho(broker, client_id=uniq("health"), keepalive=30)
    assert health.subscribe([("health/#", 1)]) == [1]
    state = {"n": 0}

    def check():
        state["n"] += 1
        topic = "health/%d" % state["n"]
        health.publish(topic, b"ok", qos=1)
        msg = health.get(10)
        assert (msg.topic, msg.payload) == (topic, b"ok")
        assert not health.disconnected.is_set(), "health client was disconnected"
        assert broker.alive(), "broker died"

    yield broker, check
    assert not health.disconnected.is_set(), "health client was disconnected"
    health.close()
    roundtrip(broker)


def _open_all(broker, cases, connect=False, keepalive=0):
    conns = []
    for name, data in cases:
        c = raw(broker, name=name)
        if connect:
            c.connect(uniq("mal"), keepalive=keepalive)
        conns.append((name, c))
    for (name, c), (_, data) in zip(conns, cases):
        c.send(data, ignore_errors=True)
    return conns


def _all_closed(conns, timeout):
    deadline = time.monotonic() + scaled(timeout)
    not_closed = []
    for name, c in conns:
        try:
            c.expect_closed(max(deadline - time.monotonic(), 0.05))
        except AssertionError:
            not_closed.append(name)
        finally:
            c.close()
    assert not not_closed, "broker did not close: %s" % not_closed


def test_malformed_before_connect(env):
    """Each malformed first packet is closed promptly (well before connect_timeout
    would matter for the complete ones)."""
    broker, check = env
    for name, data in PRE_CONNECT_CASES:
        _all_closed(_open_all(broker, [(name, data)]), 3)
        check()


def test_malformed_after_connect(env):
    """Malformed packets after a good CONNECT (keep-alive 0, so only the
    protocol error can close them)."""
    broker, check = env
    for name, data in POST_CONNECT_CASES:
        _all_closed(_open_all(broker, [(name, data)], connect=True), 3)
        check()


def test_random_garbage_before_connect(env):
    """Random byte strings (fixed seed) as the first bytes of a connection.
    Incomplete-but-plausible ones are closed by connect_timeout (1 s)."""
    broker, check = env
    rnd = random.Random(SEED)
    cases = [("random-%d" % i, bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 300))))
             for i in range(60)]
    for i in range(0, len(cases), 15):
        _all_closed(_open_all(broker, cases[i:i + 15]), 1 + 4)
        check()


def test_random_garbage_after_connect(env):
    """Random bytes after a valid CONNECT with keep-alive 1: closed either for
    the protocol error or, if the bytes happen to be a valid prefix, by the
    keep-alive timer (1.5 s)."""
    broker, check = env
    rnd = random.Random(SEED + 1)
    cases = [("random-post-%d" % i, bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 300))))
             for i in range(40)]
    for i in range(0, len(cases), 20):
        _all_closed(_open_all(broker, cases[i:i + 20], connect=True, keepalive=1), 1.5 + 4)
        check()


def test_truncated_stream(env):
    """A valid packet cut short and then silence: before CONNECT the
    connect_timeout closes it, after CONNECT the keep-alive does."""
    broker, check = env
    full = m.connect("truncated", keepalive=1)
    pre = [("connect-first-%d" % n, full[:n]) for n in (1, 2, 3, 7, len(full) - 1)]
    _all_closed(_open_all(broker, pre), 1 + 4)
    check()
    pub = m.publish("a/b", b"x" * 100, qos=1, pid=3)
    post = [("publish-first-%d" % n, pub[:n]) for n in (1, 2, 5, 50, len(pub) - 1)]
    _all_closed(_open_all(broker, post, connect=True, keepalive=1), 1.5 + 4)
    check()


def test_oversized_publish_body_sent(env):
    """A PUBLISH larger than max_packet_size actually sent in full: connection
    closed, broker fine; a publish under the limit goes through."""
    broker, check = env
    big = m.publish("big/x", b"B" * (MAX_PACKET + 100))
    conns = _open_all(broker, [("oversized", big)], connect=True)
    _all_closed(conns, 3)
    check()
    with raw(broker, name="sub") as sub, raw(broker, name="pub") as pub:
        sub.connect(uniq("bigsub"))
        pub.connect(uniq("bigpub"))
        sub.subscribe([("big/ok", 1)])
        payload = bytes(random.Random(SEED).getrandbits(8) for _ in range(MAX_PACKET // 2))
        pub.publish("big/ok", payload, qos=1)
        got = sub.recv_publish()
        assert got.payload == payload
    check()


@pytest.mark.moat_only
def test_protocol_error_logged(env):
    """Malformed packets are logged at debug with `protocol error` and the peer."""
    broker, check = env
    mark = broker.log_mark()
    c = raw(broker, name="log")
    port = c.local_port
    c.send(m.packet(m.CONNECT, 0, b"\xff\xffMQTT"))
    c.expect_closed(scaled(3))
    c.close()
    broker.wait_for_log(r"(?=.*protocol error)(?=.*127\.0\.0\.1\]?:%d\b)" % port,
                        timeout=5, since=mark)
    check()
