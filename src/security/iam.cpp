#include "security/iam.hpp"

#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "codec/topic.hpp"
#include "security/defence.hpp"
#include "security/jwt.hpp"

namespace moat::security {

using json = nlohmann::json;

namespace {

constexpr auto kReportInterval = std::chrono::seconds(10);
constexpr std::size_t kMaxReason = 120;

bool host_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_';
}

// A reason from the IAM server goes into the log and the audit stream: short,
// printable ASCII only.
std::string clean_reason(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, kMaxReason)) out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  return out;
}

std::string describe_http(const HttpResult& r) {
  if (r.status == 0) return r.error.empty() ? std::string("no response") : r.error;
  return "HTTP status " + std::to_string(r.status);
}

// Length-prefixed fields, so that ("ab", "c") and ("a", "bc") differ.
void field(std::string& buf, std::string_view v) {
  const auto n = static_cast<std::uint32_t>(v.size());
  buf.append(reinterpret_cast<const char*>(&n), sizeof n);
  buf.append(v);
}
void field(std::string& buf, std::optional<std::string_view> v) {
  buf.push_back(v ? '\1' : '\0');
  if (v) field(buf, *v);
}

}  // namespace

// ---- URLs ----

std::optional<HttpUrl> HttpUrl::parse(std::string_view text, std::string* why) {
  auto fail = [&](const std::string& reason) -> std::optional<HttpUrl> {
    if (why) *why = reason;
    return std::nullopt;
  };
  HttpUrl u;
  if (text.starts_with("https://")) {
    u.tls = true;
    text.remove_prefix(8);
  } else if (text.starts_with("http://")) {
    text.remove_prefix(7);
  } else {
    return fail("must start with http:// or https://");
  }
  const auto end = std::min(text.find_first_of("/?#"), text.size());
  std::string_view authority = text.substr(0, end);
  std::string_view rest = text.substr(end);
  if (authority.find('@') != std::string_view::npos)
    return fail("user names and passwords do not belong in the URL");
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return fail("unclosed '[' in the host");
    u.host = std::string(authority.substr(1, close - 1));
    if (u.host.empty() || u.host.find_first_not_of("0123456789abcdefABCDEF:.") != std::string::npos)
      return fail("'" + u.host + "' is not an IPv6 address");
    const auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return fail("unexpected characters after ']'");
      port = after.substr(1);
      if (port.empty()) return fail("empty port");
    }
  } else {
    const auto colon = authority.find(':');
    u.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
      if (port.empty()) return fail("empty port");
    }
    if (u.host.empty()) return fail("no host");
    if (!std::all_of(u.host.begin(), u.host.end(), host_char))
      return fail("'" + u.host + "' is not a host name or address");
  }
  u.port = u.tls ? 443 : 80;
  if (!port.empty()) {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos)
      return fail("'" + std::string(port) + "' is not a port number");
    const unsigned long p = std::stoul(std::string(port));
    if (p == 0 || p > 65535) return fail("port " + std::string(port) + " is out of range (1-65535)");
    u.port = static_cast<std::uint16_t>(p);
  }
  if (!rest.empty() && rest.front() == '#') return fail("a fragment ('#') means nothing to a server");
  if (rest.find('#') != std::string_view::npos) return fail("a fragment ('#') means nothing to a server");
  for (char c : rest)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
      return fail("spaces and control characters must be %-encoded");
  u.target = rest.empty() ? "/" : (rest.front() == '?' ? "/" + std::string(rest) : std::string(rest));
  return u;
}

std::string HttpUrl::origin() const {
  const bool v6 = host.find(':') != std::string::npos;
  return std::string(tls ? "https://" : "http://") + (v6 ? "[" + host + "]" : host) + ":" +
         std::to_string(port);
}

// ---- request and answer bodies ----

