"""Helpers for the security tests (test_auth.py, test_tls.py):

- `CA`: a throw-away certificate authority driven by the `openssl` command line
  (`openssl req` / `openssl ca`), so certificates can be issued with any
  validity period (expired ones included), revoked and listed in a CRL;
- `secure_broker`: a fixture that starts moatd on a configuration with the
  sections the conftest fixture cannot write ([auth.password], [acl],
  [listener.tls], sys_interval) and stops it (exit code 0 expected) at the end;
- small runners for mosquitto_pub / mosquitto_sub that report failures instead
  of asserting success.

Everything is written below the test's tmp_path. Every wait is bounded.
"""

import os
import re
import signal
import subprocess
import textwrap
from collections import namedtuple

import pytest

import mqttraw
from conftest import MOATD, REPO, Broker, toml_value
from util import scaled, uniq


def _resolve_moat():
    path = os.environ.get("MOAT")
    if not path and os.environ.get("MOATD"):
        sibling = os.path.join(os.path.dirname(os.path.dirname(MOATD)), "moat", "moat")
        if os.path.isfile(sibling):
            path = sibling
    path = path or os.path.join(REPO, "build", "apps", "moat", "moat")
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "moat")):
        path = os.path.join(path, "moat")
    return path


MOAT = _resolve_moat()

# "listening on 127.0.0.1:PORT (listener "NAME", tls)"
LISTENER_RE = re.compile(r'listening on (\S+):(\d+) \(listener "([^"]*)", (\w+)\)')

Endpoint = namedtuple("Endpoint", "host port")


# ---------------------------------------------------------------- openssl

