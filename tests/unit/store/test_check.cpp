// The RocksDB store's in-flight ("i") and awaiting-PUBREL ("p") entries: what
// load() restores from them, what it removes, what it refuses as damage, and
// that check() (moatd --check-store) reaches the same verdicts.
#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include <filesystem>
#include <random>

#include "store/rocksdb_store.hpp"

namespace moat::store {
namespace {

class StoreDir {
 public:
  StoreDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("moat-check-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~StoreDir() { std::filesystem::remove_all(path_); }
  std::filesystem::path store() const { return path_ / "store"; }
  RocksDbOptions options(bool read_only = false) const {
    RocksDbOptions o;
    o.dir = store();
    o.read_only = read_only;
    return o;
  }

 private:
  std::filesystem::path path_;
};

std::string be(std::uint64_t v, int bytes) {
  std::string out;
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return out;
}
std::string inflight_key(std::uint64_t session, std::uint64_t seq) {
  return "i" + be(session, 8) + be(seq, 8);
}
std::string pubrel_key(std::uint64_t session, std::uint16_t id) {
  return "p" + be(session, 8) + be(id, 2);
}
std::string inflight_value(std::uint16_t packet_id, std::uint8_t state) {
  return be(packet_id, 2) + std::string(1, static_cast<char>(state));
}

QueuedRecord message(std::uint64_t seq, std::uint8_t qos) {
  return QueuedRecord{seq, "t/" + std::to_string(seq), "payload " + std::to_string(seq), qos, false, 0, 0};
}

// Session 1 ("good") with four messages and one inbound QoS 2 id:
//   seq 10, QoS 1: sent in a later turn (packet id 5, state 1, an "i" entry)
//   seq 11, QoS 2: PUBREC received (packet id 6, state 2, an "i" entry)
//   seq 12, QoS 1: still queued
//   seq 13, QoS 2: queued and sent in one turn (packet id 8, state 1, in its record)
//   packet id 7 awaiting PUBREL
void write_good_session(const StoreDir& dir) {
  RocksDbStore s(dir.options());
  Batch queued;
  queued.put_session(SessionRecord{"good", 1, {{"t/#", 2}}});
  queued.put_queued(1, message(10, 1));
  queued.put_queued(1, message(11, 2));
  queued.put_queued(1, message(12, 1));
  s.commit(queued);
  Batch sent;
  EXPECT_TRUE(sent.put_inflight(1, 10, 5, 1));
  EXPECT_TRUE(sent.put_inflight(1, 11, 6, 2));
  sent.put_pubrel(1, 7);
  sent.put_queued(1, message(13, 2));
  EXPECT_FALSE(sent.put_inflight(1, 13, 8, 1));
  s.commit(sent);
}

// Writes entries as they are, past the store's API (what damage, or another
// program, leaves behind).
void put_raw(const StoreDir& dir, const std::vector<std::pair<std::string, std::string>>& entries) {
  rocksdb::Options o;
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(o, dir.store().string(), &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  for (const auto& [k, v] : entries) ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), k, v).ok());
}

RocksDbStore::Report check(const StoreDir& dir) {
  RocksDbStore s(dir.options(true));
  return s.check();
}

// load() refuses the store with `what`, as check() reported it first.
void expect_load_refuses(const StoreDir& dir, const std::string& what) {
  RocksDbStore s(dir.options());
  try {
    (void)s.load();
    ADD_FAILURE() << "load() accepted a store check() found damaged (" << what << ")";
  } catch (const StoreDamaged& e) {
    EXPECT_EQ(e.what(), what);
  }
}

TEST(StoreCheck, SessionWithMessagesInFlightAndIdsAwaitingPubrel) {
  StoreDir dir;
  write_good_session(dir);
  const auto r = check(dir);
  EXPECT_EQ(r.sessions, 1u);
  EXPECT_EQ(r.queued, 4u);
  EXPECT_EQ(r.inflight, 3u);  // two with "i" entries, one with its state in its record
  EXPECT_EQ(r.pubrel, 1u);
  EXPECT_EQ(r.orphans(), 0u);
  EXPECT_EQ(r.damaged, 0u);
  EXPECT_TRUE(r.damage.empty());

  RocksDbStore s(dir.options());
  const Snapshot snap = s.load();
  ASSERT_EQ(snap.sessions.size(), 1u);
  const auto& q = snap.sessions[0].queued;
  ASSERT_EQ(q.size(), 4u);
  EXPECT_EQ(q[0].seq, 10u);
  EXPECT_EQ(q[0].packet_id, 5u);
  EXPECT_EQ(q[0].state, 1u);
  EXPECT_EQ(q[1].packet_id, 6u);
  EXPECT_EQ(q[1].state, 2u);
  EXPECT_EQ(q[2].packet_id, 0u);
  EXPECT_EQ(q[2].state, 0u);
  EXPECT_EQ(q[3].packet_id, 8u);
  EXPECT_EQ(q[3].state, 1u);
  EXPECT_EQ(snap.sessions[0].awaiting_pubrel, std::vector<std::uint16_t>{7});
  EXPECT_EQ(snap.orphans_removed, 0u);
}

TEST(StoreCheck, MalformedInflightEntriesAreDamage) {
  const struct {
    std::string key, value, damage;
  } cases[] = {
      {inflight_key(1, 10), inflight_value(5, 1) + "x",
       "damaged in-flight entry (session 1, seq 10): value of 4 bytes, not 3"},
      {inflight_key(1, 10), "", "damaged in-flight entry (session 1, seq 10): value of 0 bytes, not 3"},
      {inflight_key(1, 10), inflight_value(0, 1), "damaged in-flight entry (session 1, seq 10): packet id 0"},
      {inflight_key(1, 11), inflight_value(6, 3),
       "damaged in-flight entry (session 1, seq 11): packet id 6 in state 3, not 1 (awaiting PUBACK/PUBREC) "
       "or 2 "
       "(awaiting PUBCOMP)"},
      {inflight_key(1, 12), inflight_value(9, 0),
       "damaged in-flight entry (session 1, seq 12): packet id 9 in state 0, not 1 (awaiting PUBACK/PUBREC) "
       "or 2 "
       "(awaiting PUBCOMP)"},
      {"i" + be(1, 8) + be(10, 4), inflight_value(5, 1),
       "damaged in-flight entry: key \"i\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x0a\" of 13 "
       "bytes, "
       "not 17"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.damage);
    StoreDir dir;
    write_good_session(dir);
    put_raw(dir, {{c.key, c.value}});
    const auto r = check(dir);
    EXPECT_EQ(r.damaged, 1u);
    ASSERT_EQ(r.damage.size(), 1u);
    EXPECT_EQ(r.damage[0], c.damage);
    EXPECT_EQ(r.sessions, 1u);
    expect_load_refuses(dir, c.damage);
  }
}

TEST(StoreCheck, MalformedPubrelEntriesAreDamage) {
  const struct {
    std::string key, value, damage;
  } cases[] = {
      {pubrel_key(1, 9), "x",
       "damaged awaiting-PUBREL entry (session 1, packet id 9): value of 1 byte, not empty"},
      {pubrel_key(1, 7), std::string(3, '\0'),
       "damaged awaiting-PUBREL entry (session 1, packet id 7): value of 3 bytes, not empty"},
      {pubrel_key(1, 0), "", "damaged awaiting-PUBREL entry (session 1, packet id 0): packet id 0"},
      {"p" + be(1, 8) + be(9, 4), "",
       "damaged awaiting-PUBREL entry: key \"p\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x09\" "
       "of 13 "
       "bytes, not 11"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.damage);
    StoreDir dir;
    write_good_session(dir);
    put_raw(dir, {{c.key, c.value}});
    const auto r = check(dir);
    EXPECT_EQ(r.damaged, 1u);
    ASSERT_EQ(r.damage.size(), 1u);
    EXPECT_EQ(r.damage[0], c.damage);
    expect_load_refuses(dir, c.damage);
  }
}

TEST(StoreCheck, InflightStateWithoutItsMessageIsDamage) {
  StoreDir dir;
  write_good_session(dir);
  put_raw(dir, {{inflight_key(1, 99), inflight_value(20, 1)}});
  const auto r = check(dir);
  EXPECT_EQ(r.damaged, 1u);
  const std::string what =
      "damaged in-flight entry (session 1, seq 99): packet id 20 in flight for a queued message that is "
      "missing";
  ASSERT_EQ(r.damage.size(), 1u);
  EXPECT_EQ(r.damage[0], what);
  EXPECT_EQ(r.queued, 4u);
  expect_load_refuses(dir, what);
}

TEST(StoreCheck, TwoMessagesOfASessionInFlightWithOnePacketIdAreDamage) {
  StoreDir dir;
  write_good_session(dir);
  // seq 12 was queued; now "in flight" with the packet id of seq 10.
  put_raw(dir, {{inflight_key(1, 12), inflight_value(5, 1)}});
  const auto r = check(dir);
  const std::string what =
      "damaged queued message record (session 1, seq 12): packet id 5 is in flight for an earlier message of "
      "the "
      "session";
  ASSERT_EQ(r.damage.size(), 1u);
  EXPECT_EQ(r.damage[0], what);
  expect_load_refuses(dir, what);
}

TEST(StoreCheck, InflightStateThatDoesNotFitItsMessageIsDamage) {
  StoreDir dir;
  write_good_session(dir);
  // seq 12 is a QoS 1 message: it never awaits PUBCOMP.
  put_raw(dir, {{inflight_key(1, 12), inflight_value(30, 2)}});
  const auto r = check(dir);
  const std::string what =
      "damaged queued message record (session 1, seq 12): a QoS 1 message awaiting PUBCOMP";
  ASSERT_EQ(r.damage.size(), 1u);
  EXPECT_EQ(r.damage[0], what);
  expect_load_refuses(dir, what);
}

TEST(StoreCheck, EntriesOfEndedSessionsAreCountedAndRemovedByLoad) {
  StoreDir dir;
  write_good_session(dir);
  {
    RocksDbStore s(dir.options());
    Batch b;  // session 2 has no session record
    b.put_queued(2, message(20, 1));
    s.commit(b);
    Batch sent;
    EXPECT_TRUE(sent.put_inflight(2, 20, 3, 1));
    sent.put_pubrel(2, 4);
    sent.put_pubrel(2, 5);
    s.commit(sent);
  }
  put_raw(dir, {{inflight_key(3, 1), inflight_value(1, 1)}});  // of a message that went with its session
  const auto r = check(dir);
  EXPECT_EQ(r.damaged, 0u);
  EXPECT_EQ(r.orphan_queued, 1u);
  EXPECT_EQ(r.orphan_inflight, 2u);
  EXPECT_EQ(r.orphan_pubrel, 2u);
  EXPECT_EQ(r.orphans(), 5u);
  // The counts of the session that is restored leave them out.
  EXPECT_EQ(r.queued, 4u);
  EXPECT_EQ(r.inflight, 3u);
  EXPECT_EQ(r.pubrel, 1u);
  {
    RocksDbStore s(dir.options());
    const Snapshot snap = s.load();
    EXPECT_EQ(snap.orphans_removed, 1u);
    ASSERT_EQ(snap.sessions.size(), 1u);
    EXPECT_EQ(snap.sessions[0].queued.size(), 4u);
    EXPECT_EQ(snap.next_seq, 21u);  // above the removed message's seq too
  }
  const auto after = check(dir);
  EXPECT_EQ(after.orphans(), 0u);
  EXPECT_EQ(after.damaged, 0u);
  EXPECT_EQ(after.queued, 4u);
}

TEST(StoreCheck, MalformedEntryOfAnEndedSessionIsStillDamage) {
  // load() decodes before it looks for the session: bytes Moat did not write
  // are damage wherever they are.
  StoreDir dir;
  write_good_session(dir);
  put_raw(dir, {{inflight_key(2, 20), inflight_value(3, 9)}, {pubrel_key(2, 4), "zz"}});
  const auto r = check(dir);
  EXPECT_EQ(r.damaged, 2u);
  ASSERT_EQ(r.damage.size(), 2u);
  EXPECT_EQ(r.damage[0],
            "damaged in-flight entry (session 2, seq 20): packet id 3 in state 9, not 1 (awaiting "
            "PUBACK/PUBREC) or 2 "
            "(awaiting PUBCOMP)");
  EXPECT_EQ(r.damage[1],
            "damaged awaiting-PUBREL entry (session 2, packet id 4): value of 2 bytes, not empty");
  EXPECT_EQ(r.orphans(), 0u);
  expect_load_refuses(dir, r.damage[0]);
}

TEST(StoreCheck, EveryFindingIsCountedTheFirstOnesListed) {
  StoreDir dir;
  write_good_session(dir);
  std::vector<std::pair<std::string, std::string>> bad;
  for (std::uint16_t id = 1; id <= RocksDbStore::Report::kMaxDamage + 5; ++id)
    bad.emplace_back(pubrel_key(1, id), "v");
  put_raw(dir, bad);
  const auto r = check(dir);
  EXPECT_EQ(r.damaged, RocksDbStore::Report::kMaxDamage + 5);
  ASSERT_EQ(r.damage.size(), RocksDbStore::Report::kMaxDamage);
  EXPECT_EQ(r.damage[0],
            "damaged awaiting-PUBREL entry (session 1, packet id 1): value of 1 byte, not empty");
  // The rest of the store is still read and counted.
  EXPECT_EQ(r.queued, 4u);
  EXPECT_EQ(r.inflight, 3u);
}

TEST(StoreCheck, QueuedRecordDamageNamesItsSessionAndSeq) {
  StoreDir dir;
  write_good_session(dir);
  std::string record = encode(message(12, 1));
  put_raw(dir, {{"q" + be(1, 8) + be(12, 8), record.substr(0, record.size() - 1)}});
  const auto r = check(dir);
  ASSERT_EQ(r.damage.size(), 1u);
  EXPECT_EQ(r.damage[0], "damaged queued message record (session 1, seq 12): truncated");
  expect_load_refuses(dir, r.damage[0]);
}

TEST(StoreCheck, EntriesOfUnknownKindAreDamageToLoadToo) {
  // Before the first kind, between two, after the last.
  for (const std::string key : {"Fx", "a", "c1", "j", "zz"}) {
    SCOPED_TRACE(key);
    StoreDir dir;
    write_good_session(dir);
    put_raw(dir, {{key, "v"}});
    const auto r = check(dir);
    const std::string what = "entry of unknown kind (key \"" + key + "\")";
    ASSERT_EQ(r.damage.size(), 1u);
    EXPECT_EQ(r.damage[0], what);
    expect_load_refuses(dir, what);
  }
}

TEST(StoreCheck, ReplayMarksAreCountedAndOnesThatDoNotDecodeAreDamage) {
  StoreDir dir;
  write_good_session(dir);
  const ReplayMarkRecord good{"keys.toml", 1, "sensor-1", 42, unix_ms_now()};
  {
    RocksDbStore s(dir.options());
    Batch b;
    b.put_replay_mark(good);
    s.commit(b);
  }
  auto r = check(dir);
  EXPECT_EQ(r.replay_marks, 1u);
  EXPECT_EQ(r.damaged, 0u);
  {
    RocksDbStore s(dir.options());
    const Snapshot snap = s.load();
    ASSERT_EQ(snap.replay_marks.size(), 1u);
    EXPECT_EQ(snap.replay_marks[0].seq, 42u);
  }
  // Truncated, and a record filed under another sender's key.
  const std::string key = "w" + replay_mark_key("keys.toml", 1, "sensor-2");
  const std::string record = encode(good);
  put_raw(dir, {{key, record.substr(0, record.size() - 1)}});
  r = check(dir);
  ASSERT_EQ(r.damage.size(), 1u);
  EXPECT_EQ(r.damage[0],
            "damaged replay mark record (key \"wkeys.toml\\x00\\x00\\x00\\x00\\x01sensor-2\"): truncated");
  expect_load_refuses(dir, r.damage[0]);
  put_raw(dir, {{key, record}});
  r = check(dir);
  ASSERT_EQ(r.damage.size(), 1u);
  EXPECT_EQ(r.damage[0],
            "damaged replay mark record (key \"wkeys.toml\\x00\\x00\\x00\\x00\\x01sensor-2\"): it holds "
            "scope \"keys.toml\", loop 1, sender \"sensor-1\"");
  expect_load_refuses(dir, r.damage[0]);
}

TEST(StoreCheck, FailureCountersAreCountedAndMalformedOnesAreDamage) {
  StoreDir dir;
  write_good_session(dir);
  {
    RocksDbStore s(dir.options());
    Batch b;
    b.put_failures({"192.0.2.1", 3, 1'767'225'600'000});
    b.put_failures({std::string("192.0.2.1") + '\0' + "alice", 3, 1'767'225'600'000});
    s.commit(b);
  }
  auto r = check(dir);
  EXPECT_EQ(r.failures, 2u);
  EXPECT_EQ(r.damaged, 0u);
  const std::string good = encode(FailureRecord{"", 1, 1'767'225'600'000});
  const std::vector<std::pair<std::pair<std::string, std::string>, std::string>> cases{
      {{"f192.0.2.2", good.substr(0, good.size() - 1)},
       "damaged failure counter record (key \"192.0.2.2\"): truncated"},
      {{"f192.0.2.3", encode(FailureRecord{"", 0, 1})},
       "damaged failure counter record (key \"192.0.2.3\"): count 0"},
      {{"f", good}, "damaged failure counter record (key \"\"): no address"},
      {{std::string("f") + '\0' + "bob", good},
       "damaged failure counter record (key \"\\x00bob\"): no address"},
  };
  for (const auto& [entry, what] : cases) {
    SCOPED_TRACE(what);
    StoreDir bad;
    write_good_session(bad);
    put_raw(bad, {entry});
    r = check(bad);
    ASSERT_EQ(r.damage.size(), 1u);
    EXPECT_EQ(r.damage[0], what);
    expect_load_refuses(bad, what);
  }
}

}  // namespace
}  // namespace moat::store
