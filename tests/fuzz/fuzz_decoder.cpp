// libFuzzer target for the MQTT decoder and encoder.
//
// The input is decoded as a stream of packets under four configurations (server and
// client side, a small and the largest max_packet_size). For every decoded packet:
//   - consumed is within the input and within max_packet_size;
//   - every strict prefix of the packet decodes as NeedMore (never an error, never Ok);
//   - the packet is one this side may receive;
//   - encode(packet) decodes back to an equal packet, whose body has the same length as the
//     original body (every byte is accounted for) and whose re-encoding is byte-identical;
//   - a PUBLISH encoded in parts (encode_publish_prefix) equals encode().
// Any violation aborts with a description of the input.
//
// Build: clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc
//        tests/fuzz/fuzz_decoder.cpp src/codec/*.cpp -o fuzz_decoder
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "../unit/codec/codec_test_util.hpp"
#include "codec/decoder.hpp"
#include "codec/encoder.hpp"
#include "codec/topic.hpp"

namespace {

using namespace moat::codec;
using namespace moat::codec::testing;

[[noreturn]] void fail(const char* what, std::span<const std::uint8_t> in, const DecoderOptions& o,
                       const Packet* p = nullptr) {
  std::fprintf(stderr, "fuzz_decoder: %s\n  server=%d max_packet_size=%u\n  input %s\n", what,
               o.server ? 1 : 0, o.max_packet_size,
               hex(in.subspan(0, std::min<std::size_t>(in.size(), 256))).c_str());
  if (p) std::fprintf(stderr, "  packet %s\n", dump(*p).c_str());
  std::abort();
}

#define CHECK(cond, what)                   \
  do {                                      \
    if (!(cond)) fail(what, in, opts, pkt); \
  } while (0)

std::size_t header_size_of(std::span<const std::uint8_t> b) {
  FixedHeader fh;
  ProtocolError err = ProtocolError::None;
  if (decode_fixed_header(b, fh, err) != DecodeStatus::Ok) return 0;
  return fh.header_size;
}

bool server_only(PacketType t) {
  return t == PacketType::Connack || t == PacketType::Suback || t == PacketType::Unsuback ||
         t == PacketType::Pingresp;
}
bool client_only(PacketType t) {
  return t == PacketType::Connect || t == PacketType::Subscribe || t == PacketType::Unsubscribe ||
         t == PacketType::Pingreq || t == PacketType::Disconnect;
}

void check_packet(std::span<const std::uint8_t> in, const DecodeResult& r, const DecoderOptions& opts) {
  const Packet* pkt = &r.packet;
  CHECK(r.error == ProtocolError::None, "Ok with an error set");
  CHECK(r.consumed >= 2 && r.consumed <= in.size(), "consumed outside the input");
  CHECK(r.consumed <= opts.max_packet_size, "packet larger than max_packet_size accepted");
  const PacketType t = type_of(r.packet);
  CHECK(opts.server ? !server_only(t) : !client_only(t), "packet accepted from the wrong side");

  // Every string field obeys the rules the decoder enforces.
  if (const auto* c = std::get_if<Connect>(&r.packet)) {
    CHECK(c->version == ProtocolVersion::V31 || c->version == ProtocolVersion::V311, "CONNECT version");
    CHECK(check_utf8(c->client_id) == ProtocolError::None, "client id not UTF-8");
    if (c->will)
      CHECK(check_utf8(c->will->topic) == ProtocolError::None && valid_topic_name(c->will->topic) &&
                c->will->qos <= QoS::ExactlyOnce,
            "will topic or QoS");
    if (c->username) CHECK(check_utf8(*c->username) == ProtocolError::None, "user name not UTF-8");
    if (c->password && c->version == ProtocolVersion::V311)
      CHECK(c->username.has_value(), "3.1.1 password without user name");
  } else if (const auto* p = std::get_if<Publish>(&r.packet)) {
    CHECK(check_utf8(p->topic) == ProtocolError::None && valid_topic_name(p->topic), "PUBLISH topic");
    CHECK(p->qos <= QoS::ExactlyOnce, "PUBLISH QoS");
    CHECK((p->qos == QoS::AtMostOnce) == (p->packet_id == 0), "PUBLISH packet id");
    CHECK(!(p->dup && p->qos == QoS::AtMostOnce), "DUP on QoS 0");
  } else if (const auto* s = std::get_if<Subscribe>(&r.packet)) {
    CHECK(s->packet_id != 0 && !s->subscriptions.empty(), "SUBSCRIBE id or empty");
    for (const auto& sub : s->subscriptions)
      CHECK(check_utf8(sub.filter) == ProtocolError::None && valid_topic_filter(sub.filter) &&
                sub.qos <= QoS::ExactlyOnce,
            "SUBSCRIBE filter or QoS");
  } else if (const auto* u = std::get_if<Unsubscribe>(&r.packet)) {
    CHECK(u->packet_id != 0 && !u->filters.empty(), "UNSUBSCRIBE id or empty");
    for (const auto& f : u->filters)
      CHECK(check_utf8(f) == ProtocolError::None && valid_topic_filter(f), "UNSUBSCRIBE filter");
  }

  // Strict prefixes are incomplete, not errors (check the interesting ones only).
  const std::size_t hs = header_size_of(in);
  CHECK(hs >= 2 && hs <= 5, "header size");
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, hs - 1, hs, r.consumed / 2, r.consumed - 1}) {
    if (n >= r.consumed) continue;
    const auto pr = decode(in.subspan(0, n), opts);
    CHECK(pr.status == DecodeStatus::NeedMore && pr.error == ProtocolError::None,
          "a strict prefix of a valid packet is not NeedMore");
  }
  // Exactly the packet's bytes decode to the same packet.
  {
    const auto exact = decode(in.subspan(0, r.consumed), opts);
    CHECK(exact.status == DecodeStatus::Ok && exact.consumed == r.consumed &&
              same_packet(exact.packet, r.packet),
          "the packet alone decodes differently than followed by more bytes");
  }

  // Round trip through the encoder.
  Bytes enc;
  encode(r.packet, enc);
  const std::span<const std::uint8_t> es(enc.data(), enc.size());
  const std::size_t ehs = header_size_of(es);
  CHECK(ehs >= 2, "encoded packet has no valid fixed header");
  CHECK(enc.size() - ehs == r.consumed - hs, "re-encoded body length differs from the original");
  CHECK(enc[0] == in[0], "re-encoded first byte (type and flags) differs");
  DecoderOptions unlimited = opts;
  unlimited.max_packet_size = 0xFFFFFFFF;
  const auto back = decode(es, unlimited);
  CHECK(back.status == DecodeStatus::Ok, "re-encoded packet does not decode");
  CHECK(back.consumed == enc.size(), "re-encoded packet consumed size differs");
  CHECK(same_packet(back.packet, r.packet), "re-decoded packet differs");
  Bytes enc2;
  encode(back.packet, enc2);
  CHECK(enc2 == enc, "encoding is not deterministic");
  // With a minimal remaining length in the input, the bytes themselves round-trip.
  if (hs == ehs) CHECK(std::equal(enc.begin(), enc.end(), in.begin()), "re-encoded bytes differ");

  if (const auto* p = std::get_if<Publish>(&r.packet)) {
    Bytes parts;
    encode_publish_prefix(p->qos, p->dup, p->retain, p->topic, p->payload.size(), parts);
    if (p->qos != QoS::AtMostOnce) {
      parts.push_back(static_cast<std::uint8_t>(p->packet_id >> 8));
      parts.push_back(static_cast<std::uint8_t>(p->packet_id & 0xFF));
    }
    parts.insert(parts.end(), p->payload.begin(), p->payload.end());
    CHECK(parts == enc, "encode_publish_prefix + id + payload differs from encode");
  }
}

