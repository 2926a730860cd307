#include "client/client.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <cmath>
#include <deque>
#include <map>
#include <random>
#include <set>

#include "client/tls_transport.hpp"
#include "codec/decoder.hpp"
#include "codec/encoder.hpp"
#include "codec/topic.hpp"
#include "security/payload/keyring.hpp"

namespace moat::client {

namespace asio = boost::asio;
using SteadyClock = std::chrono::steady_clock;

const char* to_string(Error e) {
  switch (e) {
    case Error::None:
      return "no error";
    case Error::Unreachable:
      return "broker unreachable";
    case Error::Refused:
      return "connection refused";
    case Error::Timeout:
      return "timed out";
    case Error::ConnectionLost:
      return "connection lost";
    case Error::ProtocolError:
      return "protocol error";
    case Error::Cancelled:
      return "cancelled";
    case Error::InvalidArgument:
      return "invalid argument";
    case Error::TlsFailed:
      return "TLS handshake failed";
    case Error::SealFailed:
      return "cannot seal the payload: no key for the topic fit for the mode";
  }
  return "unknown error";
}

const char* to_string(ConnectReturnCode c) {
  switch (c) {
    case ConnectReturnCode::Accepted:
      return "accepted";
    case ConnectReturnCode::UnacceptableProtocolVersion:
      return "unacceptable protocol version";
    case ConnectReturnCode::IdentifierRejected:
      return "identifier rejected";
    case ConnectReturnCode::ServerUnavailable:
      return "server unavailable";
    case ConnectReturnCode::BadUsernameOrPassword:
      return "bad user name or password";
    case ConnectReturnCode::NotAuthorized:
      return "not authorized";
  }
  return "unknown return code";
}

namespace {

// Shared by the TCP and Unix-socket transports: everything but how to connect.
template <typename Socket>
class SocketTransport : public Transport {
 public:
  explicit SocketTransport(asio::io_context& io) : socket_(io) {}
  void async_read_some(std::span<std::uint8_t> into, IoHandler done) override {
    socket_.async_read_some(
        asio::buffer(into.data(), into.size()),
        [done = std::move(done)](const boost::system::error_code& ec, std::size_t n) { done(ec, n); });
  }
  void async_write(std::span<const std::uint8_t> bytes, IoHandler done) override {
    asio::async_write(
        socket_, asio::buffer(bytes.data(), bytes.size()),
        [done = std::move(done)](const boost::system::error_code& ec, std::size_t n) { done(ec, n); });
  }
  void close() override {
    boost::system::error_code ec;
    socket_.close(ec);
  }

 protected:
  Socket socket_;
};

class TcpTransport final : public SocketTransport<asio::ip::tcp::socket> {
 public:
  TcpTransport(asio::io_context& io, std::string host, std::uint16_t port)
      : SocketTransport(io), resolver_(io), host_(std::move(host)), port_(port) {}

  void async_connect(ConnectHandler done) override {
    resolver_.async_resolve(
        host_, std::to_string(port_),
        [this, done = std::move(done)](const boost::system::error_code& ec,
                                       const asio::ip::tcp::resolver::results_type& results) {
          if (ec) return done(ec, "cannot resolve " + host_ + ": " + ec.message());
          asio::async_connect(
              socket_, results,
              [this, done](const boost::system::error_code& cec, const asio::ip::tcp::endpoint&) {
                if (cec)
                  return done(
                      cec, "cannot connect to " + host_ + ":" + std::to_string(port_) + ": " + cec.message());
                boost::system::error_code oec;
                // Nagle plus delayed ACK would stall small packets by 40 ms.
                socket_.set_option(asio::ip::tcp::no_delay(true), oec);
                done({}, {});
              });
        });
  }
  void close() override {
    resolver_.cancel();
    SocketTransport::close();
  }

 private:
  asio::ip::tcp::resolver resolver_;
  std::string host_;
  std::uint16_t port_;
};

class UnixTransport final : public SocketTransport<asio::local::stream_protocol::socket> {
 public:
  UnixTransport(asio::io_context& io, std::string path) : SocketTransport(io), path_(std::move(path)) {}
  void async_connect(ConnectHandler done) override {
    socket_.async_connect(asio::local::stream_protocol::endpoint(path_),
                          [this, done = std::move(done)](const boost::system::error_code& ec) {
                            if (ec) return done(ec, "cannot connect to " + path_ + ": " + ec.message());
                            done({}, {});
                          });
  }

