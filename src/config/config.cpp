#include "config/config.hpp"

#include <fmt/format.h>

#include <toml++/toml.h>
#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "codec/decoder.hpp"
#include "codec/topic.hpp"
#include "security/authn.hpp"

namespace moat::config {
namespace {

// Builds "file:line:col: key: reason" messages for one source file.
class Reporter {
 public:
  explicit Reporter(std::filesystem::path source) : source_(std::move(source)) {}

  [[noreturn]] void fail(const toml::source_region& where, std::string_view key,
                         std::string_view reason) const {
    throw ConfigError(
        fmt::format("{}:{}:{}: {}: {}", source_.string(), where.begin.line, where.begin.column, key, reason));
  }
  [[noreturn]] void fail_at(const toml::node& n, std::string_view key, std::string_view reason) const {
    fail(n.source(), key, reason);
  }

 private:
  std::filesystem::path source_;
};

// Rejects every key of `t` that is not in `allowed`: a misspelt key is an error,
// never silently ignored.
void only_keys(const Reporter& r, const toml::table& t, std::string_view section,
               std::initializer_list<std::string_view> allowed) {
  for (const auto& [k, v] : t) {
    if (std::find(allowed.begin(), allowed.end(), k.str()) == allowed.end()) {
      std::string list;
      for (auto a : allowed) list += fmt::format("{}{}", list.empty() ? "" : ", ", a);
      r.fail_at(v, section.empty() ? std::string(k.str()) : fmt::format("{}.{}", section, k.str()),
                fmt::format("unknown key (known here: {})", list));
    }
  }
}

std::string qualified(std::string_view section, std::string_view key) {
  return fmt::format("{}.{}", section, key);
}

std::string get_string(const Reporter& r, const toml::table& t, std::string_view section,
                       std::string_view key, std::string fallback) {
  const toml::node* n = t.get(key);
  if (!n) return fallback;
  if (!n->is_string()) r.fail_at(*n, qualified(section, key), "must be a string");
  return std::string(*n->value<std::string_view>());
}

std::int64_t get_int(const Reporter& r, const toml::table& t, std::string_view section, std::string_view key,
                     std::int64_t fallback, std::int64_t lo, std::int64_t hi) {
  const toml::node* n = t.get(key);
  if (!n) return fallback;
  if (!n->is_integer()) r.fail_at(*n, qualified(section, key), "must be an integer");
  const auto v = *n->value<std::int64_t>();
  if (v < lo || v > hi)
    r.fail_at(*n, qualified(section, key), fmt::format("must be between {} and {}", lo, hi));
  return v;
}

double get_seconds(const Reporter& r, const toml::table& t, std::string_view section, std::string_view key,
                   double fallback, double lo, double hi) {
  const toml::node* n = t.get(key);
  if (!n) return fallback;
  if (!n->is_number()) r.fail_at(*n, qualified(section, key), "must be a number of seconds");
  const double v = *n->value<double>();
  if (!(v >= lo && v <= hi))
    r.fail_at(*n, qualified(section, key), fmt::format("must be between {} and {} seconds", lo, hi));
  return v;
}

bool get_bool(const Reporter& r, const toml::table& t, std::string_view section, std::string_view key,
              bool fallback) {
  const toml::node* n = t.get(key);
  if (!n) return fallback;
  if (!n->is_boolean()) r.fail_at(*n, qualified(section, key), "must be true or false");
  return *n->value<bool>();
}

const toml::table* get_table(const Reporter& r, const toml::table& root, std::string_view key) {
  const toml::node* n = root.get(key);
  if (!n) return nullptr;
  if (!n->is_table()) r.fail_at(*n, key, "must be a table ([" + std::string(key) + "])");
  return n->as_table();
}

void one_of(const Reporter& r, const toml::table& t, std::string_view section, std::string_view key,
            const std::string& value, std::initializer_list<std::string_view> allowed) {
  if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return;
  std::string list;
  for (auto a : allowed) list += fmt::format("{}{}", list.empty() ? "" : " | ", a);
  r.fail_at(*t.get(key), qualified(section, key), fmt::format("'{}' is not one of: {}", value, list));
}

std::filesystem::path get_path(const Reporter& r, const toml::table& t, std::string_view section,
                               std::string_view key, const std::filesystem::path& dir) {
  const std::string v = get_string(r, t, section, key, "");
  if (t.get(key) && v.empty()) r.fail_at(*t.get(key), qualified(section, key), "must not be empty");
  if (v.empty()) return {};
  std::filesystem::path p(v);
  return p.is_relative() ? dir / p : p;
}

// A server name as the SNI match takes it: an exact DNS name ("broker.example")
// or a wildcard for one leftmost label ("*.example.com"). Why it is not one, or "".
std::string sni_hostname_problem(std::string_view h) {
  if (h.empty()) return "must not be empty";
  if (h.size() > 253) return "longer than 253 characters";
  std::string_view rest = h;
  if (h.substr(0, 2) == "*.") rest = h.substr(2);
  if (rest.find('.') == std::string_view::npos && h.substr(0, 2) == "*.")
    return "a wildcard needs at least two labels after \"*.\" (\"*.example.com\")";
  std::size_t label = 0;
  for (std::size_t i = 0; i < rest.size(); ++i) {
    const char ch = rest[i];
    if (ch == '.') {
      if (label == 0) return "empty label";
      label = 0;
      continue;
    }
    if (ch == '*') return "'*' only as the whole leftmost label (\"*.example.com\")";
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                    ch == '-' || ch == '_';
    if (!ok) return fmt::format("'{}' is not allowed in a host name", ch);
    if (++label > 63) return "a label is longer than 63 characters";
  }
  if (label == 0) return "empty label";
  return {};
}

// One [[listener.tls.sni]] table: a certificate chosen by the client's SNI.
security::TlsSniCert read_tls_sni(const Reporter& r, const toml::table& t, const std::string& sec,
                                  const std::filesystem::path& dir,
                                  const std::vector<security::TlsSniCert>& earlier) {
  only_keys(r, t, sec, {"hostname", "cert", "key", "key_password"});
  security::TlsSniCert s;
  if (!t.get("hostname")) r.fail(t.source(), sec, "needs hostname");
  s.hostname = get_string(r, t, sec, "hostname", "");
  if (const std::string why = sni_hostname_problem(s.hostname); !why.empty())
    r.fail_at(*t.get("hostname"), qualified(sec, "hostname"), fmt::format("'{}': {}", s.hostname, why));
  auto lower = [](std::string v) {
    for (char& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return v;
  };
  for (const auto& e : earlier)
    if (lower(e.hostname) == lower(s.hostname))
      r.fail_at(*t.get("hostname"), qualified(sec, "hostname"),
                fmt::format("'{}' is already the hostname of an earlier sni entry", s.hostname));
  s.cert = get_path(r, t, sec, "cert", dir);
  s.key = get_path(r, t, sec, "key", dir);
  if (s.cert.empty() || s.key.empty()) r.fail(t.source(), sec, "needs cert and key");
  s.key_password = get_string(r, t, sec, "key_password", "");
  return s;
}

security::TlsServerConfig read_tls(const Reporter& r, const toml::table& t, const std::string& sec,
                                   const std::filesystem::path& dir) {
  // More than 20 keys: clang-format would put one per line.
  // clang-format off
  only_keys(r, t, sec,
            {"cert", "key", "key_password", "ca", "ca_dir", "client_cert", "verify_depth", "crl", "crl_check",
             "min_version", "ciphers", "ciphersuites", "psk_file", "identity_from", "alpn", "psk_plain_suites",
             "ocsp_response", "reload_on_change", "sni", "session_tickets", "ticket_key_rotation"});
  // clang-format on
  security::TlsServerConfig c;
  c.cert = get_path(r, t, sec, "cert", dir);
  c.key = get_path(r, t, sec, "key", dir);
  c.key_password = get_string(r, t, sec, "key_password", "");
  c.ca = get_path(r, t, sec, "ca", dir);
  c.ca_dir = get_path(r, t, sec, "ca_dir", dir);
  c.psk_file = get_path(r, t, sec, "psk_file", dir);
  if (c.cert.empty() != c.key.empty()) r.fail(t.source(), sec, "cert and key go together");
  if (c.cert.empty() && c.psk_file.empty())
    r.fail(t.source(), sec, "needs cert and key (or psk_file for a PSK-only listener)");
  const std::string mode = get_string(r, t, sec, "client_cert", "none");
  if (t.get("client_cert")) one_of(r, t, sec, "client_cert", mode, {"none", "optional", "required"});
  c.client_cert = *security::parse_client_cert_mode(mode);
  if (c.client_cert != security::ClientCertMode::None && c.ca.empty() && c.ca_dir.empty())
    r.fail_at(*t.get("client_cert"), qualified(sec, "client_cert"), "client certificates need ca or ca_dir");
  c.verify_depth = static_cast<int>(get_int(r, t, sec, "verify_depth", c.verify_depth, 1, 16));
  if (const toml::node* n = t.get("crl")) {
    const toml::array* arr = n->as_array();
    if (!arr) r.fail_at(*n, qualified(sec, "crl"), "must be an array of file names");
    for (const auto& e : *arr) {
      if (!e.is_string()) r.fail_at(e, qualified(sec, "crl"), "file names are strings");
      std::filesystem::path p(*e.value<std::string_view>());
      c.crl.push_back(p.is_relative() ? dir / p : p);
    }
  }
  const std::string crl_check = get_string(r, t, sec, "crl_check", "leaf");
  if (t.get("crl_check")) one_of(r, t, sec, "crl_check", crl_check, {"leaf", "chain"});
  c.crl_check = *security::parse_crl_check(crl_check);
  c.min_version = get_string(r, t, sec, "min_version", c.min_version);
  if (t.get("min_version")) one_of(r, t, sec, "min_version", c.min_version, {"1.2", "1.3"});
  c.ciphers = get_string(r, t, sec, "ciphers", "");
  c.ciphersuites = get_string(r, t, sec, "ciphersuites", "");
  const std::string id = get_string(r, t, sec, "identity_from", "cn");
  if (t.get("identity_from"))
    one_of(r, t, sec, "identity_from", id, {"cn", "san-dns", "san-email", "san-uri", "subject", "psk"});
  c.identity_from = *security::parse_identity_from(id);
  c.psk_plain_suites = get_bool(r, t, sec, "psk_plain_suites", false);
  if (c.psk_plain_suites && c.psk_file.empty())
    r.fail_at(*t.get("psk_plain_suites"), qualified(sec, "psk_plain_suites"), "needs psk_file");
  c.ocsp_response = get_path(r, t, sec, "ocsp_response", dir);
  c.reload_on_change = get_bool(r, t, sec, "reload_on_change", true);
  if (!c.ocsp_response.empty() && c.cert.empty())
    r.fail_at(*t.get("ocsp_response"), qualified(sec, "ocsp_response"), "needs cert");
  if (const toml::node* n = t.get("alpn")) {
    const toml::array* arr = n->as_array();
    if (!arr) r.fail_at(*n, qualified(sec, "alpn"), "must be an array of protocol names");
    c.alpn.clear();
    for (const auto& e : *arr) {
      if (!e.is_string()) r.fail_at(e, qualified(sec, "alpn"), "protocol names are strings");
      c.alpn.emplace_back(*e.value<std::string_view>());
    }
  }
  c.session_tickets = get_bool(r, t, sec, "session_tickets", true);
  c.ticket_key_rotation = std::chrono::seconds(
      get_int(r, t, sec, "ticket_key_rotation", c.ticket_key_rotation.count(), 60, std::int64_t{7} * 86400));
  if (!c.session_tickets && t.get("ticket_key_rotation"))
    r.fail_at(*t.get("ticket_key_rotation"), qualified(sec, "ticket_key_rotation"),
              "needs session_tickets = true");
  if (const toml::node* n = t.get("sni")) {
    const toml::array* arr = n->as_array();
    if (!arr || !arr->is_array_of_tables())
      r.fail_at(*n, qualified(sec, "sni"), "must be [[listener.tls.sni]] tables");
    if (c.cert.empty()) r.fail_at(*n, qualified(sec, "sni"), "needs cert (the default certificate)");
    for (std::size_t i = 0; i < arr->size(); ++i)
      c.sni.push_back(
          read_tls_sni(r, *arr->get(i)->as_table(), fmt::format("{}.sni[{}]", sec, i), dir, c.sni));
  }
  return c;
}

// An array of strings; nullopt when the key is absent.
std::optional<std::vector<std::string>> get_strings(const Reporter& r, const toml::table& t,
                                                    std::string_view section, std::string_view key,
                                                    bool allow_single = false) {
  const toml::node* n = t.get(key);
  if (!n) return std::nullopt;
  std::vector<std::string> out;
  if (allow_single && n->is_string()) {
    out.emplace_back(*n->value<std::string_view>());
    return out;
  }
  const toml::array* arr = n->as_array();
  if (!arr)
    r.fail_at(*n, qualified(section, key),
              allow_single ? "must be a string or an array of strings" : "must be an array of strings");
  for (const auto& e : *arr) {
    if (!e.is_string()) r.fail_at(e, qualified(section, key), "must hold strings");
    out.emplace_back(*e.value<std::string_view>());
  }
  return out;
}

std::chrono::milliseconds get_millis(const Reporter& r, const toml::table& t, std::string_view section,
                                     std::string_view key, std::chrono::milliseconds fallback, double lo,
                                     double hi) {
  const double v = get_seconds(r, t, section, key, static_cast<double>(fallback.count()) / 1000.0, lo, hi);
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(v * 1000)));
}

// [auth.clientid] and [listener.clientid].
security::ClientIdRules::Spec read_clientid(const Reporter& r, const toml::table& t, const std::string& sec) {
  only_keys(r, t, sec, {"users", "others", "anonymous"});
  security::ClientIdRules::Spec spec;
  if (const toml::node* n = t.get("users")) {
    const toml::table* users = n->as_table();
    if (!users) r.fail_at(*n, qualified(sec, "users"), "must be a table of user name = [patterns]");
    for (const auto& [user, v] : *users) {
      const std::string key = qualified(sec, "users") + "." + std::string(user.str());
      const toml::array* arr = v.as_array();
      if (!arr) r.fail_at(v, key, "must be an array of client id patterns");
      std::vector<std::string> list;
      for (const auto& e : *arr) {
        if (!e.is_string()) r.fail_at(e, key, "patterns are strings");
        list.emplace_back(*e.value<std::string_view>());
      }
      spec.users.emplace(std::string(user.str()), std::move(list));
    }
  }
  spec.others = get_strings(r, t, sec, "others");
  spec.anonymous = get_strings(r, t, sec, "anonymous");
  try {
    security::ClientIdRules::make(spec);
  } catch (const std::invalid_argument& e) {
    r.fail(t.source(), sec, e.what());
  }
  return spec;
}

// [auth.jwt] and [listener.jwt].
security::JwtConfig read_jwt(const Reporter& r, const toml::table& t, const std::string& sec,
                             const std::filesystem::path& dir) {
  only_keys(r, t, sec,
            {"secret_file", "public_key", "jwks", "issuer", "audience", "leeway", "require_exp",
             "username_claim", "match_username", "acl_claim", "acl_mode"});
  security::JwtConfig j;
  j.secret_file = get_path(r, t, sec, "secret_file", dir);
  j.public_key = get_path(r, t, sec, "public_key", dir);
  j.jwks = get_path(r, t, sec, "jwks", dir);
  if (j.secret_file.empty() && j.public_key.empty() && j.jwks.empty())
    r.fail(t.source(), sec, "needs a key: secret_file (HS256), public_key (RS256/ES256) or jwks");
  j.issuer = get_string(r, t, sec, "issuer", "");
  if (auto a = get_strings(r, t, sec, "audience", true)) j.audience = *a;
  j.leeway = std::chrono::seconds(get_int(r, t, sec, "leeway", j.leeway.count(), 0, 3600));
  j.require_exp = get_bool(r, t, sec, "require_exp", j.require_exp);
  j.username_claim = get_string(r, t, sec, "username_claim", j.username_claim);
  if (j.username_claim.empty())
    r.fail_at(*t.get("username_claim"), qualified(sec, "username_claim"), "must not be empty");
  j.match_username = get_bool(r, t, sec, "match_username", j.match_username);
  j.acl_claim = get_string(r, t, sec, "acl_claim", j.acl_claim);
  const std::string mode = get_string(r, t, sec, "acl_mode", "replace");
  if (t.get("acl_mode")) one_of(r, t, sec, "acl_mode", mode, {"replace", "prepend"});
  j.acl_replace = mode == "replace";
  return j;
}

// The `allow` list of [auth.defence] and [listener.defence]; nullopt if absent.
std::optional<std::vector<security::Cidr>> read_allow(const Reporter& r, const toml::table& t,
                                                      const std::string& sec) {
  const auto list = get_strings(r, t, sec, "allow");
  if (!list) return std::nullopt;
  std::vector<security::Cidr> allow;
  const toml::array& arr = *t.get("allow")->as_array();
  for (std::size_t i = 0; i < list->size(); ++i) {
    auto cidr = security::Cidr::parse((*list)[i]);
    if (!cidr)
      r.fail_at(*arr.get(i), qualified(sec, "allow"),
                fmt::format("'{}' is not an address or CIDR block (\"10.0.0.0/8\", \"2001:db8::/32\")",
                            (*list)[i]));
    allow.push_back(*cidr);
  }
  return allow;
}

security::DefenceConfig read_defence(const Reporter& r, const toml::table& t) {
  const std::string sec = "auth.defence";
  only_keys(r, t, sec,
            {"enabled", "backoff_initial", "backoff_max", "window", "ban_after", "ban_time",
             "connection_rate", "connection_burst", "allow", "log_interval"});
  security::DefenceConfig d;
  d.enabled = get_bool(r, t, sec, "enabled", d.enabled);
  d.backoff_initial = get_millis(r, t, sec, "backoff_initial", d.backoff_initial, 0, 60);
  d.backoff_max = get_millis(r, t, sec, "backoff_max", d.backoff_max, 0, 300);
  if (d.backoff_max < d.backoff_initial)
    r.fail_at(t.get("backoff_max") ? *t.get("backoff_max") : *t.get("backoff_initial"),
              qualified(sec, "backoff_max"), "must not be below backoff_initial");
  d.window = std::chrono::seconds(get_int(r, t, sec, "window", d.window.count(), 1, 86400));
  d.ban_after = static_cast<std::uint32_t>(get_int(r, t, sec, "ban_after", d.ban_after, 0, 1'000'000));
  d.ban_time = std::chrono::seconds(get_int(r, t, sec, "ban_time", d.ban_time.count(), 1, 365 * 86400));
  d.connection_rate =
      static_cast<std::uint32_t>(get_int(r, t, sec, "connection_rate", d.connection_rate, 0, 1'000'000));
  d.connection_burst = static_cast<std::uint32_t>(
      get_int(r, t, sec, "connection_burst", std::max(d.connection_rate * 2, 1u), 1, 1'000'000));
  if (auto allow = read_allow(r, t, sec)) d.allow = std::move(*allow);
  d.log_interval = std::chrono::seconds(get_int(r, t, sec, "log_interval", d.log_interval.count(), 1, 86400));
  return d;
}

std::uint8_t parse_action(std::string_view a) {
  using security::Action;
  if (a == "publish") return static_cast<std::uint8_t>(Action::Publish);
  if (a == "subscribe") return static_cast<std::uint8_t>(Action::Subscribe);
  if (a == "receive") return static_cast<std::uint8_t>(Action::Receive);
  if (a == "all") return security::AclRule::kAll;
  return 0;
}

// [[acl.rule]] and [[listener.acl.rule]] (`key` names the array in errors):
// an ordered list, first match wins.
std::vector<security::OrderedRule> read_acl_rules(const Reporter& r, const toml::node& n,
                                                  const std::string& key = "acl.rule") {
  const toml::array* arr = n.as_array();
  if (!arr || !arr->is_array_of_tables())
    r.fail_at(n, key,
              key == "acl.rule" ? "must be an array of tables ([[acl.rule]])"
                                : "must be an array of tables ([[listener.acl.rule]])");
  std::vector<security::OrderedRule> rules;
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const toml::table& t = *arr->get(i)->as_table();
    const std::string sec = fmt::format("{}[{}]", key, i);
    only_keys(r, t, sec, {"permission", "action", "topic", "user", "clientid"});
    security::OrderedRule rule;
    rule.line = t.source().begin.line;
    if (!t.get("permission")) r.fail(t.source(), sec, "missing key 'permission' (\"allow\" or \"deny\")");
    const std::string perm = get_string(r, t, sec, "permission", "");
    one_of(r, t, sec, "permission", perm, {"allow", "deny"});
    rule.allow = perm == "allow";
    const auto actions = get_strings(r, t, sec, "action", true);
    if (!actions) r.fail(t.source(), sec, "missing key 'action' (publish | subscribe | receive | all)");
    for (const auto& a : *actions) {
      const auto bits = parse_action(a);
      if (bits == 0)
        r.fail_at(*t.get("action"), qualified(sec, "action"),
                  fmt::format("'{}' is not one of: publish | subscribe | receive | all", a));
      rule.actions |= bits;
    }
    if (!t.get("topic")) r.fail(t.source(), sec, "missing key 'topic'");
    rule.topic = get_string(r, t, sec, "topic", "");
    if (t.get("user")) rule.user = get_string(r, t, sec, "user", "");
    if (t.get("clientid")) rule.client_id = get_string(r, t, sec, "clientid", "");
    try {
      security::OrderedRules::make({rule});
    } catch (const std::invalid_argument& e) {
      std::string why = e.what();
      const auto colon = why.find(": ");
      r.fail(t.source(), sec, colon == std::string::npos ? why : why.substr(colon + 2));
    }
    rules.push_back(std::move(rule));
  }
  return rules;
}

