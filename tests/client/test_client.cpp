// moat::client against a real broker (moatd's own net::Server, in process, on a
// loopback port), through a TCP proxy that the tests use to cut connections.
#include <gtest/gtest.h>
#include <poll.h>

#include <boost/asio.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "client/client.hpp"
#include "codec/decoder.hpp"
#include "codec/encoder.hpp"
#include "harness.hpp"
#include "net/server.hpp"
#include "security/pki.hpp"
#include "store/memory_store.hpp"

namespace moat::test {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;
using client::QoS;

TEST(Client, PublishSubscribeAllQosToItself) {
  Broker broker;
  ClientLoop loop;
  Signal sig;
  std::vector<client::Message> got;
  std::vector<std::chrono::steady_clock::time_point> handled_at;
  std::vector<client::Error> completions;
  const auto started = std::chrono::steady_clock::now();
  auto c = loop.run([&] {
    auto cl = std::make_unique<client::Client>(loop.io(), options(broker.port(), "self"));
    cl->on_message([&](const client::Message& m) {
      std::lock_guard l(sig.mu);
      got.push_back(m);
      handled_at.push_back(std::chrono::steady_clock::now());
      sig.notify();
    });
    cl->on_connect([&, raw = cl.get()](const client::ConnectResult& r) {
      ASSERT_TRUE(r.ok()) << r.detail;
      raw->subscribe({{"loop/#", QoS::ExactlyOnce}},
                     [&, raw](client::Error e, const std::vector<std::uint8_t>& granted) {
                       EXPECT_EQ(e, client::Error::None);
                       EXPECT_EQ(granted, std::vector<std::uint8_t>{2});
                       for (int q = 0; q < 3; ++q)
                         raw->publish("loop/" + std::to_string(q), "payload-" + std::to_string(q),
                                      static_cast<QoS>(q), false, [&](client::Error pe) {
                                        std::lock_guard l(sig.mu);
                                        completions.push_back(pe);
                                        sig.notify();
                                      });
                     });
    });
    cl->connect();
    return cl;
  });
  ASSERT_TRUE(sig.wait([&] { return got.size() == 3 && completions.size() == 3; }));
  {
    std::lock_guard l(sig.mu);
    std::map<std::string, QoS> by_topic;
    for (const auto& m : got) by_topic[m.topic] = m.qos;
    EXPECT_EQ(by_topic["loop/0"], QoS::AtMostOnce);
    EXPECT_EQ(by_topic["loop/1"], QoS::AtLeastOnce);
    EXPECT_EQ(by_topic["loop/2"], QoS::ExactlyOnce);
    for (auto e : completions) EXPECT_EQ(e, client::Error::None);
    // Each message is its own (the client reuses the one it hands over), and
    // carries the time its bytes were read: after the test began, before the
    // handler saw it.
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].payload, "payload-" + got[i].topic.substr(5));
      EXPECT_GE(got[i].received, started);
      EXPECT_LE(got[i].received, handled_at[i]);
    }
  }
  std::promise<client::Error> bye;
  loop.run([&] {
    c->disconnect([&](client::Error e) { bye.set_value(e); });
    return 0;
  });
  EXPECT_EQ(bye.get_future().get(), client::Error::None);
  loop.run([&] {
    c.reset();
    return 0;
  });
}

// The client reads into a buffer that grows while reads fill it and shrinks
// once they are small again: a burst of 1 KiB messages, one packet larger
// than the largest read, then small messages, all arrive intact and in order.
TEST(Client, BurstsAndALargePacketArriveIntactWhateverTheReadSize) {
  Broker broker;
  ClientLoop loop;
  Signal sig;
  std::vector<std::string> sent;
  sent.reserve(951);
  for (int i = 0; i < 900; ++i) sent.push_back(std::to_string(i) + std::string(1024, 'b'));
  sent.push_back(std::string(std::size_t{600} * 1024, 'L'));
  for (int i = 0; i < 50; ++i) sent.push_back("small-" + std::to_string(i));
  Inbox box;
  auto sub = subscriber(loop, sig, box, options(broker.port(), "burst-sub"), "burst");
  auto pub = loop.run([&] {
    auto cl = std::make_unique<client::Client>(loop.io(), options(broker.port(), "burst-pub"));
    cl->connect();
    for (const auto& p : sent) cl->publish("burst", p, QoS::AtLeastOnce, false, nullptr);
    return cl;
  });
  ASSERT_TRUE(sig.wait([&] { return box.messages.size() >= sent.size(); }, 30s))
      << box.messages.size() << " received";
  {
    std::lock_guard l(sig.mu);
    ASSERT_EQ(box.messages.size(), sent.size());
    for (std::size_t i = 0; i < sent.size(); ++i)
      ASSERT_TRUE(box.messages[i].payload == sent[i])
          << "message " << i << " differs (" << box.messages[i].payload.size() << " bytes)";
  }
  loop.run([&] {
    sub.reset();
    pub.reset();
    return 0;
  });
}

