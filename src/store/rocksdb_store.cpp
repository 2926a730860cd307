#include "store/rocksdb_store.hpp"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/utilities/table_properties_collectors.h>
#include <rocksdb/write_batch.h>

#include <cstdarg>
#include <functional>
#include <map>
#include <optional>
#include <set>

namespace moat::store {
namespace {

constexpr std::string_view kFormatKey = "F";
constexpr std::string_view kFormat = "moat-store-1";
constexpr std::string_view kKinds = "bfipqrsw";  // first byte of every other key

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

// A key or client id in a message: printable ASCII as is, other bytes as \xNN.
std::string printable(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (const char c : bytes) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F && c != '"' && c != '\\') {
      out.push_back(c);
    } else {
      out += "\\x";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 0xF]);
    }
  }
  return out + "\"";
}

// "damaged X record: why" -> "damaged X record (where): why".
std::string with_place(const StoreDamaged& e, const std::string& where) {
  std::string what = e.what();
  const auto colon = what.find(": ");
  return colon == std::string::npos ? what + " (" + where + ")"
                                    : what.substr(0, colon) + " (" + where + ")" + what.substr(colon);
}

std::string n_bytes(std::size_t n) {
  return std::to_string(n) + (n == 1 ? " byte" : " bytes");
}

std::string session_seq(std::uint64_t session, std::uint64_t seq) {
  return "session " + std::to_string(session) + ", seq " + std::to_string(seq);
}

// The entries whose key carries the ids (big-endian, see rocksdb_store.hpp).
// One parser per kind, used by load() and check() alike; each throws
// StoreDamaged naming the kind and the ids it could read.

// "q" be64(session) be64(seq) -> an encoded QueuedRecord whose seq is the key's.
struct QueueEntry {
  std::uint64_t session = 0, seq = 0;
  QueuedRecord record;
};
QueueEntry decode_queue_entry(std::string_view k, std::string_view v) {
  if (k.size() != 17)
    throw StoreDamaged("damaged queued message entry: key " + printable(k) + " of " + n_bytes(k.size()) +
                       ", not 17");
  QueueEntry e;
  e.session = get_be(k, 1, 8);
  e.seq = get_be(k, 9, 8);
  try {
    e.record = decode_queued(v);
  } catch (const StoreDamaged& d) {
    throw StoreDamaged(with_place(d, session_seq(e.session, e.seq)));
  }
  if (e.record.seq != e.seq)
    throw StoreDamaged("damaged queued message record (" + session_seq(e.session, e.seq) +
                       "): it holds seq " + std::to_string(e.record.seq));
  return e;
}

// "i" be64(session) be64(seq) -> be16(packet id) u8(state): the in-flight state
// of the queued message with the same session and seq, written apart from it
// (Batch::put_inflight). State 1: awaiting PUBACK (QoS 1) or PUBREC (QoS 2);
// 2: awaiting PUBCOMP.
struct InflightEntry {
  std::uint64_t session = 0, seq = 0;
  std::uint16_t packet_id = 0;
  std::uint8_t state = 0;
};
InflightEntry decode_inflight(std::string_view k, std::string_view v) {
  if (k.size() != 17)
    throw StoreDamaged("damaged in-flight entry: key " + printable(k) + " of " + n_bytes(k.size()) +
                       ", not 17");
  InflightEntry e;
  e.session = get_be(k, 1, 8);
  e.seq = get_be(k, 9, 8);
  const std::string where = "damaged in-flight entry (" + session_seq(e.session, e.seq) + "): ";
  if (v.size() != 3) throw StoreDamaged(where + "value of " + n_bytes(v.size()) + ", not 3");
  e.packet_id = static_cast<std::uint16_t>(get_be(v, 0, 2));
  e.state = static_cast<std::uint8_t>(v[2]);
  if (e.packet_id == 0) throw StoreDamaged(where + "packet id 0");
  if (e.state != 1 && e.state != 2)
    throw StoreDamaged(where + "packet id " + std::to_string(e.packet_id) + " in state " +
                       std::to_string(e.state) + ", not 1 (awaiting PUBACK/PUBREC) or 2 (awaiting PUBCOMP)");
  return e;
}

