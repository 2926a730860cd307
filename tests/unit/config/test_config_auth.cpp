// moat.toml: the authentication and authorization sections ([auth.jwt],
// [auth.clientid], [listener.clientid], [auth.defence], [[acl.rule]],
// [log] audit) parse into their models, and every mistake is an error that
// names the file, the line and the key.
#include <gtest/gtest.h>

#include "config/config.hpp"

namespace moat::config {
namespace {

std::string error_of(std::string_view text) {
  try {
    parse(text, "/etc/moat/moat.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

constexpr std::string_view kListener = R"(
[[listener]]
name = "local"
bind = "127.0.0.1:1883"
auth = ["anonymous"]
)";

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

TEST(ConfigAuth, Mistakes) {
  const std::string l(kListener);
  auto has = [](const std::string& e, std::string_view what) { return e.find(what) != std::string::npos; };
  std::string e = error_of("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nauth = [\"jwt\"]\n");
  EXPECT_TRUE(has(e, "auth: method 'jwt' needs an [auth.jwt] table")) << e;
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