// [[payload_policy]]: topic filters and what their payloads must carry.
std::vector<broker::PayloadPolicySpec> read_payload_policies(const Reporter& r, const toml::node& n,
                                                             const std::filesystem::path& source,
                                                             const std::filesystem::path& dir) {
  const toml::array* arr = n.as_array();
  if (!arr || !arr->is_array_of_tables())
    r.fail_at(n, "payload_policy", "must be an array of tables ([[payload_policy]])");
  auto at = [&](const toml::source_region& where) {
    return fmt::format("{}:{}:{}", source.string(), where.begin.line, where.begin.column);
  };
  std::vector<broker::PayloadPolicySpec> out;
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const toml::table& t = *arr->get(i)->as_table();
    const std::string sec = fmt::format("payload_policy[{}]", i);
    only_keys(r, t, sec, {"topic", "require", "keyring", "signers", "bind", "decrypt", "require_fresh"});
    broker::PayloadPolicySpec p;
    p.at = at(t.source());
    const auto topics = get_strings(r, t, sec, "topic", true);
    if (!topics || topics->empty())
      r.fail(t.source(), sec, "missing key 'topic' (a topic filter or an array of them)");
    for (const auto& f : *topics) {
      if (!codec::valid_topic_filter(f) || codec::check_utf8(f) != codec::ProtocolError::None)
        r.fail_at(*t.get("topic"), qualified(sec, "topic"),
                  fmt::format("'{}' is not a valid topic filter", f));
    }
    p.topics = *topics;
    if (!t.get("require")) r.fail(t.source(), sec, "missing key 'require' (mac | signature | encrypted)");
    const std::string req = get_string(r, t, sec, "require", "");
    one_of(r, t, sec, "require", req, {"mac", "signature", "encrypted"});
    p.require = req == "mac"         ? broker::PayloadRequirement::Mac
                : req == "signature" ? broker::PayloadRequirement::Signature
                                     : broker::PayloadRequirement::Encrypted;
    p.keyring = get_path(r, t, sec, "keyring", dir);
    if (const toml::node* k = t.get("keyring")) p.keyring_at = at(k->source());
    if (p.keyring.empty() && p.require != broker::PayloadRequirement::Encrypted)
      r.fail(t.source(), sec,
             fmt::format("require = \"{}\" needs a keyring = \"...\" with the keys that verify", req));
    if (const toml::node* sn = t.get("signers")) {
      p.signers_at = at(sn->source());
      const toml::table* st = sn->as_table();
      if (!st)
        r.fail_at(*sn, qualified(sec, "signers"),
                  "must be a table: { \"key id\" = \"identity\" or [identities] }");
      for (const auto& [kid, v] : *st) {
        const std::string key = qualified(sec, "signers") + "." + std::string(kid.str());
        std::vector<std::string> who;
        if (v.is_string()) {
          who.emplace_back(*v.value<std::string_view>());
        } else if (const toml::array* a = v.as_array(); a && !a->empty()) {
          for (const auto& e : *a) {
            if (!e.is_string()) r.fail_at(e, key, "identities are strings");
            who.emplace_back(*e.value<std::string_view>());
          }
        } else {
          r.fail_at(v, key, "must be an identity or a non-empty array of identities");
        }
        for (const auto& w : who)
          if (w.empty()) r.fail_at(v, key, "an identity must not be empty");
        p.signers.emplace(std::string(kid.str()), std::move(who));
      }
      if (p.signers.empty()) r.fail_at(*sn, qualified(sec, "signers"), "must name at least one key id");
    }
    p.bind = get_string(r, t, sec, "bind", "");
    if (const toml::node* b = t.get("bind")) {
      if (p.bind.empty()) r.fail_at(*b, qualified(sec, "bind"), "must not be empty");
      for (std::size_t k = 0; k < p.bind.size(); ++k) {
        if (p.bind[k] != '%') continue;
        if (k + 1 >= p.bind.size() || (p.bind[k + 1] != 'u' && p.bind[k + 1] != 'c' && p.bind[k + 1] != '%'))
          r.fail_at(*b, qualified(sec, "bind"), "only %u (identity), %c (client id) and %% may follow a %");
        ++k;
      }
      if (!p.signers.empty()) r.fail_at(*b, qualified(sec, "bind"), "give either signers or bind, not both");
    }
    if ((!p.signers.empty() || !p.bind.empty()) && p.require == broker::PayloadRequirement::Encrypted)
      r.fail_at(*t.get(p.signers.empty() ? "bind" : "signers"),
                qualified(sec, p.signers.empty() ? "bind" : "signers"),
                "binds MAC and signature keys to publishers: only with require = \"mac\" or \"signature\"");
    p.decrypt = get_bool(r, t, sec, "decrypt", false);
    if (const toml::node* d = t.get("decrypt")) {
      p.decrypt_at = at(d->source());
      if (p.decrypt && p.require != broker::PayloadRequirement::Encrypted)
        r.fail_at(*d, qualified(sec, "decrypt"), "only with require = \"encrypted\"");
      if (p.decrypt && p.keyring.empty())
        r.fail_at(*d, qualified(sec, "decrypt"),
                  "needs a keyring = \"...\" with the broker's decryption key");
    }
    p.require_fresh = get_bool(r, t, sec, "require_fresh", true);
    out.push_back(std::move(p));
  }
  return out;
}

