// Broker-wide limits, filled from [limits] in moat.toml (see docs/configuration.md
// and docs/limits.md).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace moat::broker {

// What a session's full queue does with one more message (docs/mqtt.md).
enum class QueueFullPolicy : std::uint8_t {
  DropNew,     // the new message is not queued for this session
  DropOldest,  // the oldest queued messages make room for it
};

// [[limits.payload]]: PUBLISH payloads on topics matching `topics` are at most
// `max` bytes; a larger one is dropped (and still acknowledged).
struct PayloadLimit {
  std::string topics;  // a valid topic filter
  std::uint32_t max = 0;
};

struct Limits {
  std::uint32_t max_packet_size = 16 * 1024 * 1024;   // whole packet, bytes
  std::chrono::milliseconds connect_timeout{10'000};  // accept → CONNECT
  // An asynchronous authentication step (the IAM server) or an authorization
  // answer awaited for a held packet: refused or denied after this.
  std::chrono::milliseconds auth_timeout{10'000};
  std::uint32_t max_inflight_messages = 20;  // per session, outbound QoS 1/2
  std::uint32_t max_queued_messages = 1000;  // per session, beyond in-flight
  std::uint64_t max_queued_bytes = 0;        // per session, topic + payload; 0 = no limit
  QueueFullPolicy queue_full = QueueFullPolicy::DropNew;
  bool queue_qos0_offline = false;         // queue QoS 0 for offline sessions
  std::chrono::seconds session_expiry{0};  // offline persistent sessions; 0 = never

  // Connections open at once, refused at accept (before TLS); 0 = no limit.
  std::uint32_t max_connections = 100'000;
  // The [auth.defence] allow list is exempt (moatd wires ConnectionCounter).
  std::uint32_t max_connections_per_address = 1000;
  // Bytes; the CONNECT of a longer client identifier gets CONNACK 0x02.
  std::uint32_t max_client_id_length = 256;
  // Topic names (PUBLISH, will) and filters (SUBSCRIBE): bytes and '/'-separated levels.
  std::uint32_t max_topic_length = 4096;
  std::uint32_t max_topic_levels = 128;
  // Distinct filters one session holds; SUBACK 0x80 beyond. 0 = no limit.
  std::uint32_t max_subscriptions_per_client = 1000;
  // Broker-wide retained set (topic + payload bytes); 0 = no limit.
  std::uint64_t max_retained_messages = 100'000;
  std::uint64_t max_retained_bytes = std::uint64_t{512} * 1024 * 1024;
  std::vector<PayloadLimit> payload;  // first matching entry applies
  // Flapping: a client identifier whose connections end `flapping_max` times
  // within `flapping_window` is banned for `flapping_ban_time`; from half that
  // count on, each of its CONNECTs waits flapping_delay, doubling, at most 30 s.
  std::uint32_t flapping_max = 15;  // 0 = off
  std::chrono::seconds flapping_window{60};
  std::chrono::milliseconds flapping_delay{1000};
  std::chrono::seconds flapping_ban_time{300};
  // Each limit is logged at most once per interval (with the count in between).
  std::chrono::seconds log_interval{10};
};

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

}  // namespace moat::broker
