// Protocol errors a server detects, each named after the normative statement
// of the MQTT 3.1.1 specification (OASIS, 2014) that the peer violated.
#pragma once

#include <cstdint>

namespace moat::codec {

enum class ProtocolError : std::uint8_t {
  None = 0,
  RemainingLengthTooLong,   // [MQTT-2.2.3] remaining length uses more than 4 bytes
  PacketTooLarge,           // remaining length exceeds the configured maximum packet size
  ReservedPacketType,       // [MQTT-2.2.1] packet type 0 or 15
  InvalidFixedHeaderFlags,  // [MQTT-2.2.2-2] reserved flag bits of the fixed header
  WrongDirection,           // a packet only the other side sends (CONNACK to a server, CONNECT to a client)
  MalformedLength,          // a field runs past the end of the packet
  TrailingBytes,            // bytes left over after the last field of the packet
  InvalidUtf8,              // [MQTT-1.5.3-1] ill-formed UTF-8 or a surrogate code point
  NullCharacter,            // [MQTT-1.5.3-2] U+0000 in a UTF-8 string
  InvalidProtocolName,      // [MQTT-3.1.2-1] protocol name is neither "MQTT" nor "MQIsdp"
  UnsupportedProtocolVersion,  // [MQTT-3.1.2-2] level not served; answered with CONNACK 0x01
  ConnectReservedFlag,         // [MQTT-3.1.2-3] reserved bit of the connect flags is set
  WillFlagsWithoutWill,        // [MQTT-3.1.2-11][MQTT-3.1.2-13][MQTT-3.1.2-15]
  InvalidWillQos,              // [MQTT-3.1.2-14] will QoS 3
  PasswordWithoutUsername,     // [MQTT-3.1.2-22]
  InvalidQos,                  // [MQTT-3.3.1-4] PUBLISH with both QoS bits set
  ZeroPacketId,                // [MQTT-2.3.1-1] QoS>0 PUBLISH, SUBSCRIBE or UNSUBSCRIBE with id 0
  InvalidTopicName,            // [MQTT-3.3.2-1][MQTT-3.3.2-2] empty or wildcard topic name
  NoSubscriptions,             // [MQTT-3.8.3-3] SUBSCRIBE without a topic filter
  InvalidTopicFilter,          // [MQTT-4.7.1-2][MQTT-4.7.1-3][MQTT-4.7.3-1] bad wildcard or empty filter
  InvalidRequestedQos,         // [MQTT-3-8.3-4] requested QoS with reserved bits or 3
  NoUnsubscriptions,           // [MQTT-3.10.3-2] UNSUBSCRIBE without a topic filter
  // State errors found by the broker rather than the decoder.
  FirstPacketNotConnect,  // [MQTT-3.1.0-1]
  SecondConnect,          // [MQTT-3.1.0-2]
  ConnectTimeout,         // no CONNECT within the configured time
  KeepAliveTimeout,       // [MQTT-3.1.2-24] nothing received for 1.5 x keep-alive
  WillTopicInvalid,       // [MQTT-3.1.2-9] will topic is not a valid topic name
  ClientIdRejected,       // [MQTT-3.1.3-8] empty id with clean session 0
};

// "[MQTT-x.y.z-n] description", stable for logs and tests.
const char* describe(ProtocolError e);

}  // namespace moat::codec