// [auth.http] and [listener.http] (`sec` names the table in errors): the IAM server.
security::IamConfig read_iam(const Reporter& r, const toml::table& t, const std::string& sec,
                             const std::filesystem::path& dir) {
  only_keys(r, t, sec,
            {"url", "authorize", "authorize_url", "ca", "server_name", "cert", "key", "connect_timeout",
             "timeout", "retries", "retry_backoff", "pool_size", "cache_ttl", "cache_negative_ttl",
             "cache_size", "on_error", "send_password", "insecure_password_over_http"});
  security::IamConfig c;
  auto url = [&](std::string_view key) {
    const toml::node* n = t.get(key);
    std::string why;
    auto u = security::HttpUrl::parse(get_string(r, t, sec, key, ""), &why);
    if (!u) r.fail_at(*n, qualified(sec, key), why);
    return *u;
  };
  if (!t.get("url")) r.fail(t.source(), sec, "missing key 'url' (\"https://iam.example:8443/mqtt\")");
  c.url = url("url");
  c.authorize = get_bool(r, t, sec, "authorize", c.authorize);
  if (t.get("authorize_url")) {
    if (!c.authorize)
      r.fail_at(*t.get("authorize_url"), qualified(sec, "authorize_url"), "only with authorize = true");
    c.authorize_url = url("authorize_url");
  }
  const bool any_tls = c.url.tls || (c.authorize_url && c.authorize_url->tls);
  c.ca = get_path(r, t, sec, "ca", dir);
  c.cert = get_path(r, t, sec, "cert", dir);
  c.key = get_path(r, t, sec, "key", dir);
  c.server_name = get_string(r, t, sec, "server_name", "");
  for (const char* k : {"ca", "cert", "key", "server_name"})
    if (t.get(k) && !any_tls) r.fail_at(*t.get(k), qualified(sec, k), "only for https:// URLs");
  if (c.cert.empty() != c.key.empty()) r.fail(t.source(), sec, "cert and key go together");
  c.connect_timeout = get_millis(r, t, sec, "connect_timeout", c.connect_timeout, 0.01, 60);
  c.timeout = get_millis(r, t, sec, "timeout", c.timeout, 0.01, 300);
  c.retries = static_cast<unsigned>(get_int(r, t, sec, "retries", c.retries, 0, 10));
  c.retry_backoff = get_millis(r, t, sec, "retry_backoff", c.retry_backoff, 0, 60);
  c.pool_size = static_cast<std::size_t>(get_int(r, t, sec, "pool_size", 8, 1, 1024));
  c.cache_ttl = get_millis(r, t, sec, "cache_ttl", c.cache_ttl, 0, 86400);
  c.cache_negative_ttl = get_millis(r, t, sec, "cache_negative_ttl", c.cache_negative_ttl, 0, 86400);
  c.cache_size = static_cast<std::size_t>(get_int(r, t, sec, "cache_size", 100'000, 1, 100'000'000));
  const std::string on_error = get_string(r, t, sec, "on_error", "deny");
  if (t.get("on_error")) one_of(r, t, sec, "on_error", on_error, {"deny", "next"});
  c.on_error_next = on_error == "next";
  const std::string password = get_string(r, t, sec, "send_password", "presence");
  if (t.get("send_password")) one_of(r, t, sec, "send_password", password, {"presence", "value"});
  c.send_password = password == "value";
  c.insecure_password_over_http =
      get_bool(r, t, sec, "insecure_password_over_http", c.insecure_password_over_http);
  if (c.send_password && !c.url.tls && !c.insecure_password_over_http)
    r.fail_at(
        *t.get("send_password"), qualified(sec, "send_password"),
        "\"value\" sends passwords: the url must be https:// (or set insecure_password_over_http = true)");
  return c;
}

// [auth.password] and [listener.password]: the password file.
std::filesystem::path read_password(const Reporter& r, const toml::table& t, const std::string& sec,
                                    const std::filesystem::path& dir) {
  only_keys(r, t, sec, {"file"});
  auto file = get_path(r, t, sec, "file", dir);
  if (file.empty()) r.fail(t.source(), sec, "missing key 'file'");
  return file;
}

void read_listener(const Reporter& r, const toml::table& t, std::size_t i, Config& c,
                   std::set<std::string>& names, const std::filesystem::path& dir) {
  const std::string sec = fmt::format("listener[{}]", i);
  only_keys(r, t, sec,
            {"name", "bind", "transport", "auth", "tls", "clientid", "password", "jwt", "acl", "http",
             "defence"});
  Listener l;
  l.name = get_string(r, t, sec, "name", "");
  if (l.name.empty()) r.fail(t.source(), sec, "every listener needs a non-empty name");
  if (!names.insert(l.name).second)
    r.fail_at(*t.get("name"), qualified(sec, "name"), "duplicate listener name");
  const toml::node* bind = t.get("bind");
  if (!bind) r.fail(t.source(), sec, "missing key 'bind' (\"HOST:PORT\")");
  const std::string b = get_string(r, t, sec, "bind", "");
  try {
    parse_bind(b, l.host, l.port);
  } catch (const std::invalid_argument& e) {
    r.fail_at(*bind, qualified(sec, "bind"), e.what());
  }
  l.transport = get_string(r, t, sec, "transport", "tcp");
  one_of(r, t, sec, "transport", l.transport, {"tcp", "tls", "ws", "wss"});
  if (l.transport == "ws" || l.transport == "wss")
    r.fail_at(*t.get("transport"), qualified(sec, "transport"),
              fmt::format("transport '{}' is not available in this version of moatd (tcp and tls are)",
                          l.transport));
  if (const toml::node* tn = t.get("tls")) {
    if (l.transport != "tls") r.fail_at(*tn, qualified(sec, "tls"), "only for transport = \"tls\"");
    if (!tn->is_table()) r.fail_at(*tn, qualified(sec, "tls"), "must be a table ([listener.tls])");
    l.tls = read_tls(r, *tn->as_table(), sec + ".tls", dir);
  } else if (l.transport == "tls") {
    r.fail(t.source(), sec, "transport \"tls\" needs a [listener.tls] table with cert and key");
  }
  if (const toml::node* n = t.get("password")) {
    if (!n->is_table()) r.fail_at(*n, qualified(sec, "password"), "must be a table ([listener.password])");
    l.password_file = read_password(r, *n->as_table(), sec + ".password", dir);
  }
  if (const toml::node* n = t.get("jwt")) {
    if (!n->is_table()) r.fail_at(*n, qualified(sec, "jwt"), "must be a table ([listener.jwt])");
    l.jwt = read_jwt(r, *n->as_table(), sec + ".jwt", dir);
  }
  if (const toml::node* n = t.get("http")) {
    if (!n->is_table()) r.fail_at(*n, qualified(sec, "http"), "must be a table ([listener.http])");
    l.iam = read_iam(r, *n->as_table(), sec + ".http", dir);
  }
  if (const toml::node* a = t.get("auth")) {
    const toml::array* arr = a->as_array();
    if (!arr || arr->empty())
      r.fail_at(*a, qualified(sec, "auth"), "must be a non-empty array of method names");
    for (const auto& m : *arr) {
      if (!m.is_string()) r.fail_at(m, qualified(sec, "auth"), "method names are strings");
      const std::string name(*m.value<std::string_view>());
      static constexpr std::string_view known[] = {
          "anonymous", "password", "certificate",          "psk",
          "jwt",       "http",     "certificate+password", "psk+password"};
      if (std::find(std::begin(known), std::end(known), name) == std::end(known))
        r.fail_at(m, qualified(sec, "auth"),
                  fmt::format("'{}' is not an authentication method (anonymous | password | "
                              "certificate | psk | certificate+password | psk+password | jwt | http)",
                              name));
      if (!security::is_supported_auth_method(name))
        r.fail_at(m, qualified(sec, "auth"),
                  fmt::format("method '{}' is not available in this version of moatd", name));
      if ((name == "password" || name == "certificate+password" || name == "psk+password") &&
          password_file_of(c, l).empty())
        r.fail_at(
            m, qualified(sec, "auth"),
            fmt::format("method '{}' needs [auth.password] or [listener.password] file = \"...\"", name));
      if (name == "jwt" && !c.jwt && !l.jwt)
        r.fail_at(m, qualified(sec, "auth"),
                  "method 'jwt' needs an [auth.jwt] or [listener.jwt] table with a key");
      if (name == "http" && !iam_of(c, l))
        r.fail_at(m, qualified(sec, "auth"),
                  "method 'http' needs an [auth.http] or [listener.http] table with a url");
      if ((name == "certificate" || name == "psk" || name == "certificate+password" ||
           name == "psk+password") &&
          l.transport != "tls")
        r.fail_at(m, qualified(sec, "auth"), fmt::format("method '{}' needs transport = \"tls\"", name));
      if (std::find(l.auth.begin(), l.auth.end(), name) != l.auth.end())
        r.fail_at(m, qualified(sec, "auth"), fmt::format("method '{}' is listed twice", name));
      l.auth.push_back(name);
    }
  } else {
    r.fail(t.source(), sec, "missing key 'auth' (for example auth = [\"anonymous\"])");
  }
  if (const toml::node* n = t.get("clientid")) {
    if (!n->is_table()) r.fail_at(*n, qualified(sec, "clientid"), "must be a table ([listener.clientid])");
    l.clientid = read_clientid(r, *n->as_table(), sec + ".clientid");
  }
  if (const toml::node* n = t.get("acl")) {
    const std::string acl = sec + ".acl";
    if (!n->is_table()) r.fail_at(*n, acl, "must be a table ([listener.acl])");
    const toml::table& a = *n->as_table();
    only_keys(r, a, acl, {"file", "rule"});
    l.acl_file = get_path(r, a, acl, "file", dir);
    if (const toml::node* rules = a.get("rule")) l.acl_rules = read_acl_rules(r, *rules, acl + ".rule");
    if (l.acl_file.empty() && !a.get("rule"))
      r.fail(a.source(), acl, "needs a file = \"...\" or [[listener.acl.rule]] entries");
    l.has_acl = true;
  }
  if (const toml::node* n = t.get("defence")) {
    const std::string def = sec + ".defence";
    if (!n->is_table()) r.fail_at(*n, def, "must be a table ([listener.defence])");
    const toml::table& d = *n->as_table();
    // The counts and bans are the address's, whichever listener it failed on:
    // one set of thresholds judges them all.
    for (const auto& [key, value] : d)
      if (key.str() != "enabled" && key.str() != "allow")
        r.fail_at(value, qualified(def, key.str()),
                  "[listener.defence] takes only enabled and allow; the thresholds are [auth.defence]'s, "
                  "because an address's failures and bans count on every listener");
    if (d.get("enabled")) l.defence_enabled = get_bool(r, d, def, "enabled", true);
    l.defence_allow = read_allow(r, d, def);
  }
  c.listeners.push_back(std::move(l));
}

}  // namespace

void parse_bind(std::string_view bind, std::string& host, std::uint16_t& port) {
  std::string_view h;
  std::string_view p;
  if (!bind.empty() && bind.front() == '[') {
    const auto close = bind.find(']');
    if (close == std::string_view::npos || close + 1 >= bind.size() || bind[close + 1] != ':')
      throw std::invalid_argument("expected \"[IPV6]:PORT\"");
    h = bind.substr(1, close - 1);
    p = bind.substr(close + 2);
  } else {
    const auto colon = bind.rfind(':');
    if (colon == std::string_view::npos || bind.find(':') != colon)
      throw std::invalid_argument("expected \"HOST:PORT\" (IPv6 addresses in brackets)");
    h = bind.substr(0, colon);
    p = bind.substr(colon + 1);
  }
  if (h.empty()) throw std::invalid_argument("missing host (use 0.0.0.0 or [::] for all addresses)");
  if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string_view::npos ||
      std::stoul(std::string(p)) > 65535)
    throw std::invalid_argument(fmt::format("'{}' is not a port number (0-65535)", p));
  // Host names are not resolved: a listener binds to exactly the address written.
  const bool v6 = h.find(':') != std::string_view::npos;
  if (!v6 && h.find_first_not_of("0123456789.") != std::string_view::npos)
    throw std::invalid_argument(fmt::format("'{}' is not a numeric IP address", h));
  host = std::string(h);
  port = static_cast<std::uint16_t>(std::stoul(std::string(p)));
}

