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
};

}  // namespace moat::broker