// "p" be64(session) be16(packet id) -> empty: an inbound QoS 2 packet id
// awaiting PUBREL.
struct PubrelEntry {
  std::uint64_t session = 0;
  std::uint16_t packet_id = 0;
};
PubrelEntry decode_pubrel(std::string_view k, std::string_view v) {
  if (k.size() != 11)
    throw StoreDamaged("damaged awaiting-PUBREL entry: key " + printable(k) + " of " + n_bytes(k.size()) +
                       ", not 11");
  PubrelEntry e;
  e.session = get_be(k, 1, 8);
  e.packet_id = static_cast<std::uint16_t>(get_be(k, 9, 2));
  const std::string where = "damaged awaiting-PUBREL entry (session " + std::to_string(e.session) +
                            ", packet id " + std::to_string(e.packet_id) + "): ";
  if (e.packet_id == 0) throw StoreDamaged(where + "packet id 0");
  if (!v.empty()) throw StoreDamaged(where + "value of " + n_bytes(v.size()) + ", not empty");
  return e;
}

// A queued message with its in-flight state applied, as the broker restores it
// (Shard::restore): anything else would be resent wrongly, or not at all.
void check_delivery(std::uint64_t session, const QueuedRecord& q) {
  const std::string where = "damaged queued message record (" + session_seq(session, q.seq) + "): ";
  if (q.qos > 2) throw StoreDamaged(where + "QoS " + std::to_string(q.qos));
  if (q.state > 2)
    throw StoreDamaged(where + "state " + std::to_string(q.state) + ", not 0 (queued), 1 or 2 (in flight)");
  if (q.state == 0) return;
  if (q.packet_id == 0) throw StoreDamaged(where + "in flight with packet id 0");
  if (q.qos == 0) throw StoreDamaged(where + "a QoS 0 message in flight");
  if (q.state == 2 && q.qos != 2) throw StoreDamaged(where + "a QoS 1 message awaiting PUBCOMP");
}

// One reading of the whole store as load() interprets it, shared by load()
// and check() so that both reach the same verdict: what load() refuses
// (`damaged`: load() throws, check() counts and goes on), and what load()
// removes (entries of sessions that have ended, bans that have ended) into
// `cleanup`, which only load() writes.
struct Scan {
  std::function<void(std::string)> damaged;
  // Reports an entry of a kind load() does not read (the first after each
  // kind's range: a few seeks, no second pass). check() reads every key itself.
  bool find_unknown = true;
  Snapshot snap;
  rocksdb::WriteBatch cleanup;
  rocksdb::Status status;  // of the iterator; not ok: the scan stopped there
  // Of the sessions restored: queued messages, of which in flight; packet ids
  // awaiting PUBREL. Bans: every ban record, ended or not.
  std::uint64_t queued = 0, inflight = 0, pubrel = 0, bans = 0;
  std::uint64_t replay_marks = 0;
  std::uint64_t failures = 0;  // failure counters (brute-force defence, flapping)
  // Entries of sessions that have no session record.
  std::uint64_t orphan_queued = 0, orphan_inflight = 0, orphan_pubrel = 0;
};

