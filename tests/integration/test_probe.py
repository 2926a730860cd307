"""`moat probe` (docs/cli.md, "moat probe") against a real moatd on loopback:
a TLS listener and a plain one. The table's format, the JSON, the order of the
phases (which follows from the TLS 1.2 and 1.3 message flows), resumption, PSK
and client certificates, and one-line errors with distinct exit statuses.

The delays themselves are measured over a delay link by
scripts/experiments/tls-delay (docs/tls-handshake.md); on loopback only the
order and plausibility of the phases can be checked."""

import json
import re
import socket
import subprocess

import pytest

from pki import MOAT, make_pki, secure_broker  # noqa: F401
from util import scaled

pytestmark = pytest.mark.moat_only

PSK_IDENTITY = "probe-sensor"
PSK_KEY = "000102030405060708090a0b0c0d0e0f"

ROWS = ["tcp connected", "client hello", "server hello", "server finished", "client finished",
        "tls done", "session ticket", "connack", "puback"]
KEYS = [r.replace(" ", "_") for r in ROWS]
TLS_COLUMNS = ["TLS 1.2", "TLS 1.2 resumed", "TLS 1.3", "TLS 1.3 resumed"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def probe(*args, timeout=60):
    argv = [MOAT, "probe"] + [str(a) for a in args]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=scaled(timeout))
    except subprocess.TimeoutExpired as e:
        raise AssertionError("moat probe did not exit: %s\n%s" % (argv, e.stderr))
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def probe_ok(*args):
    rc, out, err = probe(*args)
    assert rc == 0, "moat probe %s failed (%d):\n%s%s" % (args, rc, out, err)
    return out, err


