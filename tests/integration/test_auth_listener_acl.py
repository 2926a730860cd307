"""[listener.acl]: a listener's own ACL replaces [acl] for every check of the
connections that come in through it (publish, subscribe, receive at
delivery), and is reloaded on SIGHUP; the other listeners keep [acl]
(docs/security.md, Mosquitto's per_listener_settings with acl_file).

Two listeners authenticate with the same password file. [acl] grants alice
a/# and bob everything; listener "b" grants alice only b/#, and bob may
subscribe to anything there but receive only b/#. Clients are paho-mqtt and
mosquitto_pub. Absence of a delivery is proven with a sentinel published
afterwards on the same connection (MQTT keeps a connection's messages in
order)."""

import os
import queue
import signal
import time

import pytest

from pki import password_file_text, pub_ok, secure_broker  # noqa: F401 (fixture)
from util import Paho, scaled, uniq

pytestmark = [pytest.mark.moat_only, pytest.mark.threaded]

USERS = {"alice": "alice-pw", "bob": "bob-pw"}

BROKER_ACL = """\
user alice
topic readwrite a/#

user bob
topic readwrite #
"""

B_ACL = """\
user alice
topic readwrite b/#
"""

B_RULES = """
[listener.acl]
file = "b.acl"

[[listener.acl.rule]]
permission = "allow"
action = "subscribe"
topic = "#"
user = "bob"

[[listener.acl.rule]]
permission = "allow"
action = "receive"
topic = "b/#"
user = "bob"
"""

LISTENERS = [
    {"name": "a", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["password"]},
    {"name": "b", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["password"], "raw": B_RULES},
]


@pytest.fixture(scope="module")
def passwd_text(tmp_path_factory):
    return password_file_text(tmp_path_factory.mktemp("passwd"), USERS)


def two_listeners(secure_broker, passwd_text):
    b = secure_broker(listeners=LISTENERS, password_file="passwd", acl_text=BROKER_ACL,
                      files={"passwd": passwd_text, "b.acl": B_ACL})
    b.wait_for_log(r"listener b: its own ACL replaces \[acl\] \(2 ordered rule\(s\), 1 file rule\(s\)\)")
    return b


def login(ep, user):
    return Paho(ep, client_id=uniq(user + "-"), username=user, password=USERS[user])


def until(client, sentinel):
    """(topic, payload) of every message before the one on `sentinel`."""
    got = []
    deadline = scaled(10)
    while True:
        try:
            m = client.messages.get(timeout=deadline)
        except queue.Empty:
            raise AssertionError("no message on %s; got %r" % (sentinel, got))
        if m.topic == sentinel:
            return got
        got.append((m.topic, m.payload))


def test_listener_acl_replaces_the_broker_acl_on_its_listener(secure_broker, passwd_text):
    b = two_listeners(secure_broker, passwd_text)
    on_a, on_b = b.endpoints["a"], b.endpoints["b"]
    bob_a = login(on_a, "bob")
    bob_b = login(on_b, "bob")
    alice_a = login(on_a, "alice")
    alice_b = login(on_b, "alice")
    try:
        assert bob_a.subscribe([("#", 1)]) == [1]
        assert bob_b.subscribe([("#", 1)]) == [1]  # B's rule: bob may subscribe to anything

        # On A ([acl]) alice may use a/ and not b/ ...
        assert alice_a.subscribe([("a/x", 1), ("b/x", 1)]) == [1, 0x80]
        # ... on B (its own ACL) the reverse.
        assert alice_b.subscribe([("a/x", 1), ("b/x", 1)]) == [0x80, 1]

        # alice's publish to b/x via A is acknowledged and dropped: bob, who may
        # read it on A, does not get it; a/x comes after it, as the sentinel.
        alice_a.publish("b/x", b"via a, refused", qos=1)
        alice_a.publish("a/x", b"via a", qos=1)
        assert until(bob_a, "a/x") == []
        # alice's own subscription to a/x on A received it.
        m = alice_a.get()
        assert (m.topic, m.payload) == ("a/x", b"via a")

        # Via B the reverse: a/x dropped, b/x (the sentinel) published.
        alice_b.publish("a/x", b"via b, refused", qos=1)
        alice_b.publish("b/x", b"via b", qos=1)
        assert until(bob_a, "b/x") == []
        m = alice_b.get()
        assert (m.topic, m.payload) == ("b/x", b"via b")
        # bob on B may receive b/x there, never alice's a/x.
        got_b = until(bob_b, "b/x")
        assert not any(t.startswith("a/") for t, _ in got_b), got_b

        # Receive, checked at delivery under the subscriber's listener: bob
        # publishes a/x and then b/x via A; bob on A gets both, bob on B
        # (who may receive only b/ there) gets only b/x. mosquitto_pub keeps
        # the order of its messages: one connection, QoS 1.
        for topic in ("a/y", "b/y"):
            pub_ok(on_a, topic, "from bob", ["-u", "bob", "-P", USERS["bob"]])
        assert until(bob_b, "b/y") == []
        got_a = until(bob_a, "b/y")
        assert [t for t, _ in got_a] == ["a/y"], got_a
    finally:
        for c in (bob_a, bob_b, alice_a, alice_b):
            c.close()


