"""Will messages [MQTT-3.1.2-8 .. -17], [MQTT-3.1.2-24], [MQTT-3.14.4-3]."""

import time

import pytest

import mqttraw
from util import LineProc, collect_until, raw, raw_connected, scaled, uniq

# Every integration broker runs 2 event loops: the whole file runs under TSan too.
pytestmark = [pytest.mark.threaded]


def _watcher(broker, will_topic, qos=2):
    w = raw_connected(broker, name="watcher")
    assert w.subscribe([(will_topic, qos)]) == [qos]
    return w


def _will_client(broker, will_topic, payload=b"gone", will_qos=0, will_retain=False,
                 keepalive=60, client_id=None, clean_session=True):
    c = raw(broker, name="will-client")
    c.connect(client_id or uniq("w"), will_topic=will_topic, will_payload=payload,
              will_qos=will_qos, will_retain=will_retain, keepalive=keepalive,
              clean_session=clean_session)
    return c


def test_will_on_keepalive_timeout(broker):
    """[MQTT-3.1.2-24] with keep-alive 1 and no traffic the broker must
    disconnect after 1.5 s (not 1.0 s) and then publish the will
    [MQTT-3.1.2-8]."""
    topic = uniq("will/ka/")
    with _watcher(broker, topic) as w:
        # Taken before the CONNECT is sent: the broker's timer starts no earlier.
        t0 = time.monotonic()
        c = _will_client(broker, topic, b"ka-expired", keepalive=1)
        try:
            p = w.recv_publish(timeout=scaled(1.5 + 3.0))
            elapsed = time.monotonic() - t0
            assert (p.topic, p.payload, p.qos, p.retain) == (topic, b"ka-expired", 0, False)
            # A broker closing at 1.0 x keep-alive (plus its 0.2 s tick) fails here.
            assert elapsed >= 1.45, "connection dropped too early (%.2fs < 1.5 x keepalive)" % elapsed
            assert elapsed <= 1.5 + scaled(1.0), "will after %.2fs" % elapsed
            c.expect_closed(scaled(2))
        finally:
            c.close()


def test_keepalive_zero_disables_timeout(broker):
    """[MQTT-3.1.2-24] keep-alive 0 turns the mechanism off: a client idle for
    3 s stays connected, while a keep-alive 1 client idle beside it is closed
    after 1.5 s (so the timer did run)."""
    topic = uniq("will/ka0/")
    with _watcher(broker, topic + "/#") as w:
        t0 = time.monotonic()
        idle = _will_client(broker, topic + "/zero", b"must-not", keepalive=0)
        short = _will_client(broker, topic + "/one", b"expired", keepalive=1)
        try:
            p = w.recv_publish(timeout=scaled(1.5 + 3.0))
            assert (p.topic, p.payload) == (topic + "/one", b"expired")
            short.expect_closed(scaled(2))
            # The behaviour under test is idle time: stay silent until 3 s
            # (twice the other client's 1.5 x keep-alive) have passed.
            time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))
            idle.ping(timeout=scaled(2))
            idle.disconnect()
        finally:
            short.close()
            idle.close()
        sentinel = topic + "/end"
        with raw_connected(broker, name="pub") as pub:
            pub.publish(sentinel, b"e", qos=1)
        assert collect_until(w, sentinel) == []


def test_keepalive_respected_with_pings(broker):
    """[MQTT-3.1.2-23/24] a client with keep-alive 1 that sends PINGREQ every
    0.5 s stays connected for 3 s, and no will is published."""
    topic = uniq("will/ping/")
    with _watcher(broker, topic) as w:
        c = _will_client(broker, topic, b"must-not", keepalive=1)
        try:
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                c.ping(timeout=scaled(2))
                time.sleep(0.5)  # the behaviour under test is the keep-alive timer
            c.disconnect()
        finally:
            c.close()
        sentinel = topic + "/end"
        w.subscribe([(sentinel, 1)])
        with raw_connected(broker, name="pub") as pub:
            pub.publish(sentinel, b"e", qos=1)
        assert collect_until(w, sentinel) == []


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_will_on_abrupt_socket_close(broker, how):
    """[MQTT-3.1.2-8] network connection closed without DISCONNECT -> will."""
    topic = uniq("will/close/")
    with _watcher(broker, topic) as w:
        c = _will_client(broker, topic, b"closed-" + how.encode(), will_qos=1)
        if how == "fin":
            c.close()
        else:
            c.abort()
        p = w.recv_publish(timeout=5)
        assert (p.topic, p.payload, p.qos, p.retain) == (topic, b"closed-" + how.encode(), 1, False)


