"""Password authentication, `moat passwd` and ACLs, end to end (docs/security.md).

The brokers here need [auth.password] and [acl] sections, which the conftest
fixture cannot write: `secure_broker` (pki.py) writes the whole moat.toml.
Password files are written with Debian's mosquitto_passwd ($7$ PBKDF2-SHA512,
$6$ SHA-512) and with `moat passwd` (argon2id).

Absence of a delivery is proven without sleeping: the thing that must not
arrive is followed by a sentinel on the same publishing connection (MQTT keeps
a connection's messages in order), and the subscriber collects until the
sentinel. The one exception is $SYS, whose messages the broker publishes on
its own timer: there the test waits a fixed 2.5 s (sys_interval is 1 s)."""

import os
import pty
import queue
import select
import signal
import stat
import subprocess
import time

import pytest

import mqttraw
from pki import ALLOW_ALL, MOAT, mosquitto_passwd, password_file_text, run_pub, secure_broker  # noqa: F401 (fixture)
from util import LineProc, collect_until, scaled, uniq

# threaded: the worker pool for password hashes and TLS sessions moving between
# event loops run under TSan too.
pytestmark = [pytest.mark.moat_only, pytest.mark.threaded]

# user -> password; the file is written by mosquitto_passwd (module fixture).
USERS = {
    "alice": "alice-pw",
    "bob": "bob pw with spaces",
    "watcher": "watcher-pw",
    "writer": "writer-pw",
    "reader": "reader-pw",
    "everything": "everything-pw",
    "sysreader": "sysreader-pw",
    "dev1": "dev1-pw",
    "dev2": "dev2-pw",
}

BAD_CREDENTIALS = 4  # CONNACK "bad user name or password"
NOT_AUTHORIZED = 5   # CONNACK "not authorized"

PASSWORD_ONLY = [{"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp",
                  "auth": ["password"]}]
PASSWORD_THEN_ANON = [{"name": "plain", "bind": "127.0.0.1:0", "transport": "tcp",
                       "auth": ["password", "anonymous"]}]

ACL = """\
# anonymous clients
topic read public/#

user alice
topic write alice/out/#
topic readwrite alice/in/#
topic write alice/will

user watcher
topic read #

user writer
topic write #

user reader
topic read #
topic deny private/#

user everything
topic read #

user sysreader
topic read $SYS/#

pattern readwrite devices/%u/#
pattern read clients/%c/inbox
"""


@pytest.fixture(scope="module")
def passwd_text(tmp_path_factory):
    """A password file written by Debian's mosquitto_passwd -c -b / -b."""
    return password_file_text(tmp_path_factory.mktemp("passwd"), USERS)


def moat_cli(*args, stdin=b"", timeout=30):
    if not (os.path.isfile(MOAT) and os.access(MOAT, os.X_OK)):
        pytest.skip("moat binary not found at %s (set MOAT)" % MOAT)
    return subprocess.run([MOAT] + [str(a) for a in args], input=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=scaled(timeout))


def connack_rc(ep, client_id=None, name="raw", **kw):
    """Raw CONNECT; returns the CONNACK return code (the connection is closed)."""
    with mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name=name) as c:
        c.send(mqttraw.connect(client_id if client_id is not None else uniq("c"), **kw))
        pkt = c.expect(mqttraw.CONNACK)
        return mqttraw.decode_connack(pkt)[1]


def login(ep, user=None, client_id=None, **kw):
    """Connected raw client with the password of `user` from USERS (or anonymous)."""
    c = mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name=user or client_id or "anon")
    if user is not None:
        kw.setdefault("username", user)
        kw.setdefault("password", USERS[user])
    c.connect(client_id if client_id is not None else uniq(user or "anon"), **kw)
    return c


def paho_rc(ep, username=None, password=None):
    """CONNACK return code seen by paho-mqtt (MQTT 3.1.1)."""
    import paho.mqtt.client as mqtt
    c = mqtt.Client(client_id=uniq("paho"), protocol=mqtt.MQTTv311, reconnect_on_failure=False)
    if username is not None:
        c.username_pw_set(username, password)
    result = queue.Queue()
    c.on_connect = lambda cl, u, flags, rc: result.put(rc)
    c.connect(ep.host, ep.port, 30)
    c.loop_start()
    try:
        return result.get(timeout=scaled(10))
    except queue.Empty:
        raise AssertionError("paho: no CONNACK within %.1fs" % scaled(10))
    finally:
        c.disconnect()
        c.loop_stop()


def password_broker(secure_broker, text, listeners=PASSWORD_ONLY, **kw):
    return secure_broker(listeners=listeners, password_file="passwd", files={"passwd": text}, **kw)


def acl_broker(secure_broker, passwd_text, **kw):
    return secure_broker(listeners=PASSWORD_THEN_ANON, password_file="passwd",
                         files={"passwd": passwd_text}, acl_text=ACL, **kw)


def ep_of(b):
    return b.endpoints["plain"]


# ================================================================ passwords