def openssl(*args, cwd=None, env=None, timeout=30):
    r = subprocess.run(["openssl"] + [str(a) for a in args], cwd=cwd, env=env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, "openssl %s failed (%d):\n%s" % (
        " ".join(str(a) for a in args), r.returncode, out)
    return out


_CA_CNF = """\
[ req ]
distinguished_name = req_dn
prompt = no

[ req_dn ]
CN = unused

[ ca ]
default_ca = this_ca

[ this_ca ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
default_days = 365
default_crl_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
crl_extensions = crl_ext

[ policy_any ]
commonName = supplied
organizationName = optional

[ v3_ca ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

# Certificates name where their CRL is published (nothing serves it: the
# tests hand CRLs to moatd as files), as a scanner (testssl.sh) expects.
[ server_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:http://localhost/ca.crl

[ other_server_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:broker.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ client_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:http://localhost/ca.crl

# A delegated OCSP responder (RFC 6960, 4.2.2.2).
[ ocsp_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = OCSPSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ crl_ext ]
authorityKeyIdentifier = keyid:always
"""


class CA:
    """A certificate authority in its own folder (EC P-256 keys, SHA-256)."""

    def __init__(self, folder, cn, parent=None):
        """A root CA, or with `parent` an intermediate CA that `parent` signs."""
        self.dir = str(folder)
        os.makedirs(os.path.join(self.dir, "issued"), exist_ok=True)
        self.cnf = os.path.join(self.dir, "openssl.cnf")
        with open(self.cnf, "w") as f:
            f.write(_CA_CNF.format(dir=self.dir))
        with open(os.path.join(self.dir, "index.txt"), "w"):
            pass
        with open(os.path.join(self.dir, "serial"), "w") as f:
            f.write("1000\n")
        with open(os.path.join(self.dir, "crlnumber"), "w") as f:
            f.write("01\n")
        self.key = self._genkey("ca.key")
        self.cert = os.path.join(self.dir, "ca.crt")
        if parent is None:
            openssl("req", "-x509", "-new", "-config", self.cnf, "-extensions", "v3_ca",
                    "-key", self.key, "-subj", "/CN=%s" % cn, "-days", "365", "-out", self.cert)
        else:
            csr = os.path.join(self.dir, "ca.csr")
            openssl("req", "-new", "-config", self.cnf, "-key", self.key, "-subj", "/CN=%s" % cn,
                    "-out", csr)
            openssl("ca", "-batch", "-notext", "-config", parent.cnf, "-extensions", "v3_ca",
                    "-in", csr, "-out", self.cert)
        self.crl = None

    def _genkey(self, name):
        path = os.path.join(self.dir, name)
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", path)
        os.chmod(path, 0o600)
        return path

    def issue(self, name, subject, ext="client_ext", startdate=None, enddate=None):
        """Issue NAME.crt / NAME.key for `subject` ("/CN=device-1"); returns
        (cert path, key path). startdate/enddate: "YYYYMMDDHHMMSSZ". `ext`:
        client_ext, server_ext (IP:127.0.0.1, DNS:localhost) or
        other_server_ext (DNS:broker.example only)."""
        key = self._genkey(name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        crt = os.path.join(self.dir, name + ".crt")
        openssl("req", "-new", "-config", self.cnf, "-key", key, "-subj", subject, "-out", csr)
        args = ["ca", "-batch", "-notext", "-config", self.cnf, "-extensions", ext,
                "-in", csr, "-out", crt]
        if startdate:
            args += ["-startdate", startdate]
        if enddate:
            args += ["-enddate", enddate]
        openssl(*args)
        return crt, key

    def revoke(self, cert):
        openssl("ca", "-config", self.cnf, "-revoke", cert)

    def gencrl(self, name="ca.crl"):
        self.crl = os.path.join(self.dir, name)
        openssl("ca", "-config", self.cnf, "-gencrl", "-out", self.crl)
        return self.crl

    def ocsp_response(self, cert, out, days=7):
        """Writes to `out` the DER OCSP response this CA's delegated responder
        gives about `cert` (good, or revoked if revoked here), as
        `openssl ocsp` answers from the CA's index. Returns `out`."""
        if getattr(self, "_responder", None) is None:
            self._responder = self.issue("ocsp-responder", "/CN=Moat Test OCSP Responder",
                                         ext="ocsp_ext")
        rcert, rkey = self._responder
        openssl("ocsp", "-index", os.path.join(self.dir, "index.txt"), "-rsigner", rcert,
                "-rkey", rkey, "-CA", self.cert, "-issuer", self.cert, "-cert", cert,
                "-respout", out, "-ndays", str(days), "-no_nonce")
        return out


Pki = namedtuple("Pki", "dir ca ca_cert server_cert server_key client_cert client_key "
                        "client2_cert client2_key expired_cert expired_key "
                        "revoked_cert revoked_key crl intruder_ca intruder_cert intruder_key")


def make_pki(folder):
    """The PKI the TLS tests use: a CA with a server certificate (SAN
    IP:127.0.0.1, DNS:localhost), client certificates CN=device-1 and
    CN=device-2, an expired one (CN=device-old, valid in January 2020), a
    revoked one (CN=device-stolen) listed in ca.crl, and an unrelated CA with
    a client certificate CN=intruder."""
    folder = str(folder)
    ca = CA(os.path.join(folder, "ca"), "Moat Test CA")
    server_cert, server_key = ca.issue("server", "/CN=localhost", ext="server_ext")
    client_cert, client_key = ca.issue("device-1", "/CN=device-1")
    client2_cert, client2_key = ca.issue("device-2", "/CN=device-2")
    expired_cert, expired_key = ca.issue("expired", "/CN=device-old",
                                         startdate="20200101000000Z", enddate="20200201000000Z")
    revoked_cert, revoked_key = ca.issue("revoked", "/CN=device-stolen")
    ca.revoke(revoked_cert)
    crl = ca.gencrl()
    intruder_ca = CA(os.path.join(folder, "intruder-ca"), "Intruder CA")
    intruder_cert, intruder_key = intruder_ca.issue("intruder", "/CN=intruder/O=Acme")
    return Pki(folder, ca, ca.cert, server_cert, server_key, client_cert, client_key,
               client2_cert, client2_key, expired_cert, expired_key, revoked_cert,
               revoked_key, crl, intruder_ca, intruder_cert, intruder_key)


# ---------------------------------------------------------------- broker

# Once a listener authenticates clients (any method but "anonymous"), moatd
# denies every topic that no rule grants, broker-wide. A test whose broker
# authenticates but is not about authorization appends this rule (`extra`):
# every client may publish, subscribe and receive everything but $SYS.
ALLOW_ALL = """
[[acl.rule]]
permission = "allow"
action = "all"
topic = "#"
"""
# ... and reading $SYS, which '#' does not reach.
SYS_READ = """
[[acl.rule]]
permission = "allow"
action = ["subscribe", "receive"]
topic = "$SYS/#"
"""

def _toml_table(lines, header, table):
    lines.append(header)
    for k, v in table.items():
        lines.append("%s = %s" % (k, toml_value(v)))
    lines.append("")


def secure_config(data_dir, listeners, password_file=None, acl_file=None, sys_interval=None,
                  threads=2, log_level="debug", audit=None, extra=None):
    """moat.toml text. `listeners`: list of dicts (name, bind, transport, auth,
    and optionally "tls": a dict written as [listener.tls], "raw": TOML text
    written after the listener's tables, e.g. a [listener.clientid] table).
    `audit`: [log] audit; `extra`: TOML text appended at the end."""
    lines = ["[broker]", "data_dir = %s" % toml_value(data_dir),
             "threads = %d" % threads]
    if sys_interval is not None:
        lines.append("sys_interval = %d" % sys_interval)
    lines += ["", "[log]", "level = %s" % toml_value(log_level)]
    if audit is not None:
        lines.append("audit = %s" % toml_value(audit))
    lines += ["", "[limits]", "connect_timeout = 2", ""]
    if password_file is not None:
        _toml_table(lines, "[auth.password]", {"file": password_file})
    if acl_file is not None:
        _toml_table(lines, "[acl]", {"file": acl_file})
    for lst in listeners:
        lst = dict(lst)
        tls = lst.pop("tls", None)
        raw = lst.pop("raw", None)
        _toml_table(lines, "[[listener]]", lst)
        if tls is not None:
            _toml_table(lines, "[listener.tls]", tls)
        if raw is not None:
            lines += [textwrap.dedent(raw), ""]
    if extra is not None:
        lines += [textwrap.dedent(extra), ""]
    return "\n".join(lines)


@pytest.fixture
def secure_broker(tmp_path, request):
    """Factory: secure_broker(listeners, password_file=..., acl=..., files=...)

    - listeners: list of listener dicts (see secure_config); default one tcp
      listener "plain" with auth ["password"];
    - files: {name: text or bytes} written next to moat.toml before the start;
    - password_file / acl: file names (relative to the config folder, as the
      broker resolves them) or None for no such section; `acl_text` writes
      the ACL file "acl" and configures it;
    - audit: [log] audit (a file name, or "-"); extra: TOML text appended
      ([auth.jwt], [auth.clientid], [auth.defence], [[acl.rule]], ...).
    Returns a conftest.Broker with `.workdir`, `.endpoints` ({listener name:
    Endpoint}) and `.transports` ({listener name: "tcp" | "tls"})."""
    started = []

    def factory(listeners=None, password_file=None, acl_text=None, files=None,
                sys_interval=None, threads=2, audit=None, extra=None):
        if not (os.path.isfile(MOATD) and os.access(MOATD, os.X_OK)):
            pytest.skip("moatd binary not found at %s (set MOATD)" % MOATD)
        if listeners is None:
            listeners = [{"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp",
                          "auth": ["password"]}]
        workdir = tmp_path / ("sbroker%d" % len(started))
        workdir.mkdir()
        (workdir / "data").mkdir()
        for name, content in (files or {}).items():
            p = workdir / name
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)
            os.chmod(str(p), 0o600)
        acl_file = None
        if acl_text is not None:
            (workdir / "acl").write_text(textwrap.dedent(acl_text))
            acl_file = "acl"
        conf = workdir / "moat.toml"
        conf.write_text(secure_config(str(workdir / "data"), listeners, password_file, acl_file,
                                      sys_interval, threads, audit=audit, extra=extra))
        b = Broker([MOATD, "-c", str(conf)], cwd=str(workdir), config_path=str(conf))
        b.workdir = workdir
        started.append(b)
        b.endpoints = {}
        b.transports = {}
        idx = 0
        while len(b.endpoints) < len(listeners):
            m, i = b.wait_for_log_at(LISTENER_RE.pattern, timeout=10, since=idx)
            idx = i + 1
            b.endpoints[m.group(3)] = Endpoint(m.group(1), int(m.group(2)))
            b.transports[m.group(3)] = m.group(4)
        for lst in listeners:
            assert lst["name"] in b.endpoints, "no 'listening on' line for listener %r:\n%s" % (
                lst["name"], b.log_text())
            want = lst.get("transport", "tcp")
            assert b.transports[lst["name"]] == want, (
                "listener %r logged transport %r, configured %r" % (
                    lst["name"], b.transports[lst["name"]], want))
        b.host, b.port = b.endpoints[listeners[0]["name"]]
        return b

    yield factory

    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for i, b in enumerate(started):
            print("---- sbroker%d log (last 150 lines) ----" % i)
            print("\n".join(b.logs[-150:]))
    errors = []
    for b in started:
        if getattr(b, "stopped", False):
            continue
        if not b.alive():
            errors.append("broker died during the test (exit %s); log tail:\n%s"
                          % (b.proc.returncode, "\n".join(b.logs[-60:])))
            continue
        try:
            rc = b.stop(signal.SIGTERM, 10)
        except AssertionError as e:
            errors.append(str(e))
            continue
        if rc != 0:
            errors.append("broker exit code after SIGTERM was %s; log tail:\n%s"
                          % (rc, "\n".join(b.logs[-60:])))
    assert not errors, "\n".join(errors)


# ---------------------------------------------------------------- mosquitto clients

def run_pub(ep, topic, message, extra=(), qos=1, timeout=15):
    """mosquitto_pub -d ...; returns (exit code, combined output). Never asserts."""
    argv = ["mosquitto_pub", "-d", "-h", ep.host, "-p", str(ep.port), "-t", topic,
            "-m", message, "-q", str(qos)] + [str(a) for a in extra]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=scaled(timeout))
    except subprocess.TimeoutExpired as e:
        raise AssertionError("mosquitto_pub did not exit within %.1fs: %s\n%s" % (
            scaled(timeout), argv, (e.stdout or b"").decode("utf-8", "replace")))
    return r.returncode, r.stdout.decode("utf-8", "replace")


