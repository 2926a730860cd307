#include "config/config.hpp"

#include <fmt/format.h>

#include <toml++/toml.h>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "codec/decoder.hpp"
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

security::TlsServerConfig read_tls(const Reporter& r, const toml::table& t, const std::string& sec,
                                   const std::filesystem::path& dir) {
  only_keys(r, t, sec,
            {"cert", "key", "key_password", "ca", "ca_dir", "client_cert", "verify_depth", "crl", "crl_check",
             "min_version", "ciphers", "ciphersuites", "psk_file", "identity_from", "alpn",
             "psk_plain_suites", "ocsp_response", "reload_on_change"});
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
  return c;
}

void read_listener(const Reporter& r, const toml::table& t, std::size_t i, Config& c,
                   std::set<std::string>& names, const std::filesystem::path& dir) {
  const std::string sec = fmt::format("listener[{}]", i);
  only_keys(r, t, sec, {"name", "bind", "transport", "auth", "tls"});
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
  if (const toml::node* a = t.get("auth")) {
    const toml::array* arr = a->as_array();
    if (!arr || arr->empty())
      r.fail_at(*a, qualified(sec, "auth"), "must be a non-empty array of method names");
    for (const auto& m : *arr) {
      if (!m.is_string()) r.fail_at(m, qualified(sec, "auth"), "method names are strings");
      const std::string name(*m.value<std::string_view>());
      static constexpr std::string_view known[] = {"anonymous", "password", "certificate",
                                                   "psk",       "jwt",      "http"};
      if (std::find(std::begin(known), std::end(known), name) == std::end(known))
        r.fail_at(m, qualified(sec, "auth"),
                  fmt::format("'{}' is not an authentication method (anonymous | password | "
                              "certificate | psk | jwt | http)",
                              name));
      if (!security::is_supported_auth_method(name))
        r.fail_at(m, qualified(sec, "auth"),
                  fmt::format("method '{}' is not available in this version of moatd", name));
      if (name == "password" && c.password_file.empty())
        r.fail_at(m, qualified(sec, "auth"), "method 'password' needs [auth.password] file = \"...\"");
      if ((name == "certificate" || name == "psk") && l.transport != "tls")
        r.fail_at(m, qualified(sec, "auth"), fmt::format("method '{}' needs transport = \"tls\"", name));
      l.auth.push_back(name);
    }
  } else {
    r.fail(t.source(), sec, "missing key 'auth' (for example auth = [\"anonymous\"])");
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

Config default_config() {
  Config c;
  c.listeners.push_back(Listener{"default", "127.0.0.1", 1883, "tcp", {"anonymous"}, std::nullopt});
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
  only_keys(r, root, "", {"broker", "log", "limits", "listener", "store", "auth", "acl"});
  const std::filesystem::path dir = source.parent_path();
  if (const auto* t = get_table(r, root, "auth")) {
    only_keys(r, *t, "auth", {"password", "jwt", "http"});
    for (const char* later : {"jwt", "http"})
      if (const toml::node* n = t->get(later))
        r.fail_at(*n, fmt::format("auth.{}", later), "not available in this version of moatd");
    if (const auto* p = get_table(r, *t, "password")) {
      only_keys(r, *p, "auth.password", {"file"});
      c.password_file = get_path(r, *p, "auth.password", "file", dir);
      if (c.password_file.empty()) r.fail(p->source(), "auth.password", "missing key 'file'");
    }
  }
  if (const auto* t = get_table(r, root, "acl")) {
    only_keys(r, *t, "acl", {"file"});
    c.acl_file = get_path(r, *t, "acl", "file", dir);
    if (c.acl_file.empty()) r.fail(t->source(), "acl", "missing key 'file'");
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
    if (const auto* a = t->get("audit"))
      r.fail_at(*a, "log.audit", "the audit log is not available in this version of moatd");
  }
  if (const auto* t = get_table(r, root, "limits")) {
    only_keys(r, *t, "limits",
              {"max_packet_size", "connect_timeout", "max_inflight_messages", "max_queued_messages",
               "max_queued_bytes", "queue_full", "queue_qos0_offline"});
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
