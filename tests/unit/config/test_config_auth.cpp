// moat.toml: the authentication and authorization sections ([auth.jwt],
// [auth.clientid], [listener.clientid], [auth.defence], [[acl.rule]],
// [log] audit) parse into their models, and every mistake is an error that
// names the file, the line and the key.
#include <gtest/gtest.h>

#include "config/config.hpp"
#include "config_test_util.hpp"

namespace moat::config {
namespace {

using test_util::error_of;
using test_util::kListener;

TEST(ConfigAuth, FullSecuritySetup) {
  const auto c = parse(std::string(R"(
[log]
audit = "audit.jsonl"

[auth.password]
file = "passwd"

[auth.jwt]
public_key = "jwt.pem"
jwks = "/etc/keys/jwks.json"
issuer = "https://id.example"
audience = ["moat", "mqtt"]
leeway = 5
username_claim = "preferred_username"
match_username = false
acl_claim = "mqtt_acl"
acl_mode = "prepend"

[auth.clientid]
users = { alice = ["alice-*"], "plant 7" = ["sensor-%u-*", "plant-7"] }
others = ["%u-*"]

[auth.defence]
backoff_initial = 0.5
backoff_max = 8
window = 120
ban_after = 5
ban_time = 3600
connection_rate = 5
allow = ["10.0.0.0/8", "2001:db8::/32"]
log_interval = 30

[acl]
file = "acl"

[[acl.rule]]
permission = "deny"
action = "all"
topic = "secret/#"

[[acl.rule]]
permission = "allow"
action = ["publish", "subscribe"]
topic = "sensors/%u/#"
user = "sensor-*"
clientid = "sensor-%u-*"

[[listener]]
name = "jwt"
bind = "0.0.0.0:1884"
auth = ["jwt", "password"]
  [listener.clientid]
  anonymous = ["guest-*"]
)"),
                       "/etc/moat/moat.toml");
  EXPECT_EQ(c.audit, "/etc/moat/audit.jsonl");
  ASSERT_TRUE(c.jwt);
  EXPECT_EQ(c.jwt->public_key, "/etc/moat/jwt.pem");
  EXPECT_EQ(c.jwt->jwks, "/etc/keys/jwks.json");
  EXPECT_TRUE(c.jwt->secret_file.empty());
  EXPECT_EQ(c.jwt->issuer, "https://id.example");
  EXPECT_EQ(c.jwt->audience, (std::vector<std::string>{"moat", "mqtt"}));
  EXPECT_EQ(c.jwt->leeway, std::chrono::seconds(5));
  EXPECT_EQ(c.jwt->username_claim, "preferred_username");
  EXPECT_FALSE(c.jwt->match_username);
  EXPECT_EQ(c.jwt->acl_claim, "mqtt_acl");
  EXPECT_FALSE(c.jwt->acl_replace);
  ASSERT_TRUE(c.clientid);
  EXPECT_EQ(c.clientid->users.at("alice"), std::vector<std::string>{"alice-*"});
  EXPECT_EQ(c.clientid->users.at("plant 7").size(), 2u);
  EXPECT_EQ(*c.clientid->others, std::vector<std::string>{"%u-*"});
  EXPECT_FALSE(c.clientid->anonymous);
  EXPECT_EQ(c.defence.backoff_initial, std::chrono::milliseconds(500));
  EXPECT_EQ(c.defence.backoff_max, std::chrono::milliseconds(8000));
  EXPECT_EQ(c.defence.window, std::chrono::seconds(120));
  EXPECT_EQ(c.defence.ban_after, 5u);
  EXPECT_EQ(c.defence.ban_time, std::chrono::seconds(3600));
  EXPECT_EQ(c.defence.connection_rate, 5u);
  EXPECT_EQ(c.defence.connection_burst, 10u);  // twice the rate unless given
  ASSERT_EQ(c.defence.allow.size(), 2u);
  EXPECT_EQ(c.defence.log_interval, std::chrono::seconds(30));
  EXPECT_TRUE(c.has_acl);
  EXPECT_EQ(c.acl_file, "/etc/moat/acl");
  ASSERT_EQ(c.acl_rules.size(), 2u);
  EXPECT_FALSE(c.acl_rules[0].allow);
  EXPECT_EQ(c.acl_rules[0].actions, security::AclRule::kAll);
  EXPECT_FALSE(c.acl_rules[0].user);
  EXPECT_EQ(c.acl_rules[1].actions, static_cast<std::uint8_t>(security::Action::Publish) |
                                        static_cast<std::uint8_t>(security::Action::Subscribe));
  EXPECT_EQ(*c.acl_rules[1].user, "sensor-*");
  EXPECT_EQ(*c.acl_rules[1].client_id, "sensor-%u-*");
  EXPECT_GT(c.acl_rules[1].line, c.acl_rules[0].line);
  ASSERT_EQ(c.listeners.size(), 1u);
  ASSERT_TRUE(c.listeners[0].clientid);
  EXPECT_EQ(*c.listeners[0].clientid->anonymous, std::vector<std::string>{"guest-*"});
}

TEST(ConfigAuth, DefaultsAreSafe) {
  const auto c = parse(std::string(kListener), "/etc/moat/moat.toml");
  EXPECT_TRUE(c.defence.enabled);
  EXPECT_EQ(c.defence.ban_after, 10u);
  EXPECT_EQ(c.defence.connection_rate, 20u);
  EXPECT_EQ(c.defence.allow.size(), 2u);  // loopback
  EXPECT_FALSE(c.has_acl);
  EXPECT_TRUE(c.audit.empty());
  EXPECT_FALSE(c.jwt);
  const auto stderr_audit = parse(std::string(kListener) + "[log]\naudit = \"-\"\n", "/etc/moat/moat.toml");
  EXPECT_EQ(stderr_audit.audit, "-");
  // Rules alone, without a file, make an ACL.
  const auto rules_only = parse(
      std::string(kListener) + "[[acl.rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"#\"\n",
      "/etc/moat/moat.toml");
  EXPECT_TRUE(rules_only.has_acl);
  EXPECT_TRUE(rules_only.acl_file.empty());
}

// Authorization denies by default once some listener authenticates, with or
// without [acl]; anonymous-only listeners without [acl] (the built-in default
// included) have no access policy.
TEST(ConfigAuth, AccessPolicyOnceAnyListenerAuthenticates) {
  const auto anonymous = parse(std::string(kListener), "/etc/moat/moat.toml");
  EXPECT_FALSE(authenticates(anonymous));
  EXPECT_FALSE(has_access_policy(anonymous));
  EXPECT_FALSE(has_access_policy(default_config()));
  const std::string password = R"(
[auth.password]
file = "passwd"

[[listener]]
name = "plain"
bind = "127.0.0.1:1884"
auth = ["password"]
)";
  // Another listener's method counts: the policy is broker-wide.
  const auto mixed = parse(std::string(kListener) + password, "/etc/moat/moat.toml");
  EXPECT_TRUE(authenticates(mixed));
  EXPECT_FALSE(mixed.has_acl);
  EXPECT_TRUE(has_access_policy(mixed));
  // "anonymous" after another method still authenticates.
  const auto chain = parse(R"(
[auth.password]
file = "passwd"

[[listener]]
name = "plain"
bind = "127.0.0.1:1884"
auth = ["password", "anonymous"]
)",
                           "/etc/moat/moat.toml");
  EXPECT_TRUE(has_access_policy(chain));
  // [acl] alone makes a policy too.
  const auto acl_only = parse(std::string(kListener) + "[acl]\nfile = \"acl\"\n", "/etc/moat/moat.toml");
  EXPECT_FALSE(authenticates(acl_only));
  EXPECT_TRUE(has_access_policy(acl_only));
}

