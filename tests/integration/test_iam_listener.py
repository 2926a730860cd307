"""[listener.http]: a listener's own IAM server replaces [auth.http] for the
connections that come in through it, both for authentication (its `http`
method) and for the authorization of their publishes, subscriptions and will
(docs/security.md, "An IAM server per listener").

Two real HTTP IAM servers (test_iam.Iam: http.server on 127.0.0.1 port 0)
that log every request they get, a real moatd with three listeners and raw
MQTT clients:

- "a": auth = ["http"], no [listener.http]: [auth.http] (IAM A) decides;
- "b": auth = ["http"] and [listener.http] (IAM B);
- "c": auth = ["http"] and its own [listener.acl], no [listener.http]: IAM A
  decides what its ACL leaves open.

IAM A knows alice and bob and allows topics under ok/; IAM B knows carol
and bob, denies alice, allows topics under b-ok/ and ok/both/, and fails
(HTTP 500) on topics under ok/err/. Which server was asked is read from the
servers' request logs."""

import signal

import pytest

import mqttraw
from conftest import MOATD, Broker
from pki import LISTENER_RE, Endpoint, secure_broker  # noqa: F401 (fixture)
from test_iam import BAD_CREDENTIALS, NOT_AUTHORIZED, SUBACK_FAILURE, Iam
from util import scaled, uniq, wait_audit

pytestmark = [pytest.mark.moat_only, pytest.mark.threaded]


class IamB(Iam):
    """The second IAM server: carol and bob are allowed, alice denied, eve has
    bad credentials; topics under b-ok/ and ok/both/ are allowed, ok/err/
    gets an HTTP error, others are denied."""

    def decide(self, req):
        if req["request"] == "authenticate":
            user = req.get("username")
            if user in ("carol", "bob"):
                return 200, {"result": "allow"}
            if user == "eve":
                return 200, {"result": "bad_credentials", "reason": "wrong password"}
            return 200, {"result": "deny", "reason": "not on this IAM"}
        if req["topic"].startswith("ok/err/"):
            return 500, {}
        allowed = req["topic"].startswith(("b-ok/", "ok/both/"))
        return 200, {"result": "allow" if allowed else "deny"}


@pytest.fixture
def iams():
    a, b = Iam(), IamB()
    yield a, b
    a.close()
    b.close()


def iam_table(name, url, **kw):
    lines = [name, "url = \"%s\"" % url]
    lines += ["%s = %s" % (k, "true" if v is True else v) for k, v in kw.items()]
    return "\n".join(lines) + "\n"


def listeners(iam_b):
    return [
        {"name": "a", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["http"]},
        {"name": "b", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["http"],
         "raw": iam_table("[listener.http]", "http://127.0.0.1:%d/b/auth" % iam_b.port, authorize=True,
                          authorize_url="\"http://127.0.0.1:%d/b/acl\"" % iam_b.port)},
        {"name": "c", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["http"],
         "raw": "[listener.acl]\n[[listener.acl.rule]]\npermission = \"allow\"\naction = \"all\"\n"
                "topic = \"c/#\"\nuser = \"*\"\n"},
    ]


def start(secure_broker, iam_a, iam_b, audit=None):
    b = secure_broker(listeners=listeners(iam_b), audit=audit,
                      extra=iam_table("[auth.http]", "http://127.0.0.1:%d/a/auth" % iam_a.port,
                                      authorize=True))
    b.wait_for_log(r"listener b: IAM server http://127\.0\.0\.1:%d \(authentication and authorization\)"
                   % iam_b.port)
    return b


def client(ep, name):
    return mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name=name)


def connack(ep, user, client_id=None):
    """The CONNACK return code a user gets on endpoint `ep`."""
    c = client(ep, user)
    try:
        c.send(mqttraw.connect(client_id or uniq(user), username=user, password="pw"))
        return mqttraw.decode_connack(c.expect(mqttraw.CONNACK, scaled(10)))[1]
    finally:
        c.close()


def connected(ep, user, client_id=None, clean_session=True):
    c = client(ep, user)
    c.connect(client_id or uniq(user), username=user, password="pw", clean_session=clean_session)
    return c


def asked(iam, kind, user=None, action=None, topic=None):
    return iam.count(kind, user, action, topic)


