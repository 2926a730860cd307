#include <bit>
#include <chrono>
#include <cstring>
#include <iterator>
#include <limits>

#include "store/store.hpp"

namespace moat::store {
namespace {

constexpr std::uint8_t kVersion = 1;
static_assert(std::endian::native == std::endian::little,
              "records are written in host (little-endian) order");

class Writer {
 public:
  explicit Writer(std::uint8_t kind) {
    out_.push_back(static_cast<char>(kVersion));
    out_.push_back(static_cast<char>(kind));
  }
  void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u16(std::uint16_t v) { raw(&v, 2); }
  void u64(std::uint64_t v) { raw(&v, 8); }
  void str(std::string_view s) {
    u64(s.size());
    out_.append(s);
  }
  std::string take() { return std::move(out_); }

 private:
  void raw(const void* p, std::size_t n) {
    out_.append(static_cast<const char*>(p), n);
  }  // little-endian hosts
  std::string out_;
};

class Reader {
 public:
  Reader(std::string_view in, std::uint8_t kind, const char* what) : in_(in), what_(what) {
    if (u8() != kVersion) fail("unknown record version");
    if (u8() != kind) fail("wrong record kind");
  }
  std::uint8_t u8() {
    std::uint8_t v = 0;
    raw(&v, 1);
    return v;
  }
  std::uint16_t u16() {
    std::uint16_t v = 0;
    raw(&v, 2);
    return v;
  }
  std::uint64_t u64() {
    std::uint64_t v = 0;
    raw(&v, 8);
    return v;
  }
  std::string str() {
    const auto n = u64();
    if (n > in_.size() - pos_) fail("string runs past the end");
    std::string s(in_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  bool at_end() const { return pos_ == in_.size(); }
  void done() {
    if (pos_ != in_.size()) fail("trailing bytes");
  }

 private:
  void raw(void* p, std::size_t n) {
    if (n > in_.size() - pos_) fail("truncated");
    std::memcpy(p, in_.data() + pos_, n);
    pos_ += n;
  }
  [[noreturn]] void fail(const char* why) {
    throw StoreDamaged(std::string("damaged ") + what_ + " record: " + why);
  }
  std::string_view in_;
  std::size_t pos_ = 0;
  const char* what_;
};

enum Kind : std::uint8_t { kSession = 1, kQueued = 2, kRetained = 3, kBan = 4, kFailures = 5 };
constexpr std::uint8_t kReplayMark = 9;

}  // namespace

std::string encode(const SessionRecord& s) {
  Writer w(kSession);
  w.str(s.client_id);
  w.u64(s.session_id);
  w.u64(s.subscriptions.size());
  for (const auto& [f, q] : s.subscriptions) {
    w.str(f);
    w.u8(q);
  }
  w.u64(s.offline_since_unix_ms);
  return w.take();
}

SessionRecord decode_session(std::string_view bytes) {
  Reader r(bytes, kSession, "session");
  SessionRecord s;
  s.client_id = r.str();
  s.session_id = r.u64();
  const auto n = r.u64();
  for (std::uint64_t i = 0; i < n; ++i) {
    auto f = r.str();
    s.subscriptions.emplace_back(std::move(f), r.u8());
  }
  if (!r.at_end()) s.offline_since_unix_ms = r.u64();  // absent in records of older versions
  r.done();
  return s;
}

std::string encode(const QueuedRecord& q) {
  Writer w(kQueued);
  w.u64(q.seq);
  w.str(q.topic);
  w.str(q.payload);
  w.u8(q.qos);
  w.u8(q.retain ? 1 : 0);
  w.u16(q.packet_id);
  w.u8(q.state);
  return w.take();
}

QueuedRecord decode_queued(std::string_view bytes) {
  Reader r(bytes, kQueued, "queued message");
  QueuedRecord q;
  q.seq = r.u64();
  q.topic = r.str();
  q.payload = r.str();
  q.qos = r.u8();
  q.retain = r.u8() != 0;
  q.packet_id = r.u16();
  q.state = r.u8();
  r.done();
  return q;
}

std::string encode(const RetainedRecord& rr) {
  Writer w(kRetained);
  w.str(rr.topic);
  w.str(rr.payload);
  w.u8(rr.qos);
  return w.take();
}

RetainedRecord decode_retained(std::string_view bytes) {
  Reader r(bytes, kRetained, "retained message");
  RetainedRecord rr;
  rr.topic = r.str();
  rr.payload = r.str();
  rr.qos = r.u8();
  r.done();
  return rr;
}

std::string encode(const BanRecord& b) {
  Writer w(kBan);
  w.str(b.address);
  w.u64(static_cast<std::uint64_t>(b.until_unix_ms));
  w.str(b.reason);
  return w.take();
}

BanRecord decode_ban(std::string_view bytes) {
  Reader r(bytes, kBan, "ban");
  BanRecord b;
  b.address = r.str();
  b.until_unix_ms = static_cast<std::int64_t>(r.u64());
  b.reason = r.str();
  r.done();
  return b;
}

std::string encode(const ReplayMarkRecord& m) {
  Writer w(kReplayMark);
  w.str(m.scope);
  w.u64(m.loop);
  w.str(m.sender);
  w.u64(m.seq);
  w.u64(static_cast<std::uint64_t>(m.written_unix_ms));
  return w.take();
}

ReplayMarkRecord decode_replay_mark(std::string_view bytes) {
  Reader r(bytes, kReplayMark, "replay mark");
  ReplayMarkRecord m;
  m.scope = r.str();
  const auto loop = r.u64();
  m.sender = r.str();
  m.seq = r.u64();
  m.written_unix_ms = static_cast<std::int64_t>(r.u64());
  r.done();
  if (loop > std::numeric_limits<std::uint32_t>::max())
    throw StoreDamaged("damaged replay mark record: loop " + std::to_string(loop));
  if (m.scope.find('\0') != std::string::npos)
    throw StoreDamaged("damaged replay mark record: a 0 byte in its scope");
  m.loop = static_cast<std::uint32_t>(loop);
  return m;
}

std::string replay_mark_key(std::string_view scope, std::uint32_t loop, std::string_view sender) {
  std::string k(scope);
  k.push_back('\0');
  for (int i = 3; i >= 0; --i) k.push_back(static_cast<char>((loop >> (8 * i)) & 0xFF));
  k.append(sender);
  return k;
}

std::string encode(const FailureRecord& f) {
  Writer w(kFailures);
  w.u64(f.failures);
  w.u64(static_cast<std::uint64_t>(f.since_unix_ms));
  return w.take();
}

FailureRecord decode_failures(std::string_view bytes) {
  Reader r(bytes, kFailures, "failure counter");
  FailureRecord f;
  const auto n = r.u64();
  f.since_unix_ms = static_cast<std::int64_t>(r.u64());
  r.done();
  if (n == 0 || n > 0xFFFFFFFFu)
    throw StoreDamaged("damaged failure counter record: count " + std::to_string(n));
  f.failures = static_cast<std::uint32_t>(n);
  return f;
}

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::int64_t to_unix_ms(std::chrono::steady_clock::time_point t, std::chrono::steady_clock::time_point now) {
  return unix_ms_now() + std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count();
}

std::chrono::steady_clock::time_point from_unix_ms(std::int64_t unix_ms,
                                                   std::chrono::steady_clock::time_point now) {
  return now + std::chrono::milliseconds(unix_ms - unix_ms_now());
}

Batch::Entry& Batch::add(Op op, std::uint64_t session_id, std::uint64_t seq) {
  Entry& e = entries_.emplace_back();
  e.op = op;
  e.session_id = session_id;
  e.seq = seq;
  return e;
}

void Batch::put_session(const SessionRecord& s) {
  Entry& e = add(Op::PutSession, s.session_id, 0);
  e.key = s.client_id;
  e.value = encode(s);
}
void Batch::erase_session(std::string_view client_id, std::uint64_t session_id) {
  add(Op::EraseSession, session_id, 0).key = std::string(client_id);
}
void Batch::put_queued(std::uint64_t session_id, const QueuedRecord& q) {
  queued_at_[q.seq] = entries_.size();
  add(Op::PutQueued, session_id, q.seq).value = encode(q);
}
bool Batch::put_inflight(std::uint64_t session_id, std::uint64_t seq, std::uint16_t packet_id,
                         std::uint8_t state) {
  if (auto it = queued_at_.find(seq); it != queued_at_.end()) {
    // The record is written by this batch: its last three bytes are the packet
    // id (u16) and the state (u8), see encode(QueuedRecord).
    std::string& v = entries_[it->second].value;
    std::memcpy(v.data() + v.size() - 3, &packet_id, 2);
    v[v.size() - 1] = static_cast<char>(state);
    return false;
  }
  Entry& e = add(Op::PutInflight, session_id, seq);
  e.packet_id = packet_id;
  e.state = state;
  return true;
}
void Batch::erase_queued(std::uint64_t session_id, std::uint64_t seq, bool inflight_entry) {
  add(Op::EraseQueued, session_id, seq).state = inflight_entry ? 1 : 0;
}
void Batch::append(Batch&& later) {
  const std::size_t base = entries_.size();
  if (entries_.empty()) {
    entries_ = std::move(later.entries_);
  } else {
    entries_.reserve(base + later.entries_.size());
    std::move(later.entries_.begin(), later.entries_.end(), std::back_inserter(entries_));
  }
  for (const auto& [seq, at] : later.queued_at_) queued_at_[seq] = base + at;
  later.clear();
}
void Batch::put_pubrel(std::uint64_t session_id, std::uint16_t packet_id) {
  add(Op::PutPubrel, session_id, packet_id);
}
void Batch::erase_pubrel(std::uint64_t session_id, std::uint16_t packet_id) {
  add(Op::ErasePubrel, session_id, packet_id);
}
void Batch::add_keyed(Op op, std::string_view key, std::string value) {
  Entry& e = add(op, 0, 0);
  e.key = std::string(key);
  e.value = std::move(value);
}
void Batch::put_retained(const RetainedRecord& r) {
  add_keyed(Op::PutRetained, r.topic, encode(r));
}
void Batch::erase_retained(std::string_view topic) {
  add_keyed(Op::EraseRetained, topic);
}
void Batch::put_ban(const BanRecord& b) {
  add_keyed(Op::PutBan, b.address, encode(b));
}
void Batch::erase_ban(std::string_view address) {
  add_keyed(Op::EraseBan, address);
}
void Batch::put_replay_mark(const ReplayMarkRecord& m) {
  add_keyed(Op::PutReplayMark, replay_mark_key(m.scope, m.loop, m.sender), encode(m));
}
void Batch::erase_replay_mark(std::string_view key) {
  add_keyed(Op::EraseReplayMark, key);
}
void Batch::put_failures(const FailureRecord& f) {
  add_keyed(Op::PutFailures, f.key, encode(f));
}
void Batch::erase_failures(std::string_view key) {
  add_keyed(Op::EraseFailures, key);
}

}  // namespace moat::store
