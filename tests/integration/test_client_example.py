"""The example program of docs/client.md, run against a real moatd."""

import os
import subprocess

import pytest

from util import scaled

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.environ.get("MOAT_EXAMPLE") or os.path.join(
    os.path.dirname(os.path.dirname(HERE)), "build", "tests", "example_publish_subscribe")


@pytest.mark.moat_only
def test_example_publishes_receives_and_disconnects(broker):
    assert os.path.exists(EXAMPLE), "build the example first: " + EXAMPLE
    out = subprocess.run([EXAMPLE, broker.host, str(broker.port)], capture_output=True, text=True,
                         timeout=scaled(20))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "example/greeting hello from moat::client\n"
    # It disconnected cleanly: the broker saw a DISCONNECT, not a lost connection.
    broker.wait_for_log(r"client example-client from \S+ disconnected: DISCONNECT", timeout=5)
