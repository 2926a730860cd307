#include "store/rocksdb_store.hpp"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/utilities/table_properties_collectors.h>
#include <rocksdb/write_batch.h>

#include <cstdarg>
#include <map>
#include <set>

namespace moat::store {
namespace {

constexpr std::string_view kFormatKey = "F";
constexpr std::string_view kFormat = "moat-store-1";

void put_be(std::string& out, std::uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
std::uint64_t get_be(std::string_view in, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i)
    v = (v << 8) | static_cast<unsigned char>(in[at + static_cast<std::size_t>(i)]);
  return v;
}
// Big-endian ids keep one session's entries together and in seq order.
std::string key(char kind, std::uint64_t session, std::uint64_t seq, int seq_bytes) {
  std::string k(1, kind);
  put_be(k, session, 8);
  put_be(k, seq, seq_bytes);
  return k;
}
std::string session_prefix(char kind, std::uint64_t session) {
  std::string k(1, kind);
  put_be(k, session, 8);
  return k;
}

// Corruption (a checksum that does not match) is damage: what the damaged part
// held is lost to a reader, so the caller must not go on as if it were not.
void ok_or_throw(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return;
  if (s.IsCorruption()) throw StoreDamaged(what + ": " + s.ToString());
  throw StoreError(what + ": " + s.ToString());
}

// RocksDB's info log for a read-only open: nothing is written to the folder.
class SilentLogger final : public rocksdb::Logger {
 public:
  using rocksdb::Logger::Logv;
  void Logv(const char*, va_list) override {}
  void Logv(const rocksdb::InfoLogLevel, const char*, va_list) override {}
};

}  // namespace

RocksDbStore::RocksDbStore(RocksDbOptions options) : options_(std::move(options)) {
  namespace fs = std::filesystem;
  const std::string dir = options_.dir.string();
  std::error_code ec;
  const bool exists = fs::exists(options_.dir, ec);
  if (exists && !fs::is_empty(options_.dir, ec) && !fs::exists(options_.dir / "CURRENT", ec))
    throw StoreError(dir + " holds files but is not a RocksDB store; refusing to use it");
  if (options_.read_only && !fs::exists(options_.dir / "CURRENT", ec)) throw StoreError("no store in " + dir);
  rocksdb::Options o;
  o.create_if_missing = !options_.read_only;
  o.paranoid_checks = true;
  // After a crash the last WAL record may be torn (written in part): RocksDB
  // drops it, which loses nothing acknowledged (its write had not returned).
  // Damage anywhere else in the WAL makes the open fail. RocksDB's default,
  // kPointInTimeRecovery, would instead stop replaying at the damage and open
  // the store without every later write: acknowledged messages gone silently.
  o.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  o.max_background_jobs = 2;  // flushes and background compaction
  o.keep_log_file_num = 4;
  // A queue is written once and deleted soon after: files end up mostly
  // tombstones, which slow start-up scans. Such a file (half of any 10000
  // consecutive entries deleted) is compacted in the background at once rather
  // than when its level fills up.
  o.table_properties_collector_factories.emplace_back(
      rocksdb::NewCompactOnDeletionCollectorFactory(10000, 5000, 0.5));
  rocksdb::DB* raw = nullptr;
  if (options_.read_only) o.info_log = std::make_shared<SilentLogger>();
  const auto opened =
      options_.read_only ? rocksdb::DB::OpenForReadOnly(o, dir, &raw) : rocksdb::DB::Open(o, dir, &raw);
  if (opened.IsCorruption()) throw StoreDamaged("store " + dir + " is damaged: " + opened.ToString());
  ok_or_throw(opened, "cannot open store " + dir);
  db_.reset(raw);
  std::string format;
  const auto st = db_->Get(rocksdb::ReadOptions(), std::string(kFormatKey), &format);
  if (st.IsNotFound()) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    it->SeekToFirst();
    if (it->Valid()) throw StoreError(dir + " is a RocksDB database but not a Moat store");
    ok_or_throw(it->status(), "cannot read the store " + dir);
    // An empty database: one moatd created and stopped before writing the
    // marker, or a new one.
    if (!options_.read_only) {
      rocksdb::WriteOptions wo;
      wo.sync = true;
      ok_or_throw(db_->Put(wo, std::string(kFormatKey), std::string(kFormat)), "cannot initialise the store");
    }
  } else {
    ok_or_throw(st, "cannot read the store format of " + dir);
    if (format != kFormat)
      throw StoreError(dir + ": store format '" + format + "' is not " + std::string(kFormat));
  }
  if (options_.durability == Durability::Interval && !options_.read_only)
    syncer_ = std::thread([this] { sync_loop(); });
}

