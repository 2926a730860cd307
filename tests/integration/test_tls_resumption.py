"""TLS session resumption against a real moatd with `openssl s_client
-sess_out` / `-sess_in` (docs/security.md, "Session resumption and reload").

A session resumes only under the trust it was made with: after a reload that
removes the device's CA from the CA file (rewritten at the same path), a
saved TLS 1.2 ticket or TLS 1.3 ticket no longer resumes, and the full
handshake that follows refuses the certificate before any MQTT byte.

The resumption itself is read from the broker's debug log ("TLS with PEER:
VERSION CIPHER, resumed"), the MQTT result from the bytes s_client prints."""

import os
import signal

import pytest

import mqttraw
from pki import CA, empty_openssl_conf, make_pki, s_client_mqtt, secure_broker  # noqa: F401
from util import scaled

pytestmark = [pytest.mark.moat_only]

FORCE = {"1.2": "-tls1_2", "1.3": "-tls1_3"}
RELOADED = r"reload: TLS certificates, keys and CRLs of listener %s"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def device_ca(tmp_path_factory):
    """A second CA and a client certificate CN=device-9 it issued."""
    ca = CA(tmp_path_factory.mktemp("device-ca"), "Moat Device CA 2")
    cert, key = ca.issue("device-9", "/CN=device-9")
    return ca, cert, key


def read(path):
    with open(path) as f:
        return f.read()


def accepted(packets, err):
    return ([p.type for p in packets] == [mqttraw.CONNACK, mqttraw.PUBACK]
            and mqttraw.decode_connack(packets[0]) == (False, 0))


def handshake_line(b, version, since):
    """The broker's debug line for the next completed handshake."""
    return b.wait_for_log(r"TLS with 127\.0\.0\.1:\d+: TLSv%s .*" % version.replace(".", r"\."),
                          since=since).group(0)


@pytest.mark.parametrize("version,how", [("1.2", "sighup"), ("1.2", "file change"),
                                         ("1.3", "sighup"), ("1.3", "file change")])
def test_resumption_is_refused_after_the_device_ca_is_removed(secure_broker, pki, device_ca,
                                                             empty_openssl_conf, tmp_path,
                                                             version, how):
    ca2, dev_cert, dev_key = device_ca
    b = secure_broker(
        listeners=[{"name": "mtls", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["certificate"],
                    "tls": {"cert": pki.server_cert, "key": pki.server_key, "ca": "trust.pem",
                            "client_cert": "required", "identity_from": "cn",
                            "reload_on_change": how == "file change"}}],
        files={"trust.pem": read(pki.ca_cert) + read(ca2.cert)})
    ep = b.endpoints["mtls"]
    sess = str(tmp_path / "session.pem")
    client = [FORCE[version], "-CAfile", pki.ca_cert, "-cert", dev_cert, "-key", dev_key]

    # A full handshake saves the session (the ticket arrives before the CONNACK).
    mark = b.log_mark()
    packets, err = s_client_mqtt(ep, empty_openssl_conf, *client, "-sess_out", sess)
    assert accepted(packets, err), (packets, err)
    assert "resumed" not in handshake_line(b, version, mark)
    assert os.path.getsize(sess) > 0

    # It resumes while the trust is unchanged.
    mark = b.log_mark()
    packets, err = s_client_mqtt(ep, empty_openssl_conf, *client, "-sess_in", sess)
    assert accepted(packets, err), (packets, err)
    line = handshake_line(b, version, mark)
    assert ", resumed, identity device-9" in line, line

    # The CA file at the same path now holds only the server's CA.
    mark = b.log_mark()
    trust = b.workdir / "trust.pem"
    tmp = b.workdir / "trust.pem.new"
    tmp.write_text(read(pki.ca_cert))
    os.replace(str(tmp), str(trust))
    if how == "sighup":
        os.kill(b.pid, signal.SIGHUP)
    b.wait_for_log(RELOADED % "mtls", since=mark)

    # The saved session no longer resumes: the full handshake refuses the
    # certificate of the removed CA, before any MQTT byte.
    mark = b.log_mark()
    packets, err = s_client_mqtt(ep, empty_openssl_conf, *client, "-sess_in", sess)
    assert packets == [], (packets, err)
    b.wait_for_log(r"on mtls failed: unknown CA", since=mark)
    assert b.find_log(r"TLS with .*resumed", since=mark) is None, b.log_text()

    # Control: a full handshake is refused the same way.
    mark = b.log_mark()
    packets, err = s_client_mqtt(ep, empty_openssl_conf, *client)
    assert packets == [], (packets, err)
    b.wait_for_log(r"on mtls failed: unknown CA", since=mark)
    assert b.alive()


