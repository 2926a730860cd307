"""The TLS listener (transport = "tls", [listener.tls]) end to end, with
Debian's mosquitto_pub / mosquitto_sub, `openssl s_client` and paho-mqtt as
clients (docs/security.md, "TLS").

The PKI is generated per module with the openssl command line (pki.py): a CA,
a server certificate for IP:127.0.0.1 / DNS:localhost, client certificates
CN=device-1 and CN=device-2, an expired one, a revoked one (in ca.crl) and one
from an unrelated CA.

Client identities are checked through the ACL: `device-1` (certificate CN)
may only write dev/1, `sensor-7` (PSK identity) only psk/sensor-7, and an
anonymous observer on a plain TCP listener reads everything. A message that
reaches the observer proves the broker gave the client that identity."""

import os
import queue
import socket
import ssl
import subprocess

import pytest

import mqttraw
from pki import (empty_openssl_conf, make_pki, password_file_text, pub_ok,  # noqa: F401
                 pub_refused_in_handshake, run_pub, s_client_mqtt, secure_broker)
from util import mosquitto_sub, scaled, uniq

# threaded: the worker pool for password hashes and TLS sessions moving between
# event loops run under TSan too.
pytestmark = [pytest.mark.moat_only, pytest.mark.threaded]

PSK_IDENTITY = "sensor-7"
PSK_KEY = "00112233445566778899aabbccddeeff"
PSK_FILE = "# identity:hexkey\n%s:%s\nother-sensor:%s\n" % (PSK_IDENTITY, PSK_KEY, "ab" * 32)

ACL = """\
# anonymous clients: the observer on the plain listener
topic read #

user device-1
topic write dev/1

user sensor-7
topic write psk/sensor-7

pattern write fleet/%u/telemetry
"""

PLAIN = {"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["anonymous"]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_tls(pki, **kw):
    t = {"cert": pki.server_cert, "key": pki.server_key}
    t.update(kw)
    return t


def mtls_listener(pki, name="mtls", auth=("certificate",), client_cert="required", **kw):
    return {"name": name, "bind": "127.0.0.1:0", "transport": "tls", "auth": list(auth),
            "tls": server_tls(pki, ca=pki.ca_cert, client_cert=client_cert, crl=[pki.crl],
                              identity_from="cn", **kw)}


def psk_listener(name="psk", **kw):
    t = {"psk_file": "psk.txt", "identity_from": "psk"}
    t.update(kw)
    return {"name": name, "bind": "127.0.0.1:0", "transport": "tls", "auth": ["psk"], "tls": t}


def ca_args(pki):
    return ["--cafile", pki.ca_cert]


def cert_args(pki, cert, key):
    return ["--cafile", pki.ca_cert, "--cert", cert, "--key", key]


def observer(b, topic="#"):
    """Anonymous raw client on the plain listener, subscribed to `topic` (QoS 1)."""
    ep = b.endpoints["plain"]
    c = mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="observer")
    c.connect(uniq("observer"))
    assert c.subscribe([(topic, 1)]) == [1]
    return c


def next_message(c, timeout=10.0):
    p = c.recv_publish(timeout=scaled(timeout))
    return p.topic, p.payload


def s_client(ep, conf, *args, timeout=15):
    env = dict(os.environ, OPENSSL_CONF=conf)
    argv = ["openssl", "s_client", "-connect", "%s:%d" % (ep.host, ep.port), "-brief"] + list(args)
    try:
        r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=scaled(timeout))
    except subprocess.TimeoutExpired as e:
        raise AssertionError("s_client did not exit: %s\n%s" % (
            argv, (e.stdout or b"").decode("utf-8", "replace")))
    return r.returncode, r.stdout.decode("utf-8", "replace")


def assert_connack_puback(packets, err):
    assert [p.type for p in packets] == [mqttraw.CONNACK, mqttraw.PUBACK], (packets, err)
    assert mqttraw.decode_connack(packets[0]) == (False, 0), (packets, err)
    assert mqttraw.packet_id(packets[1]) == 7


