"""The data directory and its store across restarts of a real moatd.

A damaged write-ahead log is a start-up error and a --check-store failure,
while a torn last record (the normal trace of a crash) is not; a folder that
is not Moat's is refused and left alone; a queue comes back after SIGKILL
whole and in order. (docs/durability.md)
"""

import os
import re
import signal
import subprocess

import pytest

import mqttraw
from conftest import Broker, DEFAULTS, MOATD, moat_config
from util import raw, raw_connected, scaled, uniq

pytestmark = pytest.mark.moat_only

WAL_BLOCK = 32768  # RocksDB log format: 32 KiB blocks of records
WAL_HEADER = 7     # crc32c (4), length (2, little-endian), type (1)


class Node:
    """moatd with one configuration and data folder, started again as the test needs."""

    def __init__(self, workdir, data_dir=None, durability="sync", engine="rocksdb"):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.data = data_dir if data_dir is not None else workdir / "data"
        self.conf = workdir / "moat.toml"
        opts = dict(DEFAULTS, max_queued_messages=100000)
        self.conf.write_text(moat_config(str(self.data), opts) +
                             '\n[store]\nengine = "%s"\ndurability = "%s"\n' % (engine, durability))
        self.broker = None
        self.started = []

    def start(self):
        b = Broker([MOATD, "-c", str(self.conf)], cwd=str(self.workdir), config_path=str(self.conf))
        self.started.append(b)
        self.broker = b
        b.wait_listening()
        return b

    def run(self, *args, timeout=30):
        """moatd -c CONF ARGS... to its end: (exit status, stdout, stderr)."""
        try:
            r = subprocess.run([MOATD, "-c", str(self.conf)] + list(args), cwd=str(self.workdir),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=scaled(timeout))
        except subprocess.TimeoutExpired as e:
            # A moatd that should have refused to start is still running: the
            # timeout killed it (subprocess.run kills its own child).
            raise AssertionError("moatd %s did not exit; output:\n%s" % (
                " ".join(args), (e.stderr or b"").decode("utf-8", "replace")))
        return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")

    def check_store(self):
        return self.run("--check-store")

    def kill(self):
        """SIGKILL the running moatd by PID (nothing is flushed or closed)."""
        b = self.broker
        os.kill(b.pid, signal.SIGKILL)
        b.proc.wait(scaled(10))
        b.stopped = True
        self.broker = None

    def stop(self):
        rc = self.broker.stop()
        self.broker = None
        assert rc == 0, "moatd exit status %s after SIGTERM" % rc

    def cleanup(self):
        for b in self.started:
            if b.alive():
                os.kill(b.pid, signal.SIGKILL)
                b.proc.wait(10)


@pytest.fixture
def node(tmp_path):
    nodes = []

    def make(name="node", **kw):
        n = Node(tmp_path / name, **kw)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.cleanup()


def tree_state(path):
    """Every file under `path` with its size and modification time."""
    out = {}
    for root, dirs, files in os.walk(path):
        for f in dirs + files:
            p = os.path.join(root, f)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return out


def newest_wal(data):
    store = data / "store"
    logs = sorted(store.glob("*.log"), key=lambda p: int(p.stem))
    assert logs, "no write-ahead log in %s: %s" % (store, sorted(os.listdir(store)))
    return logs[-1]


def wal_records(blob):
    """(payload offset, payload length) of each physical record of a RocksDB WAL."""
    out = []
    pos = 0
    while pos + WAL_HEADER <= len(blob):
        left = WAL_BLOCK - pos % WAL_BLOCK
        if left < WAL_HEADER:  # block trailer: zero padding
            pos += left
            continue
        length = blob[pos + 4] | blob[pos + 5] << 8
        rtype = blob[pos + 6]
        if rtype == 0 and length == 0:
            break  # zeroes past the last record
        header = 11 if 5 <= rtype <= 8 else WAL_HEADER  # recyclable records carry a log number
        out.append((pos + header, length))
        pos += header + length
    return out


