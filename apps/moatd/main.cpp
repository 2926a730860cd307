// moatd: the Moat MQTT broker. Parses the command line and the configuration,
// wires the layers together, and waits for signals. Nothing else lives here.
#include <fcntl.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "broker/payload_policy.hpp"
#include "config/config.hpp"
#include "net/server.hpp"
#include "security/acl.hpp"
#include "security/audit.hpp"
#include "security/defence.hpp"
#include "security/file_watcher.hpp"
#include "security/http_client.hpp"
#include "security/iam.hpp"
#include "security/jwt.hpp"
#include "security/password_file.hpp"
#include "security/tls.hpp"
#include "store/data_dir.hpp"
#include "store/memory_store.hpp"
#include "store/rocksdb_store.hpp"

namespace {

namespace security = moat::security;

// An access policy: ordered rules and an ACL file ([acl] or [listener.acl]).
std::shared_ptr<const security::AccessPolicy> load_policy(const std::vector<security::OrderedRule>& ordered,
                                                          const std::filesystem::path& acl_file) {
  std::shared_ptr<const security::OrderedRules> rules;
  if (!ordered.empty()) rules = security::OrderedRules::make(ordered);
  std::shared_ptr<const security::Acl> file;
  if (!acl_file.empty()) file = security::Acl::load_mosquitto(acl_file);
  return std::make_shared<const security::AccessPolicy>(std::move(rules), std::move(file));
}

// The access policy of a configuration: [[acl.rule]] and the [acl] file.
std::shared_ptr<const security::AccessPolicy> load_policy(const moat::config::Config& cfg) {
  return load_policy(cfg.acl_rules, cfg.acl_file);
}

std::string describe(const security::AccessPolicy& p) {
  return fmt::format("{} ordered rule(s), {} file rule(s)", p.rules() ? p.rules()->size() : 0,
                     p.file() ? p.file()->size() : 0);
}

// The security material that SIGHUP reloads: each part swaps whole, and a part
// that fails to load keeps its previous version.
struct SecurityMaterial {
  // Password files by path: [auth.password] and each [listener.password] (a
  // file named by several is loaded once and shared).
  std::map<std::filesystem::path, std::shared_ptr<security::PasswordAuthenticator>> passwords;
  // [auth.jwt] under "", [listener.jwt] under the listener's name.
  std::map<std::string, std::shared_ptr<security::JwtAuthenticator>> jwt;
  std::shared_ptr<security::Reloadable<security::AccessPolicy>> acl;
  // [listener.acl] of each listener that has one, in the order of the
  // listeners: listener_acls[n - 1] is ACL slot n (broker::ListenerPolicy::acl_slot).
  struct ListenerAcl {
    std::string listener;
    std::filesystem::path file;  // the path the running moatd reads
    std::shared_ptr<security::Reloadable<security::AccessPolicy>> policy;
  };
  std::vector<ListenerAcl> listener_acls;
  // [auth.clientid] under "", [listener.clientid] under the listener's name.
  std::map<std::string, std::shared_ptr<security::Reloadable<security::ClientIdRules>>> clientid;
  std::shared_ptr<security::AuditLog> audit;
  std::shared_ptr<security::AuthThrottle> defence;
  // [[payload_policy]] with their keyrings; always present, so that a reload may add some.
  std::shared_ptr<security::Reloadable<moat::broker::PayloadPolicies>> payload;
  // IAM servers: [auth.http] under "", [listener.http] under the listener's
  // name; each its own caches. The HTTP clients they talk through: one per
  // server (origin) and client settings, shared by the tables that name it.
  std::map<std::string, std::shared_ptr<security::Iam>> iams;
  std::vector<std::shared_ptr<security::HttpClient>> http;
  // The listeners with their own [listener.acl] or [listener.http], in the
  // order of the listeners: slot_listeners[n - 1] has ACL slot n
  // (broker::ListenerPolicy::acl_slot, broker::BrokerShared::listener_access).
  std::vector<std::string> slot_listeners;
  struct Tls {
    std::string listener;
    security::TlsServerConfig config;
    std::shared_ptr<security::Reloadable<security::TlsServerContext>> context;
  };
  std::vector<Tls> tls;
  // Called after a TLS context was swapped, to recheck live connections.
  std::function<void()> on_tls_swapped;
  std::mutex tls_reload_mu;  // SIGHUP and the file watcher reload from two threads

