// An application message once it has been accepted by the broker: immutable and
// shared by every subscriber, session queue and the retained store.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "codec/packet.hpp"

namespace moat::broker {

struct Message {
  Message(std::string_view topic_name, std::string_view payload_bytes, codec::QoS q, bool r);

  std::string topic;
  std::string payload;
  codec::QoS qos;  // the QoS it was published with
  bool retain;     // the RETAIN flag it was published with
};

using MessagePtr = std::shared_ptr<const Message>;

MessagePtr make_message(std::string_view topic, std::string_view payload, codec::QoS qos, bool retain);

inline codec::QoS min_qos(codec::QoS a, codec::QoS b) {
  return a < b ? a : b;
}

}  // namespace moat::broker
