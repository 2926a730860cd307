"""`moat bench`, the load generator: a short run against moatd delivers every
message, in order, and its --json line parses (see docs/cli.md, "moat bench").

Environment: MOAT (see test_cli.py), MOATD (see conftest.py).
"""

import json
import os
import subprocess

import pytest

from test_cli import MOAT
from util import scaled


@pytest.fixture(autouse=True)
def _need_moat():
    if not (os.path.isfile(MOAT) and os.access(MOAT, os.X_OK)):
        pytest.skip("moat binary not found at %s (set MOAT)" % MOAT)


def bench(broker, *args, timeout=30):
    argv = [MOAT, "bench"] + [str(a) for a in args] + [
        "-h", broker.host, "-p", broker.port, "--json", "--quiet", "--broker-pid", broker.pid]
    p = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=scaled(timeout))
    lines = [l for l in p.stdout.decode().splitlines() if l.strip()]
    assert len(lines) == 1, "stdout: %r\nstderr: %s" % (p.stdout, p.stderr.decode())
    return p, json.loads(lines[0])


# The broker's queue per session is 1000 messages (conftest): the publishers may
# run at most 300 messages ahead of the subscriber each, so a slow (sanitizer)
# broker makes them wait instead of overflowing the queue, which drops by design.
BACKLOG = 300


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_fanin_delivers_everything_in_order(broker, qos):
    p, r = bench(broker, "fanin", "-n", 3, "-q", qos, "-d", 1, "-w", 0.2, "--rate", 3000,
                 "--backlog", BACKLOG)
    assert p.returncode == 0, p.stderr.decode()
    assert r["ok"] and r["exit"] == 0
    assert r["scenario"] == "fanin" and r["qos"] == qos and r["publishers"] == 3
    assert r["sent"] > 0 and r["delivered"] > 0
    assert r["lost"] == 0 and r["reordered"] == 0 and r["duplicates"] == 0
    assert r["streams"] == 3
    assert r["latency_us"]["count"] > 0 and 0 < r["latency_us"]["p50"] <= r["latency_us"]["p99"]
    assert r["broker"]["pid"] == broker.pid and r["broker"]["cpu_s"] >= 0
    # Human-readable report on stderr when --json is given.
    assert b"integrity" in p.stderr and b"lost 0" in p.stderr


def test_pairs_flat_out_and_persistent_subscribers(broker):
    p, r = bench(broker, "pairs", "-n", 4, "-q", 1, "-d", 1, "-w", 0, "--persistent", "-I", "tb-",
                 "--backlog", BACKLOG)
    assert p.returncode == 0, p.stderr.decode()
    assert r["lost"] == 0 and r["reordered"] == 0
    assert r["delivered"] > 0 and r["streams"] == 4


def test_conn_counts_connections(broker):
    p, r = bench(broker, "conn", "-n", 2, "-d", 1, "-w", 0)
    assert p.returncode == 0, p.stderr.decode()
    assert r["connections_per_s"] > 0


def test_unreachable_broker_is_an_error():
    p = subprocess.run([MOAT, "bench", "fanin", "-p", "1", "-d", "1"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=scaled(30))
    assert p.returncode == 2, p.stderr.decode()
    assert b"moat bench:" in p.stderr