std::string iam_authentication_request(const ConnectInfo& info, bool send_password) {
  json j;
  j["request"] = "authenticate";
  j["listener"] = info.listener;
  j["peer_address"] = peer_address(info.peer);
  j["client_id"] = info.client_id;
  if (info.username) j["username"] = *info.username;
  j["password_present"] = info.password.has_value();
  if (send_password && info.password) j["password"] = *info.password;
  if (!info.certificate_subject.empty() || !info.certificate_fingerprint.empty()) {
    json c;
    c["subject"] = info.certificate_subject;
    c["fingerprint_sha256"] = info.certificate_fingerprint;
    if (!info.certificate_identity.empty()) c["identity"] = info.certificate_identity;
    j["certificate"] = std::move(c);
  }
  if (!info.psk_identity.empty()) j["psk_identity"] = info.psk_identity;
  // Strings from clients may be any bytes (a password need not be UTF-8):
  // invalid sequences are replaced rather than refused.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string iam_authorization_request(const Identity& who, Action action, std::string_view topic) {
  json j;
  j["request"] = "authorize";
  j["username"] = who.username;
  j["client_id"] = who.client_id;
  j["action"] = to_string(action);
  j["topic"] = topic;
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

// The identity an answer without "identity" admits: the user name, else the
// TLS identity.
std::string default_identity(const ConnectInfo& info) {
  if (info.username) return std::string(*info.username);
  if (!info.certificate_identity.empty()) return std::string(info.certificate_identity);
  return std::string(info.psk_identity);
}

std::variant<AuthResult, std::string> parse_authentication(const HttpResult& r, const std::string& fallback) {
  AuthResult a;
  a.method = "http";
  if (r.status == 401 || r.status == 403) {
    // Status codes alone are an answer too (servers written for other brokers).
    a.decision = r.status == 401 ? AuthDecision::BadCredentials : AuthDecision::NotAuthorized;
    a.reason = r.status == 401 ? "IAM: bad credentials (HTTP 401)" : "IAM: not authorized (HTTP 403)";
    return a;
  }
  if (r.status < 200 || r.status > 299) return describe_http(r);
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::string("answer is not a JSON object");
  const auto result = j.find("result");
  if (result == j.end() || !result->is_string()) return std::string("answer has no \"result\" string");
  const std::string verdict = result->get<std::string>();
  std::string reason;
  if (auto it = j.find("reason"); it != j.end() && it->is_string())
    reason = clean_reason(it->get<std::string>());
  auto with_reason = [&](std::string base) { return reason.empty() ? base : base + ": " + reason; };
  if (verdict == "deny") {
    a.decision = AuthDecision::NotAuthorized;
    a.reason = with_reason("IAM: not authorized");
    return a;
  }
  if (verdict == "bad_credentials") {
    a.decision = AuthDecision::BadCredentials;
    a.reason = with_reason("IAM: bad credentials");
    return a;
  }
  if (verdict == "next") {
    a.decision = AuthDecision::Continue;
    return a;
  }
  if (verdict != "allow")
    return "\"result\" is '" + clean_reason(verdict) + "', not allow, deny, bad_credentials or next";
  a.decision = AuthDecision::Allow;
  a.identity = fallback;
  if (auto it = j.find("identity"); it != j.end()) {
    if (!it->is_string()) return std::string("\"identity\" is not a string");
    a.identity = it->get<std::string>();
    if (a.identity.empty() || a.identity.size() > 65535 ||
        codec::check_utf8(a.identity) != codec::ProtocolError::None)
      return std::string("\"identity\" is empty, too long or not UTF-8");
  }
  if (auto it = j.find("superuser"); it != j.end()) {
    if (!it->is_boolean()) return std::string("\"superuser\" is not true or false");
    a.superuser = it->get<bool>();
  }
  if (auto it = j.find("acl"); it != j.end()) {
    try {
      a.acl = parse_acl_claim(it->dump());
    } catch (const std::invalid_argument& e) {
      return std::string("malformed \"acl\": ") + e.what();
    }
    a.acl_only = true;
    if (auto m = j.find("acl_mode"); m != j.end()) {
      if (!m->is_string() || (*m != "replace" && *m != "prepend"))
        return std::string("\"acl_mode\" is not \"replace\" or \"prepend\"");
      a.acl_only = *m == "replace";
    }
  }
  return a;
}

}  // namespace

std::variant<AuthResult, std::string> parse_iam_authentication(const HttpResult& r, const ConnectInfo& info) {
  return parse_authentication(r, default_identity(info));
}

std::variant<Decision, std::string> parse_iam_authorization(const HttpResult& r) {
  if (r.status == 401 || r.status == 403) return Decision::Deny;
  if (r.status < 200 || r.status > 299) return describe_http(r);
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::string("answer is not a JSON object");
  const auto result = j.find("result");
  if (result == j.end() || !result->is_string()) return std::string("answer has no \"result\" string");
  if (*result == "allow") return Decision::Allow;
  if (*result == "deny") return Decision::Deny;
  return "\"result\" is '" + clean_reason(result->get<std::string>()) + "', not allow or deny";
}

// ---- caches ----

// Entries by key with an expiry, least recently used first out when full, and
// the callers waiting for an exchange in flight per key.
template <typename V>
struct Iam::Cache {
  struct KeyHash {
    std::size_t operator()(const Key& k) const noexcept {
      std::size_t h = 0;
      std::memcpy(&h, k.data(), sizeof h);  // already uniformly distributed (HMAC)
      return h;
    }
  };
  struct Entry {
    V value;
    Time expires;
    typename std::list<Key>::iterator lru;
  };
  using Waiter = std::function<void(const V&, Time expires)>;