def queue_for_offline(broker, cid, topic, n, qos_of=lambda i: 1, size=200):
    """A durable subscriber (clean session 0) subscribes (QoS 2) and goes offline;
    then n numbered messages (message i at QoS qos_of(i)) are published to it,
    each acknowledged by the broker (PUBACK, or PUBCOMP)."""
    with raw(broker, name="durable") as c:
        assert c.connect(cid, clean_session=False) in (False, 0)
        assert c.subscribe([(topic, 2)]) == [2]
        c.disconnect()
    with raw_connected(broker, name="pub") as pub:
        for i in range(n):
            pub.publish(topic, b"%06d:" % i + b"x" * size, qos=qos_of(i))
        pub.disconnect()


def receive_all(broker, cid, n):
    """Reconnects the durable subscriber; returns (session present, publishes)."""
    c = raw(broker, name="durable")
    try:
        sp = c.connect(cid, clean_session=False)
        got = [c.recv_publish() for _ in range(n)]
        c.finish_qos2()
        c.disconnect()
    finally:
        c.close()
    return sp, got


def restored_queued(broker):
    m = broker.wait_for_log(r"restored (\d+) session\(s\), (\d+) queued message\(s\)")
    return int(m.group(1)), int(m.group(2))


# ---------------------------------------------------------------- damage