def pub_ok(ep, topic, message, extra=(), qos=1):
    rc, out = run_pub(ep, topic, message, extra, qos)
    assert rc == 0, "mosquitto_pub to %s failed (exit %d):\n%s" % (topic, rc, out)
    assert "received CONNACK (0)" in out, out
    return out


def pub_refused_in_handshake(ep, topic, extra=()):
    """mosquitto_pub must fail without ever receiving a CONNACK."""
    rc, out = run_pub(ep, topic, "must-not-arrive", extra)
    assert rc != 0, "mosquitto_pub succeeded but must have been refused:\n" + out
    assert "received CONNACK" not in out, (
        "the client got a CONNACK: the TLS handshake must have failed before MQTT:\n" + out)
    return out


# ---------------------------------------------------------------- password files

def mosquitto_passwd(*args):
    """Runs Debian's mosquitto_passwd with `args`; asserts it succeeded."""
    r = subprocess.run(["mosquitto_passwd"] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=scaled(30))
    assert r.returncode == 0, "mosquitto_passwd %s: %s" % (args, r.stdout)


def password_file_text(folder, users):
    """The text of the password file mosquitto_passwd (-c) -b writes in `folder`
    for `users` (user name -> password)."""
    path = os.path.join(str(folder), "passwd")
    for i, (user, pw) in enumerate(users.items()):
        mosquitto_passwd(*(["-c"] if i == 0 else []), "-b", path, user, pw)
    with open(path) as f:
        return f.read()