  // Start-up: every failure is fatal (throws with the file and the reason).
  void load(const moat::config::Config& cfg) {
    if (!cfg.audit.empty()) audit = std::make_shared<security::AuditLog>(cfg.audit);
    if (moat::config::defended(cfg)) {
      // Each listener's DefenceScope decides whom the defence judges there; the
      // throttle's own allow list may exempt no one a listener's own list
      // ([listener.defence] allow) defends.
      auto d = cfg.defence;
      d.enabled = true;
      if (std::any_of(cfg.listeners.begin(), cfg.listeners.end(),
                      [](const auto& l) { return l.defence_allow.has_value(); }))
        d.allow.clear();
      defence = std::make_shared<security::AuthThrottle>(std::move(d));
    }
    auto load_password = [&](const std::filesystem::path& file) {
      if (!file.empty() && !passwords.contains(file))
        passwords.emplace(
            file, std::make_shared<security::PasswordAuthenticator>(security::PasswordFile::load(file)));
    };
    load_password(cfg.password_file);
    for (const auto& l : cfg.listeners) load_password(l.password_file);
    auto load_jwt = [&](const std::string& key, const security::JwtConfig& c) {
      auto keys = security::JwtKeys::load(c);
      for (const auto& w : keys->warnings()) spdlog::warn("{}", w);
      jwt[key] = std::make_shared<security::JwtAuthenticator>(c, std::move(keys));
    };
    if (cfg.jwt) load_jwt("", *cfg.jwt);
    for (const auto& l : cfg.listeners)
      if (l.jwt) load_jwt(l.name, *l.jwt);
    // With authentication but no [acl] the policy is empty: it denies what
    // nothing else (a JWT's ACL claim, the IAM server) allows.
    if (moat::config::has_access_policy(cfg))
      acl = std::make_shared<security::Reloadable<security::AccessPolicy>>(load_policy(cfg));
    for (const auto& l : cfg.listeners)
      if (l.has_acl) {
        auto policy = load_policy(l.acl_rules, l.acl_file);
        spdlog::info("listener {}: its own ACL replaces [acl] ({})", l.name, describe(*policy));
        listener_acls.push_back(
            {l.name, l.acl_file, std::make_shared<security::Reloadable<security::AccessPolicy>>(policy)});
      }
    payload = std::make_shared<security::Reloadable<moat::broker::PayloadPolicies>>(
        moat::broker::PayloadPolicies::load(cfg.payload_policies));
    const auto names_http = [](const moat::config::Listener& l) {
      return std::find(l.auth.begin(), l.auth.end(), "http") != l.auth.end();
    };
    if (cfg.iam)
      iams[""] = load_iam(*cfg.iam, "", std::any_of(cfg.listeners.begin(), cfg.listeners.end(), [&](const auto& l) {
                            return !l.iam && names_http(l);
                          }));
    for (const auto& l : cfg.listeners) {
      if (l.iam) iams[l.name] = load_iam(*l.iam, l.name, names_http(l));
      if (l.has_acl || l.iam) slot_listeners.push_back(l.name);
    }
    if (cfg.clientid)
      clientid[""] = std::make_shared<security::Reloadable<security::ClientIdRules>>(
          security::ClientIdRules::make(*cfg.clientid));
    for (const auto& l : cfg.listeners) {
      if (l.clientid)
        clientid[l.name] = std::make_shared<security::Reloadable<security::ClientIdRules>>(
            security::ClientIdRules::make(*l.clientid));
      if (!l.tls) continue;
      auto ctx = security::TlsServerContext::load(*l.tls);
      for (const auto& w : ctx->warnings()) spdlog::warn("listener {}: {}", l.name, w);
      if (!l.tls->sni.empty()) {
        std::string names;
        for (const auto& s : l.tls->sni) names += (names.empty() ? "" : ", ") + s.hostname;
        spdlog::info("listener {}: certificates chosen by SNI for {}", l.name, names);
      }
      tls.push_back(
          {l.name, *l.tls, std::make_shared<security::Reloadable<security::TlsServerContext>>(ctx)});
    }
  }

