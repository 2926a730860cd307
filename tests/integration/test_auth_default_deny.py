"""Deny by default once authentication is configured (docs/security.md,
"Order of checks"): when some listener authenticates clients (a method other
than "anonymous") and there is neither an [acl] nor IAM authorization, every
client on every listener is denied every topic; `[[acl.rule]] permission =
"allow", action = "all", topic = "#"` allows everything again (but $SYS).
Listeners that are all anonymous-only without [acl] still allow everything.

A refusal is proven by what the client sees (SUBACK 0x80, CONNACK 5 for a
will) and by the broker's audit stream, which records each refused request
(`acl.deny`) as it decides it: no test waits for an absence by sleeping."""

import os
import signal
import time

import pytest

import mqttraw
from pki import ALLOW_ALL, make_pki, password_file_text, run_pub, secure_broker  # noqa: F401 (fixture)
from util import LineProc, audit_lines, scaled, uniq

pytestmark = [pytest.mark.moat_only]

USERS = {"dev1": "dev1-pw", "dev2": "dev2-pw"}
NOT_AUTHORIZED = 5
PASSWORD = {"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["password"]}
ANONYMOUS = {"name": "local", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["anonymous"]}
WARNING = (r"listener %s authenticates clients \(%s\) and there is no \[acl\] and no IAM "
           r"authorization: every client, on every listener, is denied every topic; to allow, "
           r"write an ACL, e\.g\. \[\[acl\.rule\]\] permission = \"allow\", action = \"all\", "
           r"topic = \"#\"")


@pytest.fixture(scope="module")
def passwd_text(tmp_path_factory):
    return password_file_text(tmp_path_factory.mktemp("passwd"), USERS)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def start(secure_broker, passwd_text, listeners, extra=None):
    return secure_broker(listeners=listeners, password_file="passwd", files={"passwd": passwd_text},
                         audit="audit.jsonl", extra=extra)


def login(ep, user=None, **kw):
    c = mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name=user or "anon")
    if user is not None:
        kw.update(username=user, password=USERS[user])
    c.connect(uniq(user or "anon"), **kw)
    return c


def denials(b, n):
    """The acl.deny events of the audit stream once there are n, sorted, as
    (listener, identity, action, topic). (Events of different connections may
    be written in any order.)"""
    path = str(b.workdir / "audit.jsonl")
    deadline = time.monotonic() + scaled(10)
    while True:
        got = [(e["listener"], e.get("identity") or "", e["action"], e["topic"])
               for e in audit_lines(path) if e["event"] == "acl.deny"]
        if len(got) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # polling a file written by the broker's audit thread
    assert len(got) == n, got
    return sorted(got)


def mosquitto_sub_suback(ep, topic, extra):
    """mosquitto_sub -d: the granted QoS of its SUBACK ("Subscribed (mid: 1): Q")."""
    p = LineProc(["stdbuf", "-oL", "mosquitto_sub", "-d", "-h", ep.host, "-p", str(ep.port),
                  "-t", topic, "-q", "1", "-C", "1", "-W", str(int(scaled(10)) + 1)] + list(extra))
    try:
        line = p.wait_line("Subscribed (mid:")
        return int(line.rsplit(":", 1)[1])
    finally:
        p.kill()


