// The event loop of `moat pub` and `moat sub`: one io_context, one
// moat::client::Client, signals and timers. The only file of moat that includes
// Boost.Asio.
#include <signal.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "cli.hpp"
#include "codec/topic.hpp"

namespace moat::cli {

namespace {

namespace asio = boost::asio;
using client::Error;

const char* version_name(client::ProtocolVersion v) {
  return v == client::ProtocolVersion::V31 ? "MQTT 3.1" : "MQTT 3.1.1";
}

std::string broker_name(const client::Options& o) {
  return o.unix_socket.empty() ? o.host + ":" + std::to_string(o.port) : o.unix_socket;
}

// Exit status and one-line message for a failed connection attempt.
std::pair<int, std::string> connect_failure(const client::ConnectResult& r, const client::Options& o) {
  switch (r.error) {
    case Error::Unreachable:
      return {kUnreachable, r.detail.empty() ? "cannot connect to " + broker_name(o) : r.detail};
    case Error::Refused: {
      const int code = static_cast<int>(r.code);
      const std::string what =
          std::string(client::to_string(r.code)) + " (CONNACK " + std::to_string(code) + ")";
      if (r.code == client::ConnectReturnCode::BadUsernameOrPassword ||
          r.code == client::ConnectReturnCode::NotAuthorized)
        return {kAuthFailed, "authentication failed: " + what};
      return {kRefused, "connection refused: " + what};
    }
    case Error::Timeout:
      return {kTimeout, "timed out connecting to " + broker_name(o) + ": no CONNACK within " +
                            std::to_string(o.connect_timeout.count() / 1000) + " s"};
    case Error::ProtocolError:
      return {kLost, "protocol error while connecting to " + broker_name(o) + ": " + r.detail};
    case Error::TlsFailed:
      return {kTlsFailed, r.detail.empty() ? "TLS handshake with " + broker_name(o) + " failed" : r.detail};
    default:
      return {kLost, "connection to " + broker_name(o) + " lost before CONNACK" +
                         (r.detail.empty() ? std::string() : ": " + r.detail)};
  }
}

std::string tls_summary(const client::TlsInfo& t) {
  std::string s = t.version + ", " + t.cipher + (t.resumed ? ", resumed" : ", full handshake");
  if (!t.alpn.empty()) s += ", ALPN " + t.alpn;
  if (!t.psk_identity.empty()) s += ", PSK identity " + quoted(t.psk_identity);
  if (!t.peer_subject.empty()) s += ", server " + t.peer_subject;
  return s;
}

std::string describe_lost(Error e, const std::string& detail) {
  std::string s = e == Error::ProtocolError ? "protocol error" : "connection lost";
  if (e == Error::Timeout) s = "connection lost (broker did not answer within the keep-alive interval)";
  if (!detail.empty()) s += ": " + detail;
  return s;
}

// What pub and sub share: the loop, the client, signals, and the way out.
class Session {
 public:
  explicit Session(const Common& c)
      : common_(c),
        signals_(io_, SIGINT, SIGTERM),
        grace_(io_),
        client_(std::make_unique<client::Client>(io_, c.options)) {}
  virtual ~Session() = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  int run() {
    client_->on_connect([this](const client::ConnectResult& r) { on_connect_result(r); });
    client_->on_disconnect([this](Error e, const std::string& detail) { on_lost(e, detail); });
    if (common_.debug)
      client_->on_ping([](client::Client::Ping p) {
        debug_line(p == client::Client::Ping::Sent ? "sending PINGREQ" : "received PINGRESP");
      });
    wait_signal();
    start();
    if (common_.debug) {
      const auto& o = common_.options;
      debug_line(std::string("connecting to ") + broker_name(o) + (o.tls ? " over TLS" : "") + " (" +
                 version_name(o.version) + ", client id " +
                 (o.client_id.empty() ? std::string("assigned by the broker") : quoted(o.client_id)) +
                 ", clean session " + (o.clean_session ? "1" : "0") + ", keep-alive " +
                 std::to_string(o.keep_alive) + " s" + (o.will ? ", will on " + quoted(o.will->topic) : "") +
                 ")");
    }
    client_->connect();
    io_.run();
    // Nothing the client still reports matters now.
    finishing_ = true;
    stop_input();
    client_.reset();
    io_.restart();
    io_.poll();
    return exit_code_;
  }