def test_will_on_client_process_kill(broker):
    """Kill -9 of a mosquitto_sub holding a will -> the will is published."""
    topic = uniq("will/kill/")
    with _watcher(broker, topic) as w:
        p = LineProc(["stdbuf", "-oL", "mosquitto_sub", "-d", "-h", broker.host,
                      "-p", str(broker.port), "-t", uniq("will/kill-sub/"),
                      "--will-topic", topic, "--will-payload", "killed", "--will-qos", "2"])
        try:
            p.wait_line("Subscribed (mid:")
        finally:
            p.kill()
        got = w.recv_publish(timeout=5)
        assert (got.topic, got.payload, got.qos) == (topic, b"killed", 2)
        w.finish_qos2()


@pytest.mark.parametrize("violation", ["second-connect", "qos3-publish", "garbage"])
def test_will_on_protocol_violation(broker, violation):
    """[MQTT-3.1.2-8] the server closing the connection because of a protocol
    error publishes the will."""
    topic = uniq("will/viol/")
    with _watcher(broker, topic) as w:
        c = _will_client(broker, topic, b"violated")
        bad = {
            "second-connect": mqttraw.connect("again"),
            "qos3-publish": mqttraw.publish("x/y", b"", flags=0x06, pid=1),
            "garbage": b"\x00\x00\x00\x00",
        }[violation]
        c.send(bad)
        try:
            c.expect_closed(scaled(5))
        finally:
            c.close()
        p = w.recv_publish(timeout=5)
        assert (p.topic, p.payload) == (topic, b"violated")


def test_will_on_takeover(broker):
    """A second connection with the same client id closes the first
    [MQTT-3.1.4-2]; that close is not a DISCONNECT, so the first
    connection's will is published."""
    topic = uniq("will/takeover/")
    cid = uniq("dup")
    with _watcher(broker, topic) as w:
        first = _will_client(broker, topic, b"taken-over", client_id=cid)
        second = raw(broker, name="second")
        try:
            second.connect(cid)
            first.expect_closed(scaled(5))
            p = w.recv_publish(timeout=5)
            assert (p.topic, p.payload) == (topic, b"taken-over")
            second.disconnect()
        finally:
            first.close()
            second.close()


def test_no_will_after_clean_disconnect(broker):
    """[MQTT-3.1.2-10][MQTT-3.14.4-3] DISCONNECT discards the will."""
    topic = uniq("will/clean/")
    with _watcher(broker, topic) as w:
        c = _will_client(broker, topic, b"must-not", will_qos=1, will_retain=True)
        c.disconnect()
        sentinel = uniq("will/clean-end/")
        w.subscribe([(sentinel, 1)])
        with raw_connected(broker, name="pub") as pub:
            pub.publish(sentinel, b"e", qos=1)
        assert collect_until(w, sentinel) == []
        # Nothing late either (the will would be published right at the close).
        w.expect_no_packet(scaled(0.5))
    # ...and no retained will was stored.
    with raw_connected(broker, name="late") as late:
        late.subscribe([(topic, 1), (sentinel, 1)])
        # sentinel is not retained, so publish it again
        with raw_connected(broker, name="pub2") as pub:
            pub.publish(sentinel, b"e", qos=1)
        assert collect_until(late, sentinel) == []


@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_qos_honoured(broker, will_qos):
    """[MQTT-3.1.2-14] the will is published with the will QoS (subscriber at QoS 2)."""
    topic = uniq("will/qos/")
    with _watcher(broker, topic, qos=2) as w:
        c = _will_client(broker, topic, b"q", will_qos=will_qos)
        c.abort()
        p = w.recv_publish(timeout=5)
        assert (p.payload, p.qos, p.retain) == (b"q", will_qos, False)
        w.finish_qos2()


def test_will_retain_honoured(broker):
    """[MQTT-3.1.2-17] will retain 1: published as a retained message, so a
    later subscriber gets it with RETAIN=1 (the live copy has RETAIN=0)."""
    topic = uniq("will/retain/")
    with _watcher(broker, topic, qos=1) as w:
        c = _will_client(broker, topic, b"last-words", will_qos=1, will_retain=True)
        c.abort()
        p = w.recv_publish(timeout=5)
        assert (p.payload, p.qos, p.retain) == (b"last-words", 1, False)
    with raw_connected(broker, name="late") as late:
        late.subscribe([(topic, 2)])
        p = late.recv_publish()
        assert (p.topic, p.payload, p.qos, p.retain) == (topic, b"last-words", 1, True)


def test_will_not_retained_without_flag(broker):
    """Will retain 0: a later subscriber gets nothing."""
    topic = uniq("will/noretain/")
    with _watcher(broker, topic, qos=1) as w:
        c = _will_client(broker, topic, b"x", will_qos=1, will_retain=False)
        c.abort()
        assert w.recv_publish(timeout=5).payload == b"x"
    sentinel = uniq("will/noretain-end/")
    with raw_connected(broker, name="pub") as pub:
        pub.publish(sentinel, b"e", qos=1, retain=True)
    with raw_connected(broker, name="late") as late:
        late.subscribe([(topic, 1), (sentinel, 1)])
        assert collect_until(late, sentinel) == []