def test_password_listener_without_acl_denies_every_topic(secure_broker, passwd_text):
    b = start(secure_broker, passwd_text, [PASSWORD])
    b.wait_for_log(WARNING % ("plain", "password"))
    ep = b.endpoints["plain"]
    creds = ["-u", "dev1", "-P", USERS["dev1"]]
    # mosquitto_sub sees its subscription refused.
    assert mosquitto_sub_suback(ep, "sensors/#", creds) == 0x80
    with login(ep, "dev1") as s, login(ep, "dev2") as p:
        assert s.subscribe([("#", 1), ("sensors/t", 2), ("dev1/#", 0)]) == [0x80, 0x80, 0x80]
        # Refused publishes are still acknowledged (QoS 1: PUBACK; QoS 2:
        # PUBREC and PUBCOMP, asserted by publish()) and dropped.
        p.publish("sensors/t", b"q0", qos=0)
        p.publish("sensors/t", b"q1", qos=1)
        p.publish("sensors/t", b"q2", qos=2, retain=True)
        p.ping()
    # mosquitto_pub: a normal success, and the message is dropped.
    rc, out = run_pub(ep, "sensors/t", "cli", ["-u", "dev2", "-P", USERS["dev2"]])
    assert rc == 0, out
    # A will is a publish: refused at CONNECT.
    with mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="will") as w:
        w.connect(uniq("w"), username="dev1", password=USERS["dev1"], will_topic="dev1/will",
                  will_payload=b"bye", expect_rc=NOT_AUTHORIZED)
    assert denials(b, 9) == sorted(
        [("plain", "dev1", "subscribe", "sensors/#"),
         ("plain", "dev1", "subscribe", "#"), ("plain", "dev1", "subscribe", "sensors/t"),
         ("plain", "dev1", "subscribe", "dev1/#"),
         ("plain", "dev2", "publish", "sensors/t"), ("plain", "dev2", "publish", "sensors/t"),
         ("plain", "dev2", "publish", "sensors/t"), ("plain", "dev2", "publish", "sensors/t"),
         ("plain", "dev1", "will", "dev1/will")])


def test_refused_publishes_are_counted_in_sys(secure_broker, passwd_text):
    """Each PUBLISH the policy refuses (acknowledged, dropped) is counted in
    $SYS/broker/messages/dropped/not_authorized; a deliberate rule lets dev1
    read $SYS and nothing else, so every other topic stays denied."""
    monitor = ('\n[[acl.rule]]\npermission = "allow"\naction = ["subscribe", "receive"]\n'
               'topic = "$SYS/broker/messages/dropped/#"\nuser = "dev1"\n')
    b = secure_broker(listeners=[PASSWORD], password_file="passwd", files={"passwd": passwd_text},
                      audit="audit.jsonl", sys_interval=1, extra=monitor)
    ep = b.endpoints["plain"]
    with login(ep, "dev1") as m, login(ep, "dev2") as p:
        assert m.subscribe([("$SYS/broker/messages/dropped/not_authorized", 0), ("dev1/x", 0)]) == [0, 0x80]
        for qos in (0, 1, 2):
            p.publish("sensors/t", b"x", qos=qos)
        p.ping()
        assert len(denials(b, 4)) == 4  # the three publishes and dev1/x
        deadline = time.monotonic() + scaled(10)
        while True:
            got = int(m.recv_publish(timeout=max(deadline - time.monotonic(), 0.01)).payload)
            if got >= 3:
                break
        assert got == 3


def test_allow_all_rule_opts_out(secure_broker, passwd_text):
    b = start(secure_broker, passwd_text, [PASSWORD], extra=ALLOW_ALL)
    ep = b.endpoints["plain"]
    with login(ep, "dev1") as s, login(ep, "dev2") as p:
        assert s.subscribe([("#", 1), ("$SYS/#", 0)]) == [1, 0x80]  # '#' does not reach $SYS
        p.publish("sensors/t", b"q1", qos=1)
        got = s.recv_publish()
        assert (got.topic, got.payload) == ("sensors/t", b"q1"), got
    # Real clients: mosquitto_sub gets what mosquitto_pub sends.
    creds = ["-u", "dev1", "-P", USERS["dev1"]]
    topic = uniq("cli/")
    sub = LineProc(["stdbuf", "-oL", "mosquitto_sub", "-d", "-v", "-h", ep.host, "-p", str(ep.port),
                    "-t", topic, "-q", "1", "-C", "1", "-W", str(int(scaled(10)) + 1)] + creds)
    try:
        assert sub.wait_line("Subscribed (mid:").endswith(": 1"), sub.output()
        rc, out = run_pub(ep, topic, "hello", ["-u", "dev2", "-P", USERS["dev2"]])
        assert rc == 0, out
        sub.wait_line("%s hello" % topic)
        assert sub.wait_exit() == 0, sub.output()
    finally:
        sub.kill()
    assert denials(b, 1) == [("plain", "dev1", "subscribe", "$SYS/#")]
    assert b.find_log("is denied every topic") is None, b.log_text()