 private:
  std::string path_;
};

enum class OutState : std::uint8_t { AwaitPuback, AwaitPubrec, AwaitPubcomp };

ConnectResult failure(Error e, std::string detail) {
  ConnectResult r;
  r.error = e;
  r.detail = std::move(detail);
  return r;
}

// TLS failures that another attempt cannot change: a certificate or host name
// that does not verify, an alert from the broker, no common cipher. A connection
// closed during the handshake may be a broker restarting: retried.
bool permanent_tls_failure(const std::error_code& ec) {
  return ec.category() == tls_category() && ec != TlsErrc::ClosedInHandshake;
}

}  // namespace

struct Client::Impl : std::enable_shared_from_this<Impl> {
  enum class State : std::uint8_t { Idle, Connecting, Connected, Disconnecting, Waiting, Closed };

  struct Outbound {
    std::uint16_t packet_id;
    OutState state;
    Message message;
    Completion done;
    std::uint64_t id_step = 0;  // id_steps when its packet id was given (allocate_packet_id)
  };
  struct Queued {
    Message message;
    Completion done;
  };
  struct PendingSubscribe {
    std::vector<Subscription> subs;
    SubscribeCompletion done;
  };
  struct PendingUnsubscribe {
    std::vector<std::string> filters;
    Completion done;
  };

  Impl(asio::io_context& ctx, Options o)
      : io(ctx),
        opt(std::move(o)),
        connect_timer(ctx),
        keepalive_timer(ctx),
        reconnect_timer(ctx),
        rng(std::random_device{}()) {
    in.resize(kReadStart);
  }

  asio::io_context& io;
  Options opt;
  // Shared with the handlers of its pending operations, which may outlive a reconnect.
  std::shared_ptr<Transport> transport;
  State state = State::Idle;
  bool user_disconnect = false;
  std::uint64_t generation = 0;  // handlers of an older connection are ignored
  // Input as read: kReadStart bytes at first, doubled (up to kReadMax) after
  // each read that filled the room it had, so a busy subscriber takes its
  // messages in fewer, larger reads, and back to kReadStart once reads are
  // small again. With 1 KiB messages, 16 KiB reads held `moat bench` to about
  // half the rate it receives with 256 KiB ones (docs/benchmarks.md). Also
  // grown whenever a packet needs the room.
  static constexpr std::size_t kReadStart = std::size_t{16} * 1024;
  static constexpr std::size_t kReadMax = std::size_t{256} * 1024;
  std::vector<std::uint8_t> in;
  std::size_t in_len = 0;
  codec::Bytes out_pending;
  codec::Bytes out_writing;
  std::vector<Completion> written_pending;  // QoS 0 completions, by write batch
  std::vector<Completion> written_writing;
  bool write_active = false;
  bool flush_posted = false;
  std::deque<Outbound> inflight;
  std::deque<Queued> queued;
  std::map<std::uint16_t, PendingSubscribe> subscribing;
  std::map<std::uint16_t, PendingUnsubscribe> unsubscribing;
  std::map<std::string, QoS> subscriptions;  // granted, for re-subscribing
  std::set<std::uint16_t> awaiting_pubrel;   // inbound QoS 2
  std::uint16_t next_packet_id = 1;
  std::uint64_t id_steps = 0;  // how often next_packet_id has moved on
  asio::steady_timer connect_timer;
  asio::steady_timer keepalive_timer;
  asio::steady_timer reconnect_timer;
  SteadyClock::time_point last_sent{};
  SteadyClock::time_point read_at{};  // of the bytes being processed (Message::received)
  // Handed to on_message and reused: its strings keep their capacity, so a
  // delivery allocates nothing once they are large enough.
  Message delivering;
  bool in_delivery = false;
  SteadyClock::time_point ping_sent{};
  bool ping_outstanding = false;
  unsigned failed_attempts = 0;
  unsigned reconnect_waits = 0;  // since the last CONNACK that accepted us (reconnect_delay)
  std::mt19937_64 rng;
  MessageHandler message_handler;
  RejectHandler reject_handler;
  ConnectHandler connect_handler;
  DisconnectHandler disconnect_handler;
  PingHandler ping_handler;
  Completion disconnect_done;

  // --- connection lifecycle -------------------------------------------------

