// The audit stream: one JSON object per line for every security event
// (authentication, ACL denials, bans, TLS failures, refused connections).
// The schema is stable and versioned: docs/audit.md. Secrets (passwords,
// tokens, keys) are never part of an event: no field can carry one.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

namespace moat::security {

// The fields of one event; empty views and empty optionals are left out of
// the line. Views need to live only for the call to emit().
struct AuditEvent {
  std::string_view event;  // "auth.success", "auth.failure", "acl.deny", "ban", "unban",
                           // "tls.failure", "tls.withdrawn", "connection.refused", "payload.reject"
  std::string_view listener;
  std::string_view peer;     // "address:port"
  std::string_view address;  // bans and refusals: the address alone
  std::string_view client_id;
  std::optional<std::string_view> username;  // as sent in CONNECT; absent when none was
  std::string_view identity;                 // the authenticated identity
  std::string_view method;                   // authentication method that decided
  std::string_view reason;
  std::string_view action;                 // acl.deny: "publish" | "subscribe" | "will"
  std::string_view topic;                  // acl.deny: topic name or filter
  std::string_view failure;                // tls.failure, payload.reject: the kind of failure
  std::string_view kid;                    // payload.reject: the key id the envelope names
  std::string_view mode;                   // payload.reject: the envelope's mode ("sign", ...)
  std::optional<int> code;                 // auth.failure: CONNACK return code sent
  std::optional<std::int64_t> delay_ms;    // auth.failure: refusal held this long (backoff)
  std::optional<std::int64_t> failures;    // auth.failure: consecutive failures of this address and user
  std::optional<std::int64_t> suppressed;  // connection.refused: refusals not reported since the last line
  std::optional<std::int64_t> duration_s;  // ban
  std::optional<std::chrono::system_clock::time_point> until;  // ban
};

class AuditSink {
 public:
  virtual ~AuditSink() = default;
  // Thread-safe; never blocks on I/O.
  virtual void emit(const AuditEvent& e) = 0;
};


// One line of JSON (with the trailing newline) for `e` at time `now`.
std::string format_audit_line(const AuditEvent& e, std::chrono::system_clock::time_point now);
// "2024-05-01T12:00:00.123Z"
std::string rfc3339_utc_ms(std::chrono::system_clock::time_point t);

// Writes events to a file (appending) or to stderr ("-"). emit() formats the
// line on the caller's thread and queues it; a background thread writes the
// queue in batches, each batch with one write(2) on an O_APPEND descriptor, so
// lines are never interleaved or torn. If the writer falls behind by more than
// `max_queued` lines, new lines are dropped and counted, and an
// "audit.dropped" event reports how many once the writer catches up.
class AuditLog final : public AuditSink {
 public:
  // Opens the file now (created with mode 0600); throws std::runtime_error
  // "audit log PATH: reason" when it cannot.
  explicit AuditLog(std::string path, std::size_t max_queued = 100'000);
  ~AuditLog() override;  // writes what is queued, then stops
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  void emit(const AuditEvent& e) override;
  // Reopens the file (after logrotate moved it); on failure keeps the old
  // descriptor and returns the reason. For "-" nothing happens.
  std::string reopen();
  // Waits until everything emitted so far is written (tests, shutdown).
  void flush();
  const std::string& path() const { return path_; }
  std::uint64_t dropped() const;

 private:
  void run();
  int open_file() const;

  const std::string path_;
  const std::size_t max_queued_;
  mutable std::mutex mu_;  // the queue and counters
  std::mutex io_mu_;       // the descriptor: held while writing and while reopening
  std::condition_variable wake_;
  std::condition_variable written_;
  std::deque<std::string> queue_;
  std::uint64_t enqueued_ = 0;
  std::uint64_t done_ = 0;
  std::uint64_t dropped_ = 0;
  std::uint64_t dropped_unreported_ = 0;
  bool stop_ = false;
  int fd_ = -1;
  std::thread writer_;
};

}  // namespace moat::security