def test_anonymous_only_without_acl_allows_everything(secure_broker):
    b = secure_broker(listeners=[ANONYMOUS], audit="audit.jsonl")
    ep = b.endpoints["local"]
    with login(ep) as s, login(ep) as p:
        assert s.subscribe([("#", 1), ("$SYS/#", 0)]) == [1, 0]
        p.publish("sensors/t", b"q1", qos=1)
        got = s.recv_publish()
        assert (got.topic, got.payload) == ("sensors/t", b"q1"), got
    with mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="will") as w:
        w.connect(uniq("w"), will_topic="any/will", will_payload=b"bye")
    assert not [e for e in audit_lines(str(b.workdir / "audit.jsonl")) if e["event"] == "acl.deny"]
    assert b.find_log("is denied every topic") is None, b.log_text()


def test_anonymous_listener_denied_when_another_authenticates(secure_broker, passwd_text):
    """As with Mosquitto's acl_file, the policy is broker-wide: an anonymous
    loopback listener next to a password listener is denied too."""
    b = start(secure_broker, passwd_text, [ANONYMOUS, PASSWORD])
    b.wait_for_log(WARNING % ("plain", "password"))
    assert b.find_log("listener local authenticates") is None, b.log_text()
    local, plain = b.endpoints["local"], b.endpoints["plain"]
    assert mosquitto_sub_suback(local, "sensors/#", []) == 0x80
    with login(local) as anon, login(plain, "dev1") as d:
        assert anon.subscribe([("#", 1)]) == [0x80]
        assert d.subscribe([("#", 1)]) == [0x80]
        anon.publish("sensors/t", b"anon", qos=1)
        anon.ping()
    with mqttraw.Client(local.host, local.port, timeout=scaled(10), name="will") as w:
        w.connect(uniq("w"), will_topic="any/will", will_payload=b"bye", expect_rc=NOT_AUTHORIZED)
    assert denials(b, 5) == sorted(
        [("local", "", "subscribe", "sensors/#"),
         ("local", "", "subscribe", "#"), ("plain", "dev1", "subscribe", "#"),
         ("local", "", "publish", "sensors/t"),
         ("local", "", "will", "any/will")])


def test_certificate_listener_without_acl_denies(secure_broker, pki):
    mtls = {"name": "mtls", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["certificate"],
            "tls": {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert,
                    "client_cert": "required", "identity_from": "cn"}}
    b = secure_broker(listeners=[mtls], audit="audit.jsonl")
    b.wait_for_log(WARNING % ("mtls", "certificate"))
    ep = b.endpoints["mtls"]
    cert = ["--cafile", pki.ca_cert, "--cert", pki.client_cert, "--key", pki.client_key]
    assert mosquitto_sub_suback(ep, "dev/1", cert) == 0x80
    rc, out = run_pub(ep, "dev/1", "m", cert)
    assert rc == 0 and "received CONNACK (0)" in out, out
    assert denials(b, 2) == [("mtls", "device-1", "publish", "dev/1"),
                             ("mtls", "device-1", "subscribe", "dev/1")]


def test_allow_rule_added_by_reload(secure_broker, passwd_text):
    """The empty policy is a policy like any other: [[acl.rule]] entries added
    to moat.toml take effect on SIGHUP, without a restart."""
    b = start(secure_broker, passwd_text, [PASSWORD])
    ep = b.endpoints["plain"]
    with login(ep, "dev1") as s:
        assert s.subscribe([("a/#", 1)]) == [0x80]
        with open(b.config_path, "a") as f:
            f.write(ALLOW_ALL)
        mark = b.log_mark()
        os.kill(b.pid, signal.SIGHUP)
        b.wait_for_log(r"reload: ACL \(1 ordered rule\(s\), 0 file rule\(s\)\)", since=mark)
        # The event loops take the new policy at their next tick: poll, bounded.
        deadline = time.monotonic() + scaled(5)
        while s.subscribe([("a/#", 1)]) != [1]:
            assert time.monotonic() < deadline, "a/# still refused after the reload"
        s.publish("a/b", b"granted", qos=1)
        got = s.recv_publish()
        assert (got.topic, got.payload) == ("a/b", b"granted"), got