def full_broker(secure_broker, pki, threads=1, extra_listeners=()):
    """plain (tcp, anonymous observer) + mtls (client cert required, CRL,
    identity from CN) + psk, with the ACL. One event loop: the tests compare
    deliveries from successive client processes."""
    return secure_broker(listeners=[PLAIN, mtls_listener(pki), psk_listener()] + list(extra_listeners),
                         acl_text=ACL, files={"psk.txt": PSK_FILE}, threads=threads)


# ================================================================ server side

def test_server_verified_by_mosquitto_clients(secure_broker, pki):
    files = {"server.crt": open(pki.server_cert).read(), "server.key": open(pki.server_key).read()}
    b = secure_broker(listeners=[{"name": "secure", "bind": "127.0.0.1:0", "transport": "tls",
                                  "auth": ["anonymous"],
                                  # relative to the configuration file's folder
                                  "tls": {"cert": "server.crt", "key": "server.key"}}],
                      files=files)
    ep = b.endpoints["secure"]
    topic = uniq("tls/")
    sub = mosquitto_sub(ep, topic, qos=1, extra=ca_args(pki))
    try:
        pub_ok(ep, topic, "over-tls", ca_args(pki))
        sub.wait_line("%s over-tls" % topic)
        assert sub.wait_exit() == 0, sub.output()
    finally:
        sub.kill()
    # The client really verifies the server: a client trusting another CA refuses it.
    pub_refused_in_handshake(ep, topic, ["--cafile", pki.intruder_ca.cert])
    assert b.alive()


FORCE = {"1.2": "-tls1_2", "1.3": "-tls1_3"}


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls_versions(secure_broker, pki, empty_openssl_conf, version):
    """mosquitto's --tls-version tlsv1.2 only sets a minimum (it negotiates 1.3
    when offered), so the exact version is forced with `openssl s_client`
    carrying the MQTT bytes."""
    b = secure_broker(listeners=[
        PLAIN,
        {"name": "secure", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["anonymous"],
         "tls": server_tls(pki, min_version="1.2")},
        {"name": "secure13", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["anonymous"],
         "tls": server_tls(pki, min_version="1.3")}])
    ep, ep13 = b.endpoints["secure"], b.endpoints["secure13"]
    mosq = ca_args(pki) + ["--tls-version", "tlsv" + version]
    topic = uniq("ver/")
    sub = mosquitto_sub(ep, topic, qos=1, extra=mosq)
    try:
        pub_ok(ep, topic, "mosquitto", mosq)
        sub.wait_line("%s mosquitto" % topic)
        assert sub.wait_exit() == 0, sub.output()
    finally:
        sub.kill()

    with observer(b) as obs:
        packets, err = s_client_mqtt(ep, empty_openssl_conf, FORCE[version], "-CAfile", pki.ca_cert,
                                     "-verify_return_error",
                                     topic=topic, payload=b"forced")
        assert "Protocol version: TLSv%s" % version in err, err
        assert_connack_puback(packets, err)
        assert next_message(obs) == (topic, b"forced")

        # min_version = "1.3" refuses TLS 1.2 and accepts TLS 1.3.
        packets, err = s_client_mqtt(ep13, empty_openssl_conf, FORCE[version], "-CAfile", pki.ca_cert,
                                     topic=topic, payload=b"on-13")
        if version == "1.2":
            assert packets == [] and "Protocol version: TLSv1.2" not in err, (packets, err)
        else:
            assert_connack_puback(packets, err)
            assert next_message(obs) == (topic, b"on-13")
            pub_ok(ep13, topic, "mosquitto-13", mosq)
            assert next_message(obs) == (topic, b"mosquitto-13")
    assert b.alive()