  void start_attempt() {
    ++generation;
    state = State::Connecting;
    in_len = 0;
    out_pending.clear();
    written_pending.clear();
    ping_outstanding = false;
    if (opt.transport)
      transport = opt.transport(io);
    else if (!opt.unix_socket.empty())
      transport = std::make_unique<UnixTransport>(io, opt.unix_socket);
    else if (opt.tls)
      transport = detail::make_tls_transport(io, opt.host, opt.port, opt.tls);
    else
      transport = std::make_unique<TcpTransport>(io, opt.host, opt.port);
    if (opt.tls && !opt.transport && !opt.unix_socket.empty()) {
      // Not silently in plaintext: TLS was asked for.
      const auto gen = generation;
      asio::post(io, [self = shared_from_this(), gen] {
        if (gen != self->generation) return;
        self->attempt_failed(failure(Error::TlsFailed, "TLS over a Unix socket is not supported"), true);
      });
      return;
    }
    const auto gen = generation;
    connect_timer.expires_after(opt.connect_timeout);
    connect_timer.async_wait([self = shared_from_this(), gen](const boost::system::error_code& ec) {
      if (ec || gen != self->generation || self->state != State::Connecting) return;
      self->attempt_failed(failure(Error::Timeout, "no CONNACK within the connect timeout"));
    });
    transport->async_connect([self = shared_from_this(), gen, keep = transport](const std::error_code& ec,
                                                                                const std::string& detail) {
      if (gen != self->generation) return;
      if (ec) {
        if (ec.category() == tls_category())
          self->attempt_failed(failure(Error::TlsFailed, detail), permanent_tls_failure(ec));
        else
          self->attempt_failed(failure(Error::Unreachable, detail));
        return;
      }
      self->send_connect();
      self->read();
    });
  }

  void send_connect() {
    codec::Connect c;
    c.version = opt.version;
    c.clean_session = opt.clean_session;
    c.keep_alive = opt.keep_alive;
    c.client_id = opt.client_id;
    if (opt.will) c.will = codec::Will{opt.will->topic, opt.will->payload, opt.will->qos, opt.will->retain};
    if (opt.username) c.username = *opt.username;
    if (opt.password) c.password = *opt.password;
    codec::encode(c, out_pending);
    flush();
  }

  void attempt_failed(ConnectResult r, bool permanent = false) {
    teardown();
    // Refusals other than "server unavailable" will not change by retrying.
    permanent = permanent || (r.error == Error::Refused && r.code != ConnectReturnCode::ServerUnavailable);
    ++failed_attempts;
    r.retrying = !permanent && may_reconnect();
    const auto gen = generation;
    if (connect_handler) connect_handler(r);
    if (gen != generation || user_disconnect) return;  // the handler closed or restarted the client
    if (r.retrying) return schedule_reconnect();
    give_up(r.error);
  }

  void lost(Error e, const std::string& detail) {
    if (state != State::Connected && state != State::Disconnecting) {
      if (state == State::Connecting) attempt_failed(failure(e, detail));
      return;
    }
    const bool was_disconnecting = state == State::Disconnecting;
    teardown();
    if (was_disconnecting) return finish_disconnect();
    if (disconnect_handler) disconnect_handler(e, detail);
    if (may_reconnect()) return schedule_reconnect();
    give_up(e);
  }

  bool may_reconnect() const {
    return opt.reconnect.enabled && !user_disconnect &&
           (opt.reconnect.max_attempts == 0 || failed_attempts < opt.reconnect.max_attempts);
  }

  // Closes the stream; session state (in-flight, queued, subscriptions) is kept.
  void teardown() {
    ++generation;
    state = State::Closed;
    if (transport) transport->close();
    connect_timer.cancel();
    keepalive_timer.cancel();
    write_active = false;
    flush_posted = false;
    // QoS 0 messages already encoded for the lost connection were not delivered.
    auto lost_writes = std::move(written_writing);
    auto lost_pending = std::move(written_pending);
    written_writing.clear();
    written_pending.clear();
    for (auto& d : lost_writes)
      if (d) d(Error::ConnectionLost);
    for (auto& d : lost_pending)
      if (d) d(Error::ConnectionLost);
    out_pending.clear();
    out_writing.clear();
  }

