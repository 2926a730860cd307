// The IAM server's HTTP client: the one translation unit with Boost.Beast.
//
// Everything runs on the client's own io_context thread: requests are queued,
// each takes an idle keep-alive connection or opens one (up to pool_size), and
// waits otherwise. A connection that fails before an answer is closed; the
// request is tried again after a backoff while its deadline allows, or at once
// (not counted) when the failure was a kept-alive connection the server had
// closed meanwhile.
#include "security/http_client.hpp"

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace moat::security {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

using Time = HttpExchange::Time;

struct Request {
  std::string target;
  std::string body;
  Time deadline;
  HttpExchange::Done done;
  unsigned attempt = 0;                       // retries made so far
  bool stale_retry = false;                   // the free retry after a dead kept-alive connection was used
  std::unique_ptr<asio::steady_timer> timer;  // waiting for a connection, or backing off
};
using RequestPtr = std::shared_ptr<Request>;

void check_readable(const std::filesystem::path& p, const char* key) {
  std::ifstream in(p, std::ios::binary);
  if (!in)
    throw std::runtime_error(std::string("auth.http: ") + key + " '" + p.string() +
                             "': cannot open: " + std::strerror(errno));
}

bool is_address(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

}  // namespace

struct HttpClient::Impl : std::enable_shared_from_this<HttpClient::Impl> {
  struct Conn;
  using ConnPtr = std::shared_ptr<Conn>;

  Impl(HttpClientOptions o, asio::io_context& context) : opts(std::move(o)), io(context) {
    host_header =
        opts.server.host.find(':') != std::string::npos ? "[" + opts.server.host + "]" : opts.server.host;
    if (opts.server.port != (opts.server.tls ? 443 : 80))
      host_header += ":" + std::to_string(opts.server.port);
    verify_name = opts.server_name.empty() ? opts.server.host : opts.server_name;
    if (opts.server.tls) make_tls_context();
  }

  void make_tls_context() {
    tls.emplace(ssl::context::tls_client);
    SSL_CTX* ctx = tls->native_handle();
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    tls->set_verify_mode(ssl::verify_peer);
    error_code ec;
    if (opts.ca.empty()) {
      tls->set_default_verify_paths(ec);
      if (ec) throw std::runtime_error("auth.http: cannot load the system's trusted CAs: " + ec.message());
    } else {
      check_readable(opts.ca, "ca");
      tls->load_verify_file(opts.ca.string(), ec);
      if (ec) throw std::runtime_error("auth.http: ca '" + opts.ca.string() + "': " + ec.message());
    }
    if (!opts.cert.empty()) {
      check_readable(opts.cert, "cert");
      check_readable(opts.key, "key");
      tls->use_certificate_chain_file(opts.cert.string(), ec);
      if (ec) throw std::runtime_error("auth.http: cert '" + opts.cert.string() + "': " + ec.message());
      tls->use_private_key_file(opts.key.string(), ssl::context::pem, ec);
      if (ec) throw std::runtime_error("auth.http: key '" + opts.key.string() + "': " + ec.message());
      if (SSL_CTX_check_private_key(ctx) != 1)
        throw std::runtime_error("auth.http: key '" + opts.key.string() + "' does not match cert '" +
                                 opts.cert.string() + "'");
    }
  }

  // One connection to the server: plain or TLS, reused while the server keeps it alive.
  struct Conn : std::enable_shared_from_this<Conn> {
    Conn(Impl& i) : impl(i) {
      if (impl.tls)
        secure.emplace(impl.io, *impl.tls);
      else
        plain.emplace(impl.io);
    }
    beast::tcp_stream& lowest() { return secure ? secure->next_layer() : *plain; }
    template <typename F>
    void with_stream(F&& f) {
      if (secure)
        f(*secure);
      else
        f(*plain);
    }
    void close() {
      error_code ec;
      lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
      lowest().close();
    }

    Impl& impl;
    std::optional<beast::tcp_stream> plain;
    std::optional<beast::ssl_stream<beast::tcp_stream>> secure;
    std::optional<tcp::resolver> resolver;
    std::optional<asio::steady_timer> resolve_timer;  // a name lookup counts against connect_timeout
    bool connected = false;
    bool reused = false;  // served an exchange before this one
    beast::flat_buffer buffer;
    http::request<http::string_body> req;
    std::optional<http::response_parser<http::string_body>> parser;
    RequestPtr current;
  };

  // ---- the queue ----

  void enqueue(RequestPtr r) {
    if (stopping) return;
    if (waiting.size() >= opts.max_waiting)
      return complete(r, HttpResult{0, {}, "too many requests waiting"});
    waiting.push_back(r);
    // A request still waiting at its deadline is answered by pump() then.
    r->timer = std::make_unique<asio::steady_timer>(io, r->deadline);
    r->timer->async_wait([self = shared_from_this()](const error_code& ec) {
      if (!ec) self->pump();
    });
    pump();
  }

  void pump() {
    while (!waiting.empty() && !stopping) {
      RequestPtr r = waiting.front();
      if (r->deadline <= std::chrono::steady_clock::now()) {
        waiting.pop_front();
        complete(r, HttpResult{0, {}, "timed out waiting for a connection"});
        continue;
      }
      ConnPtr c;
      if (!idle.empty()) {
        c = std::move(idle.back());
        idle.pop_back();
      } else if (open < opts.pool_size) {
        c = std::make_shared<Conn>(*this);
        ++open;
      } else {
        return;  // every connection is busy: the next one to finish pumps
      }
      waiting.pop_front();
      if (r->timer) r->timer->cancel();
      start(c, std::move(r));
    }
  }

  void complete(const RequestPtr& r, HttpResult result) {
    if (r->timer) r->timer->cancel();
    auto done = std::move(r->done);
    r->done = nullptr;
    if (done) done(std::move(result));
  }

  // The exchange on `c` ended: keep or close the connection, then answer or retry.
  void finish(const ConnPtr& c, HttpResult result, bool keep, bool retryable, bool stale) {
    RequestPtr r = std::move(c->current);
    if (keep && !stopping) {
      c->reused = true;
      idle.push_back(c);
    } else {
      c->close();
      --open;
    }
    if (!stopping && retryable) {
      const auto now = std::chrono::steady_clock::now();
      if (stale && !r->stale_retry) {
        // The server closed a kept-alive connection while it was idle: that says
        // nothing about the server, so try again at once.
        r->stale_retry = true;
        waiting.push_front(r);
        pump();
        return;
      }
      if (r->attempt < opts.retries) {
        const auto backoff = opts.retry_backoff * (1u << std::min(r->attempt, 16u));
        if (now + backoff < r->deadline) {
          ++r->attempt;
          ++stats.retries;
          r->timer = std::make_unique<asio::steady_timer>(io, backoff);
          r->timer->async_wait([self = shared_from_this(), r](const error_code& ec) {
            if (!ec) self->enqueue(r);
          });
          pump();
          return;
        }
      }
    }
    complete(r, std::move(result));
    pump();
  }

  // ---- one exchange ----

  void start(const ConnPtr& c, RequestPtr r) {
    c->current = std::move(r);
    if (c->connected) return send(c);
    connect(c);
  }

  void connect(const ConnPtr& c) {
    ++stats.connections;
    const auto until =
        std::min(c->current->deadline, std::chrono::steady_clock::now() + opts.connect_timeout);
    c->lowest().expires_at(until);
    c->resolver.emplace(io);
    c->resolve_timer.emplace(io, until);
    c->resolve_timer->async_wait([c](const error_code& ec) {
      if (!ec) c->resolver->cancel();
    });
    c->resolver->async_resolve(
        opts.server.host, std::to_string(opts.server.port),
        [this, self = shared_from_this(), c](const error_code& ec, tcp::resolver::results_type results) {
          c->resolve_timer->cancel();
          if (stopping) return;
          if (ec)
            return finish(c,
                          fail("cannot resolve " + opts.server.host + ": " +
                               (ec == asio::error::operation_aborted ? "timed out" : ec.message())),
                          false, true, false);
          c->lowest().async_connect(results, [this, self, c](const error_code& cec, const tcp::endpoint&) {
            if (stopping) return;
            if (cec)
              return finish(c, fail("connect to " + opts.server.origin() + " failed: " + describe(cec)),
                            false, true, false);
            error_code ignored;
            c->lowest().socket().set_option(tcp::no_delay(true), ignored);
            if (!c->secure) {
              c->connected = true;
              return send(c);
            }
            handshake(c);
          });
        });
  }

  void handshake(const ConnPtr& c) {
    SSL* s = c->secure->native_handle();
    if (is_address(verify_name)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), verify_name.c_str());
    } else {
      // SSL_set_tlsext_host_name, without its C cast.
      SSL_ctrl(s, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
               const_cast<char*>(verify_name.c_str()));
      SSL_set1_host(s, verify_name.c_str());
    }
    c->secure->async_handshake(
        ssl::stream_base::client, [this, self = shared_from_this(), c](const error_code& ec) {
          if (stopping) return;
          if (ec) {
            const long v = SSL_get_verify_result(c->secure->native_handle());
            if (v != X509_V_OK) {
              // Not a passing failure: trying again would meet the same certificate.
              return finish(c,
                            fail("TLS to " + opts.server.origin() +
                                 ": certificate verify failed: " + X509_verify_cert_error_string(v)),
                            false, false, false);
            }
            return finish(c, fail("TLS handshake with " + opts.server.origin() + " failed: " + describe(ec)),
                          false, true, false);
          }
          c->connected = true;
          send(c);
        });
  }

  void send(const ConnPtr& c) {
    const Request& r = *c->current;
    ++stats.exchanges;
    if (c->reused) ++stats.reused;
    c->parser.reset();
    c->lowest().expires_at(r.deadline);
    c->req = {};
    c->req.method(http::verb::post);
    c->req.target(r.target);
    c->req.version(11);
    c->req.set(http::field::host, host_header);
    c->req.set(http::field::user_agent, opts.user_agent);
    c->req.set(http::field::content_type, "application/json");
    c->req.set(http::field::accept, "application/json");
    c->req.keep_alive(true);
    c->req.body() = r.body;
    c->req.prepare_payload();
    c->with_stream([&](auto& stream) {
      http::async_write(stream, c->req,
                        [this, self = shared_from_this(), c](const error_code& ec, std::size_t) {
                          if (stopping) return;
                          if (ec) return broken(c, ec);
                          receive(c);
                        });
    });
  }

  void receive(const ConnPtr& c) {
    c->parser.emplace();
    c->parser->body_limit(opts.max_response);
    c->with_stream([&](auto& stream) {
      http::async_read(stream, c->buffer, *c->parser,
                       [this, self = shared_from_this(), c](const error_code& ec, std::size_t) {
                         if (stopping) return;
                         if (ec) return broken(c, ec);
                         auto res = c->parser->release();
                         HttpResult out{static_cast<int>(res.result_int()), std::move(res.body()), {}};
                         const bool keep = res.keep_alive();
                         const bool busy = out.status == 502 || out.status == 503 || out.status == 504;
                         finish(c, std::move(out), keep, busy, false);
                       });
    });
  }

  // A write or read failed: a timeout ends the request; anything else was the
  // connection (closed, reset), which a retry may get past.
  void broken(const ConnPtr& c, const error_code& ec) {
    if (ec == beast::error::timeout)
      return finish(c, fail("no answer from " + opts.server.origin() + " in time"), false, false, false);
    if (ec == http::error::body_limit)
      return finish(c, fail("answer larger than " + std::to_string(opts.max_response) + " bytes"), false,
                    false, false);
    const bool stale = c->reused && (!c->parser || !c->parser->got_some());
    finish(c, fail("connection to " + opts.server.origin() + " failed: " + describe(ec)), false, true, stale);
  }

  static HttpResult fail(std::string why) { return HttpResult{0, {}, std::move(why)}; }
  static std::string describe(const error_code& ec) {
    if (ec == beast::error::timeout) return "timed out";
    return ec.message();
  }

  const HttpClientOptions opts;
  std::string host_header;
  std::string verify_name;
  // Owned by the HttpClient, which destroys it last: the handlers still
  // pending then hold the last references to this Impl and its connections.
  asio::io_context& io;
  std::optional<ssl::context> tls;
  std::deque<RequestPtr> waiting;
  std::vector<ConnPtr> idle;
  std::size_t open = 0;
  bool stopping = false;
  struct Counters {
    std::atomic<std::uint64_t> connections{0}, exchanges{0}, reused{0}, retries{0};
  } stats;
};