def test_mosquitto_clients_right_and_wrong_password(secure_broker, passwd_text):
    b = password_broker(secure_broker, passwd_text, extra=ALLOW_ALL)
    ep = ep_of(b)
    topic = uniq("pw/")
    sub = mosquitto_sub_auth(ep, topic, "alice", USERS["alice"])
    try:
        # A password with spaces, from a $7$ entry.
        rc, out = run_pub(ep, topic, "hello", ["-u", "bob", "-P", USERS["bob"]])
        assert rc == 0, "right password refused (exit %d):\n%s" % (rc, out)
        sub.wait_line("%s hello" % topic)
        assert sub.wait_exit() == 0, sub.output()
    finally:
        sub.kill()

    rc, out = run_pub(ep, topic, "x", ["-u", "bob", "-P", "wrong"])
    assert rc != 0, "wrong password accepted:\n" + out
    assert "Connection Refused: bad user name or password" in out, out

    rc, out = run_pub(ep, topic, "x", ["-u", "mallory", "-P", "whatever"])
    assert rc != 0, "unknown user accepted:\n" + out
    assert "Connection Refused: bad user name or password" in out, out

    r = subprocess.run(["mosquitto_sub", "-h", ep.host, "-p", str(ep.port), "-t", topic,
                        "-u", "alice", "-P", "alice-PW", "-W", str(int(scaled(5)) + 1)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=scaled(15))
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode != 0, "mosquitto_sub with a wrong password succeeded:\n" + out
    assert "Connection Refused: bad user name or password" in out, out

    # No user name on a password-only listener: nothing admits it (CONNACK 5).
    rc, out = run_pub(ep, topic, "x")
    assert rc != 0, "anonymous client admitted by auth = [\"password\"]:\n" + out
    assert "Connection Refused: not authorised" in out, out
    assert b.alive()


def mosquitto_sub_auth(ep, topic, user, password):
    argv = ["stdbuf", "-oL", "mosquitto_sub", "-d", "-v", "-h", ep.host, "-p", str(ep.port),
            "-t", topic, "-q", "1", "-C", "1", "-W", str(int(scaled(10)) + 1),
            "-u", user, "-P", password]
    p = LineProc(argv)
    p.wait_line("Subscribed (mid:")
    return p


def test_paho_return_codes(secure_broker, passwd_text):
    ep = ep_of(password_broker(secure_broker, passwd_text))
    assert paho_rc(ep, "alice", USERS["alice"]) == 0
    assert paho_rc(ep, "alice", "not-the-password") == BAD_CREDENTIALS
    assert paho_rc(ep, "alice", "") == BAD_CREDENTIALS
    assert paho_rc(ep, "nobody", "alice-pw") == BAD_CREDENTIALS
    assert paho_rc(ep, "alice", None) == BAD_CREDENTIALS  # user name without password
    assert paho_rc(ep) == NOT_AUTHORIZED                  # no user name: end of the chain


def test_raw_connect_return_codes(secure_broker, passwd_text):
    ep = ep_of(password_broker(secure_broker, passwd_text))
    assert connack_rc(ep, username="dev1", password="dev1-pw") == 0
    assert connack_rc(ep, username="dev1", password="dev2-pw") == BAD_CREDENTIALS
    assert connack_rc(ep, username="Dev1", password="dev1-pw") == BAD_CREDENTIALS
    # Not truncated at a NUL. ("dev1-pw\0" alone would match: PBKDF2's HMAC pads
    # its key with zeros, so trailing NULs are equivalent for $7$ entries.)
    assert connack_rc(ep, username="dev1", password="dev1-pw\0x") == BAD_CREDENTIALS
    assert connack_rc(ep, username="dev1", password="dev1-p") == BAD_CREDENTIALS
    assert connack_rc(ep) == NOT_AUTHORIZED


def test_password_then_anonymous(secure_broker, passwd_text):
    ep = ep_of(password_broker(secure_broker, passwd_text, listeners=PASSWORD_THEN_ANON))
    assert connack_rc(ep) == 0, "no user name must fall through to anonymous"
    assert paho_rc(ep) == 0
    assert connack_rc(ep, username="alice", password=USERS["alice"]) == 0
    # A user name with a wrong password is refused, not passed on to anonymous.
    assert connack_rc(ep, username="alice", password="wrong") == BAD_CREDENTIALS
    assert connack_rc(ep, username="ghost", password="x") == BAD_CREDENTIALS
    rc, out = run_pub(ep, "t", "x", ["-u", "alice", "-P", "wrong"])
    assert rc != 0 and "bad user name or password" in out, out


def test_mosquitto_passwd_formats(secure_broker, tmp_path):
    """Files written by Debian's mosquitto_passwd: default $7$ and -H sha512 ($6$)."""
    path = str(tmp_path / "mp")
    mosquitto_passwd("-c", "-b", path, "pbkdf2-user", "p1")
    mosquitto_passwd("-H", "sha512", "-b", path, "sha512-user", "p2")
    text = open(path).read()
    assert "pbkdf2-user:$7$" in text and "sha512-user:$6$" in text, text
    ep = ep_of(password_broker(secure_broker, text))
    assert paho_rc(ep, "pbkdf2-user", "p1") == 0
    assert paho_rc(ep, "sha512-user", "p2") == 0
    assert paho_rc(ep, "pbkdf2-user", "p2") == BAD_CREDENTIALS
    assert paho_rc(ep, "sha512-user", "p1") == BAD_CREDENTIALS


def test_password_file_per_listener(secure_broker, tmp_path):
    """[listener.password] replaces [auth.password] on its listener only; each
    file is reloaded on SIGHUP (Mosquitto's per_listener_settings password_file)."""
    plant = tmp_path / "plant"
    plant.mkdir()
    plant_text = password_file_text(plant, {"plant-user": "plant-pw"})
    office_text = password_file_text(tmp_path, {"office-user": "office-pw"})
    listeners = [
        {"name": "plant", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["password"],
         "raw": '[listener.password]\nfile = "plant.passwd"'},
        {"name": "office", "bind": "127.0.0.1:0", "transport": "tcp", "auth": ["password"]},
    ]
    b = secure_broker(listeners=listeners, password_file="passwd",
                      files={"passwd": office_text, "plant.passwd": plant_text}, extra=ALLOW_ALL)
    on_plant, on_office = b.endpoints["plant"], b.endpoints["office"]
    assert connack_rc(on_plant, username="plant-user", password="plant-pw") == 0
    assert connack_rc(on_plant, username="office-user", password="office-pw") == BAD_CREDENTIALS
    assert connack_rc(on_office, username="office-user", password="office-pw") == 0
    assert connack_rc(on_office, username="plant-user", password="plant-pw") == BAD_CREDENTIALS

    mosquitto_passwd("-b", b.workdir / "plant.passwd", "plant-2", "pw-2")
    mark = b.log_mark()
    os.kill(b.pid, signal.SIGHUP)
    b.wait_for_log(r"reload: \S*plant\.passwd \(2 users\)", since=mark)
    b.wait_for_log(r"reload: \S*/passwd \(1 users\)", since=mark)
    assert connack_rc(on_plant, username="plant-2", password="pw-2") == 0
    assert connack_rc(on_office, username="plant-2", password="pw-2") == BAD_CREDENTIALS


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _entries(path):
    out = {}
    for line in open(path).read().splitlines():
        if line and not line.startswith("#"):
            user, _, h = line.partition(":")
            out[user] = h
    return out


def test_moat_passwd_create_batch(secure_broker, tmp_path):
    path = tmp_path / "passwd"
    r = moat_cli("passwd", "-c", "-b", path, "carol", "carol secret")
    assert r.returncode == 0, r.stderr.decode()
    assert _mode(str(path)) == 0o600, oct(_mode(str(path)))
    entries = _entries(str(path))
    assert list(entries) == ["carol"], path.read_text()
    assert entries["carol"].startswith("$argon2id$v=19$m="), path.read_text()
    assert "carol secret" not in path.read_text()

    ep = ep_of(password_broker(secure_broker, path.read_text()))
    assert paho_rc(ep, "carol", "carol secret") == 0
    assert paho_rc(ep, "carol", "carol") == BAD_CREDENTIALS
    rc, out = run_pub(ep, "t", "x", ["-u", "carol", "-P", "carol secret"])
    assert rc == 0, out


def test_moat_passwd_stdin_update_and_delete(secure_broker, tmp_path):
    path = tmp_path / "passwd"
    # Start from a Mosquitto file: its other entries must be kept as they are.
    mosquitto_passwd("-c", "-b", str(path), "legacy", "legacy-pw")
    os.chmod(str(path), 0o644)
    legacy_line = path.read_text().splitlines()[0]

    r = moat_cli("passwd", path, "carol", stdin=b"from stdin\n")  # no -b: stdin
    assert r.returncode == 0, r.stderr.decode()
    r = moat_cli("passwd", "-b", path, "dave", "dave-pw")
    assert r.returncode == 0, r.stderr.decode()
    assert _mode(str(path)) == 0o600, oct(_mode(str(path)))
    lines = path.read_text().splitlines()
    assert legacy_line in lines, path.read_text()
    entries = _entries(str(path))
    assert set(entries) == {"legacy", "carol", "dave"}, path.read_text()
    assert entries["carol"].startswith("$argon2id$") and entries["dave"].startswith("$argon2id$")

    ep = ep_of(password_broker(secure_broker, path.read_text()))
    assert paho_rc(ep, "legacy", "legacy-pw") == 0
    assert paho_rc(ep, "carol", "from stdin") == 0
    assert paho_rc(ep, "carol", "from stdin\n") == BAD_CREDENTIALS  # the newline is not part of it
    assert paho_rc(ep, "dave", "dave-pw") == 0

    # Change a password, then delete a user.
    r = moat_cli("passwd", "-b", path, "dave", "new-dave-pw")
    assert r.returncode == 0, r.stderr.decode()
    r = moat_cli("passwd", "-D", path, "carol")
    assert r.returncode == 0, r.stderr.decode()
    assert set(_entries(str(path))) == {"legacy", "dave"}, path.read_text()
    assert legacy_line in path.read_text().splitlines()
    assert _mode(str(path)) == 0o600

    ep = ep_of(password_broker(secure_broker, path.read_text()))
    assert paho_rc(ep, "carol", "from stdin") == BAD_CREDENTIALS
    assert paho_rc(ep, "dave", "dave-pw") == BAD_CREDENTIALS
    assert paho_rc(ep, "dave", "new-dave-pw") == 0
    assert paho_rc(ep, "legacy", "legacy-pw") == 0

    # -c overwrites the file.
    r = moat_cli("passwd", "-c", "-b", path, "erin", "erin-pw")
    assert r.returncode == 0, r.stderr.decode()
    assert list(_entries(str(path))) == ["erin"], path.read_text()


def test_moat_passwd_argon2_cost_flags(secure_broker, tmp_path):
    """--argon2-memory/-iterations/-parallelism: stored in the entry, and the
    entry authenticates real clients against moatd."""
    path = tmp_path / "passwd"
    r = moat_cli("passwd", "-c", "--argon2-memory", "1024", "--argon2-iterations", "3",
                 "--argon2-parallelism", "2", "-b", path, "costly", "costly pw")
    assert r.returncode == 0, r.stderr.decode()
    # Defaults for the flags not given, next to the other entry.
    r = moat_cli("passwd", "--argon2-iterations", "1", "-b", path, "cheap", "cheap-pw")
    assert r.returncode == 0, r.stderr.decode()
    entries = _entries(str(path))
    assert entries["costly"].startswith("$argon2id$v=19$m=1024,t=3,p=2$"), entries
    assert entries["cheap"].startswith("$argon2id$v=19$m=32768,t=1,p=1$"), entries

    ep = ep_of(password_broker(secure_broker, path.read_text()))
    rc, out = run_pub(ep, "t", "x", ["-u", "costly", "-P", "costly pw"])
    assert rc == 0 and "received CONNACK (0)" in out, out
    rc, out = run_pub(ep, "t", "x", ["-u", "cheap", "-P", "cheap-pw"])
    assert rc == 0 and "received CONNACK (0)" in out, out
    assert paho_rc(ep, "costly", "cheap-pw") == BAD_CREDENTIALS
    assert paho_rc(ep, "cheap", "costly pw") == BAD_CREDENTIALS


@pytest.mark.parametrize("flags, message", [
    (["--argon2-memory", "4"], "--argon2-memory must be between 8 (8 x parallelism) and 4194304 KiB, not 4"),
    (["--argon2-memory", "4194305"], "--argon2-memory must be between 8 (8 x parallelism) and 4194304 KiB"),
    (["--argon2-parallelism", "4", "--argon2-memory", "16"],
     "--argon2-memory must be between 32 (8 x parallelism) and 4194304 KiB, not 16"),
    (["--argon2-iterations", "0"], "--argon2-iterations must be between 1 and 1000, not 0"),
    (["--argon2-iterations", "1001"], "--argon2-iterations must be between 1 and 1000, not 1001"),
    (["--argon2-parallelism", "0"], "--argon2-parallelism must be between 1 and 64, not 0"),
    (["--argon2-parallelism", "65"], "--argon2-parallelism must be between 1 and 64, not 65"),
    (["--argon2-memory", "lots"], "--argon2-memory"),
])
def test_moat_passwd_argon2_cost_out_of_range(tmp_path, flags, message):
    path = tmp_path / "passwd"
    path.write_text("# kept\n")
    r = moat_cli("passwd", *flags, "-b", path, "user", "pw")
    err = r.stderr.decode()
    assert r.returncode == 1, (r.returncode, err)
    assert message in err, err
    assert err.startswith("moat") and err.count("\n") == 1, err
    assert path.read_text() == "# kept\n"


def test_moat_passwd_delete_takes_no_cost_flags(tmp_path):
    path = tmp_path / "passwd"
    assert moat_cli("passwd", "-c", "--argon2-memory", "64", "-b", path, "u", "pw").returncode == 0
    before = path.read_text()
    r = moat_cli("passwd", "-D", "--argon2-memory", "64", path, "u")
    assert r.returncode == 1 and "-D" in r.stderr.decode(), r.stderr.decode()
    assert path.read_text() == before


class Terminal:
    """A process whose stdin/stdout/stderr are a pseudo-terminal (its controlling
    terminal), so that `moat passwd` sees isatty(stdin)."""

    def __init__(self, argv):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, preexec_fn=lambda: os.login_tty(slave),
                                     pass_fds=(slave,), close_fds=True)
        os.close(slave)
        self.out = b""

    def _read(self, timeout):
        """Reads what is there within `timeout`; False once the terminal is closed."""
        if not select.select([self.master], [], [], max(timeout, 0))[0]:
            return True
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: every process closed the terminal
            data = b""
        self.out += data
        return bool(data)

    def wait_count(self, text, n, timeout=10.0):
        """Waits until `text` was written `n` times in all."""
        deadline = time.monotonic() + scaled(timeout)
        while self.out.count(text) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("terminal: %r not seen %d times within %.1fs; got %r"
                                     % (text, n, scaled(timeout), self.out))
            if not self._read(left):
                raise AssertionError("terminal closed; got %r" % self.out)

    def type(self, line):
        os.write(self.master, line.encode() + b"\r")

    def finish(self, timeout=10.0):
        try:
            rc = self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("moat passwd did not exit; terminal: %r" % self.out)
        while self._read(0) and select.select([self.master], [], [], 0)[0]:
            pass
        os.close(self.master)
        return rc