  void schedule_reconnect() {
    state = State::Waiting;
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    reconnect_timer.expires_after(reconnect_delay(opt.reconnect, reconnect_waits++, unit(rng)));
    reconnect_timer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->state != State::Waiting || self->user_disconnect) return;
      self->start_attempt();
    });
  }

  // No more attempts: every pending operation fails with `e`.
  void give_up(Error e) {
    state = State::Closed;
    fail_all(e);
  }

  void fail_all(Error e) {
    auto inf = std::move(inflight);
    auto q = std::move(queued);
    auto subs = std::move(subscribing);
    auto unsubs = std::move(unsubscribing);
    inflight.clear();
    queued.clear();
    subscribing.clear();
    unsubscribing.clear();
    for (auto& o : inf)
      if (o.done) o.done(e);
    for (auto& o : q)
      if (o.done) o.done(e);
    for (auto& [id, s] : subs)
      if (s.done) s.done(e, {});
    for (auto& [id, u] : unsubs)
      if (u.done) u.done(e);
  }

  void finish_disconnect() {
    teardown();
    fail_all(Error::Cancelled);
    if (auto done = std::move(disconnect_done)) done(Error::None);
  }

  // --- output -----------------------------------------------------------------

  void append(const codec::Packet& p) {
    codec::encode(p, out_pending);
    schedule_flush();
  }

  void schedule_flush() {
    if (flush_posted || write_active) return;
    flush_posted = true;
    const auto gen = generation;
    // Everything appended during this turn goes out in one write.
    asio::post(io, [self = shared_from_this(), gen] {
      if (gen != self->generation) return;
      self->flush_posted = false;
      self->flush();
    });
  }

  void flush() {
    if (write_active || out_pending.empty() || !transport) return;
    out_writing.swap(out_pending);
    written_writing.swap(written_pending);
    write_active = true;
    last_sent = SteadyClock::now();  // once per write, not per packet: the keep-alive needs no finer
    const auto gen = generation;
    transport->async_write(out_writing, [self = shared_from_this(), gen, keep = transport](
                                            const std::error_code& ec, std::size_t) {
      if (gen != self->generation) return;
      self->write_active = false;
      self->out_writing.clear();
      auto done = std::move(self->written_writing);
      self->written_writing.clear();
      if (ec) {
        // Before CONNACK the read side tells why better: a TLS 1.3 broker that
        // refuses our client certificate sends an alert and resets the
        // connection, which the CONNECT write may see first. A read is
        // pending in that state (and the connect timer bounds the wait).
        if (self->state == State::Connecting) {
          self->written_writing = std::move(done);  // failed by the teardown to come
          return;
        }
        return self->lost(Error::ConnectionLost, "write failed: " + self->transport->describe(ec));
      }
      for (auto& d : done)
        if (d) d(Error::None);
      if (gen != self->generation) return;  // a completion may have disconnected
      if (!self->out_pending.empty()) return self->flush();
      if (self->state == State::Disconnecting) self->finish_disconnect();
    });
  }

  // --- input ------------------------------------------------------------------

  void read() {
    if (in.size() - in_len < 4096) in.resize(in.size() * 2);
    const auto gen = generation;
    const std::size_t room = in.size() - in_len;
    transport->async_read_some(
        {in.data() + in_len, room},
        [self = shared_from_this(), gen, room, keep = transport](const std::error_code& ec, std::size_t n) {
          if (gen != self->generation) return;
          if (ec) return self->read_failed(ec);
          self->read_at = SteadyClock::now();
          self->in_len += n;
          if (n == room && self->in.size() < kReadMax) self->in.resize(self->in.size() * 2);
          if (!self->process_input()) return;
          if (gen != self->generation) return;
          if (self->in_len == 0 && self->in.size() > kReadStart && n < self->in.size() / 16) {
            self->in.resize(kReadStart);
            self->in.shrink_to_fit();
          }
          self->read();
        });
  }

  void read_failed(const std::error_code& ec) {
    const std::string why = transport->describe(ec);
    // A TLS 1.3 client finishes its handshake before the server has checked the
    // client certificate: the broker's verdict arrives as an alert on the first read.
    if (state == State::Connecting && ec.category() == tls_category())
      return attempt_failed(failure(Error::TlsFailed, "TLS handshake with " + opt.host + ":" +
                                                          std::to_string(opt.port) + " failed: " + why),
                            permanent_tls_failure(ec));
    lost(Error::ConnectionLost, "connection closed: " + why);
  }

  bool process_input() {
    codec::DecoderOptions dec;
    dec.server = false;
    dec.version = opt.version;
    std::size_t used = 0;
    const auto gen = generation;
    // After disconnect() nothing more is handled: no message reaches the
    // application and nothing is acknowledged behind the DISCONNECT (a persistent
    // session gets those messages again).
    while (used < in_len && state != State::Disconnecting) {
      auto r = codec::decode({in.data() + used, in_len - used}, dec);
      if (r.status == codec::DecodeStatus::NeedMore) break;
      if (r.status == codec::DecodeStatus::Error) {
        lost(Error::ProtocolError, codec::describe(r.error));
        return false;
      }
      used += r.consumed;
      ping_outstanding = false;  // anything from the broker shows it is alive
      if (!handle(r.packet) || gen != generation) return false;
    }
    std::memmove(in.data(), in.data() + used, in_len - used);
    in_len -= used;
    return true;
  }

  bool protocol_violation(const std::string& what) {
    lost(Error::ProtocolError, what);
    return false;
  }

  bool handle(const codec::Packet& p) {
    if (state == State::Connecting) {
      const auto* ack = std::get_if<codec::Connack>(&p);
      if (!ack) return protocol_violation("the first packet from the broker is not CONNACK");
      on_connack(*ack);
      return state == State::Connected;
    }
    if (std::holds_alternative<codec::Connack>(p)) return protocol_violation("a second CONNACK");
    if (const auto* pub = std::get_if<codec::Publish>(&p)) return on_publish(*pub);
    if (const auto* ack = std::get_if<codec::Ack>(&p)) {
      on_ack(*ack);
      return true;
    }
    if (const auto* sa = std::get_if<codec::Suback>(&p)) {
      auto it = subscribing.find(sa->packet_id);
      if (it == subscribing.end()) return true;
      auto pending = std::move(it->second);
      subscribing.erase(it);
      for (std::size_t i = 0; i < pending.subs.size(); ++i) {
        const bool refused = i >= sa->return_codes.size() || sa->return_codes[i] > 2;
        if (refused)
          subscriptions.erase(pending.subs[i].filter);
        else
          subscriptions[pending.subs[i].filter] = static_cast<QoS>(sa->return_codes[i]);
      }
      if (pending.done) pending.done(Error::None, sa->return_codes);
      return true;
    }
    if (const auto* ua = std::get_if<codec::Unsuback>(&p)) {
      auto it = unsubscribing.find(ua->packet_id);
      if (it == unsubscribing.end()) return true;
      auto pending = std::move(it->second);
      unsubscribing.erase(it);
      if (pending.done) pending.done(Error::None);
      return true;
    }
    // PINGRESP: liveness already noted.
    if (ping_handler && std::holds_alternative<codec::Pingresp>(p)) ping_handler(Ping::Answered);
    return true;
  }

  void on_connack(const codec::Connack& ack) {
    connect_timer.cancel();
    if (ack.code != ConnectReturnCode::Accepted) {
      ConnectResult r = failure(Error::Refused, std::string("connection refused: ") + to_string(ack.code));
      r.code = ack.code;
      r.tls = transport->tls_info();
      return attempt_failed(std::move(r));
    }
    state = State::Connected;
    failed_attempts = 0;
    reconnect_waits = 0;
    // MQTT 3.1 has no session-present flag (that CONNACK byte is reserved): a
    // persistent session is taken to be resumed, as it is by a broker that
    // keeps sessions.
    const bool session_present =
        ack.session_present || (opt.version == ProtocolVersion::V31 && !opt.clean_session);
    // A new session (session present 0: a clean session, or a broker that lost
    // ours) has no QoS 2 message in flight toward us: its packet ids start
    // afresh, and a PUBLISH that reuses one of ours is a new message (the
    // de-duplication of [MQTT-4.3.3-2] holds within one session).
    if (!session_present) awaiting_pubrel.clear();
    // [MQTT-4.4.0-1] unacknowledged PUBLISH (DUP=1) and PUBREL first, in order.
    // Also to a new session, which takes them as new messages (and answers a
    // PUBREL it does not know with PUBCOMP, as moatd does): nothing the
    // application published is dropped because the broker lost its state.
    for (const auto& o : inflight) {
      if (o.state == OutState::AwaitPubcomp)
        append(codec::Ack{codec::PacketType::Pubrel, o.packet_id});
      else
        append(publish_packet(o.message, o.packet_id, true));
    }
    // SUBSCRIBE/UNSUBSCRIBE that were never acknowledged go again too.
    for (const auto& [id, s] : subscribing) append(subscribe_packet(id, s.subs));
    for (const auto& [id, u] : unsubscribing) append(unsubscribe_packet(id, u.filters));
    // A new session has none of our subscriptions: make them again, before the
    // application's on_connect can add more.
    if (!session_present && !subscriptions.empty()) {
      std::vector<Subscription> again;
      for (const auto& [f, q] : subscriptions) again.push_back({f, q});
      send_subscribe(std::move(again), nullptr);
    }
    const auto gen = generation;
    if (connect_handler) {
      ConnectResult r;
      r.code = ack.code;
      r.session_present = session_present;
      r.tls = transport->tls_info();
      connect_handler(r);
    }
    if (gen != generation) return;
    pump();
    arm_keepalive();
  }

  bool on_publish(const codec::Publish& p) {
    if (p.qos == QoS::ExactlyOnce) {
      // Deliver on the first PUBLISH; until PUBREL, a resend with this id is the same message.
      const bool first = awaiting_pubrel.insert(p.packet_id).second;
      append(codec::Ack{codec::PacketType::Pubrec, p.packet_id});
      if (first) deliver(p);
      return true;
    }
    if (p.qos == QoS::AtLeastOnce) append(codec::Ack{codec::PacketType::Puback, p.packet_id});
    deliver(p);
    return true;
  }

  // To on_message, or (a message that does not open) to on_rejected. Acknowledged
  // before either way: a rejected message is not redelivered.
  void deliver(const codec::Publish& p) {
    const PayloadSecurity& ps = opt.payload;
    if (!ps.keyring || !ps.open || (!ps.reject_unkeyed && !ps.keyring->has_keys_for(p.topic))) {
      if (!message_handler) return;
      if (in_delivery) {  // a handler that made the client deliver again: a message of its own
        message_handler(Message{std::string(p.topic), std::string(p.payload), p.qos, p.retain, p.dup,
                                std::nullopt, read_at});
        return;
      }
      Message& m = delivering;
      m.topic.assign(p.topic);
      m.payload.assign(p.payload);
      m.qos = p.qos;
      m.retain = p.retain;
      m.dup = p.dup;
      m.sealed.reset();
      m.received = read_at;
      in_delivery = true;
      message_handler(m);
      in_delivery = false;
      return;
    }
    Message m{std::string(p.topic), {}, p.qos, p.retain, p.dup, std::nullopt, read_at};
    auto reject = [&](const payload::Error& e) {
      if (!reject_handler) return;
      reject_handler(
          Rejected{std::move(m.topic), std::string(p.payload), p.qos, p.retain, e.code, e.message()});
    };
    auto env = payload::decode(p.payload);
    if (!env) {
      if (ps.require_sealed || env.code() != payload::Errc::malformed) return reject(env.error());
      m.payload = std::string(p.payload);
      if (message_handler) message_handler(m);
      return;
    }
    payload::OpenPolicy policy;
    policy.require_fresh = ps.require_fresh;
    auto opened = ps.keyring->open(p.topic, *env, policy);
    if (!opened) return reject(opened.error());
    m.payload = std::move(opened->plaintext);
    m.sealed = Sealed{opened->mode, opened->alg, std::move(opened->kid), opened->seq, opened->iat};
    if (message_handler) message_handler(m);
  }

  void on_ack(const codec::Ack& a) {
    if (a.type == codec::PacketType::Pubrel) {
      awaiting_pubrel.erase(a.packet_id);
      append(codec::Ack{codec::PacketType::Pubcomp, a.packet_id});
      return;
    }
    const auto want = a.type == codec::PacketType::Puback   ? OutState::AwaitPuback
                      : a.type == codec::PacketType::Pubrec ? OutState::AwaitPubrec
                                                            : OutState::AwaitPubcomp;
    auto it = std::find_if(inflight.begin(), inflight.end(),
                           [&](const Outbound& o) { return o.packet_id == a.packet_id; });
    if (it == inflight.end() || it->state != want) return;
    if (want == OutState::AwaitPubrec) {
      it->state = OutState::AwaitPubcomp;
      it->message.payload.clear();  // never sent again once PUBREL is out [MQTT-4.3.3-1]
      append(codec::Ack{codec::PacketType::Pubrel, a.packet_id});
      return;
    }
    auto done = std::move(it->done);
    inflight.erase(it);
    if (done) done(Error::None);
    pump();
  }

  // --- keep-alive -------------------------------------------------------------

  void arm_keepalive() {
    if (opt.keep_alive == 0) return;
    const auto ka = std::chrono::seconds(opt.keep_alive);
    const auto step = std::max<std::chrono::milliseconds>(std::chrono::milliseconds(100), ka / 4);
    keepalive_timer.expires_after(step);
    const auto gen = generation;
    keepalive_timer.async_wait([self = shared_from_this(), gen, ka](const boost::system::error_code& ec) {
      if (ec || gen != self->generation || self->state != State::Connected) return;
      const auto now = SteadyClock::now();
      if (self->ping_outstanding && now - self->ping_sent >= ka)
        return self->lost(Error::Timeout, "no PINGRESP within the keep-alive interval");
      if (!self->ping_outstanding && now - self->last_sent >= ka) {
        self->ping_outstanding = true;
        self->ping_sent = now;
        self->append(codec::Pingreq{});
        if (self->ping_handler) self->ping_handler(Ping::Sent);
      }
      self->arm_keepalive();
    });
  }

  // --- operations ---------------------------------------------------------------

  std::uint16_t allocate_packet_id() {
    // Ids go round 1..65535, and `inflight` is in the order its ids were given.
    // While the oldest in-flight id was given fewer than 65,535 steps ago, the
    // next id is none of theirs: no search through the window.
    auto used = [&](std::uint16_t id) {
      if (!subscribing.empty() && subscribing.count(id)) return true;
      if (!unsubscribing.empty() && unsubscribing.count(id)) return true;
      if (inflight.empty() || id_steps - inflight.front().id_step < 65535) return false;
      return std::any_of(inflight.begin(), inflight.end(), [&](const Outbound& o) { return o.packet_id == id; });
    };
    std::uint16_t id = 0;
    do {
      id = next_packet_id++;
      ++id_steps;
      if (next_packet_id == 0) next_packet_id = 1;
    } while (used(id));
    return id;
  }

  static codec::Publish publish_packet(const Message& m, std::uint16_t id, bool dup) {
    codec::Publish p;
    p.topic = m.topic;
    p.payload = m.payload;
    p.qos = m.qos;
    p.retain = m.retain;
    p.dup = dup && m.qos != QoS::AtMostOnce;
    p.packet_id = id;
    return p;
  }
  static codec::Subscribe subscribe_packet(std::uint16_t id, const std::vector<Subscription>& subs) {
    codec::Subscribe s;
    s.packet_id = id;
    for (const auto& x : subs) s.subscriptions.push_back({x.filter, x.qos});
    return s;
  }
  static codec::Unsubscribe unsubscribe_packet(std::uint16_t id, const std::vector<std::string>& filters) {
    codec::Unsubscribe u;
    u.packet_id = id;
    for (const auto& f : filters) u.filters.push_back(f);
    return u;
  }

  // A message may go now: connected, and QoS 0 or room in the in-flight window.
  bool may_send(QoS qos) const {
    return state == State::Connected && (qos == QoS::AtMostOnce || inflight.size() < opt.max_inflight);
  }

  void send(Message&& message, Completion&& done) {
    if (message.qos == QoS::AtMostOnce) {
      append(publish_packet(message, 0, false));
      written_pending.push_back(std::move(done));
      return;
    }
    const auto id = allocate_packet_id();
    append(publish_packet(message, id, false));
    const auto awaiting = message.qos == QoS::AtLeastOnce ? OutState::AwaitPuback : OutState::AwaitPubrec;
    inflight.push_back(Outbound{id, awaiting, std::move(message), std::move(done), id_steps - 1});
  }

  // Sends queued messages while the in-flight window has room, in order.
  void pump() {
    while (!queued.empty() && may_send(queued.front().message.qos)) {
      Queued item = std::move(queued.front());
      queued.pop_front();
      send(std::move(item.message), std::move(item.done));
    }
  }

  void send_subscribe(std::vector<Subscription> subs, SubscribeCompletion done) {
    const auto id = allocate_packet_id();
    if (state == State::Connected) append(subscribe_packet(id, subs));
    subscribing.emplace(id, PendingSubscribe{std::move(subs), std::move(done)});
  }

  void complete_later(Completion done, Error e) {
    if (done) asio::post(io, [done = std::move(done), e] { done(e); });
  }
};