@pytest.fixture
def broker(secure_broker, pki):
    """moatd with a plain listener, a TLS listener (server certificate for
    127.0.0.1), an mTLS one and a PSK one."""
    return secure_broker(
        listeners=[
            {"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["anonymous"]},
            {"name": "tls", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["anonymous"],
             "tls": {"cert": pki.server_cert, "key": pki.server_key}},
            {"name": "mtls", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["certificate"],
             "tls": {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert,
                     "client_cert": "required", "identity_from": "cn"}},
            {"name": "psk", "bind": "127.0.0.1:0", "transport": "tls", "auth": ["psk"],
             "tls": {"psk_file": "psk.txt", "identity_from": "psk"}},
            {"name": "locked", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["password"]},
        ],
        password_file="passwd",
        files={"psk.txt": "%s:%s\n" % (PSK_IDENTITY, PSK_KEY), "passwd": ""})


def target(b, name):
    ep = b.endpoints[name]
    return "%s:%d" % (ep.host, ep.port)


def parse_table(out):
    """{column: {row: ms or None}} from the text table; checks its layout."""
    lines = out.rstrip("\n").split("\n")
    header, body, footer = lines[0], lines[1:-1], lines[-1]
    assert re.fullmatch(r"\(\S+: median of \d+ connections? per column, from the start of the TCP connect\)",
                        footer), footer
    titles = re.split(r" {3,}", header.strip())
    starts = [header.index(t) for t in titles]
    table = {t: {} for t in titles}
    for line in body:
        label = line[:starts[0] - 2].rstrip()
        assert label in ROWS, "unknown row %r in:\n%s" % (label, out)
        cells = line[starts[0] - 2:].split()
        values = []
        i = 0
        while i < len(cells):
            if cells[i] == "-":
                values.append(None)
                i += 1
            else:
                assert re.fullmatch(r"\d+\.\d", cells[i]) and cells[i + 1] == "ms", line
                values.append(float(cells[i]))
                i += 2
        assert len(values) == len(titles), "row %r has %d values for %d columns:\n%s" % (
            label, len(values), len(titles), out)
        for t, v in zip(titles, values):
            table[t][label] = v
    # Rows keep their fixed order.
    labels = [line[:starts[0] - 2].rstrip() for line in body]
    assert labels == [r for r in ROWS if r in labels], labels
    return titles, labels, table


def assert_ordered(sample, column, ticket=True):
    """The phases of one connection happen in the order the protocol dictates.
    `column` names the message flow: "TLS 1.2" (full), "TLS 1.2 resumed", "TLS 1.3..."."""
    s = {k: sample[k] for k in KEYS}
    where = "%s: %s" % (column, s)
    for k in ("tcp_connected", "client_hello", "server_hello", "server_finished", "client_finished",
              "tls_done", "connack", "puback"):
        assert s[k] is not None and 0 < s[k] < scaled(5000), where
    assert s["tcp_connected"] <= s["client_hello"] <= s["server_hello"], where
    assert s["server_finished"] <= s["tls_done"] and s["client_finished"] <= s["tls_done"], where
    assert s["tls_done"] <= s["connack"] <= s["puback"], where
    if column == "TLS 1.2":
        # Full TLS 1.2: the client's Finished goes out before the server's comes back
        # (one more round trip), and the ticket comes with the server's Finished.
        assert s["server_hello"] <= s["client_finished"] <= s["server_finished"], where
        if ticket:
            assert s["session_ticket"] is not None and s["session_ticket"] <= s["server_finished"], where
    else:
        # TLS 1.3 and resumed TLS 1.2: the server finishes first, the client answers.
        assert s["server_hello"] <= s["server_finished"] <= s["client_finished"], where
    if column.startswith("TLS 1.3"):
        # TLS 1.3 tickets come after the handshake, before the CONNACK.
        assert s["session_ticket"] is not None, where
        assert s["tls_done"] <= s["session_ticket"] <= s["connack"], where


def test_table_tls_both_resumed(broker, pki):
    out, err = probe_ok(target(broker, "tls"), "--tls", "both", "--resume", "-n", 3,
                        "--cafile", pki.ca_cert)
    assert err == ""
    titles, labels, table = parse_table(out)
    assert titles == TLS_COLUMNS
    assert labels == ROWS
    for t in titles:
        col = table[t]
        assert col["tcp connected"] <= col["tls done"] <= col["connack"] <= col["puback"], (t, out)
    # Resumed TLS 1.2 has no Certificate..ServerHelloDone flight: still all phases.
    assert "(127.0.0.1:%d: median of 3 connections per column" % broker.endpoints["tls"].port in out


def test_json_every_sample_ordered(broker, pki):
    out, err = probe_ok(target(broker, "tls"), "--resume", "-n", 3, "--cafile", pki.ca_cert, "--json")
    assert err == ""
    assert out.count("\n") == 1, "one JSON line expected:\n" + out
    j = json.loads(out)
    assert j["target"] == target(broker, "tls")
    assert j["runs"] == 3 and j["unit"] == "ms"
    assert [c["name"] for c in j["columns"]] == TLS_COLUMNS
    for c in j["columns"]:
        assert c["runs"] == 3
        assert c["tls"] == c["name"][4:7]
        assert c["version"] == "TLSv" + c["tls"]
        assert c["cipher"], c
        assert c["resume"] == c["name"].endswith("resumed")
        # Every resumed handshake was resumed, every full one was full.
        assert c["resumed"] == (3 if c["resume"] else 0), c
        assert sorted(c["median_ms"]) == sorted(KEYS)
        for i in range(3):
            assert_ordered({k: c["samples_ms"][k][i] for k in KEYS}, c["name"])
        for k in KEYS:
            vals = sorted(v for v in c["samples_ms"][k] if v is not None)
            assert c["median_ms"][k] == (vals[1] if vals else None), (k, c)


def test_plain_tcp(broker):
    out, err = probe_ok(target(broker, "plain"), "--tls", "none", "-n", 2)
    assert err == ""
    titles, labels, table = parse_table(out)
    assert titles == ["TCP"]
    assert labels == ["tcp connected", "connack", "puback"]
    t = table["TCP"]
    assert 0 < t["tcp connected"] <= t["connack"] <= t["puback"]

    j = json.loads(probe_ok(target(broker, "plain"), "--tls", "none", "-n", 2, "--json")[0])
    (c,) = j["columns"]
    assert (c["name"], c["tls"], c["resume"], c["runs"], c["version"]) == ("TCP", "none", False, 2, "")
    for k in KEYS:
        if k in ("tcp_connected", "connack", "puback"):
            assert all(v is not None and v > 0 for v in c["samples_ms"][k])
        else:
            assert c["median_ms"][k] is None and c["samples_ms"][k] == [None, None]


def test_single_version_columns(broker, pki):
    titles, _, _ = parse_table(probe_ok(target(broker, "tls"), "--tls", "1.3", "-n", 1,
                                        "--cafile", pki.ca_cert)[0])
    assert titles == ["TLS 1.3"]
    titles, _, _ = parse_table(probe_ok(target(broker, "tls"), "--tls", "1.2", "--resume", "-n", 1,
                                        "--cafile", pki.ca_cert)[0])
    assert titles == ["TLS 1.2", "TLS 1.2 resumed"]


def test_client_certificate_and_psk(broker, pki):
    j = json.loads(probe_ok(target(broker, "mtls"), "-n", 1, "--cafile", pki.ca_cert,
                            "--cert", pki.client_cert, "--key", pki.client_key, "--json")[0])
    assert [c["version"] for c in j["columns"]] == ["TLSv1.2", "TLSv1.3"]
    # Without a client certificate the mTLS listener refuses the handshake.
    rc, out, err = probe(target(broker, "mtls"), "--tls", "1.3", "-n", 1, "--cafile", pki.ca_cert)
    assert rc in (6, 8) and out == "", (rc, out, err)  # TLS 1.3: the refusal may come after "done"
    assert err.count("\n") == 1 and err.startswith("moat probe: "), err

    j = json.loads(probe_ok(target(broker, "psk"), "-n", 1, "--psk", PSK_KEY,
                            "--psk-identity", PSK_IDENTITY, "--json")[0])
    c12, c13 = j["columns"]
    assert "PSK" in c12["cipher"], c12
    assert c13["version"] == "TLSv1.3"
    # A TLS 1.2 PSK handshake has no certificate but the flow of a full handshake.
    assert_ordered({k: c12["samples_ms"][k][0] for k in KEYS}, "TLS 1.2", ticket=False)
    assert_ordered({k: c13["samples_ms"][k][0] for k in KEYS}, "TLS 1.3 resumed", ticket=False)


def test_unreachable_port_one_line_exit_2():
    # A bound socket that does not listen: connecting to it is refused, and no
    # other process can take the port meanwhile.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        rc, out, err = probe("127.0.0.1:%d" % port, "-n", 1)
    finally:
        s.close()
    assert rc == 2, (rc, out, err)
    assert out == ""
    assert err == "moat probe: cannot connect to 127.0.0.1:%d: Connection refused\n" % port


def test_tls_failures_exit_8(broker, pki):
    # A server certificate from a CA the client does not trust.
    rc, out, err = probe(target(broker, "tls"), "-n", 1, "--cafile", pki.intruder_ca.cert)
    assert rc == 8 and out == "", (rc, out, err)
    assert re.fullmatch(r"moat probe: TLS handshake with 127\.0\.0\.1:\d+ failed: certificate verify failed: "
                        r"[^\n]+\n", err), err
    # TLS spoken to a plain MQTT listener.
    rc, out, err = probe(target(broker, "plain"), "--tls", "1.3", "-n", 1, "--cafile", pki.ca_cert)
    assert rc == 6 and out == "", (rc, out, err)  # the broker closes: connection closed
    assert err.count("\n") == 1 and err.startswith("moat probe: "), err
    # --insecure skips verification and says so.
    out, err = probe_ok(target(broker, "tls"), "--tls", "1.3", "-n", 1, "--insecure")
    assert err == "moat probe: warning: --insecure: the server certificate is not verified\n"


def test_connack_refused_exit_4(broker):
    rc, out, err = probe(target(broker, "locked"), "--tls", "none", "-n", 1)
    assert rc == 4 and out == "", (rc, out, err)
    assert re.fullmatch(r"moat probe: authentication failed: [a-z ]+ \(CONNACK [45]\)\n", err), err


@pytest.mark.parametrize("args, message", [
    (["--tls", "none", "--resume"], "--resume needs TLS"),
    (["--tls", "none", "--cafile", "x"], "need TLS"),
    (["--cert", "c.pem"], "--cert and --key go together"),
    (["--psk", "abc", "--psk-identity", "x"], "--psk: the key must be an even number of hex digits"),
    (["--psk", "00"], "--psk and --psk-identity go together"),
    (["--tls", "1.1"], "--tls"),
    (["-n", "0"], "--runs"),
])
def test_usage_errors_exit_1(args, message):
    rc, out, err = probe("127.0.0.1:1", *args)
    assert rc == 1 and out == "", (rc, out, err)
    assert err.count("\n") == 1 and err.startswith("moat probe: ") and message in err, err


def test_unreadable_files_exit_1(tmp_path):
    missing = str(tmp_path / "missing.pem")
    for args in (["--cafile", missing], ["--cert", missing, "--key", missing]):
        rc, out, err = probe("127.0.0.1:1", "-n", 1, *args)
        assert rc == 1 and out == "", (args, rc, out, err)
        assert re.fullmatch(r"moat probe: --(cafile|cert) %s: [^\n]+\n" % re.escape(missing), err), err


def test_bad_target_exit_1():
    for t in ("127.0.0.1:0", "127.0.0.1:x", "[::1", ":8883"):
        rc, out, err = probe(t, "-n", 1)
        assert rc == 1 and out == "", (t, rc, out, err)
        assert err.count("\n") == 1 and err.startswith("moat probe: "), (t, err)
