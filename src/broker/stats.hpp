// Counters of one event loop. Only the owning loop writes them (relaxed store of
// load+1, no locked instruction); any thread may read them for reporting.
#pragma once

#include <atomic>
#include <cstdint>

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

}  // namespace moat::broker
