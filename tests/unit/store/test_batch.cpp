// Store batches: the operations of one loop turn, and how the two stores apply them.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include "store/memory_store.hpp"
#include "store/rocksdb_store.hpp"

namespace moat::store {
namespace {

QueuedRecord queued(std::uint64_t seq, std::string payload) {
  return QueuedRecord{seq, "t/" + std::to_string(seq), std::move(payload), 1, false, 0, 0};
}

SessionRecord session(std::uint64_t id) {
  return SessionRecord{"client-" + std::to_string(id), id, {{"t/#", 1}}};
}

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("moat-batch-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Runs a test body against both stores.
template <typename Body>
void for_each_store(Body body) {
  {
    MemoryStore m;
    body(static_cast<Store&>(m));
  }
  TempDir dir;
  RocksDbStore r(RocksDbOptions{dir.path() / "store", Durability::Sync, std::chrono::milliseconds(100)});
  body(static_cast<Store&>(r));
}

// Writes with `write` and checks with `check` on a memory store, then on a
// RocksDB store closed and reopened in between (what a restart sees); returns
// what --check-store reports about the reopened one.
template <typename Write, typename Check>
RocksDbStore::Report across_a_reopen(Write write, Check check) {
  {
    MemoryStore m;
    write(static_cast<Store&>(m));
    check(static_cast<Store&>(m));
  }
  TempDir dir;
  const RocksDbOptions o{dir.path() / "store", Durability::Sync, std::chrono::milliseconds(100)};
  {
    RocksDbStore r(o);
    write(static_cast<Store&>(r));
  }
  RocksDbStore reopened(o);
  check(static_cast<Store&>(reopened));
  return reopened.check();
}

TEST(Batch, InflightStateOfAMessageQueuedInTheSameBatchGoesIntoItsRecord) {
  Batch b;
  b.put_queued(7, queued(1, "payload"));
  EXPECT_FALSE(b.put_inflight(7, 1, 4242, 1));
  ASSERT_EQ(b.size(), 1u);  // no separate in-flight entry
  const QueuedRecord r = decode_queued(b.entries()[0].value);
  EXPECT_EQ(r.packet_id, 4242);
  EXPECT_EQ(r.state, 1);
  EXPECT_EQ(r.payload, "payload");
}

TEST(Batch, InflightStateOfAMessageStoredEarlierIsAnEntryOfItsOwn) {
  Batch b;
  EXPECT_TRUE(b.put_inflight(7, 1, 9, 2));
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b.entries()[0].op, Batch::Op::PutInflight);
}

TEST(Batch, AppendKeepsOrderAndLetsLaterTurnsAmendEarlierRecords) {
  Batch first, second;
  first.put_queued(7, queued(1, "a"));
  second.put_queued(7, queued(2, "b"));
  first.append(std::move(second));
  EXPECT_TRUE(second.empty());
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(decode_queued(first.entries()[1].value).seq, 2u);
  EXPECT_FALSE(first.put_inflight(7, 2, 5, 1));
  EXPECT_EQ(decode_queued(first.entries()[1].value).packet_id, 5);
  first.clear();
  EXPECT_TRUE(first.put_inflight(7, 2, 5, 1));  // the index went with clear()
}

TEST(Stores, CoalescedAndSeparateInflightStateBothRestore) {
  for_each_store([](Store& s) {
    Batch b;
    b.put_session(session(7));
    b.put_queued(7, queued(1, "sent in the same turn"));
    b.put_inflight(7, 1, 11, 1);
    QueuedRecord qos2 = queued(2, "sent later");
    qos2.qos = 2;  // (only a QoS 2 message awaits PUBCOMP: state 2)
    b.put_queued(7, qos2);
    b.put_queued(7, queued(3, "still queued"));
    s.commit(b);
    Batch later;
    EXPECT_TRUE(later.put_inflight(7, 2, 12, 2));
    s.commit(later);

    const Snapshot snap = s.load();
    ASSERT_EQ(snap.sessions.size(), 1u);
    const auto& q = snap.sessions[0].queued;
    ASSERT_EQ(q.size(), 3u);
    EXPECT_EQ(q[0].seq, 1u);
    EXPECT_EQ(q[0].packet_id, 11);
    EXPECT_EQ(q[0].state, 1);
    EXPECT_EQ(q[1].packet_id, 12);
    EXPECT_EQ(q[1].state, 2);
    EXPECT_EQ(q[2].packet_id, 0);
    EXPECT_EQ(q[2].state, 0);
    EXPECT_EQ(snap.next_seq, 4u);
  });
}

TEST(Stores, EraseQueuedRemovesTheMessageAndItsInflightEntry) {
  for_each_store([](Store& s) {
    Batch b;
    b.put_session(session(3));
    b.put_queued(3, queued(1, "x"));
    b.put_queued(3, queued(2, "y"));
    b.put_inflight(3, 2, 1, 1);  // coalesced
    s.commit(b);
    Batch c;
    c.put_inflight(3, 1, 2, 1);  // separate entry
    s.commit(c);
    Batch d;
    d.erase_queued(3, 1, true);
    d.erase_queued(3, 2, false);
    s.commit(d);
    const Snapshot snap = s.load();
    ASSERT_EQ(snap.sessions.size(), 1u);
    EXPECT_TRUE(snap.sessions[0].queued.empty());
    // A message stored again under a used seq would pick up a stale in-flight
    // entry if one had been left behind.
    Batch e;
    e.put_queued(3, queued(1, "again"));
    s.commit(e);
    const Snapshot again = s.load();
    ASSERT_EQ(again.sessions[0].queued.size(), 1u);
    EXPECT_EQ(again.sessions[0].queued[0].packet_id, 0);
  });
}

TEST(Stores, BansSurviveAReopenAndEndedOnesAreDroppedAtLoad) {
  const std::int64_t now = unix_ms_now();
  auto ban = [](std::string address, std::int64_t until) { return BanRecord{address, until, "10 failures"}; };
  auto check = [&](Store& s) {
    for (int load = 0; load < 2; ++load) {  // the ended ban was removed at the first, not only skipped
      const Snapshot snap = s.load();
      ASSERT_EQ(snap.bans.size(), 1u);
      EXPECT_EQ(snap.bans[0].address, "2001:db8::7");
      EXPECT_EQ(snap.bans[0].until_unix_ms, now + 3'600'000);
      EXPECT_EQ(snap.bans[0].reason, "10 failures");
    }
  };
  auto write = [&](Store& s) {
    Batch b;
    b.put_ban(ban("192.0.2.1", now + 3'600'000));
    b.put_ban(ban("192.0.2.2", now - 1'000));  // ended while stopped
    b.put_ban(ban("2001:db8::7", now + 1'000));
    b.put_ban(ban("2001:db8::7", now + 3'600'000));  // a later ban replaces the first
    s.commit(b);
    Batch lifted;
    lifted.erase_ban("192.0.2.1");
    s.commit(lifted);
  };
  const auto report = across_a_reopen(write, check);
  EXPECT_EQ(report.bans, 1u);  // the ended one is gone from disk
  EXPECT_EQ(report.damaged, 0u);
}

TEST(Records, BanRecordRoundTripsAndRefusesDamage) {
  const BanRecord b{"198.51.100.4", 1'767'225'600'000, "10 failed authentications within 60 s"};
  const std::string bytes = encode(b);
  const BanRecord d = decode_ban(bytes);
  EXPECT_EQ(d.address, b.address);
  EXPECT_EQ(d.until_unix_ms, b.until_unix_ms);
  EXPECT_EQ(d.reason, b.reason);
  EXPECT_THROW(decode_ban(bytes.substr(0, bytes.size() - 1)), StoreError);
  EXPECT_THROW(decode_ban(encode(RetainedRecord{"t", "p", 0})), StoreError);
}

TEST(Records, SessionRecordKeepsItsOfflineTimeAndReadsOlderRecords) {
  SessionRecord s = session(7);
  s.offline_since_unix_ms = 1'767'225'600'123;
  const std::string bytes = encode(s);
  const SessionRecord d = decode_session(bytes);
  EXPECT_EQ(d.client_id, s.client_id);
  EXPECT_EQ(d.session_id, 7u);
  EXPECT_EQ(d.subscriptions, s.subscriptions);
  EXPECT_EQ(d.offline_since_unix_ms, s.offline_since_unix_ms);
  // Records written before the offline time was kept end after the subscriptions.
  const SessionRecord old = decode_session(bytes.substr(0, bytes.size() - 8));
  EXPECT_EQ(old.subscriptions, s.subscriptions);
  EXPECT_EQ(old.offline_since_unix_ms, 0u);
  EXPECT_THROW(decode_session(bytes.substr(0, bytes.size() - 1)), StoreError);
  EXPECT_THROW(decode_session(bytes + "x"), StoreError);
}

TEST(Records, ReplayMarkRecordRoundTripsAndRefusesDamage) {
  const ReplayMarkRecord m{"/etc/moat/keys.toml", 3, std::string("kid\0\xff", 5), 1'767'225'600'000'123,
                           1'767'225'600'456};
  const std::string bytes = encode(m);
  const ReplayMarkRecord d = decode_replay_mark(bytes);
  EXPECT_EQ(d.scope, m.scope);
  EXPECT_EQ(d.loop, 3u);
  EXPECT_EQ(d.sender, m.sender);
  EXPECT_EQ(d.seq, m.seq);
  EXPECT_EQ(d.written_unix_ms, m.written_unix_ms);
  EXPECT_THROW(decode_replay_mark(bytes.substr(0, bytes.size() - 1)), StoreDamaged);
  EXPECT_THROW(decode_replay_mark(bytes + "x"), StoreDamaged);
  EXPECT_THROW(decode_replay_mark(encode(BanRecord{"192.0.2.1", 1, "r"})), StoreDamaged);
  // The key: the scope, a 0 byte, the loop (4 bytes, big-endian), the sender.
  EXPECT_EQ(replay_mark_key(m.scope, m.loop, m.sender),
            "/etc/moat/keys.toml" + std::string("\0\0\0\0\x03", 5) + m.sender);
}

TEST(Stores, ReplayMarksSurviveAReopenOnePerLoopAndSender) {
  const std::int64_t now = unix_ms_now();
  auto mark = [&](std::uint32_t loop, std::string sender, std::uint64_t seq) {
    return ReplayMarkRecord{"keys.toml", loop, std::move(sender), seq, now};
  };
  auto write = [&](Store& s) {
    Batch b;
    b.put_replay_mark(mark(0, "sensor-1", 100));
    b.put_replay_mark(mark(0, "sensor-1", 200));  // the later mark of a loop replaces its earlier one
    b.put_replay_mark(mark(1, "sensor-1", 150));  // another loop's: a record of its own
    b.put_replay_mark(mark(0, "sensor-2", 7));
    s.commit(b);
    Batch gone;
    gone.erase_replay_mark(replay_mark_key("keys.toml", 0, "sensor-2"));
    s.commit(gone);
  };
  auto check = [&](Store& s) {
    Snapshot snap = s.load();
    ASSERT_EQ(snap.replay_marks.size(), 2u);
    std::sort(snap.replay_marks.begin(), snap.replay_marks.end(),
              [](const auto& a, const auto& b) { return a.loop < b.loop; });
    EXPECT_EQ(snap.replay_marks[0].sender, "sensor-1");
    EXPECT_EQ(snap.replay_marks[0].seq, 200u);
    EXPECT_EQ(snap.replay_marks[0].written_unix_ms, now);
    EXPECT_EQ(snap.replay_marks[1].loop, 1u);
    EXPECT_EQ(snap.replay_marks[1].seq, 150u);
  };
  const auto report = across_a_reopen(write, check);
  EXPECT_EQ(report.replay_marks, 2u);
  EXPECT_EQ(report.damaged, 0u);
}

TEST(Stores, FailureCountersSurviveAReopenAndErasedOnesGo) {
  const std::string pair = std::string("192.0.2.1") + '\0' + "alice";
  auto write = [&](Store& s) {
    Batch b;
    b.put_failures({"192.0.2.1", 3, 1'767'225'600'000});
    b.put_failures({pair, 2, 1'767'225'601'000});
    b.put_failures({"192.0.2.2", 1, 1'767'225'602'000});
    b.put_failures({"192.0.2.1", 4, 1'767'225'600'000});  // a later count replaces the first
    s.commit(b);
    Batch forgotten;
    forgotten.erase_failures("192.0.2.2");
    s.commit(forgotten);
  };
  auto check = [&](Store& s) {
    const Snapshot snap = s.load();
    ASSERT_EQ(snap.failures.size(), 2u);  // in key order
    EXPECT_EQ(snap.failures[0].key, "192.0.2.1");
    EXPECT_EQ(snap.failures[0].failures, 4u);
    EXPECT_EQ(snap.failures[0].since_unix_ms, 1'767'225'600'000);
    EXPECT_EQ(snap.failures[1].key, pair);
    EXPECT_EQ(snap.failures[1].failures, 2u);
    EXPECT_EQ(snap.failures[1].since_unix_ms, 1'767'225'601'000);
  };
  const auto report = across_a_reopen(write, check);
  EXPECT_EQ(report.failures, 2u);
  EXPECT_EQ(report.damaged, 0u);
}

TEST(Records, FailureRecordRoundTripsAndRefusesDamage) {
  const FailureRecord f{"ignored", 7, 1'767'225'600'123};
  const std::string bytes = encode(f);
  const FailureRecord d = decode_failures(bytes);
  EXPECT_EQ(d.key, "");  // the key is the store's
  EXPECT_EQ(d.failures, 7u);
  EXPECT_EQ(d.since_unix_ms, f.since_unix_ms);
  EXPECT_THROW(decode_failures(bytes.substr(0, bytes.size() - 1)), StoreError);
  EXPECT_THROW(decode_failures(bytes + "x"), StoreError);
  EXPECT_THROW(decode_failures(encode(BanRecord{"192.0.2.1", 1, "r"})), StoreError);
  EXPECT_THROW(decode_failures(encode(FailureRecord{"", 0, 1})),
               StoreDamaged);  // a count of 0 is never stored
}

}  // namespace
}  // namespace moat::store