TEST(Client, RefusedAndUnreachableAreDistinct) {
  Broker broker;
  ClientLoop loop;
  std::promise<client::ConnectResult> refused, unreachable;
  std::unique_ptr<client::Client> a, b;
  loop.run([&] {
    auto o = options(broker.port(), std::string(30, 'x'));
    o.version = client::ProtocolVersion::V31;  // MQTT 3.1 ids are at most 23 characters
    a = std::make_unique<client::Client>(loop.io(), o);
    a->on_connect([&](const client::ConnectResult& r) { refused.set_value(r); });
    a->connect();
    // A port nothing listens on: bind one, note it, close it.
    tcp::acceptor probe(loop.io(), {asio::ip::make_address("127.0.0.1"), 0});
    const auto closed_port = probe.local_endpoint().port();
    probe.close();
    b = std::make_unique<client::Client>(loop.io(), options(closed_port, "nobody"));
    b->on_connect([&](const client::ConnectResult& r) { unreachable.set_value(r); });
    b->connect();
    return 0;
  });
  const auto r1 = refused.get_future().get();
  EXPECT_EQ(r1.error, client::Error::Refused);
  EXPECT_EQ(r1.code, client::ConnectReturnCode::IdentifierRejected);
  const auto r2 = unreachable.get_future().get();
  EXPECT_EQ(r2.error, client::Error::Unreachable);
  EXPECT_FALSE(r2.detail.empty());
  loop.run([&] {
    a.reset();
    b.reset();
    return 0;
  });
}

TEST(Client, InvalidTopicIsRejectedBeforeSending) {
  ClientLoop loop;
  std::promise<client::Error> e1, e2;
  auto c = loop.run([&] {
    auto cl = std::make_unique<client::Client>(loop.io(), options(1, "x"));
    cl->publish("a/+", "x", QoS::AtMostOnce, false, [&](client::Error e) { e1.set_value(e); });
    cl->subscribe({{"a/#/b", QoS::AtMostOnce}},
                  [&](client::Error e, const std::vector<std::uint8_t>&) { e2.set_value(e); });
    return cl;
  });
  EXPECT_EQ(e1.get_future().get(), client::Error::InvalidArgument);
  EXPECT_EQ(e2.get_future().get(), client::Error::InvalidArgument);
  loop.run([&] {
    c.reset();
    return 0;
  });
}

// Cuts every connection several times while a publisher streams QoS 1 and QoS 2
// messages to a persistent subscriber. The broker keeps both sessions, so with
// the client's resends every QoS 1 message arrives at least once and every
// QoS 2 message exactly once [MQTT-4.3.3], [MQTT-4.4.0-1].
TEST(Client, ReconnectsAndResendsAcrossCutConnections) {
  Broker broker;
  Proxy proxy(broker.port());
  ClientLoop loop;
  Signal sig;
  constexpr int kCount = 600;
  std::map<std::string, int> seen;  // payload -> times received
  int completed = 0;
  int subscriber_connects = 0;
  bool subscribed = false;

  auto make = [&](const std::string& id) {
    auto o = options(proxy.port(), id);
    o.clean_session = false;
    o.reconnect.enabled = true;
    o.reconnect.initial_delay = 20ms;
    o.reconnect.max_delay = 200ms;
    o.keep_alive = 5;
    return std::make_unique<client::Client>(loop.io(), o);
  };
  std::unique_ptr<client::Client> sub, pub;
  loop.run([&] {
    sub = make("reconnect-sub");
    sub->on_message([&](const client::Message& m) {
      std::lock_guard l(sig.mu);
      ++seen[m.payload];
      sig.notify();
    });
    sub->on_connect([&](const client::ConnectResult& r) {
      std::lock_guard l(sig.mu);
      if (r.ok()) ++subscriber_connects;
      sig.notify();
    });
    sub->subscribe({{"stream/#", QoS::ExactlyOnce}}, [&](client::Error e, std::vector<std::uint8_t> granted) {
      std::lock_guard l(sig.mu);
      EXPECT_EQ(e, client::Error::None);
      subscribed = granted.size() == 1 && granted[0] == 2;
      sig.notify();
    });
    sub->connect();
    return 0;
  });
  // The stream starts once the broker has granted the subscription (SUBACK):
  // from then on every message must arrive, across every cut.
  ASSERT_TRUE(sig.wait([&] { return subscriber_connects == 1 && subscribed; }));
  loop.run([&] {
    pub = make("reconnect-pub");
    pub->connect();
    return 0;
  });

  std::thread feeder([&] {
    for (int i = 0; i < kCount; ++i) {
      loop.run([&, i] {
        const QoS q = i % 2 ? QoS::ExactlyOnce : QoS::AtLeastOnce;
        pub->publish("stream/" + std::to_string(i % 2 + 1), std::to_string(i), q, false,
                     [&](client::Error e) {
                       std::lock_guard l(sig.mu);
                       EXPECT_EQ(e, client::Error::None);
                       ++completed;
                       sig.notify();
                     });
        return 0;
      });
      if (i % 150 == 75) proxy.drop_all();  // mid-stream, with messages in flight
    }
  });
  feeder.join();
  ASSERT_TRUE(sig.wait([&] { return completed == kCount; }, 30s))
      << completed << " of " << kCount << " completed";
  ASSERT_TRUE(sig.wait(
      [&] {
        for (int i = 0; i < kCount; ++i)
          if (!seen.count(std::to_string(i))) return false;
        return true;
      },
      30s));
  {
    std::lock_guard l(sig.mu);
    for (int i = 1; i < kCount; i += 2) EXPECT_EQ(seen[std::to_string(i)], 1) << "QoS 2 message " << i;
    EXPECT_GT(subscriber_connects, 1) << "the connection cuts must have forced reconnects";
  }
  loop.run([&] {
    sub.reset();
    pub.reset();
    return 0;
  });
}