# ---------------------------------------------------------------- openssl s_client

@pytest.fixture(scope="module")
def empty_openssl_conf(tmp_path_factory):
    """An empty OPENSSL_CONF for `openssl s_client`: the system one may forbid
    old protocol versions on the client side, which would let a refusal pass
    without the broker."""
    path = tmp_path_factory.mktemp("osslconf") / "empty.cnf"
    path.write_text("")
    return str(path)


def s_client_mqtt(ep, conf, *args, topic="tls/t", payload=b"x", timeout=15):
    """`openssl s_client` (ARGS added) as an MQTT client: sends CONNECT, a QoS 1
    PUBLISH (packet id 7) and DISCONNECT through the TLS connection and returns
    (packets received, the client's stderr with its -brief summary)."""
    env = dict(os.environ, OPENSSL_CONF=conf)
    data = (mqttraw.connect(uniq("sclient")) + mqttraw.publish(topic, payload, qos=1, pid=7)
            + mqttraw.disconnect())
    argv = ["openssl", "s_client", "-connect", "%s:%d" % (ep.host, ep.port), "-brief",
            "-ign_eof", "-nocommands"] + [str(a) for a in args]
    try:
        r = subprocess.run(argv, env=env, input=data, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=scaled(timeout))
    except subprocess.TimeoutExpired as e:
        raise AssertionError("s_client did not exit: %s\n%s" % (
            argv, (e.stderr or b"").decode("utf-8", "replace")))
    return mqttraw.parse_all(r.stdout), r.stderr.decode("utf-8", "replace")
