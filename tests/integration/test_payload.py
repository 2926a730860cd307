"""Payload envelopes from the command line: `moat keygen`, `moat seal`, `moat open`
(see docs/cli.md and docs/payload-security.md), and interoperability with an
independent COSE implementation, npm's cose-js (tests/interop/node), in both
directions for COSE_Encrypt0, COSE_Mac0 and COSE_Sign1.

Environment:
  MOAT   path of the moat binary (default: the moat next to $MOATD, else
         <repo>/build/apps/moat/moat)
"""

import json
import os
import shutil
import stat
import subprocess

import pytest

from conftest import MOATD, REPO
from util import scaled

NODE_DIR = os.path.join(REPO, "tests", "interop", "node")
VECTORS = os.path.join(os.path.dirname(REPO), "shared", "vectors")

# Exit statuses of `moat open` (apps/moat/payload.hpp, docs/cli.md).
USAGE = 1
VERIFICATION_FAILED = 10
REPLAYED = 11
STALE = 12
UNKNOWN_KEY = 13
MALFORMED = 14
WRONG_ALGORITHM = 15
NOT_FRESH = 16
UNSUPPORTED = 17


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


def moat(*args, stdin=b""):
    return subprocess.run([MOAT, *args], input=stdin, capture_output=True, timeout=scaled(60))


def keygen(tmp_path, kind, kid, use=None):
    path = str(tmp_path / (kid + ".jwk"))
    extra = ["--use", use] if use else []
    r = moat("keygen", "--kind", kind, "--kid", kid, "-o", path, *extra)
    assert r.returncode == 0, r.stderr
    return path


def seal(mode, key, topic, payload, *extra):
    args = ["seal", "--mode", mode, "-t", topic, *extra]
    if key:
        args += ["--key", key]
    r = moat(*args, stdin=payload)
    assert r.returncode == 0, r.stderr
    return r.stdout


def open_(key, topic, envelope, *extra):
    args = ["open", "-t", topic, *extra]
    if key:
        args += ["--key", key]
    return moat(*args, stdin=envelope)


def assert_refused(r, status, reason):
    """One line on stderr naming the failure class, the class's own exit status,
    and nothing on stdout."""
    assert r.returncode == status, (r.returncode, r.stderr)
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("moat open: " + reason), lines[0]
    assert r.stdout == b""


# (mode, key kind, keygen --use) for every algorithm Moat seals with.
MODES = [
    ("encrypt", "aes256", None),
    ("encrypt", "chacha20", None),
    ("encrypt-to", "x25519", None),
    ("encrypt-to", "p256", "enc"),
    ("mac", "hmac256", None),
    ("sign", "ed25519", None),
    ("sign", "p256", None),
]


def test_keygen_writes_jwk_files_with_their_modes(tmp_path):
    expect = {
        "aes256": ("oct", None, "A256GCM"),
        "chacha20": ("oct", None, "ChaCha20/Poly1305"),
        "hmac256": ("oct", None, "HS256"),
        "ed25519": ("OKP", "Ed25519", "EdDSA"),
        "x25519": ("OKP", "X25519", "ECDH-ES+HKDF-256"),
        "p256": ("EC", "P-256", "ES256"),
    }
    for kind, (kty, crv, alg) in expect.items():
        path = keygen(tmp_path, kind, "k-" + kind)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        jwk = json.load(open(path))
        assert (jwk["kty"], jwk.get("crv"), jwk["alg"], jwk["kid"]) == (kty, crv, alg, "k-" + kind)
        assert ("k" in jwk) == (kty == "oct") and ("d" in jwk) == (kty != "oct")
        if kty == "oct":
            assert not os.path.exists(path + ".pub")
        else:
            assert stat.S_IMODE(os.stat(path + ".pub").st_mode) == 0o644
            pub = json.load(open(path + ".pub"))
            assert "d" not in pub and pub["x"] == jwk["x"] and pub["kid"] == jwk["kid"]
    # An existing key is never replaced without --force.
    path = str(tmp_path / "k-aes256.jwk")
    before = open(path).read()
    r = moat("keygen", "--kind", "aes256", "--kid", "again", "-o", path)
    assert r.returncode == USAGE and b"exists" in r.stderr, r.stderr
    assert open(path).read() == before
    r = moat("keygen", "--kind", "aes256", "--kid", "again", "-o", path, "--force")
    assert r.returncode == 0 and json.load(open(path))["kid"] == "again"
    r = moat("keygen", "--kind", "rsa", "--kid", "x", "-o", str(tmp_path / "x"))
    assert r.returncode == USAGE and b"unknown --kind" in r.stderr


