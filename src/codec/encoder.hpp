// Encoding MQTT 3.1/3.1.1 packets into a byte buffer (appending).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "codec/packet.hpp"

namespace moat::codec {

using Bytes = std::vector<std::uint8_t>;

// Appends the encoded packet. A CONNECT is encoded for c.version.
void encode(const Packet& p, Bytes& out);

// Remaining-length bytes (section 2.2.3); returns how many were written.
std::size_t encode_remaining_length(std::uint32_t len, Bytes& out);

// The fixed header of a PUBLISH whose topic field (length + name) and payload
// take `body` bytes together; the packet identifier of QoS>0 is counted here.
// Writes 2 to 5 bytes; returns how many. `body` must fit the remaining length.
inline constexpr std::size_t kPublishHeaderMax = 5;
std::size_t encode_publish_header(QoS qos, bool dup, bool retain, std::size_t body,
                                  std::uint8_t (&out)[kPublishHeaderMax]);

// A PUBLISH in three parts so that one encoding serves every subscriber:
// [prefix: fixed header + topic] [packet id, only for QoS>0] [payload].
// The prefix depends on (qos, dup, retain, topic, payload size) only.
void encode_publish_prefix(QoS qos, bool dup, bool retain, std::string_view topic, std::size_t payload_size,
                           Bytes& out);

}  // namespace moat::codec