std::chrono::milliseconds reconnect_delay(const ReconnectPolicy& p, unsigned wait, double unit) {
  // Past 2^30 any multiplier above 1 has long reached max_delay.
  double delay = static_cast<double>(p.initial_delay.count()) * std::pow(p.multiplier, std::min(wait, 30u));
  delay = std::min(delay, static_cast<double>(p.max_delay.count()));
  delay *= 1.0 - p.jitter + 2.0 * p.jitter * std::clamp(unit, 0.0, 1.0);
  return std::chrono::milliseconds(static_cast<std::int64_t>(delay));
}

Client::Client(asio::io_context& io, Options options)
    : impl_(std::make_shared<Impl>(io, std::move(options))) {}

Client::~Client() {
  auto& m = *impl_;
  m.user_disconnect = true;
  m.message_handler = nullptr;
  m.reject_handler = nullptr;
  m.connect_handler = nullptr;
  m.disconnect_handler = nullptr;
  m.reconnect_timer.cancel();
  m.teardown();
}

void Client::on_message(MessageHandler h) {
  impl_->message_handler = std::move(h);
}
void Client::on_rejected(RejectHandler h) {
  impl_->reject_handler = std::move(h);
}
void Client::on_connect(ConnectHandler h) {
  impl_->connect_handler = std::move(h);
}
void Client::on_disconnect(DisconnectHandler h) {
  impl_->disconnect_handler = std::move(h);
}

