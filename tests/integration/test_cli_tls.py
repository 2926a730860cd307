"""`moat pub` / `moat sub` over TLS (docs/cli.md, "TLS"), against moatd's TLS
listeners and against Debian's mosquitto with a TLS and a PSK listener,
interoperating with mosquitto_pub / mosquitto_sub; and `moat init` end to end.

The PKI is made per module with the openssl command line (pki.py): a CA, a
server certificate for IP:127.0.0.1 / DNS:localhost, one for broker.example
only, an expired one, client certificates device-1, a revoked one and one of
an unrelated CA.

A failed TLS handshake exits with status 8 and one error line that says why."""

import os
import re
import shlex
import signal
import stat
import subprocess
import time

import pytest

import mqttraw
from conftest import MOATD, MOSQUITTO, Broker, free_port
from pki import LISTENER_RE, make_pki, secure_broker  # noqa: F401
from test_cli import MoatProc, assert_one_error_line, moat
from util import LineProc, mosquitto_sub, scaled, uniq

EXIT_AUTH = 4
EXIT_TLS = 8

PSK_IDENTITY = "sensor-7"
PSK_KEY = "00112233445566778899aabbccddeeff"
PSK_FILE = "%s:%s\n" % (PSK_IDENTITY, PSK_KEY)

ACL = """\
topic read #

user device-1
topic write dev/1

user sensor-7
topic write psk/sensor-7
"""

PLAIN = {"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["anonymous"]}


@pytest.fixture(autouse=True)
def _need_binaries():
    from test_cli import MOAT
    if not (os.path.isfile(MOAT) and os.access(MOAT, os.X_OK)):
        pytest.skip("moat binary not found at %s (set MOAT)" % MOAT)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = make_pki(tmp_path_factory.mktemp("pki"))
    other = p.ca.issue("other-name", "/CN=broker.example", ext="other_server_ext")
    expired = p.ca.issue("expired-server", "/CN=localhost", ext="server_ext",
                         startdate="20200101000000Z", enddate="20200201000000Z")
    return p, other, expired


def tls_listener(cert, key, name="tls", **kw):
    t = {"cert": cert, "key": key}
    t.update(kw)
    return {"name": name, "bind": "127.0.0.1:0", "transport": "tls", "auth": ["anonymous"], "tls": t}


def observer(b, topic="#"):
    ep = b.endpoints["plain"]
    c = mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="observer")
    c.connect(uniq("observer"))
    assert c.subscribe([(topic, 1)]) == [1]
    return c


def at(ep, host=None):
    return ["-h", host or ep.host, "-p", str(ep.port)]


def sub(ep, topic, *args, host=None):
    """moat sub -d over TLS, waiting for its SUBACK."""
    p = MoatProc(["sub", "-d", "-v", "-q", "1", "-C", "1", "-t", topic] + at(ep, host) + list(args))
    p.wait_ready()
    return p


def pub_ok(ep, topic, message, *args, host=None):
    r = moat("pub", "-q", "1", "-t", topic, "-m", message, *(at(ep, host) + list(args)))
    assert r.returncode == 0, (r.returncode, r.stderr.decode())
    return r


def tls_refused(ep, *args, host=None, needle=""):
    """moat pub must fail the handshake: exit 8, one line naming the reason
    (after the warning line of --insecure)."""
    r = moat("pub", "-q", "1", "-t", "never/arrives", "-m", "x", *(at(ep, host) + list(args)))
    lines = r.stderr.decode().splitlines()
    warnings = [l for l in lines if l.startswith("moat pub: warning: --insecure: ")]
    assert len(warnings) == ("--insecure" in args), lines
    line = assert_one_error_line("\n".join(l for l in lines if l not in warnings).encode(), "pub")
    assert r.returncode == EXIT_TLS, (r.returncode, line)
    assert "TLS handshake with" in line, line
    assert needle in line, line
    return line


# ================================================================ moatd