def test_each_listener_authenticates_with_its_own_iam(secure_broker, iams):
    iam_a, iam_b = iams
    b = start(secure_broker, iam_a, iam_b)
    on_a, on_b, on_c = (b.endpoints[n] for n in "abc")
    # alice: allowed by A, refused on b (B denies her), allowed on c ([auth.http]).
    assert connack(on_a, "alice") == 0
    assert connack(on_b, "alice") == NOT_AUTHORIZED
    assert connack(on_c, "alice") == 0
    # carol: B's user only.
    assert connack(on_b, "carol") == 0
    assert connack(on_a, "carol") == NOT_AUTHORIZED
    assert connack(on_b, "eve") == BAD_CREDENTIALS
    # Each request went to the IAM of the listener the client came through.
    assert {r["listener"] for r in iam_a.of("authenticate")} == {"a", "c"}
    assert {r["listener"] for r in iam_b.of("authenticate")} == {"b"}
    assert {r["_path"] for r in iam_b.of("authenticate")} == {"/b/auth"}
    assert asked(iam_a, "authenticate", "alice") == 2 and asked(iam_b, "authenticate", "alice") == 1
    assert asked(iam_a, "authenticate", "carol") == 1 and asked(iam_b, "authenticate", "carol") == 1
    assert asked(iam_a, "authenticate", "eve") == 0


def test_each_listener_authorizes_with_its_own_iam(secure_broker, iams):
    iam_a, iam_b = iams
    b = start(secure_broker, iam_a, iam_b)
    on_a, on_b, on_c = (b.endpoints[n] for n in "abc")
    alice = connected(on_a, "alice")
    carol = connected(on_b, "carol")
    alice_c = connected(on_c, "alice")
    try:
        # Subscriptions: A decides on a, B on b.
        assert alice.subscribe([("ok/#", 1), ("b-ok/#", 1)]) == [1, SUBACK_FAILURE]
        assert carol.subscribe([("ok/#", 1), ("b-ok/#", 1)]) == [SUBACK_FAILURE, 1]
        assert asked(iam_a, "authorize", "alice", "subscribe") == 2
        assert asked(iam_b, "authorize", "alice") == 0
        assert asked(iam_b, "authorize", "carol", "subscribe") == 2
        assert asked(iam_a, "authorize", "carol") == 0
        # c: its ACL grants c/# without asking; the rest goes to [auth.http] (A).
        assert alice_c.subscribe([("c/x", 1), ("ok/c", 1), ("b-ok/c", 1)]) == [1, 1, SUBACK_FAILURE]
        assert asked(iam_a, "authorize", "alice", "subscribe", "c/x") == 0
        assert asked(iam_a, "authorize", "alice", "subscribe", "ok/c") == 1
        assert asked(iam_a, "authorize", "alice", "subscribe", "b-ok/c") == 1
        assert asked(iam_b, "authorize", "alice") == 0

        # Publishes: carol's ok/x is denied by B (A would allow it) and
        # dropped, so alice (subscribed to ok/# on a) gets only her own
        # sentinel; carol's b-ok/x is allowed by B and reaches her.
        carol.publish("ok/x", b"refused by b", qos=1)
        carol.publish("b-ok/x", b"allowed by b", qos=1)
        m = carol.recv_publish(scaled(5))
        assert (m.topic, m.payload) == ("b-ok/x", b"allowed by b")
        alice.publish("ok/sentinel", b"s", qos=1)
        m = alice.recv_publish(scaled(5))
        assert (m.topic, m.payload) == ("ok/sentinel", b"s")
        alice.expect_no_packet(scaled(0.2))
        assert asked(iam_b, "authorize", "carol", "publish", "ok/x") == 1
        assert asked(iam_b, "authorize", "carol", "publish", "b-ok/x") == 1
        assert asked(iam_a, "authorize", "carol") == 0
        assert asked(iam_a, "authorize", "alice", "publish", "ok/sentinel") == 1
        assert asked(iam_b, "authorize", "alice") == 0
        assert {r["_path"] for r in iam_b.of("authorize")} == {"/b/acl"}
        assert {r["_path"] for r in iam_a.of("authorize")} == {"/a/auth"}
        # Deliveries are not asked about, on either server.
        assert asked(iam_a, "authorize", action="receive") == 0
        assert asked(iam_b, "authorize", action="receive") == 0
    finally:
        for c in (alice, carol, alice_c):
            c.close()


def test_will_topic_is_decided_by_the_listeners_iam(secure_broker, iams):
    iam_a, iam_b = iams
    b = start(secure_broker, iam_a, iam_b)
    on_b = b.endpoints["b"]
    for topic, code in (("ok/will", NOT_AUTHORIZED), ("b-ok/will", 0)):
        c = client(on_b, "carol")
        try:
            c.send(mqttraw.connect(uniq("carol"), username="carol", password="pw", will_topic=topic))
            assert mqttraw.decode_connack(c.expect(mqttraw.CONNACK, scaled(10)))[1] == code, topic
        finally:
            c.close()
    assert asked(iam_b, "authorize", "carol", "publish", "ok/will") == 1
    assert asked(iam_b, "authorize", "carol", "publish", "b-ok/will") == 1
    assert asked(iam_a, "authorize") == 0


