"""Broker payload policies ([[payload_policy]] in moat.toml; docs/payload-security.md,
"Broker policies") end to end: a real moatd with password authentication and
policies, envelopes made by `moat seal`, published by mosquitto_pub -f, paho and
a raw client, received by mosquitto_sub and raw subscribers.

- require = "signature" with signers bound to identities: a valid envelope from
  its bound publisher is delivered unchanged; unsigned, tampered, wrong-topic,
  replayed and unbound-signer envelopes are dropped, each still acknowledged at
  QoS 1 and 2, counted in $SYS/broker/messages/dropped/payload_policy and audited
  as payload.reject with its own failure token;
- require = "encrypted" with decrypt = true: an envelope sealed to the broker's
  topic key reaches subscribers as plaintext.

Absence of a delivery is proven with a sentinel published after it."""

import json
import os
import subprocess
import time

import mqttraw
from pki import ALLOW_ALL, SYS_READ, password_file_text, secure_broker  # noqa: F401 (fixture)
from test_payload import moat
from util import collect_until, scaled, uniq

USERS = {"alice": "alice-pw", "bob": "bob-pw"}

LISTENERS = [{"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp",
              "auth": ["password", "anonymous"]}]

POLICIES = """\
[[payload_policy]]
topic = "plant/+/cmd"
require = "signature"
keyring = "sig.toml"
signers = { "alice-sig" = "alice", "bob-sig" = "bob" }

[[payload_policy]]
topic = "zone/#"
require = "encrypted"
keyring = "zone.toml"
decrypt = true
"""


def keygen(folder, kind, kid):
    path = os.path.join(folder, kid + ".jwk")
    r = moat("keygen", "--kind", kind, "--kid", kid, "-o", path)
    assert r.returncode == 0, r.stderr
    return path


def seal(mode, key, topic, payload):
    r = moat("seal", "--mode", mode, "--key", key, "-t", topic, stdin=payload)
    assert r.returncode == 0, r.stderr
    return r.stdout


def login(b, user=None, name=None):
    c = mqttraw.Client(b.host, b.port, timeout=scaled(10), name=name or user or "anon")
    kw = {"username": user, "password": USERS[user]} if user else {}
    c.connect(uniq(user or "anon"), **kw)
    return c