def test_pub_sub_over_tls_and_interop_with_mosquitto_clients(secure_broker, pki):
    p, _, _ = pki
    b = secure_broker(listeners=[tls_listener(p.server_cert, p.server_key)])
    ep = b.endpoints["tls"]
    ca = ["--cafile", p.ca_cert]
    topic = uniq("tls/")
    for host in ("127.0.0.1", "localhost"):  # the IP SAN and the DNS SAN
        s = sub(ep, topic, *ca, host=host)
        try:
            pub_ok(ep, topic, "hello-" + host, *ca, host=host)
            assert s.wait_exit() == 0, s.stderr()
            assert s.lines() == ["%s hello-%s" % (topic, host)]
        finally:
            s.kill()
    assert "over TLS" in s.stderr() and "moat: TLS: TLSv1.3" in s.stderr(), s.stderr()

    # moat pub -> mosquitto_sub, mosquitto_pub -> moat sub, both over TLS.
    ms = mosquitto_sub(ep, topic, qos=1, extra=ca)
    try:
        pub_ok(ep, topic, "to-mosquitto", *ca)
        ms.wait_line("%s to-mosquitto" % topic)
        assert ms.wait_exit() == 0
    finally:
        ms.kill()
    s = sub(ep, topic, *ca)
    try:
        r = subprocess.run(["mosquitto_pub", "-h", ep.host, "-p", str(ep.port), "-t", topic, "-m",
                            "from-mosquitto", "-q", "1"] + ca, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=scaled(15))
        assert r.returncode == 0, r.stdout
        assert s.wait_exit() == 0, s.stderr()
        assert s.lines() == ["%s from-mosquitto" % topic]
    finally:
        s.kill()


def test_capath_and_alpn(secure_broker, pki, tmp_path):
    p, _, _ = pki
    b = secure_broker(listeners=[tls_listener(p.server_cert, p.server_key)])  # alpn = ["mqtt"]
    ep = b.endpoints["tls"]
    capath = tmp_path / "capath"
    capath.mkdir()
    (capath / "moat-test-ca.pem").write_text(open(p.ca_cert).read())
    subprocess.run(["openssl", "rehash", str(capath)], check=True, timeout=30)
    r = pub_ok(ep, uniq("capath/"), "x", "-d", "--capath", str(capath), "--alpn", "mqtt")
    assert "ALPN mqtt" in r.stderr.decode(), r.stderr
    tls_refused(ep, "--capath", str(capath), "--alpn", "x-other", needle="none of the ALPN protocols")
    # An empty folder trusts nothing.
    empty = tmp_path / "empty"
    empty.mkdir()
    tls_refused(ep, "--capath", str(empty), needle="unknown CA")


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls_version_is_what_was_asked(secure_broker, pki, version):
    p, _, _ = pki
    b = secure_broker(listeners=[tls_listener(p.server_cert, p.server_key),
                                 tls_listener(p.server_cert, p.server_key, name="tls13",
                                              min_version="1.3")])
    ep, ep13 = b.endpoints["tls"], b.endpoints["tls13"]
    r = pub_ok(ep, uniq("v/"), "x", "-d", "--cafile", p.ca_cert, "--tls-max-version", "tlsv" + version)
    assert "moat: TLS: TLSv%s" % version in r.stderr.decode(), r.stderr
    r = pub_ok(ep, uniq("v/"), "x", "-d", "--cafile", p.ca_cert, "--tls-version", "tlsv" + version)
    assert "moat: TLS: TLSv1.3" in r.stderr.decode(), r.stderr  # a minimum, as mosquitto's
    if version == "1.2":
        tls_refused(ep13, "--cafile", p.ca_cert, "--tls-max-version", "tlsv1.2",
                    needle="TLS versions")


