"""The limits of docs/limits.md end to end: each is refused as documented,
logged once per log_interval with the peer, and counted under
$SYS/broker/limits/. Loopback is exempt from the per-address connection
limit and flapping detection by default, so these brokers set
[auth.defence] allow = [] (with the connection rate off)."""

import signal
import time

import pytest

import mqttraw
from conftest import Broker, _teardown, moat_config, DEFAULTS
from util import collect_until, raw, raw_connected, roundtrip, scaled, uniq

pytestmark = [pytest.mark.moat_only]

IDENTIFIER_REJECTED = 2
NOT_AUTHORIZED = 5


@pytest.fixture
def limited_broker(tmp_path):
    """Factory: limited_broker(limits={...}, payload=[(filter, max)], defence=True)."""
    started = []

    def start(limits=None, payload=(), exempt_loopback=False):
        workdir = tmp_path / ("broker%d" % len(started))
        workdir.mkdir()
        (workdir / "data").mkdir()
        opts = dict(DEFAULTS, limits_extra=dict({"log_interval": 60}, **(limits or {})))
        text = moat_config(str(workdir / "data"), opts)
        text = text.replace("[broker]\n", "[broker]\nsys_interval = 1\n", 1)
        for f, m in payload:
            text += '\n[[limits.payload]]\ntopics = "%s"\nmax = %d\n' % (f, m)
        if not exempt_loopback:
            text += "\n[auth.defence]\nallow = []\nconnection_rate = 0\n"
        conf = workdir / "moat.toml"
        conf.write_text(text)
        b = Broker([__import__("conftest").MOATD, "-c", str(conf)], cwd=str(workdir), config_path=str(conf))
        started.append(b)
        b.workdir = workdir
        b.wait_listening()
        return b

    yield start
    for b in started:
        _teardown(b)


def connect_and_drop(broker, cid):
    """Connects as `cid`, then drops the connection without DISCONNECT and
    waits until moatd has seen the drop; returns how long the CONNACK took."""
    c = raw(broker, name="flap")
    t0 = time.monotonic()
    c.connect(cid)
    took = time.monotonic() - t0
    mark = broker.log_mark()
    c.abort()  # no DISCONNECT: a drop
    broker.wait_for_log(r"client %s from .* disconnected: connection lost" % cid, since=mark)
    return took


def restarted(b):
    """Stops limited broker b with SIGTERM and starts a new moatd on its
    configuration and data folder (the caller stops it)."""
    assert b.stop(signal.SIGTERM, 10) == 0
    return Broker([__import__("conftest").MOATD, "-c", b.config_path], cwd=str(b.workdir),
                  config_path=b.config_path)


def wait_sys(broker, name, at_least, timeout=10):
    """The first value of $SYS/broker/limits/NAME (published each second) that is
    at least `at_least`."""
    deadline = time.monotonic() + scaled(timeout)
    with raw_connected(broker, name="sys") as c:
        c.subscribe([("$SYS/broker/limits/" + name, 0)])
        while True:
            v = int(c.recv_publish(timeout=max(deadline - time.monotonic(), 0.01)).payload)
            if v >= at_least:
                return v


def test_connections_per_address_and_total(limited_broker):
    b = limited_broker({"max_connections_per_address": 3})
    clients = [raw_connected(b, name="c%d" % i) for i in range(3)]
    extra = raw(b, name="fourth")
    extra.expect_closed()  # closed at accept, before any CONNECT is read
    b.wait_for_log(r"limit max_connections_per_address hit by 127\.0\.0\.1:\d+ \(-\): 3 connections open")
    clients.pop().close()
    # The slot comes back when the connection is gone; poll the accept (bounded).
    deadline = time.monotonic() + scaled(10)
    while True:
        c = raw(b, name="again")
        try:
            c.connect(uniq("again"))
            break
        except mqttraw.ConnectionClosed:
            c.close()
            assert time.monotonic() < deadline, "slot never released"
    c.close()
    for x in clients:
        x.close()

    t = limited_broker({"max_connections": 2}, exempt_loopback=True)
    a, bb = raw_connected(t, name="a"), raw_connected(t, name="b")
    raw(t, name="third").expect_closed()
    t.wait_for_log(r"limit max_connections hit by 127\.0\.0\.1")
    a.close()
    bb.close()


