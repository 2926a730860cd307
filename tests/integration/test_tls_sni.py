"""Certificates chosen by SNI ([[listener.tls.sni]], docs/configuration.md)
against a real moatd, with `openssl s_client -servername` as the client: an
exact name, a wildcard (with an encrypted key), the default certificate for
any other name and for no SNI at all, the MQTT session through each, a
reload of an SNI certificate, and the start-up errors."""

import os
import re
import signal
import subprocess

import pytest

import mqttraw
from conftest import MOATD
from pki import empty_openssl_conf, make_pki, openssl, s_client_mqtt, secure_broker  # noqa: F401
from util import scaled

pytestmark = [pytest.mark.moat_only]

RELOADED = r"reload: TLS certificates, keys and CRLs of listener %s"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def sni_certs(pki):
    """CN=broker.example, CN=any.devices.example (key encrypted with
    "wild-pw") and a renewed CN=broker-renewed.example, all from the test CA."""
    exact = pki.ca.issue("sni-exact", "/CN=broker.example", ext="other_server_ext")
    wild_cert, wild_key = pki.ca.issue("sni-wild", "/CN=any.devices.example", ext="other_server_ext")
    enc_key = wild_key + ".enc"
    openssl("pkey", "-in", wild_key, "-aes256", "-passout", "pass:wild-pw", "-out", enc_key)
    renewed = pki.ca.issue("sni-renewed", "/CN=broker-renewed.example", ext="other_server_ext")
    return {"exact": exact, "wild": (wild_cert, enc_key), "renewed": renewed}


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def served_cn(ep, conf, ca, *args):
    """The CN of the certificate the broker served, after checking that the
    MQTT session through that connection worked."""
    packets, err = s_client_mqtt(ep, conf, "-CAfile", ca, "-verify_return_error", *args)
    assert [p.type for p in packets] == [mqttraw.CONNACK, mqttraw.PUBACK], (packets, err)
    assert mqttraw.decode_connack(packets[0]) == (False, 0), (packets, err)
    m = re.search(r"Peer certificate: .*CN\s*=\s*([^,\s/]+)", err)
    assert m, err
    return m.group(1)


SNI_TABLES = """\
[[listener.tls.sni]]
hostname = "Broker.Example"
cert = "sni-exact.crt"
key = "sni-exact.key"

[[listener.tls.sni]]
hostname = "*.devices.example"
cert = "sni-wild.crt"
key = "sni-wild.key"
key_password = "wild-pw"
"""


def sni_files(sni_certs, exact=None):
    exact = exact or sni_certs["exact"]
    return {"sni-exact.crt": read(exact[0]), "sni-exact.key": read(exact[1]),
            "sni-wild.crt": read(sni_certs["wild"][0]), "sni-wild.key": read(sni_certs["wild"][1])}


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_sni_picks_the_certificate(secure_broker, pki, sni_certs, empty_openssl_conf, version):
    b = secure_broker(
        listeners=[{"name": "secure", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["anonymous"],
                    "tls": {"cert": pki.server_cert, "key": pki.server_key, "reload_on_change": False},
                    "raw": SNI_TABLES}],
        files=sni_files(sni_certs))
    b.wait_for_log(r"listener secure: certificates chosen by SNI for Broker\.Example, \*\.devices\.example")
    ep = b.endpoints["secure"]
    conf, ca = empty_openssl_conf, pki.ca_cert
    assert served_cn(ep, conf, ca, version, "-servername", "broker.example") == "broker.example"
    assert served_cn(ep, conf, ca, version, "-servername", "BROKER.example") == "broker.example"
    assert served_cn(ep, conf, ca, version, "-servername", "a.devices.example") == "any.devices.example"
    # A wildcard covers exactly one label.
    assert served_cn(ep, conf, ca, version, "-servername", "a.b.devices.example") == "localhost"
    assert served_cn(ep, conf, ca, version, "-servername", "devices.example") == "localhost"
    # Any other name, and no SNI at all, get the default certificate.
    assert served_cn(ep, conf, ca, version, "-servername", "other.example") == "localhost"
    assert served_cn(ep, conf, ca, version, "-noservername") == "localhost"
    assert b.alive()