def audit(b):
    path = os.path.join(str(b.workdir), "audit.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line]


def rejects(b, n):
    """The payload.reject audit lines once there are `n` (the audit log is
    written by its own thread; polled, bounded)."""
    deadline = time.monotonic() + scaled(10)
    while True:
        found = [e for e in audit(b) if e["event"] == "payload.reject"]
        if len(found) >= n or time.monotonic() > deadline:
            assert len(found) == n, found
            return found
        time.sleep(0.02)


def wait_sys(sub, topic, want, timeout=15):
    """Receive $SYS publishes until `topic` carries `want` (the broker publishes
    every sys_interval); returns the last value seen on failure."""
    deadline = time.monotonic() + scaled(timeout)
    last = None
    while time.monotonic() < deadline:
        try:
            pub = sub.recv_publish(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            break
        if pub.topic == topic:
            last = pub.payload.decode()
            if last == want:
                return last
    raise AssertionError("%s: %r, expected %r" % (topic, last, want))


def make_broker(secure_broker, tmp_path):  # noqa: F811
    keys = str(tmp_path / "keys")
    os.mkdir(keys)
    k = {kid: keygen(keys, kind, kid) for kind, kid in
         [("ed25519", "alice-sig"), ("ed25519", "bob-sig"), ("ed25519", "mallory-sig"),
          ("x25519", "zone-enc")]}
    pw_text = password_file_text(tmp_path, USERS)
    files = {
        "passwd": pw_text,
        "sig.toml": '[[topic]]\nfilter = "#"\nkeys = ["%s.pub", "%s.pub"]\n' % (k["alice-sig"], k["bob-sig"]),
        "zone.toml": '[[topic]]\nfilter = "zone/#"\nkeys = ["%s"]\n' % k["zone-enc"],
    }
    # Passwords make authorization deny by default: allow everything, and
    # $SYS (which '#' does not reach) for the counters the tests read.
    b = secure_broker(listeners=LISTENERS, password_file="passwd", files=files,
                      sys_interval=1, audit="audit.jsonl", extra=POLICIES + ALLOW_ALL + SYS_READ)
    return b, k


def test_signature_policy_delivers_bound_signers_and_drops_the_rest(secure_broker, tmp_path):  # noqa: F811
    b, k = make_broker(secure_broker, tmp_path)
    topic, other = "plant/1/cmd", "plant/2/cmd"
    sentinel = "plant/1/done"

    sub = login(b, name="sub")
    assert sub.subscribe([("plant/#", 1)]) == [1]

    # 1. Valid: signed by alice's key, published by alice (mosquitto_pub -f).
    good = seal("sign", k["alice-sig"], topic, b"open valve 3")
    env_file = str(tmp_path / "good.cose")
    with open(env_file, "wb") as f:
        f.write(good)
    r = subprocess.run(["mosquitto_pub", "-h", b.host, "-p", str(b.port), "-u", "alice", "-P",
                        USERS["alice"], "-q", "1", "-t", topic, "-f", env_file],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=scaled(15))
    assert r.returncode == 0, r.stderr
    pub = sub.recv_publish()
    assert (pub.topic, pub.payload) == (topic, good)  # delivered as sealed
    # and it opens for a subscriber holding alice's public key
    opened = moat("open", "--key", k["alice-sig"] + ".pub", "-t", topic, stdin=pub.payload)
    assert opened.returncode == 0 and opened.stdout == b"open valve 3", opened.stderr

    # 2. Valid through paho, signed by bob's key, published by bob.
    import paho.mqtt.client as mqtt
    bob = mqtt.Client(client_id=uniq("bob"), protocol=mqtt.MQTTv311, reconnect_on_failure=False)
    bob.username_pw_set("bob", USERS["bob"])
    bob.connect(b.host, b.port, 30)
    bob.loop_start()
    try:
        by_bob = seal("sign", k["bob-sig"], topic, b"close valve 3")
        info = bob.publish(topic, by_bob, qos=1)
        info.wait_for_publish(scaled(10))
        assert info.is_published()
        pub = sub.recv_publish()
        assert pub.payload == by_bob

        # 3. Dropped, each still PUBACKed (the raw client asserts the PUBACK).
        alice = login(b, "alice")
        tampered = bytearray(seal("sign", k["alice-sig"], topic, b"open valve 4"))
        tampered[tampered.find(b"valve 4")] ^= 0x01
        drops = [
            ("not_sealed", b"open valve 5"),
            ("verification_failed", bytes(tampered)),
            # sealed for plant/2/cmd, published on plant/1/cmd
            ("verification_failed", seal("sign", k["alice-sig"], other, b"open valve 6")),
            ("replayed", good),
            # bob's key: valid, but not bound to alice
            ("signer_not_bound", seal("sign", k["bob-sig"], topic, b"open valve 7")),
            # a key the broker does not know: bound to no one either, which is
            # checked first (an unbound key never reaches the cryptography)
            ("signer_not_bound", seal("sign", k["mallory-sig"], topic, b"open valve 8")),
        ]
        for _, payload in drops:
            alice.publish(topic, payload, qos=1)
        # QoS 2: PUBREC, PUBREL, PUBCOMP complete for a dropped message too.
        alice.publish(topic, b"open valve 9", qos=2)
        # paho at QoS 1: acknowledged as well
        info = bob.publish(topic, b"unsigned from paho", qos=1)
        info.wait_for_publish(scaled(10))
        assert info.is_published(), "paho: dropped message not acknowledged"
        alice.publish(sentinel, b"end", qos=1)
        assert collect_until(sub, sentinel) == []
    finally:
        bob.disconnect()
        bob.loop_stop()

    # Counted in $SYS ...
    sys_sub = login(b, name="sys")
    sys_sub.subscribe([("$SYS/broker/messages/#", 0)])
    wait_sys(sys_sub, "$SYS/broker/messages/dropped/payload_policy", str(len(drops) + 2))
    wait_sys(sys_sub, "$SYS/broker/messages/payload_verified", "2")

    # ... and audited, one line per drop with its reason.
    rejects_ = rejects(b, len(drops) + 2)
    assert sorted(e["failure"] for e in rejects_) == sorted(
        [f for f, _ in drops] + ["not_sealed", "not_sealed"]), rejects_
    by_alice = [e for e in rejects_ if e.get("identity") == "alice"]
    assert len(by_alice) == len(drops) + 1
    for e in rejects_:
        assert e["topic"] == topic and e["action"] == "publish" and e["reason"], e
    unbound = sorted(e["kid"] for e in rejects_ if e["failure"] == "signer_not_bound")
    assert unbound == ["bob-sig", "mallory-sig"]
    assert all(e["mode"] == "sign" for e in rejects_ if e["failure"] != "not_sealed")

    assert b.alive()


def test_anonymous_publisher_cannot_use_a_bound_key(secure_broker, tmp_path):  # noqa: F811
    b, k = make_broker(secure_broker, tmp_path)
    topic = "plant/7/cmd"
    sub = login(b, name="sub")
    sub.subscribe([("plant/#", 1)])
    anon = login(b)
    anon.publish(topic, seal("sign", k["alice-sig"], topic, b"x"), qos=1)
    anon.publish("plant/7/done", b"end", qos=1)
    assert collect_until(sub, "plant/7/done") == []
    assert [e["failure"] for e in rejects(b, 1)] == ["signer_not_bound"]


def test_decrypt_policy_delivers_plaintext(secure_broker, tmp_path):  # noqa: F811
    b, k = make_broker(secure_broker, tmp_path)
    topic = "zone/line-1/temp"
    # mosquitto_sub as the subscriber inside the zone
    argv = ["stdbuf", "-oL", "mosquitto_sub", "-h", b.host, "-p", str(b.port), "-t", "zone/#",
            "-q", "1", "-C", "1", "-W", str(int(scaled(15)) + 1), "-d"]
    sub = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    try:
        lines = []
        deadline = time.monotonic() + scaled(10)
        while time.monotonic() < deadline:
            line = sub.stdout.readline().decode()
            assert line, "mosquitto_sub ended: %s" % lines
            lines.append(line)
            if "Subscribed (mid:" in line:
                break
        env = seal("encrypt-to", k["zone-enc"] + ".pub", topic, b"21.5 C")
        assert b"21.5 C" not in env
        path = str(tmp_path / "zone.cose")
        with open(path, "wb") as f:
            f.write(env)
        r = subprocess.run(["mosquitto_pub", "-h", b.host, "-p", str(b.port), "-q", "1", "-t", topic,
                            "-f", path], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=scaled(15))
        assert r.returncode == 0, r.stderr
        out, _ = sub.communicate(timeout=scaled(20))
        assert sub.returncode == 0, out
        assert "21.5 C" in out.decode().splitlines(), out  # -d: debug lines around the message
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()

    # A plaintext publish on the zone is dropped (it is not an envelope).
    raw_sub = login(b, name="raw-sub")
    raw_sub.subscribe([("zone/#", 1)])
    pub = login(b)
    pub.publish(topic, b"22.0 C", qos=1)
    sealed = seal("encrypt-to", k["zone-enc"] + ".pub", topic, b"22.5 C")
    pub.publish(topic, sealed, qos=1)
    got = raw_sub.recv_publish()
    assert got.payload == b"22.5 C"
    assert [e["failure"] for e in rejects(b, 1)] == ["not_sealed"]


def test_config_errors_name_the_policy_line(tmp_path):
    from conftest import MOATD
    keys = str(tmp_path)
    mac = keygen(keys, "hmac256", "m1")
    (tmp_path / "ring.toml").write_text('[[topic]]\nfilter = "#"\nkeys = ["%s"]\n' % mac)
    conf = tmp_path / "moat.toml"
    conf.write_text('[[listener]]\nname = "l"\nbind = "127.0.0.1:0"\nauth = ["anonymous"]\n\n'
                    '[[payload_policy]]\ntopic = "a/#"\nrequire = "signature"\nkeyring = "ring.toml"\n')
    r = subprocess.run([MOATD, "-c", str(conf), "--check-config"], capture_output=True,
                       timeout=scaled(30))
    assert r.returncode == 2
    assert ("%s:9:11: payload_policy.keyring: %s has no key that verifies signatures" % (
        conf, tmp_path / "ring.toml")) in r.stderr.decode(), r.stderr
    conf.write_text('[[listener]]\nname = "l"\nbind = "127.0.0.1:0"\nauth = ["anonymous"]\n\n'
                    '[[payload_policy]]\ntopic = "a/#"\nrequire = "sgnature"\nkeyring = "ring.toml"\n')
    r = subprocess.run([MOATD, "-c", str(conf), "--check-config"], capture_output=True,
                       timeout=scaled(30))
    assert r.returncode == 2
    assert "%s:8:11: payload_policy[0].require:" % conf in r.stderr.decode(), r.stderr


# ================================================================ moat pub --seal, moat sub --open

def moat_sub_open(b, filt, keyring, count, *extra):
    """`moat sub --open` running until `count` messages are printed (or 20 s);
    returns the Popen once its subscription is acknowledged."""
    from test_payload import MOAT
    argv = [MOAT, "sub", "-h", b.host, "-p", str(b.port), "-t", filt, "-v", "-q", "1", "-d",
            "--open", "--keyring", keyring, "-C", str(count), "-W", str(int(scaled(20)))] + list(extra)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    deadline = time.monotonic() + scaled(10)
    while time.monotonic() < deadline:
        line = p.stderr.readline().decode()
        assert line, "moat sub ended before subscribing: %s" % seen
        seen.append(line)
        if "subscribed to" in line:
            return p
    p.kill()
    p.wait()
    raise AssertionError("moat sub: no subscription: %s" % seen)


def moat_pub(b, topic, *args, stdin=b""):
    r = moat("pub", "-h", b.host, "-p", str(b.port), "-t", topic, "-q", "1", *args, stdin=stdin)
    return r


def test_cli_pub_seal_and_sub_open(start_broker, tmp_path):
    b = start_broker()
    d = str(tmp_path)
    sig = keygen(d, "ed25519", "dev-sig")
    mac = keygen(d, "hmac256", "line-mac")
    other = keygen(d, "ed25519", "other-sig")
    enc = keygen(d, "x25519", "ops-enc")
    pub_ring = os.path.join(d, "pub.toml")
    with open(pub_ring, "w") as f:
        f.write('[[topic]]\nfilter = "cmd/#"\nkeys = ["%s"]\nseal = "sign"\n\n'
                '[[topic]]\nfilter = "line/#"\nkeys = ["%s"]\n\n'
                '[[topic]]\nfilter = "ops/#"\nkeys = ["%s.pub"]\n' % (sig, mac, enc))
    sub_ring = os.path.join(d, "sub.toml")
    with open(sub_ring, "w") as f:
        f.write('[[topic]]\nfilter = "cmd/#"\nkeys = ["%s.pub"]\n\n'
                '[[topic]]\nfilter = "line/#"\nkeys = ["%s"]\n\n'
                '[[topic]]\nfilter = "ops/#"\nkeys = ["%s"]\n' % (sig, mac, enc))

    sub = moat_sub_open(b, "#", sub_ring, 5)
    try:
        # good ones: the keyring's seal mode (sign), --seal mac, --seal encrypt-to, -l lines
        assert moat_pub(b, "cmd/1", "-m", "start", "--keyring", pub_ring).returncode == 0
        r = moat_pub(b, "line/1", "-m", "42", "--seal", "mac", "--keyring", pub_ring)
        assert r.returncode == 0, r.stderr
        r = moat_pub(b, "ops/1", "-m", "secret", "--seal", "encrypt-to", "--keyring", pub_ring)
        assert r.returncode == 0, r.stderr

        # bad ones, sent raw so the test controls the bytes
        raw = login(b)
        good = seal("sign", sig, "cmd/1", b"stop")
        tampered = bytearray(good)
        tampered[tampered.find(b"stop")] ^= 0x20
        raw.publish("cmd/1", bytes(tampered), qos=1)                                 # tampered
        raw.publish("cmd/2", seal("sign", sig, "cmd/1", b"moved"), qos=1)            # wrong topic
        raw.publish("cmd/1", seal("sign", other, "cmd/1", b"intruder"), qos=1)       # unknown key
        raw.publish("cmd/1", b"not an envelope", qos=1)                              # malformed
        raw.publish("cmd/1", good, qos=1)
        raw.publish("cmd/1", good, qos=1)                                            # replayed
        r = moat_pub(b, "line/2", "-l", "--seal", "mac", "--keyring", pub_ring, stdin=b"a\n")
        assert r.returncode == 0, r.stderr
        out, err = sub.communicate(timeout=scaled(30))
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, err
    # Separate connections may be routed through different broker threads: no order among them.
    assert sorted(out.decode().splitlines()) == sorted(
        ["cmd/1 start", "line/1 42", "ops/1 secret", "cmd/1 stop", "line/2 a"])
    errors = [line for line in err.decode().splitlines() if line.startswith("moat sub: '")]
    assert len(errors) == 5, err
    assert errors[0].startswith("moat sub: 'cmd/1': verification failed"), errors
    assert errors[1].startswith("moat sub: 'cmd/2': verification failed"), errors
    assert errors[2].startswith("moat sub: 'cmd/1': unknown key"), errors
    assert errors[3].startswith("moat sub: 'cmd/1': malformed"), errors
    assert errors[4].startswith("moat sub: 'cmd/1': replayed"), errors
    assert b"intruder" not in out and b"moved" not in out


def test_cli_seal_usage_errors(start_broker, tmp_path):
    b = start_broker()
    d = str(tmp_path)
    pubkey = keygen(d, "ed25519", "k") + ".pub"
    ring = os.path.join(d, "ring.toml")
    with open(ring, "w") as f:
        f.write('[[topic]]\nfilter = "a/#"\nkeys = ["%s"]\n' % pubkey)
    r = moat_pub(b, "a/1", "-m", "x", "--seal", "sign")
    assert r.returncode == 1 and b"--seal needs --keyring FILE" in r.stderr
    r = moat_pub(b, "a/1", "-m", "x", "--keyring", ring)
    assert r.returncode == 1 and b"names no seal mode for 'a/1'" in r.stderr, r.stderr
    r = moat_pub(b, "a/1", "-m", "x", "--seal", "sign", "--keyring", ring)
    assert r.returncode == 1 and b"signing needs a private key" in r.stderr, r.stderr
    r = moat("sub", "-h", b.host, "-p", str(b.port), "-t", "a/#", "--open")
    assert r.returncode == 1 and b"--open needs --keyring FILE" in r.stderr, r.stderr


def test_cli_pub_seal_passes_the_broker_policy(secure_broker, tmp_path):  # noqa: F811
    b, k = make_broker(secure_broker, tmp_path)
    ring = str(tmp_path / "alice.toml")
    with open(ring, "w") as f:
        f.write('[[topic]]\nfilter = "plant/#"\nkeys = ["%s"]\nseal = "sign"\n' % k["alice-sig"])
    sub = login(b, name="sub")
    sub.subscribe([("plant/#", 1)])
    r = moat_pub(b, "plant/3/cmd", "-u", "alice", "-P", USERS["alice"], "-m", "go", "--keyring", ring)
    assert r.returncode == 0, r.stderr
    pub = sub.recv_publish()
    assert pub.topic == "plant/3/cmd"
    opened = moat("open", "--key", k["alice-sig"] + ".pub", "-t", pub.topic, stdin=pub.payload)
    assert opened.returncode == 0 and opened.stdout == b"go", opened.stderr


def test_bench_seal_sign_through_a_signature_policy(secure_broker, tmp_path):  # noqa: F811
    """`moat bench --seal sign` (docs/benchmarks.md): every message verifies at
    the broker, none is lost."""
    from test_payload import MOAT
    d = str(tmp_path)
    key = keygen(d, "ed25519", "bench-sig")
    with open(os.path.join(d, "pub.toml"), "w") as f:
        f.write('[[topic]]\nfilter = "#"\nkeys = ["%s"]\n' % key)
    files = {"ring.toml": '[[topic]]\nfilter = "#"\nkeys = ["%s.pub"]\n' % key}
    b = secure_broker(listeners=[{"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp",
                                  "auth": ["anonymous"]}], files=files,
                      extra='[[payload_policy]]\ntopic = "moat-bench/#"\nrequire = "signature"\n'
                            'keyring = "ring.toml"\n')
    p = subprocess.run([MOAT, "bench", "pairs", "-n", "2", "-q", "1", "-d", "1", "-w", "0", "--rate", "500",
                        "--seal", "sign", "--keyring", os.path.join(d, "pub.toml"), "-h", b.host,
                        "-p", str(b.port), "--json", "--quiet"], capture_output=True, timeout=scaled(60))
    assert p.returncode == 0, p.stderr.decode()
    r = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert r["ok"] and r["delivered"] > 0 and r["lost"] == 0, r
    assert not b.find_log("refused by the payload policy")


def test_will_on_a_policed_topic_must_satisfy_the_policy(secure_broker, tmp_path):  # noqa: F811
    b, k = make_broker(secure_broker, tmp_path)
    topic = "plant/5/cmd"
    c = mqttraw.Client(b.host, b.port, timeout=scaled(10), name="will-plain")
    c.connect(uniq("w"), username="alice", password=USERS["alice"], will_topic=topic,
              will_payload=b"unsigned last words", expect_rc=5)
    c.close()
    # A signed will from the bound publisher is accepted, and published on loss.
    sub = login(b, name="sub")
    sub.subscribe([("plant/#", 1)])
    will = seal("sign", k["alice-sig"], topic, b"signed last words")
    c = mqttraw.Client(b.host, b.port, timeout=scaled(10), name="will-signed")
    c.connect(uniq("w"), username="alice", password=USERS["alice"], will_topic=topic, will_payload=will,
              will_qos=1)
    c.abort()
    pub = sub.recv_publish()
    assert (pub.topic, pub.payload) == (topic, will)
    assert [(e["action"], e["failure"]) for e in rejects(b, 1)] == [("will", "not_sealed")]