void scan(rocksdb::DB& db, Scan& sc) {
  Snapshot& snap = sc.snap;
  std::map<std::uint64_t, std::size_t> by_id;
  std::unique_ptr<rocksdb::Iterator> it(db.NewIterator(rocksdb::ReadOptions()));
  auto unknown_next = [&] {
    if (!sc.find_unknown || !it->Valid()) return;
    const auto k = it->key().ToStringView();
    if (k.empty() || kKinds.find(k[0]) == std::string_view::npos)
      sc.damaged("entry of unknown kind (key " + printable(k) + ")");
  };
  auto each = [&](char kind, auto&& body) {
    const std::string prefix(1, kind);
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      try {
        body(it->key().ToStringView(), it->value().ToStringView());
      } catch (const StoreDamaged& e) {
        sc.damaged(e.what());
      }
    }
    if (!it->status().ok() && sc.status.ok()) sc.status = it->status();
    unknown_next();  // between this kind and the next
    return sc.status.ok();
  };
  // Before the first kind ("F" sorts before every kind).
  it->SeekToFirst();
  if (it->Valid() && it->key().ToStringView() == kFormatKey) it->Next();
  unknown_next();
  // Sessions first ("s" keys), so the entries of each can be attached to it.
  if (!each('s', [&](std::string_view k, std::string_view v) {
        Snapshot::Session s;
        try {
          s.record = decode_session(v);
        } catch (const StoreDamaged& e) {
          throw StoreDamaged(with_place(e, "client id " + printable(k.substr(1))));
        }
        snap.next_session_id = std::max(snap.next_session_id, s.record.session_id + 1);
        by_id[s.record.session_id] = snap.sessions.size();
        snap.sessions.push_back(std::move(s));
      }))
    return;
  // In-flight states of live sessions, until their queued messages take them.
  std::map<std::pair<std::uint64_t, std::uint64_t>, InflightEntry> inflight;
  if (!each('i', [&](std::string_view k, std::string_view v) {
        const auto e = decode_inflight(k, v);
        if (by_id.count(e.session)) {
          inflight[{e.session, e.seq}] = e;
        } else {
          sc.cleanup.Delete(it->key());
          ++sc.orphan_inflight;
        }
      }))
    return;
  if (!each('p', [&](std::string_view k, std::string_view v) {
        const auto e = decode_pubrel(k, v);
        if (auto s = by_id.find(e.session); s != by_id.end()) {
          snap.sessions[s->second].awaiting_pubrel.push_back(e.packet_id);
          ++sc.pubrel;
        } else {
          sc.cleanup.Delete(it->key());
          ++sc.orphan_pubrel;
        }
      }))
    return;
  std::set<std::pair<std::uint64_t, std::uint16_t>> ids_in_flight;  // session, packet id
  if (!each('q', [&](std::string_view k, std::string_view v) {
        // Taken first: a damaged record is one finding, not two.
        std::optional<InflightEntry> state;
        if (k.size() == 17) {
          if (auto f = inflight.find({get_be(k, 1, 8), get_be(k, 9, 8)}); f != inflight.end()) {
            state = f->second;
            inflight.erase(f);
          }
        }
        auto e = decode_queue_entry(k, v);
        QueuedRecord& q = e.record;
        snap.next_seq = std::max(snap.next_seq, q.seq + 1);
        const auto s = by_id.find(e.session);
        if (s == by_id.end()) {
          sc.cleanup.Delete(it->key());  // (its in-flight entry went above)
          ++sc.orphan_queued;
          return;
        }
        if (state) {
          q.packet_id = state->packet_id;
          q.state = state->state;
        }
        check_delivery(e.session, q);
        if (q.state != 0) {
          // The acknowledgement of one would be taken for the other's.
          if (!ids_in_flight.insert({e.session, q.packet_id}).second)
            throw StoreDamaged("damaged queued message record (" + session_seq(e.session, e.seq) +
                               "): packet id " + std::to_string(q.packet_id) +
                               " is in flight for an earlier message of the session");
          ++sc.inflight;
        }
        ++sc.queued;
        snap.sessions[s->second].queued.push_back(std::move(q));
      }))
    return;
  // Written and removed with their message (Batch::erase_queued): an in-flight
  // state without it is what is left of a message that is lost.
  for (const auto& [id, e] : inflight)
    sc.damaged("damaged in-flight entry (" + session_seq(e.session, e.seq) + "): packet id " +
               std::to_string(e.packet_id) + " in flight for a queued message that is missing");
  if (!each('r', [&](std::string_view k, std::string_view v) {
        try {
          snap.retained.push_back(decode_retained(v));
        } catch (const StoreDamaged& e) {
          throw StoreDamaged(with_place(e, "topic " + printable(k.substr(1))));
        }
      }))
    return;
  const std::int64_t now = unix_ms_now();
  each('b', [&](std::string_view k, std::string_view v) {
    BanRecord b;
    try {
      b = decode_ban(v);
    } catch (const StoreDamaged& e) {
      throw StoreDamaged(with_place(e, "address " + printable(k.substr(1))));
    }
    ++sc.bans;
    if (b.until_unix_ms <= now)
      sc.cleanup.Delete(it->key());  // ended while the broker was stopped
    else
      snap.bans.push_back(std::move(b));
  });
  if (!sc.status.ok()) return;
  // Every mark: how old is too old depends on its keyring (start-up decides).
  each('w', [&](std::string_view k, std::string_view v) {
    ReplayMarkRecord m;
    try {
      m = decode_replay_mark(v);
    } catch (const StoreDamaged& e) {
      throw StoreDamaged(with_place(e, "key " + printable(k)));
    }
    if (k.substr(1) != replay_mark_key(m.scope, m.loop, m.sender))
      throw StoreDamaged("damaged replay mark record (key " + printable(k) + "): it holds scope " +
                         printable(m.scope) + ", loop " + std::to_string(m.loop) + ", sender " +
                         printable(m.sender));
    ++sc.replay_marks;
    snap.replay_marks.push_back(std::move(m));
  });
  // Failure counters: every one is loaded; the broker, which knows the windows,
  // drops and forgets those that ended.
  if (!sc.status.ok()) return;
  each('f', [&](std::string_view k, std::string_view v) {
    const auto key = k.substr(1);
    FailureRecord f;
    try {
      if (key.empty() || key.front() == '\0')
        throw StoreDamaged("damaged failure counter record: no address");
      f = decode_failures(v);
    } catch (const StoreDamaged& e) {
      throw StoreDamaged(with_place(e, "key " + printable(key)));
    }
    f.key = std::string(key);
    ++sc.failures;
    snap.failures.push_back(std::move(f));
  });
}

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
      case Batch::Op::PutReplayMark:
        wb.Put("w" + e.key, e.value);
        break;
      case Batch::Op::EraseReplayMark:
        wb.Delete("w" + e.key);
        break;
      case Batch::Op::PutFailures:
        wb.Put("f" + e.key, e.value);
        break;
      case Batch::Op::EraseFailures:
        wb.Delete("f" + e.key);
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
  Scan sc;
  sc.damaged = [](const std::string& what) { throw StoreDamaged(what); };
  scan(*db_, sc);
  ok_or_throw(sc.status, "store read failed");
  if (sc.cleanup.Count() > 0) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    ok_or_throw(db_->Write(wo, &sc.cleanup), "store cleanup failed");
  }
  sc.snap.orphans_removed = sc.orphan_queued;
  return std::move(sc.snap);
}

