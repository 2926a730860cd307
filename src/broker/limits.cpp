#include <spdlog/spdlog.h>

#include "broker/limit_checks.hpp"

namespace moat::broker {

const char* limit_name(Limit l) {
  switch (l) {
    case Limit::Connections:
      return "connections";
    case Limit::ConnectionsPerAddress:
      return "connections_per_address";
    case Limit::ClientIdLength:
      return "client_id_length";
    case Limit::TopicLength:
      return "topic_length";
    case Limit::TopicLevels:
      return "topic_levels";
    case Limit::Subscriptions:
      return "subscriptions";
    case Limit::RetainedMessages:
      return "retained_messages";
    case Limit::RetainedBytes:
      return "retained_bytes";
    case Limit::Payload:
      return "payload";
    case Limit::FlappingDelayed:
      return "flapping_delayed";
    case Limit::FlappingBanned:
      return "flapping_banned";
    case Limit::FlappingRefused:
      return "flapping_refused";
  }
  return "?";
}

const char* limit_key(Limit l) {
  switch (l) {
    case Limit::Connections:
      return "max_connections";
    case Limit::ConnectionsPerAddress:
      return "max_connections_per_address";
    case Limit::ClientIdLength:
      return "max_client_id_length";
    case Limit::TopicLength:
      return "max_topic_length";
    case Limit::TopicLevels:
      return "max_topic_levels";
    case Limit::Subscriptions:
      return "max_subscriptions_per_client";
    case Limit::RetainedMessages:
      return "max_retained_messages";
    case Limit::RetainedBytes:
      return "max_retained_bytes";
    case Limit::Payload:
      return "limits.payload";
    case Limit::FlappingDelayed:
    case Limit::FlappingBanned:
    case Limit::FlappingRefused:
      return "flapping_max";
  }
  return "?";
}

std::optional<Limit> topic_over_limits(std::string_view topic, const Limits& l) {
  if (l.max_topic_length > 0 && topic.size() > l.max_topic_length) return Limit::TopicLength;
  if (l.max_topic_levels > 0) {
    // A topic of n levels has n - 1 separators; stop counting once past the limit.
    std::uint32_t levels = 1;
    for (const char c : topic)
      if (c == '/' && ++levels > l.max_topic_levels) return Limit::TopicLevels;
  }
  return std::nullopt;
}

const PayloadLimit* payload_limit(std::string_view topic, const Limits& l) {
  for (const auto& p : l.payload)
    if (codec::topic_matches(p.topics, topic)) return &p;
  return nullptr;
}

void report_limit(Limit l, std::uint64_t hits, std::string_view peer, std::string_view client_id,
                  std::string_view detail) {
  spdlog::warn("limit {} hit by {} ({}): {}{}", limit_key(l), peer, client_id.empty() ? "-" : client_id,
               detail, hits > 1 ? fmt::format(" ({} times since the last report)", hits) : std::string());
}

}  // namespace moat::broker