TEST(ConfigAuth, PasswordFileAndJwtKeysPerListener) {
  auto has = [](const std::string& e, std::string_view what) { return e.find(what) != std::string::npos; };
  const auto c = parse(std::string(R"(
[auth.password]
file = "passwd"

[[listener]]
name = "plant"
bind = "127.0.0.1:1883"
auth = ["password"]
  [listener.password]
  file = "plant/passwd"

[[listener]]
name = "office"
bind = "127.0.0.1:1884"
auth = ["password"]
)"),
                       "/etc/moat/moat.toml");
  ASSERT_EQ(c.listeners.size(), 2u);
  EXPECT_EQ(c.listeners[0].password_file, "/etc/moat/plant/passwd");
  EXPECT_EQ(password_file_of(c, c.listeners[0]), "/etc/moat/plant/passwd");
  EXPECT_TRUE(c.listeners[1].password_file.empty());
  EXPECT_EQ(password_file_of(c, c.listeners[1]), "/etc/moat/passwd");

  // A listener's own file is enough for its password methods, without [auth.password].
  const auto own = parse(
      "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nauth = [\"password\"]\n"
      "password = { file = \"/p\" }\n",
      "/etc/moat/moat.toml");
  EXPECT_EQ(password_file_of(own, own.listeners[0]), "/p");
  EXPECT_TRUE(own.password_file.empty());

  // The same for JWT keys: [listener.jwt] without [auth.jwt].
  const auto jwt = parse(
      "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nauth = [\"jwt\"]\n"
      "[listener.jwt]\nsecret_file = \"a.secret\"\nissuer = \"https://a.example\"\n",
      "/etc/moat/moat.toml");
  ASSERT_TRUE(jwt.listeners[0].jwt);
  EXPECT_EQ(jwt.listeners[0].jwt->secret_file, "/etc/moat/a.secret");
  EXPECT_EQ(jwt.listeners[0].jwt->issuer, "https://a.example");
  EXPECT_FALSE(jwt.jwt);

  // ...but another listener without one still needs [auth.password].
  auto e = error_of(
      "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nauth = [\"password\"]\n"
      "password = { file = \"/p\" }\n"
      "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:2\"\nauth = [\"password\"]\n");
  EXPECT_TRUE(has(e, "moat.toml:9:") && has(e,
                                            "listener[1].auth: method 'password' needs [auth.password] or "
                                            "[listener.password] file"))
      << e;
  e = error_of(std::string(kListener) + "jwt = { secret_file = \"s\", leeway = -1 }\n");
  EXPECT_TRUE(has(e, "listener[0].jwt.leeway")) << e;
  e = error_of(std::string(kListener) + "jwt = {}\n");
  EXPECT_TRUE(has(e, "listener[0].jwt: needs a key")) << e;
  e = error_of(std::string(kListener) + "password = { path = \"/p\" }\n");
  EXPECT_TRUE(has(e, "listener[0].password.path: unknown key")) << e;
  e = error_of(std::string(kListener) + "password = \"/p\"\n");
  EXPECT_TRUE(has(e, "listener[0].password: must be a table ([listener.password])")) << e;
  e = error_of(std::string(kListener) + "password = {}\n");
  EXPECT_TRUE(has(e, "listener[0].password: missing key 'file'")) << e;
}