RocksDbStore::Report RocksDbStore::check() {
  Report r;
  auto damaged = [&r](std::string what) {
    ++r.damaged;
    if (r.damage.size() < Report::kMaxDamage) r.damage.push_back(std::move(what));
  };
  // Every entry: its size, and a kind that load() reads (any other is damage).
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const auto k = it->key().ToStringView();
    const auto v = it->value().ToStringView();
    r.bytes += k.size() + v.size();
    if (k == kFormatKey) continue;
    if (k.empty() || kKinds.find(k[0]) == std::string_view::npos)
      damaged("entry of unknown kind (key " + printable(k) + ")");
  }
  if (!it->status().ok()) damaged("reading the store: " + it->status().ToString());
  it.reset();
  // Then every record as load() reads it, with the same decoders and checks.
  Scan sc;
  sc.damaged = damaged;
  sc.find_unknown = false;  // every key was looked at above
  scan(*db_, sc);
  if (!sc.status.ok()) damaged("reading the store: " + sc.status.ToString());
  r.sessions = sc.snap.sessions.size();
  r.queued = sc.queued;
  r.inflight = sc.inflight;
  r.pubrel = sc.pubrel;
  r.retained = sc.snap.retained.size();
  r.bans = sc.bans;
  r.replay_marks = sc.replay_marks;
  r.failures = sc.failures;
  r.orphan_queued = sc.orphan_queued;
  r.orphan_inflight = sc.orphan_inflight;
  r.orphan_pubrel = sc.orphan_pubrel;
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
