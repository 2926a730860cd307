// The embedded durable store: RocksDB in <data_dir>/store.
//
// Keys (one column family):
//   "F"                           format marker "moat-store-1"
//   "s" client-id                 session record
//   "q" be64(session) be64(seq)   queued message
//   "i" be64(session) be64(seq)   in-flight state of the queued message with that key:
//                                 be16(packet id, not 0) u8(state: 1 awaiting PUBACK or
//                                 PUBREC, 2 awaiting PUBCOMP); written and removed with it
//   "p" be64(session) be16(id)    inbound QoS 2 packet id (not 0) awaiting PUBREL; empty value
//   "r" topic                     retained message
//   "b" address                   ban of the brute-force defence
//   "w" scope 0 be32(loop) sender replay mark of a payload policy's keyring (ReplayMarkRecord)
//   "f" address ['\0' user name]  failure counter of the brute-force defence
//   "f" "id:" client-id           count of flapping detection
// Entries of a session whose "s" record is gone are removed by load(); an entry
// that does not decode, an "i" entry without its queued message, two messages of
// one session in flight with the same packet id, a key of another kind are
// damage (StoreDamaged).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "store/store.hpp"

namespace rocksdb {
class DB;
}

namespace moat::store {

enum class Durability {
  Sync,      // every commit is fsync'ed before it returns
  Interval,  // commits reach the OS at once (safe from a process crash); fsync every interval
  None,      // commits reach the OS at once; fsync left to the OS
};

struct RocksDbOptions {
  std::filesystem::path dir;
  Durability durability = Durability::Sync;
  std::chrono::milliseconds sync_interval{100};
  // Opens an existing store without writing anything to its folder (no WAL
  // replay flushed to disk, no info log, no format marker): --check-store, and
  // the check that a folder holds a Moat store before moatd writes to it.
  // commit() and load() must not be called on such a store.
  bool read_only = false;
};

class RocksDbStore final : public Store {
 public:
  // Opens or creates the store. Throws StoreDamaged for a damaged store (the
  // write-ahead log or a table file fails its checksum: RocksDB recovers only
  // a torn last record, the normal trace of a crash), StoreError for a folder
  // that is not a Moat store or one that cannot be opened (with the reason).
  explicit RocksDbStore(RocksDbOptions options);
  ~RocksDbStore() override;

  void commit(const Batch& b) override;
  Snapshot load() override;
  bool commit_waits_for_disk() const override { return options_.durability == Durability::Sync; }
  std::string describe() const override;

  // Reads every record as load() does, with the same decoders and checks,
  // counts what load() would restore and what it would remove, and verifies
  // the checksums of every table file (--check-store). A finding in `damage`
  // is one load() refuses the store for (StoreDamaged); the entries of ended
  // sessions are not damage: load() removes them.
  struct Report {
    static constexpr std::size_t kMaxDamage = 20;  // findings kept in `damage`
    // Of the sessions restored: their queued messages, of which in flight
    // (sent, awaiting PUBACK, PUBREC or PUBCOMP), and the inbound QoS 2 packet
    // ids awaiting PUBREL. Bans: every ban record, ended or not.
    std::uint64_t sessions = 0, queued = 0, inflight = 0, pubrel = 0, retained = 0, bans = 0;
    std::uint64_t replay_marks = 0;  // every mark, stale ones included (start-up removes those)
    std::uint64_t failures = 0;      // failure counters (brute-force defence, flapping)
    // Entries of sessions that have no session record, by kind: queued
    // messages, in-flight states, packet ids awaiting PUBREL.
    std::uint64_t orphan_queued = 0, orphan_inflight = 0, orphan_pubrel = 0;
    std::uint64_t damaged = 0;        // findings
    std::uint64_t bytes = 0;          // keys and values
    std::vector<std::string> damage;  // the first kMaxDamage findings, in the order found
    std::uint64_t orphans() const { return orphan_queued + orphan_inflight + orphan_pubrel; }
  };
  Report check();
  std::uint64_t syncs() const { return syncs_.load(std::memory_order_relaxed); }

 private:
  void sync_loop();

  RocksDbOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::atomic<std::uint64_t> syncs_{0};
  std::mutex sync_mu_;
  std::condition_variable sync_cv_;
  bool stopping_ = false;
  std::thread syncer_;
};

}  // namespace moat::store