def test_resumption_survives_a_reload_of_the_same_trust(secure_broker, pki, empty_openssl_conf,
                                                        tmp_path):
    """A reload that leaves the CAs as they were (here: the server
    certificate's files touched, SIGHUP) keeps the ticket keys and the
    session context: saved sessions still resume."""
    b = secure_broker(
        listeners=[{"name": "mtls", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["certificate"],
                    "tls": {"cert": pki.server_cert, "key": pki.server_key, "ca": "trust.pem",
                            "client_cert": "required", "reload_on_change": False}}],
        files={"trust.pem": read(pki.ca_cert)})
    ep = b.endpoints["mtls"]
    sess = str(tmp_path / "session.pem")
    client = ["-tls1_2", "-CAfile", pki.ca_cert, "-cert", pki.client_cert, "-key", pki.client_key]
    packets, err = s_client_mqtt(ep, empty_openssl_conf, *client, "-sess_out", sess)
    assert accepted(packets, err), (packets, err)
    mark = b.log_mark()
    os.kill(b.pid, signal.SIGHUP)
    b.wait_for_log(RELOADED % "mtls", since=mark)
    mark = b.log_mark()
    packets, err = s_client_mqtt(ep, empty_openssl_conf, *client, "-sess_in", sess)
    assert accepted(packets, err), (packets, err)
    assert ", resumed" in handshake_line(b, "1.2", mark)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_session_tickets_false_means_no_resumption(secure_broker, pki, empty_openssl_conf,
                                                   tmp_path, version):
    """session_tickets = false: no ticket is issued, and with no server-side
    session cache nothing resumes; the listener beside it with tickets on
    (and a short ticket_key_rotation) is the control."""
    def listener(name, **tls):
        t = {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert,
             "client_cert": "required"}
        t.update(tls)
        return {"name": name, "bind": "127.0.0.1:0", "transport": "tls", "auth": ["certificate"],
                "tls": t}
    b = secure_broker(listeners=[listener("off", session_tickets=False),
                                 listener("on", session_tickets=True, ticket_key_rotation=600)])
    client = [FORCE[version], "-CAfile", pki.ca_cert, "-cert", pki.client_cert,
              "-key", pki.client_key]
    for name in ("on", "off"):
        ep = b.endpoints[name]
        sess = str(tmp_path / ("session-%s.pem" % name))
        packets, err = s_client_mqtt(ep, empty_openssl_conf, *client, "-sess_out", sess)
        assert accepted(packets, err), (packets, err)
        if name == "off" and (not os.path.exists(sess) or os.path.getsize(sess) == 0):
            continue  # no session to offer at all (TLS 1.3 without a ticket)
        mark = b.log_mark()
        packets, err = s_client_mqtt(ep, empty_openssl_conf, *client, "-sess_in", sess)
        assert accepted(packets, err), (packets, err)
        line = handshake_line(b, version, mark)
        assert (", resumed" in line) == (name == "on"), (name, line)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_an_expired_certificate_does_not_resume(secure_broker, pki, empty_openssl_conf, tmp_path,
                                                version):
    """A session outlives its ticket key only, but a certificate may expire
    sooner: resuming with a certificate that has expired since is refused as a
    full handshake would be."""
    import datetime
    import time

    ends = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(
        seconds=scaled(6))
    cert, key = pki.ca.issue("short-lived-" + version, "/CN=device-short",
                             enddate=ends.strftime("%Y%m%d%H%M%SZ"))
    b = secure_broker(
        listeners=[{"name": "mtls", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["certificate"],
                    "tls": {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert,
                            "client_cert": "required", "identity_from": "cn"}}])
    ep = b.endpoints["mtls"]
    sess = str(tmp_path / "session.pem")
    client = [FORCE[version], "-CAfile", pki.ca_cert, "-cert", cert, "-key", key]
    packets, err = s_client_mqtt(ep, empty_openssl_conf, *client, "-sess_out", sess)
    assert accepted(packets, err), (packets, err)
    mark = b.log_mark()
    packets, err = s_client_mqtt(ep, empty_openssl_conf, *client, "-sess_in", sess)
    assert accepted(packets, err), (packets, err)
    assert ", resumed" in handshake_line(b, version, mark)
    # Past the certificate's notAfter (a deadline, not an event to wait for).
    time.sleep(max(0.0, (ends - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 1.5)
    mark = b.log_mark()
    packets, err = s_client_mqtt(ep, empty_openssl_conf, *client, "-sess_in", sess)
    assert packets == [], (packets, err)
    b.wait_for_log(r"on mtls failed: certificate expired: CN=device-short", since=mark)
    assert b.alive()