 protected:
  virtual void start() {}
  virtual void connected(const client::ConnectResult& r) = 0;
  virtual void interrupted() { finish(kOk, {}); }
  virtual void stop_input() {}

  void finish(int code, const std::string& message) {
    if (finishing_) return;
    finishing_ = true;
    exit_code_ = code;
    if (!message.empty()) error_line(common_.command, message);
    stop_input();
    if (client_->connected()) {
      if (common_.debug) debug_line("sending DISCONNECT");
      client_->disconnect([this](Error) { io_.stop(); });
      // A broker that stops reading must not keep us here.
      grace_.expires_after(std::chrono::seconds(2));
      grace_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec) io_.stop();
      });
    } else {
      client_->disconnect(nullptr);  // ends reconnect attempts
      io_.stop();
    }
  }

  const Common& common_;
  asio::io_context io_;
  asio::signal_set signals_;
  asio::steady_timer grace_;
  std::unique_ptr<client::Client> client_;
  bool finishing_ = false;
  int exit_code_ = kOk;

 private:
  void wait_signal() {
    signals_.async_wait([this](const boost::system::error_code& ec, int) {
      if (ec) return;
      if (finishing_) {
        io_.stop();  // a second signal: do not wait for the disconnect
        return;
      }
      if (common_.debug) debug_line("signal received, disconnecting");
      interrupted();
      wait_signal();
    });
  }

  void on_connect_result(const client::ConnectResult& r) {
    if (finishing_) return;
    if (!r.ok()) {
      auto [code, message] = connect_failure(r, common_.options);
      if (r.retrying) {
        error_line(common_.command, message + "; retrying");
        return;
      }
      finish(code, message);
      return;
    }
    if (common_.debug && !r.tls.version.empty()) debug_line("TLS: " + tls_summary(r.tls));
    if (common_.debug)
      debug_line(std::string("received CONNACK (session present ") + (r.session_present ? "1" : "0") + ")");
    connected(r);
  }

  void on_lost(Error e, const std::string& detail) {
    if (finishing_) return;
    if (common_.options.reconnect.enabled) {
      error_line(common_.command, describe_lost(e, detail) + "; reconnecting");
      return;
    }
    finish(kLost, describe_lost(e, detail));
  }
};

// ---------------------------------------------------------------------------
// -l: a thread reads stdin (a terminal, a pipe or a file alike) and hands each
// line to the loop; it waits while too many messages are unacknowledged.

struct LineFeed {
  static constexpr std::size_t kMaxOutstanding = 1000;
  std::mutex mutex;
  std::condition_variable cv;
  bool closed = false;
  std::size_t outstanding = 0;
  asio::io_context* io = nullptr;
  std::function<void(std::string)> on_line;  // called on the loop
  std::function<void(int err)> on_eof;       // err: errno of a failed read, 0 at EOF

  // Runs on the loop's thread: one line handed over is finished with.
  void release() {
    std::lock_guard lock(mutex);
    if (outstanding > 0) --outstanding;
    cv.notify_all();
  }
  void close() {
    std::lock_guard lock(mutex);
    closed = true;
    cv.notify_all();
  }
  // Runs on the reader thread; false once the loop is gone.
  bool hand_over(std::string line) {
    std::unique_lock lock(mutex);
    cv.wait(lock, [&] { return closed || outstanding < kMaxOutstanding; });
    if (closed) return false;
    ++outstanding;
    asio::post(*io, [this, line = std::move(line)]() mutable {
      if (on_line) on_line(std::move(line));
    });
    return true;
  }
  void end(int err) {
    std::lock_guard lock(mutex);
    if (closed) return;
    asio::post(*io, [this, err] {
      if (on_eof) on_eof(err);
    });
  }
};