def test_tls11_refused(secure_broker, pki, empty_openssl_conf):
    b = secure_broker(listeners=[{"name": "secure", "bind": "127.0.0.1:0", "transport": "tls",
                                  "auth": ["anonymous"], "tls": server_tls(pki)}])
    ep = b.endpoints["secure"]
    # OpenSSL 3 clients refuse TLS 1.1 themselves at security level >= 1: lower it so
    # that only the broker can make this handshake fail (checked by hand against
    # `openssl s_server`, which completes a TLS 1.1 handshake with these options).
    rc, out = s_client(ep, empty_openssl_conf, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert rc != 0, "TLS 1.1 handshake succeeded:\n" + out
    assert "CONNECTION ESTABLISHED" not in out and "Protocol version: TLSv1.1" not in out, out
    # Control: the same client options with TLS 1.2 do connect.
    rc, out = s_client(ep, empty_openssl_conf, "-tls1_2", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert rc == 0 and "Protocol version: TLSv1.2" in out, out
    assert b.alive()


def test_plain_mqtt_on_tls_port(secure_broker, pki):
    b = secure_broker(listeners=[{"name": "secure", "bind": "127.0.0.1:0", "transport": "tls",
                                  "auth": ["anonymous"], "tls": server_tls(pki)}])
    ep = b.endpoints["secure"]
    for attempt in range(3):
        s = socket.create_connection((ep.host, ep.port), timeout=scaled(10))
        try:
            s.sendall(mqttraw.connect(uniq("plain")))
            data = mqttraw.expect_closed(s, scaled(5))
        finally:
            s.close()
        assert not data.startswith(b"\x20"), "a plain client got a CONNACK: %r" % data
        assert data == b"" or data[0] == 0x15, "expected nothing or a TLS alert, got %r" % data[:50]
    assert b.alive()
    topic = uniq("after/")
    sub = mosquitto_sub(ep, topic, extra=ca_args(pki))
    try:
        pub_ok(ep, topic, "still-up", ca_args(pki))
        sub.wait_line("%s still-up" % topic)
    finally:
        sub.kill()


def test_silent_connection_on_tls_port_is_closed(secure_broker, pki):
    """A client that opens the TLS port and never starts a handshake is closed
    by connect_timeout (2 s here), like a silent plain client."""
    b = secure_broker(listeners=[{"name": "secure", "bind": "127.0.0.1:0", "transport": "tls",
                                  "auth": ["anonymous"], "tls": server_tls(pki)}])
    ep = b.endpoints["secure"]
    s = socket.create_connection((ep.host, ep.port), timeout=scaled(10))
    try:
        data = mqttraw.expect_closed(s, scaled(2 + 3))
    finally:
        s.close()
    assert not data.startswith(b"\x20"), data
    assert b.alive()


# ================================================================ client certificates

def test_mtls_no_client_certificate(secure_broker, pki):
    b = full_broker(secure_broker, pki)
    out = pub_refused_in_handshake(b.endpoints["mtls"], "dev/1", ca_args(pki))
    assert "Connection Refused" not in out, out
    assert b.alive()


def test_mtls_identity_from_cn(secure_broker, pki):
    b = full_broker(secure_broker, pki)
    ep = b.endpoints["mtls"]
    dev1 = cert_args(pki, pki.client_cert, pki.client_key)
    dev2 = cert_args(pki, pki.client2_cert, pki.client2_key)
    with observer(b) as obs:
        pub_ok(ep, "dev/2", "denied-for-device-1", dev1)   # PUBACKed, dropped by the ACL
        pub_ok(ep, "dev/1", "from-device-1", dev1)
        assert next_message(obs) == ("dev/1", b"from-device-1")
        pub_ok(ep, "dev/1", "forged-by-device-2", dev2)    # device-2 may not write dev/1
        pub_ok(ep, "dev/1", "again-device-1", dev1)
        assert next_message(obs) == ("dev/1", b"again-device-1")
        # A user name sent by a certificate client does not replace its identity.
        pub_ok(ep, "dev/1", "with-user", dev1 + ["-u", "someone-else"])
        assert next_message(obs) == ("dev/1", b"with-user")
        # %u is the certificate identity too.
        pub_ok(ep, "fleet/device-1/telemetry", "forged", dev2)
        pub_ok(ep, "fleet/device-2/telemetry", "own", dev2)
        assert next_message(obs) == ("fleet/device-2/telemetry", b"own")


@pytest.mark.parametrize("case", ["unknown CA", "expired", "revoked"])
def test_mtls_bad_client_certificate(secure_broker, pki, case):
    b = full_broker(secure_broker, pki)
    ep = b.endpoints["mtls"]
    cert, key = {"unknown CA": (pki.intruder_cert, pki.intruder_key),
                 "expired": (pki.expired_cert, pki.expired_key),
                 "revoked": (pki.revoked_cert, pki.revoked_key)}[case]
    mark = b.log_mark()
    pub_refused_in_handshake(ep, "dev/1", cert_args(pki, cert, key))
    line = b.wait_for_log(r" (info|warn|warning) .*(?i:%s)" % case, since=mark)
    assert line, b.log_text()
    # The listener still serves good clients.
    with observer(b) as obs:
        pub_ok(ep, "dev/1", "good", cert_args(pki, pki.client_cert, pki.client_key))
        assert next_message(obs) == ("dev/1", b"good")


def test_mtls_forced_tls12(secure_broker, pki, empty_openssl_conf):
    """Client certificates in a TLS 1.2 handshake (in TLS 1.3 the client learns
    of a refusal only after its Finished): s_client forces the version."""
    b = full_broker(secure_broker, pki)
    ep = b.endpoints["mtls"]
    with observer(b) as obs:
        packets, err = s_client_mqtt(ep, empty_openssl_conf, "-tls1_2",
                                     "-CAfile", pki.ca_cert, "-cert", pki.client_cert,
                                     "-key", pki.client_key,
                                     topic="dev/1", payload=b"tls12-cert")
        assert "Protocol version: TLSv1.2" in err, err
        assert_connack_puback(packets, err)
        assert next_message(obs) == ("dev/1", b"tls12-cert")
    for name, extra in [("no certificate", []),
                        ("revoked", ["-cert", pki.revoked_cert, "-key", pki.revoked_key]),
                        ("expired", ["-cert", pki.expired_cert, "-key", pki.expired_key]),
                        ("unknown CA", ["-cert", pki.intruder_cert, "-key", pki.intruder_key])]:
        packets, err = s_client_mqtt(ep, empty_openssl_conf, "-tls1_2",
                                     "-CAfile", pki.ca_cert, *extra,
                                     topic="dev/1", payload=b"x")
        assert packets == [], "%s: got MQTT packets %r\n%s" % (name, packets, err)
    assert b.alive()


def test_optional_certificate_then_password(secure_broker, pki, tmp_path):
    pw_text = password_file_text(tmp_path, {"device-9": "nine"})
    b = secure_broker(listeners=[PLAIN, mtls_listener(pki, name="opt", client_cert="optional",
                                                      auth=("certificate", "password"))],
                      password_file="passwd", files={"passwd": pw_text},
                      acl_text=ACL + "\nuser device-9\ntopic write dev/9\n", threads=1)
    ep = b.endpoints["opt"]
    with observer(b) as obs:
        pub_ok(ep, "dev/1", "cert", cert_args(pki, pki.client_cert, pki.client_key))
        assert next_message(obs) == ("dev/1", b"cert")
        pub_ok(ep, "dev/9", "password", ca_args(pki) + ["-u", "device-9", "-P", "nine"])
        assert next_message(obs) == ("dev/9", b"password")
    rc, out = run_pub(ep, "dev/9", "x", ca_args(pki) + ["-u", "device-9", "-P", "wrong"])
    assert rc != 0 and "bad user name or password" in out, out
    rc, out = run_pub(ep, "dev/9", "x", ca_args(pki))  # no certificate, no user: end of chain
    assert rc != 0 and "not authorised" in out, out
    # Optional does not mean unchecked: a certificate that fails verification fails.
    pub_refused_in_handshake(ep, "dev/1", cert_args(pki, pki.intruder_cert, pki.intruder_key))
    pub_refused_in_handshake(ep, "dev/1", cert_args(pki, pki.revoked_cert, pki.revoked_key))


# ================================================================ PSK

@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_psk(secure_broker, pki, empty_openssl_conf, version):
    b = full_broker(secure_broker, pki)
    ep = b.endpoints["psk"]
    psk = ["--psk", PSK_KEY, "--psk-identity", PSK_IDENTITY, "--tls-version", "tlsv" + version]
    with observer(b) as obs:
        pub_ok(ep, "psk/other", "denied", psk)          # the ACL of sensor-7 drops it
        pub_ok(ep, "psk/sensor-7", "reading", psk)
        assert next_message(obs) == ("psk/sensor-7", b"reading")
        # The exact version, forced with s_client.
        packets, err = s_client_mqtt(ep, empty_openssl_conf, FORCE[version], "-psk", PSK_KEY,
                                     "-psk_identity", PSK_IDENTITY,
                                     topic="psk/sensor-7", payload=b"forced")
        assert "Protocol version: TLSv%s" % version in err, err
        assert_connack_puback(packets, err)
        assert next_message(obs) == ("psk/sensor-7", b"forced")
        # The other identity of the file has no ACL grant.
        packets, err = s_client_mqtt(ep, empty_openssl_conf, FORCE[version], "-psk", "ab" * 32,
                                     "-psk_identity", "other-sensor",
                                     topic="psk/sensor-7", payload=b"other-identity")
        assert_connack_puback(packets, err)
        pub_ok(ep, "psk/sensor-7", "sentinel", psk)
        assert next_message(obs) == ("psk/sensor-7", b"sentinel")
    wrong_key = ["--psk", "ff" + PSK_KEY[2:], "--psk-identity", PSK_IDENTITY,
                 "--tls-version", "tlsv" + version]
    unknown_id = ["--psk", PSK_KEY, "--psk-identity", "nobody", "--tls-version", "tlsv" + version]
    pub_refused_in_handshake(ep, "psk/sensor-7", wrong_key)
    pub_refused_in_handshake(ep, "psk/sensor-7", unknown_id)
    packets, err = s_client_mqtt(ep, empty_openssl_conf, FORCE[version],
                                 "-psk", "ff" + PSK_KEY[2:], "-psk_identity", PSK_IDENTITY,
                                 topic="psk/sensor-7", payload=b"x")
    assert packets == [], (packets, err)
    assert b.alive()


# ================================================================ paho

def test_paho_with_ssl_context(secure_broker, pki):
    import paho.mqtt.client as mqtt
    b = full_broker(secure_broker, pki)
    ep = b.endpoints["mtls"]
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca_cert)
    ctx.load_cert_chain(pki.client_cert, pki.client_key)
    c = mqtt.Client(client_id=uniq("paho-tls"), protocol=mqtt.MQTTv311, reconnect_on_failure=False)
    c.tls_set_context(ctx)
    connacks = queue.Queue()
    c.on_connect = lambda cl, u, flags, rc: connacks.put(rc)
    with observer(b) as obs:
        c.connect(ep.host, ep.port, 30)
        c.loop_start()
        try:
            try:
                rc = connacks.get(timeout=scaled(10))
            except queue.Empty:
                raise AssertionError("paho over TLS: no CONNACK")
            assert rc == 0, "paho over TLS: CONNACK %d" % rc
            info = c.publish("dev/1", b"paho-tls", qos=1)
            info.wait_for_publish(scaled(10))
            assert info.is_published()
            assert next_message(obs) == ("dev/1", b"paho-tls")
            assert isinstance(c.socket(), ssl.SSLSocket)
            assert c.socket().version() in ("TLSv1.2", "TLSv1.3")
        finally:
            c.disconnect()
            c.loop_stop()