TEST(ConfigAuth, AclPerListener) {
  auto has = [](const std::string& e, std::string_view what) { return e.find(what) != std::string::npos; };
  const auto c = parse(std::string(R"(
[acl]
file = "acl"

[[listener]]
name = "a"
bind = "127.0.0.1:1883"
auth = ["password"]
password = { file = "passwd" }

[[listener]]
name = "b"
bind = "127.0.0.1:1884"
auth = ["password"]
password = { file = "passwd" }
  [listener.acl]
  file = "b/acl"

  [[listener.acl.rule]]
  permission = "deny"
  action = "publish"
  topic = "b/secret/#"

  [[listener.acl.rule]]
  permission = "allow"
  action = ["subscribe", "receive"]
  topic = "b/%u/#"
  user = "*"
)"),
                       "/etc/moat/moat.toml");
  EXPECT_TRUE(c.has_acl);
  EXPECT_EQ(c.acl_file, "/etc/moat/acl");
  ASSERT_EQ(c.listeners.size(), 2u);
  EXPECT_FALSE(c.listeners[0].has_acl);
  EXPECT_TRUE(c.listeners[0].acl_file.empty());
  EXPECT_TRUE(c.listeners[0].acl_rules.empty());
  const Listener& b = c.listeners[1];
  EXPECT_TRUE(b.has_acl);
  EXPECT_EQ(b.acl_file, "/etc/moat/b/acl");
  ASSERT_EQ(b.acl_rules.size(), 2u);
  EXPECT_FALSE(b.acl_rules[0].allow);
  EXPECT_EQ(b.acl_rules[0].topic, "b/secret/#");
  EXPECT_EQ(b.acl_rules[0].actions, static_cast<std::uint8_t>(security::Action::Publish));
  EXPECT_GT(b.acl_rules[1].line, b.acl_rules[0].line);
  EXPECT_TRUE(b.acl_rules[1].allow);
  EXPECT_EQ(b.acl_rules[1].user, "*");
  EXPECT_EQ(b.acl_rules[1].topic, "b/%u/#");
  EXPECT_TRUE(c.acl_rules.empty());  // a listener's rules are not [acl]'s

  // Rules alone, without [acl] or a file.
  const auto rules =
      parse(std::string(kListener) +
                "[[listener.acl.rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"#\"\n",
            "/etc/moat/moat.toml");
  EXPECT_FALSE(rules.has_acl);
  ASSERT_TRUE(rules.listeners[0].has_acl);
  EXPECT_TRUE(rules.listeners[0].acl_file.empty());
  EXPECT_EQ(rules.listeners[0].acl_rules.size(), 1u);

  // Mistakes: FILE:LINE:COLUMN: KEY: REASON.
  auto e = error_of(std::string(kListener) + "[listener.acl]\nfile = \"a\"\nrules = []\n");
  EXPECT_TRUE(has(e, "moat.toml:8:") && has(e, "listener[0].acl.rules: unknown key (known here: file, rule)"))
      << e;
  e = error_of(std::string(kListener) + "[listener.acl]\n");
  EXPECT_TRUE(has(e, "moat.toml:6:") &&
              has(e, "listener[0].acl: needs a file = \"...\" or [[listener.acl.rule]] entries"))
      << e;
  e = error_of(std::string(kListener) + "acl = \"a\"\n");
  EXPECT_TRUE(has(e, "moat.toml:6:") && has(e, "listener[0].acl: must be a table ([listener.acl])")) << e;
  e = error_of(std::string(kListener) + "[listener.acl]\nrule = { permission = \"allow\" }\n");
  EXPECT_TRUE(has(e, "listener[0].acl.rule: must be an array of tables ([[listener.acl.rule]])")) << e;
  e = error_of(std::string(kListener) +
               "[[listener.acl.rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"#\"\n"
               "[[listener.acl.rule]]\npermission = \"maybe\"\naction = \"all\"\ntopic = \"#\"\n");
  EXPECT_TRUE(has(e, "moat.toml:11:") && has(e, "listener[0].acl.rule[1].permission")) << e;
}

