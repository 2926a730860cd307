// An application message once it has been accepted by the broker: immutable and
// shared by every subscriber, session queue and the retained store.
//
// The message keeps its bytes in wire form, encoded once: the topic field (length
// and name) followed by the payload, preceded by the fixed header of the plain
// QoS 0 PUBLISH. Every subscriber's output references these bytes instead of
// copying them (broker/output.hpp); only the fixed header of other variants and
// the packet identifier are per delivery. make_message allocates the reference
// count, the Message and its wire bytes as one block.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "codec/encoder.hpp"
#include "codec/packet.hpp"

namespace moat::broker {

struct Message {
  // The wire bytes are written to `wire`, which holds wire_size(topic, payload)
  // bytes and outlives the Message (make_message places it behind it).
  Message(std::uint8_t* wire, std::string_view topic_name, std::string_view payload_bytes, codec::QoS q, bool r);
  static std::size_t wire_size(std::string_view topic_name, std::string_view payload_bytes) {
    return kHeaderRoom + 2 + topic_name.size() + payload_bytes.size();
  }
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;

  std::string_view topic;    // into the wire bytes
  std::string_view payload;  // into the wire bytes
  codec::QoS qos;            // the QoS it was published with
  bool retain;               // the RETAIN flag it was published with
  // Accepting it stored a payload policy's replay mark: no copy is written to
  // a socket before a store commit at least as recent as the mark's
  // (Shard::send_publish), so a crash cannot lose the mark of a message
  // already delivered.
  bool replay_marked = false;

  // The whole PUBLISH at QoS 0 without DUP and RETAIN.
  std::span<const std::uint8_t> publish_qos0() const { return {wire_ + start_, end_ - start_}; }
  // The topic field (two length bytes, then the name).
  std::span<const std::uint8_t> topic_field() const { return {wire_ + kHeaderRoom, 2 + topic.size()}; }
  // The topic field followed by the payload: a PUBLISH without identifier after its fixed header.
  std::span<const std::uint8_t> body() const { return {wire_ + kHeaderRoom, end_ - kHeaderRoom}; }
  std::span<const std::uint8_t> payload_bytes() const {
    return {wire_ + end_ - payload.size(), payload.size()};
  }

 private:
  static constexpr std::size_t kHeaderRoom = codec::kPublishHeaderMax;
  const std::uint8_t* wire_ = nullptr;
  std::size_t start_ = 0;  // where the QoS 0 fixed header starts
  std::size_t end_ = 0;
};

using MessagePtr = std::shared_ptr<const Message>;

MessagePtr make_message(std::string_view topic, std::string_view payload, codec::QoS qos, bool retain,
                        bool replay_marked = false);

inline codec::QoS min_qos(codec::QoS a, codec::QoS b) {
  return a < b ? a : b;
}

}  // namespace moat::broker
