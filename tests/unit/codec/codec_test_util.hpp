// Helpers shared by the codec unit tests and the codec fuzz targets:
// field-by-field packet comparison, a readable dump of a packet, and byte helpers.
// Header-only and dependency-free (no GoogleTest) so the fuzzers can include it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "codec/decoder.hpp"
#include "codec/encoder.hpp"
#include "codec/packet.hpp"

namespace moat::codec::testing {

inline bool same_will(const std::optional<Will>& a, const std::optional<Will>& b) {
  if (a.has_value() != b.has_value()) return false;
  if (!a) return true;
  return a->topic == b->topic && a->payload == b->payload && a->qos == b->qos && a->retain == b->retain;
}

// Field-by-field equality of two packets (the codec defines no operator==).
inline bool same_packet(const Packet& a, const Packet& b) {
  if (a.index() != b.index()) return false;
  return std::visit(
      [&](const auto& x) -> bool {
        using T = std::decay_t<decltype(x)>;
        const T& y = std::get<T>(b);
        if constexpr (std::is_same_v<T, Connect>) {
          return x.version == y.version && x.clean_session == y.clean_session &&
                 x.keep_alive == y.keep_alive && x.client_id == y.client_id && same_will(x.will, y.will) &&
                 x.username == y.username && x.password == y.password;
        } else if constexpr (std::is_same_v<T, Connack>) {
          return x.session_present == y.session_present && x.code == y.code;
        } else if constexpr (std::is_same_v<T, Publish>) {
          return x.dup == y.dup && x.qos == y.qos && x.retain == y.retain && x.topic == y.topic &&
                 x.packet_id == y.packet_id && x.payload == y.payload;
        } else if constexpr (std::is_same_v<T, Ack>) {
          return x.type == y.type && x.packet_id == y.packet_id;
        } else if constexpr (std::is_same_v<T, Subscribe>) {
          if (x.packet_id != y.packet_id || x.subscriptions.size() != y.subscriptions.size()) return false;
          for (std::size_t i = 0; i < x.subscriptions.size(); ++i)
            if (x.subscriptions[i].filter != y.subscriptions[i].filter ||
                x.subscriptions[i].qos != y.subscriptions[i].qos)
              return false;
          return true;
        } else if constexpr (std::is_same_v<T, Suback>) {
          return x.packet_id == y.packet_id && x.return_codes == y.return_codes;
        } else if constexpr (std::is_same_v<T, Unsubscribe>) {
          return x.packet_id == y.packet_id && x.filters == y.filters;
        } else if constexpr (std::is_same_v<T, Unsuback>) {
          return x.packet_id == y.packet_id;
        } else {
          return true;  // Pingreq, Pingresp, Disconnect carry nothing
        }
      },
      a);
}

inline std::string quoted(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    }
  }
  if (s.size() > 64) return out.substr(0, 64) + "...(" + std::to_string(s.size()) + " bytes)\"";
  return out + "\"";
}

// A readable one-line dump, for assertion messages and fuzz crash reports.
inline std::string dump(const Packet& p) {
  std::string s = name_of(type_of(p));
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        auto num = [](auto v) { return std::to_string(static_cast<unsigned>(v)); };
        if constexpr (std::is_same_v<T, Connect>) {
          s += " v=" + num(x.version) + " clean=" + num(x.clean_session) + " ka=" + num(x.keep_alive) +
               " id=" + quoted(x.client_id);
          if (x.will)
            s += " will{" + quoted(x.will->topic) + "," + quoted(x.will->payload) + ",q=" + num(x.will->qos) +
                 ",r=" + num(x.will->retain) + "}";
          if (x.username) s += " user=" + quoted(*x.username);
          if (x.password) s += " pass=" + quoted(*x.password);
        } else if constexpr (std::is_same_v<T, Connack>) {
          s += " sp=" + num(x.session_present) + " rc=" + num(x.code);
        } else if constexpr (std::is_same_v<T, Publish>) {
          s += " dup=" + num(x.dup) + " q=" + num(x.qos) + " r=" + num(x.retain) +
               " topic=" + quoted(x.topic) + " id=" + num(x.packet_id) + " payload=" + quoted(x.payload);
        } else if constexpr (std::is_same_v<T, Ack> || std::is_same_v<T, Unsuback>) {
          s += " id=" + num(x.packet_id);
        } else if constexpr (std::is_same_v<T, Subscribe>) {
          s += " id=" + num(x.packet_id);
          for (const auto& sub : x.subscriptions) s += " " + quoted(sub.filter) + ":" + num(sub.qos);
        } else if constexpr (std::is_same_v<T, Suback>) {
          s += " id=" + num(x.packet_id);
          for (auto rc : x.return_codes) s += " " + num(rc);
        } else if constexpr (std::is_same_v<T, Unsubscribe>) {
          s += " id=" + num(x.packet_id);
          for (const auto& f : x.filters) s += " " + quoted(f);
        }
      },
      p);
  return s;
}

inline Bytes encoded(const Packet& p) {
  Bytes out;
  encode(p, out);
  return out;
}

inline std::span<const std::uint8_t> as_span(const Bytes& b) {
  return {b.data(), b.size()};
}

// Concatenation of byte strings, e.g. Bytes{0x00, 0x04} + raw("MQTT").
inline Bytes operator+(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
inline Bytes raw(std::string_view s) {
  return Bytes(s.begin(), s.end());
}
// A length-prefixed string: two length bytes (big-endian) then the bytes.
inline Bytes str(std::string_view s) {
  Bytes b{static_cast<std::uint8_t>(s.size() >> 8), static_cast<std::uint8_t>(s.size() & 0xFF)};
  return b + raw(s);
}
// A fixed header (first byte, remaining length of `body`) followed by `body`.
inline Bytes packet(std::uint8_t first, const Bytes& body) {
  Bytes out{first};
  encode_remaining_length(static_cast<std::uint32_t>(body.size()), out);
  return out + body;
}

inline std::string hex(std::span<const std::uint8_t> b) {
  std::string s;
  for (auto c : b) {
    char buf[4];
    std::snprintf(buf, sizeof buf, "%02X", c);
    s += buf;
  }
  return s;
}

}  // namespace moat::codec::testing