TEST(Client, KeepAliveSendsPingsWhileIdle) {
  Broker broker;
  ClientLoop loop;
  Signal sig;
  bool lost = false;
  auto c = loop.run([&] {
    auto o = options(broker.port(), "idle");
    o.keep_alive = 1;  // the broker closes after 1.5 s without a packet
    auto cl = std::make_unique<client::Client>(loop.io(), o);
    cl->on_disconnect([&](client::Error, const std::string&) {
      std::lock_guard l(sig.mu);
      lost = true;
      sig.notify();
    });
    cl->connect();
    return cl;
  });
  EXPECT_FALSE(sig.wait([&] { return lost; }, 3500ms)) << "PINGREQ must keep the connection open";
  EXPECT_TRUE(loop.run([&] { return c->connected(); }));
  loop.run([&] {
    c.reset();
    return 0;
  });
}

// ---------------------------------------------------------------- session state

// A stand-in broker that the test drives packet by packet: it cuts a connection
// at an exact point of an exchange (between PUBREC and PUBREL), and answers
// CONNECT with the session-present flag the test chooses. Every wait is bounded.
class ScriptedBroker {
 public:
  // A received packet, copied out of the read buffer.
  struct Seen {
    codec::PacketType type{};
    bool clean_session = false;  // CONNECT
    bool dup = false;            // PUBLISH
    QoS qos = QoS::AtMostOnce;   // PUBLISH
    std::uint16_t packet_id = 0;
    std::string topic, payload;
  };

  ScriptedBroker() : acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}) {}
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }

  void accept() {
    wait_readable(acceptor_.native_handle(), "no connection from the client");
    socket_ = tcp::socket(io_);
    acceptor_.accept(socket_);
    in_.clear();
  }
  Seen next() {
    codec::DecoderOptions dec;
    for (;;) {
      auto r = codec::decode(in_, dec);
      if (r.status == codec::DecodeStatus::Error) throw std::runtime_error("bad packet from the client");
      if (r.status == codec::DecodeStatus::Ok) {
        Seen s;
        s.type = codec::type_of(r.packet);
        if (const auto* c = std::get_if<codec::Connect>(&r.packet)) s.clean_session = c->clean_session;
        if (const auto* p = std::get_if<codec::Publish>(&r.packet)) {
          s.dup = p->dup;
          s.qos = p->qos;
          s.packet_id = p->packet_id;
          s.topic = p->topic;
          s.payload = p->payload;
        }
        if (const auto* a = std::get_if<codec::Ack>(&r.packet)) s.packet_id = a->packet_id;
        in_.erase(in_.begin(), in_.begin() + static_cast<std::ptrdiff_t>(r.consumed));
        return s;
      }
      wait_readable(socket_.native_handle(), "no packet from the client");
      std::array<std::uint8_t, 4096> chunk{};
      const std::size_t n = socket_.read_some(asio::buffer(chunk));
      in_.insert(in_.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
    }
  }
  void send(const codec::Packet& p) {
    codec::Bytes out;
    codec::encode(p, out);
    asio::write(socket_, asio::buffer(out.data(), out.size()));
  }
  void close() { socket_.close(); }

 private:
  static void wait_readable(int fd, const char* what) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 10'000) != 1) throw std::runtime_error(std::string(what) + " within 10 s");
  }
  asio::io_context io_;
  tcp::acceptor acceptor_;
  tcp::socket socket_{io_};
  std::vector<std::uint8_t> in_;
};

codec::Publish publish_packet(QoS qos, std::uint16_t id, std::string_view topic, std::string_view payload,
                              bool dup = false) {
  codec::Publish p;
  p.qos = qos;
  p.packet_id = id;
  p.topic = topic;
  p.payload = payload;
  p.dup = dup;
  return p;
}

struct SessionCase {
  const char* name;
  bool clean_session;
  bool session_present;  // in the CONNACK of the reconnect
  bool v31 = false;      // MQTT 3.1: no session-present flag, a persistent session counts as resumed
  bool resumed() const { return session_present || (v31 && !clean_session); }
};

class ClientSessionState : public ::testing::TestWithParam<SessionCase> {};