RocksDbStore::~RocksDbStore() {
  if (syncer_.joinable()) {
    {
      std::lock_guard l(sync_mu_);
      stopping_ = true;
    }
    sync_cv_.notify_all();
    syncer_.join();
  }
  if (db_ && !options_.read_only) (void)db_->SyncWAL();
}

void RocksDbStore::sync_loop() {
  std::unique_lock l(sync_mu_);
  while (!sync_cv_.wait_for(l, options_.sync_interval, [this] { return stopping_; })) {
    l.unlock();
    if (db_->SyncWAL().ok()) syncs_.fetch_add(1, std::memory_order_relaxed);
    l.lock();
  }
}

void RocksDbStore::commit(const Batch& b) {
  if (b.empty()) return;
  rocksdb::WriteBatch wb;
  for (const auto& e : b.entries()) {
    switch (e.op) {
      case Batch::Op::PutSession:
        wb.Put("s" + e.key, e.value);
        break;
      case Batch::Op::EraseSession:
        wb.Delete("s" + e.key);
        for (char kind : {'q', 'i', 'p'})
          wb.DeleteRange(session_prefix(kind, e.session_id), session_prefix(kind, e.session_id + 1));
        break;
      case Batch::Op::PutQueued:
        wb.Put(key('q', e.session_id, e.seq, 8), e.value);
        break;
      case Batch::Op::PutInflight: {
        std::string v;
        put_be(v, e.packet_id, 2);
        v.push_back(static_cast<char>(e.state));
        wb.Put(key('i', e.session_id, e.seq, 8), v);
        break;
      }
      case Batch::Op::EraseQueued:
        wb.Delete(key('q', e.session_id, e.seq, 8));
        if (e.state) wb.Delete(key('i', e.session_id, e.seq, 8));
        break;
      case Batch::Op::PutPubrel:
        wb.Put(key('p', e.session_id, e.seq, 2), "");
        break;
      case Batch::Op::ErasePubrel:
        wb.Delete(key('p', e.session_id, e.seq, 2));
        break;
      case Batch::Op::PutRetained:
        wb.Put("r" + e.key, e.value);
        break;
      case Batch::Op::EraseRetained:
        wb.Delete("r" + e.key);
        break;
      case Batch::Op::PutBan:
        wb.Put("b" + e.key, e.value);
        break;
      case Batch::Op::EraseBan:
        wb.Delete("b" + e.key);
        break;
    }
  }
  rocksdb::WriteOptions wo;
  // Concurrent commits from several event loops are merged by RocksDB into one
  // WAL write and one fsync (its own group commit).
  wo.sync = options_.durability == Durability::Sync;
  ok_or_throw(db_->Write(wo, &wb), "store write failed");
  if (wo.sync) syncs_.fetch_add(1, std::memory_order_relaxed);
}

