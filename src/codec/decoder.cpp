#include "codec/decoder.hpp"

#include "codec/topic.hpp"

namespace moat::codec {
namespace {

// Sequential reader over one packet body; every read is bounds-checked and the
// first failure sticks, so the parse functions read straight through and test once.
class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> body) : body_(body) {}

  std::uint8_t u8() {
    if (!need(1)) return 0;
    return body_[pos_++];
  }
  std::uint16_t u16() {
    if (!need(2)) return 0;
    const auto v = static_cast<std::uint16_t>((body_[pos_] << 8) | body_[pos_ + 1]);
    pos_ += 2;
    return v;
  }
  // Two-byte length followed by that many bytes (section 1.5.3 and 3.1.3.3).
  std::string_view binary() {
    const std::uint16_t len = u16();
    if (!need(len)) return {};
    std::string_view v(reinterpret_cast<const char*>(body_.data() + pos_), len);
    pos_ += len;
    return v;
  }
  std::string_view utf8() {
    auto v = binary();
    if (error_ == ProtocolError::None) fail(check_utf8(v));
    return v;
  }
  std::string_view rest() {
    std::string_view v(reinterpret_cast<const char*>(body_.data() + pos_), body_.size() - pos_);
    pos_ = body_.size();
    return v;
  }
  bool at_end() const { return pos_ == body_.size(); }
  void fail(ProtocolError e) {
    if (error_ == ProtocolError::None) error_ = e;
  }
  ProtocolError error() const { return error_; }
  // Checked once a parse function is done: an error, or bytes left over.
  ProtocolError finish() {
    if (error_ == ProtocolError::None && !at_end()) error_ = ProtocolError::TrailingBytes;
    return error_;
  }

 private:
  bool need(std::size_t n) {
    if (error_ != ProtocolError::None) return false;
    if (body_.size() - pos_ < n) {
      error_ = ProtocolError::MalformedLength;
      return false;
    }
    return true;
  }
  std::span<const std::uint8_t> body_;
  std::size_t pos_ = 0;
  ProtocolError error_ = ProtocolError::None;
};

ProtocolError parse_connect(Reader& r, Connect& c) {
  const auto name = r.utf8();
  const auto level = r.u8();
  if (r.error() != ProtocolError::None) return r.error();
  if (name == "MQTT") {
    if (level != static_cast<std::uint8_t>(ProtocolVersion::V311))
      return ProtocolError::UnsupportedProtocolVersion;
    c.version = ProtocolVersion::V311;
  } else if (name == "MQIsdp") {
    if (level != static_cast<std::uint8_t>(ProtocolVersion::V31))
      return ProtocolError::UnsupportedProtocolVersion;
    c.version = ProtocolVersion::V31;
  } else {
    return ProtocolError::InvalidProtocolName;
  }

  const auto flags = r.u8();
  if (flags & 0x01) return ProtocolError::ConnectReservedFlag;
  c.clean_session = (flags & 0x02) != 0;
  const bool will_flag = (flags & 0x04) != 0;
  const auto will_qos = static_cast<std::uint8_t>((flags >> 3) & 0x03);
  const bool will_retain = (flags & 0x20) != 0;
  const bool has_password = (flags & 0x40) != 0;
  const bool has_username = (flags & 0x80) != 0;
  if (!will_flag && (will_qos != 0 || will_retain)) return ProtocolError::WillFlagsWithoutWill;
  if (will_qos == 3) return ProtocolError::InvalidWillQos;
  // MQTT 3.1 allowed a password without a user name; 3.1.1 forbids it.
  if (has_password && !has_username && c.version == ProtocolVersion::V311)
    return ProtocolError::PasswordWithoutUsername;
  c.keep_alive = r.u16();

  c.client_id = r.utf8();
  if (will_flag) {
    Will w;
    w.topic = r.utf8();
    w.payload = r.binary();
    w.qos = static_cast<QoS>(will_qos);
    w.retain = will_retain;
    if (r.error() == ProtocolError::None && !valid_topic_name(w.topic))
      return ProtocolError::WillTopicInvalid;
    c.will = w;
  }
  if (has_username) c.username = r.utf8();
  if (has_password) c.password = r.binary();
  return r.finish();
}