@pytest.mark.parametrize("mode,kind,use", MODES, ids=["%s-%s" % (m, k) for m, k, _ in MODES])
def test_every_mode_round_trips(tmp_path, mode, kind, use):
    key = keygen(tmp_path, kind, "k", use)
    # The sender of encrypt-to needs only the public key, the verifier of sign too.
    seal_key = key + ".pub" if mode == "encrypt-to" else key
    open_key = key + ".pub" if mode == "sign" else key
    for payload in (b"", b"hello", bytes(range(256)) * 256):
        env = seal(mode, seal_key, "plant/7/cmd", payload)
        r = open_(open_key, "plant/7/cmd", env, "--require-fresh")
        assert r.returncode == 0, r.stderr
        assert r.stdout == payload
    # The payload of an encrypting mode is not in the envelope.
    env = seal(mode, seal_key, "plant/7/cmd", b"the secret phrase")
    assert (b"the secret phrase" in env) == (mode in ("mac", "sign"))


def test_each_failure_has_its_exit_status(tmp_path):
    key = keygen(tmp_path, "hmac256", "mac-key")
    env = seal("mac", key, "plant/7/cmd", b"open valve 3")

    # Tampered: a flipped bit in the payload, the tag, or the protected header
    # (its last byte: the timestamp). The envelope starts d1 84 58 LEN: tag 17,
    # array(4), the protected bstr.
    assert env[:3] == b"\xd1\x84\x58"
    i = env.index(b"open valve 3")
    for at in (i, len(env) - 1, 4 + env[3] - 1):
        bad = bytearray(env)
        bad[at] ^= 0x01
        assert_refused(open_(key, "plant/7/cmd", bytes(bad)), VERIFICATION_FAILED, "verification failed")
    # Moved to another topic.
    assert_refused(open_(key, "plant/8/cmd", env), VERIFICATION_FAILED, "verification failed")
    # Replayed: the receiver keeps its windows in a state file between runs.
    state = str(tmp_path / "replay.json")
    r = open_(key, "plant/7/cmd", env, "--replay-state", state)
    assert r.returncode == 0 and r.stdout == b"open valve 3", r.stderr
    assert_refused(open_(key, "plant/7/cmd", env, "--replay-state", state), REPLAYED, "replayed")
    later = seal("mac", key, "plant/7/cmd", b"close valve 3")
    assert open_(key, "plant/7/cmd", later, "--replay-state", state).returncode == 0
    # Stale: judged 301 s after sealing (the default maximum age is 300 s), and
    # from the future.
    r = open_(key, "plant/7/cmd", env, "-v")
    iat = int(r.stderr.decode().split("iat=")[1].split()[0])
    assert_refused(open_(key, "plant/7/cmd", env, "--now", str(iat + 301)), STALE, "stale")
    assert open_(key, "plant/7/cmd", env, "--now", str(iat + 299)).returncode == 0
    assert_refused(open_(key, "plant/7/cmd", env, "--now", str(iat + 30), "--max-age", "10"), STALE, "stale")
    assert_refused(open_(key, "plant/7/cmd", env, "--now", str(iat - 120)), STALE, "stale")
    # Unknown key: another key id.
    other = keygen(tmp_path, "hmac256", "other-key")
    assert_refused(open_(other, "plant/7/cmd", env), UNKNOWN_KEY, "unknown key")
    # Wrong key with the right id: verification fails.
    same_id = str(tmp_path / "same.jwk")
    assert moat("keygen", "--kind", "hmac256", "--kid", "mac-key", "-o", same_id).returncode == 0
    assert_refused(open_(same_id, "plant/7/cmd", env), VERIFICATION_FAILED, "verification failed")
    # Wrong algorithm: a signing key with the envelope's key id.
    signer = str(tmp_path / "signer.jwk")
    assert moat("keygen", "--kind", "ed25519", "--kid", "mac-key", "-o", signer).returncode == 0
    assert_refused(open_(signer, "plant/7/cmd", env), WRONG_ALGORITHM, "wrong algorithm")
    # Malformed: truncated, empty, trailing bytes, not CBOR at all.
    assert_refused(open_(key, "plant/7/cmd", env[:-1]), MALFORMED, "malformed")
    assert_refused(open_(key, "plant/7/cmd", b""), MALFORMED, "malformed")
    assert_refused(open_(key, "plant/7/cmd", env + b"\x00"), MALFORMED, "malformed")
    assert_refused(open_(key, "plant/7/cmd", b"open valve 3"), MALFORMED, "malformed")
    # Not fresh: no replay headers, and freshness required.
    bare = seal("mac", key, "plant/7/cmd", b"x", "--no-replay-headers")
    assert open_(key, "plant/7/cmd", bare).returncode == 0
    assert_refused(open_(key, "plant/7/cmd", bare, "--require-fresh"), NOT_FRESH, "not fresh")
    # Unsupported: a COSE_Mac (tag 97) from the COSE working group's examples.
    example = json.load(open(os.path.join(VECTORS, "cose-examples", "hmac-examples", "HMac-01.json")))
    assert_refused(open_(key, "plant/7/cmd", bytes.fromhex(example["output"]["cbor"])), UNSUPPORTED, "unsupported")


