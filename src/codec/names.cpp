#include "codec/errors.hpp"
#include "codec/packet.hpp"

namespace moat::codec {

PacketType type_of(const Packet& p) {
  switch (p.index()) {
    case 0:
      return PacketType::Connect;
    case 1:
      return PacketType::Connack;
    case 2:
      return PacketType::Publish;
    case 3:
      return std::get<Ack>(p).type;
    case 4:
      return PacketType::Subscribe;
    case 5:
      return PacketType::Suback;
    case 6:
      return PacketType::Unsubscribe;
    case 7:
      return PacketType::Unsuback;
    case 8:
      return PacketType::Pingreq;
    case 9:
      return PacketType::Pingresp;
    default:
      return PacketType::Disconnect;
  }
}

const char* name_of(PacketType t) {
  switch (t) {
    case PacketType::Connect:
      return "CONNECT";
    case PacketType::Connack:
      return "CONNACK";
    case PacketType::Publish:
      return "PUBLISH";
    case PacketType::Puback:
      return "PUBACK";
    case PacketType::Pubrec:
      return "PUBREC";
    case PacketType::Pubrel:
      return "PUBREL";
    case PacketType::Pubcomp:
      return "PUBCOMP";
    case PacketType::Subscribe:
      return "SUBSCRIBE";
    case PacketType::Suback:
      return "SUBACK";
    case PacketType::Unsubscribe:
      return "UNSUBSCRIBE";
    case PacketType::Unsuback:
      return "UNSUBACK";
    case PacketType::Pingreq:
      return "PINGREQ";
    case PacketType::Pingresp:
      return "PINGRESP";
    case PacketType::Disconnect:
      return "DISCONNECT";
  }
  return "?";
}

const char* describe(ProtocolError e) {
  switch (e) {
    case ProtocolError::None:
      return "no error";
    case ProtocolError::RemainingLengthTooLong:
      return "[MQTT-2.2.3] remaining length longer than 4 bytes";
    case ProtocolError::PacketTooLarge:
      return "packet larger than max_packet_size";
    case ProtocolError::ReservedPacketType:
      return "[MQTT-2.2.1] reserved packet type";
    case ProtocolError::InvalidFixedHeaderFlags:
      return "[MQTT-2.2.2-2] invalid fixed header flags";
    case ProtocolError::WrongDirection:
      return "[MQTT-2.2.1] packet type not sent in this direction";
    case ProtocolError::MalformedLength:
      return "[MQTT-1.5.3] field runs past the end of the packet";
    case ProtocolError::TrailingBytes:
      return "[MQTT-2.2.3] bytes after the last field of the packet";
    case ProtocolError::InvalidUtf8:
      return "[MQTT-1.5.3-1] ill-formed UTF-8 string";
    case ProtocolError::NullCharacter:
      return "[MQTT-1.5.3-2] U+0000 in a UTF-8 string";
    case ProtocolError::InvalidProtocolName:
      return "[MQTT-3.1.2-1] invalid protocol name";
    case ProtocolError::UnsupportedProtocolVersion:
      return "[MQTT-3.1.2-2] unsupported protocol level";
    case ProtocolError::ConnectReservedFlag:
      return "[MQTT-3.1.2-3] CONNECT reserved flag set";
    case ProtocolError::WillFlagsWithoutWill:
      return "[MQTT-3.1.2-13] will QoS or retain set without will flag";
    case ProtocolError::InvalidWillQos:
      return "[MQTT-3.1.2-14] will QoS 3";
    case ProtocolError::PasswordWithoutUsername:
      return "[MQTT-3.1.2-22] password flag without user name flag";
    case ProtocolError::InvalidQos:
      return "[MQTT-3.3.1-4] PUBLISH with QoS 3";
    case ProtocolError::ZeroPacketId:
      return "[MQTT-2.3.1-1] packet identifier 0";
    case ProtocolError::InvalidTopicName:
      return "[MQTT-3.3.2-2] invalid topic name in PUBLISH";
    case ProtocolError::InvalidTopicFilter:
      return "[MQTT-4.7.1-2] invalid topic filter (wildcard placement or empty)";
    case ProtocolError::NoSubscriptions:
      return "[MQTT-3.8.3-3] SUBSCRIBE without topic filters";
    case ProtocolError::InvalidRequestedQos:
      return "[MQTT-3.8.3-4] invalid requested QoS";
    case ProtocolError::NoUnsubscriptions:
      return "[MQTT-3.10.3-2] UNSUBSCRIBE without topic filters";
    case ProtocolError::FirstPacketNotConnect:
      return "[MQTT-3.1.0-1] first packet is not CONNECT";
    case ProtocolError::SecondConnect:
      return "[MQTT-3.1.0-2] second CONNECT";
    case ProtocolError::ConnectTimeout:
      return "no CONNECT within connect_timeout";
    case ProtocolError::KeepAliveTimeout:
      return "[MQTT-3.1.2-24] keep-alive timeout";
    case ProtocolError::WillTopicInvalid:
      return "[MQTT-3.1.2-9] invalid will topic";
    case ProtocolError::ClientIdRejected:
      return "[MQTT-3.1.3-8] empty client identifier with clean session 0";
  }
  return "unknown protocol error";
}

}  // namespace moat::codec