def test_ciphers_and_ciphersuites_are_what_was_asked(secure_broker, pki):
    """--ciphers picks the TLS 1.2 cipher and --tls-ciphersuites the TLS 1.3
    suite; a list the server shares nothing with fails the handshake (exit 8),
    one the client's OpenSSL does not know is a usage error (exit 1)."""
    p, _, _ = pki
    b = secure_broker(listeners=[tls_listener(p.server_cert, p.server_key),
                                 tls_listener(p.server_cert, p.server_key, name="aes256",
                                              ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")])
    ep, aes256 = b.endpoints["tls"], b.endpoints["aes256"]
    ca = ["--cafile", p.ca_cert]
    for cipher in ("ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES256-GCM-SHA384"):
        r = pub_ok(ep, uniq("c/"), "x", "-d", *ca, "--tls-max-version", "tlsv1.2", "--ciphers", cipher)
        assert "moat: TLS: TLSv1.2, %s," % cipher in r.stderr.decode(), r.stderr
    for suite in ("TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384"):
        r = pub_ok(ep, uniq("c/"), "x", "-d", *ca, "--tls-ciphersuites", suite)
        assert "moat: TLS: TLSv1.3, %s," % suite in r.stderr.decode(), r.stderr
    tls_refused(aes256, *ca, "--tls-max-version", "tlsv1.2", "--ciphers", "ECDHE-ECDSA-CHACHA20-POLY1305",
                needle="handshake failure")
    r = moat("pub", "-t", "never/arrives", "-m", "x", *(at(ep) + ca), "--ciphers", "NO-SUCH-CIPHER")
    line = assert_one_error_line(r.stderr, "pub")
    assert r.returncode == 1 and "no cipher of the list is known or allowed" in line, (r.returncode, line)


def test_wrong_host_name_is_refused_and_insecure_warns(secure_broker, pki):
    p, (other_cert, other_key), _ = pki
    b = secure_broker(listeners=[tls_listener(other_cert, other_key)])
    ep = b.endpoints["tls"]
    ca = ["--cafile", p.ca_cert]
    topic = uniq("name/")
    # The certificate is for broker.example only: 127.0.0.1 is refused.
    r = moat("sub", "-t", topic, "-C", "1", "-W", "5", *(at(ep) + ca))
    line = assert_one_error_line(r.stderr, "sub")
    assert r.returncode == EXIT_TLS, (r.returncode, line)
    assert "does not match host name '127.0.0.1'" in line and "DNS:broker.example" in line, line
    # --sni names the server: verified against broker.example.
    pub_ok(ep, topic, "sni", *(ca + ["--sni", "broker.example"]))
    # --insecure: connects, with a warning line.
    s = MoatProc(["sub", "-d", "-v", "-q", "1", "-C", "1", "-t", topic, "--insecure"] + at(ep) + ca)
    try:
        s.wait_ready()
        warnings = [l for l in s.err if l.startswith("moat sub: warning: --insecure")]
        assert len(warnings) == 1, s.stderr()
        pub_ok(ep, topic, "insecure", *(ca + ["--insecure"]))
        assert s.wait_exit() == 0, s.stderr()
        assert s.lines() == ["%s insecure" % topic]
    finally:
        s.kill()


def test_untrusted_ca_is_refused_even_with_insecure(secure_broker, pki):
    p, _, _ = pki
    b = secure_broker(listeners=[tls_listener(p.server_cert, p.server_key)])
    ep = b.endpoints["tls"]
    wrong = ["--cafile", p.intruder_ca.cert]
    line = tls_refused(ep, *wrong, needle="unknown CA 'CN=Moat Test CA'")
    assert "intruder-ca" in line  # says which trust it used
    tls_refused(ep, *(wrong + ["--insecure"]), needle="unknown CA")
    # The system trust store does not know the test CA either.
    tls_refused(ep, "--tls-use-os-certs", needle="unknown CA")


def test_expired_server_certificate_is_refused(pki, tmp_path):
    """moatd refuses to serve an expired certificate, so `openssl s_server` does."""
    p, _, (cert, key) = pki
    port = free_port()
    # -www: answers HTTP and never reads stdin (which would end it at once).
    srv = LineProc(["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", cert,
                    "-key", key, "-naccept", "1", "-www"])
    try:
        srv.wait_line("ACCEPT")
        line = tls_refused(mqttraw_endpoint(port), "--cafile", p.ca_cert, needle="expired on")
        assert "server certificate expired on Feb  1 00:00:00 2020 GMT" in line, line
    finally:
        srv.kill()


def mqttraw_endpoint(port):
    class Ep:
        host = "127.0.0.1"
    e = Ep()
    e.port = port
    return e


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_mutual_tls(secure_broker, pki, version):
    p, _, _ = pki
    mtls = tls_listener(p.server_cert, p.server_key, name="mtls", ca=p.ca_cert, client_cert="required",
                        crl=[p.crl], identity_from="cn")
    mtls["auth"] = ["certificate"]
    b = secure_broker(listeners=[PLAIN, mtls], acl_text=ACL, threads=1)
    ep = b.endpoints["mtls"]
    base = ["--cafile", p.ca_cert, "--tls-max-version", "tlsv" + version]
    with observer(b, "dev/#") as obs:
        # The certificate's CN is the user name: device-1 may write dev/1.
        pub_ok(ep, "dev/1", "from-device-1", *(base + ["--cert", p.client_cert, "--key", p.client_key]))
        m = obs.recv_publish(timeout=scaled(10))
        assert (m.topic, m.payload) == ("dev/1", b"from-device-1")
    tls_refused(ep, *base, needle="client certificate")
    tls_refused(ep, *(base + ["--cert", p.revoked_cert, "--key", p.revoked_key]),
                needle="rejected our client certificate (alert 'certificate revoked')")
    tls_refused(ep, *(base + ["--cert", p.intruder_cert, "--key", p.intruder_key]),
                needle="rejected our client certificate")
    tls_refused(ep, *(base + ["--cert", p.expired_cert, "--key", p.expired_key]),
                needle="rejected our client certificate (alert 'certificate expired')")
    assert b.alive()


def test_encrypted_client_key(secure_broker, pki, tmp_path):
    p, _, _ = pki
    mtls = tls_listener(p.server_cert, p.server_key, name="mtls", ca=p.ca_cert, client_cert="required",
                        identity_from="cn")
    b = secure_broker(listeners=[mtls])
    ep = b.endpoints["mtls"]
    enc = str(tmp_path / "device-1.enc.key")
    subprocess.run(["openssl", "pkey", "-in", p.client_key, "-out", enc, "-aes256", "-passout",
                    "pass:kpw"], check=True, timeout=30)
    base = ["--cafile", p.ca_cert, "--cert", p.client_cert, "--key", enc]
    pub_ok(ep, uniq("enc/"), "x", *(base + ["--key-password", "kpw"]))
    for extra, needle in (([], "a password is needed"), (["--key-password", "nope"], "wrong password")):
        r = moat("pub", "-t", "a", "-m", "x", *(at(ep) + base + extra))
        line = assert_one_error_line(r.stderr, "pub")
        assert r.returncode == 1 and needle in line and enc in line, (r.returncode, line)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_psk_to_moatd(secure_broker, pki, version):
    psk = {"name": "psk", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["psk"],
           "tls": {"psk_file": "psk.txt", "identity_from": "psk"}}
    b = secure_broker(listeners=[PLAIN, psk], acl_text=ACL, files={"psk.txt": PSK_FILE}, threads=1)
    ep = b.endpoints["psk"]
    base = ["--tls-max-version", "tlsv" + version, "--psk-identity", PSK_IDENTITY]
    with observer(b, "psk/#") as obs:
        r = pub_ok(ep, "psk/sensor-7", "psk-" + version, "-d", *(base + ["--psk", PSK_KEY]))
        assert "PSK identity 'sensor-7'" in r.stderr.decode(), r.stderr
        m = obs.recv_publish(timeout=scaled(10))
        assert (m.topic, m.payload) == ("psk/sensor-7", ("psk-" + version).encode())
    tls_refused(ep, *(base + ["--psk", "ff" * 16]), needle="PSK")
    tls_refused(ep, "--tls-max-version", "tlsv" + version, "--psk", PSK_KEY, "--psk-identity", "nobody",
                needle="nobody")


def test_tls_flag_usage_errors(tmp_path, pki):
    p, _, _ = pki
    cases = [
        (["--cert", p.client_cert, "--key", p.client_key], "TLS options need TLS"),
        (["--psk", PSK_KEY], "--psk needs --psk-identity"),
        (["--psk", PSK_KEY, "--psk-identity", "x", "--cafile", p.ca_cert], "--psk excludes"),
        (["--cafile", p.ca_cert, "--tls-version", "tlsv1.1"], "TLS 1.1 and older are not supported"),
        (["--cafile", p.ca_cert, "--cert", p.client_cert], "--cert and --key go together"),
        (["--cafile", str(tmp_path / "missing.crt")], "missing.crt': No such file or directory"),
        (["--psk", "xyzw", "--psk-identity", "x"], "not hexadecimal"),
        (["--psk", "abc", "--psk-identity", "x"], "odd number of hexadecimal digits"),
        (["--cafile", p.ca_cert, "--unix", "/tmp/x.sock"], "Unix socket"),
    ]
    for args, needle in cases:
        r = moat("pub", "-t", "a", "-m", "x", *args)
        line = assert_one_error_line(r.stderr, "pub")
        assert r.returncode == 1 and needle in line, (args, r.returncode, line)


def test_tls_port_defaults_to_8883(pki):
    p, _, _ = pki
    r = moat("pub", "-d", "-h", "127.0.0.1", "-t", "a", "-m", "x", "--cafile", p.ca_cert, timeout=30)
    assert "connecting to 127.0.0.1:8883 over TLS" in r.stderr.decode(), r.stderr
    r = moat("pub", "-d", "-h", "127.0.0.1", "-t", "a", "-m", "x", timeout=30)
    assert "connecting to 127.0.0.1:1883 (" in r.stderr.decode(), r.stderr


# ================================================================ mosquitto

@pytest.fixture
def mosquitto_tls(tmp_path, pki):
    """Debian's mosquitto with a mutual-TLS listener and a PSK listener."""
    if not os.path.isfile(MOSQUITTO):
        pytest.skip("mosquitto not installed at %s" % MOSQUITTO)
    p, _, _ = pki
    tls_port, psk_port = free_port(), free_port()
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    (workdir / "psk.txt").write_text(PSK_FILE)
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join([
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence false",
        "log_dest stderr",
        "log_type all",
        "user root",  # the certificates live in the test's private tmp folder
        "listener %d 127.0.0.1" % tls_port,
        "cafile %s" % p.ca_cert,
        "certfile %s" % p.server_cert,
        "keyfile %s" % p.server_key,
        "require_certificate true",
        "use_identity_as_username true",
        "listener %d 127.0.0.1" % psk_port,
        "psk_hint moat-test",
        "psk_file %s" % (workdir / "psk.txt"),
        "use_identity_as_username true",
        "",
    ]))
    b = Broker([MOSQUITTO, "-c", str(conf)], cwd=str(workdir), config_path=str(conf), kind="mosquitto")
    b.host, b.port = "127.0.0.1", tls_port
    try:
        b.wait_listening()
        b.port = psk_port
        b.wait_listening()
        b.tls = mqttraw_endpoint(tls_port)
        b.psk = mqttraw_endpoint(psk_port)
        yield b
    finally:
        if b.alive():
            os.kill(b.pid, signal.SIGTERM)
            try:
                b.proc.wait(scaled(10))
            except subprocess.TimeoutExpired:
                os.kill(b.pid, signal.SIGKILL)
                b.proc.wait(10)


def test_mutual_tls_with_mosquitto(mosquitto_tls, pki):
    p, _, _ = pki
    ep = mosquitto_tls.tls
    cert = ["--cafile", p.ca_cert, "--cert", p.client_cert, "--key", p.client_key]
    topic = uniq("mosq-tls/")
    s = sub(ep, topic, *cert)
    try:
        r = subprocess.run(["mosquitto_pub", "-h", ep.host, "-p", str(ep.port), "-t", topic, "-m",
                            "mosquitto-to-moat", "-q", "1"] + cert, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=scaled(15))
        assert r.returncode == 0, r.stdout
        assert s.wait_exit() == 0, s.stderr()
        assert s.lines() == ["%s mosquitto-to-moat" % topic]
    finally:
        s.kill()
    ms = mosquitto_sub(ep, topic, qos=1, extra=cert)
    try:
        pub_ok(ep, topic, "moat-to-mosquitto", *cert)
        ms.wait_line("%s moat-to-mosquitto" % topic)
        assert ms.wait_exit() == 0
    finally:
        ms.kill()
    # mosquitto requires a certificate: without one the handshake fails.
    tls_refused(ep, "--cafile", p.ca_cert)
    tls_refused(ep, "--cafile", p.intruder_ca.cert, needle="unknown CA")


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_psk_with_mosquitto(mosquitto_tls, version):
    ep = mosquitto_tls.psk
    psk = ["--psk", PSK_KEY, "--psk-identity", PSK_IDENTITY]
    moat_psk = psk + ["--tls-max-version", "tlsv" + version]
    topic = uniq("mosq-psk/")
    s = sub(ep, topic, *moat_psk)
    try:
        r = subprocess.run(["mosquitto_pub", "-h", ep.host, "-p", str(ep.port), "-t", topic, "-m",
                            "psk-from-mosquitto", "-q", "1", "--tls-version", "tlsv" + version] + psk,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=scaled(15))
        assert r.returncode == 0, r.stdout
        assert s.wait_exit() == 0, s.stderr()
        assert s.lines() == ["%s psk-from-mosquitto" % topic]
    finally:
        s.kill()
    ms = mosquitto_sub(ep, topic, qos=1, extra=psk)
    try:
        r = pub_ok(ep, topic, "psk-from-moat", "-d", *moat_psk)
        assert "moat: TLS: TLSv%s" % version in r.stderr.decode(), r.stderr
        ms.wait_line("%s psk-from-moat" % topic)
        assert ms.wait_exit() == 0
    finally:
        ms.kill()
    tls_refused(ep, "--psk", "ff" * 16, "--psk-identity", PSK_IDENTITY, "--tls-max-version",
                "tlsv" + version, needle="PSK")


# ================================================================ moat init

def test_init_end_to_end(tmp_path):
    if not (os.path.isfile(MOATD) and os.access(MOATD, os.X_OK)):
        pytest.skip("moatd binary not found at %s (set MOATD)" % MOATD)
    d = tmp_path / "setup"
    r = moat("init", d, "--tls-bind", "127.0.0.1:0", "--local-bind", "127.0.0.1:0", timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    password = re.search(r"password of user user-1 [^\n]*:\n  (\S+)\n", out).group(1)
    assert len(password) == 24
    for name in ("ca.key", "server.key", "client.key", "passwd"):
        mode = stat.S_IMODE(os.stat(str(d / name)).st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert stat.S_IMODE(os.stat(str(d)).st_mode) == 0o700
    assert password not in (d / "passwd").read_text()
    assert (d / "passwd").read_text().startswith("user-1:$argon2id$")

    # External judges: openssl verifies the chain, the CRL and the names.
    def verify(*args):
        v = subprocess.run(["openssl", "verify", "-CAfile", str(d / "ca.crt")] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        return v.returncode, v.stdout.decode()
    assert verify("-crl_check", "-CRLfile", str(d / "ca.crl"), "-purpose", "sslserver",
                  "-verify_hostname", "localhost", str(d / "server.crt"))[0] == 0
    assert verify("-verify_ip", "127.0.0.1", str(d / "server.crt"))[0] == 0
    assert verify("-crl_check", "-CRLfile", str(d / "ca.crl"), "-purpose", "sslclient",
                  str(d / "client.crt"))[0] == 0
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(d / "server.crt")],
                          stdout=subprocess.PIPE, timeout=30).stdout.decode()
    assert "ASN1 OID: prime256v1" in text and "CRL Distribution Points" in text
    assert re.search(r"Not After : \w+ +\d+ [\d:]+ (\d+)", text)

    conf = d / "moat.toml"
    c = subprocess.run([MOATD, "--check-config", "-c", str(conf)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=scaled(10))
    assert c.returncode == 0, c.stdout
    toml = conf.read_text()
    assert 'client_cert = "required"' in toml and 'crl = ["ca.crl"]' in toml
    assert 'auth = ["certificate", "password"]' in toml

    b = Broker([MOATD, "-c", str(conf)], cwd=str(d), config_path=str(conf))
    try:
        eps = {}
        idx = 0
        while len(eps) < 2:
            m, i = b.wait_for_log_at(LISTENER_RE.pattern, timeout=20, since=idx)
            idx = i + 1
            eps[m.group(3)] = mqttraw_endpoint(int(m.group(2)))
        tls, local = eps["tls"], eps["local"]
        cert = ["--cafile", str(d / "ca.crt"), "--cert", str(d / "client.crt"), "--key", str(d / "client.key")]
        user = ["-u", "user-1", "-P", password]

        # The device (client certificate, CN device-1) in its own tree, over TLS ("localhost": DNS SAN).
        s = sub(tls, "devices/device-1/#", *cert, host="localhost")
        try:
            # The command line `moat init` printed, with the real port.
            printed = [l.strip() for l in out.splitlines() if l.strip().startswith("moat pub -h localhost")]
            assert len(printed) == 1, out
            argv = shlex.split(printed[0])[1:]
            argv[argv.index("-p") + 1] = str(tls.port)
            r = moat(*argv)
            assert r.returncode == 0, r.stderr
            assert s.wait_exit() == 0, s.stderr()
            assert s.lines() == ["devices/device-1/hello hello over mutual TLS"]
        finally:
            s.kill()
        # The password user in its own tree, on the loopback listener.
        s = sub(local, "users/user-1/#", *user)
        try:
            pub_ok(local, "users/user-1/x", "with-password", *user)
            assert s.wait_exit() == 0, s.stderr()
            assert s.lines() == ["users/user-1/x with-password"]
        finally:
            s.kill()
        # mosquitto_pub works with the same files.
        s = sub(tls, "devices/device-1/#", *cert)
        try:
            r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(tls.port), "-q", "1", "-t",
                                "devices/device-1/m", "-m", "mosquitto"] + cert,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=scaled(15))
            assert r.returncode == 0, r.stdout
            assert s.wait_exit() == 0, s.stderr()
        finally:
            s.kill()

        # The ACL applies: neither may subscribe outside its tree.
        for ep, args, filt in ((tls, cert, "users/#"), (local, user, "devices/#"), (tls, cert, "#")):
            r = moat("sub", "-t", filt, "-W", "10", *(at(ep) + args))
            assert r.returncode == 3, (filt, r.returncode, r.stderr)
            assert b"every subscription was refused" in r.stderr
        # No anonymous access, no wrong password, no TLS without a certificate.
        r = moat("pub", "-t", "users/user-1/x", "-m", "x", *at(local))
        assert r.returncode == EXIT_AUTH, r.stderr
        r = moat("pub", "-t", "users/user-1/x", "-m", "x", "-u", "user-1", "-P", "wrong", *at(local))
        assert r.returncode == EXIT_AUTH, r.stderr
        tls_refused(tls, "--cafile", str(d / "ca.crt"), needle="client certificate")
    finally:
        if b.alive():
            rc = b.stop(signal.SIGTERM, 10)
            assert rc == 0, b.log_text()

    # --force replaces everything, with a new CA and a new password.
    old_ca = (d / "ca.crt").read_text()
    r = moat("init", d, timeout=60)
    assert r.returncode == 1
    r = moat("init", d, "--force", "--host", "broker.example", "--host", "10.0.0.5", timeout=60)
    assert r.returncode == 0, r.stderr
    assert (d / "ca.crt").read_text() != old_ca
    assert password not in r.stdout.decode()
    assert len((d / "passwd").read_text().splitlines()) == 1
    text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(d / "server.crt")],
                          stdout=subprocess.PIPE, timeout=30).stdout.decode()
    assert "DNS:broker.example" in text and "IP Address:10.0.0.5" in text and "localhost" not in text


def test_init_refuses_bad_arguments(tmp_path):
    for args, needle in ((["--host", "bad name"], "not a host name"),
                         (["--tls-bind", "8883"], "--tls-bind"),
                         (["--local-bind", "localhost:1883"], "--local-bind")):
        r = moat("init", tmp_path / uniq("d"), *args)
        line = assert_one_error_line(r.stderr, "init")
        assert r.returncode == 1 and needle in line, (args, line)
