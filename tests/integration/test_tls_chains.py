"""Certificate chains on a TLS listener, end to end with Debian's
mosquitto_pub and `openssl s_client` (docs/security.md, "TLS";
docs/configuration.md, [listener.tls]):

- a server certificate issued by an intermediate CA, sent as a full chain;
- client certificates through one and two intermediates, `verify_depth`;
- trust from a c_rehash folder (`ca_dir`);
- `crl_check = "chain"`: a revoked intermediate CA;
- a CRL reload that fails keeps the last good CRL; an expired CRL refuses
  the start;
- `tls.failure` audit events for each kind of refused client certificate.

The PKI (EC P-256, generated per module with the openssl command line): root
→ "issuing" → server, device-a; root → issuing → "sub" → device-b; root →
"retired" (revoked by the root) → device-c; root → issuing → device-old
(expired) and device-lost (revoked by issuing); an unrelated root → intruder."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import MOATD
from pki import CA, openssl, pub_ok, pub_refused_in_handshake, secure_broker  # noqa: F401
from util import scaled

pytestmark = [pytest.mark.moat_only]


class Chains:
    pass


def _concat(out, *parts):
    with open(out, "w") as f:
        for p in parts:
            with open(p) as src:
                f.write(src.read())
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("chains"))
    k = Chains()
    k.dir = d
    k.root = CA(os.path.join(d, "root"), "Moat Chain Root")
    k.issuing = CA(os.path.join(d, "issuing"), "Moat Chain Issuing", parent=k.root)
    k.sub = CA(os.path.join(d, "sub"), "Moat Chain Sub", parent=k.issuing)
    k.retired = CA(os.path.join(d, "retired"), "Moat Chain Retired", parent=k.root)
    cert, k.server_key = k.issuing.issue("server", "/CN=localhost", ext="server_ext")
    k.server_chain = _concat(os.path.join(d, "server-chain.pem"), cert, k.issuing.cert)
    cert, k.a_key = k.issuing.issue("device-a", "/CN=device-a")
    k.a_chain = _concat(os.path.join(d, "device-a-chain.pem"), cert, k.issuing.cert)
    cert, k.b_key = k.sub.issue("device-b", "/CN=device-b")
    k.b_chain = _concat(os.path.join(d, "device-b-chain.pem"), cert, k.sub.cert, k.issuing.cert)
    cert, k.c_key = k.retired.issue("device-c", "/CN=device-c")
    k.c_chain = _concat(os.path.join(d, "device-c-chain.pem"), cert, k.retired.cert)
    cert, k.old_key = k.issuing.issue("device-old", "/CN=device-old",
                                      startdate="20200101000000Z", enddate="20200201000000Z")
    k.old_chain = _concat(os.path.join(d, "device-old-chain.pem"), cert, k.issuing.cert)
    cert, k.lost_key = k.issuing.issue("device-lost", "/CN=device-lost")
    k.lost_chain = _concat(os.path.join(d, "device-lost-chain.pem"), cert, k.issuing.cert)
    k.issuing.revoke(cert)
    k.root.revoke(k.retired.cert)
    k.root_crl = k.root.gencrl()
    k.issuing_crl = k.issuing.gencrl()
    k.sub_crl = k.sub.gencrl()
    k.retired_crl = k.retired.gencrl()
    # A CRL is checked against the CA that issued it: the bundle for listeners
    # with CRLs holds the intermediates too (trust still ends at the root).
    k.bundle = _concat(os.path.join(d, "cas.pem"), k.root.cert, k.issuing.cert, k.sub.cert,
                       k.retired.cert)
    other = CA(os.path.join(d, "other"), "Unrelated Root")
    cert, k.intruder_key = other.issue("intruder", "/CN=intruder")
    k.intruder_chain = cert
    return k


def listener(pki, **tls):
    t = {"cert": pki.server_chain, "key": pki.server_key}
    t.update(tls)
    auth = ["certificate"] if t.get("client_cert", "none") == "required" else ["anonymous"]
    return {"name": "tls", "bind": "127.0.0.1:0", "transport": "tls", "auth": auth, "tls": t}


def mtls(pki, **tls):
    t = {"ca": pki.root.cert, "client_cert": "required", "identity_from": "cn"}
    t.update(tls)
    return listener(pki, **t)


def client(pki, chain, key):
    return ["--cafile", pki.root.cert, "--cert", chain, "--key", key]


def test_server_chain_through_an_intermediate(secure_broker, pki):
    """The listener sends its certificate with the intermediate: a client that
    trusts only the root verifies it (mosquitto_pub, s_client)."""
    b = secure_broker(listeners=[listener(pki)])
    ep = b.endpoints["tls"]
    pub_ok(ep, "chain/server", "hello", ["--cafile", pki.root.cert])
    r = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % (ep.host, ep.port), "-brief",
                        "-CAfile", pki.root.cert, "-verify_return_error"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=scaled(15))
    out = r.stdout.decode("utf-8", "replace")
    # The client holds only the root: the listener must have sent the intermediate.
    assert "Verification: OK" in out, out


def test_client_chains_and_verify_depth(secure_broker, pki):
    """A client certificate through one intermediate is accepted with the
    root alone trusted; one through two intermediates needs verify_depth >= 2."""
    b = secure_broker(listeners=[mtls(pki, verify_depth=1)])
    ep = b.endpoints["tls"]
    pub_ok(ep, "chain/a", "one intermediate", client(pki, pki.a_chain, pki.a_key))
    mark = b.log_mark()
    pub_refused_in_handshake(ep, "chain/b", client(pki, pki.b_chain, pki.b_key))
    b.wait_for_log(r"TLS handshake with .* failed: .*(?i:chain too long|depth)", since=mark)
    deeper = secure_broker(listeners=[mtls(pki, verify_depth=2)])
    pub_ok(deeper.endpoints["tls"], "chain/b", "two intermediates", client(pki, pki.b_chain, pki.b_key))


def test_trust_from_a_rehashed_folder(secure_broker, pki, tmp_path):
    """`ca_dir`: the CAs of a c_rehash folder (openssl rehash) are trusted."""
    folder = tmp_path / "cas"
    folder.mkdir()
    shutil.copy(pki.root.cert, str(folder / "root.pem"))
    openssl("rehash", str(folder))
    b = secure_broker(listeners=[listener(pki, ca_dir=str(folder), client_cert="required",
                                          identity_from="cn")])
    ep = b.endpoints["tls"]
    pub_ok(ep, "chain/a", "trusted through the folder", client(pki, pki.a_chain, pki.a_key))
    mark = b.log_mark()
    pub_refused_in_handshake(ep, "chain/x", client(pki, pki.intruder_chain, pki.intruder_key))
    b.wait_for_log(r"TLS handshake with .* failed: unknown CA", since=mark)


def test_crl_check_chain_refuses_a_revoked_intermediate(secure_broker, pki):
    """With crl_check = "chain" a certificate under a revoked intermediate is
    refused although its own issuer never revoked it; "leaf" checks only the
    certificate's own issuer's CRL, so it lets that certificate in."""
    crls = [pki.root_crl, pki.issuing_crl, pki.sub_crl, pki.retired_crl]
    b = secure_broker(listeners=[mtls(pki, ca=pki.bundle, crl=crls, crl_check="chain")])
    ep = b.endpoints["tls"]
    pub_ok(ep, "chain/a", "good chain", client(pki, pki.a_chain, pki.a_key))
    mark = b.log_mark()
    pub_refused_in_handshake(ep, "chain/c", client(pki, pki.c_chain, pki.c_key))
    b.wait_for_log(r"TLS handshake with .* failed: .*(?i:revoked)", since=mark)
    leaf = secure_broker(listeners=[mtls(pki, ca=pki.bundle, crl=crls, crl_check="leaf")])
    pub_ok(leaf.endpoints["tls"], "chain/c", "leaf check only", client(pki, pki.c_chain, pki.c_key))


def test_failed_crl_reload_keeps_the_last_good_crl(secure_broker, pki):
    """A CRL file that turns bad is reported at reload and the previous CRL
    stays in force: the revoked certificate is still refused, others served."""
    b = secure_broker(listeners=[mtls(pki, ca=pki.bundle, crl=["current.crl"])],
                      files={"current.crl": open(pki.issuing_crl).read()})
    ep = b.endpoints["tls"]
    pub_refused_in_handshake(ep, "chain/lost", client(pki, pki.lost_chain, pki.lost_key))
    (b.workdir / "current.crl").write_text("-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n")
    mark = b.log_mark()
    os.kill(b.pid, signal.SIGHUP)
    b.wait_for_log(r"failed, keeping the previous", since=mark)
    pub_refused_in_handshake(ep, "chain/lost", client(pki, pki.lost_chain, pki.lost_key))
    pub_ok(ep, "chain/a", "still served", client(pki, pki.a_chain, pki.a_key))


def test_expired_crl_refuses_the_start(tmp_path, pki):
    """A CRL past its nextUpdate is a start-up error naming the file."""
    ca = CA(str(tmp_path / "shortlived"), "Short-lived CRL CA")
    crl = str(tmp_path / "stale.crl")
    openssl("ca", "-config", ca.cnf, "-gencrl", "-crlsec", "1", "-out", crl)
    time.sleep(2)  # the CRL's nextUpdate is one second after its issue
    from pki import secure_config
    (tmp_path / "data").mkdir()
    conf = tmp_path / "moat.toml"
    conf.write_text(secure_config(str(tmp_path / "data"), [mtls(pki, ca=ca.cert, crl=[crl])]))
    r = subprocess.run([MOATD, "-c", str(conf)], cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=scaled(20))
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode != 0, out
    assert "stale.crl" in out and "expired" in out.lower(), out


@pytest.mark.parametrize("case,failure", [("unknown CA", "unknown_ca"),
                                          ("expired", "certificate_expired"),
                                          ("revoked", "certificate_revoked")])
def test_refused_certificates_are_audited(secure_broker, pki, case, failure):
    """Each refused client certificate is one `tls.failure` audit line with the
    kind of failure and the reason (docs/audit.md)."""
    chain, key = {"unknown CA": (pki.intruder_chain, pki.intruder_key),
                  "expired": (pki.old_chain, pki.old_key),
                  "revoked": (pki.lost_chain, pki.lost_key)}[case]
    b = secure_broker(listeners=[mtls(pki, ca=pki.bundle, crl=[pki.issuing_crl])], audit="-")
    ep = b.endpoints["tls"]
    mark = b.log_mark()
    pub_refused_in_handshake(ep, "chain/x", client(pki, chain, key))
    m = b.wait_for_log(r'^\{"v":1,.*"event":"tls\.failure"', since=mark)
    e = json.loads(m.string)
    assert e["listener"] == "tls" and e["peer"].startswith("127.0.0.1:"), e
    assert e["failure"] == failure, e
    assert e["reason"], e