ProtocolError parse_publish(Reader& r, std::uint8_t flags, Publish& p) {
  p.dup = (flags & 0x08) != 0;
  const auto qos = static_cast<std::uint8_t>((flags >> 1) & 0x03);
  if (qos == 3) return ProtocolError::InvalidQos;
  p.qos = static_cast<QoS>(qos);
  p.retain = (flags & 0x01) != 0;
  if (p.dup && p.qos == QoS::AtMostOnce) return ProtocolError::InvalidFixedHeaderFlags;
  p.topic = r.utf8();
  if (r.error() != ProtocolError::None) return r.error();
  if (!valid_topic_name(p.topic)) return ProtocolError::InvalidTopicName;
  if (p.qos != QoS::AtMostOnce) {
    p.packet_id = r.u16();
    if (r.error() == ProtocolError::None && p.packet_id == 0) return ProtocolError::ZeroPacketId;
  }
  p.payload = r.rest();
  return r.error();
}

ProtocolError parse_subscribe(Reader& r, Subscribe& s) {
  s.packet_id = r.u16();
  if (r.error() == ProtocolError::None && s.packet_id == 0) return ProtocolError::ZeroPacketId;
  while (r.error() == ProtocolError::None && !r.at_end()) {
    Subscription sub;
    sub.filter = r.utf8();
    const auto q = r.u8();
    if (r.error() != ProtocolError::None) break;
    // A malformed filter is a protocol violation, which closes the connection
    // [MQTT-4.8.0-1]; SUBACK 0x80 is for filters the server refuses to grant.
    if (!valid_topic_filter(sub.filter)) return ProtocolError::InvalidTopicFilter;
    if (q > 2) return ProtocolError::InvalidRequestedQos;
    sub.qos = static_cast<QoS>(q);
    s.subscriptions.push_back(sub);
  }
  if (r.error() == ProtocolError::None && s.subscriptions.empty()) return ProtocolError::NoSubscriptions;
  return r.finish();
}

ProtocolError parse_unsubscribe(Reader& r, Unsubscribe& u) {
  u.packet_id = r.u16();
  if (r.error() == ProtocolError::None && u.packet_id == 0) return ProtocolError::ZeroPacketId;
  while (r.error() == ProtocolError::None && !r.at_end()) {
    const auto f = r.utf8();
    if (r.error() == ProtocolError::None && !valid_topic_filter(f)) return ProtocolError::InvalidTopicFilter;
    u.filters.push_back(f);
  }
  if (r.error() == ProtocolError::None && u.filters.empty()) return ProtocolError::NoUnsubscriptions;
  return r.finish();
}

ProtocolError parse_connack(Reader& r, Connack& c) {
  const auto ack_flags = r.u8();
  const auto code = r.u8();
  if (ack_flags & 0xFE) r.fail(ProtocolError::InvalidFixedHeaderFlags);
  c.session_present = (ack_flags & 0x01) != 0;
  c.code = static_cast<ConnectReturnCode>(code);
  return r.finish();
}

ProtocolError parse_suback(Reader& r, Suback& s) {
  s.packet_id = r.u16();
  while (r.error() == ProtocolError::None && !r.at_end()) s.return_codes.push_back(r.u8());
  return r.finish();
}

// [MQTT-2.2.2-1][MQTT-2.2.2-2]: the flags every packet type but PUBLISH must carry.
bool fixed_flags_ok(PacketType t, std::uint8_t flags) {
  switch (t) {
    case PacketType::Publish:
      return true;
    case PacketType::Pubrel:
    case PacketType::Subscribe:
    case PacketType::Unsubscribe:
      return flags == 0x02;
    default:
      return flags == 0;
  }
}

bool sent_by_server(PacketType t) {
  switch (t) {
    case PacketType::Connack:
    case PacketType::Suback:
    case PacketType::Unsuback:
    case PacketType::Pingresp:
      return true;
    default:
      return false;
  }
}

bool sent_by_client_only(PacketType t) {
  switch (t) {
    case PacketType::Connect:
    case PacketType::Subscribe:
    case PacketType::Unsubscribe:
    case PacketType::Pingreq:
    case PacketType::Disconnect:
      return true;
    default:
      return false;
  }
}

}  // namespace

