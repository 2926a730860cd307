// Durable broker state behind one interface.
//
// The broker records every change to durable state in a Batch during one event
// loop turn and commits the batch at the end of the turn, before any packet that
// depends on it (PUBACK, PUBREC, PUBREL, a PUBLISH to a durable session) is
// written to a socket: group commit. Start-up reads everything back with load().
//
// What is durable: persistent sessions (clean session 0) with their
// subscriptions, every message queued for or in flight to them, the inbound
// QoS 2 packet ids awaiting PUBREL, retained messages, the addresses the
// brute-force defence banned with its failure counters, and the replay marks
// of the payload policies.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace moat::store {

struct SessionRecord {
  std::string client_id;
  std::uint64_t session_id = 0;
  std::vector<std::pair<std::string, std::uint8_t>> subscriptions;  // filter, QoS
  // Wall clock (ms since the Unix epoch) since when the session has had no
  // connection, for session expiry across restarts; 0 while connected, and in
  // records written before moatd kept it.
  std::uint64_t offline_since_unix_ms = 0;
};

// A message queued for, or in flight to, one durable session.
struct QueuedRecord {
  std::uint64_t seq = 0;  // broker-wide, increasing: restores the order
  std::string topic;
  std::string payload;
  std::uint8_t qos = 0;         // delivery QoS
  bool retain = false;          // RETAIN flag of the delivery
  std::uint16_t packet_id = 0;  // 0 while queued; set once sent
  std::uint8_t state = 0;       // 0 queued, 1 awaiting PUBACK/PUBREC, 2 awaiting PUBCOMP
};

struct RetainedRecord {
  std::string topic;
  std::string payload;
  std::uint8_t qos = 0;
};

// An address banned by the brute-force defence, or (with kClientIdBan before
// it) a client identifier banned for flapping, until a wall-clock time (a
// restart must not lift a ban, and a ban that ended while moatd was stopped is
// not restored).
inline constexpr std::string_view kClientIdBan = "id:";  // never the start of an address
struct BanRecord {
  std::string address;
  std::int64_t until_unix_ms = 0;  // milliseconds since 1970-01-01 UTC
  std::string reason;
};

// The highest sequence number a payload policy's replay window had accepted
// from one sender (docs/payload-security.md), so that a restart does not accept
// an envelope a second time. `scope` names the window's keyring (its file);
// `loop` is the event loop that wrote the mark: each loop keeps a record of its
// own, since the commits of two loops may reach the store in either order (one
// shared record could go back to a lower mark). Restored as the sender's floor,
// the highest over the loops; useless (and removed) once older than the
// keyring's max_age + max_future.
struct ReplayMarkRecord {
  std::string scope;
  std::uint32_t loop = 0;
  std::string sender;  // bytes: a key id, or an ephemeral public key
  std::uint64_t seq = 0;
  std::int64_t written_unix_ms = 0;  // milliseconds since 1970-01-01 UTC
};
// The record's key after its kind: scope, a 0 byte (never in a file name),
// be32(loop), sender.
std::string replay_mark_key(std::string_view scope, std::uint32_t loop, std::string_view sender);
// A failure counter of the brute-force defence (security::FailureCounter): the
// key is an address (its failures towards a ban) or address + '\0' + user name
// (that pair's consecutive failures, its backoff); or, with kClientIdBan before
// it, a client identifier's count of flapping detection. Kept so that a restart
// does not reset the count towards a ban. The record holds the count and the
// time (the window's start, or the last failure); the key is the store's.
struct FailureRecord {
  std::string key;
  std::uint32_t failures = 0;      // not 0
  std::int64_t since_unix_ms = 0;  // milliseconds since 1970-01-01 UTC
};

// Everything durable, as read at start-up.
struct Snapshot {
  struct Session {
    SessionRecord record;
    std::vector<QueuedRecord> queued;  // by seq
    std::vector<std::uint16_t> awaiting_pubrel;
  };
  std::vector<Session> sessions;
  std::vector<RetainedRecord> retained;
  // Bans still in force at load(); those that ended are removed from the store.
  std::vector<BanRecord> bans;
  // Every replay mark (their age is judged against the keyrings' limits).
  std::vector<ReplayMarkRecord> replay_marks;
  // Failure counters (brute-force defence, flapping), every one stored (the
  // broker knows the windows: it drops and forgets those that have ended).
  std::vector<FailureRecord> failures;
  std::uint64_t next_seq = 1;         // above every stored seq
  std::uint64_t next_session_id = 1;  // above every stored session id
  // Messages stored for sessions that had ended when the broker stopped (a crash
  // between storing a delivery and noticing its session was gone). load()
  // removes them; the count is reported so the log says so.
  std::uint64_t orphans_removed = 0;
};

