#include "broker/message.hpp"

#include <cstring>

#include "codec/encoder.hpp"

namespace moat::broker {

Message::Message(std::string_view topic_name, std::string_view payload_bytes, codec::QoS q, bool r)
    : qos(q), retain(r) {
  const std::size_t field = 2 + topic_name.size();
  end_ = kHeaderRoom + field + payload_bytes.size();
  wire_ = std::make_unique_for_overwrite<std::uint8_t[]>(end_);
  std::uint8_t* w = wire_.get();
  std::uint8_t header[codec::kPublishHeaderMax];
  const std::size_t n = codec::encode_publish_header(codec::QoS::AtMostOnce, false, false,
                                                     field + payload_bytes.size(), header);
  start_ = kHeaderRoom - n;
  std::memcpy(w + start_, header, n);
  w[kHeaderRoom] = static_cast<std::uint8_t>(topic_name.size() >> 8);
  w[kHeaderRoom + 1] = static_cast<std::uint8_t>(topic_name.size() & 0xFF);
  if (!topic_name.empty()) std::memcpy(w + kHeaderRoom + 2, topic_name.data(), topic_name.size());
  if (!payload_bytes.empty())
    std::memcpy(w + kHeaderRoom + field, payload_bytes.data(), payload_bytes.size());
  topic = {reinterpret_cast<const char*>(w + kHeaderRoom + 2), topic_name.size()};
  payload = {reinterpret_cast<const char*>(w + kHeaderRoom + field), payload_bytes.size()};
}

MessagePtr make_message(std::string_view topic, std::string_view payload, codec::QoS qos, bool retain,
                        bool replay_marked) {
  auto m = std::make_shared<Message>(topic, payload, qos, retain);
  m->replay_marked = replay_marked;
  return m;
}

}  // namespace moat::broker
