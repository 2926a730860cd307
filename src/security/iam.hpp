// The IAM server over HTTP: authentication (`auth = ["http"]`) and, with
// `[auth.http] authorize = true`, the decision for each publish and subscribe
// the local rules leave open. Decisions are cached with a TTL, concurrent
// requests for the same decision share one HTTP exchange, and errors fail
// closed. docs/security.md, "IAM server over HTTP", has the JSON of the
// requests and answers.
//
// This file is sans-I/O: the HTTP exchange is an interface (HttpExchange),
// implemented with Boost.Beast in http_client.cpp and by a fake in the tests;
// time comes from a clock passed in.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "security/acl.hpp"
#include "security/authn.hpp"

namespace moat::security {

// "http://host[:port]/path" or "https://...". The host is a name, an IPv4
// address or a bracketed IPv6 address.
struct HttpUrl {
  bool tls = false;
  std::string host;  // IPv6 without brackets
  std::uint16_t port = 0;
  std::string target;  // path and query; "/" at least
  // nullopt when malformed, with the reason in `why`.
  static std::optional<HttpUrl> parse(std::string_view text, std::string* why = nullptr);
  std::string origin() const;  // "https://host:port"
};

// [auth.http] in moat.toml.
struct IamConfig {
  HttpUrl url;  // authentication, and authorization unless authorize_url is set
  bool authorize = false;
  std::optional<HttpUrl> authorize_url;
  // TLS to the IAM server (https URLs): the CAs trusted for its certificate
  // (empty: the system's trust store), the name it must carry (empty: the
  // URL's host), and an optional client certificate that identifies moatd.
  std::filesystem::path ca;
  std::string server_name;
  std::filesystem::path cert;
  std::filesystem::path key;
  std::chrono::milliseconds connect_timeout{2'000};      // TCP connect and TLS handshake, per attempt
  std::chrono::milliseconds timeout{5'000};              // one decision, retries included
  unsigned retries = 2;                                  // further attempts after a connection failure
  std::chrono::milliseconds retry_backoff{100};          // before the first retry; doubles
  std::size_t pool_size = 8;                             // connections kept open per server
  std::chrono::milliseconds cache_ttl{60'000};           // allow; 0 = not cached
  std::chrono::milliseconds cache_negative_ttl{10'000};  // deny and bad credentials
  std::size_t cache_size = 100'000;                      // entries per cache (authentication, authorization)
  bool on_error_next = false;  // on_error = "next": an unreachable IAM passes the client on
  bool send_password = false;  // send_password = "value": the password itself, not only its presence
  bool insecure_password_over_http = false;  // allows send_password = "value" with an http:// URL
};

// One HTTP exchange's outcome: a response (status != 0) or why there was none.
struct HttpResult {
  int status = 0;
  std::string body;
  std::string error;  // "connection refused", "timed out", "certificate verify failed: ...", ...
};

// POSTs JSON to one HTTP server. Implemented with Boost.Beast (HttpClient in
// http_client.hpp) and by fakes in tests.
class HttpExchange {
 public:
  using Time = std::chrono::steady_clock::time_point;
  using Done = std::function<void(HttpResult)>;
  virtual ~HttpExchange() = default;
  // Sends `body` to `target` (path) and calls `done` once, from any thread,
  // with the response or the error. Connection failures are retried while
  // `deadline` allows; past it the result is a timeout.
  virtual void post(std::string target, std::string body, Time deadline, Done done) = 0;
};

// The JSON bodies (exposed for the tests and the documentation's examples).
std::string iam_authentication_request(const ConnectInfo& info, bool send_password);
std::string iam_authorization_request(const Identity& who, Action action, std::string_view topic);
// The answer to an authentication request: the result (Continue for "next"),
// or why the response is not an answer (an error: on_error applies).
std::variant<AuthResult, std::string> parse_iam_authentication(const HttpResult& r, const ConnectInfo& info);
// The answer to an authorization request, or why it is not one.
std::variant<Decision, std::string> parse_iam_authorization(const HttpResult& r);

// The client of one IAM configuration: both caches and the requests in flight.
// Thread-safe. It is the broker's RemoteAuthorizer; IamAuthenticator puts it in
// an authentication chain.
class Iam final : public RemoteAuthorizer {
 public:
  using Clock = std::function<Time()>;
  using ErrorLog = std::function<void(const std::string&)>;

  // `authz` may be the same exchange as `auth` (one server) or null when
  // authorization is off. `log` receives IAM errors, at most one line per 10 s
  // (with the number suppressed).
  Iam(
      IamConfig config, std::shared_ptr<HttpExchange> auth, std::shared_ptr<HttpExchange> authz,
      ErrorLog log = {}, Clock now = [] { return std::chrono::steady_clock::now(); });
  ~Iam() override;
  Iam(const Iam&) = delete;
  Iam& operator=(const Iam&) = delete;

  // Authentication: `done` once, from any thread (at once on a cache hit).
  // `info` needs to live only for the call.
  void authenticate(const ConnectInfo& info, Authenticator::Done done);

  // RemoteAuthorizer
  std::optional<Answer> cached(const Identity& who, Action action, std::string_view topic, Time now) override;
  void ask(const Identity& who, Action action, std::string_view topic, Done done) override;

  struct Stats {
    std::uint64_t requests = 0;    // HTTP exchanges started
    std::uint64_t cache_hits = 0;  // decisions answered from a cache
    std::uint64_t joined = 0;      // decisions that waited for an exchange already in flight
    std::uint64_t errors = 0;      // exchanges that gave no answer
  };
  Stats stats() const;
  const IamConfig& config() const { return config_; }

  // Cache keys: HMAC-SHA-256 under a key drawn at start-up over every field a
  // decision depends on, so a cache holds no password (nor anything else) in
  // clear. Exposed for the tests.
  using Key = std::array<std::uint8_t, 32>;
  Key authentication_key(const ConnectInfo& info) const;
  Key authorization_key(const Identity& who, Action action, std::string_view topic) const;

 private:
  template <typename V>
  struct Cache;
  void report(const std::string& what);

  const IamConfig config_;
  const ErrorLog log_;
  const Clock now_;
  std::array<std::uint8_t, 32> hmac_key_{};
  mutable std::mutex mu_;
  std::unique_ptr<Cache<AuthResult>> authn_;
  std::unique_ptr<Cache<Decision>> authz_;
  Stats stats_;
  Time last_report_{};
  std::uint64_t unreported_ = 0;
  std::shared_ptr<HttpExchange> auth_http_;
  std::shared_ptr<HttpExchange> authz_http_;
};

// "http" in a listener's auth: asks the IAM server (Mode::Asynchronous).
class IamAuthenticator final : public Authenticator {
 public:
  explicit IamAuthenticator(std::shared_ptr<Iam> iam) : iam_(std::move(iam)) {}
  std::string_view name() const override { return "http"; }
  Mode mode() const override { return Mode::Asynchronous; }
  // Synchronous use (AuthChain::authenticate in tools and tests): waits.
  AuthResult authenticate(const ConnectInfo& info) override;
  void authenticate_async(const ConnectInfo& info, Done done) override;

 private:
  std::shared_ptr<Iam> iam_;
};

}  // namespace moat::security