TEST(ConfigAuth, DefencePerListener) {
  auto has = [](const std::string& e, std::string_view what) { return e.find(what) != std::string::npos; };
  const auto c = parse(std::string(R"(
[auth.defence]
ban_after = 3
allow = ["10.0.0.0/8"]

[[listener]]
name = "public"
bind = "0.0.0.0:1883"
auth = ["password"]
password = { file = "passwd" }
defence = { allow = [] }

[[listener]]
name = "plant"
bind = "10.1.2.3:1883"
auth = ["password"]
password = { file = "passwd" }
  [listener.defence]
  enabled = false

[[listener]]
name = "other"
bind = "127.0.0.1:1884"
auth = ["password"]
password = { file = "passwd" }
)"),
                       "/etc/moat/moat.toml");
  ASSERT_EQ(c.listeners.size(), 3u);
  EXPECT_TRUE(defended(c));
  const auto pub = defence_of(c, c.listeners[0]);
  EXPECT_TRUE(pub.enabled);
  EXPECT_TRUE(pub.allow.empty());  // its own list replaces [auth.defence]'s
  EXPECT_TRUE(pub.covers("10.9.9.9"));
  const auto plant = defence_of(c, c.listeners[1]);
  EXPECT_FALSE(plant.enabled);
  EXPECT_FALSE(plant.covers("192.0.2.1"));
  const auto other = defence_of(c, c.listeners[2]);  // [auth.defence]'s
  EXPECT_TRUE(other.enabled);
  EXPECT_FALSE(other.covers("10.9.9.9"));
  EXPECT_TRUE(other.covers("192.0.2.1"));
  EXPECT_TRUE(other.covers("::1"));  // [auth.defence] allow replaced the loopback default

  // Off broker-wide, on for one listener: defended, and only there.
  const auto one =
      parse(std::string(kListener) + "defence = { enabled = true }\n" + "[auth.defence]\nenabled = false\n",
            "/etc/moat/moat.toml");
  EXPECT_TRUE(defended(one));
  EXPECT_TRUE(defence_of(one, one.listeners[0]).enabled);
  EXPECT_TRUE(defence_of(one, one.listeners[0]).covers("192.0.2.1"));
  EXPECT_FALSE(defence_of(one, one.listeners[0]).covers("127.0.0.1"));  // the default allow list
  const auto off = parse(std::string(kListener) + "[auth.defence]\nenabled = false\n", "/etc/moat/moat.toml");
  EXPECT_FALSE(defended(off));

  // Mistakes: FILE:LINE:COLUMN: KEY: REASON.
  auto e = error_of(std::string(kListener) + "[listener.defence]\nban_after = 3\n");
  EXPECT_TRUE(has(e, "moat.toml:7:") && has(e,
                                            "listener[0].defence.ban_after: [listener.defence] takes only "
                                            "enabled and allow; the thresholds are [auth.defence]'s"))
      << e;
  e = error_of(std::string(kListener) + "[listener.defence]\nallow = [\"10.0.0.1/8\"]\n");
  EXPECT_TRUE(has(e, "moat.toml:7:") &&
              has(e, "listener[0].defence.allow: '10.0.0.1/8' is not an address or CIDR block"))
      << e;
  e = error_of(std::string(kListener) + "defence = false\n");
  EXPECT_TRUE(has(e, "moat.toml:6:") && has(e, "listener[0].defence: must be a table ([listener.defence])"))
      << e;
  e = error_of(std::string(kListener) + "[listener.defence]\nenabled = \"no\"\n");
  EXPECT_TRUE(has(e, "listener[0].defence.enabled")) << e;
}