def test_sni_certificate_is_reloaded(secure_broker, pki, sni_certs, empty_openssl_conf):
    b = secure_broker(
        listeners=[{"name": "secure", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["anonymous"],
                    "tls": {"cert": pki.server_cert, "key": pki.server_key, "reload_on_change": False},
                    "raw": SNI_TABLES}],
        files=sni_files(sni_certs))
    ep = b.endpoints["secure"]
    conf, ca = empty_openssl_conf, pki.ca_cert
    assert served_cn(ep, conf, ca, "-servername", "broker.example") == "broker.example"
    # New key first, then the certificate, each replaced atomically; SIGHUP.
    renewed_cert, renewed_key = sni_certs["renewed"]
    for name, src in (("sni-exact.key", renewed_key), ("sni-exact.crt", renewed_cert)):
        tmp = b.workdir / (name + ".new")
        tmp.write_text(read(src))
        os.chmod(str(tmp), 0o600)
        os.replace(str(tmp), str(b.workdir / name))
    mark = b.log_mark()
    os.kill(b.pid, signal.SIGHUP)
    b.wait_for_log(RELOADED % "secure", since=mark)
    assert served_cn(ep, conf, ca, "-servername", "broker.example") == "broker-renewed.example"
    assert served_cn(ep, conf, ca, "-servername", "x.devices.example") == "any.devices.example"
    assert served_cn(ep, conf, ca, "-servername", "localhost") == "localhost"


def run_moatd_expecting_failure(workdir, text):
    conf = workdir / "moat.toml"
    conf.write_text(text)
    try:
        r = subprocess.run([MOATD, "-c", str(conf)], cwd=str(workdir), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=scaled(10))
    except subprocess.TimeoutExpired as e:
        raise AssertionError("moatd started on a bad configuration:\n%s"
                             % (e.stdout or b"").decode("utf-8", "replace"))
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode > 0, "moatd exit %d on a bad configuration:\n%s" % (r.returncode, out)
    assert "listening on" not in out, out
    return out


def test_sni_startup_errors(pki, sni_certs, tmp_path):
    if not (os.path.isfile(MOATD) and os.access(MOATD, os.X_OK)):
        pytest.skip("moatd binary not found at %s" % MOATD)
    (tmp_path / "data").mkdir()
    for name, content in sni_files(sni_certs).items():
        (tmp_path / name).write_text(content)
        os.chmod(str(tmp_path / name), 0o600)
    head = ('[broker]\ndata_dir = "data"\n\n[[listener]]\nname = "secure"\nbind = "127.0.0.1:0"\n'
            'transport = "tls"\nauth = ["anonymous"]\n\n[listener.tls]\ncert = "%s"\nkey = "%s"\n\n'
            % (pki.server_cert, pki.server_key))
    # An unknown key: FILE:LINE:COLUMN: KEY: REASON.
    out = run_moatd_expecting_failure(
        tmp_path, head + '[[listener.tls.sni]]\nhostname = "broker.example"\ncert = "sni-exact.crt"\n'
                         'key = "sni-exact.key"\nservername = "x"\n')
    line = head.count("\n") + 5
    assert re.search(r"moat\.toml:%d:\d+: listener\[0\]\.tls\.sni\[0\]\.servername: unknown key" % line,
                     out), out
    # A bad hostname.
    out = run_moatd_expecting_failure(
        tmp_path, head + '[[listener.tls.sni]]\nhostname = "*.example"\ncert = "sni-exact.crt"\n'
                         'key = "sni-exact.key"\n')
    assert re.search(r"moat\.toml:%d:\d+: listener\[0\]\.tls\.sni\[0\]\.hostname: '\*\.example'"
                     % (head.count("\n") + 2), out), out
    # A wrong key password names the file and the reason.
    out = run_moatd_expecting_failure(
        tmp_path, head + '[[listener.tls.sni]]\nhostname = "*.devices.example"\ncert = "sni-wild.crt"\n'
                         'key = "sni-wild.key"\nkey_password = "wrong"\n')
    assert "sni-wild.key" in out and "wrong password (key_password)" in out, out
    # The key of another certificate.
    out = run_moatd_expecting_failure(
        tmp_path, head + '[[listener.tls.sni]]\nhostname = "broker.example"\ncert = "sni-exact.crt"\n'
                         'key = "sni-wild.key"\nkey_password = "wild-pw"\n')
    assert "does not match certificate" in out and "sni-exact.crt" in out, out