def test_moat_passwd_on_a_terminal_asks_twice(secure_broker, tmp_path):
    if not (os.path.isfile(MOAT) and os.access(MOAT, os.X_OK)):
        pytest.skip("moat binary not found at %s (set MOAT)" % MOAT)
    path = tmp_path / "passwd"
    t = Terminal([MOAT, "passwd", "-c", str(path), "tina"])
    t.wait_count(b"assword", 1)
    t.type("tina terminal secret")
    t.wait_count(b"assword", 2)
    t.type("tina terminal secret")
    rc = t.finish()
    assert rc == 0, t.out
    assert _mode(str(path)) == 0o600
    assert _entries(str(path))["tina"].startswith("$argon2id$")
    ep = ep_of(password_broker(secure_broker, path.read_text()))
    assert paho_rc(ep, "tina", "tina terminal secret") == 0

    # Two different answers: refused, the file is left as it was.
    before = path.read_text()
    t = Terminal([MOAT, "passwd", str(path), "tina"])
    t.wait_count(b"assword", 1)
    t.type("first answer")
    t.wait_count(b"assword", 2)
    t.type("second answer")
    rc = t.finish()
    assert rc != 0, "mismatching passwords accepted: %r" % t.out
    assert path.read_text() == before


def test_moat_passwd_does_not_echo(tmp_path):
    """The password typed after each prompt must not be echoed. The terminal
    echoes what arrives while ECHO is on, so echo has to be off before the
    prompt is written (as getpass does); turning it off after the prompt
    leaves a window in which a prompt-driven typist (expect, this test) is
    echoed. That window is a race: this test catches it only sometimes."""
    if not (os.path.isfile(MOAT) and os.access(MOAT, os.X_OK)):
        pytest.skip("moat binary not found at %s (set MOAT)" % MOAT)
    path = tmp_path / "passwd"
    for i in range(10):
        secret = "echo-check-%d" % i
        t = Terminal([MOAT, "passwd", "-c", str(path), "ursula"])
        t.wait_count(b"assword", 1)
        t.type(secret)
        t.wait_count(b"assword", 2)
        t.type(secret)
        rc = t.finish()
        assert rc == 0, t.out
        assert secret.encode() not in t.out, "the password was echoed: %r" % t.out


