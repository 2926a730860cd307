// Every ProtocolError the decoder reports, each test naming the normative statement
// of MQTT 3.1.1 (OASIS, 2014) that the input violates. Inputs are hand-written bytes.
#include <gtest/gtest.h>

#include <string>

#include "codec/decoder.hpp"
#include "codec/encoder.hpp"
#include "codec_test_util.hpp"

namespace moat::codec {
namespace {

using namespace moat::codec::testing;

const DecoderOptions kServer{};
const DecoderOptions kClient{.server = false};

void expect_error(const Bytes& in, ProtocolError expected, const DecoderOptions& opts = kServer) {
  const auto r = decode(as_span(in), opts);
  EXPECT_EQ(r.status, DecodeStatus::Error)
      << "input " << hex(as_span(in))
      << (r.status == DecodeStatus::Ok ? " decoded as " + dump(r.packet) : "");
  EXPECT_EQ(r.error, expected) << "input " << hex(as_span(in)) << "\n  expected: " << describe(expected)
                               << "\n  actual:   " << describe(r.error);
  EXPECT_EQ(r.consumed, 0u);
}

void expect_ok(const Bytes& in, const DecoderOptions& opts = kServer) {
  const auto r = decode(as_span(in), opts);
  EXPECT_EQ(r.status, DecodeStatus::Ok) << "input " << hex(as_span(in)) << ": " << describe(r.error);
  EXPECT_EQ(r.consumed, in.size());
}

// A CONNECT: protocol name, level, flags, keep alive 60, then the payload fields.
Bytes connect_packet(std::string_view name, std::uint8_t level, std::uint8_t flags, const Bytes& payload) {
  return packet(0x10, str(name) + Bytes{level, flags, 0x00, 0x3C} + payload);
}
Bytes connect311(std::uint8_t flags, const Bytes& payload) {
  return connect_packet("MQTT", 4, flags, payload);
}

Bytes publish_qos0(const Bytes& topic_bytes, std::string_view payload = "p") {
  return packet(0x30, Bytes{static_cast<std::uint8_t>(topic_bytes.size() >> 8),
                            static_cast<std::uint8_t>(topic_bytes.size())} +
                          topic_bytes + raw(payload));
}

// ---------------------------------------------------------------------------
// Fixed header

// Section 2.2.3: "The maximum number of bytes in the Remaining Length field is four."
TEST(Malformed, RemainingLengthOfFiveBytes_2_2_3) {
  expect_error({0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, ProtocolError::RemainingLengthTooLong);
  expect_error({0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F}, ProtocolError::RemainingLengthTooLong);
  // Detected as soon as the fourth length byte still has its continuation bit.
  expect_error({0xC0, 0x80, 0x80, 0x80, 0x80}, ProtocolError::RemainingLengthTooLong);
  FixedHeader fh;
  ProtocolError err = ProtocolError::None;
  const Bytes in{0x30, 0xFF, 0xFF, 0xFF, 0xFF};
  EXPECT_EQ(decode_fixed_header(as_span(in), fh, err), DecodeStatus::Error);
  EXPECT_EQ(err, ProtocolError::RemainingLengthTooLong);
  // Three continuation bytes: the fourth may still end the field.
  EXPECT_EQ(decode(as_span(Bytes{0x30, 0x80, 0x80, 0x80}), kServer).status, DecodeStatus::NeedMore);
}

// The limit is checked on the header alone, before the body is awaited or buffered.
TEST(Malformed, PacketTooLargeIsReportedFromTheHeaderAlone) {
  DecoderOptions o;
  o.max_packet_size = 100;
  expect_error({0x30, 0x63}, ProtocolError::PacketTooLarge, o);  // 2 + 99 = 101 > 100
  expect_error({0x30, 0xFF, 0xFF, 0xFF, 0x7F}, ProtocolError::PacketTooLarge, o);
  expect_error({0x10, 0x80, 0x01}, ProtocolError::PacketTooLarge, o);  // CONNECT of 131 bytes
  // Exactly the limit: the decoder waits for the body.
  const auto r = decode(as_span(Bytes{0x30, 0x62}), o);  // 2 + 98 = 100
  EXPECT_EQ(r.status, DecodeStatus::NeedMore);
  EXPECT_EQ(r.error, ProtocolError::None);
  o.server = false;
  expect_error({0x90, 0x63}, ProtocolError::PacketTooLarge, o);  // SUBACK, client side
}

TEST(Malformed, PacketTooLargeForAFullyReceivedPacket) {
  DecoderOptions o;
  o.max_packet_size = 8;
  expect_error(publish_qos0(raw("topic"), "x"), ProtocolError::PacketTooLarge, o);  // 10 bytes
  o.max_packet_size = 10;
  expect_ok(publish_qos0(raw("topic"), "x"), o);
}

// Section 2.2.1 table 2.1: types 0 and 15 are reserved ("Forbidden").
TEST(Malformed, ReservedPacketTypes_2_2_1) {
  for (std::uint8_t first : {0x00, 0x01, 0x0F, 0xF0, 0xF2, 0xFF}) {
    expect_error({first, 0x00}, ProtocolError::ReservedPacketType, kServer);
    expect_error({first, 0x00}, ProtocolError::ReservedPacketType, kClient);
    expect_error({first}, ProtocolError::ReservedPacketType, kServer);  // known from one byte
  }
}

// [MQTT-2.2.2-1][MQTT-2.2.2-2] table 2.2: PUBREL, SUBSCRIBE and UNSUBSCRIBE carry 0010
// ([MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]), every other type but PUBLISH 0000.
TEST(Malformed, WrongFixedHeaderFlags_2_2_2_2) {
  int checked = 0;
  for (std::uint8_t type = 1; type <= 14; ++type) {
    if (type == 3) continue;  // PUBLISH uses its flags
    const std::uint8_t required = (type == 6 || type == 8 || type == 10) ? 0x02 : 0x00;
    for (std::uint8_t flags = 0; flags < 16; ++flags) {
      if (flags == required) continue;
      const std::uint8_t first = static_cast<std::uint8_t>(type << 4 | flags);
      SCOPED_TRACE(std::string(name_of(static_cast<PacketType>(type))) + " flags " + std::to_string(flags));
      // The flags are judged from the header, in both directions, before any body arrives.
      expect_error({first, 0x02}, ProtocolError::InvalidFixedHeaderFlags, kServer);
      expect_error({first, 0x02}, ProtocolError::InvalidFixedHeaderFlags, kClient);
      expect_error({first, 0x02, 0x00, 0x01}, ProtocolError::InvalidFixedHeaderFlags, kServer);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 13 * 15);
}

TEST(Malformed, CommonFlagMistakes) {
  expect_error({0x60, 0x02, 0x00, 0x01}, ProtocolError::InvalidFixedHeaderFlags);  // PUBREL 0000
  expect_error(packet(0x80, Bytes{0x00, 0x01} + str("a") + Bytes{0x00}),
               ProtocolError::InvalidFixedHeaderFlags);  // SUBSCRIBE 0000
  expect_error(packet(0xA0, Bytes{0x00, 0x01} + str("a")),
               ProtocolError::InvalidFixedHeaderFlags);                            // UNSUBSCRIBE 0000
  expect_error({0x42, 0x02, 0x00, 0x01}, ProtocolError::InvalidFixedHeaderFlags);  // PUBACK 0010
  expect_error({0xC1, 0x00}, ProtocolError::InvalidFixedHeaderFlags);              // PINGREQ
  expect_error({0xE2, 0x00}, ProtocolError::InvalidFixedHeaderFlags);              // DISCONNECT
}

// Section 2.2.1 table 2.1 gives each type its direction: a server never receives CONNACK,
// SUBACK, UNSUBACK or PINGRESP.
TEST(Malformed, ServerOnlyPacketsSentToAServer_2_2_1) {
  expect_error({0x20, 0x02, 0x00, 0x00}, ProtocolError::WrongDirection);        // CONNACK
  expect_error({0x90, 0x03, 0x00, 0x01, 0x00}, ProtocolError::WrongDirection);  // SUBACK
  expect_error({0xB0, 0x02, 0x00, 0x01}, ProtocolError::WrongDirection);        // UNSUBACK
  expect_error({0xD0, 0x00}, ProtocolError::WrongDirection);                    // PINGRESP
  expect_error({0x20, 0x02}, ProtocolError::WrongDirection);                    // header alone suffices
}

// ... and a client never receives CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ or DISCONNECT.
TEST(Malformed, ClientOnlyPacketsSentToAClient_2_2_1) {
  Connect c;
  c.client_id = "x";
  expect_error(encoded(c), ProtocolError::WrongDirection, kClient);
  expect_error(encoded(Subscribe{.packet_id = 1, .subscriptions = {{"a", QoS::AtMostOnce}}}),
               ProtocolError::WrongDirection, kClient);
  expect_error(encoded(Unsubscribe{.packet_id = 1, .filters = {"a"}}), ProtocolError::WrongDirection,
               kClient);
  expect_error({0xC0, 0x00}, ProtocolError::WrongDirection, kClient);  // PINGREQ
  expect_error({0xE0, 0x00}, ProtocolError::WrongDirection, kClient);  // DISCONNECT
}

// ---------------------------------------------------------------------------
// Field lengths

// Section 1.5.3: a string is a two-byte length then that many bytes, all inside the packet.
TEST(Malformed, StringLengthPastTheEnd_1_5_3) {
  expect_error({0x30, 0x03, 0x00, 0x05, 'a'}, ProtocolError::MalformedLength);  // topic
  expect_error({0x30, 0x01, 0x00}, ProtocolError::MalformedLength);             // half a length
  expect_error({0x30, 0x00}, ProtocolError::MalformedLength);                   // no topic at all
  expect_error(connect311(0x02, {0x00, 0x09, 'a', 'b'}), ProtocolError::MalformedLength);
  expect_error(packet(0x10, {0x00, 0x04, 'M', 'Q'}), ProtocolError::MalformedLength);  // name
  // Will topic, will message, user name and password each cut short.
  expect_error(connect311(0x06, str("c") + Bytes{0x00, 0x03, 'a'}), ProtocolError::MalformedLength);
  expect_error(connect311(0x06, str("c") + str("w")), ProtocolError::MalformedLength);
  expect_error(connect311(0x06, str("c") + str("w") + Bytes{0x00, 0x04, 'x'}),
               ProtocolError::MalformedLength);
  expect_error(connect311(0x82, str("c")), ProtocolError::MalformedLength);
  expect_error(connect311(0x82, str("c") + Bytes{0x00, 0x02, 'u'}), ProtocolError::MalformedLength);
  expect_error(connect311(0xC2, str("c") + str("u")), ProtocolError::MalformedLength);
  expect_error(connect311(0xC2, str("c") + str("u") + Bytes{0x00, 0x03, 'p', 'w'}),
               ProtocolError::MalformedLength);
  // SUBSCRIBE filter cut short, and a filter without its requested QoS byte.
  expect_error(packet(0x82, Bytes{0x00, 0x01, 0x00, 0x04, 'a'}), ProtocolError::MalformedLength);
  expect_error(packet(0x82, Bytes{0x00, 0x01} + str("a/b")), ProtocolError::MalformedLength);
  expect_error(packet(0x82, Bytes{0x00, 0x01} + str("a") + Bytes{0x01, 0x00}),
               ProtocolError::MalformedLength);  // second filter: half a length
  expect_error(packet(0xA2, Bytes{0x00, 0x01} + str("a") + Bytes{0x00, 0x02, 'b'}),
               ProtocolError::MalformedLength);
}

TEST(Malformed, FixedFieldsCutShort) {
  // CONNECT ending after the protocol level, after the flags, in the keep alive.
  expect_error(packet(0x10, str("MQTT") + Bytes{0x04}), ProtocolError::MalformedLength);
  expect_error(packet(0x10, str("MQTT") + Bytes{0x04, 0x02}), ProtocolError::MalformedLength);
  expect_error(packet(0x10, str("MQTT") + Bytes{0x04, 0x02, 0x00}), ProtocolError::MalformedLength);
  expect_error(packet(0x10, str("MQTT") + Bytes{0x04, 0x02, 0x00, 0x3C}),
               ProtocolError::MalformedLength);  // no client id
  expect_error(packet(0x10, {}), ProtocolError::MalformedLength);
  // QoS 1 PUBLISH without (all of) its packet identifier.
  expect_error(packet(0x32, str("t")), ProtocolError::MalformedLength);
  expect_error(packet(0x34, str("t") + Bytes{0x01}), ProtocolError::MalformedLength);
  // Acks, SUBSCRIBE and UNSUBSCRIBE shorter than their packet identifier.
  for (std::uint8_t first : {0x40, 0x50, 0x62, 0x70}) {
    expect_error({first, 0x00}, ProtocolError::MalformedLength, kServer);
    expect_error({first, 0x01, 0x00}, ProtocolError::MalformedLength, kClient);
  }
  expect_error({0x82, 0x01, 0x01}, ProtocolError::MalformedLength);
  expect_error({0xA2, 0x00}, ProtocolError::MalformedLength);
  // Server-to-client packets, client side.
  expect_error({0x20, 0x01, 0x00}, ProtocolError::MalformedLength, kClient);  // CONNACK
  expect_error({0x20, 0x00}, ProtocolError::MalformedLength, kClient);
  expect_error({0x90, 0x01, 0x00}, ProtocolError::MalformedLength, kClient);  // SUBACK
  expect_error({0xB0, 0x00}, ProtocolError::MalformedLength, kClient);        // UNSUBACK
}

// Section 2.2.3: the remaining length is exactly the variable header plus the payload.
TEST(Malformed, TrailingBytes_2_2_3) {
  expect_error({0x40, 0x03, 0x00, 0x01, 0x00}, ProtocolError::TrailingBytes);  // PUBACK
  expect_error({0x50, 0x03, 0x00, 0x01, 0x00}, ProtocolError::TrailingBytes);  // PUBREC
  expect_error({0x62, 0x03, 0x00, 0x01, 0x00}, ProtocolError::TrailingBytes);  // PUBREL
  expect_error({0x70, 0x03, 0x00, 0x01, 0x00}, ProtocolError::TrailingBytes);  // PUBCOMP
  expect_error({0xC0, 0x01, 0x00}, ProtocolError::TrailingBytes);              // PINGREQ
  expect_error({0xE0, 0x01, 0x00}, ProtocolError::TrailingBytes);              // DISCONNECT
  expect_error(connect311(0x02, str("c") + Bytes{0x00}), ProtocolError::TrailingBytes);
  expect_error(connect311(0xC2, str("c") + str("u") + str("p") + Bytes{'!'}), ProtocolError::TrailingBytes);
  expect_error({0x20, 0x03, 0x00, 0x00, 0x00}, ProtocolError::TrailingBytes, kClient);  // CONNACK
  expect_error({0xB0, 0x03, 0x00, 0x01, 0x00}, ProtocolError::TrailingBytes, kClient);  // UNSUBACK
  expect_error({0xD0, 0x01, 0x00}, ProtocolError::TrailingBytes, kClient);              // PINGRESP
}

// A PUBLISH payload is everything after the variable header: never trailing.
TEST(Malformed, PublishPayloadIsNeverTrailing) {
  expect_ok(publish_qos0(raw("t"), std::string_view("\0\0\0", 3)));
}

// ---------------------------------------------------------------------------
// UTF-8 strings, section 1.5.3

struct BadUtf8 {
  const char* what;
  Bytes bytes;
  ProtocolError error;
};

std::vector<BadUtf8> bad_utf8() {
  return {
      {"overlong 2-byte '/' C0 AF", {'a', 0xC0, 0xAF}, ProtocolError::InvalidUtf8},
      {"overlong 2-byte C1 BF", {0xC1, 0xBF}, ProtocolError::InvalidUtf8},
      {"overlong 3-byte E0 80 AF", {0xE0, 0x80, 0xAF}, ProtocolError::InvalidUtf8},
      {"overlong 3-byte E0 9F BF", {0xE0, 0x9F, 0xBF}, ProtocolError::InvalidUtf8},
      {"overlong 4-byte F0 8F BF BF", {0xF0, 0x8F, 0xBF, 0xBF}, ProtocolError::InvalidUtf8},
      {"surrogate U+D800 ED A0 80", {0xED, 0xA0, 0x80}, ProtocolError::InvalidUtf8},
      {"surrogate U+DFFF ED BF BF", {'x', 0xED, 0xBF, 0xBF, 'y'}, ProtocolError::InvalidUtf8},
      {"lone continuation 80", {'a', 0x80, 'b'}, ProtocolError::InvalidUtf8},
      {"lone continuation BF", {0xBF}, ProtocolError::InvalidUtf8},
      {"truncated E2 82 at the end", {'a', 0xE2, 0x82}, ProtocolError::InvalidUtf8},
      {"truncated E2 82 then ASCII", {0xE2, 0x82, 'a'}, ProtocolError::InvalidUtf8},
      {"truncated C3 at the end", {0xC3}, ProtocolError::InvalidUtf8},
      {"truncated F0 9F 98", {0xF0, 0x9F, 0x98}, ProtocolError::InvalidUtf8},
      {"F5 lead byte", {0xF5, 0x80, 0x80, 0x80}, ProtocolError::InvalidUtf8},
      {"FF byte", {0xFF}, ProtocolError::InvalidUtf8},
      {"FE byte", {'a', 0xFE}, ProtocolError::InvalidUtf8},
      {"above U+10FFFF F4 90 80 80", {0xF4, 0x90, 0x80, 0x80}, ProtocolError::InvalidUtf8},
      {"U+0000 [MQTT-1.5.3-2]", {'a', 0x00, 'b'}, ProtocolError::NullCharacter},
      {"U+0000 alone", {0x00}, ProtocolError::NullCharacter},
  };
}

// [MQTT-1.5.3-1] ill-formed UTF-8 and surrogates; [MQTT-1.5.3-2] U+0000.
TEST(MalformedUtf8, InPublishTopic_1_5_3) {
  for (const auto& c : bad_utf8()) {
    SCOPED_TRACE(c.what);
    expect_error(publish_qos0(c.bytes), c.error, kServer);
    expect_error(publish_qos0(c.bytes), c.error, kClient);
  }
}

TEST(MalformedUtf8, InClientId_1_5_3_and_3_1_3_4) {
  for (const auto& c : bad_utf8()) {
    SCOPED_TRACE(c.what);
    const Bytes id = Bytes{0x00, static_cast<std::uint8_t>(c.bytes.size())} + c.bytes;
    expect_error(connect311(0x02, id), c.error);
    expect_error(connect_packet("MQIsdp", 3, 0x02, id), c.error);
  }
}

TEST(MalformedUtf8, InWillTopicAndUserName_3_1_3) {
  for (const auto& c : bad_utf8()) {
    SCOPED_TRACE(c.what);
    const Bytes s = Bytes{0x00, static_cast<std::uint8_t>(c.bytes.size())} + c.bytes;
    expect_error(connect311(0x06, str("c") + s + str("msg")), c.error);  // will topic
    expect_error(connect311(0x82, str("c") + s), c.error);               // user name
    expect_error(connect311(0xC2, str("c") + s + str("pw")), c.error);
  }
}

TEST(MalformedUtf8, InSubscribeAndUnsubscribeFilters_1_5_3) {
  for (const auto& c : bad_utf8()) {
    SCOPED_TRACE(c.what);
    const Bytes s = Bytes{0x00, static_cast<std::uint8_t>(c.bytes.size())} + c.bytes;
    expect_error(packet(0x82, Bytes{0x00, 0x01} + s + Bytes{0x00}), c.error);
    expect_error(packet(0x82, Bytes{0x00, 0x01} + str("ok") + Bytes{0x01} + s + Bytes{0x00}),
                 c.error);  // second filter
    expect_error(packet(0xA2, Bytes{0x00, 0x01} + s), c.error);
    expect_error(packet(0xA2, Bytes{0x00, 0x01} + str("ok") + s), c.error);
  }
}

// The protocol name is a UTF-8 string too.
TEST(MalformedUtf8, InProtocolName) {
  expect_error(packet(0x10, Bytes{0x00, 0x04, 'M', 0xC0, 0xAF, 'T', 0x04, 0x02, 0x00, 0x00} + str("c")),
               ProtocolError::InvalidUtf8);
}

// Binary fields are not UTF-8: a password, a will message and a PUBLISH payload may hold
// any byte (sections 3.1.3.3, 3.1.3.5, 3.3.3).
TEST(MalformedUtf8, BinaryFieldsAcceptAnyByte) {
  const Bytes junk{0x00, 0xFF, 0xC0, 0xAF, 0xED, 0xA0, 0x80};
  const Bytes field = Bytes{0x00, static_cast<std::uint8_t>(junk.size())} + junk;
  expect_ok(connect311(0xC2, str("c") + str("u") + field));  // password
  expect_ok(connect311(0x06, str("c") + str("w") + field));  // will message
  expect_ok(packet(0x30, str("t") + junk));                  // payload
}

TEST(MalformedUtf8, WellFormedMultiByteIsAccepted) {
  expect_ok(publish_qos0({0xC2, 0x80, 0xDF, 0xBF}));                                // U+0080, U+07FF
  expect_ok(publish_qos0({0xE0, 0xA0, 0x80, 0xED, 0x9F, 0xBF, 0xEE, 0x80, 0x80}));  // U+0800 U+D7FF U+E000
  expect_ok(publish_qos0({0xEF, 0xBF, 0xBF, 0xEF, 0xBB, 0xBF}));                    // U+FFFF, BOM
  expect_ok(publish_qos0({0xF0, 0x90, 0x80, 0x80, 0xF4, 0x8F, 0xBF, 0xBF}));        // U+10000, U+10FFFF
}

// ---------------------------------------------------------------------------
// CONNECT, section 3.1

// [MQTT-3.1.2-1] the protocol name must be "MQTT" ("MQIsdp" for 3.1).
TEST(MalformedConnect, InvalidProtocolName_3_1_2_1) {
  expect_error(connect_packet("MQTX", 4, 0x02, str("c")), ProtocolError::InvalidProtocolName);
  expect_error(connect_packet("mqtt", 4, 0x02, str("c")), ProtocolError::InvalidProtocolName);
  expect_error(connect_packet("MQTT ", 4, 0x02, str("c")), ProtocolError::InvalidProtocolName);
  expect_error(connect_packet("MQT", 4, 0x02, str("c")), ProtocolError::InvalidProtocolName);
  expect_error(connect_packet("", 4, 0x02, str("c")), ProtocolError::InvalidProtocolName);
  expect_error(connect_packet("MQIsdP", 3, 0x02, str("c")), ProtocolError::InvalidProtocolName);
}

// [MQTT-3.1.2-2] a level the server does not serve (answered with CONNACK 0x01).
TEST(MalformedConnect, UnsupportedProtocolLevel_3_1_2_2) {
  for (std::uint8_t level : {0, 1, 2, 3, 5, 6, 7, 255})
    expect_error(connect_packet("MQTT", level, 0x02, str("c")), ProtocolError::UnsupportedProtocolVersion);
  for (std::uint8_t level : {0, 4, 5})
    expect_error(connect_packet("MQIsdp", level, 0x02, str("c")), ProtocolError::UnsupportedProtocolVersion);
  expect_ok(connect_packet("MQTT", 4, 0x02, str("c")));
  expect_ok(connect_packet("MQIsdp", 3, 0x02, str("c")));
}

// [MQTT-3.1.2-3] the reserved bit 0 of the connect flags must be 0.
TEST(MalformedConnect, ReservedFlag_3_1_2_3) {
  expect_error(connect311(0x03, str("c")), ProtocolError::ConnectReservedFlag);
  expect_error(connect311(0x01, str("c")), ProtocolError::ConnectReservedFlag);
  expect_error(connect_packet("MQIsdp", 3, 0x01, str("c")), ProtocolError::ConnectReservedFlag);
}

// [MQTT-3.1.2-11][MQTT-3.1.2-13][MQTT-3.1.2-15] will QoS and will retain are 0 without a will.
TEST(MalformedConnect, WillQosOrRetainWithoutWill_3_1_2_13_and_15) {
  expect_error(connect311(0x0A, str("c")), ProtocolError::WillFlagsWithoutWill);  // QoS 1
  expect_error(connect311(0x12, str("c")), ProtocolError::WillFlagsWithoutWill);  // QoS 2
  expect_error(connect311(0x1A, str("c")), ProtocolError::WillFlagsWithoutWill);  // QoS 3
  expect_error(connect311(0x22, str("c")), ProtocolError::WillFlagsWithoutWill);  // retain
  expect_error(connect311(0x3A, str("c")), ProtocolError::WillFlagsWithoutWill);
}

// [MQTT-3.1.2-14] with a will, the will QoS must not be 3.
TEST(MalformedConnect, WillQos3_3_1_2_14) {
  expect_error(connect311(0x1E, str("c") + str("w") + str("m")), ProtocolError::InvalidWillQos);
  expect_error(connect311(0x3E, str("c") + str("w") + str("m")), ProtocolError::InvalidWillQos);
}

// [MQTT-3.1.2-22] no password without a user name in 3.1.1; MQTT 3.1 allowed it.
TEST(MalformedConnect, PasswordWithoutUsername_3_1_2_22) {
  expect_error(connect311(0x42, str("c") + str("pw")), ProtocolError::PasswordWithoutUsername);
  expect_error(connect311(0x40, str("c") + str("pw")), ProtocolError::PasswordWithoutUsername);
  const Bytes v31 = connect_packet("MQIsdp", 3, 0x42, str("c") + str("pw"));
  const auto r = decode(as_span(v31), kServer);
  ASSERT_EQ(r.status, DecodeStatus::Ok) << describe(r.error);
  const auto& c = std::get<Connect>(r.packet);
  EXPECT_EQ(c.version, ProtocolVersion::V31);
  EXPECT_FALSE(c.username.has_value());
  EXPECT_EQ(c.password, std::optional<std::string_view>("pw"));
}

// [MQTT-3.1.2-9][MQTT-3.1.3-10] the will topic is a topic name: not empty, no wildcard.
TEST(MalformedConnect, WillTopicInvalid_3_1_2_9) {
  for (std::string_view t : {"", "#", "+", "a/#", "a/+/b", "a+", "#a"}) {
    SCOPED_TRACE(std::string(t));
    expect_error(connect311(0x06, str("c") + str(t) + str("m")), ProtocolError::WillTopicInvalid);
    expect_error(connect_packet("MQIsdp", 3, 0x0E, str("c") + str(t) + str("m")),
                 ProtocolError::WillTopicInvalid);
  }
  expect_ok(connect311(0x06, str("c") + str("a/b") + str("m")));
}

// ---------------------------------------------------------------------------
// PUBLISH, section 3.3

// [MQTT-3.3.1-4] a PUBLISH must not have both QoS bits set.
TEST(MalformedPublish, Qos3_3_3_1_4) {
  expect_error(packet(0x36, str("t") + Bytes{0x00, 0x01}), ProtocolError::InvalidQos);
  expect_error(packet(0x37, str("t") + Bytes{0x00, 0x01}), ProtocolError::InvalidQos);
  expect_error(packet(0x3F, str("t") + Bytes{0x00, 0x01}), ProtocolError::InvalidQos);
  expect_error(packet(0x36, str("t") + Bytes{0x00, 0x01}), ProtocolError::InvalidQos, kClient);
}

// [MQTT-3.3.1-2] the DUP flag must be 0 for all QoS 0 messages.
TEST(MalformedPublish, DupOnQos0_3_3_1_2) {
  expect_error(packet(0x38, str("t") + raw("x")), ProtocolError::InvalidFixedHeaderFlags);
  expect_error(packet(0x39, str("t")), ProtocolError::InvalidFixedHeaderFlags);
  expect_error(packet(0x38, str("t") + raw("x")), ProtocolError::InvalidFixedHeaderFlags, kClient);
  expect_ok(packet(0x3A, str("t") + Bytes{0x00, 0x01}));  // DUP on QoS 1 is fine
}

// [MQTT-4.7.3-1] at least one character; [MQTT-3.3.2-2] no wildcard in a topic name.
TEST(MalformedPublish, InvalidTopicName_3_3_2_2_and_4_7_3_1) {
  for (std::string_view t : {"", "#", "+", "a/#", "a/+", "+/b", "a/+/b", "a+b", "sport#"}) {
    SCOPED_TRACE(std::string(t));
    expect_error(packet(0x30, str(t) + raw("x")), ProtocolError::InvalidTopicName, kServer);
    expect_error(packet(0x32, str(t) + Bytes{0x00, 0x01}), ProtocolError::InvalidTopicName, kServer);
    expect_error(packet(0x30, str(t) + raw("x")), ProtocolError::InvalidTopicName, kClient);
  }
}

// [MQTT-2.3.1-1] SUBSCRIBE, UNSUBSCRIBE and QoS>0 PUBLISH carry a non-zero identifier.
TEST(MalformedPacketId, ZeroPacketId_2_3_1_1) {
  expect_error(packet(0x32, str("t") + Bytes{0x00, 0x00} + raw("x")), ProtocolError::ZeroPacketId);
  expect_error(packet(0x34, str("t") + Bytes{0x00, 0x00}), ProtocolError::ZeroPacketId);
  expect_error(packet(0x3D, str("t") + Bytes{0x00, 0x00}), ProtocolError::ZeroPacketId);
  expect_error(packet(0x82, Bytes{0x00, 0x00} + str("a") + Bytes{0x00}), ProtocolError::ZeroPacketId);
  expect_error(packet(0xA2, Bytes{0x00, 0x00} + str("a")), ProtocolError::ZeroPacketId);
  // A QoS 0 PUBLISH has no identifier: the two bytes are payload.
  const Bytes q0 = packet(0x30, str("t") + Bytes{0x00, 0x00});
  const auto r = decode(as_span(q0), kServer);
  ASSERT_EQ(r.status, DecodeStatus::Ok);
  EXPECT_EQ(std::get<Publish>(r.packet).packet_id, 0);
  EXPECT_EQ(std::get<Publish>(r.packet).payload, std::string_view("\0\0", 2));
}

// ---------------------------------------------------------------------------
// SUBSCRIBE, UNSUBSCRIBE, sections 3.8 and 3.10

// [MQTT-3.8.3-3] at least one topic filter / QoS pair.
TEST(MalformedSubscribe, NoFilters_3_8_3_3) {
  expect_error({0x82, 0x02, 0x00, 0x01}, ProtocolError::NoSubscriptions);
}

// [MQTT-3-8.3-4] requested QoS: reserved upper bits 0 and QoS not 3.
TEST(MalformedSubscribe, RequestedQos3OrReservedBits_3_8_3_4) {
  for (std::uint8_t q : {0x03, 0x04, 0x05, 0x80, 0x81, 0xFC, 0xFF}) {
    SCOPED_TRACE(static_cast<int>(q));
    expect_error(packet(0x82, Bytes{0x00, 0x01} + str("a") + Bytes{q}), ProtocolError::InvalidRequestedQos);
    expect_error(packet(0x82, Bytes{0x00, 0x01} + str("a") + Bytes{0x01} + str("b") + Bytes{q}),
                 ProtocolError::InvalidRequestedQos);
  }
}

// [MQTT-4.7.1-2] '#' alone and last, [MQTT-4.7.1-3] '+' a whole level, [MQTT-4.7.3-1] not
// empty: a malformed filter is a protocol violation that closes the connection [MQTT-4.8.0-1].
TEST(MalformedSubscribe, InvalidTopicFilter_4_7_1_2_and_4_7_1_3_and_4_7_3_1) {
  for (std::string_view f :
       {"", "a/#/b", "a#", "a+", "+a/b", "##", "#/", "sport/tennis#", "sport+", "a/+b/c"}) {
    SCOPED_TRACE(std::string(f));
    expect_error(packet(0x82, Bytes{0x00, 0x01} + str(f) + Bytes{0x00}), ProtocolError::InvalidTopicFilter);
    // The second of two filters, and a bad filter with a bad QoS: the filter is judged first.
    expect_error(packet(0x82, Bytes{0x00, 0x01} + str("ok/#") + Bytes{0x01} + str(f) + Bytes{0x02}),
                 ProtocolError::InvalidTopicFilter);
    expect_error(packet(0x82, Bytes{0x00, 0x01} + str(f) + Bytes{0x03}), ProtocolError::InvalidTopicFilter);
    expect_error(packet(0xA2, Bytes{0x00, 0x01} + str(f)), ProtocolError::InvalidTopicFilter);
    expect_error(packet(0xA2, Bytes{0x00, 0x01} + str("ok") + str(f)), ProtocolError::InvalidTopicFilter);
  }
  expect_ok(packet(0x82, Bytes{0x00, 0x01} + str("+/+/#") + Bytes{0x02}));
  expect_ok(packet(0xA2, Bytes{0x00, 0x01} + str("+/+/#")));
}

// [MQTT-3.10.3-2] at least one topic filter.
TEST(MalformedUnsubscribe, NoFilters_3_10_3_2) {
  expect_error({0xA2, 0x02, 0x00, 0x01}, ProtocolError::NoUnsubscriptions);
}

// ---------------------------------------------------------------------------
// CONNACK, section 3.2 (client side)

// Section 3.2.2.1: bits 7-1 of the connect acknowledge flags are reserved, set to 0.
TEST(MalformedConnack, ReservedAcknowledgeFlags_3_2_2_1) {
  expect_error({0x20, 0x02, 0x02, 0x00}, ProtocolError::InvalidFixedHeaderFlags, kClient);
  expect_error({0x20, 0x02, 0x81, 0x00}, ProtocolError::InvalidFixedHeaderFlags, kClient);
  expect_ok({0x20, 0x02, 0x01, 0x00}, kClient);
}

// ---------------------------------------------------------------------------
// Every error, before the packet is complete, is at worst NeedMore, never a wrong error:
// the decoder is a pure function of its input and only judges complete fields.

TEST(Malformed, PrefixesOfAnInvalidPacketNeedMore) {
  const Bytes in = packet(0x82, Bytes{0x00, 0x01} + str("a/b") + Bytes{0x03});  // QoS 3
  for (std::size_t n = 0; n < in.size(); ++n)
    EXPECT_EQ(decode(std::span(in.data(), n), kServer).status, DecodeStatus::NeedMore) << n;
  expect_error(in, ProtocolError::InvalidRequestedQos);
}

}  // namespace
}  // namespace moat::codec