void run(std::span<const std::uint8_t> data, const DecoderOptions& opts) {
  std::size_t pos = 0;
  while (pos < data.size()) {
    const auto in = data.subspan(pos);
    const Packet* pkt = nullptr;
    const auto r = decode(in, opts);
    if (r.status == DecodeStatus::NeedMore) {
      CHECK(r.error == ProtocolError::None && r.consumed == 0, "NeedMore with an error or consumed");
      return;
    }
    if (r.status == DecodeStatus::Error) {
      CHECK(r.error != ProtocolError::None && r.consumed == 0, "Error without an error code");
      // describe() knows every error the decoder returns.
      CHECK(std::string_view(describe(r.error)) != "unknown protocol error", "undescribed error");
      return;
    }
    CHECK(r.status == DecodeStatus::Ok, "unknown status");
    check_packet(in, r, opts);
    pos += r.consumed;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> in(data, size);
  for (bool server : {true, false}) {
    for (std::uint32_t max : {std::uint32_t{64}, DecoderOptions{}.max_packet_size}) {
      DecoderOptions o;
      o.server = server;
      o.max_packet_size = max;
      run(in, o);
    }
  }
  // The fixed header parser alone never reads past its input.
  FixedHeader fh;
  ProtocolError err = ProtocolError::None;
  if (decode_fixed_header(in, fh, err) == DecodeStatus::Ok && (fh.header_size > size || fh.header_size > 5))
    std::abort();
  return 0;
}
