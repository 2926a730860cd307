"""Brute-force defence ([auth.defence]) and the audit log ([log] audit) end
to end (docs/security.md, "Brute-force defence"; docs/audit.md).

Loopback is exempt from the defence by default, so these brokers set
`allow = []`. Times are measured between sending CONNECT and receiving the
CONNACK; each is bounded below by the configured backoff and above by it plus
a slack (scaled for sanitizer builds). Audit lines are written by a
background thread: tests wait for the line they need (bounded), never sleep."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

import mqttraw
from pki import make_pki, password_file_text, run_pub, secure_broker  # noqa: F401 (fixture)
from util import audit_lines, scaled, uniq, wait_audit

pytestmark = [pytest.mark.moat_only, pytest.mark.threaded]

USERS = {"alice": "alice-secret-pw", "bob": "bob-secret-pw"}
PASSWORD = [{"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["password"]}]
BAD_CREDENTIALS = 4
NOT_AUTHORIZED = 5

# docs/audit.md: every field and its JSON type.
AUDIT_FIELDS = {
    "v": int, "ts": str, "event": str, "listener": str, "peer": str, "address": str,
    "client_id": str, "username": str, "identity": str, "method": str, "action": str,
    "topic": str, "failure": str, "code": int, "delay_ms": int, "failures": int,
    "suppressed": int, "duration_s": int, "until": str, "reason": str,
}
AUDIT_EVENTS = {"auth.success", "auth.failure", "acl.deny", "ban", "unban", "tls.failure",
                "tls.withdrawn", "connection.refused", "audit.dropped"}
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def passwd_text(tmp_path_factory):
    return password_file_text(tmp_path_factory.mktemp("passwd"), USERS)


def defence(**kw):
    d = {"allow": [], "backoff_initial": 0.2, "backoff_max": 0.8, "window": 60, "ban_after": 6,
         "ban_time": 2, "connection_rate": 0, "log_interval": 1}
    d.update(kw)
    lines = ["[auth.defence]"]
    for k, v in d.items():
        lines.append("%s = %s" % (k, json.dumps(v)))
    return "\n".join(lines) + "\n"


def check_schema(e):
    for k, v in e.items():
        assert k in AUDIT_FIELDS, "undocumented field %r in %r" % (k, e)
        assert isinstance(v, AUDIT_FIELDS[k]) and not isinstance(v, bool), (k, v, e)
    assert e["v"] == 1, e
    assert TS_RE.match(e["ts"]), e
    assert e["event"] in AUDIT_EVENTS, e
    if "until" in e:
        assert TS_RE.match(e["until"]), e


def timed_connack(ep, user, password, client_id=None):
    """(CONNACK return code or None if closed without one, seconds taken)."""
    c = mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name=user)
    try:
        t0 = time.monotonic()
        c.send(mqttraw.connect(client_id or uniq("bf"), username=user, password=password),
               ignore_errors=True)
        try:
            pkt = c.recv_packet(scaled(10))
        except (AssertionError, mqttraw.ConnectionClosed):
            return None, time.monotonic() - t0
        assert pkt.type == mqttraw.CONNACK, pkt
        return mqttraw.decode_connack(pkt)[1], time.monotonic() - t0
    finally:
        c.close()


def test_backoff_then_ban_then_unban(secure_broker, passwd_text):
    b = secure_broker(listeners=PASSWORD, password_file="passwd", files={"passwd": passwd_text},
                      audit="audit.jsonl", extra=defence())
    ep = b.endpoints["plain"]
    audit = str(b.workdir / "audit.jsonl")
    slack = scaled(0.4)
    expected = [0.2, 0.4, 0.8, 0.8, 0.8, 0.8]
    measured = []
    for i, want in enumerate(expected):
        rc, took = timed_connack(ep, "alice", "guess-%d" % i)
        assert rc == BAD_CREDENTIALS, (i, rc)
        measured.append(took)
        assert want - 0.02 <= took <= want + slack, (
            "attempt %d: refusal after %.3fs, expected %.1fs (+%.1fs); all: %r" % (i, took, want, slack, measured))
    # The sixth failure banned 127.0.0.1: new connections are closed at accept,
    # without a CONNACK, even with the right password.
    ban = wait_audit(audit, lambda e: e["event"] == "ban", what="ban event")[0]
    assert ban["address"] == "127.0.0.1" and ban["duration_s"] == 2, ban
    b.wait_for_log(r"banned 127\.0\.0\.1 for 2 s: 6 failed authentications within 60 s")
    rc, took = timed_connack(ep, "alice", USERS["alice"])
    assert rc is None, "a banned address got CONNACK %r" % rc
    refused = wait_audit(audit, lambda e: e["event"] == "connection.refused", what="refusal")[0]
    assert refused["reason"] == "address banned" and refused["address"] == "127.0.0.1", refused
    # The ban ends by itself (ban_time 2 s; checked every second).
    wait_audit(audit, lambda e: e["event"] == "unban", timeout=6, what="unban event")
    rc, took = timed_connack(ep, "alice", USERS["alice"])
    assert rc == 0
    failures = [e for e in audit_lines(audit) if e["event"] == "auth.failure"]
    assert [e["delay_ms"] for e in failures] == [200, 400, 800, 800, 800, 800], failures
    assert [e["failures"] for e in failures] == [1, 2, 3, 4, 5, 6], failures
    for e in audit_lines(audit):
        check_schema(e)


def test_backoff_is_per_user_and_a_success_resets_it(secure_broker, passwd_text):
    b = secure_broker(listeners=PASSWORD, password_file="passwd", files={"passwd": passwd_text},
                      extra=defence(ban_after=0, backoff_initial=0.3, backoff_max=3))
    ep = b.endpoints["plain"]
    for want in (0.3, 0.6):
        rc, took = timed_connack(ep, "alice", "wrong")
        assert rc == BAD_CREDENTIALS and want - 0.02 <= took <= want + scaled(0.4), (want, took)
    # Bob is not slowed by alice's failures, and neither is a right password.
    rc, took = timed_connack(ep, "bob", USERS["bob"])
    assert rc == 0 and took < scaled(0.25), took
    rc, took = timed_connack(ep, "bob", "wrong")
    assert rc == BAD_CREDENTIALS and 0.28 <= took <= 0.3 + scaled(0.4), took
    rc, _ = timed_connack(ep, "alice", USERS["alice"])
    assert rc == 0
    rc, took = timed_connack(ep, "alice", "wrong")  # back to the first step
    assert rc == BAD_CREDENTIALS and 0.28 <= took <= 0.3 + scaled(0.4), took


def test_held_refusal_does_not_block_the_loop(secure_broker, passwd_text):
    """While refusals are held, other clients on the same event loop are served."""
    bob_t = '[[acl.rule]]\npermission = "allow"\naction = "all"\ntopic = "t"\nuser = "bob"\n'
    b = secure_broker(listeners=PASSWORD, password_file="passwd", files={"passwd": passwd_text},
                      extra=defence(ban_after=0, backoff_initial=3, backoff_max=3) + bob_t, threads=1)
    ep = b.endpoints["plain"]
    held = []
    for i in range(5):
        c = mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="held%d" % i)
        c.send(mqttraw.connect(uniq("h"), username="alice", password="wrong-%d" % i))
        held.append(c)
    try:
        t0 = time.monotonic()
        with mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="bob") as ok:
            ok.connect(uniq("bob"), username="bob", password=USERS["bob"])
            assert ok.subscribe([("t", 1)]) == [1]
            ok.publish("t", b"x", qos=1)
            assert ok.recv_publish().payload == b"x"
        assert time.monotonic() - t0 < scaled(1.5)
        for c in held:
            assert mqttraw.decode_connack(c.expect(mqttraw.CONNACK, timeout=scaled(10)))[1] == BAD_CREDENTIALS
    finally:
        for c in held:
            c.close()


def test_connection_rate_per_address(secure_broker, passwd_text):
    b = secure_broker(listeners=PASSWORD, password_file="passwd", files={"passwd": passwd_text},
                      audit="audit.jsonl", extra=defence(connection_rate=2, connection_burst=3,
                                                         log_interval=60))
    ep = b.endpoints["plain"]
    socks = [socket.create_connection((ep.host, ep.port), timeout=scaled(10)) for _ in range(8)]
    answered = 0
    closed = 0
    try:
        for s in socks:
            try:
                s.sendall(mqttraw.connect(uniq("r"), username="bob", password=USERS["bob"]))
            except OSError:
                pass
            s.settimeout(scaled(10))
            try:
                data = s.recv(4)
            except OSError:
                data = b""
            if data[:1] == b"\x20":
                answered += 1
            else:
                closed += 1
    finally:
        for s in socks:
            s.close()
    # A burst of 3, refilled at 2 per second while the 8 connections opened.
    assert 3 <= answered <= 4 and answered + closed == 8, (answered, closed)
    e = wait_audit(str(b.workdir / "audit.jsonl"), lambda e: e["event"] == "connection.refused")
    assert e[0]["reason"] == "connection rate exceeded" and e[0]["listener"] == "plain", e
    assert len(e) == 1, "reported once per log_interval: %r" % e
    b.wait_for_log(r"listener plain: refusing connections from 127\.0\.0\.1: connection rate exceeded")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_audit_log_events_schema_and_no_secrets(secure_broker, passwd_text, pki):
    listeners = PASSWORD + [{"name": "tls", "bind": "127.0.0.1:0", "transport": "tls",
                             "auth": ["password"],
                             "tls": {"cert": pki.server_cert, "key": pki.server_key}}]
    acl = "user alice\ntopic readwrite alice/#\n"
    b = secure_broker(listeners=listeners, password_file="passwd", files={"passwd": passwd_text},
                      acl_text=acl, audit="audit.jsonl")
    ep = b.endpoints["plain"]
    audit = str(b.workdir / "audit.jsonl")
    cid = uniq("aud")
    with mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="alice") as a:
        a.connect(cid, username="alice", password=USERS["alice"])
        assert a.subscribe([("bob/#", 1), ("alice/#", 1)]) == [0x80, 1]
        a.publish("bob/inbox", b"x", qos=1)
    with mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="wrong") as w:
        w.connect(uniq("w"), username="alice", password="alice-WRONG-pw", expect_rc=BAD_CREDENTIALS)
    with mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="ghost") as w:
        w.connect(uniq("g"), username="nobody", password="nobody-secret-pw", expect_rc=BAD_CREDENTIALS)
    # Plain MQTT on the TLS port: a TLS failure.
    tls = b.endpoints["tls"]
    with mqttraw.Client(tls.host, tls.port, timeout=scaled(10), name="plaintext") as p:
        p.send(mqttraw.connect(uniq("p")), ignore_errors=True)
        p.expect_closed()
    wait_audit(audit, lambda e: e["event"] == "tls.failure", what="tls.failure")
    events = audit_lines(audit)
    for e in events:
        check_schema(e)
    by = {}
    for e in events:
        by.setdefault(e["event"], []).append(e)
    ok = by["auth.success"][0]
    assert (ok["method"], ok["identity"], ok["username"], ok["client_id"], ok["listener"]) == \
        ("password", "alice", "alice", cid, "plain"), ok
    assert ok["peer"].startswith("127.0.0.1:"), ok
    fails = by["auth.failure"]
    assert [(f["username"], f["code"], f["reason"]) for f in fails] == [
        ("alice", 4, "unknown user or wrong password"),
        ("nobody", 4, "unknown user or wrong password")], fails
    denies = [(d["action"], d["topic"], d["identity"]) for d in by["acl.deny"]]
    assert denies == [("subscribe", "bob/#", "alice"), ("publish", "bob/inbox", "alice")], denies
    t = by["tls.failure"][0]
    assert t["failure"] == "not_tls" and t["listener"] == "tls" and t["reason"], t
    # No secret anywhere: neither in the audit file nor in the (debug) log.
    raw = open(audit).read() + "\n" + b.log_text()
    for secret in list(USERS.values()) + ["alice-WRONG-pw", "nobody-secret-pw"]:
        assert secret not in raw, "secret %r written" % secret


def test_audit_log_reopens_on_sighup(secure_broker, passwd_text):
    b = secure_broker(listeners=PASSWORD, password_file="passwd", files={"passwd": passwd_text},
                      audit="audit.jsonl")
    ep = b.endpoints["plain"]
    audit = b.workdir / "audit.jsonl"
    with mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="a") as c:
        c.connect(uniq("one"), username="bob", password=USERS["bob"])
    wait_audit(str(audit), lambda e: e["event"] == "auth.success")
    os.rename(str(audit), str(audit) + ".1")  # what logrotate does
    mark = b.log_mark()
    os.kill(b.pid, signal.SIGHUP)
    b.wait_for_log("configuration reloaded", since=mark)
    with mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="b") as c:
        c.connect(uniq("two"), username="alice", password=USERS["alice"])
    got = wait_audit(str(audit), lambda e: e["event"] == "auth.success")
    assert [e["identity"] for e in got] == ["alice"], got
    assert [e["identity"] for e in audit_lines(str(audit) + ".1")] == ["bob"]


def test_audit_to_stderr(secure_broker, passwd_text):
    b = secure_broker(listeners=PASSWORD, password_file="passwd", files={"passwd": passwd_text},
                      audit="-")
    ep = b.endpoints["plain"]
    rc, out = run_pub(ep, "t", "x", ["-u", "bob", "-P", "bob-WRONG"])
    assert rc != 0, out
    m = b.wait_for_log(r'^\{"v":1,.*"event":"auth\.failure"')
    e = json.loads(m.string)
    check_schema(e)
    assert e["username"] == "bob" and "bob-WRONG" not in b.log_text()


def test_bans_survive_a_restart(secure_broker, passwd_text):
    """A ban is written to the store and restored at start: restarting the
    broker does not lift it (docs/security.md, "Brute-force defence")."""
    from conftest import MOATD, Broker
    from pki import LISTENER_RE

    b = secure_broker(listeners=PASSWORD, password_file="passwd", files={"passwd": passwd_text},
                      extra=defence(ban_after=2, backoff_initial=0.05, backoff_max=0.05, ban_time=600))
    ep = b.endpoints["plain"]
    for i in range(2):
        rc, _ = timed_connack(ep, "alice", "guess-%d" % i)
        assert rc == BAD_CREDENTIALS
    b.wait_for_log(r"banned 127\.0\.0\.1 for 600 s")
    assert timed_connack(ep, "alice", USERS["alice"])[0] is None
    assert b.stop(signal.SIGTERM, 10) == 0
    again = Broker([MOATD, "-c", b.config_path], cwd=str(b.workdir), config_path=b.config_path)
    try:
        again.wait_for_log(r"store: restored 1 ban\(s\) of the brute-force defence")
        m = again.wait_for_log(LISTENER_RE.pattern)
        host, port = m.group(1), int(m.group(2))
        c = mqttraw.Client(host, port, timeout=scaled(10), name="after-restart")
        try:
            c.send(mqttraw.connect(uniq("r"), username="alice", password=USERS["alice"]),
                   ignore_errors=True)
            assert c.expect_closed(scaled(5)) == b"", "a restored ban let a CONNACK through"
        finally:
            c.close()
        again.wait_for_log(r"refusing connections from 127\.0\.0\.1: address banned")
    finally:
        assert again.stop(signal.SIGTERM, 10) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_failure_counts_survive_a_restart(secure_broker, passwd_text, sig):
    """The failure counters are written to the store with each failure and
    restored at start: a restart, even a crash right after the last refusal,
    hands out no fresh allowance of guesses below the ban threshold, and the
    backoff of the (address, user name) goes on where it was
    (docs/durability.md)."""
    from conftest import MOATD, Broker
    from pki import LISTENER_RE, Endpoint

    ban_after = 4
    b = secure_broker(listeners=PASSWORD, password_file="passwd", files={"passwd": passwd_text},
                      extra=defence(ban_after=ban_after, backoff_initial=0.05, backoff_max=0.4,
                                    window=600, ban_time=600))
    ep = b.endpoints["plain"]
    for i in range(ban_after - 1):
        rc, _ = timed_connack(ep, "alice", "guess-%d" % i)
        assert rc == BAD_CREDENTIALS, (i, rc)
    assert "banned 127.0.0.1" not in b.log_text()  # one failure short of the ban
    code = b.stop(sig, 10)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), code
    # The address's count and alice's, as --check-store reports them.
    r = subprocess.run([MOATD, "-c", b.config_path, "--check-store"], cwd=str(b.workdir),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=scaled(30))
    out = r.stdout.decode()
    assert r.returncode == 0 and "\n  failure counters 2\n" in out, (r.returncode, out, r.stderr)
    again = Broker([MOATD, "-c", b.config_path], cwd=str(b.workdir), config_path=b.config_path)
    try:
        again.wait_for_log(r"store: restored 2 failure counter\(s\) of the brute-force defence")
        m = again.wait_for_log(LISTENER_RE.pattern)
        ep2 = Endpoint(m.group(1), int(m.group(2)))
        # alice's fourth failure is held 0.05 * 2^3 s, as without the restart,
        # and as the address's fourth within the window it bans 127.0.0.1.
        rc, took = timed_connack(ep2, "alice", "guess-last")
        assert rc == BAD_CREDENTIALS, rc
        assert took >= 0.4 - 0.02, "the backoff started again after the restart: %.3fs" % took
        again.wait_for_log(r"banned 127\.0\.0\.1 for 600 s: %d failed authentications within 600 s" % ban_after)
        assert timed_connack(ep2, "alice", USERS["alice"])[0] is None, "no ban after the restart"
    finally:
        assert again.stop(signal.SIGTERM, 10) == 0


def test_defence_per_listener(secure_broker, passwd_text):
    """[listener.defence] replaces [auth.defence]'s enabled and allow on its
    listener (docs/security.md, "Per listener"): a listener with the defence
    off neither counts nor slows failures and admits a banned address; one
    whose own allow list exempts loopback does the same for loopback; the ban
    earned on a defended listener holds on every other defended one."""
    listeners = [
        dict(PASSWORD[0], name="public"),
        dict(PASSWORD[0], name="public2"),
        dict(PASSWORD[0], name="internal", raw='[listener.defence]\nallow = ["127.0.0.0/8"]\n'),
        dict(PASSWORD[0], name="off", raw="[listener.defence]\nenabled = false\n"),
    ]
    b = secure_broker(listeners=listeners, password_file="passwd", files={"passwd": passwd_text},
                      audit="audit.jsonl",
                      extra=defence(ban_after=3, backoff_initial=0.05, backoff_max=0.05, ban_time=600))
    b.wait_for_log(r"listener off: no brute-force defence \(\[listener\.defence\]\)")
    b.wait_for_log(r"listener internal: the brute-force defence exempts 1 address block\(s\)")
    audit = str(b.workdir / "audit.jsonl")
    ep = b.endpoints
    # Undefended: four failures each are refused at once, not counted, no ban.
    # The audit says so as docs/audit.md has it: on a listener with the
    # defence off there is no delay_ms; an exempt peer is held 0 ms.
    for name in ("off", "internal"):
        for i in range(4):
            assert timed_connack(ep[name], "alice", "guess-%d" % i)[0] == BAD_CREDENTIALS
    failures = wait_audit(audit, lambda e: e["event"] == "auth.failure", count=8, what="8 failures")
    assert all("failures" not in e and "delay_ms" not in e for e in failures[:4]), failures
    assert all(e["delay_ms"] == 0 and e["failures"] == 0 for e in failures[4:]), failures
    assert timed_connack(ep["public"], "alice", USERS["alice"])[0] == 0
    # Defended: the third failure bans 127.0.0.1.
    for i in range(3):
        assert timed_connack(ep["public"], "alice", "guess-%d" % i)[0] == BAD_CREDENTIALS
    ban = wait_audit(audit, lambda e: e["event"] == "ban", what="ban event")[0]
    assert ban["address"] == "127.0.0.1", ban
    counted = [e for e in audit_lines(audit) if e["event"] == "auth.failure"][8:]
    assert [e["failures"] for e in counted] == [1, 2, 3], counted
    # The ban holds on both defended listeners, not on the other two.
    assert timed_connack(ep["public"], "alice", USERS["alice"])[0] is None
    assert timed_connack(ep["public2"], "alice", USERS["alice"])[0] is None
    assert timed_connack(ep["internal"], "alice", USERS["alice"])[0] == 0
    assert timed_connack(ep["off"], "alice", USERS["alice"])[0] == 0


def test_defence_on_one_listener_only(secure_broker, passwd_text):
    """[auth.defence] enabled = false with [listener.defence] enabled = true:
    the defence judges that listener alone."""
    listeners = [
        dict(PASSWORD[0], name="guarded", raw="[listener.defence]\nenabled = true\nallow = []\n"),
        dict(PASSWORD[0], name="plain"),
    ]
    b = secure_broker(listeners=listeners, password_file="passwd", files={"passwd": passwd_text},
                      extra=defence(enabled=False, ban_after=2, backoff_initial=0.05, backoff_max=0.05))
    for i in range(3):
        assert timed_connack(b.endpoints["plain"], "alice", "guess-%d" % i)[0] == BAD_CREDENTIALS
    assert timed_connack(b.endpoints["guarded"], "alice", USERS["alice"])[0] == 0
    for i in range(2):
        assert timed_connack(b.endpoints["guarded"], "alice", "guess-%d" % i)[0] == BAD_CREDENTIALS
    b.wait_for_log(r"banned 127\.0\.0\.1 for \d+ s: 2 failed authentications")
    assert timed_connack(b.endpoints["guarded"], "alice", USERS["alice"])[0] is None
    assert timed_connack(b.endpoints["plain"], "alice", USERS["alice"])[0] == 0