def test_moat_passwd_refuses_unparseable_file(tmp_path):
    path = tmp_path / "passwd"
    text = "# plain-text passwords are not a password file\nzoe:zoe-plain\n"
    path.write_text(text)
    r = moat_cli("passwd", "-b", path, "yann", "yann-pw")
    assert r.returncode != 0, "moat passwd rewrote a file that does not parse"
    assert path.read_text() == text
    assert r.stderr.strip(), "no error message"


# ================================================================ ACLs

def test_no_acl_denies_everything(secure_broker, passwd_text):
    """Passwords without an [acl]: deny by default, and moatd says so at start
    (test_auth_default_deny.py has the audit, the will and other listeners)."""
    b = password_broker(secure_broker, passwd_text)
    b.wait_for_log(r"listener plain authenticates clients \(password\) and there is no \[acl\] "
                   r"and no IAM authorization: every client, on every listener, is denied every topic")
    ep = ep_of(b)
    with login(ep, "dev1") as s, login(ep, "dev2") as p:
        assert s.subscribe([("#", 1), ("private/#", 1), ("devices/dev1/x", 0)]) == [0x80] * 3
        p.publish("private/x", b"1", qos=1)  # acknowledged (asserted) and dropped
        p.publish("private/x", b"2", qos=2)
        p.ping()  # not disconnected
    # The explicit allow-all rule is the opt-out: then the same works.
    b = password_broker(secure_broker, passwd_text, extra=ALLOW_ALL)
    assert b.find_log("is denied every topic") is None, b.log_text()
    ep = ep_of(b)
    with login(ep, "dev1") as s, login(ep, "dev2") as p:
        assert s.subscribe([("#", 1), ("private/#", 1), ("$SYS/#", 0)]) == [1, 1, 0x80]
        p.publish("private/x", b"1", qos=1)
        got = s.recv_publish()
        assert (got.topic, got.payload) == ("private/x", b"1")