  // [auth.http] (`listener` empty) or the [listener.http] of `listener`;
  // `authenticates`: a listener it serves names "http" in its auth.
  std::shared_ptr<security::Iam> load_iam(const security::IamConfig& c, const std::string& listener,
                                          bool authenticates) {
    const std::string table = listener.empty() ? "[auth.http]" : "[listener.http] of listener " + listener;
    auto client_for = [&](const security::HttpUrl& url) {
      security::HttpClientOptions o;
      o.server = url;
      o.ca = c.ca;
      o.server_name = c.server_name;
      o.cert = c.cert;
      o.key = c.key;
      o.connect_timeout = c.connect_timeout;
      o.retries = c.retries;
      o.retry_backoff = c.retry_backoff;
      o.pool_size = c.pool_size;
      o.user_agent = std::string("moatd/") + MOAT_VERSION;
      // Tables that name one server with the same trust and client settings
      // share its client (its thread and its pool); other settings get their own.
      for (const auto& [was, h] : http_clients)
        if (was.server.origin() == o.server.origin() && was.ca == o.ca && was.server_name == o.server_name &&
            was.cert == o.cert && was.key == o.key && was.connect_timeout == o.connect_timeout &&
            was.retries == o.retries && was.retry_backoff == o.retry_backoff && was.pool_size == o.pool_size)
          return h;
      auto client = std::make_shared<security::HttpClient>(o);
      http.push_back(client);
      http_clients.emplace_back(o, client);
      return client;
    };
    auto auth = client_for(c.url);
    std::shared_ptr<security::HttpClient> authz;
    if (c.authorize) authz = client_for(c.authorize_url ? *c.authorize_url : c.url);
    auto iam = std::make_shared<security::Iam>(c, auth, authz,
                                               [](const std::string& what) { spdlog::warn("{}", what); });
    if (c.send_password && !c.url.tls)
      spdlog::warn("{} sends passwords over plain HTTP to {} (insecure_password_over_http)", table,
                   c.url.origin());
    // A table that neither authenticates nor authorizes is a mistake the
    // operator should see: no client is ever asked about through it.
    if (!authenticates && !c.authorize)
      spdlog::warn("{} is not used: {} \"http\" in auth and authorize = false", table,
                   listener.empty() ? "no listener without its own [listener.http] names" : "its listener names no");
    const char* role = authenticates && c.authorize ? " (authentication and authorization)"
                       : authenticates             ? " (authentication)"
                       : c.authorize               ? " (authorization)"
                                                   : " (unused)";
    spdlog::info("{}IAM server {}{}: cache {} s (allow), {} s (deny), on error {}",
                 listener.empty() ? "" : fmt::format("listener {}: ", listener), c.url.origin(), role,
                 c.cache_ttl.count() / 1000.0, c.cache_negative_ttl.count() / 1000.0,
                 c.on_error_next ? "next" : "deny");
    return iam;
  }
  // Before the event loops go: no answer may arrive for a loop that is gone.
  void stop_http() {
    for (auto& h : http) h->stop();
  }
  std::vector<std::pair<security::HttpClientOptions, std::shared_ptr<security::HttpClient>>> http_clients;

  // SIGHUP: new handshakes, logins and checks use the new material; live
  // connections are not dropped. `next` is the configuration file as it is
  // now (null when it no longer parses): ordered rules and client-id rules
  // come from it; files are re-read at the paths the running moatd uses.
  // Each "reload: ..." line is logged once the new material is in force, so
  // whoever waits for it (an operator, a test) sees the new behaviour.
  void reload(const moat::config::Config& cfg, const moat::config::Config* next) {
    if (audit) {
      if (auto why = audit->reopen(); !why.empty())
        spdlog::error("reopening the audit log {} failed, writing to the previous file: {}", audit->path(),
                      why);
    }
    for (const auto& [file, password] : passwords) {
      try {
        auto table = security::PasswordFile::load(file);
        const auto users = table->size();
        password->reload(std::move(table));
        spdlog::info("reload: {} ({} users)", file.string(), users);
      } catch (const std::exception& e) {
        spdlog::error("reload of the password file failed, keeping the previous one: {}", e.what());
      }
    }
    for (const auto& [listener, j] : jwt) {
      const std::string which = listener.empty() ? "[auth.jwt]" : "listener " + listener;
      try {
        auto keys = security::JwtKeys::load(j->config());
        for (const auto& w : keys->warnings()) spdlog::warn("{}", w);
        const auto n = keys->keys().size();
        j->reload(std::move(keys));
        spdlog::info("reload: JWT keys of {} ({} key(s))", which, n);
      } catch (const std::exception& e) {
        spdlog::error("reload of the JWT keys of {} failed, keeping the previous ones: {}", which, e.what());
      }
    }
    if (acl) {
      try {
        moat::config::Config rules_from = cfg;
        if (next) rules_from.acl_rules = next->acl_rules;
        auto policy = load_policy(rules_from);
        const auto what = describe(*policy);
        acl->store(std::move(policy));
        spdlog::info("reload: ACL ({})", what);
      } catch (const std::exception& e) {
        spdlog::error("reload of the ACL failed, keeping the previous one: {}", e.what());
      }
    } else if (next && next->has_acl) {
      spdlog::warn("reload: an [acl] added to the configuration takes effect after a restart");
    }
    if (acl && next && next->acl_file != cfg.acl_file)
      spdlog::warn("reload: a changed [acl] file path takes effect after a restart");
    for (const auto& la : listener_acls) {
      // Ordered rules from the configuration as it is now; the file re-read at
      // the path the running moatd uses.
      const moat::config::Listener* now = nullptr;
      if (next)
        for (const auto& l : next->listeners)
          if (l.name == la.listener) now = &l;
      std::vector<security::OrderedRule> rules;
      if (now) {
        rules = now->acl_rules;
        if (now->acl_file != la.file)
          spdlog::warn(
              "reload: a changed [listener.acl] file path of listener {} takes effect after a restart",
              la.listener);
      } else {
        for (const auto& l : cfg.listeners)
          if (l.name == la.listener) rules = l.acl_rules;
      }
      try {
        auto policy = load_policy(rules, la.file);
        const auto what = describe(*policy);
        la.policy->store(std::move(policy));
        spdlog::info("reload: ACL of listener {} ({})", la.listener, what);
      } catch (const std::exception& e) {
        spdlog::error("reload of the ACL of listener {} failed, keeping the previous one: {}", la.listener,
                      e.what());
      }
    }
    if (next)
      for (const auto& l : next->listeners)
        if (l.has_acl && std::none_of(listener_acls.begin(), listener_acls.end(),
                                      [&](const ListenerAcl& la) { return la.listener == l.name; }))
          spdlog::warn("reload: an ACL added to listener {} takes effect after a restart", l.name);
    // The IAM servers are read at start, like [auth.http]: their caches and
    // connections stay as they are.
    if (next)
      for (const auto& l : next->listeners)
        for (const auto& was : cfg.listeners)
          if (was.name == l.name && (l.iam.has_value() != was.iam.has_value() ||
                                     (l.iam && (l.iam->url.origin() != was.iam->url.origin() ||
                                                l.iam->url.target != was.iam->url.target))))
            spdlog::warn("reload: a changed [listener.http] of listener {} takes effect after a restart",
                         l.name);
    if (next) {
      // Keyrings read again from the same files keep their replay windows.
      try {
        auto policies = moat::broker::PayloadPolicies::load(next->payload_policies, payload->load().get());
        const auto n = policies->size();
        payload->store(std::move(policies));
        spdlog::info("reload: {} payload polic{}", n, n == 1 ? "y" : "ies");
      } catch (const std::exception& e) {
        spdlog::error("reload of the payload policies failed, keeping the previous ones: {}", e.what());
      }
    }
    if (next) {
      auto update = [&](const std::string& key, const std::optional<security::ClientIdRules::Spec>& spec) {
        auto it = clientid.find(key);
        if (it == clientid.end()) {
          if (spec)
            spdlog::warn("reload: new client id rules ({}) take effect after a restart",
                         key.empty() ? "[auth.clientid]" : "listener " + key);
          return;
        }
        // Rules that were removed allow any client id from now on.
        it->second->store(spec ? security::ClientIdRules::make(*spec)
                               : security::ClientIdRules::make(security::ClientIdRules::Spec{}));
      };
      update("", next->clientid);
      for (const auto& l : next->listeners) update(l.name, l.clientid);
    }
    reload_tls(nullptr);
  }