def test_damaged_wal_refused_at_start_and_by_check_store(node):
    """Acknowledged messages in a write-ahead log damaged in the middle: moatd
    must not start without them (RocksDB's point-in-time recovery would stop
    at the damage and open the store with the rest silently gone)."""
    n = node()
    b = n.start()
    cid, topic = uniq("durable"), uniq("store/wal/")
    queue_for_offline(b, cid, topic, 20)
    n.kill()

    wal = newest_wal(n.data)
    blob = bytearray(wal.read_bytes())
    records = [r for r in wal_records(blob) if r[1] > 0]
    assert len(records) >= 20, "expected one WAL record per commit, found %d" % len(records)
    off, length = records[len(records) // 2]
    blob[off + length // 2] ^= 0x5A  # one byte in the middle record's payload
    wal.write_bytes(bytes(blob))

    before = tree_state(n.data)
    rc, out, err = n.check_store()
    assert rc == 3, "--check-store exit %d on a damaged WAL:\n%s%s" % (rc, out, err)
    assert "damaged" in out and "Corruption" in out, out
    assert tree_state(n.data) == before, "--check-store changed the data directory"

    rc, out, err = n.run()
    assert rc != 0, "moatd started on a damaged store:\n%s%s" % (out, err)
    lines = [line for line in (out + err).splitlines() if "damaged" in line]
    assert len(lines) == 1, out + err
    assert "data_dir %s:" % n.data in lines[0], lines[0]
    assert "refusing to start" in lines[0] and "docs/durability.md" in lines[0], lines[0]
    assert "Corruption" in lines[0], lines[0]


def test_torn_last_wal_record_is_accepted(node):
    """A last record written in part (a crash in the middle of a write that was
    never acknowledged) is dropped; everything before it is restored."""
    n = node()
    b = n.start()
    cid, topic = uniq("durable"), uniq("store/torn/")
    queue_for_offline(b, cid, topic, 20)
    n.kill()

    wal = newest_wal(n.data)
    blob = wal.read_bytes()
    assert len(blob) % WAL_BLOCK < WAL_BLOCK - 64, "test needs room in the last block"
    # A header announcing 1000 bytes of which 20 made it to the file.
    torn = b"\x11\x22\x33\x44" + (1000).to_bytes(2, "little") + b"\x01" + b"y" * 20
    wal.write_bytes(blob + torn)

    rc, out, err = n.check_store()
    assert rc == 0, "--check-store exit %d on a torn tail:\n%s%s" % (rc, out, err)
    assert "queued messages 20 " in out, out

    b = n.start()
    assert restored_queued(b) == (1, 20)
    sp, got = receive_all(b, cid, 20)
    assert sp
    assert [p.payload[:6] for p in got] == [b"%06d" % i for i in range(20)]
    n.stop()


def test_check_store_intact_store_exit_0_and_read_only(node):
    """--check-store on a store left by a SIGKILL (its WAL not yet flushed)
    reports the queue and changes nothing: no WAL replay written, no info log."""
    n = node()
    b = n.start()
    cid, topic = uniq("durable"), uniq("store/check/")
    queue_for_offline(b, cid, topic, 5)
    n.kill()
    before = tree_state(n.data)
    rc, out, err = n.check_store()
    assert rc == 0, out + err
    assert "sessions 1\n" in out and "queued messages 5 (0 in flight)" in out, out
    assert "damaged entries 0" in out, out
    assert tree_state(n.data) == before, "--check-store changed the data directory"


def test_check_store_refuses_while_moatd_runs(node):
    n = node()
    n.start()
    rc, out, err = n.check_store()
    assert rc == 1, out + err
    assert "in use by a running moatd" in err, err
    n.stop()
    rc, out, err = n.check_store()
    assert rc == 0, out + err


def test_check_store_missing_data_dir_exit_1(node):
    n = node()
    rc, out, err = n.check_store()
    assert rc == 1, out + err
    assert "data_dir %s does not exist" % n.data in err, err
    assert not n.data.exists(), "--check-store created the data directory"


def check_store_lines(out):
    """The indented lines of --check-store's report ("  NAME COUNT" or
    "  NAME COUNT (DETAIL)") as {NAME: COUNT, NAME + " detail": DETAIL}."""
    got = {}
    for line in out.splitlines():
        m = re.match(r"  (.+?) (\d+)(?: \((.*)\))?$", line)
        if m:
            got[m.group(1)] = int(m.group(2))
            if m.group(3) is not None:
                got[m.group(1) + " detail"] = m.group(3)
    return got


def test_check_store_counts_messages_in_flight_and_ids_awaiting_pubrel(node):
    """A durable session stopped with a QoS 1 message unacknowledged, a QoS 2
    message awaiting PUBCOMP and an inbound QoS 2 packet id awaiting PUBREL:
    --check-store counts them (exit 0), and they come back after the restart
    as it counted them."""
    n = node()
    b = n.start()
    cid, topic, other = uniq("durable"), uniq("store/inflight/"), uniq("store/inbound/")
    sub = raw(b, name="durable")
    try:
        assert not sub.connect(cid, clean_session=False)
        assert sub.subscribe([(topic + "/#", 2)]) == [2]
        with raw_connected(b, name="pub") as pub:
            pub.publish(topic + "/one", b"qos1", qos=1)
            pub.publish(topic + "/two", b"qos2", qos=2)
            pub.disconnect()
        one = sub.recv_publish(ack=False)
        two = sub.recv_publish(ack=False)
        assert (one.topic, one.qos, two.topic, two.qos) == (topic + "/one", 1, topic + "/two", 2), (one, two)
        # QoS 2 outbound: PUBREC; the broker stores "awaiting PUBCOMP" before its PUBREL leaves.
        sub.send(mqttraw.pubrec(two.pid))
        pkt = sub.expect(mqttraw.PUBREL, flags=0x02)
        assert mqttraw.packet_id(pkt) == two.pid
        # QoS 2 inbound: the broker stores the id before its PUBREC leaves; no PUBREL follows.
        sub.send(mqttraw.publish(other, b"in", qos=2, pid=77))
        pkt = sub.expect(mqttraw.PUBREC, flags=0)
        assert mqttraw.packet_id(pkt) == 77
        n.stop()  # SIGTERM by PID, the subscriber still connected
    finally:
        sub.close()

    before = tree_state(n.data)
    rc, out, err = n.check_store()
    assert rc == 0, "--check-store exit %d:\n%s%s" % (rc, out, err)
    got = check_store_lines(out)
    assert got["sessions"] == 1, out
    assert got["queued messages"] == 2 and got["queued messages detail"] == "2 in flight", out
    assert got["QoS 2 ids awaiting PUBREL"] == 1, out
    assert got["entries of ended sessions"] == 0, out
    assert got["entries of ended sessions detail"] == "queued 0, in flight 0, awaiting PUBREL 0", out
    assert got["damaged entries"] == 0, out
    assert "damaged:" not in out, out
    assert tree_state(n.data) == before, "--check-store changed the data directory"

    # What was counted is what comes back: the QoS 1 message resent with DUP=1
    # and its packet id, PUBREL for the QoS 2 one, id 77 still awaiting PUBREL.
    b = n.start()
    assert restored_queued(b) == (1, 2)
    sub = raw(b, name="durable")
    try:
        assert sub.connect(cid, clean_session=False), "[MQTT-3.2.2-2] session-present 0 after the restart"
        resent = {}
        for _ in range(2):
            pkt = sub.recv_packet()
            resent[pkt.type] = pkt
        assert sorted(resent) == [mqttraw.PUBLISH, mqttraw.PUBREL], resent
        again = mqttraw.decode_publish(resent[mqttraw.PUBLISH])
        assert (again.topic, again.pid, again.qos, again.dup) == (one.topic, one.pid, 1, True), again
        assert mqttraw.packet_id(resent[mqttraw.PUBREL]) == two.pid
        sub.send(mqttraw.puback(one.pid) + mqttraw.pubcomp(two.pid) + mqttraw.pubrel(77))
        pkt = sub.expect(mqttraw.PUBCOMP, flags=0)
        assert mqttraw.packet_id(pkt) == 77
        sub.ping()  # the PUBACK and PUBCOMP before it were handled
        sub.disconnect()
    finally:
        sub.close()
    n.stop()
    rc, out, err = n.check_store()
    assert rc == 0, out + err
    got = check_store_lines(out)
    assert got["queued messages"] == 0 and got["queued messages detail"] == "0 in flight", out
    assert got["QoS 2 ids awaiting PUBREL"] == 0, out


def rocksdb_put(path, entries, create=False):
    """Writes (key, value) entries into the RocksDB database at `path` past
    moatd (through RocksDB's C API): what damage, or another program, leaves.
    With `create`, the database is made if it does not exist."""
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("rocksdb")
    if not name:
        pytest.skip("librocksdb not found")
    lib = ctypes.CDLL(name)
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    lib.rocksdb_options_create.restype = vp
    lib.rocksdb_options_set_create_if_missing.argtypes = [vp, ctypes.c_ubyte]
    lib.rocksdb_open.restype = vp
    lib.rocksdb_open.argtypes = [vp, cp, ctypes.POINTER(cp)]
    lib.rocksdb_writeoptions_create.restype = vp
    lib.rocksdb_writeoptions_set_sync.argtypes = [vp, ctypes.c_ubyte]
    lib.rocksdb_put.argtypes = [vp, vp, cp, ctypes.c_size_t, cp, ctypes.c_size_t, ctypes.POINTER(cp)]
    lib.rocksdb_close.argtypes = [vp]
    lib.rocksdb_writeoptions_destroy.argtypes = [vp]
    lib.rocksdb_options_destroy.argtypes = [vp]
    opts = lib.rocksdb_options_create()
    lib.rocksdb_options_set_create_if_missing(opts, 1 if create else 0)
    err = cp()
    db = lib.rocksdb_open(opts, str(path).encode(), ctypes.byref(err))
    assert db and not err.value, err.value
    wo = lib.rocksdb_writeoptions_create()
    lib.rocksdb_writeoptions_set_sync(wo, 1)
    for k, v in entries:
        lib.rocksdb_put(db, wo, k, len(k), v, len(v), ctypes.byref(err))
        assert not err.value, err.value
    lib.rocksdb_writeoptions_destroy(wo)
    lib.rocksdb_close(db)
    lib.rocksdb_options_destroy(opts)


def be(n, size):
    return n.to_bytes(size, "big")


def test_damaged_inflight_entry_refused_at_start_and_by_check_store(node):
    """An in-flight entry whose state is not one moatd writes: --check-store
    exits 3 naming the entry, and moatd refuses to start rather than resend
    the message wrongly (or not at all)."""
    n = node()
    b = n.start()
    queue_for_offline(b, uniq("durable"), uniq("store/bad-inflight/"), 1)
    n.stop()
    # Session 1 (the first), seq 1: packet id 5 in state 7 (only 1 and 2 exist).
    rocksdb_put(n.data / "store", [(b"i" + be(1, 8) + be(1, 8), be(5, 2) + b"\x07")])
    damage = ("damaged in-flight entry (session 1, seq 1): packet id 5 in state 7, "
              "not 1 (awaiting PUBACK/PUBREC) or 2 (awaiting PUBCOMP)")
    rc, out, err = n.check_store()
    assert rc == 3, "--check-store exit %d:\n%s%s" % (rc, out, err)
    assert check_store_lines(out)["damaged entries"] == 1, out
    assert "\ndamaged: %s\n" % damage in out, out
    rc, out, err = n.run()
    assert rc == 1, "moatd started on a damaged store:\n%s%s" % (out, err)
    lines = [line for line in (out + err).splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and damage in lines[0], out + err


def test_entries_of_ended_sessions_reported_then_removed_at_start(node):
    """In-flight and awaiting-PUBREL entries of a session that has no session
    record: --check-store counts them per kind and exits 0 (start-up removes
    them, which it does)."""
    n = node()
    b = n.start()
    queue_for_offline(b, uniq("durable"), uniq("store/ended/"), 2)
    n.stop()
    rocksdb_put(n.data / "store", [(b"i" + be(999, 8) + be(1, 8), be(5, 2) + b"\x01"),
                                   (b"p" + be(999, 8) + be(6, 2), b""),
                                   (b"p" + be(999, 8) + be(7, 2), b"")])
    rc, out, err = n.check_store()
    assert rc == 0, "--check-store exit %d:\n%s%s" % (rc, out, err)
    got = check_store_lines(out)
    assert got["entries of ended sessions"] == 3, out
    assert got["entries of ended sessions detail"] == "queued 0, in flight 1, awaiting PUBREL 2", out
    assert got["queued messages"] == 2 and got["QoS 2 ids awaiting PUBREL"] == 0, out
    assert got["damaged entries"] == 0, out
    b = n.start()
    assert restored_queued(b) == (1, 2)
    n.stop()
    rc, out, err = n.check_store()
    assert rc == 0, out + err
    got = check_store_lines(out)
    assert got["entries of ended sessions"] == 0 and got["queued messages"] == 2, out


# ---------------------------------------------------------------- the data directory


MARKER = "moat-data-dir"


def make_foreign_rocksdb(path):
    """A RocksDB database that is not Moat's."""
    rocksdb_put(path, [(b"user:1", b"someone else's data")], create=True)


def test_foreign_data_dir_refused_and_left_alone(node):
    """A data_dir holding someone else's files: moatd refuses it, names it and
    what it holds, and adds nothing to it (no LOCK, no store/, no marker)."""
    n = node()
    n.data.mkdir()
    (n.data / "mosquitto.db").write_bytes(b"\x00\xb5\x00mosquitto db")
    (n.data / "notes.txt").write_text("keep me\n")
    before = tree_state(n.data)
    rc, out, err = n.run()
    assert rc == 1, out + err
    line = [x for x in err.splitlines() if "not a Moat data directory" in x]
    assert len(line) == 1, err
    assert "data_dir %s" % n.data in line[0] and "mosquitto.db" in line[0] and "notes.txt" in line[0], line[0]
    assert tree_state(n.data) == before
    rc, out, err = n.check_store()
    assert rc == 1 and "not a Moat data directory" in err, out + err
    assert tree_state(n.data) == before


def test_fresh_data_dir_gets_marker(node):
    """A data_dir that does not exist, or is empty, is Moat's from then on."""
    for name, make in (("new", False), ("empty", True)):
        n = node(name)
        if make:
            n.data.mkdir()
        n.start()
        marker = n.data / MARKER
        assert marker.read_text().startswith("Moat data directory"), marker.read_text()
        n.stop()
        assert sorted(os.listdir(n.data)) == ["LOCK", MARKER, "store"]
        n.start()  # and accepted again
        n.stop()
        rc, out, err = n.check_store()
        assert rc == 0, out + err


def test_data_dir_from_before_the_marker_accepted_and_marked(node):
    """A data directory made by a moatd without the marker (store/ and LOCK
    only) keeps its state and gets the marker."""
    n = node()
    b = n.start()
    cid, topic = uniq("durable"), uniq("store/old/")
    queue_for_offline(b, cid, topic, 3)
    n.stop()
    (n.data / MARKER).unlink()
    b = n.start()
    assert restored_queued(b) == (1, 3)
    assert (n.data / MARKER).exists()
    sp, got = receive_all(b, cid, 3)
    assert sp and [p.payload[:6] for p in got] == [b"%06d" % i for i in range(3)]
    n.stop()


def test_rocksdb_database_not_moats_refused_unchanged(node):
    """data_dir/store holding a RocksDB database of something else: it is
    checked read-only and refused before moatd writes anything to it."""
    n = node()
    n.data.mkdir()
    make_foreign_rocksdb(n.data / "store")
    before = tree_state(n.data / "store")
    rc, out, err = n.run()
    assert rc == 1, out + err
    assert "is a RocksDB database but not a Moat store" in err, err
    assert str(n.data) in err, err
    # (The folder looks like a data directory from before the marker: moatd
    # takes its LOCK to check the store, and leaves the store as it was.)
    assert tree_state(n.data / "store") == before, "moatd changed a database that is not its own"
    assert not (n.data / MARKER).exists()
    rc, out, err = n.check_store()
    assert rc == 1 and "not a Moat store" in err, out + err


def test_damaged_marker_refused(node):
    n = node()
    n.data.mkdir()
    (n.data / MARKER).write_text("something else\n")
    rc, out, err = n.run()
    assert rc == 1, out + err
    assert "marker file %s is damaged" % MARKER in err and str(n.data) in err, err


def test_memory_engine_refuses_foreign_data_dir_too(node):
    n = node(engine="memory")
    n.data.mkdir()
    (n.data / "notes.txt").write_text("keep me\n")
    rc, out, err = n.run()
    assert rc == 1 and "not a Moat data directory" in err, out + err
    assert sorted(os.listdir(n.data)) == ["notes.txt"]


# ---------------------------------------------------------------- queue order across a crash


@pytest.mark.parametrize("durability", ["sync", "interval"])
def test_queue_order_survives_sigkill(node, durability):
    """N numbered QoS 1 and QoS 2 messages queued for an offline durable
    subscriber; SIGKILL; restart on the same data: the subscriber gets
    session-present 1 and all N, each once, in the order they were published."""
    count = 300
    n = node(durability=durability)
    b = n.start()
    cid, topic = uniq("durable"), uniq("store/order/")
    queue_for_offline(b, cid, topic, count, qos_of=lambda i: 1 + i % 2, size=40)
    n.kill()
    b = n.start()
    assert restored_queued(b) == (1, count)
    sp, got = receive_all(b, cid, count)
    assert sp, "[MQTT-3.2.2-2] session-present 0 after the restart"
    numbers = [int(p.payload[:6]) for p in got]
    assert numbers == list(range(count)), "out of order or missing: %s" % [
        (i, x) for i, x in enumerate(numbers) if x != i][:10]
    assert [p.qos for p in got] == [1 + i % 2 for i in range(count)]
    assert not any(p.dup for p in got), "nothing was sent before the kill, so nothing is a resend"
    n.stop()