TEST(ConfigAuth, Mistakes) {
  const std::string l(kListener);
  auto has = [](const std::string& e, std::string_view what) { return e.find(what) != std::string::npos; };
  std::string e = error_of("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nauth = [\"jwt\"]\n");
  EXPECT_TRUE(has(e, "auth: method 'jwt' needs an [auth.jwt] or [listener.jwt] table")) << e;
  e = error_of(l + "[auth.jwt]\nissuer = \"x\"\n");
  EXPECT_TRUE(has(e, "auth.jwt: needs a key")) << e;
  e = error_of(l + "[auth.jwt]\nsecret_file = \"s\"\nacl_mode = \"merge\"\n");
  EXPECT_TRUE(has(e, "auth.jwt.acl_mode: 'merge' is not one of: replace | prepend")) << e;
  e = error_of(l + "[auth.jwt]\nsecret_file = \"s\"\nalgorithm = \"HS256\"\n");
  EXPECT_TRUE(has(e, "auth.jwt.algorithm: unknown key")) << e;
  e = error_of(l + "[auth.jwt]\nsecret_file = \"s\"\naudience = 3\n");
  EXPECT_TRUE(has(e, "auth.jwt.audience: must be a string or an array of strings")) << e;
  e = error_of(
      "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nauth = [\"certificate+password\"]\n"
      "[auth.password]\nfile = \"p\"\n");
  EXPECT_TRUE(has(e, "needs transport = \"tls\"")) << e;
  e = error_of("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nauth = [\"psk+password\"]\n");
  EXPECT_TRUE(has(e, "method 'psk+password' needs [auth.password]")) << e;
  e = error_of("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nauth = [\"anonymous\", \"anonymous\"]\n");
  EXPECT_TRUE(has(e, "listed twice")) << e;

  e = error_of(l + "[auth.clientid]\nusers = { alice = [] }\n");
  EXPECT_TRUE(has(e, "auth.clientid: users.alice: empty list")) << e;
  e = error_of(l + "[auth.clientid]\nusers = { alice = \"alice-*\" }\n");
  EXPECT_TRUE(has(e, "auth.clientid.users.alice: must be an array")) << e;
  e = error_of(l + "[auth.clientid]\nother = [\"x\"]\n");
  EXPECT_TRUE(has(e, "auth.clientid.other: unknown key")) << e;

  e = error_of(l + "[auth.defence]\nallow = [\"10.0.0.1/8\"]\n");
  EXPECT_TRUE(has(e, "auth.defence.allow: '10.0.0.1/8' is not an address or CIDR block")) << e;
  EXPECT_TRUE(has(e, "/etc/moat/moat.toml:7:")) << e;
  e = error_of(l + "[auth.defence]\nbackoff_initial = 5\nbackoff_max = 1\n");
  EXPECT_TRUE(has(e, "backoff_max: must not be below backoff_initial")) << e;
  e = error_of(l + "[auth.defence]\nban_time = 0\n");
  EXPECT_TRUE(has(e, "auth.defence.ban_time: must be between 1 and")) << e;

  e = error_of(l + "[[acl.rule]]\naction = \"all\"\ntopic = \"#\"\n");
  EXPECT_TRUE(has(e, "acl.rule[0]: missing key 'permission'")) << e;
  e = error_of(l + "[[acl.rule]]\npermission = \"allow\"\naction = \"read\"\ntopic = \"#\"\n");
  EXPECT_TRUE(has(e, "acl.rule[0].action: 'read' is not one of")) << e;
  e = error_of(l + "[[acl.rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"a/#/b\"\n");
  EXPECT_TRUE(has(e, "acl.rule[0]: 'a/#/b' is not a valid topic filter")) << e;
  EXPECT_TRUE(has(e, "/etc/moat/moat.toml:6:")) << e;
  e = error_of(l +
               "[[acl.rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"x\"\nusername = \"a\"\n");
  EXPECT_TRUE(has(e, "acl.rule[0].username: unknown key")) << e;
  e = error_of(l + "[acl]\n");
  EXPECT_TRUE(has(e, "acl: needs a file")) << e;
  e = error_of(l + "[log]\naudit = \"\"\n");
  EXPECT_TRUE(has(e, "log.audit: must be a file name or \"-\"")) << e;
  e = error_of(l + "[listener.clientid]\n");  // attaches to the listener: an empty table is fine
  EXPECT_EQ(e, "no error");
}

}  // namespace
}  // namespace moat::config