struct HttpClient::Io {
  asio::io_context context{1};
};

HttpClient::HttpClient(HttpClientOptions options)
    : io_(std::make_unique<Io>()), impl_(std::make_shared<Impl>(std::move(options), io_->context)) {
  thread_ = std::thread([io = io_.get()] {
    auto guard = asio::make_work_guard(io->context);
    io->context.run();
  });
}

HttpClient::~HttpClient() {
  stop();
}

void HttpClient::post(std::string target, std::string body, Time deadline, Done done) {
  auto r = std::make_shared<Request>();
  r->target = std::move(target);
  r->body = std::move(body);
  r->deadline = deadline;
  r->done = std::move(done);
  asio::post(impl_->io, [impl = impl_, r] { impl->enqueue(r); });
}

void HttpClient::stop() {
  std::call_once(stopped_, [this] {
    auto closed = std::make_shared<std::promise<void>>();
    auto f = closed->get_future();
    asio::post(impl_->io, [impl = impl_, closed] {
      impl->stopping = true;
      for (auto& c : impl->idle) c->close();
      impl->idle.clear();
      impl->waiting.clear();
      closed->set_value();
    });
    (void)f.wait_for(std::chrono::seconds(5));  // a stopped io_context never runs it
    impl_->io.stop();
    if (thread_.joinable()) thread_.join();
  });
}

HttpClient::Stats HttpClient::stats() const {
  const auto& c = impl_->stats;
  return Stats{c.connections.load(), c.exchanges.load(), c.reused.load(), c.retries.load()};
}

}  // namespace moat::security
