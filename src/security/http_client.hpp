// An HTTP/1.1 client for the IAM server: JSON POSTs over a bounded pool of
// keep-alive connections to one server, TLS with certificate and host-name
// verification, connect timeouts, retries with exponential backoff for
// connection failures, all on one thread of its own (the broker's event loops
// only hand it requests). Boost.Beast stays in http_client.cpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "security/iam.hpp"

namespace moat::security {

struct HttpClientOptions {
  HttpUrl server;  // scheme, host and port (the target comes with each request)
  // https: the CAs trusted for the server's certificate (PEM; empty: the
  // system's trust store), the name the certificate must carry (empty: the
  // host of the URL; an IP address is checked against IP SANs), and an
  // optional client certificate with its key (PEM).
  std::filesystem::path ca;
  std::string server_name;
  std::filesystem::path cert;
  std::filesystem::path key;
  std::chrono::milliseconds connect_timeout{2'000};  // resolve, TCP connect and TLS handshake
  unsigned retries = 2;
  std::chrono::milliseconds retry_backoff{100};  // doubles with each retry
  std::size_t pool_size = 8;                     // connections open at most
  std::size_t max_waiting = 10'000;              // requests waiting for a connection; beyond: refused
  std::size_t max_response = 64 * 1024;          // response body bytes
  std::string user_agent = "moatd";
};

class HttpClient final : public HttpExchange {
 public:
  // Loads the TLS material and starts the client's thread. Throws
  // std::runtime_error naming the file and the reason.
  explicit HttpClient(HttpClientOptions options);
  ~HttpClient() override;  // stop()
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Thread-safe. `done` runs on the client's thread.
  void post(std::string target, std::string body, Time deadline, Done done) override;
  // Closes every connection and joins the thread; requests still open get no
  // answer. Idempotent; call it before the event loops that wait for answers go.
  void stop();

  struct Stats {
    std::uint64_t connections = 0;  // opened (TCP connect started)
    std::uint64_t exchanges = 0;    // requests written
    std::uint64_t reused = 0;       // ... on a connection kept alive from an earlier exchange
    std::uint64_t retries = 0;      // attempts after a connection failure or a 502/503/504
  };
  Stats stats() const;

  struct Impl;

 private:
  struct Io;
  // Declared first, destroyed last: destroying the io_context destroys the
  // handlers still pending, which release the Impl (and its sockets) while
  // the io_context's services still exist.
  std::unique_ptr<Io> io_;
  std::shared_ptr<Impl> impl_;
  std::thread thread_;
  std::once_flag stopped_;
};

}  // namespace moat::security