NOT_AUTHORIZED_DROPS = "$SYS/broker/messages/dropped/not_authorized"


def wait_sys_value(client, topic, want, timeout=5.0):
    """Reads `topic` (published every sys_interval) until its value is `want`;
    a counter must never have passed it on the way."""
    deadline = time.monotonic() + scaled(timeout)
    seen = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "%s never became %d; seen %r" % (topic, want, seen)
        got = client.recv_publish(timeout=left)
        assert got.topic == topic, got
        seen.append(int(got.payload))
        assert seen[-1] <= want, "%s went past %d: %r" % (topic, want, seen)
        if seen[-1] == want:
            return


def test_acl_denied_publish_is_acked_and_dropped(secure_broker, passwd_text):
    ep = ep_of(acl_broker(secure_broker, passwd_text, sys_interval=1))
    with login(ep, "watcher") as w, login(ep, "alice") as a, login(ep, "sysreader") as sysr:
        assert sysr.subscribe([(NOT_AUTHORIZED_DROPS, 0)]) == [0]
        wait_sys_value(sysr, NOT_AUTHORIZED_DROPS, 0)
        assert w.subscribe([("#", 2)]) == [2]
        a.publish("secret/q0", b"no", qos=0)
        a.publish("secret/q1", b"no", qos=1)       # asserts the PUBACK
        a.publish("secret/q2", b"no", qos=2)       # asserts PUBREC and PUBCOMP
        a.publish("alice/in/x", b"rw", qos=1)      # allowed (readwrite alice/in/#)
        a.publish("alice/outx", b"no", qos=1)      # not under alice/out/
        a.publish("alice/out/ok", b"yes", qos=1)   # allowed: the sentinel
        got = collect_until(w, "alice/out/ok")
        assert [(p.topic, p.payload) for p in got] == [("alice/in/x", b"rw")], got
        a.ping()  # the publisher was not disconnected
        # mosquitto_pub sees a normal success on a denied QoS 1 publish.
        rc, out = run_pub(ep, "secret/cli", "no", ["-u", "alice", "-P", USERS["alice"]])
        assert rc == 0, out
        # Each refused PUBLISH is counted once (docs/mqtt.md, $SYS): 3 + 1 + 1.
        wait_sys_value(sysr, NOT_AUTHORIZED_DROPS, 5)


