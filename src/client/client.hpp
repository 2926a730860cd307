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
//
// With a keyring (Options::payload, docs/client.md "Sealed payloads") the client
// seals what it publishes and opens what it receives, per topic, with the COSE
// envelopes of security/payload.
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

namespace moat::payload {
class Keyring;                   // security/payload/keyring.hpp
enum class Mode : std::uint8_t;  // security/payload/cose.hpp
enum class Errc : std::uint8_t;  // security/payload/errors.hpp
}  // namespace moat::payload

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

// The wait before a reconnect attempt: `wait` counts the waits since the last
// successful CONNACK (0: the first, after a lost connection or a failed first
// attempt). initial_delay × multiplier^wait, at most max_delay, then scaled by
// the factor 1 − jitter + 2 × jitter × `unit`, where `unit` is a random draw
// in [0, 1).
std::chrono::milliseconds reconnect_delay(const ReconnectPolicy& p, unsigned wait, double unit);

// End-to-end payload security with a keyring (security/payload/keyring.hpp, file
// format in docs/payload-security.md). Without a keyring, payloads go out and come
// in as given. The keyring is safe to share between threads, but it holds the
// replay windows: two clients that receive the same messages need a keyring each
// (the second would see each envelope as replayed).
struct PayloadSecurity {
  std::shared_ptr<payload::Keyring> keyring;
  // publish() seals the payload before it is queued (a resend after a reconnect
  // carries the same envelope) in the `seal` mode of the topic's keyring entry; a
  // topic whose entries name no mode goes out as given. When the keyring has no key
  // for the topic fit for the mode, the publish completes with Error::SealFailed
  // and nothing is sent.
  bool seal = true;
  // Seals every publish in this mode instead (a topic with no key fit for it:
  // SealFailed), whatever the entries say.
  std::optional<payload::Mode> seal_mode;
  // A message on a topic the keyring has keys for is opened: verified or
  // decrypted, its freshness and replay window checked. It reaches on_message with
  // the plaintext and Message::sealed; one that does not open goes to on_rejected
  // (or is dropped). Either way it is acknowledged per its QoS.
  bool open = true;
  bool require_fresh = false;  // refuse envelopes without timestamp and sequence number
  // On a keyed topic, a payload that is not a COSE envelope at all (payload::decode
  // says malformed) is rejected; false: delivered as is, with Message::sealed empty.
  bool require_sealed = true;
  // A message on a topic the keyring has no keys for is rejected ("unknown key")
  // instead of delivered as is.
  bool reject_unkeyed = false;
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
  PayloadSecurity payload;     // no keyring: payloads as given
};

// What opening a received envelope verified.
struct Sealed {
  payload::Mode mode{};
  std::int64_t alg = 0;              // COSE algorithm (the content algorithm when encrypted)
  std::string kid;                   // the key that opened it
  std::optional<std::uint64_t> seq;  // the sender's sequence number
  std::optional<std::int64_t> iat;   // sealed at, seconds since the epoch
};

struct Message {
  std::string topic;
  std::string payload;  // received through a keyring: the plaintext
  QoS qos = QoS::AtMostOnce;
  bool retain = false;
  bool dup = false;
  std::optional<Sealed> sealed;  // set when the payload came out of a verified envelope
  // When the bytes of this message were read from the connection: one clock
  // read per read, shared by the messages that arrived in it.
  std::chrono::steady_clock::time_point received{};
};

// A received message that did not open (PayloadSecurity): not delivered.
struct Rejected {
  std::string topic;
  std::string payload;  // as received
  QoS qos = QoS::AtMostOnce;
  bool retain = false;
  moat::payload::Errc code{};  // tampered or wrong topic, replayed, stale, unknown key, ...
  std::string reason;          // one line: "verification failed (tampered or wrong topic): ..."
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
  SealFailed,       // the keyring has no key for the topic that seals in its mode: nothing sent
};
const char* to_string(Error e);
const char* to_string(ConnectReturnCode c);

struct ConnectResult {
  Error error = Error::None;
  ConnectReturnCode code = ConnectReturnCode::Accepted;  // when error == Refused
  // The CONNACK flag; for MQTT 3.1, which has none: not clean_session.
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
  using RejectHandler = std::function<void(const Rejected&)>;
  using ConnectHandler = std::function<void(const ConnectResult&)>;
  using DisconnectHandler = std::function<void(Error, const std::string& detail)>;
  enum class Ping : std::uint8_t { Sent, Answered };  // PINGREQ written / PINGRESP received
  using PingHandler = std::function<void(Ping)>;
  using Completion = std::function<void(Error)>;
  using SubscribeCompletion = std::function<void(Error, const std::vector<std::uint8_t>& granted)>;

  Client(boost::asio::io_context& io, Options options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  void on_message(MessageHandler h);
  // Messages that did not open (Options::payload); without this handler they are
  // dropped. They are acknowledged all the same, so the broker does not resend them.
  void on_rejected(RejectHandler h);
  // Called after every CONNACK (also after each reconnect) and for each failed attempt.
  void on_connect(ConnectHandler h);
  // Called when an established connection ends (before any reconnect attempt).
  void on_disconnect(DisconnectHandler h);
  // Keep-alive traffic, for debug output: each PINGREQ sent and PINGRESP received.
  void on_ping(PingHandler h);

  void connect();
  // QoS 0: completes once written. QoS 1/2: completes on PUBACK / PUBCOMP. While
  // disconnected, messages wait (in memory) and are sent after the next CONNACK;
  // unacknowledged ones are resent with DUP=1 [MQTT-4.4.0-1]. With a keyring the
  // payload is sealed here, before it is queued (Options::payload).
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