def test_listener_acl_reloads_on_sighup(secure_broker, passwd_text):
    b = two_listeners(secure_broker, passwd_text)
    on_a, on_b = b.endpoints["a"], b.endpoints["b"]
    (b.workdir / "b.acl").write_text("user alice\ntopic readwrite c/#\ntopic read d/#\n")
    mark = b.log_mark()
    os.kill(b.pid, signal.SIGHUP)
    b.wait_for_log(r"reload: ACL of listener b \(2 ordered rule\(s\), 2 file rule\(s\)\)", since=mark)
    b.wait_for_log(r"reload: ACL \(0 ordered rule\(s\), 2 file rule\(s\)\)", since=mark)
    alice_b = login(on_b, "alice")
    alice_a = login(on_a, "alice")
    try:
        # The event loops take a reloaded ACL at their next tick (a few times
        # a second): poll, bounded.
        deadline = time.monotonic() + scaled(5)
        while alice_b.subscribe([("c/x", 1)]) != [1]:
            assert time.monotonic() < deadline, "c/x still refused on b after the reload"
        assert alice_b.subscribe([("c/x", 1), ("d/x", 1), ("b/x", 1), ("a/x", 1)]) == [1, 1, 0x80, 0x80]
        assert alice_a.subscribe([("c/x", 1), ("a/x", 1)]) == [0x80, 1]
    finally:
        alice_b.close()
        alice_a.close()

    # A file that no longer loads keeps the previous policy of that listener.
    (b.workdir / "b.acl").write_text("user alice\nnonsense c/#\n")
    mark = b.log_mark()
    os.kill(b.pid, signal.SIGHUP)
    b.wait_for_log(r"reload of the ACL of listener b failed, keeping the previous one", since=mark)
    alice_b = login(on_b, "alice")
    try:
        assert alice_b.subscribe([("c/x", 1), ("b/x", 1)]) == [1, 0x80]
    finally:
        alice_b.close()


def test_without_acl_only_listeners_without_their_own_are_denied(secure_broker, passwd_text):
    """No [acl], listener b with its own: the empty default-deny policy judges
    the clients of listener a only, and the start-up warning says so."""
    b = secure_broker(listeners=LISTENERS, password_file="passwd",
                      files={"passwd": passwd_text, "b.acl": B_ACL})
    b.wait_for_log(r"listener a authenticates clients \(password\) and there is no \[acl\] and no IAM "
                   r"authorization: every client of a listener without its own \[listener\.acl\] is "
                   r"denied every topic")
    assert b.find_log(r"listener b authenticates clients") is None, "b has its own ACL"
    alice_a = login(b.endpoints["a"], "alice")
    alice_b = login(b.endpoints["b"], "alice")
    try:
        assert alice_a.subscribe([("a/x", 1), ("b/x", 1)]) == [0x80, 0x80]
        assert alice_b.subscribe([("a/x", 1), ("b/x", 1)]) == [0x80, 1]
    finally:
        alice_a.close()
        alice_b.close()