def test_acl_subscribe_denied_gets_0x80(secure_broker, passwd_text):
    ep = ep_of(acl_broker(secure_broker, passwd_text))
    with login(ep, "alice") as a, login(ep, "writer") as wr:
        granted = a.subscribe([("alice/in/#", 1), ("secret/#", 1), ("#", 0),
                               ("alice/out/#", 0), ("alice/+/x", 1), ("alice/in/+", 2)])
        assert granted == [1, 0x80, 0x80, 0x80, 0x80, 2], granted
        # The accepted filters work; the refused ones deliver nothing.
        wr.publish("secret/x", b"s", qos=1)
        wr.publish("alice/out/y", b"o", qos=1)
        wr.publish("alice/in/z", b"i", qos=1)
        got = a.recv_publish()
        assert (got.topic, got.payload) == ("alice/in/z", b"i"), got
    with login(ep, "reader") as r:
        # A deny covering the whole filter refuses it; a filter that only
        # overlaps the denied area is accepted.
        assert r.subscribe([("private/#", 0), ("private/a", 0), ("#", 0), ("+/a", 0)]) \
            == [0x80, 0x80, 0, 0]


def test_acl_receive_filtering(secure_broker, passwd_text):
    ep = ep_of(acl_broker(secure_broker, passwd_text))
    with login(ep, "reader") as r, login(ep, "watcher") as w, login(ep, "writer") as wr:
        assert r.subscribe([("#", 1)]) == [1]
        assert w.subscribe([("#", 1)]) == [1]
        wr.publish("private/a", b"p1", qos=1)
        wr.publish("public/a", b"ok1", qos=1)
        wr.publish("private/b/c", b"p2", qos=1)
        wr.publish("privateX/d", b"ok2", qos=1)
        wr.publish("end/sentinel", b"end", qos=1)
        got_r = [(p.topic, p.payload) for p in collect_until(r, "end/sentinel")]
        got_w = [(p.topic, p.payload) for p in collect_until(w, "end/sentinel")]
        assert got_r == [("public/a", b"ok1"), ("privateX/d", b"ok2")], got_r
        # The messages were published (the watcher, reading #, gets all of them).
        assert got_w == [("private/a", b"p1"), ("public/a", b"ok1"), ("private/b/c", b"p2"),
                         ("privateX/d", b"ok2")], got_w