def test_a_private_key_others_can_read_is_refused(tmp_path):
    key = keygen(tmp_path, "ed25519", "s")
    os.chmod(key, 0o644)
    r = moat("seal", "--mode", "sign", "--key", key, "-t", "a", stdin=b"x")
    assert r.returncode == USAGE
    assert b"mode 0644" in r.stderr and b"chmod 600" in r.stderr, r.stderr
    r = open_(key, "a", b"x")
    assert r.returncode == USAGE and b"chmod 600" in r.stderr
    # The public half is meant to be shared.
    os.chmod(key, 0o600)
    env = seal("sign", key, "a", b"x")
    os.chmod(key + ".pub", 0o666)
    assert open_(key + ".pub", "a", env).returncode == 0


def test_encrypt_to_needs_the_private_key_to_open(tmp_path):
    key = keygen(tmp_path, "x25519", "rx")
    env = seal("encrypt-to", key + ".pub", "a/b", b"for your eyes")
    assert_refused(open_(key + ".pub", "a/b", env), WRONG_ALGORITHM, "wrong algorithm")
    r = open_(key, "a/b", env)
    assert r.returncode == 0 and r.stdout == b"for your eyes"
    # Each envelope has its own ephemeral key, and a replay repeats it.
    state = str(tmp_path / "state")
    assert open_(key, "a/b", env, "--replay-state", state).returncode == 0
    assert_refused(open_(key, "a/b", env, "--replay-state", state), REPLAYED, "replayed")
    env2 = seal("encrypt-to", key + ".pub", "a/b", b"for your eyes", "--alg", "ChaCha20/Poly1305")
    assert open_(key, "a/b", env2, "--replay-state", state).returncode == 0


def test_digest_envelopes_need_no_key_and_are_never_taken_for_authenticated(tmp_path):
    env = seal("digest", None, "meter/1", b"reading 42")
    r = open_(None, "meter/1", env, "--digest")
    assert r.returncode == 0 and r.stdout == b"reading 42", r.stderr
    bad = bytearray(env)
    bad[bad.index(b"reading")] ^= 0x01
    assert_refused(open_(None, "meter/1", bytes(bad), "--digest"), VERIFICATION_FAILED, "verification failed")
    assert_refused(open_(None, "meter/2", env, "--digest"), VERIFICATION_FAILED, "verification failed")
    # A receiver with a key does not accept a digest in place of a MAC.
    key = keygen(tmp_path, "hmac256", "m")
    assert_refused(open_(key, "meter/1", env), WRONG_ALGORITHM, "wrong algorithm")