void Client::on_ping(PingHandler h) {
  impl_->ping_handler = std::move(h);
}

void Client::connect() {
  auto& m = *impl_;
  if (m.state != Impl::State::Idle && m.state != Impl::State::Closed) return;
  m.user_disconnect = false;
  m.failed_attempts = 0;
  m.reconnect_waits = 0;
  m.start_attempt();
}

void Client::publish(std::string topic, std::string payload, QoS qos, bool retain, Completion done) {
  auto& m = *impl_;
  if (!codec::valid_topic_name(topic) || codec::check_utf8(topic) != codec::ProtocolError::None ||
      topic.size() > 65535 || static_cast<int>(qos) > 2)
    return m.complete_later(std::move(done), Error::InvalidArgument);
  if (m.state == Impl::State::Closed && !m.opt.reconnect.enabled && m.user_disconnect)
    return m.complete_later(std::move(done), Error::Cancelled);
  // Sealed once, here: a resend after a reconnect carries the same envelope (a
  // fresh seal would be a new sequence number, and a duplicate to the receiver).
  if (const PayloadSecurity& ps = m.opt.payload; ps.keyring && ps.seal) {
    const auto mode = ps.seal_mode ? ps.seal_mode : ps.keyring->seal_mode_for(topic);
    if (mode) {
      auto env = ps.keyring->seal(topic, payload, *mode);
      if (!env) return m.complete_later(std::move(done), Error::SealFailed);
      payload = std::move(*env);
    }
  }
  Message message{std::move(topic), std::move(payload), qos, retain, false, std::nullopt};
  if (m.queued.empty() && m.may_send(qos)) return m.send(std::move(message), std::move(done));
  m.queued.push_back(Impl::Queued{std::move(message), std::move(done)});
  m.pump();
}

