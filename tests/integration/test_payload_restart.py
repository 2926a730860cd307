"""Replay protection of the broker's payload policies across restarts
(docs/payload-security.md, "A window lives in memory"; docs/durability.md).

An envelope accepted on a policy topic leaves its sender's replay mark in the
store before the PUBACK: after a restart of moatd, by SIGTERM or by SIGKILL
once the PUBACK was received, the same envelope bytes published again are
refused (logged as below the replay window, not delivered), while a fresh
envelope from the same sender is delivered. --check-store counts the marks;
marks older than the keyring's max_age + max_future are removed at start.

Absence of a delivery is proven with a sentinel published after it."""

import time

import pytest

import mqttraw
from test_payload import moat
from test_store import check_store_lines, node  # noqa: F401 (fixture)
from util import collect_until, scaled, uniq

pytestmark = pytest.mark.moat_only

TOPIC = "sec/valve"
SENTINEL = "sentinel/done"


def seal(key, payload):
    r = moat("seal", "--mode", "mac", "--key", key, "-t", TOPIC, stdin=payload)
    assert r.returncode == 0, r.stderr
    return r.stdout


def policy_node(node, tmp_path, replay=""):  # noqa: F811
    """A moatd whose topics sec/# need a MAC envelope of the key "m"; returns
    (node, key file)."""
    n = node("node")
    key = str(tmp_path / "m.jwk")
    r = moat("keygen", "--kind", "hmac256", "--kid", "m", "-o", key)
    assert r.returncode == 0, r.stderr
    ring = tmp_path / "ring.toml"
    ring.write_text('[[topic]]\nfilter = "sec/#"\nkeys = ["m.jwk"]\n' + replay)
    with open(n.conf, "a") as f:
        f.write('\n[[payload_policy]]\ntopic = "sec/#"\nrequire = "mac"\nkeyring = "%s"\n' % ring)
    return n, key


def subscriber(b):
    c = mqttraw.Client(b.host, b.port, timeout=scaled(10), name="sub")
    c.connect(uniq("sub"))
    c.subscribe([(TOPIC, 1), (SENTINEL, 1)])
    return c


def publisher(b):
    c = mqttraw.Client(b.host, b.port, timeout=scaled(10), name="pub")
    c.connect(uniq("pub"))
    return c


def stop(n, *clients):
    """Disconnects the clients cleanly, then stops moatd with SIGTERM."""
    for c in clients:
        c.disconnect()
    n.stop()


def stored_marks(n):
    """The replay marks moatd's --check-store counts in n's data folder."""
    rc, out, err = n.check_store()
    assert rc == 0, out + err
    return check_store_lines(out)["replay marks"]


def delivered(b, sub, pub, payloads):
    """Publishes each payload at QoS 1 (each acknowledged), then the sentinel;
    returns the payloads the subscriber received on TOPIC before it."""
    for p in payloads:
        pub.publish(TOPIC, p, qos=1)  # waits for the PUBACK
    pub.publish(SENTINEL, b"end", qos=1)
    return [m.payload for m in collect_until(sub, SENTINEL)]


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_envelope_accepted_before_a_restart_is_refused_after_it(node, tmp_path, how):  # noqa: F811
    n, key = policy_node(node, tmp_path)
    first = seal(key, b"open")
    b = n.start()
    sub, pub = subscriber(b), publisher(b)
    assert delivered(b, sub, pub, [first]) == [first]
    # The PUBACK of `first` has been received: its mark is stored.
    if how == "sigkill":
        n.kill()
    else:
        stop(n, pub, sub)
    assert stored_marks(n) == 1

    b = n.start()
    b.wait_for_log(r"store: restored 1 replay mark\(s\) of the payload policies")
    since = b.log_mark()
    sub, pub = subscriber(b), publisher(b)
    fresh = seal(key, b"close")
    # The replay is acknowledged (like every refused PUBLISH) but not delivered.
    assert delivered(b, sub, pub, [first, fresh]) == [fresh]
    b.wait_for_log(r"refused by the payload policy: replayed: sequence number \d+ is below the replay window",
                   since=since)
    stop(n, pub, sub)


def test_marks_older_than_max_age_and_max_future_are_removed_at_start(node, tmp_path):  # noqa: F811
    n, key = policy_node(node, tmp_path, replay="[replay]\nmax_age = 2\nmax_future = 0\n")
    b = n.start()
    sub, pub = subscriber(b), publisher(b)
    assert len(delivered(b, sub, pub, [seal(key, b"open")])) == 1
    stop(n, pub, sub)
    assert stored_marks(n) == 1
    # The mark outlives what it can stop: any envelope it refuses is stale
    # after max_age + max_future (2 s) anyway. Waiting is the point here.
    time.sleep(2.5)
    b = n.start()
    assert b.find_log(r"restored \d+ replay mark") is None, b.log_text()
    n.stop()
    assert stored_marks(n) == 0