void read_lines(std::shared_ptr<LineFeed> feed) {
  std::string buf;
  char chunk[65536];
  for (;;) {
    const ssize_t n = ::read(STDIN_FILENO, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : 0;
      // As mosquitto_pub: a last line without a newline is still a message.
      if (!buf.empty() && !feed->hand_over(std::move(buf))) return;
      feed->end(err);
      return;
    }
    buf.append(chunk, static_cast<std::size_t>(n));
    std::size_t start = 0;
    for (;;) {
      const auto nl = buf.find('\n', start);
      if (nl == std::string::npos) break;
      if (!feed->hand_over(buf.substr(start, nl - start))) return;
      start = nl + 1;
    }
    buf.erase(0, start);
  }
}

class PubSession final : public Session {
 public:
  explicit PubSession(const PubArgs& a) : Session(a.common), a_(a) {}

 private:
  void connected(const client::ConnectResult&) override {
    if (started_) return;  // a reconnect: the library resends what is unacknowledged
    started_ = true;
    if (a_.source == Source::Lines) {
      feed_ = std::make_shared<LineFeed>();
      feed_->io = &io_;
      feed_->on_line = [this](std::string line) {
        if (finishing_) return;
        send(std::move(line), true);
      };
      feed_->on_eof = [this](int err) {
        if (finishing_) return;
        if (err != 0) return finish(kUsage, std::string("cannot read stdin: ") + std::strerror(err));
        input_done_ = true;
        maybe_done();
      };
      std::thread(read_lines, feed_).detach();
      return;
    }
    input_done_ = true;
    send(a_.payload, false);
  }

  void send(std::string payload, bool from_feed) {
    ++outstanding_;
    if (common_.debug)
      debug_line("sending PUBLISH (q" + std::to_string(static_cast<int>(a_.qos)) + ", r" +
                 (a_.retain ? "1" : "0") + ", " + quoted(a_.topic) + ", " + std::to_string(payload.size()) +
                 " bytes)");
    client_->publish(a_.topic, std::move(payload), a_.qos, a_.retain, [this, from_feed](Error e) {
      --outstanding_;
      if (from_feed && feed_) feed_->release();
      if (finishing_) return;
      if (e == Error::SealFailed)
        return finish(kUsage, "cannot seal for " + quoted(a_.topic) + ": " + client::to_string(e));
      if (e != Error::None) {
        const std::string why = e == Error::ConnectionLost ? "the connection was lost" : client::to_string(e);
        return finish(e == Error::InvalidArgument ? kUsage : kLost,
                      "publish to " + quoted(a_.topic) + " failed: " + why);
      }
      if (common_.debug) {
        if (a_.qos == client::QoS::AtMostOnce)
          debug_line("PUBLISH written (q0, " + quoted(a_.topic) + ")");
        else
          debug_line(std::string("received ") + (a_.qos == client::QoS::AtLeastOnce ? "PUBACK" : "PUBCOMP") +
                     " (q" + std::to_string(static_cast<int>(a_.qos)) + ", " + quoted(a_.topic) + ")");
      }
      maybe_done();
    });
  }

  void maybe_done() {
    if (input_done_ && outstanding_ == 0) finish(kOk, {});
  }

  void interrupted() override {
    if (outstanding_ == 0) return finish(kOk, {});
    finish(kLost,
           "interrupted with " + std::to_string(outstanding_) + " message(s) not acknowledged by the broker");
  }

  void stop_input() override {
    if (feed_) feed_->close();
  }

  const PubArgs& a_;
  std::shared_ptr<LineFeed> feed_;
  bool started_ = false;
  bool input_done_ = false;
  std::size_t outstanding_ = 0;
};

class SubSession final : public Session {
 public:
  explicit SubSession(const SubArgs& a) : Session(a.common), a_(a), deadline_(io_) {}