def restarted(b, count):
    """Stops moatd b and starts a new one on its configuration and data
    folder; returns it with its endpoints by listener name."""
    assert b.stop(signal.SIGTERM, 10) == 0
    n = Broker([MOATD, "-c", b.config_path], cwd=str(b.workdir), config_path=b.config_path)
    n.endpoints = {}
    idx = 0
    while len(n.endpoints) < count:
        m, i = n.wait_for_log_at(LISTENER_RE.pattern, timeout=10, since=idx)
        idx = i + 1
        n.endpoints[m.group(3)] = Endpoint(m.group(1), int(m.group(2)))
    return n


def test_restored_session_is_judged_by_the_iam_of_its_listener(secure_broker, iams):
    """A persistent session of listener b, restored from the store after a
    restart, gets what was queued for it once carol is back through b, and
    what she does then is decided by B again (the restart emptied the caches)."""
    iam_a, iam_b = iams
    b = start(secure_broker, iam_a, iam_b)
    on_b = b.endpoints["b"]
    cid = uniq("carol-persistent")
    carol = connected(on_b, "carol", client_id=cid, clean_session=False)
    assert carol.subscribe([("b-ok/#", 1)]) == [1]
    carol.close()
    with connected(on_b, "carol") as pub:
        pub.publish("b-ok/queued", b"while away", qos=1)
    b2 = restarted(b, 3)
    try:
        back = client(b2.endpoints["b"], "carol")
        try:
            assert back.connect(cid, username="carol", password="pw", clean_session=False)  # session present
            m = back.recv_publish(scaled(5))
            assert (m.topic, m.payload) == ("b-ok/queued", b"while away")
            # The store keeps no grant: B decided the subscription again.
            assert asked(iam_b, "authorize", "carol", "subscribe", "b-ok/#") == 2
            before_b = asked(iam_b, "authorize", "carol", "subscribe", "ok/#")
            assert back.subscribe([("ok/#", 1)]) == [SUBACK_FAILURE]
            assert asked(iam_b, "authorize", "carol", "subscribe", "ok/#") == before_b + 1
            assert asked(iam_a, "authorize", "carol") == 0
        finally:
            back.close()
    finally:
        b2.stop()


def test_session_moving_listener_is_decided_again_by_the_new_iam(secure_broker, iams):
    """bob's persistent session subscribes through a (IAM A grants ok/both/#
    and ok/only-a/#), then bob comes back through b: B is asked about both
    subscriptions before the CONNACK, the one it denies is removed (with its
    queued message), audited and receives nothing more; the other stays."""
    iam_a, iam_b = iams
    b = start(secure_broker, iam_a, iam_b, audit="audit.jsonl")
    on_a, on_b = b.endpoints["a"], b.endpoints["b"]
    cid = uniq("bob-moving")
    bob = connected(on_a, "bob", client_id=cid, clean_session=False)
    assert bob.subscribe([("ok/both/#", 1), ("ok/only-a/#", 1)]) == [1, 1]
    bob.close()
    with connected(on_a, "alice") as pub:
        pub.publish("ok/only-a/1", b"queued, then revoked", qos=1)
        pub.publish("ok/both/1", b"queued, kept", qos=1)
    mark = b.log_mark()
    back = client(on_b, "bob")
    try:
        assert back.connect(cid, username="bob", password="pw", clean_session=False)  # session present
        assert asked(iam_b, "authorize", "bob", "subscribe", "ok/both/#") == 1
        assert asked(iam_b, "authorize", "bob", "subscribe", "ok/only-a/#") == 1
        m = back.recv_publish(scaled(5))
        assert (m.topic, m.payload) == ("ok/both/1", b"queued, kept")
        b.wait_for_log(r"client %s \(bob\): subscription to 'ok/only-a/#' no longer authorized, removed" % cid,
                       since=mark)
        audit = wait_audit(str(b.workdir / "audit.jsonl"),
                           lambda e: e["event"] == "acl.deny" and e.get("client_id") == cid,
                           what="bob's acl.deny")
        assert [(e["action"], e["topic"], e["reason"], e["listener"]) for e in audit] == [
            ("subscribe", "ok/only-a/#", "resumed session", "b")]
        with connected(on_a, "alice") as pub:
            pub.publish("ok/only-a/2", b"not for bob", qos=1)
            pub.publish("ok/both/2", b"for bob", qos=1)
        m = back.recv_publish(scaled(5))
        assert (m.topic, m.payload) == ("ok/both/2", b"for bob")
        back.expect_no_packet(scaled(0.3))
    finally:
        back.close()
    # Granted by B to bob now: coming back through b asks nothing again.
    before = len(iam_b.of("authorize"))
    again = client(on_b, "bob")
    try:
        assert again.connect(cid, username="bob", password="pw", clean_session=False)
    finally:
        again.close()
    assert len(iam_b.of("authorize")) == before