// The connection is cut after the client's PUBREC of an inbound QoS 2 message.
// When the reconnect finds the session, the broker's resend (DUP=1, same id) is
// the same message: acknowledged, not delivered again [MQTT-4.3.3-2]. When it
// finds a new session (a clean session, or a broker that lost ours), the id
// means nothing any more: a new message with it is delivered. Either way the
// client's own unacknowledged QoS 1 message is sent again [MQTT-4.4.0-1].
TEST_P(ClientSessionState, InboundQos2IdsLastAsLongAsTheSession) {
  const SessionCase k = GetParam();
  ScriptedBroker broker;
  ClientLoop loop;
  Signal sig;
  std::vector<std::string> got;
  std::optional<client::Error> published;
  auto o = options(broker.port(), std::string("qos2-state-") + k.name);
  o.clean_session = k.clean_session;
  if (k.v31) o.version = codec::ProtocolVersion::V31;
  o.reconnect.enabled = true;
  o.reconnect.initial_delay = 20ms;
  o.reconnect.max_delay = 200ms;
  std::unique_ptr<client::Client> c;
  loop.run([&] {
    c = std::make_unique<client::Client>(loop.io(), o);
    c->on_message([&](const client::Message& m) {
      std::lock_guard l(sig.mu);
      got.push_back(m.payload);
      sig.notify();
    });
    c->connect();
    c->publish("out/1", "held", QoS::AtLeastOnce, false, [&](client::Error e) {
      std::lock_guard l(sig.mu);
      published = e;
      sig.notify();
    });
    return 0;
  });
  using codec::PacketType;

  broker.accept();
  auto p = broker.next();
  ASSERT_EQ(p.type, PacketType::Connect);
  EXPECT_EQ(p.clean_session, k.clean_session);
  broker.send(codec::Connack{false, codec::ConnectReturnCode::Accepted});
  const auto held = broker.next();  // left unacknowledged
  ASSERT_EQ(held.type, PacketType::Publish);
  EXPECT_FALSE(held.dup);
  EXPECT_EQ(held.payload, "held");
  broker.send(publish_packet(QoS::ExactlyOnce, 7, "in/1", "first"));
  p = broker.next();
  ASSERT_EQ(p.type, PacketType::Pubrec);
  EXPECT_EQ(p.packet_id, 7);
  broker.close();  // before PUBREL

  broker.accept();
  p = broker.next();
  ASSERT_EQ(p.type, PacketType::Connect);
  broker.send(codec::Connack{k.session_present, codec::ConnectReturnCode::Accepted});
  p = broker.next();
  ASSERT_EQ(p.type, PacketType::Publish) << "the unacknowledged QoS 1 message is resent";
  EXPECT_TRUE(p.dup);
  EXPECT_EQ(p.packet_id, held.packet_id);
  EXPECT_EQ(p.payload, "held");
  broker.send(codec::Ack{PacketType::Puback, held.packet_id});
  if (k.resumed())
    broker.send(publish_packet(QoS::ExactlyOnce, 7, "in/1", "first", true));  // the resend
  else
    broker.send(publish_packet(QoS::ExactlyOnce, 7, "in/1", "second"));  // a new message, same id
  p = broker.next();
  ASSERT_EQ(p.type, PacketType::Pubrec);
  EXPECT_EQ(p.packet_id, 7);
  broker.send(codec::Ack{PacketType::Pubrel, 7});
  p = broker.next();
  ASSERT_EQ(p.type, PacketType::Pubcomp);
  EXPECT_EQ(p.packet_id, 7);
  broker.send(publish_packet(QoS::AtMostOnce, 0, "in/1", "end"));

  ASSERT_TRUE(sig.wait([&] { return !got.empty() && got.back() == "end" && published; }));
  {
    std::lock_guard l(sig.mu);
    const std::vector<std::string> want = k.resumed() ? std::vector<std::string>{"first", "end"}
                                                      : std::vector<std::string>{"first", "second", "end"};
    EXPECT_EQ(got, want);
    EXPECT_EQ(published.value_or(client::Error::Cancelled), client::Error::None);
  }
  loop.run([&] {
    c.reset();
    return 0;
  });
}

INSTANTIATE_TEST_SUITE_P(Cases, ClientSessionState,
                         ::testing::Values(SessionCase{"CleanSession", true, false},
                                           SessionCase{"SessionLost", false, false},
                                           SessionCase{"SessionResumed", false, true},
                                           SessionCase{"Mqtt31Persistent", false, false, true},
                                           SessionCase{"Mqtt31Clean", true, false, true}),
                         [](const ::testing::TestParamInfo<SessionCase>& p) {
                           return std::string(p.param.name);
                         });

// Packet ids go round 1..65535. A message left unacknowledged while more than
// 65,535 others are published and acknowledged keeps its id: once the ids come
// round to it, the client skips it rather than use it twice.
TEST(ClientPacketIds, AnIdStillInFlightIsSkippedWhenTheIdsComeRound) {
  ScriptedBroker broker;
  ClientLoop loop;
  Signal sig;
  std::size_t acked = 0;
  auto o = options(broker.port(), "packet-ids");
  o.max_inflight = 1001;
  std::unique_ptr<client::Client> c;
  const auto publish = [&](std::string payload) {
    c->publish("ids/1", std::move(payload), QoS::AtLeastOnce, false, [&](client::Error e) {
      std::lock_guard l(sig.mu);
      if (e == client::Error::None) ++acked;
      sig.notify();
    });
  };
  loop.run([&] {
    c = std::make_unique<client::Client>(loop.io(), o);
    c->connect();
    publish("held");
    return 0;
  });
  using codec::PacketType;
  broker.accept();
  ASSERT_EQ(broker.next().type, PacketType::Connect);
  broker.send(codec::Connack{false, codec::ConnectReturnCode::Accepted});
  const auto held = broker.next();  // left unacknowledged until the end
  ASSERT_EQ(held.type, PacketType::Publish);
  ASSERT_EQ(held.payload, "held");

  constexpr int kRounds = 67;  // 67,000 messages: the ids come round once
  constexpr int kPerRound = 1000;
  std::set<std::uint16_t> round_ids;
  int came_round = 0;  // times the last id, 65535, was given
  for (int r = 0; r < kRounds; ++r) {
    loop.run([&] {
      for (int i = 0; i < kPerRound; ++i) publish(std::to_string(r * kPerRound + i));
      return 0;
    });
    round_ids.clear();
    for (int i = 0; i < kPerRound; ++i) {
      const auto p = broker.next();
      ASSERT_EQ(p.type, PacketType::Publish);
      ASSERT_EQ(p.payload, std::to_string(r * kPerRound + i));
      ASSERT_NE(p.packet_id, held.packet_id) << "the id of a message still in flight, given again";
      ASSERT_TRUE(round_ids.insert(p.packet_id).second);
      if (p.packet_id == 65535) ++came_round;
      broker.send(codec::Ack{PacketType::Puback, p.packet_id});
    }
  }
  EXPECT_EQ(came_round, 1) << "the ids went round once";
  broker.send(codec::Ack{PacketType::Puback, held.packet_id});
  EXPECT_TRUE(sig.wait([&] { return acked == 1 + std::size_t{kRounds} * kPerRound; }));
  loop.run([&] {
    c.reset();
    return 0;
  });
}