namespace moat::config {
namespace {

constexpr std::string_view kHttpListener = R"(
[[listener]]
name = "iam"
bind = "127.0.0.1:1883"
auth = ["http"]
)";

TEST(ConfigIam, FullTableAndDefaults) {
  const auto c = parse(std::string(R"(
[auth.http]
url = "https://iam.internal:8443/mqtt/auth?v=1"
authorize = true
authorize_url = "https://iam.internal:8443/mqtt/acl"
ca = "iam-ca.crt"
server_name = "iam.internal"
cert = "moatd.crt"
key = "moatd.key"
connect_timeout = 0.5
timeout = 3
retries = 4
retry_backoff = 0.05
pool_size = 16
cache_ttl = 120
cache_negative_ttl = 0
cache_size = 5000
on_error = "next"
send_password = "value"

[limits]
auth_timeout = 7.5
)") + std::string(kHttpListener),
                       "/etc/moat/moat.toml");
  ASSERT_TRUE(c.iam);
  const auto& i = *c.iam;
  EXPECT_TRUE(i.url.tls);
  EXPECT_EQ(i.url.host, "iam.internal");
  EXPECT_EQ(i.url.port, 8443);
  EXPECT_EQ(i.url.target, "/mqtt/auth?v=1");
  EXPECT_TRUE(i.authorize);
  ASSERT_TRUE(i.authorize_url);
  EXPECT_EQ(i.authorize_url->target, "/mqtt/acl");
  EXPECT_EQ(i.ca, "/etc/moat/iam-ca.crt");
  EXPECT_EQ(i.cert, "/etc/moat/moatd.crt");
  EXPECT_EQ(i.server_name, "iam.internal");
  EXPECT_EQ(i.connect_timeout.count(), 500);
  EXPECT_EQ(i.timeout.count(), 3000);
  EXPECT_EQ(i.retries, 4u);
  EXPECT_EQ(i.retry_backoff.count(), 50);
  EXPECT_EQ(i.pool_size, 16u);
  EXPECT_EQ(i.cache_ttl.count(), 120'000);
  EXPECT_EQ(i.cache_negative_ttl.count(), 0);
  EXPECT_EQ(i.cache_size, 5000u);
  EXPECT_TRUE(i.on_error_next);
  EXPECT_TRUE(i.send_password);
  EXPECT_EQ(c.limits.auth_timeout.count(), 7500);
  EXPECT_EQ(c.listeners[0].auth, std::vector<std::string>{"http"});

  const auto d =
      parse(std::string("[auth.http]\nurl = \"http://127.0.0.1:8080\"\n") + std::string(kHttpListener),
            "/etc/moat/moat.toml");
  ASSERT_TRUE(d.iam);
  EXPECT_FALSE(d.iam->url.tls);
  EXPECT_EQ(d.iam->url.port, 8080);
  EXPECT_EQ(d.iam->url.target, "/");
  EXPECT_FALSE(d.iam->authorize);
  EXPECT_FALSE(d.iam->on_error_next);  // fail closed
  EXPECT_FALSE(d.iam->send_password);  // presence only
  EXPECT_EQ(d.iam->timeout.count(), 5000);
  EXPECT_EQ(d.iam->cache_ttl.count(), 60'000);
  EXPECT_EQ(d.limits.auth_timeout.count(), 10'000);
}

TEST(ConfigIam, Mistakes) {
  auto err = [](std::string_view iam, std::string_view listener = kHttpListener) {
    try {
      parse(std::string(iam) + std::string(listener), "/etc/moat/moat.toml");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto has = [](const std::string& text, std::string_view what) {
    return text.find(what) != std::string::npos ? ::testing::AssertionSuccess()
                                                : ::testing::AssertionFailure() << text;
  };
  EXPECT_TRUE(has(err("", kHttpListener), "method 'http' needs an [auth.http] or [listener.http] table"));
  EXPECT_TRUE(
      has(err("[auth.http]\nauthorize = true\n"), "/etc/moat/moat.toml:1:1: auth.http: missing key 'url'"));
  EXPECT_TRUE(
      has(err("[auth.http]\nurl = \"ftp://iam\"\n"), "auth.http.url: must start with http:// or https://"));
  EXPECT_TRUE(has(err("[auth.http]\nurl = \"https://user:pw@iam/\"\n"), "do not belong in the URL"));
  EXPECT_TRUE(has(err("[auth.http]\nurl = \"https://iam:0/\"\n"), "out of range"));
  EXPECT_TRUE(has(err("[auth.http]\nurl = \"https://iam/\"\nurl2 = 1\n"), "auth.http.url2: unknown key"));
  EXPECT_TRUE(
      has(err("[auth.http]\nurl = \"http://iam/\"\nca = \"ca.crt\"\n"), "auth.http.ca: only for https://"));
  EXPECT_TRUE(
      has(err("[auth.http]\nurl = \"https://iam/\"\ncert = \"c.crt\"\n"), "cert and key go together"));
  EXPECT_TRUE(has(err("[auth.http]\nurl = \"https://iam/\"\nauthorize_url = \"https://iam/acl\"\n"),
                  "authorize_url: only with authorize = true"));
  EXPECT_TRUE(has(err("[auth.http]\nurl = \"https://iam/\"\non_error = \"allow\"\n"),
                  "auth.http.on_error: 'allow' is not one of: deny | next"));
  EXPECT_TRUE(
      has(err("[auth.http]\nurl = \"https://iam/\"\ntimeout = 0\n"), "auth.http.timeout: must be between"));
  // The password itself only over TLS, unless explicitly allowed.
  EXPECT_TRUE(has(err("[auth.http]\nurl = \"http://iam/\"\nsend_password = \"value\"\n"),
                  "auth.http.send_password: \"value\" sends passwords: the url must be https://"));
  EXPECT_EQ(err("[auth.http]\nurl = \"http://iam/\"\nsend_password = \"value\"\ninsecure_password_over_http "
                "= true\n"),
            "no error");
  EXPECT_TRUE(has(err("[limits]\nauth_timeout = 0\n", kListener), "limits.auth_timeout: must be between"));
}

TEST(ConfigIam, IamServerPerListener) {
  const auto c = parse(std::string(R"(
[auth.http]
url = "http://127.0.0.1:8080/auth"
authorize = true

[[listener]]
name = "a"
bind = "127.0.0.1:1883"
auth = ["http"]

[[listener]]
name = "b"
bind = "127.0.0.1:1884"
auth = ["http"]
  [listener.http]
  url = "https://iam-b.internal:8443/mqtt/auth"
  authorize = true
  authorize_url = "https://iam-b.internal:8443/mqtt/acl"
  ca = "iam-b-ca.crt"
  cache_ttl = 5
  on_error = "next"
)"),
                       "/etc/moat/moat.toml");
  ASSERT_TRUE(c.iam);
  EXPECT_EQ(c.iam->url.port, 8080);
  ASSERT_EQ(c.listeners.size(), 2u);
  EXPECT_FALSE(c.listeners[0].iam);
  EXPECT_EQ(iam_of(c, c.listeners[0]), &*c.iam);  // [auth.http]
  const Listener& b = c.listeners[1];
  ASSERT_TRUE(b.iam);
  EXPECT_EQ(iam_of(c, b), &*b.iam);  // its own replaces [auth.http]
  EXPECT_TRUE(b.iam->url.tls);
  EXPECT_EQ(b.iam->url.host, "iam-b.internal");
  EXPECT_EQ(b.iam->url.target, "/mqtt/auth");
  EXPECT_TRUE(b.iam->authorize);
  ASSERT_TRUE(b.iam->authorize_url);
  EXPECT_EQ(b.iam->authorize_url->target, "/mqtt/acl");
  EXPECT_EQ(b.iam->ca, "/etc/moat/iam-b-ca.crt");  // relative to the file
  EXPECT_EQ(b.iam->cache_ttl.count(), 5000);
  EXPECT_TRUE(b.iam->on_error_next);
  EXPECT_EQ(b.iam->timeout.count(), 5000);  // the defaults of [auth.http]

  // [listener.http] alone, without [auth.http]: the method 'http' is fine there.
  const auto alone = parse(std::string(kHttpListener) + "[listener.http]\nurl = \"http://127.0.0.1:9/\"\n",
                           "/etc/moat/moat.toml");
  EXPECT_FALSE(alone.iam);
  ASSERT_TRUE(alone.listeners[0].iam);
  EXPECT_FALSE(alone.listeners[0].iam->authorize);
  // A listener that does not name 'http' may still have one (for authorization).
  EXPECT_EQ(
      error_of(std::string(kListener) + "[listener.http]\nurl = \"http://127.0.0.1:9/\"\nauthorize = true\n"),
      "no error");

  // Mistakes: FILE:LINE:COLUMN: KEY: REASON.
  auto has = [](const std::string& e, std::string_view what) {
    return e.find(what) != std::string::npos ? ::testing::AssertionSuccess()
                                             : ::testing::AssertionFailure() << e;
  };
  // 'http' needs [auth.http] or its listener's own: another listener's does not do.
  auto e = error_of(std::string(kHttpListener) + R"(
[[listener]]
name = "other"
bind = "127.0.0.1:1884"
auth = ["http"]
  [listener.http]
  url = "http://127.0.0.1:9/"
)");
  EXPECT_TRUE(
      has(e, "moat.toml:5:") &&
      has(e, "listener[0].auth: method 'http' needs an [auth.http] or [listener.http] table with a url"))
      << e;
  e = error_of(std::string(kHttpListener) + "[listener.http]\nurl = \"http://127.0.0.1:9/\"\nurls = 1\n");
  EXPECT_TRUE(has(e, "moat.toml:8:") && has(e, "listener[0].http.urls: unknown key")) << e;
  e = error_of(std::string(kHttpListener) + "[listener.http]\nauthorize = true\n");
  EXPECT_TRUE(has(e, "moat.toml:6:") && has(e, "listener[0].http: missing key 'url'")) << e;
  e = error_of(std::string(kHttpListener) + "[listener.http]\nurl = \"ftp://iam\"\n");
  EXPECT_TRUE(has(e, "moat.toml:7:") && has(e, "listener[0].http.url: must start with http:// or https://"))
      << e;
  e = error_of(std::string(kHttpListener) + "[listener.http]\nurl = \"http://iam/\"\nca = \"ca.crt\"\n");
  EXPECT_TRUE(has(e, "listener[0].http.ca: only for https://"));
  e = error_of(std::string(kHttpListener) +
               "[listener.http]\nurl = \"http://iam/\"\nsend_password = \"value\"\n");
  EXPECT_TRUE(has(e, "listener[0].http.send_password: \"value\" sends passwords"));
  e = error_of(std::string(kHttpListener) + "http = \"http://iam/\"\n");
  EXPECT_TRUE(has(e, "moat.toml:6:") && has(e, "listener[0].http: must be a table ([listener.http])")) << e;
}

TEST(ConfigIam, Urls) {
  auto u = security::HttpUrl::parse("https://[2001:db8::1]:8443/a/b");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "2001:db8::1");
  EXPECT_EQ(u->origin(), "https://[2001:db8::1]:8443");
  u = security::HttpUrl::parse("http://iam?x=1");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->target, "/?x=1");
  EXPECT_EQ(u->port, 80);
  std::string why;
  EXPECT_FALSE(security::HttpUrl::parse("https://iam/a b", &why));
  EXPECT_NE(why.find("%-encoded"), std::string::npos);
  EXPECT_FALSE(security::HttpUrl::parse("https://iam/#frag", &why));
  EXPECT_FALSE(security::HttpUrl::parse("https://[::1/", &why));
  EXPECT_FALSE(security::HttpUrl::parse("https://:443/", &why));
  EXPECT_FALSE(security::HttpUrl::parse("https://iam:99999/", &why));
}

}  // namespace
}  // namespace moat::config
