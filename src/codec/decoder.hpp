// Incremental, bounded decoder for MQTT 3.1/3.1.1 control packets.
//
// Feed it the bytes received so far; it returns one packet at a time, asks for
// more bytes when a packet is incomplete, or reports a precise protocol error.
// The remaining length is checked against the limit before the body is awaited,
// so an oversized packet is refused before anything is buffered for it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "codec/errors.hpp"
#include "codec/packet.hpp"

namespace moat::codec {

enum class DecodeStatus : std::uint8_t { NeedMore, Ok, Error };

struct DecodeResult {
  DecodeStatus status = DecodeStatus::NeedMore;
  ProtocolError error = ProtocolError::None;
  std::size_t consumed = 0;  // bytes of the packet when status is Ok
  Packet packet;             // valid when status is Ok; views into the input
};

// The largest remaining length MQTT can express (section 2.2.3).
inline constexpr std::uint32_t kMaxRemainingLength = 268'435'455;

struct DecoderOptions {
  // Whole packet, fixed header included: by default the largest MQTT can express.
  std::uint32_t max_packet_size = kMaxRemainingLength + 5;
  bool server = true;                               // a server refuses packets that only a server sends
  ProtocolVersion version = ProtocolVersion::V311;  // set once CONNECT is decoded
};

// Decodes the first packet of `in`. Pure function of its input: no state is kept
// between calls, so a caller may retry with more bytes after NeedMore.
DecodeResult decode(std::span<const std::uint8_t> in, const DecoderOptions& opts);

// The fixed header alone: packet type, flags, and the total packet size once the
// remaining length is complete. Exposed for the decoder's tests and the fuzzer.
struct FixedHeader {
  std::uint8_t type = 0;
  std::uint8_t flags = 0;
  std::uint32_t remaining_length = 0;
  std::size_t header_size = 0;
};
DecodeStatus decode_fixed_header(std::span<const std::uint8_t> in, FixedHeader& out, ProtocolError& err);

}  // namespace moat::codec
