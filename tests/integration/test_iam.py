"""The IAM server over HTTP ([auth.http], docs/security.md "IAM server over
HTTP") end to end: a real HTTP server started by the test on 127.0.0.1 port 0
(http.server in a thread, HTTP/1.1 keep-alive; TLS with a CA the test
generates), a real moatd, raw MQTT clients.

The server counts the requests it gets per (kind, user name, action, topic),
so the tests assert what reached it, not only what the broker answered."""

import hashlib
import select
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import mqttraw
from pki import ALLOW_ALL, make_pki, run_pub, secure_broker  # noqa: F401 (fixture)
from util import audit_lines, scaled, uniq, wait_audit

pytestmark = [pytest.mark.moat_only, pytest.mark.threaded]

SERVER_UNAVAILABLE = 3
BAD_CREDENTIALS = 4
NOT_AUTHORIZED = 5
SUBACK_FAILURE = 0x80

LISTENERS = [{"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["http"]}]


class Iam:
    """An IAM server: `decide(request dict) -> (status, answer dict)`. Users:
    alice, bob: allowed; mallory: denied; eve: bad credentials; acl-user:
    allowed with an ACL; root: superuser; slow: the answer waits until the
    test ends. Authorization: topics under "ok/" allowed, others denied."""

    def __init__(self, tls_files=None):
        self.lock = threading.Lock()
        self.requests = []  # request bodies (dicts), in arrival order
        self.release = threading.Event()
        iam = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                req = json.loads(self.rfile.read(n))
                req["_path"] = self.path
                req["_content_type"] = self.headers.get("Content-Type", "")
                with iam.lock:
                    iam.requests.append(req)
                status, answer = iam.decide(req)
                body = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # moatd gave up waiting (the slow IAM test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls_files is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls_files)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def decide(self, req):
        if req["request"] == "authenticate":
            user = req.get("username")
            if user == "slow":
                self.release.wait(scaled(30))
                return 200, {"result": "allow"}
            if user in ("alice", "bob"):
                return 200, {"result": "allow"}
            if user == "acl-user":
                return 200, {"result": "allow", "identity": "acl-user",
                             "acl": [{"permission": "allow", "action": "all", "topic": "acl-user/#"}]}
            if user == "root":
                return 200, {"result": "allow", "superuser": True}
            if user == "eve":
                return 200, {"result": "bad_credentials", "reason": "wrong password"}
            if user == "flaky":  # busy once, then an answer
                return (503, {}) if self.count("authenticate", "flaky") == 1 else (200, {"result": "allow"})
            if user == "busy":
                return 503, {}
            return 200, {"result": "deny", "reason": "unknown user"}
        assert req["request"] == "authorize", req
        if req["topic"].startswith("slow/"):
            self.release.wait(scaled(30))
        return 200, {"result": "allow" if req["topic"].startswith("ok/") else "deny"}

    def count(self, kind, user=None, action=None, topic=None):
        with self.lock:
            return sum(1 for r in self.requests if r["request"] == kind
                       and (user is None or r.get("username") == user)
                       and (action is None or r.get("action") == action)
                       and (topic is None or r.get("topic") == topic))

    def of(self, kind):
        with self.lock:
            return [r for r in self.requests if r["request"] == kind]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def iam():
    servers = []

    def start(tls_files=None):
        s = Iam(tls_files)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def http_table(url, **kw):
    lines = ["[auth.http]", "url = %s" % json.dumps(url)]
    for k, v in kw.items():
        lines.append("%s = %s" % (k, json.dumps(v)))
    return "\n".join(lines) + "\n"


def client(b, name):
    return mqttraw.Client(b.host, b.port, timeout=scaled(10), name=name)


def connack(b, user, password="pw", client_id=None, timeout=10):
    """CONNACK return code (None: closed without one) and seconds taken."""
    c = client(b, user)
    try:
        t0 = time.monotonic()
        c.send(mqttraw.connect(client_id or uniq("iam"), username=user, password=password),
               ignore_errors=True)
        try:
            pkt = c.recv_packet(scaled(timeout))
        except mqttraw.ConnectionClosed:
            return None, time.monotonic() - t0
        assert pkt.type == mqttraw.CONNACK, pkt
        return mqttraw.decode_connack(pkt)[1], time.monotonic() - t0
    finally:
        c.close()


def connected(b, user, client_id=None):
    c = client(b, user)
    c.connect(client_id or uniq(user), username=user, password="pw")
    return c


def test_allow_deny_and_the_request(secure_broker, iam):
    s = iam()
    b = secure_broker(listeners=LISTENERS, extra=http_table("http://127.0.0.1:%d/mqtt/auth" % s.port))
    assert connack(b, "alice", client_id="alice-1")[0] == 0
    assert connack(b, "mallory")[0] == NOT_AUTHORIZED
    assert connack(b, "eve")[0] == BAD_CREDENTIALS
    req = [r for r in s.of("authenticate") if r.get("username") == "alice"][0]
    assert req["_path"] == "/mqtt/auth", req
    assert req["_content_type"].startswith("application/json"), req
    assert req["client_id"] == "alice-1" and req["listener"] == "plain", req
    assert req["peer_address"] == "127.0.0.1", req
    # send_password = "presence" (default): the password itself never leaves the broker.
    assert req["password_present"] is True and "password" not in req, req
    assert "pw" not in json.dumps(req)
    b.wait_for_log(r"IAM: not authorized: unknown user|unknown user")


def test_password_value_over_https(secure_broker, iam, tmp_path):
    pki = make_pki(tmp_path / "pki")
    s = iam(tls_files=(pki.server_cert, pki.server_key))
    b = secure_broker(listeners=LISTENERS,
                      extra=http_table("https://127.0.0.1:%d/auth" % s.port, ca=pki.ca_cert,
                                       send_password="value"))
    assert connack(b, "alice", password="secret-1")[0] == 0
    req = s.of("authenticate")[-1]
    assert req["password"] == "secret-1" and req["password_present"] is True, req
    assert "certificate" not in req, req


def test_tls_to_the_iam_verifies_its_certificate(secure_broker, iam, tmp_path):
    pki = make_pki(tmp_path / "pki")
    s = iam(tls_files=(pki.server_cert, pki.server_key))
    url = "https://127.0.0.1:%d/auth" % s.port
    good = secure_broker(listeners=LISTENERS, extra=http_table(url, ca=pki.ca_cert))
    assert connack(good, "alice")[0] == 0
    assert connack(good, "mallory")[0] == NOT_AUTHORIZED
    assert s.count("authenticate") == 2
    # A CA that did not sign the server's certificate: no answer is trusted,
    # the client is refused (fail closed) and nothing was sent in clear.
    bad = secure_broker(listeners=LISTENERS,
                        extra=http_table(url, ca=pki.intruder_ca.cert, retries=0))
    assert connack(bad, "alice")[0] == SERVER_UNAVAILABLE
    bad.wait_for_log(r"IAM server https://127\.0\.0\.1:%d: authentication: .*certificate" % s.port)
    assert s.count("authenticate") == 2


def test_acl_from_the_iam_answer(secure_broker, iam):
    s = iam()
    # The broker-wide allow-all rule is for the watcher: acl-user's own rules
    # (acl_mode "replace") are its whole ACL.
    b = secure_broker(listeners=LISTENERS,
                      extra=http_table("http://127.0.0.1:%d/auth" % s.port) + ALLOW_ALL)
    c = connected(b, "acl-user")
    assert c.subscribe([("acl-user/#", 1), ("other/#", 1)]) == [1, SUBACK_FAILURE]
    c.publish("acl-user/x", b"mine", qos=1)
    assert c.recv_publish(scaled(5)).topic == "acl-user/x"
    # A publish outside its rules is acknowledged and dropped (MQTT 3.1.1).
    watcher = connected(b, "alice")
    watcher.subscribe([("other/#", 1)])
    c.publish("other/y", b"not mine", qos=1)  # PUBACK: it has been routed (or dropped)
    watcher.publish("other/sentinel", b"s", qos=1)
    assert watcher.recv_publish(scaled(5)).topic == "other/sentinel"
    c.close()
    watcher.close()


def test_authentication_only_denies_but_the_superuser(secure_broker, iam):
    """The IAM server authenticates (no authorize) and there is no [acl]:
    authorization denies by default; a superuser answer still allows all."""
    s = iam()
    # One event loop: alice's message, were it routed, would reach root before
    # alice's PUBACK, hence before root's own message.
    b = secure_broker(listeners=LISTENERS, threads=1,
                      extra=http_table("http://127.0.0.1:%d/auth" % s.port))
    b.wait_for_log(r"listener plain authenticates clients \(http\) and there is no \[acl\] and no IAM "
                   r"authorization: every client, on every listener, is denied every topic")
    root = connected(b, "root")
    alice = connected(b, "alice")
    assert root.subscribe([("#", 1)]) == [1]
    assert alice.subscribe([("#", 1), ("ok/#", 1)]) == [SUBACK_FAILURE, SUBACK_FAILURE]
    alice.publish("ok/x", b"denied", qos=1)   # acknowledged, dropped
    root.publish("root/x", b"allowed", qos=1)
    got = root.recv_publish(scaled(5))
    assert (got.topic, got.payload) == ("root/x", b"allowed"), got  # alice's did not arrive first
    assert s.count("authorize") == 0
    root.close()
    alice.close()


def test_authorization_by_the_iam_and_its_cache(secure_broker, iam):
    s = iam()
    b = secure_broker(listeners=LISTENERS,
                      extra=http_table("http://127.0.0.1:%d/auth" % s.port, authorize=True,
                                       authorize_url="http://127.0.0.1:%d/acl" % s.port,
                                       cache_ttl=60, cache_negative_ttl=60))
    alice = connected(b, "alice", client_id="alice-1")
    assert alice.subscribe([("ok/#", 1), ("secret/#", 1)]) == [1, SUBACK_FAILURE]
    n = 20
    for i in range(n):
        alice.publish("ok/a", b"%d" % i, qos=1)
        alice.publish("secret/x", b"%d" % i, qos=1)
    got = [alice.recv_publish(scaled(5)).payload for _ in range(n)]
    assert got == [b"%d" % i for i in range(n)]
    alice.expect_no_packet(scaled(0.2))
    # One request per (identity, action, topic) within the TTL, however many
    # publishes: the cache holds the IAM to that.
    assert s.count("authorize", "alice", "publish", "ok/a") == 1
    assert s.count("authorize", "alice", "publish", "secret/x") == 1
    assert s.count("authorize", "alice", "subscribe", "ok/#") == 1
    assert s.count("authorize", "alice", "subscribe", "secret/#") == 1
    # Deliveries are not asked: the granted subscription covers them.
    assert s.count("authorize", action="receive") == 0
    req = s.of("authorize")[0]
    assert req["_path"] == "/acl" and req["username"] == "alice" and req["client_id"], req
    # Another identity is another decision; a reconnect of the same one is not.
    bob = connected(b, "bob")
    for i in range(5):
        bob.publish("ok/a", b"b%d" % i, qos=1)
    assert s.count("authorize", "bob", "publish", "ok/a") == 1
    bob.close()
    alice.close()
    again = connected(b, "alice", client_id="alice-1")
    again.publish("ok/a", b"x", qos=1)
    again.publish("ok/a", b"y", qos=1)
    assert s.count("authorize", "alice", "publish", "ok/a") == 1
    again.close()
    # The client identifier is part of the identity asked about.
    other = connected(b, "alice", client_id="alice-2")
    other.publish("ok/a", b"z", qos=1)
    assert s.count("authorize", "alice", "publish", "ok/a") == 2
    other.close()
    print("IAM cache: alice-1 made %d publishes and 2 subscriptions over 2 connections "
          "-> %d authorization requests"
          % (2 * n + 2, sum(1 for r in s.of("authorize") if r["client_id"] == "alice-1")))


def test_authorization_cache_expires_after_its_ttl(secure_broker, iam):
    s = iam()
    b = secure_broker(listeners=LISTENERS,
                      extra=http_table("http://127.0.0.1:%d/auth" % s.port, authorize=True,
                                       cache_ttl=0.5))
    c = connected(b, "alice", client_id="ttl-1")
    for i in range(5):
        c.publish("ok/t", b"%d" % i, qos=1)
    assert s.count("authorize", "alice", "publish", "ok/t") == 1
    # Past the TTL the decision is asked again, once (the passing of time is
    # what is tested here).
    time.sleep(0.7)
    for i in range(5):
        c.publish("ok/t", b"%d" % i, qos=1)
    assert s.count("authorize", "alice", "publish", "ok/t") == 2
    c.close()


def test_superuser_is_not_asked(secure_broker, iam):
    s = iam()
    b = secure_broker(listeners=LISTENERS,
                      extra=http_table("http://127.0.0.1:%d/auth" % s.port, authorize=True))
    root = connected(b, "root")
    assert root.subscribe([("secret/#", 1)]) == [1]
    root.publish("secret/a", b"x", qos=1)
    assert root.recv_publish(scaled(5)).topic == "secret/a"
    assert s.count("authorize") == 0
    # Not a superuser: the same subscription goes to the IAM and is denied.
    alice = connected(b, "alice")
    assert alice.subscribe([("secret/#", 1)]) == [SUBACK_FAILURE]
    assert s.count("authorize", "alice", "subscribe", "secret/#") == 1
    root.close()
    alice.close()


def test_slow_iam_times_out_others_are_served(secure_broker, iam):
    s = iam()
    b = secure_broker(listeners=LISTENERS,
                      extra=http_table("http://127.0.0.1:%d/auth" % s.port, timeout=1.5, retries=0))
    result = {}

    def slow():
        result["slow"] = connack(b, "slow", timeout=10)

    t = threading.Thread(target=slow)
    t.start()
    # Wait for the slow request to reach the server, then show the broker
    # serves others meanwhile (the event loops are not blocked).
    deadline = time.monotonic() + scaled(5)
    while s.count("authenticate", "slow") == 0:
        assert time.monotonic() < deadline, "the slow request never reached the IAM"
        time.sleep(0.01)
    t0 = time.monotonic()
    for i in range(5):
        rc, took = connack(b, "alice", client_id="fast-%d" % i)
        assert rc == 0
    fast = time.monotonic() - t0
    t.join(scaled(10))
    assert not t.is_alive()
    rc, took = result["slow"]
    assert rc == SERVER_UNAVAILABLE, rc
    assert 1.4 <= took <= 1.5 + scaled(1.5), took
    assert fast < 1.4, "other clients waited for the slow IAM answer (%.2fs)" % fast
    b.wait_for_log(r"authentication: no answer from http://127\.0\.0\.1:%d in time" % s.port)


def test_slow_authorization_holds_only_that_client(secure_broker, iam):
    s = iam()
    b = secure_broker(listeners=LISTENERS,
                      extra=http_table("http://127.0.0.1:%d/auth" % s.port, authorize=True,
                                       timeout=1.5, retries=0))
    root = connected(b, "root")  # a superuser sees everything, asks nothing
    root.subscribe([("#", 1)])
    alice = connected(b, "alice")
    bob = connected(b, "bob")
    t0 = time.monotonic()
    pid = alice.alloc_pid()
    alice.send(mqttraw.publish("slow/x", b"held", qos=1, pid=pid))
    deadline = time.monotonic() + scaled(5)
    while s.count("authorize", "alice", "publish", "slow/x") == 0:
        assert time.monotonic() < deadline, "the authorization request never reached the IAM"
        time.sleep(0.01)
    # Bob is served while alice's publish waits for its answer.
    bob.publish("ok/b", b"from bob", qos=1)
    assert time.monotonic() - t0 < 1.4
    got = root.recv_publish(scaled(5))
    assert got.topic == "ok/b", got
    # No answer within the timeout: denied, acknowledged and dropped.
    pkt = alice.expect(mqttraw.PUBACK, scaled(5))
    assert mqttraw.packet_id(pkt) == pid
    took = time.monotonic() - t0
    assert 1.4 <= took <= 1.5 + scaled(1.5), took
    alice.publish("ok/after", b"next", qos=1)  # the connection goes on
    assert root.recv_publish(scaled(5)).topic == "ok/after"
    for c in (root, alice, bob):
        c.close()


def test_dead_iam_fails_closed(secure_broker, iam):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # bound, never listening: connections are refused
    try:
        b = secure_broker(listeners=LISTENERS,
                          extra=http_table("http://127.0.0.1:%d/auth" % port, retries=2,
                                           retry_backoff=0.05, timeout=2))
        for user in ("alice", "bob"):
            rc, took = connack(b, user)
            assert rc == SERVER_UNAVAILABLE, (user, rc)
            assert took < scaled(2.5), took
        b.wait_for_log(r"IAM server http://127\.0\.0\.1:%d: authentication: " % port)
        # An outage is no password guess: nobody is banned (the defence counts nothing).
        assert b.find_log("banned") is None
    finally:
        s.close()


def test_dead_iam_with_on_error_next_falls_through(secure_broker, iam):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        listeners = [dict(LISTENERS[0], auth=["http", "anonymous"])]
        b = secure_broker(listeners=listeners,
                          extra=http_table("http://127.0.0.1:%d/auth" % port, retries=0,
                                           on_error="next"))
        assert connack(b, "alice")[0] == 0
    finally:
        s.close()


def test_audit_lines_of_the_iam(secure_broker, iam):
    """docs/audit.md: method "http", its reasons and codes 3, 4 and 5."""
    s = iam()
    b = secure_broker(listeners=LISTENERS, audit="audit.jsonl",
                      extra=http_table("http://127.0.0.1:%d/auth" % s.port))
    assert connack(b, "acl-user", client_id="audit-ok")[0] == 0
    assert connack(b, "mallory", client_id="audit-deny")[0] == NOT_AUTHORIZED
    assert connack(b, "eve", client_id="audit-bad")[0] == BAD_CREDENTIALS
    path = str(b.workdir / "audit.jsonl")
    wait_audit(path, lambda e: e.get("client_id") == "audit-bad", what="eve's auth.failure")
    by_id = {e["client_id"]: e for e in audit_lines(path) if e["event"].startswith("auth.")}
    ok = by_id["audit-ok"]
    assert ok["event"] == "auth.success" and ok["method"] == "http", ok
    assert ok["username"] == "acl-user" and ok["identity"] == "acl-user", ok
    assert ok["listener"] == "plain" and ok["peer"].startswith("127.0.0.1:"), ok
    assert "code" not in ok and "reason" not in ok, ok
    deny = by_id["audit-deny"]
    assert (deny["event"], deny["method"], deny["code"]) == ("auth.failure", "http", NOT_AUTHORIZED), deny
    assert deny["reason"] == "IAM: not authorized: unknown user", deny
    assert deny["username"] == "mallory" and "identity" not in deny, deny
    # A refusal goes through the (default) defence, which exempts loopback: held 0 ms.
    assert deny["delay_ms"] == 0 and "failures" in deny, deny
    bad = by_id["audit-bad"]
    assert (bad["event"], bad["method"], bad["code"]) == ("auth.failure", "http", BAD_CREDENTIALS), bad
    assert bad["reason"] == "IAM: bad credentials: wrong password", bad
    assert "pw" not in open(path).read()

    # The IAM server unavailable: fail closed with code 3, not counted as a guess.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]  # bound, never listening
    try:
        d = secure_broker(listeners=LISTENERS, audit="audit.jsonl",
                          extra=http_table("http://127.0.0.1:%d/auth" % port, retries=0))
        assert connack(d, "alice", client_id="audit-down")[0] == SERVER_UNAVAILABLE
        path = str(d.workdir / "audit.jsonl")
        down = wait_audit(path, lambda e: e.get("client_id") == "audit-down", what="auth.failure")[0]
    finally:
        dead.close()
    assert (down["event"], down["method"], down["code"]) == ("auth.failure", "http", SERVER_UNAVAILABLE), down
    assert down["reason"].startswith(
        "IAM server unavailable: connect to http://127.0.0.1:%d failed: " % port), down
    assert down["username"] == "alice", down
    assert "delay_ms" not in down and "failures" not in down, down


def test_503_is_retried_then_admitted(secure_broker, iam):
    """HTTP 503 (busy) is retried; the next answer decides. A server that stays
    busy past the retries fails closed with code 3."""
    s = iam()
    b = secure_broker(listeners=LISTENERS, audit="audit.jsonl",
                      extra=http_table("http://127.0.0.1:%d/auth" % s.port, retries=1,
                                       retry_backoff=0.05))
    assert connack(b, "flaky", client_id="flaky-1")[0] == 0
    assert s.count("authenticate", "flaky") == 2
    assert connack(b, "busy", client_id="busy-1")[0] == SERVER_UNAVAILABLE
    assert s.count("authenticate", "busy") == 2  # the first attempt and one retry
    path = str(b.workdir / "audit.jsonl")
    busy = wait_audit(path, lambda e: e.get("client_id") == "busy-1", what="busy's auth.failure")[0]
    assert (busy["code"], busy["reason"]) == (SERVER_UNAVAILABLE, "IAM server unavailable: HTTP status 503"), busy
    flaky = [e for e in audit_lines(path) if e.get("client_id") == "flaky-1"]
    assert [(e["event"], e["method"]) for e in flaky] == [("auth.success", "http")], flaky


def test_certificate_subject_and_fingerprint_over_mtls(secure_broker, iam, tmp_path):
    """On a mutual-TLS listener the IAM request carries the client certificate's
    subject, SHA-256 fingerprint and identity; a real client (mosquitto_pub)."""
    pki = make_pki(tmp_path / "pki")
    s = iam()
    mtls = {"name": "mtls", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["http"],
            "tls": {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert,
                    "client_cert": "required", "identity_from": "cn"}}
    b = secure_broker(listeners=[mtls], extra=http_table("http://127.0.0.1:%d/auth" % s.port))
    ep = b.endpoints["mtls"]
    rc, out = run_pub(ep, "t", "x", ["--cafile", pki.ca_cert, "--cert", pki.client_cert,
                                     "--key", pki.client_key, "-u", "alice", "-P", "pw",
                                     "-i", "mtls-alice"])
    assert rc == 0 and "received CONNACK (0)" in out, out
    req = [r for r in s.of("authenticate") if r.get("client_id") == "mtls-alice"][0]
    with open(pki.client_cert) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    assert req["certificate"] == {"subject": "CN=device-1",
                                  "fingerprint_sha256": hashlib.sha256(der).hexdigest(),
                                  "identity": "device-1"}, req
    assert req["listener"] == "mtls" and req["username"] == "alice", req
    # A client without a certificate never gets as far as the IAM.
    n = s.count("authenticate")
    rc, out = run_pub(ep, "t", "x", ["--cafile", pki.ca_cert, "-u", "alice", "-P", "pw"])
    assert rc != 0 and "received CONNACK" not in out, out
    assert s.count("authenticate") == n


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


def send_until_held_back(b, c, data):
    """Sends `data` without blocking until the broker stops taking it (no
    progress for a second; at most 5 s, well within auth_timeout) and checks
    that it did stop and did not grow by what it read meanwhile. Returns the
    number of bytes sent."""
    before = rss_bytes(b.pid)
    c.sock.setblocking(False)
    sent = 0
    stalled_since = None
    deadline = time.monotonic() + 5
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += c.sock.send(data[sent:sent + (1 << 20)])
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 1.0:
                break  # held back for a second: the broker stopped reading
            select.select([], [c.sock], [], 0.05)
    held = rss_bytes(b.pid) - before
    assert sent < len(data), "the broker read all %d bytes while it waited for the IAM" % len(data)
    # The socket buffers take several MiB; the broker itself at most 64 KiB and a read.
    assert held < 8 * 1024 * 1024, "moatd grew by %d bytes while it waited for the IAM" % held
    c.sock.setblocking(True)
    c.sock.settimeout(scaled(30))
    return sent


def flood(topic, n):
    """n QoS 1 PUBLISHes of 64 KiB, packet ids 1..n: 32 MiB for n = 512."""
    payload = b"x" * (64 * 1024 - 16)
    return b"".join(mqttraw.publish(topic, payload, qos=1, pid=i) for i in range(1, n + 1))


def test_input_waits_in_tcp_while_the_connect_awaits_the_iam(secure_broker, iam):
    """A client whose CONNECT waits for the IAM server's answer sends 32 MiB
    of QoS 1 PUBLISH behind it: the broker reads at most a little of it
    meanwhile (TCP holds the sender back, the broker's memory stays put),
    and once the answer is in it takes the rest and acknowledges every
    message in order."""
    s = iam()
    b = secure_broker(listeners=LISTENERS, threads=1,
                      extra=http_table("http://127.0.0.1:%d/auth" % s.port, timeout=30, retries=0))
    n = 512
    data = mqttraw.connect(uniq("flood"), username="slow", password="pw") + flood("flood/t", n)
    c = client(b, "flooder")
    try:
        sent = send_until_held_back(b, c, data)
        assert s.count("authenticate", "slow") == 1
        s.release.set()  # the IAM server allows the client now
        c.sock.sendall(data[sent:])
        pkt = c.recv_packet(scaled(30))
        assert pkt.type == mqttraw.CONNACK and mqttraw.decode_connack(pkt)[1] == 0, pkt
        for i in range(1, n + 1):
            pkt = c.recv_packet(scaled(30))
            assert pkt.type == mqttraw.PUBACK and mqttraw.packet_id(pkt) == i, (i, pkt)
    finally:
        c.close()


def test_input_waits_in_tcp_while_a_publish_awaits_the_iam(secure_broker, iam):
    """The same behind a PUBLISH that waits for the IAM server's
    authorization: the rest waits in TCP, and after the answer (a deny, for
    "slow/x") every message is acknowledged in order and the allowed ones
    are delivered."""
    s = iam()
    b = secure_broker(listeners=LISTENERS, threads=1,
                      extra=http_table("http://127.0.0.1:%d/auth" % s.port, authorize=True,
                                       timeout=30, retries=0))
    root = connected(b, "root")
    root.subscribe([("ok/#", 0)])
    n = 512
    c = connected(b, "alice")
    data = mqttraw.publish("slow/x", b"held", qos=1, pid=n + 1) + flood("ok/flood", n)
    try:
        sent = send_until_held_back(b, c, data)
        assert s.count("authorize", "alice", "publish", "slow/x") == 1
        s.release.set()
        c.sock.sendall(data[sent:])
        for pid in [n + 1] + list(range(1, n + 1)):
            pkt = c.recv_packet(scaled(30))
            assert pkt.type == mqttraw.PUBACK and mqttraw.packet_id(pkt) == pid, (pid, pkt)
        got = root.recv_publish(scaled(10))
        assert got.topic == "ok/flood", got  # "slow/x" was denied and dropped
    finally:
        c.close()
        root.close()