// [limits] against abuse (docs/limits.md): counts, lengths, retained set,
// [[limits.payload]] and flapping detection.
static void read_abuse_limits(const Reporter& r, const toml::table& t, broker::Limits& l) {
  const auto u32 = [&](std::string_view key, std::uint32_t fallback, std::int64_t lo, std::int64_t hi) {
    return static_cast<std::uint32_t>(get_int(r, t, "limits", key, fallback, lo, hi));
  };
  l.max_connections = u32("max_connections", l.max_connections, 0, 10'000'000);
  l.max_connections_per_address =
      u32("max_connections_per_address", l.max_connections_per_address, 0, 10'000'000);
  l.max_client_id_length = u32("max_client_id_length", l.max_client_id_length, 23, 65535);
  l.max_topic_length = u32("max_topic_length", l.max_topic_length, 1, 65535);
  l.max_topic_levels = u32("max_topic_levels", l.max_topic_levels, 1, 65535);
  l.max_subscriptions_per_client =
      u32("max_subscriptions_per_client", l.max_subscriptions_per_client, 0, 10'000'000);
  l.max_retained_messages = static_cast<std::uint64_t>(
      get_int(r, t, "limits", "max_retained_messages", static_cast<std::int64_t>(l.max_retained_messages), 0,
              1'000'000'000));
  l.max_retained_bytes = static_cast<std::uint64_t>(get_int(r, t, "limits", "max_retained_bytes",
                                                            static_cast<std::int64_t>(l.max_retained_bytes),
                                                            0, std::int64_t{1} << 40));
  l.flapping_max = u32("flapping_max", l.flapping_max, 0, 1'000'000);
  l.flapping_window =
      std::chrono::seconds(get_int(r, t, "limits", "flapping_window", l.flapping_window.count(), 1, 86400));
  const double delay = get_seconds(r, t, "limits", "flapping_delay",
                                   static_cast<double>(l.flapping_delay.count()) / 1000.0, 0, 30);
  l.flapping_delay = std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(delay * 1000)));
  l.flapping_ban_time = std::chrono::seconds(
      get_int(r, t, "limits", "flapping_ban_time", l.flapping_ban_time.count(), 1, 30 * 86400));
  l.log_interval =
      std::chrono::seconds(get_int(r, t, "limits", "log_interval", l.log_interval.count(), 1, 86400));
  if (const toml::node* n = t.get("payload")) {
    const toml::array* arr = n->as_array();
    if (!arr || !arr->is_array_of_tables())
      r.fail_at(*n, "limits.payload", "must be an array of tables ([[limits.payload]])");
    for (std::size_t i = 0; i < arr->size(); ++i) {
      const toml::table& e = *arr->get(i)->as_table();
      const std::string sec = fmt::format("limits.payload[{}]", i);
      only_keys(r, e, sec, {"topics", "max"});
      broker::PayloadLimit p;
      p.topics = get_string(r, e, sec, "topics", "");
      if (!e.get("topics")) r.fail(e.source(), sec, "missing key 'topics'");
      if (!codec::valid_topic_filter(p.topics))
        r.fail_at(*e.get("topics"), qualified(sec, "topics"), "not a valid topic filter");
      if (!e.get("max")) r.fail(e.source(), sec, "missing key 'max'");
      p.max = static_cast<std::uint32_t>(get_int(r, e, sec, "max", 0, 0, codec::kMaxRemainingLength));
      l.payload.push_back(std::move(p));
    }
  }
}