TEST(ReconnectDelay, GrowsByTheMultiplierUpToMaxDelay) {
  client::ReconnectPolicy p;
  p.initial_delay = 100ms;
  p.multiplier = 2.0;
  p.max_delay = 1000ms;
  p.jitter = 0;
  const std::vector<std::chrono::milliseconds> want{100ms, 200ms, 400ms, 800ms, 1000ms, 1000ms};
  for (unsigned w = 0; w < want.size(); ++w) EXPECT_EQ(client::reconnect_delay(p, w, 0.5), want[w]) << w;
  EXPECT_EQ(client::reconnect_delay(p, 1'000'000, 0.5), 1000ms);
  p.multiplier = 1.5;
  EXPECT_EQ(client::reconnect_delay(p, 2, 0.5), 225ms);
}

TEST(ReconnectDelay, JitterSpansPlusMinusItsShare) {
  client::ReconnectPolicy p;
  p.initial_delay = 1000ms;
  p.max_delay = 1000ms;
  p.jitter = 0.2;
  EXPECT_EQ(client::reconnect_delay(p, 3, 0.0), 800ms);
  EXPECT_EQ(client::reconnect_delay(p, 3, 0.5), 1000ms);
  EXPECT_EQ(client::reconnect_delay(p, 3, 0.75), 1100ms);
  EXPECT_EQ(client::reconnect_delay(p, 3, 1.0), 1200ms);
  EXPECT_EQ(client::reconnect_delay(p, 3, 7.0), 1200ms) << "a draw outside [0, 1) is clamped";
}

// The waits between attempts against a port nothing listens on follow the
// policy: the first is initial_delay, each next one twice as long, up to
// max_delay (jitter 0: the intervals are the delays plus a refused connect).
TEST(Client, ReconnectWaitsGrowBetweenFailedAttempts) {
  ClientLoop loop;
  Signal sig;
  std::vector<std::chrono::steady_clock::time_point> failures;
  std::unique_ptr<client::Client> c;
  loop.run([&] {
    tcp::acceptor probe(loop.io(), {asio::ip::make_address("127.0.0.1"), 0});
    const auto closed_port = probe.local_endpoint().port();
    probe.close();
    auto o = options(closed_port, "backoff");
    o.reconnect.enabled = true;
    o.reconnect.initial_delay = 40ms;
    o.reconnect.multiplier = 2.0;
    o.reconnect.max_delay = 320ms;
    o.reconnect.jitter = 0;
    o.reconnect.max_attempts = 6;
    c = std::make_unique<client::Client>(loop.io(), o);
    c->on_connect([&](const client::ConnectResult& r) {
      std::lock_guard l(sig.mu);
      EXPECT_EQ(r.error, client::Error::Unreachable);
      failures.push_back(std::chrono::steady_clock::now());
      sig.notify();
    });
    c->connect();
    return 0;
  });
  ASSERT_TRUE(sig.wait([&] { return failures.size() == 6; }, 20s));
  std::lock_guard l(sig.mu);
  // Sanitizer builds run slower (MOAT_TEST_TIMEOUT_SCALE): more slack above.
  // Nothing in this binary calls setenv, so reading the environment is safe.
  const char* scale_env = std::getenv("MOAT_TEST_TIMEOUT_SCALE");  // NOLINT(concurrency-mt-unsafe)
  const int scale = scale_env ? std::max(1, std::atoi(scale_env)) : 1;
  const std::vector<std::chrono::milliseconds> delays{40ms, 80ms, 160ms, 320ms, 320ms};
  for (std::size_t i = 0; i < delays.size(); ++i) {
    const auto gap = failures[i + 1] - failures[i];
    EXPECT_GE(gap, delays[i]) << "wait " << i;
    // Below the next step, so a doubling too many (or too few) shows.
    EXPECT_LT(gap, delays[i] + delays[i] / 2 + scale * 30ms) << "wait " << i;
  }
  loop.run([&] {
    c.reset();
    return 0;
  });
}

// ---------------------------------------------------------------- TLS

// Certificates for the TLS tests, written once into a temporary folder: a CA, a
// server certificate for 127.0.0.1 and localhost, a client certificate
// (CN=device-1), a second CA with its own client certificate, and a PSK file.
class TestPki {
 public:
  static const TestPki& get() {
    static const TestPki pki;
    return pki;
  }
  ~TestPki() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::filesystem::path dir;
  std::string ca, server_cert, server_key, client_cert, client_key, other_ca, intruder_cert, intruder_key,
      psk_file;
  static constexpr const char* kPskIdentity = "sensor-7";
  static constexpr const char* kPskKey = "00112233445566778899aabbccddeeff";

  security::TlsServerConfig server_config(const char* min_version, bool client_certs = false,
                                          bool psk = false) const {
    security::TlsServerConfig c;
    c.cert = server_cert;
    c.key = server_key;
    c.min_version = min_version;
    if (client_certs) {
      c.ca = ca;
      c.client_cert = security::ClientCertMode::Required;
    }
    if (psk) {
      c.psk_file = psk_file;
      c.identity_from = security::IdentityFrom::Psk;
    }
    return c;
  }