def test_acl_pattern_user(secure_broker, passwd_text):
    ep = ep_of(acl_broker(secure_broker, passwd_text))
    with login(ep, "dev1") as d1, login(ep, "watcher") as w:
        assert w.subscribe([("devices/#", 1)]) == [1]
        assert d1.subscribe([("devices/dev1/#", 1), ("devices/dev2/#", 1), ("devices/+/cmd", 1),
                             ("devices/#", 1)]) == [1, 0x80, 0x80, 0x80]
        d1.publish("devices/dev2/t", b"forged", qos=1)
        d1.publish("devices/dev1/t", b"own", qos=1)
        got = w.recv_publish()
        assert (got.topic, got.payload) == ("devices/dev1/t", b"own"), got
        got = d1.recv_publish()  # readwrite: dev1 reads its own subtree
        assert (got.topic, got.payload) == ("devices/dev1/t", b"own"), got
    # An anonymous client has no %u: the pattern never applies to it.
    with login(ep, client_id="dev1") as anon:
        assert anon.subscribe([("devices/dev1/#", 0), ("devices//#", 0)]) == [0x80, 0x80]


def test_acl_pattern_client_id(secure_broker, passwd_text):
    ep = ep_of(acl_broker(secure_broker, passwd_text))
    with login(ep, client_id="cid-9") as c, login(ep, "alice", client_id="cid-10") as a, \
            login(ep, "writer") as wr:
        assert c.subscribe([("clients/cid-9/inbox", 1), ("clients/cid-10/inbox", 1),
                            ("clients/+/inbox", 1)]) == [1, 0x80, 0x80]
        assert a.subscribe([("clients/cid-10/inbox", 1), ("clients/cid-9/inbox", 1)]) == [1, 0x80]
        wr.publish("clients/cid-9/inbox", b"for-9", qos=1)
        wr.publish("clients/cid-10/inbox", b"for-10", qos=1)
        got = c.recv_publish()
        assert (got.topic, got.payload) == ("clients/cid-9/inbox", b"for-9")
        got = a.recv_publish()
        assert (got.topic, got.payload) == ("clients/cid-10/inbox", b"for-10")
    # A client id that is a wildcard must not turn the pattern into a wildcard grant.
    for cid in ("+", "#"):
        with mqttraw.Client(ep.host, ep.port, timeout=scaled(10), name="cid" + cid) as c:
            c.send(mqttraw.connect(cid))
            rc = mqttraw.decode_connack(c.expect(mqttraw.CONNACK))[1]
            if rc != 0:
                assert rc == 2, "client id %r: CONNACK %d" % (cid, rc)  # identifier rejected
                continue
            assert c.subscribe([("clients/+/inbox", 0), ("clients/#", 0)]) == [0x80, 0x80]


def test_acl_will_topic_checked_at_connect(secure_broker, passwd_text):
    ep = ep_of(acl_broker(secure_broker, passwd_text))
    pw = USERS["alice"]
    assert connack_rc(ep, username="alice", password=pw, will_topic="alice/will",
                      will_payload=b"bye") == 0
    assert connack_rc(ep, username="alice", password=pw, will_topic="secret/will",
                      will_payload=b"bye") == NOT_AUTHORIZED
    assert connack_rc(ep, username="alice", password=pw, will_topic="alice/in/w",
                      will_payload=b"bye", will_qos=1, will_retain=True) == 0
    # Anonymous clients may only read public/#.
    assert connack_rc(ep, will_topic="public/will", will_payload=b"bye") == NOT_AUTHORIZED
    rc, out = run_pub(ep, "alice/out/x", "x", ["-u", "alice", "-P", pw,
                                               "--will-topic", "secret/w", "--will-payload", "w"])
    assert rc != 0 and "not authorised" in out, out


def test_acl_anonymous_section(secure_broker, passwd_text):
    ep = ep_of(acl_broker(secure_broker, passwd_text))
    with login(ep) as anon, login(ep, "writer") as wr:
        assert anon.subscribe([("public/#", 1), ("alice/#", 1), ("#", 1)]) == [1, 0x80, 0x80]
        anon.publish("public/x", b"anon-write", qos=1)  # read-only: acked, dropped
        wr.publish("public/y", b"from-writer", qos=1)
        got = collect_until(anon, "public/y")
        assert got == [], got


def test_acl_sys_needs_explicit_grant(secure_broker, passwd_text):
    ep = ep_of(acl_broker(secure_broker, passwd_text, sys_interval=1))
    with login(ep, "everything") as e, login(ep, "sysreader") as s:
        assert e.subscribe([("#", 0)]) == [0]
        assert e.subscribe([("$SYS/#", 0)]) == [0x80]
        assert e.subscribe([("$SYS/broker/uptime", 0)]) == [0x80]
        assert s.subscribe([("$SYS/#", 0)]) == [0]
        # The broker publishes $SYS every second: the granted reader sees it ...
        got = s.recv_publish(timeout=scaled(3))
        assert got.topic.startswith("$SYS/"), got
        # ... the user with `topic read #` does not, over 2.5 intervals.
        e.expect_no_packet(2.5)


