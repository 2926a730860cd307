// The embedded durable store: RocksDB in <data_dir>/store.
//
// Keys (one column family):
//   "F"                           format marker "moat-store-1"
//   "s" client-id                 session record
//   "q" be64(session) be64(seq)   queued message
//   "i" be64(session) be64(seq)   in-flight state of a queued message (packet id, state)
//   "p" be64(session) be16(id)    inbound QoS 2 packet id awaiting PUBREL
//   "r" topic                     retained message
//   "b" address                   ban of the brute-force defence
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>

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

  // Counts per key kind, checks that every record decodes and verifies the
  // checksums of every table file (--check-store).
  struct Report {
    std::uint64_t sessions = 0, queued = 0, inflight = 0, pubrel = 0, retained = 0, bans = 0, orphans = 0,
                  damaged = 0;
    std::uint64_t bytes = 0;
    std::string damage;  // the first damage found, empty if none
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