  // Reloads the TLS contexts of every listener, or (with `changed`) of those
  // built from one of the changed files. A context that fails to load keeps
  // serving; the error names the file and the reason.
  void reload_tls(const std::vector<std::filesystem::path>* changed) {
    std::lock_guard lock(tls_reload_mu);
    bool swapped = false;
    for (auto& t : tls) {
      if (changed) {
        if (!t.config.reload_on_change) continue;
        const auto mine = security::watched_paths(t.config);
        if (std::none_of(changed->begin(), changed->end(), [&](const std::filesystem::path& p) {
              return std::find(mine.begin(), mine.end(), p) != mine.end();
            }))
          continue;
      }
      try {
        auto previous = t.context->load();
        auto ctx =
            security::TlsServerContext::load(t.config, std::chrono::system_clock::now(), previous.get());
        for (const auto& w : ctx->warnings()) spdlog::warn("listener {}: {}", t.listener, w);
        t.context->store(std::move(ctx));
        swapped = true;
        spdlog::info("reload: TLS certificates, keys and CRLs of listener {}", t.listener);
      } catch (const std::exception& e) {
        spdlog::error("reload of TLS for listener {} failed, keeping the previous context: {}", t.listener,
                      e.what());
      }
    }
    if (swapped && on_tls_swapped) on_tls_swapped();
  }

  // Every file the TLS contexts are built from, for the file watcher.
  std::vector<std::filesystem::path> tls_files() const {
    std::vector<std::filesystem::path> out;
    for (const auto& t : tls)
      if (t.config.reload_on_change)
        for (auto& p : security::watched_paths(t.config))
          if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(std::move(p));
    return out;
  }

  // Method `name` of listener `l` (its own password file and JWT keys, else the [auth] ones).
  std::shared_ptr<security::Authenticator> authenticator(std::string_view name,
                                                         const moat::config::Config& cfg,
                                                         const moat::config::Listener& l) const {
    using K = security::TlsIdentityPasswordAuthenticator::Kind;
    std::shared_ptr<security::PasswordAuthenticator> password;
    if (auto it = passwords.find(moat::config::password_file_of(cfg, l)); it != passwords.end())
      password = it->second;
    if (name == "password") return password;
    if (name == "jwt") {
      if (auto it = jwt.find(l.name); it != jwt.end()) return it->second;
      if (auto it = jwt.find(""); it != jwt.end()) return it->second;
      return nullptr;
    }
    if (name == "http") return std::make_shared<security::IamAuthenticator>(iam_of(l.name));
    if (name == "certificate+password")
      return std::make_shared<security::TlsIdentityPasswordAuthenticator>(K::Certificate, password);
    if (name == "psk+password")
      return std::make_shared<security::TlsIdentityPasswordAuthenticator>(K::Psk, password);
    return security::make_authenticator(name);
  }

