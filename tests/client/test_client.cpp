// moat::client against a real broker (moatd's own net::Server, in process, on a
// loopback port), through a TCP proxy that the tests use to cut connections.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "client/client.hpp"
#include "net/server.hpp"
#include "store/memory_store.hpp"

namespace moat::test {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;
using client::QoS;

// A broker on 127.0.0.1 with an ephemeral port, two event loops.
class Broker {
 public:
  Broker() {
    shared_.store = &store_;
    shared_.shard_count = 2;
    shared_.sys_interval = std::chrono::seconds(0);
    net::ServerOptions o;
    o.threads = 2;
    o.listeners.push_back({"test", "127.0.0.1", 0, {security::make_authenticator("anonymous")}, nullptr});
    server_ = std::make_unique<net::Server>(std::move(o), shared_);
    server_->start();
  }
  std::uint16_t port() const { return server_->ports().at(0); }

 private:
  store::MemoryStore store_;
  broker::BrokerShared shared_;
  std::unique_ptr<net::Server> server_;
};

// Forwards every accepted connection to the broker; drop_all() cuts them all.
class Proxy {
 public:
  explicit Proxy(std::uint16_t upstream)
      : upstream_(upstream), acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}) {
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~Proxy() {
    io_.stop();
    thread_.join();
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  void drop_all() {
    std::promise<void> done;
    asio::post(io_, [&] {
      for (auto& p : pairs_) {
        boost::system::error_code ec;
        p->a.close(ec);
        p->b.close(ec);
      }
      pairs_.clear();
      done.set_value();
    });
    done.get_future().wait();
  }

 private:
  struct Pair {
    explicit Pair(asio::io_context& io) : a(io), b(io) {}
    tcp::socket a, b;
    std::array<char, 8192> ab{}, ba{};
  };
  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket s) {
      if (ec) return;
      auto p = std::make_shared<Pair>(io_);
      p->a = std::move(s);
      p->b.async_connect({asio::ip::make_address("127.0.0.1"), upstream_},
                         [this, p](boost::system::error_code cec) {
                           if (cec) return;
                           pairs_.push_back(p);
                           pump(p, p->a, p->b, p->ab);
                           pump(p, p->b, p->a, p->ba);
                         });
      accept();
    });
  }
  void pump(std::shared_ptr<Pair> p, tcp::socket& from, tcp::socket& to, std::array<char, 8192>& buf) {
    from.async_read_some(
        asio::buffer(buf), [this, p, &from, &to, &buf](boost::system::error_code ec, std::size_t n) {
          if (ec) {
            boost::system::error_code ig;
            to.close(ig);
            return;
          }
          asio::async_write(to, asio::buffer(buf.data(), n),
                            [this, p, &from, &to, &buf](boost::system::error_code wec, std::size_t) {
                              if (!wec) pump(p, from, to, buf);
                            });
        });
  }
  std::uint16_t upstream_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::vector<std::shared_ptr<Pair>> pairs_;
  std::thread thread_;
};

// Runs clients on their own io_context thread; tests post work to it.
class ClientLoop {
 public:
  ClientLoop() : guard_(io_.get_executor()), thread_([this] { io_.run(); }) {}
  ~ClientLoop() {
    guard_.reset();
    io_.stop();
    thread_.join();
  }
  asio::io_context& io() { return io_; }
  template <typename F>
  auto run(F&& f) {
    std::packaged_task<decltype(f())()> task(std::forward<F>(f));
    auto fut = task.get_future();
    asio::post(io_, [&task] { task(); });
    return fut.get();
  }

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread thread_;
};

// Waits for a condition set from the client thread.
struct Signal {
  std::mutex mu;
  std::condition_variable cv;
  template <typename P>
  bool wait(P pred, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock l(mu);
    return cv.wait_for(l, timeout, pred);
  }
  void notify() { cv.notify_all(); }
};

client::Options options(std::uint16_t port, std::string id) {
  client::Options o;
  o.port = port;
  o.client_id = std::move(id);
  o.connect_timeout = 5s;
  return o;
}

TEST(Client, PublishSubscribeAllQosToItself) {
  Broker broker;
  ClientLoop loop;
  Signal sig;
  std::vector<client::Message> got;
  std::vector<client::Error> completions;
  auto c = loop.run([&] {
    auto cl = std::make_unique<client::Client>(loop.io(), options(broker.port(), "self"));
    cl->on_message([&](const client::Message& m) {
      std::lock_guard l(sig.mu);
      got.push_back(m);
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
    sub->subscribe({{"stream/#", QoS::ExactlyOnce}}, nullptr);
    sub->connect();
    return 0;
  });
  ASSERT_TRUE(sig.wait([&] { return subscriber_connects == 1; }));
  // Wait for the SUBACK by round-tripping a marker message through the broker.
  loop.run([&] {
    pub = make("reconnect-pub");
    pub->connect();
    pub->publish("stream/marker", "marker", QoS::AtLeastOnce, false, nullptr);
    return 0;
  });
  ASSERT_TRUE(sig.wait([&] { return seen.count("marker") > 0; }));

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

}  // namespace
}  // namespace moat::test
