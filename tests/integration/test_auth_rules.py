"""Client-identifier binding, certificate identities with ACL patterns,
certificate+password, and ordered ACL rules in moat.toml ([[acl.rule]]),
end to end with mosquitto_pub / mosquitto_sub, paho-mqtt and raw clients
(docs/security.md).

Absence of a delivery is proven with a sentinel published afterwards on the
same connection (MQTT keeps a connection's messages in order)."""

import subprocess

import pytest

import mqttraw
from pki import MOAT, make_pki, password_file_text, pub_ok, run_pub, secure_broker  # noqa: F401 (fixture)
from util import collect_until, scaled, uniq

pytestmark = [pytest.mark.moat_only, pytest.mark.threaded]

NOT_AUTHORIZED = 5
BAD_CREDENTIALS = 4

USERS = {"alice": "alice-pw", "plant7": "plant7-pw", "dev1": "dev1-pw", "device-1": "device-1-pw",
         "ops": "ops-pw"}

PASSWORD = [{"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["password"]}]


@pytest.fixture(scope="module")
def passwd_text(tmp_path_factory):
    return password_file_text(tmp_path_factory.mktemp("passwd"), USERS)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def connack_rc(ep, client_id, username=None, password=None, **kw):
    with mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name=client_id) as c:
        c.send(mqttraw.connect(client_id, username=username, password=password, **kw))
        return mqttraw.decode_connack(c.expect(mqttraw.CONNACK))[1]


def login(ep, user, client_id=None):
    c = mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name=user)
    c.connect(client_id or uniq(user + "-"), username=user, password=USERS[user])
    return c


def paho_rc(ep, client_id, username, password):
    import queue

    import paho.mqtt.client as mqtt
    c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311, reconnect_on_failure=False)
    c.username_pw_set(username, password)
    result = queue.Queue()
    c.on_connect = lambda cl, u, flags, rc: result.put(rc)
    c.connect(ep.host, ep.port, 30)
    c.loop_start()
    try:
        return result.get(timeout=scaled(10))
    finally:
        c.disconnect()
        c.loop_stop()


# ================================================================ client-id binding

CLIENTID = """
[auth.clientid]
users = { alice = ["alice-phone", "alice-laptop"], plant7 = ["sensor-%u-*"] }
others = ["%u-*"]
"""


def test_clientid_binding_refuses_a_mismatched_identifier(secure_broker, passwd_text):
    b = secure_broker(listeners=PASSWORD, password_file="passwd", files={"passwd": passwd_text},
                      extra=CLIENTID)
    ep = b.endpoints["plain"]
    topic = uniq("cid/")
    # The right triple: user name, password and an identifier of hers.
    pub_ok(ep, topic, "x", ["-i", "alice-phone", "-u", "alice", "-P", USERS["alice"]])
    # The same password from another device's identifier: CONNACK 5.
    rc, out = run_pub(ep, topic, "x", ["-i", "mallory-box", "-u", "alice", "-P", USERS["alice"]])
    assert rc != 0, out
    assert "Connection Refused: not authorised" in out, out
    assert paho_rc(ep, "alice-tablet", "alice", USERS["alice"]) == NOT_AUTHORIZED
    assert paho_rc(ep, "alice-laptop", "alice", USERS["alice"]) == 0
    # A wrong password stays a wrong password (CONNACK 4), whatever the identifier.
    assert paho_rc(ep, "alice-laptop", "alice", "guess") == BAD_CREDENTIALS
    # %u patterns: plant7 may use sensor-plant7-*, nothing else.
    assert connack_rc(ep, "sensor-plant7-01", "plant7", USERS["plant7"]) == 0
    assert connack_rc(ep, "sensor-plant8-01", "plant7", USERS["plant7"]) == NOT_AUTHORIZED
    assert connack_rc(ep, "plant7-01", "plant7", USERS["plant7"]) == NOT_AUTHORIZED
    # Users without their own entry: `others` (%u-*).
    assert connack_rc(ep, "dev1-a", "dev1", USERS["dev1"]) == 0
    assert connack_rc(ep, "alice-phone", "dev1", USERS["dev1"]) == NOT_AUTHORIZED
    b.wait_for_log(r"refused connection from .*\(mallory-box\): client identifier not allowed")
    # moat pub says so too (exit status 4: authentication failed).
    import os
    if os.access(MOAT, os.X_OK):
        for cid, want in (("alice-laptop", 0), ("stolen-id", 4)):
            r = subprocess.run([MOAT, "pub", "-h", ep.host, "-p", str(ep.port), "-t", topic, "-m", "m",
                                "-i", cid, "-u", "alice", "-P", USERS["alice"]],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=scaled(20))
            assert r.returncode == want, (cid, r.returncode, r.stderr)
            if want:
                assert b"not authorized (CONNACK 5)" in r.stderr, r.stderr