 private:
  TestPki() {
    namespace pki = security::pki;
    dir = std::filesystem::temp_directory_path() / ("moat-client-tls-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto spec = [](pki::CertKind k, std::string cn, std::vector<std::string> hosts = {}) {
      pki::CertSpec s;
      s.kind = k;
      s.common_name = std::move(cn);
      s.hosts = std::move(hosts);
      return s;
    };
    auto write = [&](const char* name, const std::string& text) {
      const auto p = dir / name;
      std::ofstream(p) << text;
      std::filesystem::permissions(p,
                                   std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
      return p.string();
    };
    const auto root = pki::make_ca(spec(pki::CertKind::Ca, "Client Test CA"));
    const auto server =
        pki::issue(spec(pki::CertKind::Server, "localhost", {"localhost", "127.0.0.1"}), root);
    const auto client = pki::issue(spec(pki::CertKind::Client, "device-1"), root);
    const auto other = pki::make_ca(spec(pki::CertKind::Ca, "Other CA"));
    const auto intruder = pki::issue(spec(pki::CertKind::Client, "intruder"), other);
    ca = write("ca.crt", root.cert_pem);
    server_cert = write("server.crt", server.cert_pem);
    server_key = write("server.key", server.key_pem);
    client_cert = write("client.crt", client.cert_pem);
    client_key = write("client.key", pki::encrypt_key(client.key_pem, "key-pw"));
    other_ca = write("other-ca.crt", other.cert_pem);
    intruder_cert = write("intruder.crt", intruder.cert_pem);
    intruder_key = write("intruder.key", intruder.key_pem);
    psk_file = write("psk.txt", std::string(kPskIdentity) + ":" + kPskKey + "\n");
  }
};

std::shared_ptr<const security::TlsServerContext> server_context(const security::TlsServerConfig& c) {
  return security::TlsServerContext::load(c);
}

client::TlsOptions trusting_ca(const char* max_version = "") {
  client::TlsOptions t;
  t.ca_file = TestPki::get().ca;
  t.max_version = max_version;
  return t;
}

// Connects one client and returns its first ConnectResult (and the client, still open).
struct Attempt {
  client::ConnectResult result;
  std::unique_ptr<client::Client> client;
};
Attempt connect_once(ClientLoop& loop, client::Options o) {
  std::promise<client::ConnectResult> p;
  auto once = std::make_shared<bool>(false);
  auto c = loop.run([&] {
    auto cl = std::make_unique<client::Client>(loop.io(), o);
    cl->on_connect([&p, once](const client::ConnectResult& r) {
      if (*once) return;
      *once = true;
      p.set_value(r);
    });
    cl->connect();
    return cl;
  });
  auto r = p.get_future().get();
  return {std::move(r), std::move(c)};
}

void close_client(ClientLoop& loop, std::unique_ptr<client::Client>& c) {
  loop.run([&] {
    c.reset();
    return 0;
  });
}

class ClientTls : public ::testing::TestWithParam<const char*> {};

std::string version_name(const ::testing::TestParamInfo<const char*>& p) {
  return std::string(p.param) == "1.2" ? "Tls12" : "Tls13";
}

// A reconnect after a cut connection resumes the TLS session of the first
// connection (TLS 1.2 and TLS 1.3 tickets); messages flow over both.
TEST_P(ClientTls, ReconnectResumesTheSession) {
  const std::string version = GetParam();
  Broker broker(server_context(TestPki::get().server_config("1.2")));
  Proxy proxy(broker.port());
  ClientLoop loop;
  Signal sig;
  std::vector<client::ConnectResult> connects;
  std::vector<std::string> got;
  auto o = options(proxy.port(), "tls-resume-" + version);
  o.tls = client::TlsContext::create(trusting_ca(version.c_str()));
  o.reconnect.enabled = true;
  o.reconnect.initial_delay = 20ms;
  o.reconnect.max_delay = 100ms;
  std::unique_ptr<client::Client> c;
  loop.run([&] {
    c = std::make_unique<client::Client>(loop.io(), o);
    c->on_connect([&](const client::ConnectResult& r) {
      std::lock_guard l(sig.mu);
      connects.push_back(r);
      sig.notify();
    });
    c->on_message([&](const client::Message& m) {
      std::lock_guard l(sig.mu);
      got.push_back(m.payload);
      sig.notify();
    });
    c->subscribe({{"tls/echo", QoS::AtLeastOnce}}, nullptr);
    c->connect();
    c->publish("tls/echo", "first", QoS::AtLeastOnce, false, nullptr);
    return 0;
  });
  // The echo also means the broker's TLS 1.3 tickets (sent after the handshake) were read.
  ASSERT_TRUE(sig.wait([&] { return got.size() == 1; }));
  {
    std::lock_guard l(sig.mu);
    ASSERT_EQ(connects.size(), 1u);
    ASSERT_TRUE(connects[0].ok()) << connects[0].detail;
    EXPECT_EQ(connects[0].tls.version, "TLSv" + version);
    EXPECT_FALSE(connects[0].tls.resumed);
    EXPECT_EQ(connects[0].tls.peer_subject, "CN=localhost");
  }
  EXPECT_EQ(o.tls->session_count(), 1u);
  proxy.drop_all();
  ASSERT_TRUE(sig.wait([&] { return connects.size() == 2; }));
  loop.run([&] {
    c->publish("tls/echo", "second", QoS::AtLeastOnce, false, nullptr);
    return 0;
  });
  ASSERT_TRUE(sig.wait([&] { return got.size() >= 2 && got.back() == "second"; }));
  {
    std::lock_guard l(sig.mu);
    ASSERT_TRUE(connects[1].ok()) << connects[1].detail;
    EXPECT_EQ(connects[1].tls.version, "TLSv" + version);
    EXPECT_TRUE(connects[1].tls.resumed) << "the reconnect did a full handshake";
  }
  // A resumed connection that ends without a TLS shutdown leaves the stored
  // session usable: the next reconnect resumes too.
  proxy.drop_all();
  ASSERT_TRUE(sig.wait([&] { return connects.size() == 3; }));
  {
    std::lock_guard l(sig.mu);
    ASSERT_TRUE(connects[2].ok()) << connects[2].detail;
    EXPECT_TRUE(connects[2].tls.resumed) << "the second reconnect did a full handshake";
  }
  // Without the stored session the next handshake is a full one again.
  o.tls->forget_sessions();
  o.client_id = "tls-full-" + version;
  o.reconnect.enabled = false;
  auto full = connect_once(loop, o);
  ASSERT_TRUE(full.result.ok()) << full.result.detail;
  EXPECT_FALSE(full.result.tls.resumed);
  close_client(loop, full.client);
  close_client(loop, c);
}

INSTANTIATE_TEST_SUITE_P(Versions, ClientTls, ::testing::Values("1.2", "1.3"), version_name);

TEST(ClientTlsErrors, VerificationFailuresAreTlsFailedWithAReason) {
  Broker broker(server_context(TestPki::get().server_config("1.2")));
  ClientLoop loop;
  struct Case {
    const char* what;
    client::TlsOptions tls;
    const char* expect;
  };
  auto wrong_name = trusting_ca();
  wrong_name.server_name = "broker.example";
  auto other_ca = trusting_ca();
  other_ca.ca_file = TestPki::get().other_ca;
  auto other_ip = trusting_ca();
  other_ip.server_name = "127.0.0.2";
  const Case cases[] = {
      {"host name", wrong_name, "does not match host name 'broker.example'"},
      {"IP address", other_ip, "does not match host name '127.0.0.2'"},
      {"CA", other_ca, "unknown CA 'CN=Client Test CA'"},
  };
  for (const auto& k : cases) {
    auto o = options(broker.port(), std::string("tls-bad-") + k.what);
    o.tls = client::TlsContext::create(k.tls);
    o.reconnect.enabled = true;  // a verification failure is not retried
    auto a = connect_once(loop, o);
    EXPECT_EQ(a.result.error, client::Error::TlsFailed) << k.what << ": " << a.result.detail;
    EXPECT_NE(a.result.detail.find(k.expect), std::string::npos) << k.what << ": " << a.result.detail;
    EXPECT_FALSE(a.result.retrying) << k.what;
    close_client(loop, a.client);
  }
  // ChainOnly (mosquitto's --insecure) accepts the other name, not the other CA.
  wrong_name.verify = client::TlsVerify::ChainOnly;
  auto o = options(broker.port(), "tls-chain-only");
  o.tls = client::TlsContext::create(wrong_name);
  auto a = connect_once(loop, o);
  EXPECT_TRUE(a.result.ok()) << a.result.detail;
  close_client(loop, a.client);
  other_ca.verify = client::TlsVerify::ChainOnly;
  o.tls = client::TlsContext::create(other_ca);
  a = connect_once(loop, o);
  EXPECT_EQ(a.result.error, client::Error::TlsFailed) << a.result.detail;
  close_client(loop, a.client);
  // A plain MQTT port is not mistaken for a TLS failure of the certificate.
  Broker plain;
  o = options(plain.port(), "tls-to-plain");
  o.tls = client::TlsContext::create(trusting_ca());
  a = connect_once(loop, o);
  EXPECT_EQ(a.result.error, client::Error::TlsFailed) << a.result.detail;
  EXPECT_NE(a.result.detail.find("TLS port"), std::string::npos) << a.result.detail;
  close_client(loop, a.client);
}

TEST(ClientTlsErrors, SetupErrorsNameTheFile) {
  auto t = trusting_ca();
  t.ca_file = "/nonexistent/ca.crt";
  try {
    client::TlsContext::create(t);
    FAIL() << "no error";
  } catch (const client::TlsSetupError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/ca.crt"), std::string::npos) << e.what();
  }
  t = trusting_ca();
  t.cert_file = TestPki::get().client_cert;
  t.key_file = TestPki::get().client_key;  // encrypted
  EXPECT_THROW(client::TlsContext::create(t), client::TlsSetupError);
  t.key_password = "wrong";
  try {
    client::TlsContext::create(t);
    FAIL() << "no error";
  } catch (const client::TlsSetupError& e) {
    EXPECT_NE(std::string(e.what()).find("wrong password"), std::string::npos) << e.what();
  }
  t.key_password = "key-pw";
  EXPECT_NO_THROW(client::TlsContext::create(t));
  t.key_file = TestPki::get().intruder_key;
  t.key_password.clear();
  EXPECT_THROW(client::TlsContext::create(t), client::TlsSetupError);  // key of another certificate
  t = trusting_ca();
  t.min_version = "1.1";
  EXPECT_THROW(client::TlsContext::create(t), client::TlsSetupError);
  t = trusting_ca();
  t.psk_identity = "x";
  t.psk_key_hex = "0011";
  EXPECT_THROW(client::TlsContext::create(t), client::TlsSetupError);  // PSK and a CA
}

class ClientMutualTls : public ::testing::TestWithParam<const char*> {};

// The broker's verdict on the client certificate: in TLS 1.3 it arrives after
// the client's handshake is done, as an alert on the first read.
TEST_P(ClientMutualTls, ClientCertificateAcceptedOrRefused) {
  const std::string version = GetParam();
  Broker broker(server_context(TestPki::get().server_config("1.2", true)), {"certificate"});
  ClientLoop loop;
  auto with_cert = trusting_ca(version.c_str());
  with_cert.cert_file = TestPki::get().client_cert;
  with_cert.key_file = TestPki::get().client_key;
  with_cert.key_password = "key-pw";
  auto o = options(broker.port(), "mtls-ok");
  o.tls = client::TlsContext::create(with_cert);
  auto a = connect_once(loop, o);
  EXPECT_TRUE(a.result.ok()) << a.result.detail;
  close_client(loop, a.client);

  o = options(broker.port(), "mtls-none");
  o.tls = client::TlsContext::create(trusting_ca(version.c_str()));
  a = connect_once(loop, o);
  EXPECT_EQ(a.result.error, client::Error::TlsFailed) << a.result.detail;
  EXPECT_NE(a.result.detail.find(version == "1.3" ? "requires a client certificate" : "client certificate"),
            std::string::npos)
      << a.result.detail;
  close_client(loop, a.client);

  auto intruder = trusting_ca(version.c_str());
  intruder.cert_file = TestPki::get().intruder_cert;
  intruder.key_file = TestPki::get().intruder_key;
  o = options(broker.port(), "mtls-intruder");
  o.tls = client::TlsContext::create(intruder);
  a = connect_once(loop, o);
  EXPECT_EQ(a.result.error, client::Error::TlsFailed) << a.result.detail;
  EXPECT_NE(a.result.detail.find("rejected our client certificate"), std::string::npos) << a.result.detail;
  close_client(loop, a.client);
}

INSTANTIATE_TEST_SUITE_P(Versions, ClientMutualTls, ::testing::Values("1.2", "1.3"), version_name);

class ClientPsk : public ::testing::TestWithParam<const char*> {};

TEST_P(ClientPsk, RightKeyConnectsWrongKeyFails) {
  const std::string version = GetParam();
  Broker broker(server_context(TestPki::get().server_config("1.2", false, true)), {"psk"});
  ClientLoop loop;
  client::TlsOptions t;
  t.psk_identity = TestPki::kPskIdentity;
  t.psk_key_hex = TestPki::kPskKey;
  t.max_version = version;
  auto o = options(broker.port(), "psk-ok");
  o.tls = client::TlsContext::create(t);
  auto a = connect_once(loop, o);
  EXPECT_TRUE(a.result.ok()) << a.result.detail;
  EXPECT_EQ(a.result.tls.version, "TLSv" + version);
  EXPECT_EQ(a.result.tls.psk_identity, TestPki::kPskIdentity);
  close_client(loop, a.client);

  t.psk_key_hex = "ffeeddccbbaa99887766554433221100";
  o = options(broker.port(), "psk-bad-key");
  o.tls = client::TlsContext::create(t);
  a = connect_once(loop, o);
  EXPECT_EQ(a.result.error, client::Error::TlsFailed) << a.result.detail;
  EXPECT_NE(a.result.detail.find("PSK"), std::string::npos) << a.result.detail;
  close_client(loop, a.client);

  t.psk_key_hex = TestPki::kPskKey;
  t.psk_identity = "nobody";
  o = options(broker.port(), "psk-bad-identity");
  o.tls = client::TlsContext::create(t);
  a = connect_once(loop, o);
  EXPECT_EQ(a.result.error, client::Error::TlsFailed) << a.result.detail;
  EXPECT_NE(a.result.detail.find("nobody"), std::string::npos) << a.result.detail;
  close_client(loop, a.client);
}

INSTANTIATE_TEST_SUITE_P(Versions, ClientPsk, ::testing::Values("1.2", "1.3"), version_name);

// A TLS 1.3 broker that refuses the client certificate sends its alert after
// the client's handshake is done, and resets the connection: the CONNECT write
// may fail before the read sees the alert. The alert is what is reported.
class AlertAfterHandshake final : public client::Transport {
 public:
  explicit AlertAfterHandshake(asio::io_context& io) : io_(io) {}
  void async_connect(ConnectHandler done) override {
    asio::post(io_, [done = std::move(done)] { done({}, {}); });
  }
  void async_write(std::span<const std::uint8_t>, IoHandler done) override {
    asio::post(io_, [done = std::move(done)] { done(std::make_error_code(std::errc::connection_reset), 0); });
  }
  void async_read_some(std::span<std::uint8_t>, IoHandler done) override {
    asio::post(io_, [done = std::move(done)] { done(client::TlsErrc::PeerAlert, 0); });
  }
  void close() override {}
  std::string describe(const std::error_code& ec) const override {
    return ec == client::TlsErrc::PeerAlert ? "the broker requires a client certificate (alert)"
                                            : ec.message();
  }

 private:
  asio::io_context& io_;
};

TEST(ClientTlsErrors, AlertAfterHandshakeWinsOverTheFailedWrite) {
  ClientLoop loop;
  auto o = options(1, "alert");
  o.transport = [](asio::io_context& io) { return std::make_unique<AlertAfterHandshake>(io); };
  auto a = connect_once(loop, o);
  EXPECT_EQ(a.result.error, client::Error::TlsFailed) << a.result.detail;
  EXPECT_NE(a.result.detail.find("requires a client certificate"), std::string::npos) << a.result.detail;
  EXPECT_FALSE(a.result.retrying);
  close_client(loop, a.client);
}

}  // namespace
}  // namespace moat::test
