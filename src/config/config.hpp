// moatd configuration: one TOML file (see docs/configuration.md), validated whole
// before anything starts. Every error names file:line:column, the key and why.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "broker/limits.hpp"
#include "broker/payload_policy.hpp"
#include "security/acl.hpp"
#include "security/clientid.hpp"
#include "security/defence.hpp"
#include "security/iam.hpp"
#include "security/jwt.hpp"
#include "security/tls.hpp"

namespace moat::config {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Listener {
  std::string name;
  std::string host;  // numeric address
  std::uint16_t port = 1883;
  std::string transport = "tcp";
  std::vector<std::string> auth;
  std::optional<security::TlsServerConfig> tls;  // [listener.tls], for transport "tls"
  // [listener.clientid]: replaces [auth.clientid] on this listener.
  std::optional<security::ClientIdRules::Spec> clientid;
  // [listener.password] file: replaces [auth.password] on this listener.
  std::filesystem::path password_file;
  // [listener.jwt]: replaces [auth.jwt] on this listener.
  std::optional<security::JwtConfig> jwt;
  // [listener.acl] file and [[listener.acl.rule]]: replace [acl] for every
  // check of a connection that came in through this listener.
  std::filesystem::path acl_file;
  std::vector<security::OrderedRule> acl_rules;
  bool has_acl = false;  // [listener.acl] is present (a file or rules)
  // [listener.http]: replaces [auth.http] on this listener, both its "http"
  // method and the remote authorization of the connections that came in here.
  std::optional<security::IamConfig> iam;
  // [listener.defence]: replace [auth.defence]'s enabled and allow here.
  std::optional<bool> defence_enabled;
  std::optional<std::vector<security::Cidr>> defence_allow;
};

struct Config {
  std::filesystem::path source;  // the file read; empty for the built-in default
  std::filesystem::path data_dir = "moat-data";
  std::uint32_t threads = 0;              // 0: one event loop per core
  std::chrono::seconds sys_interval{10};  // $SYS statistics; 0 = off
  std::string log_level = "info";
  std::string store_engine = "rocksdb";
  std::string durability = "sync";               // sync | interval | none
  std::chrono::milliseconds sync_interval{100};  // durability = "interval"
  broker::Limits limits;
  std::vector<Listener> listeners;
  std::filesystem::path password_file;                    // [auth.password] file
  std::filesystem::path acl_file;                         // [acl] file
  std::vector<security::OrderedRule> acl_rules;           // [[acl.rule]], in order
  bool has_acl = false;                                   // [acl] has a file or rules (has_access_policy)
  std::optional<security::ClientIdRules::Spec> clientid;  // [auth.clientid]
  std::optional<security::JwtConfig> jwt;                 // [auth.jwt]
  std::optional<security::IamConfig> iam;                 // [auth.http]
  security::DefenceConfig defence;                        // [auth.defence]
  std::string audit;  // [log] audit: a path (resolved), "-" for stderr, "" for none
  // [[payload_policy]], in order; keyrings are read by broker::PayloadPolicies::load.
  std::vector<broker::PayloadPolicySpec> payload_policies;
};

// The IAM server of a listener: its own [listener.http], else [auth.http];
// null when there is none.
const security::IamConfig* iam_of(const Config& c, const Listener& l);

// The password file the listener's password methods check: its own
// [listener.password], else [auth.password]; empty when there is none.
const std::filesystem::path& password_file_of(const Config& c, const Listener& l);
// Which peers the brute-force defence judges on the listener: its own
// [listener.defence] enabled and allow, else [auth.defence]'s.
security::DefenceScope defence_of(const Config& c, const Listener& l);
// Does the brute-force defence judge anything on some listener?
bool defended(const Config& c);

// Does some listener authenticate clients (an auth method other than
// "anonymous")? Then authorization denies by default, broker-wide.
bool authenticates(const Config& c);
// Is there an access policy, which denies what no rule grants: [acl] is
// configured, or some listener authenticates clients (then, without [acl],
// the policy is empty and only a JWT's ACL claim, the IAM server's
// authorization or an IAM superuser can allow anything). Otherwise (every
// listener anonymous-only, no [acl]) every client may do everything.
bool has_access_policy(const Config& c);

// The safe default: plain MQTT on 127.0.0.1:1883, anonymous clients, data in
// ./moat-data.
Config default_config();

// Parses and validates; relative paths are resolved against the file's folder.
Config load_file(const std::filesystem::path& file);
// The same on text already read; `source` names it in errors.
Config parse(std::string_view text, const std::filesystem::path& source);

// "HOST:PORT" or "[IPV6]:PORT"; throws ConfigError-free std::invalid_argument with the reason.
void parse_bind(std::string_view bind, std::string& host, std::uint16_t& port);

}  // namespace moat::config
