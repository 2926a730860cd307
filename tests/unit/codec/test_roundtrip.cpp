// Encode -> decode round trips of every MQTT 3.1/3.1.1 packet, exact bytes checked
// against hand-written encodings from the specification, and incremental decoding.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "codec/decoder.hpp"
#include "codec/encoder.hpp"
#include "codec/packet.hpp"
#include "codec_test_util.hpp"

namespace moat::codec {
namespace {

using namespace moat::codec::testing;

const DecoderOptions kServer{};
const DecoderOptions kClient{.server = false};

// Encodes p, decodes it back with opts and checks the result is p, whole.
void expect_roundtrip(const Packet& p, const DecoderOptions& opts = kServer) {
  const Bytes bytes = encoded(p);
  const DecodeResult r = decode(as_span(bytes), opts);
  ASSERT_EQ(r.status, DecodeStatus::Ok)
      << dump(p) << " error " << describe(r.error) << " bytes " << hex(as_span(bytes));
  EXPECT_EQ(r.error, ProtocolError::None);
  EXPECT_EQ(r.consumed, bytes.size());
  EXPECT_TRUE(same_packet(r.packet, p)) << "sent    " << dump(p) << "\nreceived " << dump(r.packet);
  EXPECT_EQ(type_of(r.packet), type_of(p));
}

// Checks encode(p) is exactly `expected` and that decoding `expected` gives p back.
void expect_bytes(const Packet& p, const Bytes& expected, const DecoderOptions& opts = kServer) {
  EXPECT_EQ(hex(as_span(encoded(p))), hex(as_span(expected))) << dump(p);
  const DecodeResult r = decode(as_span(expected), opts);
  ASSERT_EQ(r.status, DecodeStatus::Ok) << describe(r.error);
  EXPECT_EQ(r.consumed, expected.size());
  EXPECT_TRUE(same_packet(r.packet, p)) << "expected " << dump(p) << "\ndecoded  " << dump(r.packet);
}

// ---------------------------------------------------------------------------
// Remaining length, section 2.2.3 (table 2.4 gives the boundaries).

struct RemainingLengthCase {
  std::uint32_t value;
  Bytes bytes;
  // Names the case by its value (GoogleTest would otherwise print raw object bytes,
  // padding included, into the test names CTest discovers).
  friend void PrintTo(const RemainingLengthCase& c, std::ostream* os) { *os << c.value; }
};

class RemainingLength : public ::testing::TestWithParam<RemainingLengthCase> {};

TEST_P(RemainingLength, EncodesAsInSpecTable2_4) {
  const auto& c = GetParam();
  Bytes out{0xAA};  // encode_remaining_length appends
  const auto n = encode_remaining_length(c.value, out);
  EXPECT_EQ(n, c.bytes.size());
  EXPECT_EQ(hex(as_span(out)), "AA" + hex(as_span(c.bytes)));
}

TEST_P(RemainingLength, DecodesFixedHeader) {
  const auto& c = GetParam();
  const Bytes in = Bytes{0x30} + c.bytes;
  FixedHeader fh;
  ProtocolError err = ProtocolError::None;
  ASSERT_EQ(decode_fixed_header(as_span(in), fh, err), DecodeStatus::Ok);
  EXPECT_EQ(err, ProtocolError::None);
  EXPECT_EQ(fh.type, 3);
  EXPECT_EQ(fh.flags, 0);
  EXPECT_EQ(fh.remaining_length, c.value);
  EXPECT_EQ(fh.header_size, 1 + c.bytes.size());
}

TEST_P(RemainingLength, HeaderCutShortNeedsMore) {
  const auto& c = GetParam();
  const Bytes in = Bytes{0x30} + c.bytes;
  for (std::size_t n = 0; n < in.size(); ++n) {
    FixedHeader fh;
    ProtocolError err = ProtocolError::None;
    EXPECT_EQ(decode_fixed_header(std::span(in.data(), n), fh, err), DecodeStatus::NeedMore)
        << "prefix of " << n << " bytes";
    EXPECT_EQ(err, ProtocolError::None);
  }
}

// A PUBLISH whose header announces the length, without its body: NeedMore, not an error.
TEST_P(RemainingLength, PublishHeaderAloneNeedsMoreBody) {
  const auto& c = GetParam();
  const Bytes in = Bytes{0x30} + c.bytes;
  if (c.value == 0) {  // complete, and malformed: a PUBLISH has at least a topic
    const auto r = decode(as_span(in), kServer);
    EXPECT_EQ(r.status, DecodeStatus::Error);
    EXPECT_EQ(r.error, ProtocolError::MalformedLength);
    return;
  }
  DecoderOptions unlimited;
  unlimited.max_packet_size = 0xFFFFFFFF;
  const auto r = decode(as_span(in), unlimited);
  EXPECT_EQ(r.status, DecodeStatus::NeedMore);
  EXPECT_EQ(r.error, ProtocolError::None);
  EXPECT_EQ(r.consumed, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Spec, RemainingLength,
    ::testing::Values(RemainingLengthCase{0, {0x00}}, RemainingLengthCase{1, {0x01}},
                      RemainingLengthCase{127, {0x7F}}, RemainingLengthCase{128, {0x80, 0x01}},
                      RemainingLengthCase{321, {0xC1, 0x02}},  // the example of section 2.2.3
                      RemainingLengthCase{16383, {0xFF, 0x7F}},
                      RemainingLengthCase{16384, {0x80, 0x80, 0x01}},
                      RemainingLengthCase{2097151, {0xFF, 0xFF, 0x7F}},
                      RemainingLengthCase{2097152, {0x80, 0x80, 0x80, 0x01}},
                      RemainingLengthCase{268435455, {0xFF, 0xFF, 0xFF, 0x7F}}));

TEST(RemainingLength, MaxConstantIsSpecMaximum) {
  EXPECT_EQ(kMaxRemainingLength, 268435455u);
}

// Section 2.2.3: remaining lengths up to 268,435,455 (256 MB) are legal, so the default
// DecoderOptions ("the max") must let such a packet through: the whole packet, which
// max_packet_size measures, is then 268,435,455 + 5 bytes. (Regression: a default of
// kMaxRemainingLength refused remaining lengths above 268,435,450 as PacketTooLarge.)
TEST(RemainingLength, DefaultOptionsAcceptTheLargestRemainingLength) {
  const Bytes in{0x30, 0xFF, 0xFF, 0xFF, 0x7F};  // PUBLISH, remaining length 268,435,455
  const auto r = decode(as_span(in), DecoderOptions{});
  EXPECT_EQ(r.status, DecodeStatus::NeedMore) << describe(r.error);
  EXPECT_EQ(r.error, ProtocolError::None);
}

TEST(FixedHeader, EmptyInputNeedsMore) {
  FixedHeader fh;
  ProtocolError err = ProtocolError::None;
  EXPECT_EQ(decode_fixed_header({}, fh, err), DecodeStatus::NeedMore);
  EXPECT_EQ(decode(std::span<const std::uint8_t>{}, kServer).status, DecodeStatus::NeedMore);
}

TEST(FixedHeader, SplitsTypeAndFlags) {
  const Bytes in{0x3B, 0x00};  // PUBLISH, DUP=1 QoS=1 RETAIN=1
  FixedHeader fh;
  ProtocolError err = ProtocolError::None;
  ASSERT_EQ(decode_fixed_header(as_span(in), fh, err), DecodeStatus::Ok);
  EXPECT_EQ(fh.type, 3);
  EXPECT_EQ(fh.flags, 0x0B);
  EXPECT_EQ(fh.remaining_length, 0u);
  EXPECT_EQ(fh.header_size, 2u);
}

// ---------------------------------------------------------------------------
// CONNECT (section 3.1)

Connect connect311(std::string_view id) {
  Connect c;
  c.version = ProtocolVersion::V311;
  c.client_id = id;
  return c;
}

TEST(RoundTripConnect, ExactBytesMinimal311) {
  Connect c = connect311("a");
  c.clean_session = true;
  c.keep_alive = 60;
  // Section 3.1.2: protocol name "MQTT", level 4, flags 0x02 (clean), keep alive 60.
  expect_bytes(c, {0x10, 0x0D, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, 'a'});
}

TEST(RoundTripConnect, ExactBytesMinimal31) {
  Connect c = connect311("a");
  c.version = ProtocolVersion::V31;
  c.keep_alive = 10;
  // MQTT 3.1: protocol name "MQIsdp", version 3.
  expect_bytes(
      c, {0x10, 0x0F, 0x00, 0x06, 'M', 'Q', 'I', 's', 'd', 'p', 0x03, 0x02, 0x00, 0x0A, 0x00, 0x01, 'a'});
}

TEST(RoundTripConnect, ExactBytesEveryField) {
  Connect c = connect311("id");
  c.clean_session = true;
  c.keep_alive = 0x1234;
  c.will = Will{.topic = "w/t", .payload = "bye", .qos = QoS::AtLeastOnce, .retain = true};
  c.username = "u";
  c.password = "pw";
  // Flags: user 0x80 | password 0x40 | will retain 0x20 | will QoS 1 0x08 | will 0x04 | clean 0x02.
  const Bytes body = str("MQTT") + Bytes{0x04, 0xEE, 0x12, 0x34} + str("id") + str("w/t") + str("bye") +
                     str("u") + str("pw");
  const Bytes expected = packet(0x10, body);
  EXPECT_EQ(expected[1], body.size());
  expect_bytes(c, expected);
}

TEST(RoundTripConnect, DecodedFieldsOfHandWrittenConnect) {
  const Bytes in = packet(0x10, str("MQTT") + Bytes{0x04, 0xD4, 0x00, 0x05} + str("cid") + str("a/b") +
                                    str("xyz") + str("user") + str("pass"));
  // 0xD4: user, password, will QoS 2 (0x10), will (0x04), no clean session, no retain.
  const auto r = decode(as_span(in), kServer);
  ASSERT_EQ(r.status, DecodeStatus::Ok) << describe(r.error);
  ASSERT_TRUE(std::holds_alternative<Connect>(r.packet));
  const auto& c = std::get<Connect>(r.packet);
  EXPECT_EQ(c.version, ProtocolVersion::V311);
  EXPECT_FALSE(c.clean_session);
  EXPECT_EQ(c.keep_alive, 5);
  EXPECT_EQ(c.client_id, "cid");
  ASSERT_TRUE(c.will.has_value());
  EXPECT_EQ(c.will->topic, "a/b");
  EXPECT_EQ(c.will->payload, "xyz");
  EXPECT_EQ(c.will->qos, QoS::ExactlyOnce);
  EXPECT_FALSE(c.will->retain);
  EXPECT_EQ(c.username, std::optional<std::string_view>("user"));
  EXPECT_EQ(c.password, std::optional<std::string_view>("pass"));
  EXPECT_EQ(r.consumed, in.size());
}

// Every combination of the optional parts, for both protocol versions.
TEST(RoundTripConnect, AllFlagCombinations) {
  int count = 0;
  for (auto version : {ProtocolVersion::V31, ProtocolVersion::V311}) {
    for (bool clean : {false, true}) {
      for (int will = 0; will < 7; ++will) {  // none, or QoS 0..2 x retain
        for (bool user : {false, true}) {
          for (bool pass : {false, true}) {
            if (pass && !user && version == ProtocolVersion::V311) continue;  // [MQTT-3.1.2-22]
            for (std::uint16_t ka : {0, 1, 60, 65535}) {
              Connect c;
              c.version = version;
              c.clean_session = clean;
              c.keep_alive = ka;
              c.client_id = "client-1";
              if (will > 0)
                c.will = Will{.topic = "clients/1/status",
                              .payload = std::string_view("off\0line", 8),
                              .qos = static_cast<QoS>((will - 1) / 2),
                              .retain = (will - 1) % 2 == 1};
              if (user) c.username = "alice";
              if (pass) c.password = std::string_view("\xFF\x00\xC0", 3);  // binary
              SCOPED_TRACE(dump(c));
              expect_roundtrip(c);
              ++count;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(count, 2 * 2 * 7 * 4 * 4 - 2 * 7 * 4);
}

TEST(RoundTripConnect, EmptyClientIdAndEmptyFields) {
  // [MQTT-3.1.3-6] a zero-byte client id is allowed by the codec (the broker decides).
  Connect c = connect311("");
  c.will = Will{.topic = "t", .payload = "", .qos = QoS::AtMostOnce, .retain = false};
  c.username = "";
  c.password = "";
  expect_roundtrip(c);
}

TEST(RoundTripConnect, PasswordWithoutUsernameIsAllowedIn31) {
  Connect c = connect311("x");
  c.version = ProtocolVersion::V31;
  c.password = "secret";
  expect_roundtrip(c);
  const Bytes b = encoded(c);
  EXPECT_EQ(b[11], 0x42);  // flags: password | clean
}

TEST(RoundTripConnect, MultiByteUtf8Strings) {
  Connect c = connect311("\xC3\xA9t\xC3\xA9");             // "été"
  c.will = Will{.topic = "\xE6\xB0\xB4/\xF0\x9F\x98\x80",  // "水/😀"
                .payload = "p",
                .qos = QoS::AtLeastOnce,
                .retain = false};
  c.username = "\xEF\xBB\xBF";  // U+FEFF must not be skipped or stripped [MQTT-1.5.3-3]
  expect_roundtrip(c);
}

// ---------------------------------------------------------------------------
// PUBLISH (section 3.3)

TEST(RoundTripPublish, ExactBytesQos0) {
  Publish p{
      .dup = false, .qos = QoS::AtMostOnce, .retain = false, .topic = "a/b", .packet_id = 0, .payload = "hi"};
  expect_bytes(p, {0x30, 0x07, 0x00, 0x03, 'a', '/', 'b', 'h', 'i'});
  expect_bytes(p, {0x30, 0x07, 0x00, 0x03, 'a', '/', 'b', 'h', 'i'}, kClient);
}

TEST(RoundTripPublish, ExactBytesQos1DupRetain) {
  Publish p{
      .dup = true, .qos = QoS::AtLeastOnce, .retain = true, .topic = "a/b", .packet_id = 10, .payload = "hi"};
  expect_bytes(p, {0x3B, 0x09, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x0A, 'h', 'i'});
}

TEST(RoundTripPublish, ExactBytesQos2) {
  Publish p{.dup = false,
            .qos = QoS::ExactlyOnce,
            .retain = false,
            .topic = "t",
            .packet_id = 0xBEEF,
            .payload = ""};
  expect_bytes(p, {0x34, 0x05, 0x00, 0x01, 't', 0xBE, 0xEF});
}

TEST(RoundTripPublish, AllFlagCombinations) {
  for (int q = 0; q < 3; ++q) {
    for (bool dup : {false, true}) {
      if (dup && q == 0) continue;  // [MQTT-3.3.1-2]
      for (bool retain : {false, true}) {
        for (std::string_view payload :
             {std::string_view(""), std::string_view("x"), std::string_view("\x00\xFF\x80 binary", 10)}) {
          Publish p{.dup = dup,
                    .qos = static_cast<QoS>(q),
                    .retain = retain,
                    .topic = "sport/tennis/player1",
                    .packet_id = q ? std::uint16_t(65535) : std::uint16_t(0),
                    .payload = payload};
          SCOPED_TRACE(dump(p));
          expect_roundtrip(p, kServer);
          expect_roundtrip(p, kClient);
        }
      }
    }
  }
}

TEST(RoundTripPublish, EmptyPayloadQos0HasNoBodyAfterTopic) {
  Publish p{.qos = QoS::AtMostOnce, .topic = "t", .payload = ""};
  const Bytes b = encoded(p);
  EXPECT_EQ(hex(as_span(b)), "3003000174");
  expect_roundtrip(p);
  const auto r = decode(as_span(b), kServer);
  EXPECT_TRUE(std::get<Publish>(r.packet).payload.empty());
}

TEST(RoundTripPublish, Payload64KiB) {
  std::string payload(64 * 1024, '\0');
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 31 + 7);
  Publish p{.dup = false,
            .qos = QoS::AtLeastOnce,
            .retain = true,
            .topic = "big/one",
            .packet_id = 7,
            .payload = payload};
  const Bytes b = encoded(p);
  // Remaining length 2+7 + 2 + 65536 = 65547 = 0x1000B -> 8B 80 04.
  ASSERT_GE(b.size(), 4u);
  EXPECT_EQ(b[0], 0x33);
  EXPECT_EQ(b[1], 0x8B);
  EXPECT_EQ(b[2], 0x80);
  EXPECT_EQ(b[3], 0x04);
  EXPECT_EQ(b.size(), 4u + 65547u);
  expect_roundtrip(p);
}

TEST(RoundTripPublish, PayloadLargerThan64KiBAndTopicOf65535Bytes) {
  const std::string topic(65535, 't');  // the longest UTF-8 string MQTT can carry
  const std::string payload(200000, 'p');
  Publish p{.qos = QoS::ExactlyOnce, .topic = topic, .packet_id = 1, .payload = payload};
  expect_roundtrip(p);
}

TEST(RoundTripPublish, PrefixPlusIdPlusPayloadEqualsEncode) {
  for (int q = 0; q < 3; ++q) {
    Publish p{.dup = q == 2,
              .qos = static_cast<QoS>(q),
              .retain = q == 1,
              .topic = "x/y",
              .packet_id = static_cast<std::uint16_t>(q ? 0x0102 : 0),
              .payload = "payload"};
    Bytes parts;
    encode_publish_prefix(p.qos, p.dup, p.retain, p.topic, p.payload.size(), parts);
    if (q) parts.insert(parts.end(), {0x01, 0x02});
    parts.insert(parts.end(), p.payload.begin(), p.payload.end());
    EXPECT_EQ(hex(as_span(parts)), hex(as_span(encoded(p)))) << "QoS " << q;
  }
}

TEST(RoundTripPublish, TopicWithDollarAndEmptyLevels) {
  for (std::string_view t : {"$SYS/broker", "/", "a//b", "/a/", " ", "\xE2\x82\xAC"}) {
    expect_roundtrip(Publish{.qos = QoS::AtMostOnce, .topic = t, .payload = "v"});
  }
}

// ---------------------------------------------------------------------------
// PUBACK, PUBREC, PUBREL, PUBCOMP (sections 3.4 to 3.7)

TEST(RoundTripAck, ExactBytes) {
  expect_bytes(Ack{PacketType::Puback, 1}, {0x40, 0x02, 0x00, 0x01});
  expect_bytes(Ack{PacketType::Pubrec, 0x1234}, {0x50, 0x02, 0x12, 0x34});
  // [MQTT-3.6.1-1] PUBREL's fixed header flags are 0010.
  expect_bytes(Ack{PacketType::Pubrel, 0xFFFF}, {0x62, 0x02, 0xFF, 0xFF});
  expect_bytes(Ack{PacketType::Pubcomp, 0x0100}, {0x70, 0x02, 0x01, 0x00});
}

TEST(RoundTripAck, BothDirections) {
  for (auto t : {PacketType::Puback, PacketType::Pubrec, PacketType::Pubrel, PacketType::Pubcomp}) {
    for (std::uint16_t id : {1, 2, 255, 256, 32768, 65535}) {
      SCOPED_TRACE(name_of(t));
      expect_roundtrip(Ack{t, id}, kServer);
      expect_roundtrip(Ack{t, id}, kClient);
    }
  }
}

// ---------------------------------------------------------------------------
// SUBSCRIBE, UNSUBSCRIBE (sections 3.8, 3.10)

TEST(RoundTripSubscribe, ExactBytes) {
  Subscribe s{.packet_id = 10, .subscriptions = {{"a/b", QoS::AtLeastOnce}, {"c/#", QoS::ExactlyOnce}}};
  // Section 3.8.3 example layout: id, then (length, filter, requested QoS) per filter.
  expect_bytes(s, {0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, 'a', '/', 'b', 0x01, 0x00, 0x03, 'c', '/', '#', 0x02});
}

TEST(RoundTripSubscribe, SeveralFilters) {
  Subscribe s{.packet_id = 0x7FFF,
              .subscriptions = {{"#", QoS::AtMostOnce},
                                {"+", QoS::AtLeastOnce},
                                {"sport/tennis/+", QoS::ExactlyOnce},
                                {"$SYS/#", QoS::AtMostOnce},
                                {"/+", QoS::AtLeastOnce},
                                {"a//b", QoS::ExactlyOnce}}};
  expect_roundtrip(s);
  const Bytes b = encoded(s);
  const auto r = decode(as_span(b), kServer);
  ASSERT_EQ(r.status, DecodeStatus::Ok);
  const auto& d = std::get<Subscribe>(r.packet);
  ASSERT_EQ(d.subscriptions.size(), 6u);
  EXPECT_EQ(d.subscriptions[2].filter, "sport/tennis/+");
  EXPECT_EQ(d.subscriptions[2].qos, QoS::ExactlyOnce);
}

TEST(RoundTripUnsubscribe, ExactBytes) {
  Unsubscribe u{.packet_id = 2, .filters = {"a/b", "c/d"}};
  expect_bytes(u, {0xA2, 0x0C, 0x00, 0x02, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x03, 'c', '/', 'd'});
}

TEST(RoundTripUnsubscribe, SeveralFilters) {
  expect_roundtrip(Unsubscribe{.packet_id = 1, .filters = {"#"}});
  expect_roundtrip(Unsubscribe{.packet_id = 65535, .filters = {"a/+/c", "$SYS/#", "x", "/"}});
}

// ---------------------------------------------------------------------------
// PINGREQ, DISCONNECT (sections 3.12, 3.14)

TEST(RoundTripEmpty, ExactBytes) {
  expect_bytes(Pingreq{}, {0xC0, 0x00});
  expect_bytes(Disconnect{}, {0xE0, 0x00});
  expect_bytes(Pingresp{}, {0xD0, 0x00}, kClient);
}

// ---------------------------------------------------------------------------
// Server-to-client packets, decoded by a client.

TEST(RoundTripClient, ConnackExactBytes) {
  expect_bytes(Connack{.session_present = false, .code = ConnectReturnCode::Accepted},
               {0x20, 0x02, 0x00, 0x00}, kClient);
  expect_bytes(Connack{.session_present = true, .code = ConnectReturnCode::Accepted},
               {0x20, 0x02, 0x01, 0x00}, kClient);
  expect_bytes(Connack{.session_present = false, .code = ConnectReturnCode::UnacceptableProtocolVersion},
               {0x20, 0x02, 0x00, 0x01}, kClient);
}

TEST(RoundTripClient, ConnackEveryReturnCode) {
  for (int rc = 0; rc <= 5; ++rc)
    for (bool sp : {false, true})
      expect_roundtrip(Connack{.session_present = sp, .code = static_cast<ConnectReturnCode>(rc)}, kClient);
}

TEST(RoundTripClient, SubackExactBytes) {
  // Section 3.9.3: one return code per filter, 0x80 for failure.
  expect_bytes(Suback{.packet_id = 10, .return_codes = {0x00, 0x01, 0x02, kSubackFailure}},
               {0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80}, kClient);
}

TEST(RoundTripClient, SubackSizes) {
  expect_roundtrip(Suback{.packet_id = 1, .return_codes = {0x01}}, kClient);
  expect_roundtrip(Suback{.packet_id = 2, .return_codes = std::vector<std::uint8_t>(300, 0x02)}, kClient);
}

TEST(RoundTripClient, UnsubackExactBytes) {
  expect_bytes(Unsuback{.packet_id = 0x0A0B}, {0xB0, 0x02, 0x0A, 0x0B}, kClient);
}

TEST(RoundTripClient, PingrespAndPublishAndAcks) {
  expect_roundtrip(Pingresp{}, kClient);
  expect_roundtrip(Publish{.qos = QoS::ExactlyOnce, .topic = "t/u", .packet_id = 3, .payload = "d"}, kClient);
  for (auto t : {PacketType::Puback, PacketType::Pubrec, PacketType::Pubrel, PacketType::Pubcomp})
    expect_roundtrip(Ack{t, 42}, kClient);
}

// ---------------------------------------------------------------------------
// names.cpp

TEST(Names, TypeOfAndNameOf) {
  EXPECT_EQ(type_of(Connect{}), PacketType::Connect);
  EXPECT_EQ(type_of(Ack{PacketType::Pubrec, 1}), PacketType::Pubrec);
  EXPECT_EQ(type_of(Unsuback{}), PacketType::Unsuback);
  EXPECT_EQ(type_of(Disconnect{}), PacketType::Disconnect);
  EXPECT_STREQ(name_of(PacketType::Pubrel), "PUBREL");
  EXPECT_STREQ(name_of(PacketType::Pingresp), "PINGRESP");
  EXPECT_STREQ(describe(ProtocolError::None), "no error");
}

TEST(Names, EveryTypeHasADistinctName) {
  std::set<std::string> names;
  for (int t = 1; t <= 14; ++t) names.insert(name_of(static_cast<PacketType>(t)));
  EXPECT_EQ(names.size(), 14u);
  EXPECT_EQ(names.count("?"), 0u);
}

TEST(Names, EveryErrorIsDescribed) {
  std::set<std::string> seen;
  for (int e = 1; e <= static_cast<int>(ProtocolError::ClientIdRejected); ++e) {
    const std::string d = describe(static_cast<ProtocolError>(e));
    EXPECT_NE(d, "unknown protocol error") << e;
    EXPECT_TRUE(seen.insert(d).second) << "duplicate description " << d;
  }
}

// ---------------------------------------------------------------------------
// Incremental decoding and streams of packets.

std::vector<Packet> sample_packets() {
  Connect c = connect311("client");
  c.will = Will{.topic = "will", .payload = "gone", .qos = QoS::ExactlyOnce, .retain = true};
  c.username = "u";
  c.password = "p";
  return {c,
          Publish{.qos = QoS::AtMostOnce, .topic = "a", .payload = "b"},
          Publish{.dup = true,
                  .qos = QoS::ExactlyOnce,
                  .retain = true,
                  .topic = "a/b",
                  .packet_id = 9,
                  .payload = std::string_view("\0\1\2", 3)},
          Ack{PacketType::Puback, 1},
          Ack{PacketType::Pubrel, 2},
          Subscribe{.packet_id = 3, .subscriptions = {{"a/#", QoS::AtLeastOnce}, {"+", QoS::AtMostOnce}}},
          Unsubscribe{.packet_id = 4, .filters = {"a/#"}},
          Pingreq{},
          Disconnect{}};
}

TEST(Incremental, OneByteAtATimeNeedsMoreUntilTheLastByte) {
  for (const auto& p : sample_packets()) {
    SCOPED_TRACE(dump(p));
    const Bytes b = encoded(p);
    for (std::size_t n = 0; n < b.size(); ++n) {
      const auto r = decode(std::span(b.data(), n), kServer);
      EXPECT_EQ(r.status, DecodeStatus::NeedMore) << "after " << n << " of " << b.size();
      EXPECT_EQ(r.error, ProtocolError::None);
    }
    const auto r = decode(as_span(b), kServer);
    ASSERT_EQ(r.status, DecodeStatus::Ok);
    EXPECT_EQ(r.consumed, b.size());
    EXPECT_TRUE(same_packet(r.packet, p));
  }
}

TEST(Incremental, LargePacketNeedsMoreUntilComplete) {
  const std::string payload(20000, 'z');
  const Publish p{.qos = QoS::AtLeastOnce, .topic = "t", .packet_id = 1, .payload = payload};
  const Bytes b = encoded(p);
  for (std::size_t n : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{4}, std::size_t{100},
                        b.size() / 2, b.size() - 1}) {
    EXPECT_EQ(decode(std::span(b.data(), n), kServer).status, DecodeStatus::NeedMore) << n;
  }
  EXPECT_EQ(decode(as_span(b), kServer).status, DecodeStatus::Ok);
}

TEST(Incremental, BackToBackPacketsDecodeOneAfterAnother) {
  const auto packets = sample_packets();
  Bytes stream;
  for (const auto& p : packets) encode(p, stream);
  std::size_t pos = 0;
  for (const auto& p : packets) {
    const auto r = decode(std::span(stream).subspan(pos), kServer);
    ASSERT_EQ(r.status, DecodeStatus::Ok) << "at offset " << pos << ": " << describe(r.error);
    EXPECT_EQ(r.consumed, encoded(p).size());
    EXPECT_TRUE(same_packet(r.packet, p)) << dump(p) << " vs " << dump(r.packet);
    pos += r.consumed;
  }
  EXPECT_EQ(pos, stream.size());
  EXPECT_EQ(decode(std::span(stream).subspan(pos), kServer).status, DecodeStatus::NeedMore);
}

TEST(Incremental, PacketFollowedByPartOfTheNext) {
  const Bytes first = encoded(Ack{PacketType::Pubcomp, 5});
  const Bytes second = encoded(Publish{.qos = QoS::AtMostOnce, .topic = "abc", .payload = "def"});
  for (std::size_t k = 0; k < second.size(); ++k) {
    const Bytes in = first + Bytes(second.begin(), second.begin() + static_cast<long>(k));
    const auto r = decode(as_span(in), kServer);
    ASSERT_EQ(r.status, DecodeStatus::Ok);
    EXPECT_EQ(r.consumed, 4u);  // only the first packet, never bytes of the next
    EXPECT_TRUE(same_packet(r.packet, Ack{PacketType::Pubcomp, 5}));
  }
}

TEST(Incremental, ClientStreamOfServerPackets) {
  const std::vector<Packet> packets{
      Connack{.session_present = true},
      Suback{.packet_id = 1, .return_codes = {0, 0x80}},
      Publish{.qos = QoS::AtLeastOnce, .topic = "x", .packet_id = 2, .payload = ""},
      Ack{PacketType::Pubrel, 3},
      Unsuback{.packet_id = 4},
      Pingresp{}};
  Bytes stream;
  for (const auto& p : packets) encode(p, stream);
  std::size_t pos = 0;
  for (const auto& p : packets) {
    for (std::size_t n = pos; n < pos + encoded(p).size(); ++n)
      ASSERT_EQ(decode(std::span(stream.data() + pos, n - pos), kClient).status, DecodeStatus::NeedMore);
    const auto r = decode(std::span(stream).subspan(pos), kClient);
    ASSERT_EQ(r.status, DecodeStatus::Ok) << describe(r.error);
    EXPECT_TRUE(same_packet(r.packet, p));
    pos += r.consumed;
  }
  EXPECT_EQ(pos, stream.size());
}

// A remaining length encoded on more bytes than needed still describes the same packet.
TEST(Incremental, NonMinimalRemainingLengthIsAccepted) {
  const Bytes in{0xC0, 0x80, 0x00};  // PINGREQ, remaining length 0 written on two bytes
  const auto r = decode(as_span(in), kServer);
  ASSERT_EQ(r.status, DecodeStatus::Ok) << describe(r.error);
  EXPECT_EQ(r.consumed, 3u);
  EXPECT_TRUE(std::holds_alternative<Pingreq>(r.packet));
}

TEST(Incremental, MaxPacketSizeCountsTheWholePacket) {
  const Bytes b = encoded(Publish{.qos = QoS::AtMostOnce, .topic = "t", .payload = "12345"});
  ASSERT_EQ(b.size(), 10u);
  DecoderOptions o;
  o.max_packet_size = 10;  // exactly the size: accepted
  EXPECT_EQ(decode(as_span(b), o).status, DecodeStatus::Ok);
  o.max_packet_size = 9;
  const auto r = decode(as_span(b), o);
  EXPECT_EQ(r.status, DecodeStatus::Error);
  EXPECT_EQ(r.error, ProtocolError::PacketTooLarge);
}

}  // namespace
}  // namespace moat::codec