  // The IAM server of a listener: its [listener.http], else [auth.http]; null: none.
  std::shared_ptr<security::Iam> iam_of(const std::string& listener) const {
    if (auto it = iams.find(listener); it != iams.end()) return it->second;
    if (auto it = iams.find(""); it != iams.end()) return it->second;
    return nullptr;
  }
  // The remote authorizer of a listener's connections ("" for [auth.http]):
  // its IAM server when that one authorizes; null: none. A [listener.http]
  // without authorize = true leaves its listener without one, whatever
  // [auth.http] says: it replaces [auth.http] there.
  std::shared_ptr<security::RemoteAuthorizer> authorizer_of(const std::string& listener) const {
    auto iam = iam_of(listener);
    if (iam && iam->config().authorize) return iam;
    return nullptr;
  }

  // The ACL slot of a listener (broker::ListenerPolicy::acl_slot): 0 for [acl]
  // and [auth.http].
  std::uint32_t acl_slot_of(const std::string& listener) const {
    for (std::size_t i = 0; i < slot_listeners.size(); ++i)
      if (slot_listeners[i] == listener) return static_cast<std::uint32_t>(i + 1);
    return 0;
  }
  // How the connections of ACL slot n > 0 are judged: the listener's own ACL
  // (else [acl]) and its own IAM server's authorization (else [auth.http]'s).
  std::vector<moat::broker::BrokerShared::ListenerAccess> listener_access() const {
    std::vector<moat::broker::BrokerShared::ListenerAccess> out;
    for (const auto& name : slot_listeners) {
      moat::broker::BrokerShared::ListenerAccess a{acl, authorizer_of(name)};
      for (const auto& la : listener_acls)
        if (la.listener == name) a.acl = la.policy;
      out.push_back(std::move(a));
    }
    return out;
  }