def test_listener_clientid_table_replaces_the_global_one(secure_broker, passwd_text):
    listeners = [{"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["password"]},
                 {"name": "strict", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["password"],
                  "raw": '[listener.clientid]\nothers = ["%u"]\n'}]
    b = secure_broker(listeners=listeners, password_file="passwd", files={"passwd": passwd_text},
                      extra=CLIENTID)
    assert connack_rc(b.endpoints["plain"], "dev1-x", "dev1", USERS["dev1"]) == 0
    assert connack_rc(b.endpoints["strict"], "dev1-x", "dev1", USERS["dev1"]) == NOT_AUTHORIZED
    assert connack_rc(b.endpoints["strict"], "dev1", "dev1", USERS["dev1"]) == 0
    # alice has no entry in the listener's table: `others` applies to her there.
    assert connack_rc(b.endpoints["strict"], "alice-phone", "alice", USERS["alice"]) == NOT_AUTHORIZED


def test_clientid_rules_reload_on_sighup(secure_broker, passwd_text):
    import signal
    b = secure_broker(listeners=PASSWORD, password_file="passwd", files={"passwd": passwd_text},
                      extra=CLIENTID)
    ep = b.endpoints["plain"]
    assert connack_rc(ep, "dev1-new", "dev1", USERS["dev1"]) == 0
    conf = b.workdir / "moat.toml"
    conf.write_text(conf.read_text().replace('others = ["%u-*"]', 'others = ["%u"]'))
    mark = b.log_mark()
    import os
    os.kill(b.pid, signal.SIGHUP)
    b.wait_for_log("configuration reloaded", since=mark)
    assert connack_rc(ep, "dev1-new", "dev1", USERS["dev1"]) == NOT_AUTHORIZED
    assert connack_rc(ep, "dev1", "dev1", USERS["dev1"]) == 0


# ================================================================ certificates

def mtls(pki, auth):
    return {"name": "mtls", "bind": "127.0.0.1:0", "transport": "tls", "auth": auth,
            "tls": {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert,
                    "client_cert": "required", "identity_from": "cn"}}


PLAIN_ANON = {"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["anonymous"]}

CERT_ACL = """\
topic read #
pattern readwrite devices/%u/#
pattern read inbox/%c
"""


def cert_args(pki, cert, key):
    return ["--cafile", pki.ca_cert, "--cert", cert, "--key", key]


def test_certificate_identity_with_acl_patterns(secure_broker, pki):
    b = secure_broker(listeners=[mtls(pki, ["certificate"]), PLAIN_ANON], acl_text=CERT_ACL)
    ep = b.endpoints["mtls"]
    with mqttraw.Client(b.endpoints["plain"].host, b.endpoints["plain"].port,
                        timeout=scaled(10), name="observer") as obs:
        obs.connect(uniq("observer"))
        assert obs.subscribe([("devices/#", 1)]) == [1]
        dev1 = cert_args(pki, pki.client_cert, pki.client_key)
        # device-1 (the certificate's CN) writes its own subtree (%u) ...
        pub_ok(ep, "devices/device-1/temp", "21", dev1)
        # ... not device-2's: acknowledged and dropped ...
        pub_ok(ep, "devices/device-2/temp", "forged", dev1)
        # ... and device-2 writes its own; this is the sentinel.
        pub_ok(ep, "devices/device-2/temp", "22", cert_args(pki, pki.client2_cert, pki.client2_key))
        got = collect_until(obs, "devices/device-2/temp")
        assert [(p.topic, p.payload) for p in got] == [("devices/device-1/temp", b"21")], got
    # The user name a client sends does not change its identity on auth = ["certificate"].
    rc, out = run_pub(ep, "devices/device-2/x", "y", dev1 + ["-u", "device-2"])
    assert rc == 0, out
    assert b.find_log(r"client .* connected .* user device-1")


def test_certificate_and_password(secure_broker, pki, passwd_text):
    b = secure_broker(listeners=[mtls(pki, ["certificate+password"])], password_file="passwd",
                      files={"passwd": passwd_text})
    ep = b.endpoints["mtls"]
    dev1 = cert_args(pki, pki.client_cert, pki.client_key)
    pub_ok(ep, "t", "x", dev1 + ["-u", "device-1", "-P", USERS["device-1"]])
    # The certificate alone is not enough.
    rc, out = run_pub(ep, "t", "x", dev1)
    assert rc != 0 and "not authorised" in out, out
    # A wrong password with the right certificate.
    rc, out = run_pub(ep, "t", "x", dev1 + ["-u", "device-1", "-P", "nope"])
    assert rc != 0 and "bad user name or password" in out, out
    # Someone else's user name and password with this certificate.
    rc, out = run_pub(ep, "t", "x", dev1 + ["-u", "alice", "-P", USERS["alice"]])
    assert rc != 0 and "not authorised" in out, out


# ================================================================ [[acl.rule]]

RULES = """
[[acl.rule]]
permission = "deny"
action = "all"
topic = "fleet/+/secret/#"

[[acl.rule]]
permission = "allow"
action = ["publish", "subscribe", "receive"]
topic = "fleet/%u/#"
user = "*"

[[acl.rule]]
permission = "allow"
action = "all"
topic = "clients/%c/#"

[[acl.rule]]
permission = "allow"
action = ["subscribe", "receive"]
topic = "fleet/#"
user = "ops"

[[acl.rule]]
permission = "allow"
action = ["subscribe", "receive"]
topic = "$SYS/#"
user = "ops"

[[acl.rule]]
permission = "allow"
action = ["subscribe", "receive"]
topic = "public/#"
user = ""
"""

RULES_LISTENERS = [{"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp",
                    "auth": ["password", "anonymous"]}]


def rules_broker(secure_broker, passwd_text, acl_text=None, **kw):
    return secure_broker(listeners=RULES_LISTENERS, password_file="passwd",
                         files={"passwd": passwd_text}, acl_text=acl_text, extra=RULES, **kw)


def test_toml_rules_first_match_wins_with_u_and_c(secure_broker, passwd_text):
    b = rules_broker(secure_broker, passwd_text)
    ep = b.endpoints["plain"]
    with login(ep, "dev1", "dev1-box") as d, login(ep, "ops") as ops:
        assert ops.subscribe([("fleet/#", 1)]) == [1]
        assert d.subscribe([("fleet/dev1/#", 1), ("fleet/alice/#", 1), ("clients/dev1-box/#", 1),
                            ("clients/other/#", 1), ("fleet/dev1/secret/#", 1)]) \
            == [1, 0x80, 1, 0x80, 0x80]
        d.publish("fleet/dev1/secret/key", b"no", qos=1)   # the deny comes first
        d.publish("fleet/alice/temp", b"no", qos=1)        # not %u
        d.publish("fleet/dev1/temp", b"yes", qos=1)        # sentinel
        got = collect_until(ops, "fleet/dev1/temp")
        assert got == [], got
        # Received on their own subscriptions: fleet/dev1/temp came back to dev1.
        p = d.recv_publish()
        assert (p.topic, p.payload) == ("fleet/dev1/temp", b"yes")
        # ops may read the fleet but not write it (no rule: deny by default).
        ops.publish("fleet/dev1/cmd", b"no", qos=1)
        d.publish("fleet/dev1/temp2", b"sentinel", qos=1)
        got = collect_until(d, "fleet/dev1/temp2")
        assert got == [], got


def test_toml_rules_sys_and_anonymous(secure_broker, passwd_text):
    b = rules_broker(secure_broker, passwd_text, sys_interval=1)
    ep = b.endpoints["plain"]
    with login(ep, "ops") as ops, login(ep, "alice") as a, \
            mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="anon") as anon:
        anon.connect(uniq("anon"))
        assert anon.subscribe([("public/#", 0), ("fleet/#", 0), ("#", 0)]) == [0, 0x80, 0x80]
        assert a.subscribe([("$SYS/#", 0), ("public/#", 0)]) == [0x80, 0x80]
        assert ops.subscribe([("$SYS/#", 0)]) == [0]
        got = ops.recv_publish(timeout=scaled(3))
        assert got.topic.startswith("$SYS/"), got


def test_toml_rules_come_before_the_acl_file(secure_broker, passwd_text):
    # The file grants alice everything under fleet/; the rules deny secrets first.
    acl = "user alice\ntopic readwrite fleet/#\n"
    b = rules_broker(secure_broker, passwd_text, acl_text=acl)
    ep = b.endpoints["plain"]
    with login(ep, "alice") as a:
        assert a.subscribe([("fleet/x/secret/#", 0), ("fleet/dev1/#", 0)]) == [0x80, 0]


def test_bad_rule_refuses_to_start(tmp_path):
    from conftest import MOATD
    import os
    if not os.access(MOATD, os.X_OK):
        pytest.skip("no moatd")
    conf = tmp_path / "moat.toml"
    conf.write_text('[[listener]]\nname = "a"\nbind = "127.0.0.1:0"\nauth = ["anonymous"]\n'
                    '[[acl.rule]]\npermission = "allow"\naction = "all"\ntopic = "a/%u-x"\n')
    r = subprocess.run([MOATD, "-c", str(conf), "--check-config"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=scaled(10))
    out = r.stdout.decode()
    assert r.returncode == 2, out
    assert "moat.toml:5:1: acl.rule[0]:" in out and "%u and %c must be the whole topic level" in out, out
