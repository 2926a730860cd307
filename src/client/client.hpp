// moat::client — an asynchronous MQTT 3.1.1 / 3.1 client on Boost.Asio.
//
//   boost::asio::io_context io;
//   moat::client::Options o;
//   o.host = "127.0.0.1";
//   o.client_id = "sensor-1";
//   moat::client::Client c(io, o);
//   c.on_message([](const moat::client::Message& m) { ... });
//   c.on_connect([&](const moat::client::ConnectResult& r) {
//     if (r.ok()) c.subscribe({{"cmd/#", moat::client::QoS::AtLeastOnce}}, nullptr);
//   });
//   c.connect();
//   c.publish("telemetry/1", "21.5", moat::client::QoS::AtLeastOnce, false,
//             [](moat::client::Error e) { /* PUBACK received, or why not */ });
//   io.run();
//
// Everything runs on the io_context given to the constructor; call the Client's
// functions from that context's thread (or before run()). Handlers are called
// there too. The client uses the same codec as the broker.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "client/tls.hpp"
#include "client/transport.hpp"
#include "codec/packet.hpp"

namespace boost::asio {
class io_context;
}

namespace moat::client {

using codec::ConnectReturnCode;
using codec::ProtocolVersion;
using codec::QoS;

struct Will {
  std::string topic;
  std::string payload;
  QoS qos = QoS::AtMostOnce;
  bool retain = false;
};

struct ReconnectPolicy {
  bool enabled = false;  // off: a lost connection is reported and stays lost
  std::chrono::milliseconds initial_delay{500};
  std::chrono::milliseconds max_delay{30'000};
  double multiplier = 2.0;
  double jitter = 0.2;        // each delay is scaled by a random factor in [1-jitter, 1+jitter]
  unsigned max_attempts = 0;  // consecutive failed attempts before giving up; 0 = never
};

// Opens the byte stream to the broker. The default connects TCP (host, port), TLS
// over TCP (with `tls`) or a Unix socket (unix_socket).
using TransportFactory = std::function<std::unique_ptr<Transport>(boost::asio::io_context&)>;

struct Options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 1883;
  std::string unix_socket;  // when set, used instead of host:port
  ProtocolVersion version = ProtocolVersion::V311;
  std::string client_id;  // empty: the broker assigns one (clean session only)
  bool clean_session = true;
  std::uint16_t keep_alive = 60;  // seconds; PINGREQ when idle, 0 = off
  std::optional<std::string> username;
  std::optional<std::string> password;
  std::optional<Will> will;
  std::chrono::milliseconds connect_timeout{10'000};  // TCP connect to CONNACK
  std::uint16_t max_inflight = 20;                    // outbound QoS 1/2 messages awaiting acknowledgement
  ReconnectPolicy reconnect;
  // TLS to host:port (client/tls.hpp). One context may serve many clients; it
  // keeps the session of each server so that a reconnect resumes it.
  std::shared_ptr<TlsContext> tls;
  TransportFactory transport;  // empty: TCP, TLS (with `tls`) or Unix socket
};

struct Message {
  std::string topic;
  std::string payload;
  QoS qos = QoS::AtMostOnce;
  bool retain = false;
  bool dup = false;
};

enum class Error {
  None = 0,
  Unreachable,      // the TCP/Unix connect failed (refused, no route, DNS)
  Refused,          // CONNACK with a non-zero return code (see ConnectResult::code)
  Timeout,          // no CONNACK within connect_timeout, or no PINGRESP in time
  ConnectionLost,   // the connection ended while the operation was pending
  ProtocolError,    // the broker sent something MQTT does not allow
  Cancelled,        // disconnect() or destruction before completion
  InvalidArgument,  // bad topic, filter or QoS: checked before anything is sent
  TlsFailed,        // the TLS handshake failed: certificate or host name did not verify, the
                    // broker refused our certificate or PSK, no common version or cipher
};
const char* to_string(Error e);
const char* to_string(ConnectReturnCode c);

struct ConnectResult {
  Error error = Error::None;
  ConnectReturnCode code = ConnectReturnCode::Accepted;  // when error == Refused
  bool session_present = false;
  std::string detail;     // human-readable reason for a failure
  TlsInfo tls;            // what TLS negotiated (empty version without TLS)
  bool retrying = false;  // a failed attempt: the client tries again (ReconnectPolicy)
  bool ok() const { return error == Error::None; }
};

struct Subscription {
  std::string filter;
  QoS qos = QoS::AtMostOnce;
};

class Client {
 public:
  using MessageHandler = std::function<void(const Message&)>;
  using ConnectHandler = std::function<void(const ConnectResult&)>;
  using DisconnectHandler = std::function<void(Error, const std::string& detail)>;
  using Completion = std::function<void(Error)>;
  using SubscribeCompletion = std::function<void(Error, const std::vector<std::uint8_t>& granted)>;

  Client(boost::asio::io_context& io, Options options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  void on_message(MessageHandler h);
  // Called after every CONNACK (also after each reconnect) and for each failed attempt.
  void on_connect(ConnectHandler h);
  // Called when an established connection ends (before any reconnect attempt).
  void on_disconnect(DisconnectHandler h);

  void connect();
  // QoS 0: completes once written. QoS 1/2: completes on PUBACK / PUBCOMP. While
  // disconnected, messages wait (in memory) and are sent after the next CONNACK;
  // unacknowledged ones are resent with DUP=1 [MQTT-4.4.0-1].
  void publish(std::string topic, std::string payload, QoS qos, bool retain, Completion done);
  // Completes on SUBACK with one code per filter (0x80 = refused). Subscriptions are
  // remembered and made again after a reconnect that found no session.
  void subscribe(std::vector<Subscription> subs, SubscribeCompletion done);
  void unsubscribe(std::vector<std::string> filters, Completion done);
  // Sends DISCONNECT once queued messages are written, then closes; no reconnect.
  void disconnect(Completion done);

  bool connected() const;
  // Outbound QoS 1/2 messages not yet acknowledged plus messages waiting to be sent.
  std::size_t pending() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace moat::client