  explicit Cache(std::size_t max_entries) : max(std::max<std::size_t>(max_entries, 1)) {}

  const Entry* find(const Key& k, Time now) {
    auto it = entries.find(k);
    if (it == entries.end()) return nullptr;
    if (it->second.expires <= now) {
      order.erase(it->second.lru);
      entries.erase(it);
      return nullptr;
    }
    order.splice(order.begin(), order, it->second.lru);
    return &it->second;
  }
  void put(const Key& k, V value, Time expires) {
    if (auto it = entries.find(k); it != entries.end()) {
      it->second.value = std::move(value);
      it->second.expires = expires;
      order.splice(order.begin(), order, it->second.lru);
      return;
    }
    while (entries.size() >= max) {
      entries.erase(order.back());
      order.pop_back();
    }
    order.push_front(k);
    entries.emplace(k, Entry{std::move(value), expires, order.begin()});
  }

  const std::size_t max;
  std::list<Key> order;  // most recently used first
  std::unordered_map<Key, Entry, KeyHash> entries;
  std::unordered_map<Key, std::vector<Waiter>, KeyHash> waiting;
};

Iam::Iam(IamConfig config, std::shared_ptr<HttpExchange> auth, std::shared_ptr<HttpExchange> authz,
         ErrorLog log, Clock now)
    : config_(std::move(config)),
      log_(std::move(log)),
      now_(std::move(now)),
      authn_(std::make_unique<Cache<AuthResult>>(config_.cache_size)),
      authz_(std::make_unique<Cache<Decision>>(config_.cache_size)),
      auth_http_(std::move(auth)),
      authz_http_(std::move(authz)) {
  if (RAND_bytes(hmac_key_.data(), static_cast<int>(hmac_key_.size())) != 1)
    throw std::runtime_error("auth.http: no random bytes for the cache key");
}

Iam::~Iam() = default;

Iam::Key Iam::authentication_key(const ConnectInfo& info) const {
  std::string buf;
  buf.reserve(256);
  buf.push_back('A');
  field(buf, info.listener);
  field(buf, peer_address(info.peer));
  field(buf, info.client_id);
  field(buf, info.username);
  // Only what the server sees: with presence alone its answer cannot depend
  // on the password's value.
  if (config_.send_password)
    field(buf, info.password);
  else
    buf.push_back(info.password ? '\1' : '\0');
  field(buf, info.certificate_subject);
  field(buf, info.certificate_fingerprint);
  field(buf, info.certificate_identity);
  field(buf, info.psk_identity);
  Key k{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), hmac_key_.data(), static_cast<int>(hmac_key_.size()),
       reinterpret_cast<const unsigned char*>(buf.data()), buf.size(), k.data(), &len);
  return k;
}

Iam::Key Iam::authorization_key(const Identity& who, Action action, std::string_view topic) const {
  std::string buf;
  buf.reserve(16 + who.username.size() + who.client_id.size() + topic.size());
  buf.push_back('Z');
  buf.push_back(static_cast<char>(action));
  field(buf, who.username);
  field(buf, who.client_id);
  field(buf, topic);
  Key k{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), hmac_key_.data(), static_cast<int>(hmac_key_.size()),
       reinterpret_cast<const unsigned char*>(buf.data()), buf.size(), k.data(), &len);
  return k;
}

void Iam::report(const std::string& what) {
  if (!log_) return;
  std::uint64_t suppressed = 0;
  {
    std::lock_guard lock(mu_);
    const Time now = now_();
    if (last_report_ != Time{} && now - last_report_ < kReportInterval) {
      ++unreported_;
      return;
    }
    last_report_ = now;
    suppressed = unreported_;
    unreported_ = 0;
  }
  log_(suppressed ? what + " (" + std::to_string(suppressed) + " more IAM errors since the last report)"
                  : what);
}