// Changes made during one loop turn. Store-neutral: each store applies the
// operations in order, atomically.
class Batch {
 public:
  enum class Op : std::uint8_t {
    PutSession,
    EraseSession,
    PutQueued,
    PutInflight,
    EraseQueued,
    PutPubrel,
    ErasePubrel,
    PutRetained,
    EraseRetained,
    PutBan,
    EraseBan,
    PutReplayMark,
    EraseReplayMark,
    PutFailures,
    EraseFailures
  };
  struct Entry {
    Op op = Op::PutSession;
    std::uint64_t session_id = 0;
    std::uint64_t seq = 0;        // queued seq, or the packet id for Pubrel ops
    std::uint16_t packet_id = 0;  // PutInflight
    std::uint8_t state = 0;       // PutInflight; EraseQueued: 1 = its in-flight entry too
    std::string key;              // client id, topic, banned address or failure counter key
    std::string value;            // encoded record (see codec functions below)
  };

  void put_session(const SessionRecord& s);
  // Removes the session and everything queued or pending for it.
  void erase_session(std::string_view client_id, std::uint64_t session_id);
  // A queued message; its packet id and state are kept apart (put_inflight), so
  // sending it rewrites a few bytes rather than the payload.
  void put_queued(std::uint64_t session_id, const QueuedRecord& q);
  // Returns true when it wrote a separate in-flight entry, false when the
  // message was queued in this same batch and its record took the packet id and
  // state instead (the common case: routed and sent in one loop turn).
  bool put_inflight(std::uint64_t session_id, std::uint64_t seq, std::uint16_t packet_id, std::uint8_t state);
  // Removes a queued message; `inflight_entry`: put_inflight wrote a separate
  // entry for it that goes too.
  void erase_queued(std::uint64_t session_id, std::uint64_t seq, bool inflight_entry = true);
  void put_pubrel(std::uint64_t session_id, std::uint16_t packet_id);
  void erase_pubrel(std::uint64_t session_id, std::uint16_t packet_id);
  void put_retained(const RetainedRecord& r);
  void erase_retained(std::string_view topic);
  void put_ban(const BanRecord& b);
  void erase_ban(std::string_view address);
  void put_replay_mark(const ReplayMarkRecord& m);
  void erase_replay_mark(std::string_view key);  // replay_mark_key()
  void put_failures(const FailureRecord& f);
  void erase_failures(std::string_view key);

  bool empty() const { return entries_.empty(); }
  std::size_t size() const { return entries_.size(); }
  const std::vector<Entry>& entries() const { return entries_; }
  void clear() {
    entries_.clear();
    queued_at_.clear();
  }
  // Appends the operations of `later` after this batch's (several loop turns
  // committed together keep their order).
  void append(Batch&& later);

 private:
  Entry& add(Op op, std::uint64_t session_id, std::uint64_t seq);
  // An operation on a record named by a key of its kind (retained, ban, replay
  // mark, failure counter): the value is empty for an erase.
  void add_keyed(Op op, std::string_view key, std::string value = {});
  std::vector<Entry> entries_;
  std::unordered_map<std::uint64_t, std::size_t> queued_at_;  // seq -> its PutQueued entry
};

// Implementations are thread-safe: every event loop commits its own batches.
class Store {
 public:
  virtual ~Store() = default;
  // Applies the batch atomically; returns once it is as durable as configured.
  // Throws StoreError when the store cannot write (the broker stops: it must not
  // acknowledge what it could not keep).
  virtual void commit(const Batch& b) = 0;
  virtual Snapshot load() = 0;
  // True when commit() waits for the disk (an fsync): the event loops then
  // commit on a thread of their own and keep serving meanwhile.
  virtual bool commit_waits_for_disk() const { return false; }
  // Human-readable description for logs and --check-store.
  virtual std::string describe() const = 0;
};

class StoreError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The store's files are damaged (a checksum that does not match, a record that
// does not decode): what they held cannot all be read back. Start-up refuses
// such a store rather than go on with part of it; --check-store exits 3.
class StoreDamaged : public StoreError {
 public:
  using StoreError::StoreError;
};

// Record encodings shared by the stores (little-endian, versioned).
std::string encode(const SessionRecord& s);
std::string encode(const QueuedRecord& q);
std::string encode(const RetainedRecord& r);
std::string encode(const BanRecord& b);
std::string encode(const ReplayMarkRecord& m);
// Throw StoreDamaged("damaged ... record: ...") on malformed input.
SessionRecord decode_session(std::string_view bytes);
QueuedRecord decode_queued(std::string_view bytes);
RetainedRecord decode_retained(std::string_view bytes);
BanRecord decode_ban(std::string_view bytes);
ReplayMarkRecord decode_replay_mark(std::string_view bytes);
// The count and time only (the key is the store's): `key` is left empty.
std::string encode(const FailureRecord& f);
FailureRecord decode_failures(std::string_view bytes);
// The time load() compares ban ends with (wall clock, Unix milliseconds).
std::int64_t unix_ms_now();
// Records keep times on the wall clock, which survives a restart; the broker
// and the defences count on the steady clock, which does not. `now` is the
// caller's steady "now": t's distance from it is kept.
std::int64_t to_unix_ms(std::chrono::steady_clock::time_point t, std::chrono::steady_clock::time_point now);
std::chrono::steady_clock::time_point from_unix_ms(std::int64_t unix_ms,
                                                   std::chrono::steady_clock::time_point now);

}  // namespace moat::store
