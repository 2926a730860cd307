// Counters of one event loop. Only the owning loop writes them (relaxed store of
// load+1, no locked instruction); any thread may read them for reporting.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>

namespace moat::broker {

struct Counter {
  std::atomic<std::uint64_t> v{0};
  void add(std::uint64_t n = 1) { v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  void sub(std::uint64_t n = 1) { v.store(v.load(std::memory_order_relaxed) - n, std::memory_order_relaxed); }
  std::uint64_t get() const { return v.load(std::memory_order_relaxed); }
};

struct ShardStats {
  Counter clients_connected;     // gauge
  Counter sessions;              // gauge: sessions held, online or not
  Counter messages_received;     // PUBLISH packets accepted from clients
  Counter messages_sent;         // PUBLISH packets written to clients
  Counter dropped_queue_full;    // deliveries refused because a session queue was full
  Counter dropped_offline_qos0;  // QoS 0 deliveries to offline sessions (not queued by default)
  Counter protocol_errors;       // connections closed for a protocol violation
  Counter takeovers;
  Counter dropped_not_authorized;  // PUBLISH refused by the ACL (still acknowledged)
  Counter dropped_payload_policy;  // PUBLISH refused by a topic payload policy (still acknowledged)
  Counter payload_verified;        // PUBLISH and wills that a topic payload policy verified

  struct Snapshot {
    std::uint64_t clients_connected, sessions, messages_received, messages_sent, dropped_queue_full,
        dropped_offline_qos0, protocol_errors, takeovers, dropped_not_authorized, dropped_payload_policy,
        payload_verified;
    Snapshot& operator+=(const Snapshot& o) {
      clients_connected += o.clients_connected;
      sessions += o.sessions;
      messages_received += o.messages_received;
      messages_sent += o.messages_sent;
      dropped_queue_full += o.dropped_queue_full;
      dropped_offline_qos0 += o.dropped_offline_qos0;
      protocol_errors += o.protocol_errors;
      takeovers += o.takeovers;
      dropped_not_authorized += o.dropped_not_authorized;
      dropped_payload_policy += o.dropped_payload_policy;
      payload_verified += o.payload_verified;
      return *this;
    }
  };
  Snapshot snapshot() const {
    return {clients_connected.get(),      sessions.get(),           messages_received.get(),
            messages_sent.get(),          dropped_queue_full.get(), dropped_offline_qos0.get(),
            protocol_errors.get(),        takeovers.get(),          dropped_not_authorized.get(),
            dropped_payload_policy.get(), payload_verified.get()};
  }
};

// A limit of docs/limits.md that was hit. The names are those of the
// $SYS/broker/limits/... topics.
enum class Limit : std::uint8_t {
  Connections,            // max_connections: refused at accept
  ConnectionsPerAddress,  // max_connections_per_address: refused at accept
  ClientIdLength,         // max_client_id_length: CONNACK 0x02
  TopicLength,            // max_topic_length: connection closed (PUBLISH, will) or SUBACK 0x80
  TopicLevels,            // max_topic_levels: likewise
  Subscriptions,          // max_subscriptions_per_client: SUBACK 0x80
  RetainedMessages,       // max_retained_messages: a new retained topic not retained
  RetainedBytes,          // max_retained_bytes: likewise
  Payload,                // [[limits.payload]]: PUBLISH dropped (still acknowledged)
  FlappingDelayed,        // a flapping client's CONNACK held back
  FlappingBanned,         // a flapping client identifier banned
  FlappingRefused,        // a CONNECT refused because its client identifier is banned
};
inline constexpr std::size_t kLimitCount = 12;
// "connections", "topic_length", ...: the $SYS topic and log name.
const char* limit_name(Limit l);

// Broker-wide counters of limits hit, written from any thread (atomic adds: a
// limit is hit rarely, or by an attacker who pays far more per hit than this).
// Each limit is reported at most once per interval; the report says how many
// hits it stands for.
class LimitStats {
 public:
  // Counts one hit. Returns 0 when it is not to be logged now, otherwise the
  // number of hits this report stands for (this one and the unreported ones).
  std::uint64_t hit(Limit l, std::chrono::steady_clock::time_point now, std::chrono::seconds interval) {
    Entry& e = entries_[static_cast<std::size_t>(l)];
    const std::uint64_t total = e.hits.fetch_add(1, std::memory_order_relaxed) + 1;
    const std::int64_t t = now.time_since_epoch().count();
    std::int64_t next = e.next_report.load(std::memory_order_relaxed);
    if (t < next) return 0;
    const std::int64_t then =
        t + std::chrono::duration_cast<std::chrono::steady_clock::duration>(interval).count();
    if (!e.next_report.compare_exchange_strong(next, then, std::memory_order_relaxed)) return 0;
    const std::uint64_t before = e.reported.exchange(total, std::memory_order_relaxed);
    return total > before ? total - before : 1;
  }
  std::uint64_t count(Limit l) const {
    return entries_[static_cast<std::size_t>(l)].hits.load(std::memory_order_relaxed);
  }

 private:
  struct Entry {
    std::atomic<std::uint64_t> hits{0};
    std::atomic<std::int64_t> next_report{std::numeric_limits<std::int64_t>::min()};
    std::atomic<std::uint64_t> reported{0};
  };
  std::array<Entry, kLimitCount> entries_;
};

}  // namespace moat::broker