  std::shared_ptr<security::Reloadable<security::ClientIdRules>> clientid_of(
      const std::string& listener) const {
    if (auto it = clientid.find(listener); it != clientid.end()) return it->second;
    if (auto it = clientid.find(""); it != clientid.end()) return it->second;
    return nullptr;
  }
};

// TLS files are watched (inotify on their folders) and reloaded like on SIGHUP
// when they change; nullptr if there are none, or inotify is unavailable.
std::unique_ptr<security::FileWatcher> watch_tls_files(SecurityMaterial& material) {
  auto files = material.tls_files();
  if (files.empty()) return nullptr;
  try {
    auto watcher = std::make_unique<security::FileWatcher>(
        files, [&material](const std::vector<std::filesystem::path>& changed) {
          std::string names;
          for (const auto& p : changed) names += (names.empty() ? "" : ", ") + p.string();
          spdlog::info("reload: TLS files changed: {}", names);
          material.reload_tls(&changed);
        });
    std::string folders;
    for (const auto& f : watcher->folders()) folders += (folders.empty() ? "" : ", ") + f.string();
    spdlog::info("watching {} TLS file(s) for changes in {}", files.size(), folders);
    return watcher;
  } catch (const std::exception& e) {
    spdlog::warn("TLS files are not watched for changes ({}); SIGHUP reloads them", e.what());
    return nullptr;
  }
}

void reload(const std::filesystem::path& file, moat::config::Config& current, SecurityMaterial& material) {
  std::optional<moat::config::Config> next;
  try {
    next = moat::config::load_file(file);
  } catch (const std::exception& e) {
    spdlog::error("reload failed, keeping the running configuration: {}", e.what());
  }
  material.reload(current, next ? &*next : nullptr);
  if (!next) return;
  spdlog::set_level(spdlog::level::from_str(next->log_level));
  if (next->listeners.size() != current.listeners.size() || next->threads != current.threads ||
      next->data_dir != current.data_dir)
    spdlog::warn("reload: listener, thread and data_dir changes take effect after a restart");
  current.log_level = next->log_level;
  current.acl_rules = next->acl_rules;
  for (auto& l : current.listeners)
    for (const auto& n : next->listeners)
      if (n.name == l.name) l.acl_rules = n.acl_rules;
  spdlog::info("configuration reloaded from {}", file.string());
}

// moatd --check-store: reports what the store holds and verifies it, writing
// nothing to the data directory. Exit 0: intact; 3: damaged; 1: cannot check.
int check_store_main(const moat::config::Config& cfg) {
  namespace store = moat::store;
  if (cfg.store_engine != "rocksdb") {
    fmt::print("store engine is memory: nothing is kept between runs\n");
    return 0;
  }
  const auto dir = cfg.data_dir / "store";
  try {
    if (store::DataDir::inspect(cfg.data_dir) == store::DataDir::State::Missing) {
      fmt::print(stderr, "moatd: data_dir {} does not exist\n", cfg.data_dir.string());
      return 1;
    }
    if (store::DataDir::in_use(cfg.data_dir)) {
      fmt::print(stderr, "moatd: data_dir {} is in use by a running moatd; stop it to check the store\n",
                 cfg.data_dir.string());
      return 1;
    }
    if (!std::filesystem::exists(dir / "CURRENT")) {
      fmt::print("{}: no store yet (nothing stored)\n", dir.string());
      return 0;
    }
    store::RocksDbOptions so;
    so.dir = dir;
    so.read_only = true;
    store::RocksDbStore rocks(so);
    const auto r = rocks.check();
    // The wording and order of these lines are documented (docs/durability.md)
    // and scripts read them: add lines, do not change these.
    fmt::print(
        "rocksdb in {} (checked read-only)\n  sessions {}\n  queued messages {} ({} in flight)\n"
        "  QoS 2 ids awaiting PUBREL {}\n  retained messages {}\n  bans {}\n  bytes {}\n"
        "  entries of ended sessions {} (queued {}, in flight {}, awaiting PUBREL {})\n"
        "  damaged entries {}\n",
        dir.string(), r.sessions, r.queued, r.inflight, r.pubrel, r.retained, r.bans, r.bytes, r.orphans(),
        r.orphan_queued, r.orphan_inflight, r.orphan_pubrel, r.damaged);
    fmt::print("  replay marks {}\n", r.replay_marks);
    fmt::print("  failure counters {}\n", r.failures);
    if (r.damaged) {
      for (const auto& d : r.damage) fmt::print("damaged: {}\n", d);
      if (r.damaged > r.damage.size())
        fmt::print("damaged: {} more not shown\n", r.damaged - r.damage.size());
      return 3;
    }
    return 0;
  } catch (const store::StoreDamaged& e) {
    fmt::print("rocksdb in {}\ndamaged: {}\n", dir.string(), e.what());
    return 3;
  } catch (const std::exception& e) {
    fmt::print(stderr, "moatd: cannot check the store in {}: {}\n", cfg.data_dir.string(), e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moatd - the Moat MQTT broker"};
  std::string config_file;
  bool check_only = false;
  bool check_store = false;
  app.add_option("-c,--config", config_file, "configuration file (moat.toml)")->check(CLI::ExistingFile);
  app.add_flag("--check-config", check_only, "validate the configuration and exit");
  app.add_flag("--check-store", check_store, "report what the data directory holds, verify it, and exit");
  app.set_version_flag("-V,--version", std::string("moatd ") + MOAT_VERSION);
  CLI11_PARSE(app, argc, argv);

  auto logger = spdlog::stderr_color_mt("moatd");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  moat::config::Config cfg;
  try {
    cfg = config_file.empty() ? moat::config::default_config() : moat::config::load_file(config_file);
  } catch (const std::exception& e) {
    fmt::print(stderr, "moatd: configuration error: {}\n", e.what());
    return 2;
  }
  if (check_only) {
    try {
      moat::broker::PayloadPolicies::load(cfg.payload_policies);  // the keyrings too
    } catch (const std::exception& e) {
      fmt::print(stderr, "moatd: configuration error: {}\n", e.what());
      return 2;
    }
    fmt::print("{}: configuration is valid\n", config_file.empty() ? "built-in default" : config_file);
    return 0;
  }
  if (check_store) return check_store_main(cfg);
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  if (cfg.threads == 0) cfg.threads = std::max(1u, std::thread::hardware_concurrency());

  // Signals are taken by this thread alone (sigwait below); the loops inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  // One moatd per data directory (a second one would corrupt durable state),
  // and only a directory that is Moat's.
  std::optional<moat::store::DataDir> data_dir;
  try {
    data_dir.emplace(cfg.data_dir);
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
  const bool unmarked = data_dir->state() == moat::store::DataDir::State::Unmarked;

  std::unique_ptr<moat::store::Store> store;
  moat::store::Snapshot snapshot;
  try {
    if (unmarked) {
      // A data directory from before the marker: its store must be Moat's
      // before anything is written to it (a read-only open writes nothing).
      moat::store::RocksDbOptions probe;
      probe.dir = data_dir->store_path();
      probe.read_only = true;
      const moat::store::RocksDbStore moats_or_throws(probe);
    }
    if (cfg.store_engine == "rocksdb") {
      moat::store::RocksDbOptions so;
      so.dir = cfg.data_dir / "store";
      so.durability = cfg.durability == "sync"       ? moat::store::Durability::Sync
                      : cfg.durability == "interval" ? moat::store::Durability::Interval
                                                     : moat::store::Durability::None;
      so.sync_interval = cfg.sync_interval;
      store = std::make_unique<moat::store::RocksDbStore>(so);
    } else {
      store = std::make_unique<moat::store::MemoryStore>();
    }
    snapshot = store->load();
    if (unmarked) {
      data_dir->mark();
      spdlog::info("data_dir {}: marked as a Moat data directory ({})", cfg.data_dir.string(),
                   moat::store::DataDir::kMarker);
    }
  } catch (const moat::store::StoreDamaged& e) {
    spdlog::critical(
        "data_dir {}: the store is damaged, refusing to start rather than go on without what the damaged "
        "part holds ({}); see \"A damaged store\" in docs/durability.md",
        cfg.data_dir.string(), e.what());
    return 1;
  } catch (const std::exception& e) {
    spdlog::critical("cannot use the store in {}: {}", cfg.data_dir.string(), e.what());
    return 1;
  }
  if (snapshot.orphans_removed)
    spdlog::warn("store: removed {} stored message(s) of sessions that had ended before the last stop",
                 snapshot.orphans_removed);

  moat::broker::BrokerShared shared;
  shared.limits = cfg.limits;
  shared.store = store.get();
  shared.next_seq = snapshot.next_seq;
  shared.next_session_id = snapshot.next_session_id;
  shared.shard_count = cfg.threads;
  shared.sys_interval = cfg.sys_interval;
  shared.version = std::string("moat ") + MOAT_VERSION;

  SecurityMaterial material;
  try {
    material.load(cfg);
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
  // Stored bans, with their end in wall-clock time; the defences count on the
  // steady clock. Addresses go to the brute-force defence, client identifiers
  // to flapping detection (restored once it exists, below).
  const auto steady = std::chrono::steady_clock::now();
  std::vector<security::Ban> address_bans, client_id_bans;
  {
    for (auto& b : snapshot.bans) {
      const auto until = moat::store::from_unix_ms(b.until_unix_ms, steady);
      if (b.address.starts_with(moat::store::kClientIdBan))
        client_id_bans.push_back(
            {b.address.substr(moat::store::kClientIdBan.size()), until, std::move(b.reason)});
      else
        address_bans.push_back({std::move(b.address), until, std::move(b.reason)});
    }
  }
  if (material.defence && !address_bans.empty()) {
    spdlog::info("store: restored {} ban(s) of the brute-force defence", address_bans.size());
    material.defence->restore(std::move(address_bans), steady);
  }
  // Failure counters: a restart resets neither the count towards a ban nor the
  // backoff. Address counters go to the brute-force defence, client identifier
  // counts (kClientIdBan before them) to flapping detection, below. Those not
  // restored (ended while moatd was stopped, their defence off, of an address
  // now exempt) are forgotten by the store too.
  std::vector<security::FailureCounter> address_counters, client_id_counts;
  std::vector<std::string> counters_dropped;
  for (auto& f : snapshot.failures) {
    const auto since = moat::store::from_unix_ms(f.since_unix_ms, steady);
    if (f.key.starts_with(moat::store::kClientIdBan))
      client_id_counts.push_back({f.key.substr(moat::store::kClientIdBan.size()), f.failures, since});
    else if (material.defence)
      address_counters.push_back({std::move(f.key), f.failures, since});
    else
      counters_dropped.push_back(std::move(f.key));
  }
  if (material.defence && !address_counters.empty()) {
    const std::size_t n = address_counters.size();
    auto dropped = material.defence->restore_failures(std::move(address_counters), steady);
    if (n > dropped.size())
      spdlog::info("store: restored {} failure counter(s) of the brute-force defence", n - dropped.size());
    for (auto& key : dropped) counters_dropped.push_back(std::move(key));
  }
  shared.acl = material.acl;
  shared.listener_access = material.listener_access();
  shared.defence = material.defence;
  shared.authorizer = material.authorizer_of("");
  shared.audit = material.audit;
  shared.payload = material.payload;
  if (const auto n = cfg.payload_policies.size())
    spdlog::info("{} payload polic{} on topics", n, n == 1 ? "y" : "ies");
  moat::store::Batch forget;  // stored records that are no longer of use
  // Replay marks: an envelope accepted before the stop is refused after it.
  if (!snapshot.replay_marks.empty()) {
    const auto marks =
        material.payload->load()->restore_replay_marks(snapshot.replay_marks, moat::store::unix_ms_now());
    if (marks.restored)
      spdlog::info("store: restored {} replay mark(s) of the payload policies", marks.restored);
    for (const auto& key : marks.useless) forget.erase_replay_mark(key);
  }
  // [limits] docs/limits.md: the [auth.defence] allow list is exempt from the
  // per-address connection limit and flapping detection.
  shared.connections = std::make_shared<moat::broker::ConnectionCounter>(
      cfg.limits.max_connections, cfg.limits.max_connections_per_address, cfg.defence.allow);
  if (cfg.limits.flapping_max > 0) {
    moat::security::FlappingConfig fc;
    fc.max = cfg.limits.flapping_max;
    fc.window = cfg.limits.flapping_window;
    fc.delay = cfg.limits.flapping_delay;
    fc.ban_time = cfg.limits.flapping_ban_time;
    fc.exempt = cfg.defence.allow;
    shared.flapping = std::make_shared<moat::security::FlapDetector>(fc);
    if (!client_id_bans.empty()) {
      spdlog::info("store: restored {} client id ban(s) of flapping detection", client_id_bans.size());
      shared.flapping->restore(std::move(client_id_bans), steady);
    }
    if (!client_id_counts.empty()) {
      const std::size_t n = client_id_counts.size();
      auto dropped = shared.flapping->restore_counts(std::move(client_id_counts), steady);
      if (n > dropped.size())
        spdlog::info("store: restored {} client id count(s) of flapping detection", n - dropped.size());
      for (auto& id : dropped) counters_dropped.push_back(std::string(moat::store::kClientIdBan) + id);
      client_id_counts.clear();
    }
  }
  for (auto& c : client_id_counts)  // flapping detection is off
    counters_dropped.push_back(std::string(moat::store::kClientIdBan) + c.key);
  // What the store kept and memory did not take: one commit before serving.
  for (const auto& key : counters_dropped) forget.erase_failures(key);
  if (!forget.empty()) {
    try {
      store->commit(forget);
    } catch (const std::exception& e) {
      spdlog::critical("cannot use the store in {}: {}", cfg.data_dir.string(), e.what());
      return 1;
    }
  }

  moat::net::ServerOptions opts;
  opts.threads = cfg.threads;
  for (const auto& l : cfg.listeners) {
    moat::net::ListenerSpec spec{l.name, l.host, l.port, {}, nullptr, material.clientid_of(l.name)};
    spec.acl_slot = material.acl_slot_of(l.name);
    spec.defence = moat::config::defence_of(cfg, l);
    if (l.defence_enabled || l.defence_allow) {
      if (!material.defence || !spec.defence.enabled)
        spdlog::info("listener {}: no brute-force defence ([listener.defence])", l.name);
      else
        spdlog::info("listener {}: the brute-force defence exempts {} address block(s) ([listener.defence])",
                     l.name, spec.defence.allow.size());
    }
    for (const auto& name : l.auth) spec.auth.push_back(material.authenticator(name, cfg, l));
    for (const auto& t : material.tls)
      if (t.listener == l.name) spec.tls = t.context;
    opts.listeners.push_back(std::move(spec));
    if (l.host != "127.0.0.1" && l.host != "::1" &&
        std::find(l.auth.begin(), l.auth.end(), "anonymous") != l.auth.end())
      spdlog::warn("listener {} admits anonymous clients on {}, which is not loopback-only", l.name, l.host);
    // Authentication without authorization: the empty policy denies every
    // client of every listener without its own [listener.acl] every topic;
    // say so, and how to allow.
    const auto method =
        std::find_if(l.auth.begin(), l.auth.end(), [](const auto& a) { return a != "anonymous"; });
    if (method != l.auth.end() && !cfg.has_acl && !l.has_acl && !material.authorizer_of(l.name))
      spdlog::warn(
          "listener {} authenticates clients ({}) and there is no [acl] and no IAM authorization: "
          "every client{} is denied every topic{}; to allow, write an ACL, e.g. "
          "[[acl.rule]] permission = \"allow\", action = \"all\", topic = \"#\" (docs/security.md)",
          l.name, *method,
          std::any_of(cfg.listeners.begin(), cfg.listeners.end(), [](const auto& o) { return o.has_acl; })
              ? " of a listener without its own [listener.acl]"
              : ", on every listener,",
          *method == "jwt" ? " its token's ACL claim does not grant" : "");
  }
  moat::net::Server server(std::move(opts), shared);
  // Retained messages and sessions come back before the first connection.
  for (const auto& r : snapshot.retained)
    shared.retained.update(
        moat::broker::make_message(r.topic, r.payload, static_cast<moat::codec::QoS>(r.qos), true));
  server.restore(snapshot);
  std::size_t queued = 0;
  for (const auto& s : snapshot.sessions) queued += s.queued.size();
  spdlog::info("store: {}; restored {} session(s), {} queued message(s), {} retained message(s)",
               store->describe(), snapshot.sessions.size(), queued, snapshot.retained.size());
  snapshot = {};
  try {
    server.start();
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
  spdlog::info("moatd {} started: {} event loop(s), data in {}{}", MOAT_VERSION, cfg.threads,
               cfg.data_dir.string(), config_file.empty() ? " (built-in default configuration)" : "");
  material.on_tls_swapped = [&server] { server.recheck_tls_connections(); };
  auto tls_watcher = watch_tls_files(material);

  for (;;) {
    int sig = 0;
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig == SIGHUP) {
      if (config_file.empty())
        spdlog::info("SIGHUP: running on the built-in default; nothing to reload");
      else
        reload(config_file, cfg, material);
      continue;
    }
    spdlog::info("{}: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    break;
  }
  tls_watcher.reset();
  server.stop();
  material.stop_http();
  const auto t = server.totals();
  spdlog::info("stopped: {} messages received, {} sent, {} dropped (queue full), {} protocol errors",
               t.messages_received, t.messages_sent, t.dropped_queue_full, t.protocol_errors);
  return 0;
}