 private:
  void start() override {
    client_->on_message([this](const client::Message& m) { on_message(m); });
    client_->on_rejected([this](const client::Rejected& r) { on_rejected(r); });
    if (a_.timeout_s > 0) {
      // From the start, so that a broker that never answers is covered too.
      deadline_.expires_after(std::chrono::seconds(a_.timeout_s));
      deadline_.async_wait([this](const boost::system::error_code& ec) {
        if (ec) return;
        std::string what = "timed out after " + std::to_string(a_.timeout_s) + " s";
        if (a_.count > 0)
          what +=
              " (" + std::to_string(received_) + " of " + std::to_string(a_.count) + " messages received)";
        finish(kTimeout, what);
      });
    }
  }

  void connected(const client::ConnectResult&) override {
    // After a reconnect the library makes the subscriptions again when needed.
    if (subscribed_) return;
    subscribed_ = true;
    std::vector<client::Subscription> subs;
    for (const auto& f : a_.filters) {
      subs.push_back({f, a_.qos});
      if (common_.debug)
        debug_line("sending SUBSCRIBE (" + quoted(f) + ", q" + std::to_string(static_cast<int>(a_.qos)) +
                   ")");
    }
    client_->subscribe(std::move(subs), [this](Error e, const std::vector<std::uint8_t>& granted) {
      if (finishing_) return;
      if (e != Error::None) return finish(kLost, std::string("subscribe failed: ") + client::to_string(e));
      std::size_t refused = 0;
      for (std::size_t i = 0; i < a_.filters.size(); ++i) {
        const std::uint8_t code = i < granted.size() ? granted[i] : codec::kSubackFailure;
        if (code > 2) {
          ++refused;
          error_line(common_.command, "subscription to " + a_.filters[i] + " refused by the broker");
        } else if (common_.debug) {
          debug_line("subscribed to " + quoted(a_.filters[i]) + " (granted QoS " + std::to_string(code) +
                     ")");
        }
      }
      if (refused == a_.filters.size()) finish(kRefused, "every subscription was refused by the broker");
    });
  }

  void on_message(const client::Message& m) {
    if (finishing_) return;
    if (common_.debug)
      debug_line("received PUBLISH (q" + std::to_string(static_cast<int>(m.qos)) + ", r" +
                 (m.retain ? "1" : "0") + (m.dup ? ", d1" : "") + ", " + quoted(m.topic) + ", " +
                 std::to_string(m.payload.size()) + " bytes)");
    if (!wanted(m.topic, m.retain)) return;
    print_message(a_, m);
    ++received_;
    if (a_.count > 0 && received_ >= a_.count) finish(kOk, {});
  }

  // --open: not data. A tampered, replayed, moved or unknown envelope is reported, not printed.
  void on_rejected(const client::Rejected& r) {
    if (finishing_) return;
    if (common_.debug)
      debug_line("received PUBLISH (q" + std::to_string(static_cast<int>(r.qos)) + ", r" +
                 (r.retain ? "1" : "0") + ", " + quoted(r.topic) + ", " + std::to_string(r.payload.size()) +
                 " bytes), not opened");
    if (!wanted(r.topic, r.retain)) return;
    error_line("sub", quoted(r.topic) + ": " + r.reason);
  }

  bool wanted(const std::string& topic, bool retain) const {
    if (a_.no_retained && retain) return false;
    for (const auto& f : a_.filter_out)
      if (codec::topic_matches(f, topic)) return false;
    return true;
  }

  void stop_input() override { deadline_.cancel(); }

  const SubArgs& a_;
  asio::steady_timer deadline_;
  bool subscribed_ = false;
  std::size_t received_ = 0;
};

}  // namespace

int run_pub(const PubArgs& a) {
  PubSession s(a);
  return s.run();
}

int run_sub(const SubArgs& a) {
  SubSession s(a);
  return s.run();
}

}  // namespace moat::cli
