"""Retained messages [MQTT-3.3.1-5 .. -12] and `$` topics [MQTT-4.7.2-1]."""

import pytest

from util import collect_until, mosquitto_pub, mosquitto_sub, raw_connected, uniq

# Every integration broker runs 2 event loops: the whole file runs under TSan too.
pytestmark = [pytest.mark.threaded]


def _retained_on_subscribe(broker, filters, sentinel):
    """Subscribe `filters` plus, last in the same SUBSCRIBE, the retained
    `sentinel` topic ([MQTT-3.8.4-4]: handled as sequential subscriptions);
    returns the retained publishes that arrived before the sentinel's."""
    with raw_connected(broker, name="late-sub") as sub:
        granted = sub.subscribe(list(filters) + [(sentinel, 1)])
        assert granted == [q for _, q in filters] + [1], granted
        got = collect_until(sub, sentinel)
        sub.finish_qos2()
        return got


def _set_sentinel(broker):
    s = uniq("sentinel/")
    mosquitto_pub(broker, s, "end", qos=1, retain=True)
    return s


def test_retained_set_and_delivered_on_subscribe(broker):
    """[MQTT-3.3.1-5][MQTT-3.3.1-6][MQTT-3.3.1-8] retained message is stored and
    sent to a new subscriber with RETAIN=1."""
    topic = uniq("ret/set/")
    mosquitto_pub(broker, topic, "v1", qos=1, retain=True)
    sentinel = _set_sentinel(broker)
    got = _retained_on_subscribe(broker, [(topic, 1)], sentinel)
    assert [(p.topic, p.payload, p.retain, p.qos) for p in got] == [(topic, b"v1", True, 1)]


def test_retained_delivered_with_mosquitto_sub(broker):
    topic = uniq("ret/mq/")
    mosquitto_pub(broker, topic, "hello", qos=1, retain=True)
    sub = mosquitto_sub(broker, topic, qos=1, count=1)
    try:
        assert sub.wait_exit(10) == 0, sub.output()
    finally:
        sub.kill()
    out = sub.output()
    assert "%s hello" % topic in out.splitlines(), out
    assert "received PUBLISH (d0, q1, r1," in out, out


def test_retained_replace(broker):
    """[MQTT-3.3.1-5] a new retained message replaces the old one: exactly one
    retained message, the latest."""
    topic = uniq("ret/replace/")
    mosquitto_pub(broker, topic, "v1", qos=1, retain=True)
    mosquitto_pub(broker, topic, "v2", qos=1, retain=True)
    sentinel = _set_sentinel(broker)
    got = _retained_on_subscribe(broker, [(topic, 2)], sentinel)
    assert [(p.payload, p.retain) for p in got] == [(b"v2", True)]


def test_qos0_retained_replaces_stored_message(broker):
    """[MQTT-3.3.1-5] a retained PUBLISH of any QoS replaces the stored
    message, QoS 0 included [MQTT-3.3.1-7]; a later subscriber gets the
    QoS 0 message with RETAIN=1 [MQTT-3.3.1-6]."""
    topic = uniq("ret/q0/")
    sentinel = uniq("sentinel/")
    with raw_connected(broker, name="pub") as pub:
        pub.publish(topic, b"old", qos=1, retain=True)
        pub.publish(topic, b"new", qos=0, retain=True)
        # Same connection, so handled after the QoS 0 message.
        pub.publish(sentinel, b"end", qos=1, retain=True)
    got = _retained_on_subscribe(broker, [(topic, 1)], sentinel)
    assert [(p.payload, p.retain, p.qos) for p in got] == [(b"new", True, 0)], got


def test_non_retained_publish_keeps_retained_message(broker):
    """[MQTT-3.3.1-12] a PUBLISH with RETAIN=0 neither replaces nor removes the
    retained message, whatever its QoS and even with an empty payload."""
    topic = uniq("ret/keep/")
    sentinel = uniq("sentinel/")
    with raw_connected(broker, name="pub") as pub:
        pub.publish(topic, b"keep", qos=1, retain=True)
        pub.publish(topic, b"live1", qos=1)
        pub.publish(topic, b"live2", qos=2)
        pub.publish(topic, b"", qos=1)
        pub.publish(topic, b"", qos=0)
        pub.publish(sentinel, b"end", qos=1, retain=True)
    got = _retained_on_subscribe(broker, [(topic, 1)], sentinel)
    assert [(p.payload, p.retain) for p in got] == [(b"keep", True)], got


def test_retained_clear_with_empty_payload(broker):
    """[MQTT-3.3.1-10][MQTT-3.3.1-11] an empty retained PUBLISH removes the
    retained message, is delivered normally to existing subscribers, and is
    not itself stored."""
    topic = uniq("ret/clear/")
    mosquitto_pub(broker, topic, "v1", qos=1, retain=True)
    with raw_connected(broker, name="existing") as existing:
        existing.subscribe([(topic, 1)])
        first = existing.recv_publish()
        assert (first.payload, first.retain) == (b"v1", True)
        mosquitto_pub(broker, topic, qos=1, retain=True, null=True)
        live = existing.recv_publish()
        assert (live.topic, live.payload, live.retain) == (topic, b"", False), live
    sentinel = _set_sentinel(broker)
    got = _retained_on_subscribe(broker, [(topic, 1)], sentinel)
    assert got == [], "retained message not cleared: %r" % (got,)