def test_client_id_and_topic_limits(limited_broker):
    b = limited_broker({"max_client_id_length": 30, "max_topic_length": 40, "max_topic_levels": 4})
    with raw(b) as c:
        c.connect("x" * 31, expect_rc=IDENTIFIER_REJECTED)
        c.expect_closed()
    b.wait_for_log(r"limit max_client_id_length hit by 127\.0\.0\.1:\d+ \(-\): client id of 31 bytes")
    with raw_connected(b, "sub") as sub, raw_connected(b, "pub1") as pub:
        assert sub.subscribe([("a/#", 1), ("a/b/c/d/e", 0), ("x" * 41, 0)]) == [1, 0x80, 0x80]
        pub.publish("a/b/c/d", b"fits", qos=1)
        assert sub.recv_publish().payload == b"fits"
        # Over the levels: closed before the PUBACK, nothing delivered.
        pub.send(mqttraw.publish("a/b/c/d/e", b"no", qos=1, pid=9))
        assert mqttraw.parse_all(pub.expect_closed()) == []
        with raw_connected(b, "pub2") as p2:
            p2.publish("a/end", b"sentinel", qos=1)
        assert collect_until(sub, "a/end") == []
    # Logged once per log_interval: the SUBSCRIBE's report stands for the PUBLISH too.
    b.wait_for_log(r"limit max_topic_levels hit by 127\.0\.0\.1:\d+ \(sub\): SUBSCRIBE to a filter of 9 bytes")
    b.wait_for_log(r"client pub1 from .* disconnected: topic over the limits")
    # A will topic over the limits refuses the CONNECT.
    with raw(b) as c:
        c.connect("w", expect_rc=NOT_AUTHORIZED, will_topic="w/" * 5, will_payload=b"x")
    assert wait_sys(b, "topic_levels", 3) == 3  # the filter, the PUBLISH and the will
    assert wait_sys(b, "topic_length", 1) == 1
    assert wait_sys(b, "client_id_length", 1) == 1
    roundtrip(b)


def test_subscriptions_payload_and_retained(limited_broker):
    b = limited_broker({"max_subscriptions_per_client": 3, "max_retained_messages": 2},
                       payload=[("big/#", 1000), ("#", 10)])
    with raw_connected(b, name="s") as s:
        assert s.subscribe([("a", 0), ("b", 0), ("c", 0), ("d", 0)]) == [0, 0, 0, 0x80]
        assert s.subscribe([("a", 1)]) == [1]  # replacing a held filter is fine
    with raw_connected(b, name="sub") as sub, raw_connected(b, "pub") as pub:
        sub.subscribe([("#", 1)])
        pub.publish("small", b"0123456789", qos=1)
        pub.publish("small", b"0123456789X", qos=1)  # acknowledged, counted, not delivered
        pub.publish("big/x", b"y" * 500, qos=2)
        pub.publish("end", b"", qos=1)
        got = collect_until(sub, "end")
        assert [(p.topic, len(p.payload)) for p in got] == [("small", 10), ("big/x", 500)]
    b.wait_for_log(r"limit limits\.payload hit by 127\.0\.0\.1:\d+ \(pub\): PUBLISH of 11 bytes to 'small'")
    with raw_connected(b, "r") as pub, raw_connected(b, name="live") as live:
        live.subscribe([("r/#", 0)])
        for t in ("r/1", "r/2", "r/3"):
            pub.publish(t, b"v", qos=1, retain=True)
        assert sorted(live.recv_publish().topic for _ in range(3)) == ["r/1", "r/2", "r/3"]
    with raw_connected(b, name="late") as late:
        late.subscribe([("r/#", 0)])
        got = sorted(late.recv_publish().topic for _ in range(2))
        assert got == ["r/1", "r/2"]
        late.expect_no_packet(0.3)
    b.wait_for_log(r"limit max_retained_messages hit by 127\.0\.0\.1:\d+ \(r\): 2 retained topics; 'r/3'")
    assert wait_sys(b, "subscriptions", 1) == 1
    assert wait_sys(b, "payload", 1) == 1
    assert wait_sys(b, "retained_messages", 1) == 1