DecodeStatus decode_fixed_header(std::span<const std::uint8_t> in, FixedHeader& out, ProtocolError& err) {
  if (in.empty()) return DecodeStatus::NeedMore;
  out.type = static_cast<std::uint8_t>(in[0] >> 4);
  out.flags = static_cast<std::uint8_t>(in[0] & 0x0F);
  if (out.type == 0 || out.type == 15) {
    err = ProtocolError::ReservedPacketType;
    return DecodeStatus::Error;
  }
  // Section 2.2.3: up to four bytes, seven bits each, continuation in the top bit.
  std::uint32_t value = 0;
  for (std::size_t i = 0; i < 4; ++i) {
    if (1 + i >= in.size()) return DecodeStatus::NeedMore;
    const std::uint8_t b = in[1 + i];
    value |= static_cast<std::uint32_t>(b & 0x7F) << (7 * i);
    if ((b & 0x80) == 0) {
      out.remaining_length = value;
      out.header_size = 2 + i;
      return DecodeStatus::Ok;
    }
  }
  err = ProtocolError::RemainingLengthTooLong;
  return DecodeStatus::Error;
}

DecodeResult decode(std::span<const std::uint8_t> in, const DecoderOptions& opts) {
  DecodeResult res;
  FixedHeader fh;
  ProtocolError err = ProtocolError::None;
  const auto st = decode_fixed_header(in, fh, err);
  if (st != DecodeStatus::Ok) {
    res.status = st;
    res.error = err;
    return res;
  }
  const auto total = static_cast<std::uint64_t>(fh.header_size) + fh.remaining_length;
  const auto type = static_cast<PacketType>(fh.type);
  auto fail = [&](ProtocolError e) {
    res.status = DecodeStatus::Error;
    res.error = e;
    return res;
  };
  // Refuse before waiting for (and buffering) the body.
  if (total > opts.max_packet_size) return fail(ProtocolError::PacketTooLarge);
  if (!fixed_flags_ok(type, fh.flags)) return fail(ProtocolError::InvalidFixedHeaderFlags);
  if (opts.server ? sent_by_server(type) : sent_by_client_only(type))
    return fail(ProtocolError::WrongDirection);
  if (in.size() < total) return res;  // NeedMore

  Reader r(in.subspan(fh.header_size, fh.remaining_length));
  ProtocolError e = ProtocolError::None;
  switch (type) {
    case PacketType::Connect: {
      Connect c;
      e = parse_connect(r, c);
      res.packet = c;
      break;
    }
    case PacketType::Connack: {
      Connack c;
      e = parse_connack(r, c);
      res.packet = c;
      break;
    }
    case PacketType::Publish: {
      Publish p;
      e = parse_publish(r, fh.flags, p);
      res.packet = p;
      break;
    }
    case PacketType::Puback:
    case PacketType::Pubrec:
    case PacketType::Pubrel:
    case PacketType::Pubcomp:
    case PacketType::Unsuback: {
      const auto id = r.u16();
      e = r.finish();
      if (type == PacketType::Unsuback)
        res.packet = Unsuback{id};
      else
        res.packet = Ack{type, id};
      break;
    }
    case PacketType::Subscribe: {
      Subscribe s;
      e = parse_subscribe(r, s);
      res.packet = std::move(s);
      break;
    }
    case PacketType::Suback: {
      Suback s;
      e = parse_suback(r, s);
      res.packet = std::move(s);
      break;
    }
    case PacketType::Unsubscribe: {
      Unsubscribe u;
      e = parse_unsubscribe(r, u);
      res.packet = std::move(u);
      break;
    }
    case PacketType::Pingreq:
      e = r.finish();
      res.packet = Pingreq{};
      break;
    case PacketType::Pingresp:
      e = r.finish();
      res.packet = Pingresp{};
      break;
    case PacketType::Disconnect:
      e = r.finish();
      res.packet = Disconnect{};
      break;
  }
  if (e != ProtocolError::None) return fail(e);
  res.status = DecodeStatus::Ok;
  res.consumed = static_cast<std::size_t>(total);
  return res;
}

}  // namespace moat::codec
