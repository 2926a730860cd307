// Broker-wide limits, filled from [limits] in moat.toml (see docs/configuration.md).
#pragma once

#include <chrono>
#include <cstdint>

namespace moat::broker {

// What a session's full queue does with one more message (docs/mqtt.md).
enum class QueueFullPolicy : std::uint8_t {
  DropNew,     // the new message is not queued for this session
  DropOldest,  // the oldest queued messages make room for it
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
};

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

}  // namespace moat::broker
