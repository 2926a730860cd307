// MQTT control packets as plain values (MQTT 3.1, 3.1.1; room for 5.0).
//
// Decoded packets hold string_views into the decoder's input buffer: they are
// valid until the caller discards those bytes. Whoever keeps a field copies it.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <variant>
#include <vector>

namespace moat::codec {

enum class PacketType : std::uint8_t {
  Connect = 1,
  Connack = 2,
  Publish = 3,
  Puback = 4,
  Pubrec = 5,
  Pubrel = 6,
  Pubcomp = 7,
  Subscribe = 8,
  Suback = 9,
  Unsubscribe = 10,
  Unsuback = 11,
  Pingreq = 12,
  Pingresp = 13,
  Disconnect = 14,
};

// The protocol level byte of CONNECT. MQTT 3.1 ("MQIsdp") is 3, 3.1.1 is 4.
enum class ProtocolVersion : std::uint8_t { V31 = 3, V311 = 4, V5 = 5 };

enum class QoS : std::uint8_t { AtMostOnce = 0, AtLeastOnce = 1, ExactlyOnce = 2 };

// CONNACK return codes of MQTT 3.1.1 section 3.2.2.3.
enum class ConnectReturnCode : std::uint8_t {
  Accepted = 0,
  UnacceptableProtocolVersion = 1,
  IdentifierRejected = 2,
  ServerUnavailable = 3,
  BadUsernameOrPassword = 4,
  NotAuthorized = 5,
};

inline constexpr std::uint8_t kSubackFailure = 0x80;

struct Will {
  std::string_view topic;
  std::string_view payload;
  QoS qos = QoS::AtMostOnce;
  bool retain = false;
};

struct Connect {
  ProtocolVersion version = ProtocolVersion::V311;
  bool clean_session = true;
  std::uint16_t keep_alive = 0;  // seconds; 0 disables the keep-alive check
  std::string_view client_id;
  std::optional<Will> will;
  std::optional<std::string_view> username;
  std::optional<std::string_view> password;  // binary data, not UTF-8
};

struct Connack {
  bool session_present = false;
  ConnectReturnCode code = ConnectReturnCode::Accepted;
};

struct Publish {
  bool dup = false;
  QoS qos = QoS::AtMostOnce;
  bool retain = false;
  std::string_view topic;
  std::uint16_t packet_id = 0;  // present only when qos > 0
  std::string_view payload;
};

// PUBACK, PUBREC, PUBREL and PUBCOMP carry only a packet identifier.
struct Ack {
  PacketType type = PacketType::Puback;
  std::uint16_t packet_id = 0;
};

struct Subscription {
  std::string_view filter;
  QoS qos = QoS::AtMostOnce;
};

struct Subscribe {
  std::uint16_t packet_id = 0;
  std::vector<Subscription> subscriptions;
};

struct Suback {
  std::uint16_t packet_id = 0;
  std::vector<std::uint8_t> return_codes;  // granted QoS or kSubackFailure
};

struct Unsubscribe {
  std::uint16_t packet_id = 0;
  std::vector<std::string_view> filters;
};

struct Unsuback {
  std::uint16_t packet_id = 0;
};

struct Pingreq {};
struct Pingresp {};
struct Disconnect {};

using Packet = std::variant<Connect, Connack, Publish, Ack, Subscribe, Suback, Unsubscribe, Unsuback, Pingreq,
                            Pingresp, Disconnect>;

PacketType type_of(const Packet& p);
const char* name_of(PacketType t);

}  // namespace moat::codec