def test_limit_logged_once_per_interval_and_counted(limited_broker):
    b = limited_broker({"max_client_id_length": 23, "log_interval": 60})
    for _ in range(5):
        with raw(b) as c:
            c.connect("y" * 24, expect_rc=IDENTIFIER_REJECTED)
    assert wait_sys(b, "client_id_length", 5) == 5
    lines = [l for l in b.logs if "limit max_client_id_length" in l]
    assert len(lines) == 1, lines


def test_flapping_client_delayed_then_banned(limited_broker):
    b = limited_broker({"flapping_max": 4, "flapping_window": 60, "flapping_delay": 0.3,
                        "flapping_ban_time": 2})
    cid = uniq("flap")
    assert connect_and_drop(b, cid) < 0.3
    assert connect_and_drop(b, cid) < 0.3
    # From flapping_max/2 drops on, the CONNACK waits 0.3 s, then 0.6 s.
    assert connect_and_drop(b, cid) >= 0.3
    took = connect_and_drop(b, cid)
    assert took >= 0.6
    b.wait_for_log(r"limit flapping_max hit by 127\.0\.0\.1:\d+ \(%s\): client id banned for 2 s" % cid)
    with raw(b) as c:
        c.connect(cid, expect_rc=NOT_AUTHORIZED)
    # Another identifier is unaffected, and the ban ends.
    roundtrip(b)
    deadline = time.monotonic() + scaled(10)
    while True:
        with raw(b) as c:
            c.send(mqttraw.connect(cid))
            _, rc = mqttraw.decode_connack(c.expect(mqttraw.CONNACK))
        if rc == 0:
            break
        assert time.monotonic() < deadline, "ban did not end"
        time.sleep(0.2)  # polling a timed ban: bounded by the deadline
    assert wait_sys(b, "flapping_banned", 1) == 1
    assert wait_sys(b, "flapping_refused", 1) >= 1
    assert wait_sys(b, "flapping_delayed", 2) == 2


def test_flapping_ban_survives_a_restart(limited_broker):
    """A client identifier banned for flapping is written to the store and
    restored at start: a restart does not lift the ban (docs/limits.md)."""
    b = limited_broker({"flapping_max": 2, "flapping_window": 60, "flapping_delay": 0.05,
                        "flapping_ban_time": 600})
    cid = uniq("flap-restart")
    for _ in range(2):
        connect_and_drop(b, cid)
    b.wait_for_log(r"limit flapping_max hit by 127\.0\.0\.1:\d+ \(%s\): client id banned for 600 s" % cid)
    again = restarted(b)
    try:
        again.wait_for_log(r"store: restored 1 client id ban\(s\) of flapping detection")
        again.wait_listening()
        with raw(again) as c:
            c.connect(cid, expect_rc=NOT_AUTHORIZED)
        roundtrip(again)  # another identifier is unaffected
    finally:
        assert again.stop(signal.SIGTERM, 10) == 0


def test_flapping_count_survives_a_restart(limited_broker):
    """The drops of a client identifier within the window are written to the
    store and restored at start: a restart does not reset the count towards
    its ban (docs/limits.md)."""
    b = limited_broker({"flapping_max": 3, "flapping_window": 600, "flapping_delay": 0.05,
                        "flapping_ban_time": 600})
    cid = uniq("flap-count")
    for _ in range(2):
        connect_and_drop(b, cid)
    assert "client id banned" not in b.log_text()  # one drop short of the ban
    again = restarted(b)
    try:
        again.wait_for_log(r"store: restored 1 client id count\(s\) of flapping detection")
        again.wait_listening()
        connect_and_drop(again, cid)  # the third within the window
        again.wait_for_log(r"limit flapping_max hit by 127\.0\.0\.1:\d+ \(%s\): client id banned for 600 s"
                           % cid)
        with raw(again) as c:
            c.connect(cid, expect_rc=NOT_AUTHORIZED)
    finally:
        assert again.stop(signal.SIGTERM, 10) == 0