def test_live_delivery_has_retain_0(broker):
    """[MQTT-3.3.1-9] a retained PUBLISH forwarded to an existing subscription
    has RETAIN=0; a later subscriber gets it with RETAIN=1."""
    topic = uniq("ret/live/")
    with raw_connected(broker, name="existing") as sub, raw_connected(broker, name="pub") as pub:
        sub.subscribe([(topic, 1)])
        pub.publish(topic, b"L", qos=1, retain=True)
        p = sub.recv_publish()
        assert (p.payload, p.retain, p.qos) == (b"L", False, 1), p
    sentinel = _set_sentinel(broker)
    got = _retained_on_subscribe(broker, [(topic, 0)], sentinel)
    assert [(p.payload, p.retain, p.qos) for p in got] == [(b"L", True, 0)]


def test_retained_qos_is_min_of_stored_and_granted(broker):
    """Retained QoS 2 message to a QoS 1 subscription arrives at QoS 1;
    retained QoS 0 to a QoS 2 subscription arrives at QoS 0."""
    t2 = uniq("ret/q2/")
    t0 = uniq("ret/q0/")
    with raw_connected(broker, name="pub") as pub:
        pub.publish(t2, b"two", qos=2, retain=True)
        pub.publish(t0, b"zero", qos=0, retain=True)
        pub.publish(uniq("ret/flush"), b"", qos=1)  # QoS 0 above processed before this ack
    sentinel = _set_sentinel(broker)
    got = _retained_on_subscribe(broker, [(t2, 1), (t0, 2)], sentinel)
    assert sorted((p.payload, p.qos, p.retain) for p in got) == [(b"two", 1, True),
                                                                (b"zero", 0, True)]


def test_wildcards_match_retained(broker):
    """Retained messages are delivered for wildcard filters that match."""
    base = uniq("ret/wild")
    for leaf in ("a/x", "b/x", "b/y"):
        mosquitto_pub(broker, "%s/%s" % (base, leaf), leaf, qos=1, retain=True)
    sentinel = _set_sentinel(broker)
    got = _retained_on_subscribe(broker, [(base + "/+/x", 1)], sentinel)
    assert sorted(p.payload for p in got) == [b"a/x", b"b/x"]
    assert all(p.retain for p in got)
    got = _retained_on_subscribe(broker, [(base + "/#", 1)], sentinel)
    assert sorted(p.payload for p in got) == [b"a/x", b"b/x", b"b/y"]


def test_dollar_topics_not_matched_by_leading_wildcards(broker):
    """[MQTT-4.7.2-1] `#` and `+/x` must not match topics starting with `$`;
    `$foo/#` does."""
    dollar = "$foo/x"
    mosquitto_pub(broker, dollar, "dollar", qos=1, retain=True)
    sentinel_topic = "zz/x"  # matched by both `#` and `+/x`
    mosquitto_pub(broker, sentinel_topic, "end", qos=1, retain=True)

    for filt in ("#", "+/x", "+/+"):
        with raw_connected(broker, name="sub-" + filt) as sub:
            sub.subscribe([(filt, 1)])
            got = collect_until(sub, sentinel_topic)
            assert not [p for p in got if p.topic.startswith("$")], (
                "filter %r matched $-topics: %r" % (filt, got))

    with raw_connected(broker, name="sub-$foo") as sub:
        sub.subscribe([("$foo/#", 1), ("zz/x", 1)])
        got = collect_until(sub, sentinel_topic)
        assert [(p.topic, p.payload, p.retain) for p in got] == [(dollar, b"dollar", True)]

    # Live (non-retained) publication to a $ topic with `#` and `+/x` subscribed.
    with raw_connected(broker, name="live-#") as sub, raw_connected(broker, name="pub") as pub:
        sub.subscribe([("#", 1), ("+/x", 1)])
        collect_until(sub, sentinel_topic)  # drain retained deliveries
        pub.publish(dollar, b"live", qos=1)
        pub.publish("zz/y", b"end2", qos=1)
        got = collect_until(sub, "zz/y")
        assert not [p for p in got if p.topic.startswith("$")], got


def test_sys_topics_not_matched_by_hash(broker):
    """[MQTT-4.7.2-1] whatever the broker publishes under $SYS, `#` does not get it."""
    with raw_connected(broker, name="sub") as sub, raw_connected(broker, name="pub") as pub:
        sub.subscribe([("#", 0)])
        end = uniq("sys-end/")
        pub.publish(end, b"e", qos=1)
        got = collect_until(sub, end)
        assert not [p for p in got if p.topic.startswith("$")], got


def test_resubscribe_resends_retained(broker):
    """[MQTT-3.8.4-3] a SUBSCRIBE replacing an existing subscription re-sends
    the matching retained messages."""
    topic = uniq("ret/resub/")
    mosquitto_pub(broker, topic, "R", qos=1, retain=True)
    with raw_connected(broker, name="sub") as sub:
        assert sub.subscribe([(topic, 1)]) == [1]
        p = sub.recv_publish()
        assert (p.payload, p.retain) == (b"R", True)
        assert sub.subscribe([(topic, 1)]) == [1]
        p = sub.recv_publish()
        assert (p.topic, p.payload, p.retain) == (topic, b"R", True)
        # a normal publish afterwards is delivered once (replaced, not doubled)
        end = uniq("ret/resub-end/")
        sub.subscribe([(end, 1)])
        with raw_connected(broker, name="pub") as pub:
            pub.publish(topic, b"after", qos=1)
            pub.publish(end, b"e", qos=1)
        got = collect_until(sub, end)
        assert [(p.payload, p.retain) for p in got] == [(b"after", False)]
