#include "broker/message.hpp"

namespace moat::broker {

Message::Message(std::string_view topic_name, std::string_view payload_bytes, codec::QoS q, bool r)
    : topic(topic_name), payload(payload_bytes), qos(q), retain(r) {}

MessagePtr make_message(std::string_view topic, std::string_view payload, codec::QoS qos, bool retain) {
  return std::make_shared<const Message>(topic, payload, qos, retain);
}

}  // namespace moat::broker