void Iam::authenticate(const ConnectInfo& info, Authenticator::Done done) {
  const Key key = authentication_key(info);
  {
    std::unique_lock lock(mu_);
    if (const auto* e = authn_->find(key, now_())) {
      ++stats_.cache_hits;
      AuthResult copy = e->value;
      lock.unlock();
      return done(std::move(copy));
    }
    auto [it, first] = authn_->waiting.try_emplace(key);
    it->second.push_back([done = std::move(done)](const AuthResult& r, Time) { done(r); });
    if (!first) {
      ++stats_.joined;
      return;
    }
    ++stats_.requests;
  }
  const std::string fallback = default_identity(info);
  const Time deadline = now_() + config_.timeout;
  auth_http_->post(config_.url.target, iam_authentication_request(info, config_.send_password), deadline,
                   [this, key, fallback](HttpResult r) {
                     auto parsed = parse_authentication(r, fallback);
                     AuthResult result;
                     bool answer = false;
                     if (auto* a = std::get_if<AuthResult>(&parsed)) {
                       result = std::move(*a);
                       answer = true;
                     } else {
                       const std::string& why = std::get<std::string>(parsed);
                       report("IAM server " + config_.url.origin() + ": authentication: " + why);
                       result.method = "http";
                       result.decision =
                           config_.on_error_next ? AuthDecision::Continue : AuthDecision::Unavailable;
                       result.reason = "IAM server unavailable: " + why;
                     }
                     std::vector<Cache<AuthResult>::Waiter> waiters;
                     const Time now = now_();
                     {
                       std::lock_guard lock(mu_);
                       if (!answer) ++stats_.errors;
                       const auto ttl = result.decision == AuthDecision::Allow ? config_.cache_ttl
                                                                               : config_.cache_negative_ttl;
                       if (answer && ttl.count() > 0) authn_->put(key, result, now + ttl);
                       if (auto it = authn_->waiting.find(key); it != authn_->waiting.end()) {
                         waiters = std::move(it->second);
                         authn_->waiting.erase(it);
                       }
                     }
                     for (auto& w : waiters) w(result, now);
                   });
}

std::optional<RemoteAuthorizer::Answer> Iam::cached(const Identity& who, Action action,
                                                    std::string_view topic, Time now) {
  const Key key = authorization_key(who, action, topic);
  std::lock_guard lock(mu_);
  if (const auto* e = authz_->find(key, now)) {
    ++stats_.cache_hits;
    return Answer{e->value, e->expires};
  }
  return std::nullopt;
}

void Iam::ask(const Identity& who, Action action, std::string_view topic, Done done) {
  if (!authz_http_) return done(Answer{Decision::Deny, now_()});
  const Key key = authorization_key(who, action, topic);
  {
    std::unique_lock lock(mu_);
    if (const auto* e = authz_->find(key, now_())) {
      ++stats_.cache_hits;
      const Answer a{e->value, e->expires};
      lock.unlock();
      return done(a);
    }
    auto [it, first] = authz_->waiting.try_emplace(key);
    // An error reaches the waiters with expires = Time{} (see below).
    it->second.push_back([done = std::move(done)](const Decision& d, Time expires) {
      done(Answer{d, expires, expires == Time{}});
    });
    if (!first) {
      ++stats_.joined;
      return;
    }
    ++stats_.requests;
  }
  const HttpUrl& url = config_.authorize_url ? *config_.authorize_url : config_.url;
  const Time deadline = now_() + config_.timeout;
  authz_http_->post(url.target, iam_authorization_request(who, action, topic), deadline,
                    [this, key, origin = url.origin()](HttpResult r) {
                      auto parsed = parse_iam_authorization(r);
                      Decision d = Decision::Deny;  // an error denies: fail closed
                      const Time now = now_();
                      Time expires = now;  // ... and is not kept
                      if (auto* x = std::get_if<Decision>(&parsed)) {
                        d = *x;
                        expires =
                            now + (d == Decision::Allow ? config_.cache_ttl : config_.cache_negative_ttl);
                      } else {
                        report("IAM server " + origin + ": authorization: " + std::get<std::string>(parsed));
                      }
                      std::vector<Cache<Decision>::Waiter> waiters;
                      {
                        std::lock_guard lock(mu_);
                        if (!std::holds_alternative<Decision>(parsed)) ++stats_.errors;
                        if (expires > now) authz_->put(key, d, expires);
                        if (auto it = authz_->waiting.find(key); it != authz_->waiting.end()) {
                          waiters = std::move(it->second);
                          authz_->waiting.erase(it);
                        }
                      }
                      // Time{} tells the waiters that no decision was made.
                      const bool failed = !std::holds_alternative<Decision>(parsed);
                      for (auto& w : waiters) w(d, failed ? Time{} : expires);
                    });
}

Iam::Stats Iam::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

AuthResult IamAuthenticator::authenticate(const ConnectInfo& info) {
  std::promise<AuthResult> p;
  auto f = p.get_future();
  iam_->authenticate(info, [&p](AuthResult r) { p.set_value(std::move(r)); });
  return f.get();
}

void IamAuthenticator::authenticate_async(const ConnectInfo& info, Done done) {
  iam_->authenticate(info, std::move(done));
}

}  // namespace moat::security
