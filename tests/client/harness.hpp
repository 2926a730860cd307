// The parts the client tests share: a real broker (moatd's own net::Server, in
// process, on a loopback port), a TCP proxy that cuts connections, a thread that
// runs the clients, and a condition to wait on.
#pragma once

#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/client.hpp"
#include "net/server.hpp"
#include "security/pki.hpp"
#include "store/memory_store.hpp"

namespace moat::test {

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;

// A broker on 127.0.0.1 with an ephemeral port, two event loops; a TLS listener
// when given a context.
class Broker {
 public:
  explicit Broker(std::shared_ptr<const security::TlsServerContext> tls = nullptr,
                  const std::vector<std::string>& auth = {"anonymous"}) {
    shared_.store = &store_;
    shared_.shard_count = 2;
    shared_.sys_interval = std::chrono::seconds(0);
    net::ServerOptions o;
    o.threads = 2;
    std::vector<std::shared_ptr<security::Authenticator>> chain;
    chain.reserve(auth.size());
    for (const auto& a : auth) chain.push_back(security::make_authenticator(a));
    o.listeners.push_back(
        {"test", "127.0.0.1", 0, chain,
         tls ? std::make_shared<security::Reloadable<security::TlsServerContext>>(std::move(tls)) : nullptr});
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
  void pump(const std::shared_ptr<Pair>& p, tcp::socket& from, tcp::socket& to, std::array<char, 8192>& buf) {
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

inline client::Options options(std::uint16_t port, std::string id) {
  client::Options o;
  o.port = port;
  o.client_id = std::move(id);
  o.connect_timeout = 5s;
  return o;
}

// What one client received, guarded by the Signal's mutex.
struct Inbox {
  std::vector<client::Message> messages;
  std::vector<client::Rejected> rejected;
  int connects = 0;
};

// A client on `loop` that records into `box` and subscribes to `filter` (QoS 1)
// on its first connection; returns once the subscription is acknowledged.
inline std::unique_ptr<client::Client> subscriber(ClientLoop& loop, Signal& sig, Inbox& box,
                                                  client::Options o, const std::string& filter) {
  bool subscribed = false;
  auto c = loop.run([&] {
    auto cl = std::make_unique<client::Client>(loop.io(), std::move(o));
    cl->on_message([&](const client::Message& m) {
      std::lock_guard l(sig.mu);
      box.messages.push_back(m);
      sig.notify();
    });
    cl->on_rejected([&](const client::Rejected& r) {
      std::lock_guard l(sig.mu);
      box.rejected.push_back(r);
      sig.notify();
    });
    cl->on_connect([&](const client::ConnectResult& r) {
      std::lock_guard l(sig.mu);
      if (r.ok()) ++box.connects;
      sig.notify();
    });
    cl->subscribe({{filter, client::QoS::AtLeastOnce}},
                  [&](client::Error e, const std::vector<std::uint8_t>&) {
                    std::lock_guard l(sig.mu);
                    EXPECT_EQ(e, client::Error::None);
                    subscribed = true;
                    sig.notify();
                  });
    cl->connect();
    return cl;
  });
  EXPECT_TRUE(sig.wait([&] { return subscribed; }));
  return c;
}

}  // namespace moat::test