void Client::subscribe(std::vector<Subscription> subs, SubscribeCompletion done) {
  auto& m = *impl_;
  const bool ok = !subs.empty() && std::all_of(subs.begin(), subs.end(), [](const Subscription& s) {
    return codec::valid_topic_filter(s.filter) && codec::check_utf8(s.filter) == codec::ProtocolError::None &&
           s.filter.size() <= 65535 && static_cast<int>(s.qos) <= 2;
  });
  if (!ok) {
    if (done) asio::post(m.io, [done = std::move(done)] { done(Error::InvalidArgument, {}); });
    return;
  }
  m.send_subscribe(std::move(subs), std::move(done));
}

void Client::unsubscribe(std::vector<std::string> filters, Completion done) {
  auto& m = *impl_;
  const bool ok = !filters.empty() && std::all_of(filters.begin(), filters.end(), [](const std::string& f) {
    return codec::valid_topic_filter(f) && codec::check_utf8(f) == codec::ProtocolError::None;
  });
  if (!ok) return m.complete_later(std::move(done), Error::InvalidArgument);
  for (const auto& f : filters) m.subscriptions.erase(f);
  const auto id = m.allocate_packet_id();
  if (m.state == Impl::State::Connected) m.append(Impl::unsubscribe_packet(id, filters));
  m.unsubscribing.emplace(id, Impl::PendingUnsubscribe{std::move(filters), std::move(done)});
}

void Client::disconnect(Completion done) {
  auto& m = *impl_;
  m.user_disconnect = true;
  m.reconnect_timer.cancel();
  if (m.state == Impl::State::Connected) {
    m.disconnect_done = std::move(done);
    m.state = Impl::State::Disconnecting;
    m.append(codec::Disconnect{});  // flush() finishes the disconnect once it is written
    return;
  }
  if (m.state == Impl::State::Disconnecting) return m.complete_later(std::move(done), Error::Cancelled);
  m.teardown();
  m.fail_all(Error::Cancelled);
  m.complete_later(std::move(done), Error::None);
}

bool Client::connected() const {
  return impl_->state == Impl::State::Connected;
}

std::size_t Client::pending() const {
  return impl_->inflight.size() + impl_->queued.size();
}

}  // namespace moat::client