def test_keyring_maps_topics_to_keys_and_rotates(tmp_path):
    new = keygen(tmp_path, "ed25519", "cmd-2025")
    old = keygen(tmp_path, "ed25519", "cmd-2024")
    tele = keygen(tmp_path, "chacha20", "telemetry")
    ring = tmp_path / "keys.toml"
    ring.write_text(
        '[[topic]]\nfilter = "plant/+/cmd"\nkeys = ["cmd-2025.jwk", "cmd-2024.jwk"]\n\n'
        '[[topic]]\nfilter = "plant/+/temp"\nkeys = ["telemetry.jwk"]\n')
    r = moat("seal", "--mode", "sign", "--keyring", str(ring), "-t", "plant/1/cmd", stdin=b"go")
    assert r.returncode == 0, r.stderr
    r = moat("open", "--keyring", str(ring), "-t", "plant/1/cmd", "-v", stdin=r.stdout)
    assert r.returncode == 0 and r.stdout == b"go" and b"kid='cmd-2025'" in r.stderr, r.stderr
    # An envelope of the previous key opens through the keyring.
    r = moat("open", "--keyring", str(ring), "-t", "plant/1/cmd", stdin=seal("sign", old, "plant/1/cmd", b"old"))
    assert r.returncode == 0 and r.stdout == b"old", r.stderr
    r = moat("seal", "--mode", "encrypt", "--keyring", str(ring), "-t", "plant/1/temp", stdin=b"21.5")
    assert r.returncode == 0
    env = r.stdout
    r = moat("open", "--keyring", str(ring), "-t", "plant/1/temp", stdin=env)
    assert r.returncode == 0 and r.stdout == b"21.5"
    assert_refused(moat("open", "--keyring", str(ring), "-t", "office/1", stdin=env), UNKNOWN_KEY, "unknown key")
    # Errors in the keyring file name file, line, column and key.
    ring.write_text('[[topic]]\nfilter = "a"\nkeys = ["cmd-2025.jwk"]\nrequire_freshness = true\n')
    r = moat("open", "--keyring", str(ring), "-t", "a", stdin=env)
    assert r.returncode == USAGE
    assert (str(ring) + ":4:21: topic.require_freshness: unknown key").encode() in r.stderr, r.stderr
    assert new and tele


# ---- interoperability with cose-js ----

@pytest.fixture(scope="module")
def cose_js():
    node = shutil.which("node")
    assert node, "node is needed for the interoperability test (scripts/install-deps installs it)"
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "cose-js")):
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                           timeout=scaled(300))
        assert r.returncode == 0, r.stderr
    return [node, os.path.join(NODE_DIR, "cose_interop.js")]


def node(cose_js, op, kind, key, topic, data):
    return subprocess.run([*cose_js, op, kind, key, topic], input=data, capture_output=True, timeout=scaled(60))


# cose-js 0.9.0 implements A256GCM, HMAC 256/256 and ES256 of Moat's algorithms
# (not ChaCha20/Poly1305, EdDSA, or ECDH-ES recipients when reading).
INTEROP = [("encrypt0", "encrypt", "aes256", None), ("mac0", "mac", "hmac256", None),
           ("sign1", "sign", "p256", None)]


@pytest.mark.parametrize("kind,mode,keykind,use", INTEROP, ids=[i[0] for i in INTEROP])
def test_cose_js_seals_and_moat_opens(tmp_path, cose_js, kind, mode, keykind, use):
    key = keygen(tmp_path, keykind, "interop-" + kind, use)
    payload = b"from cose-js \x00\xff" + bytes(range(200))
    r = node(cose_js, "seal", kind, key, "plant/7/cmd", payload)
    assert r.returncode == 0, r.stderr
    env = r.stdout
    verifier = key + ".pub" if mode == "sign" else key
    r = open_(verifier, "plant/7/cmd", env, "-v")
    assert r.returncode == 0, r.stderr
    assert r.stdout == payload
    # cose-js writes no replay headers: it opens, unless freshness is required.
    assert b"seq=none iat=none" in r.stderr
    assert_refused(open_(verifier, "plant/7/cmd", env, "--require-fresh"), NOT_FRESH, "not fresh")
    assert_refused(open_(verifier, "plant/8/cmd", env), VERIFICATION_FAILED, "verification failed")


@pytest.mark.parametrize("kind,mode,keykind,use", INTEROP, ids=[i[0] for i in INTEROP])
def test_moat_seals_and_cose_js_opens(tmp_path, cose_js, kind, mode, keykind, use):
    key = keygen(tmp_path, keykind, "interop-" + kind, use)
    payload = b"from moat \x00\xff" + bytes(range(200))
    env = seal(mode, key, "plant/7/cmd", payload)
    verifier = key + ".pub" if mode == "sign" else key
    r = node(cose_js, "open", kind, verifier, "plant/7/cmd", env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == payload
    # The topic is the external AAD for cose-js too.
    r = node(cose_js, "open", kind, verifier, "plant/8/cmd", env)
    assert r.returncode == 1 and b"refused" in r.stderr, r.stderr
    bad = bytearray(env)
    bad[-1] ^= 0x01
    r = node(cose_js, "open", kind, verifier, "plant/7/cmd", bytes(bad))
    assert r.returncode == 1, r.stderr