def test_acl_retained_not_delivered_when_unreadable(secure_broker, passwd_text):
    ep = ep_of(acl_broker(secure_broker, passwd_text))
    with login(ep, "writer") as wr:
        wr.publish("private/r", b"secret-retained", qos=1, retain=True)
        wr.publish("public/r", b"public-retained", qos=1, retain=True)
        with login(ep, "watcher") as w:
            assert w.subscribe([("+/r", 1)]) == [1]
            got = sorted((w.recv_publish().topic, w.recv_publish().topic))
            assert got == ["private/r", "public/r"], "retained messages not stored: %r" % got
        with login(ep, "reader") as r:
            assert r.subscribe([("private/r", 1)]) == [0x80]
            assert r.subscribe([("#", 1)]) == [1]
            wr.publish("live/sentinel", b"end", qos=1)
            got = [(p.topic, p.payload, p.retain) for p in collect_until(r, "live/sentinel")]
            assert got == [("public/r", b"public-retained", True)], got


def test_acl_reload_withdraws_rights_from_live_clients(secure_broker, passwd_text):
    """Rights withdrawn by a reloaded ACL stop a connected subscriber from
    receiving and a connected publisher from publishing, on topics they have
    used before (the broker memoises decisions per session: a reload must
    make them stale)."""
    both = "user watcher\ntopic read #\n\nuser writer\ntopic write #\n"
    b = secure_broker(listeners=PASSWORD_THEN_ANON, password_file="passwd",
                      files={"passwd": passwd_text}, acl_text=both, threads=2)
    ep = ep_of(b)
    acl_path = b.workdir / "acl"

    def reload(text):
        mark = b.log_mark()
        tmp = acl_path.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, acl_path)
        os.kill(b.pid, signal.SIGHUP)
        b.wait_for_log(r"reload: ACL", since=mark)

    def delivered(w, wr, topic):
        """Publishes `topic` then a sentinel; True if the watcher got `topic`."""
        wr.publish(topic, b"m", qos=1)
        wr.publish("end/sentinel", b"end", qos=1)
        return [p.topic for p in collect_until(w, "end/sentinel")] == [topic]

    def until_refused(w, wr, topic):
        # The event loops take a reloaded ACL at their next tick (a few times a
        # second): poll, bounded.
        deadline = time.monotonic() + scaled(5)
        while delivered(w, wr, topic):
            assert time.monotonic() < deadline, "%s still delivered after the reload" % topic
        for _ in range(3):
            assert not delivered(w, wr, topic)

    def until_delivered(w, wr, topic):
        # The two clients may sit on different loops, each taking the reload
        # at its own tick: a refusal seen on one does not say the other has it.
        deadline = time.monotonic() + scaled(5)
        while not delivered(w, wr, topic):
            assert time.monotonic() < deadline, "%s still refused after the reload" % topic
        for _ in range(3):
            assert delivered(w, wr, topic)

    with login(ep, "watcher") as w, login(ep, "writer") as wr:
        assert w.subscribe([("#", 1)]) == [1]
        for _ in range(3):
            assert delivered(w, wr, "x/1") and delivered(w, wr, "y/1")
        # The watcher may no longer read x/#: x/1 stops reaching it.
        reload("user watcher\ntopic read y/#\ntopic read end/#\n\nuser writer\ntopic write #\n")
        until_refused(w, wr, "x/1")
        assert delivered(w, wr, "y/1")
        # The writer may no longer write y/#: y/1 is acknowledged and dropped.
        reload("user watcher\ntopic read #\n\nuser writer\ntopic write x/#\ntopic write end/#\n")
        until_refused(w, wr, "y/1")
        until_delivered(w, wr, "x/1")  # the watcher's loop may take the reload later
    assert b.alive()



@pytest.mark.parametrize("owner,delivered", [("alice", True), ("writer", False)])
def test_restored_session_is_judged_by_who_comes_back(secure_broker, passwd_text, owner, delivered):
    """A persistent session restored after a restart has no stored identity: a
    message published while it is offline is queued and judged when its client
    is back. alice may read alice/in/x and gets it (it is not refused as if
    the session were anonymous); writer, reconnecting with the same client id,
    may not and does not."""
    from conftest import Broker
    b = secure_broker(listeners=PASSWORD_ONLY, password_file="passwd", files={"passwd": passwd_text},
                      acl_text=ACL, threads=2)
    cid = uniq("durable")
    with login(ep_of(b), "alice", client_id=cid, clean_session=False) as alice:
        assert alice.subscribe([("alice/in/x", 1)]) == [1]
        alice.disconnect()
    assert b.stop(signal.SIGTERM, 10) == 0
    again = Broker([b.argv[0], "-c", b.config_path], cwd=str(b.workdir), config_path=b.config_path)
    try:
        m = again.wait_for_log_at(r"listening on (\S+):(\d+) ", timeout=10)[0]
        ep = ep_of(b)._replace(port=int(m.group(2)))
        with login(ep, "writer") as w:
            w.publish("alice/in/x", b"kept", qos=1)
        with login(ep, owner, client_id=cid, clean_session=False) as c:
            if delivered:
                pub = c.recv_publish(timeout=scaled(5))
                assert (pub.topic, pub.payload) == ("alice/in/x", b"kept")
            else:
                c.ping()
                c.expect_no_packet(0.5)
            c.disconnect()
    finally:
        assert again.stop(signal.SIGTERM, 10) == 0