const std::filesystem::path& password_file_of(const Config& c, const Listener& l) {
  return l.password_file.empty() ? c.password_file : l.password_file;
}

const security::IamConfig* iam_of(const Config& c, const Listener& l) {
  if (l.iam) return &*l.iam;
  return c.iam ? &*c.iam : nullptr;
}

security::DefenceScope defence_of(const Config& c, const Listener& l) {
  return {l.defence_enabled.value_or(c.defence.enabled), l.defence_allow.value_or(c.defence.allow)};
}

bool defended(const Config& c) {
  return std::any_of(c.listeners.begin(), c.listeners.end(),
                     [&](const Listener& l) { return l.defence_enabled.value_or(c.defence.enabled); });
}

bool authenticates(const Config& c) {
  for (const auto& l : c.listeners)
    for (const auto& m : l.auth)
      if (m != "anonymous") return true;
  return false;
}

bool has_access_policy(const Config& c) {
  return c.has_acl || authenticates(c);
}

Config default_config() {
  Config c;
  Listener l;
  l.name = "default";
  l.host = "127.0.0.1";
  l.port = 1883;
  l.transport = "tcp";
  l.auth = {"anonymous"};
  c.listeners.push_back(std::move(l));
  return c;
}

Config parse(std::string_view text, const std::filesystem::path& source) {
  Reporter r(source);
  toml::table root;
  try {
    root = toml::parse(text, source.string());
  } catch (const toml::parse_error& e) {
    r.fail(e.source(), "syntax", e.description());
  }
  Config c;
  c.source = source;
  only_keys(r, root, "", {"broker", "log", "limits", "listener", "store", "auth", "acl", "payload_policy"});
  const std::filesystem::path dir = source.parent_path();
  if (const auto* t = get_table(r, root, "auth")) {
    only_keys(r, *t, "auth", {"password", "jwt", "http", "clientid", "defence"});
    if (const toml::node* n = t->get("http")) {
      if (!n->is_table()) r.fail_at(*n, "auth.http", "must be a table ([auth.http])");
      c.iam = read_iam(r, *n->as_table(), "auth.http", dir);
    }
    if (const auto* p = get_table(r, *t, "password"))
      c.password_file = read_password(r, *p, "auth.password", dir);
    if (const toml::node* n = t->get("jwt")) {
      if (!n->is_table()) r.fail_at(*n, "auth.jwt", "must be a table ([auth.jwt])");
      c.jwt = read_jwt(r, *n->as_table(), "auth.jwt", dir);
    }
    if (const toml::node* n = t->get("clientid")) {
      if (!n->is_table()) r.fail_at(*n, "auth.clientid", "must be a table ([auth.clientid])");
      c.clientid = read_clientid(r, *n->as_table(), "auth.clientid");
    }
    if (const toml::node* n = t->get("defence")) {
      if (!n->is_table()) r.fail_at(*n, "auth.defence", "must be a table ([auth.defence])");
      c.defence = read_defence(r, *n->as_table());
    }
  }
  if (const auto* t = get_table(r, root, "acl")) {
    only_keys(r, *t, "acl", {"file", "rule"});
    c.acl_file = get_path(r, *t, "acl", "file", dir);
    if (const toml::node* n = t->get("rule")) c.acl_rules = read_acl_rules(r, *n);
    if (c.acl_file.empty() && !t->get("rule"))
      r.fail(t->source(), "acl", "needs a file = \"...\" or [[acl.rule]] entries");
    c.has_acl = true;
  }

  if (const auto* t = get_table(r, root, "broker")) {
    only_keys(r, *t, "broker", {"data_dir", "threads", "sys_interval"});
    c.sys_interval =
        std::chrono::seconds(get_int(r, *t, "broker", "sys_interval", c.sys_interval.count(), 0, 86400));
    c.data_dir = get_string(r, *t, "broker", "data_dir", c.data_dir.string());
    if (c.data_dir.empty()) r.fail_at(*t->get("data_dir"), "broker.data_dir", "must not be empty");
    c.threads = static_cast<std::uint32_t>(get_int(r, *t, "broker", "threads", 0, 0, 256));
  }
  if (const auto* t = get_table(r, root, "log")) {
    only_keys(r, *t, "log", {"level", "audit"});
    c.log_level = get_string(r, *t, "log", "level", c.log_level);
    if (t->get("level"))
      one_of(r, *t, "log", "level", c.log_level, {"trace", "debug", "info", "warn", "error"});
    if (const auto* a = t->get("audit")) {
      c.audit = get_string(r, *t, "log", "audit", "");
      if (c.audit.empty()) r.fail_at(*a, "log.audit", "must be a file name or \"-\" (standard error)");
      if (c.audit != "-") c.audit = get_path(r, *t, "log", "audit", dir).string();
    }
  }
  if (const auto* t = get_table(r, root, "limits")) {
    only_keys(r, *t, "limits",
              {"max_packet_size",
               "connect_timeout",
               "max_inflight_messages",
               "max_queued_messages",
               "max_queued_bytes",
               "queue_full",
               "queue_qos0_offline",
               "max_connections",
               "max_connections_per_address",
               "max_client_id_length",
               "max_topic_length",
               "max_topic_levels",
               "max_subscriptions_per_client",
               "max_retained_messages",
               "max_retained_bytes",
               "payload",
               "flapping_max",
               "flapping_window",
               "flapping_delay",
               "flapping_ban_time",
               "log_interval",
               "auth_timeout"});
    auto& l = c.limits;
    // The smallest useful limit still admits a CONNECT with a short client id.
    l.max_packet_size = static_cast<std::uint32_t>(
        get_int(r, *t, "limits", "max_packet_size", l.max_packet_size, 64, codec::kMaxRemainingLength + 5));
    const double secs = get_seconds(r, *t, "limits", "connect_timeout",
                                    static_cast<double>(l.connect_timeout.count()) / 1000.0, 0.1, 3600);
    l.connect_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(secs * 1000)));
    l.max_inflight_messages = static_cast<std::uint32_t>(
        get_int(r, *t, "limits", "max_inflight_messages", l.max_inflight_messages, 1, 65535));
    l.max_queued_messages = static_cast<std::uint32_t>(
        get_int(r, *t, "limits", "max_queued_messages", l.max_queued_messages, 0, 100'000'000));
    l.max_queued_bytes =
        static_cast<std::uint64_t>(get_int(r, *t, "limits", "max_queued_bytes", 0, 0, std::int64_t{1} << 40));
    std::string queue_full = get_string(r, *t, "limits", "queue_full", "drop-new");
    one_of(r, *t, "limits", "queue_full", queue_full, {"drop-new", "drop-oldest"});
    l.queue_full =
        queue_full == "drop-oldest" ? broker::QueueFullPolicy::DropOldest : broker::QueueFullPolicy::DropNew;
    l.queue_qos0_offline = get_bool(r, *t, "limits", "queue_qos0_offline", l.queue_qos0_offline);
    l.auth_timeout = get_millis(r, *t, "limits", "auth_timeout", l.auth_timeout, 0.1, 3600);
    read_abuse_limits(r, *t, l);
  }
  if (const auto* t = get_table(r, root, "store")) {
    only_keys(r, *t, "store", {"engine", "durability", "sync_interval", "session_expiry"});
    c.store_engine = get_string(r, *t, "store", "engine", c.store_engine);
    one_of(r, *t, "store", "engine", c.store_engine, {"rocksdb", "memory"});
    c.durability = get_string(r, *t, "store", "durability", c.durability);
    if (t->get("durability"))
      one_of(r, *t, "store", "durability", c.durability, {"sync", "interval", "none"});
    const double interval = get_seconds(r, *t, "store", "sync_interval", 0.1, 0.001, 60);
    c.sync_interval = std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(interval * 1000)));
    if (t->get("sync_interval") && c.durability != "interval")
      r.fail_at(*t->get("sync_interval"), "store.sync_interval",
                "only applies with durability = \"interval\"");
    c.limits.session_expiry =
        std::chrono::seconds(get_int(r, *t, "store", "session_expiry", 0, 0, std::int64_t{10} * 365 * 86400));
  }
  if (const toml::node* n = root.get("listener")) {
    const toml::array* arr = n->as_array();
    if (!arr || !arr->is_array_of_tables())
      r.fail_at(*n, "listener", "must be an array of tables ([[listener]])");
    std::set<std::string> names;
    for (std::size_t i = 0; i < arr->size(); ++i)
      read_listener(r, *arr->get(i)->as_table(), i, c, names, dir);
  }
  if (const toml::node* n = root.get("payload_policy"))
    c.payload_policies = read_payload_policies(r, *n, source, dir);
  if (c.listeners.empty())
    r.fail(root.source(), "listener", "no [[listener]] configured: moatd would accept no connection");

  // Relative paths are relative to the configuration file's folder.
  if (c.data_dir.is_relative()) c.data_dir = source.parent_path() / c.data_dir;
  return c;
}

Config load_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in)
    throw ConfigError(fmt::format("{}: cannot open: {}", file.string(),
                                  std::error_code(errno, std::system_category()).message()));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), file);
}

}  // namespace moat::config