Snapshot RocksDbStore::load() {
  Snapshot snap;
  std::map<std::uint64_t, std::size_t> by_id;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::pair<std::uint16_t, std::uint8_t>> inflight;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  // Sessions first ("s" keys), so queued entries can be attached to them.
  for (it->Seek("s"); it->Valid() && it->key().starts_with("s"); it->Next()) {
    Snapshot::Session s;
    s.record = decode_session(it->value().ToStringView());
    snap.next_session_id = std::max(snap.next_session_id, s.record.session_id + 1);
    by_id[s.record.session_id] = snap.sessions.size();
    snap.sessions.push_back(std::move(s));
  }
  for (it->Seek("i"); it->Valid() && it->key().starts_with("i"); it->Next()) {
    const auto k = it->key().ToStringView();
    const auto v = it->value().ToStringView();
    if (k.size() != 17 || v.size() != 3) throw StoreDamaged("damaged in-flight entry");
    inflight[{get_be(k, 1, 8), get_be(k, 9, 8)}] = {static_cast<std::uint16_t>(get_be(v, 0, 2)),
                                                    static_cast<std::uint8_t>(v[2])};
  }
  rocksdb::WriteBatch cleanup;  // entries of sessions that had ended (see Snapshot)
  for (it->Seek("p"); it->Valid() && it->key().starts_with("p"); it->Next()) {
    const auto k = it->key().ToStringView();
    if (k.size() != 11) throw StoreDamaged("damaged PUBREL entry");
    if (auto s = by_id.find(get_be(k, 1, 8)); s != by_id.end())
      snap.sessions[s->second].awaiting_pubrel.push_back(static_cast<std::uint16_t>(get_be(k, 9, 2)));
    else
      cleanup.Delete(it->key());
  }
  for (it->Seek("q"); it->Valid() && it->key().starts_with("q"); it->Next()) {
    const auto k = it->key().ToStringView();
    if (k.size() != 17) throw StoreDamaged("damaged queue key");
    auto q = decode_queued(it->value().ToStringView());
    const std::pair<std::uint64_t, std::uint64_t> id{get_be(k, 1, 8), get_be(k, 9, 8)};
    if (auto f = inflight.find(id); f != inflight.end()) {
      q.packet_id = f->second.first;
      q.state = f->second.second;
    }
    snap.next_seq = std::max(snap.next_seq, q.seq + 1);
    if (auto s = by_id.find(id.first); s != by_id.end()) {
      snap.sessions[s->second].queued.push_back(std::move(q));
    } else {
      cleanup.Delete(it->key());
      cleanup.Delete(key('i', id.first, id.second, 8));
      ++snap.orphans_removed;
    }
  }
  for (it->Seek("r"); it->Valid() && it->key().starts_with("r"); it->Next())
    snap.retained.push_back(decode_retained(it->value().ToStringView()));
  const std::int64_t now = unix_ms_now();
  for (it->Seek("b"); it->Valid() && it->key().starts_with("b"); it->Next()) {
    auto b = decode_ban(it->value().ToStringView());
    if (b.until_unix_ms <= now)
      cleanup.Delete(it->key());  // ended while the broker was stopped
    else
      snap.bans.push_back(std::move(b));
  }
  ok_or_throw(it->status(), "store read failed");
  if (cleanup.Count() > 0) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    ok_or_throw(db_->Write(wo, &cleanup), "store cleanup failed");
  }
  return snap;
}

RocksDbStore::Report RocksDbStore::check() {
  Report r;
  auto damaged = [&r](std::string what) {
    ++r.damaged;
    if (r.damage.empty()) r.damage = std::move(what);
  };
  std::set<std::uint64_t> sessions;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const auto k = it->key().ToStringView();
    const auto v = it->value().ToStringView();
    r.bytes += k.size() + v.size();
    try {
      switch (k.empty() ? '\0' : k[0]) {
        case 'F':
          break;
        case 's':
          sessions.insert(decode_session(v).session_id), ++r.sessions;
          break;
        case 'q':
          decode_queued(v), ++r.queued;
          break;
        case 'i':
          ++r.inflight;
          break;
        case 'p':
          ++r.pubrel;
          break;
        case 'r':
          decode_retained(v), ++r.retained;
          break;
        case 'b':
          decode_ban(v), ++r.bans;
          break;
        default:
          damaged("entry of unknown kind");
      }
    } catch (const StoreError& e) {
      damaged(e.what());
    }
  }
  if (!it->status().ok()) damaged("reading the store: " + it->status().ToString());
  for (it->Seek("q"); it->Valid() && it->key().starts_with("q"); it->Next())
    if (!sessions.count(get_be(it->key().ToStringView(), 1, 8))) ++r.orphans;
  // Table files whose blocks were not all read above (filters, index) too.
  if (const auto v = db_->VerifyChecksum(); !v.ok()) damaged("verifying table files: " + v.ToString());
  return r;
}

std::string RocksDbStore::describe() const {
  const char* d = options_.durability == Durability::Sync       ? "sync"
                  : options_.durability == Durability::Interval ? "interval"
                                                                : "none";
  return "rocksdb in " + options_.dir.string() + " (durability " + d + ")";
}

}  // namespace moat::store