def test_session_moving_listener_is_refused_when_its_iam_fails(secure_broker, iams):
    """When the new listener's IAM server gives no decision for a resumed
    session's subscription, the CONNECT is refused with 0x03 (server
    unavailable) and the session is left as it was: back through a, bob gets
    what was queued for him."""
    iam_a, iam_b = iams
    b = start(secure_broker, iam_a, iam_b)
    on_a, on_b = b.endpoints["a"], b.endpoints["b"]
    cid = uniq("bob-err")
    bob = connected(on_a, "bob", client_id=cid, clean_session=False)
    assert bob.subscribe([("ok/err/#", 1)]) == [1]
    bob.close()
    with connected(on_a, "alice") as pub:
        pub.publish("ok/err/1", b"kept for bob", qos=1)
    c = client(on_b, "bob")
    try:
        c.send(mqttraw.connect(cid, username="bob", password="pw", clean_session=False))
        assert mqttraw.decode_connack(c.expect(mqttraw.CONNACK, scaled(10)))[1] == 3
    finally:
        c.close()
    assert asked(iam_b, "authorize", "bob", "subscribe", "ok/err/#") >= 1
    back = client(on_a, "bob")
    try:
        assert back.connect(cid, username="bob", password="pw", clean_session=False)
        m = back.recv_publish(scaled(5))
        assert (m.topic, m.payload) == ("ok/err/1", b"kept for bob")
    finally:
        back.close()


def test_roles_of_each_iam_table_are_logged_and_an_unused_one_is_warned_of(secure_broker, iams):
    """The start-up line says what each IAM server does; a [listener.http]
    that neither authenticates (no "http" in auth) nor authorizes is warned
    of, and so is an [auth.http] that no listener uses."""
    iam_a, iam_b = iams
    url_a, url_b = ("http://127.0.0.1:%d/%s/auth" % (i.port, n) for i, n in ((iam_a, "a"), (iam_b, "b")))
    b = secure_broker(listeners=[
        {"name": "authz", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["anonymous"],
         "raw": iam_table("[listener.http]", url_b, authorize=True)},
        {"name": "idle", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["anonymous"],
         "raw": iam_table("[listener.http]", url_b)}],
        extra=iam_table("[auth.http]", url_a))
    b.wait_for_log(r"listener authz: IAM server http://127\.0\.0\.1:%d \(authorization\)" % iam_b.port)
    b.wait_for_log(r"\[listener.http\] of listener idle is not used: its listener names no \"http\" in auth "
                   r"and authorize = false")
    b.wait_for_log(r"\[auth.http\] is not used: no listener without its own \[listener.http\] names "
                   r"\"http\" in auth and authorize = false")
    assert "listener authz: IAM server" in b.log_text() and "authz is not used" not in b.log_text()
    # The authorizing table does decide: anonymous clients of "authz" ask B.
    c = client(b.endpoints["authz"], "anon")
    try:
        c.connect(uniq("anon"))
        assert c.subscribe([("b-ok/x", 0), ("elsewhere", 0)]) == [0, SUBACK_FAILURE]
    finally:
        c.close()
    assert len(iam_b.of("authorize")) == 2 and not iam_a.of("authorize")


def test_sighup_keeps_the_iam_of_a_listener(secure_broker, iams):
    """Like [auth.http], [listener.http] is read at start: SIGHUP says that a
    change waits for a restart, and the listener's IAM server stays."""
    iam_a, iam_b = iams
    b = start(secure_broker, iam_a, iam_b)
    conf = b.workdir / "moat.toml"
    text = conf.read_text()
    conf.write_text(text.replace("127.0.0.1:%d/b/auth" % iam_b.port, "127.0.0.1:%d/b/auth" % iam_a.port))
    mark = b.log_mark()
    b.proc.send_signal(signal.SIGHUP)
    b.wait_for_log(r"reload: a changed \[listener.http\] of listener b takes effect after a restart", since=mark)
    b.wait_for_log(r"configuration reloaded from", since=mark)
    assert connack(b.endpoints["b"], "alice") == NOT_AUTHORIZED  # still B's answer
    assert connack(b.endpoints["b"], "carol") == 0
    assert asked(iam_a, "authenticate") == 0
