// Ordered ACL rules ([[acl.rule]], JWT claims): first match wins, user and
// client-id globs, %u/%c, $SYS, precedence over the Mosquitto-format file;
// client-identifier binding and its globs.
#include <gtest/gtest.h>

#include <chrono>

#include "security/acl.hpp"
#include "security/clientid.hpp"

namespace moat::security {
namespace {

OrderedRule rule(bool allow, std::uint8_t actions, std::string topic, std::optional<std::string> user = {},
                 std::optional<std::string> client_id = {}) {
  OrderedRule r;
  r.allow = allow;
  r.actions = actions;
  r.topic = std::move(topic);
  r.user = std::move(user);
  r.client_id = std::move(client_id);
  return r;
}

constexpr auto kPub = static_cast<std::uint8_t>(Action::Publish);
constexpr auto kSub = static_cast<std::uint8_t>(Action::Subscribe);
constexpr auto kRecv = static_cast<std::uint8_t>(Action::Receive);
constexpr auto kAll = AclRule::kAll;

Decision check(const OrderedRules& r, Identity who, Action a, std::string_view topic) {
  const AccessPolicy p(std::shared_ptr<const OrderedRules>(&r, [](const OrderedRules*) {}), nullptr);
  return p.check(who, a, topic);
}

TEST(Glob, Semantics) {
  EXPECT_TRUE(glob_match("sensor-*", "sensor-1"));
  EXPECT_TRUE(glob_match("sensor-*", "sensor-"));
  EXPECT_FALSE(glob_match("sensor-*", "sensor"));
  EXPECT_TRUE(glob_match("*", ""));
  EXPECT_TRUE(glob_match("a*b*c", "a-b-x-c"));
  EXPECT_FALSE(glob_match("a*b*c", "a-b-x-d"));
  EXPECT_TRUE(glob_match("a?c", "abc"));
  EXPECT_TRUE(glob_match("a?c",
                         "a\xc3\xa9"
                         "c"));  // '?' is one UTF-8 character
  EXPECT_FALSE(glob_match("a?c", "ac"));
  EXPECT_TRUE(glob_match("exact", "exact"));
  EXPECT_FALSE(glob_match("exact", "exactly"));
  EXPECT_TRUE(glob_match("*ly", "exactly"));
  // %u is the user name, literally.
  EXPECT_TRUE(glob_match("sensor-%u-*", "sensor-alice-7", "alice"));
  EXPECT_FALSE(glob_match("sensor-%u-*", "sensor-bob-7", "alice"));
  EXPECT_FALSE(glob_match("sensor-%u-*", "sensor--7", ""));  // no user name: no match
  EXPECT_TRUE(glob_match("%u", "a*b", "a*b"));
  EXPECT_FALSE(glob_match("%u", "aXb", "a*b"));  // the user's '*' is not a wildcard
  EXPECT_TRUE(glob_match("%x", "%x"));           // any other '%' is literal
  EXPECT_TRUE(is_glob("a*"));
  EXPECT_TRUE(is_glob("%u"));
  EXPECT_FALSE(is_glob("alice"));
}

TEST(ClientIdRules, BindsUsersToIdentifiers) {
  ClientIdRules::Spec spec;
  spec.users["alice"] = {"alice-phone", "alice-laptop"};
  spec.users["plant-7"] = {"sensor-%u-*"};
  spec.others = std::vector<std::string>{"%u-*"};
  spec.anonymous = std::vector<std::string>{"guest-?"};
  const auto r = ClientIdRules::make(spec);
  EXPECT_TRUE(r->allowed("alice", "alice-phone"));
  EXPECT_FALSE(r->allowed("alice", "alice-tablet"));
  EXPECT_FALSE(r->allowed("alice", "alice-x"));  // her own list replaces `others`
  EXPECT_TRUE(r->allowed("plant-7", "sensor-plant-7-12"));
  EXPECT_FALSE(r->allowed("plant-7", "sensor-plant-8-12"));
  EXPECT_TRUE(r->allowed("bob", "bob-1"));
  EXPECT_FALSE(r->allowed("bob", "alice-phone"));
  EXPECT_TRUE(r->allowed("", "guest-1"));
  EXPECT_FALSE(r->allowed("", "guest-12"));
  // Without `others` / `anonymous`, identities not listed may use any identifier.
  ClientIdRules::Spec open;
  open.users["alice"] = {"alice-*"};
  const auto o = ClientIdRules::make(open);
  EXPECT_TRUE(o->allowed("bob", "anything"));
  EXPECT_TRUE(o->allowed("", "anything"));
  EXPECT_FALSE(o->allowed("alice", "anything"));
  ClientIdRules::Spec bad;
  bad.users["alice"] = {};
  EXPECT_THROW(ClientIdRules::make(bad), std::invalid_argument);
  bad.users["alice"] = {""};
  EXPECT_THROW(ClientIdRules::make(bad), std::invalid_argument);
}

TEST(OrderedRules, FirstMatchWins) {
  const auto r = OrderedRules::make({
      rule(false, kAll, "a/secret/#"), rule(true, kAll, "a/#"),
      rule(false, kAll, "a/public"),  // never reached for a/public: rule 2 matched first
  });
  EXPECT_EQ(check(*r, {"u", "c"}, Action::Publish, "a/x"), Decision::Allow);
  EXPECT_EQ(check(*r, {"u", "c"}, Action::Publish, "a/secret/x"), Decision::Deny);
  EXPECT_EQ(check(*r, {"u", "c"}, Action::Publish, "a/public"), Decision::Allow);
  EXPECT_EQ(check(*r, {"u", "c"}, Action::Publish, "b"), Decision::Deny);  // no match: deny
  EXPECT_FALSE(r->check({"u", "c"}, Action::Publish, "b").has_value());
  // The order is what decides: the same rules reversed.
  const auto rev = OrderedRules::make({rule(true, kAll, "a/#"), rule(false, kAll, "a/secret/#")});
  EXPECT_EQ(check(*rev, {"u", "c"}, Action::Publish, "a/secret/x"), Decision::Allow);
}

TEST(OrderedRules, UsersClientIdsAndActions) {
  const auto r = OrderedRules::make({
      rule(true, kPub, "sensors/%u/data", "sensor-*", "sensor-%u-*"),
      rule(true, kSub | kRecv, "sensors/#", "ops"),
      rule(true, kRecv | kSub, "public/#", ""),  // anonymous only
      rule(false, kAll, "#", "*"),               // everyone with a user name: nothing else
      rule(true, kAll, "anon/#"),                // never reached by named users
  });
  const Identity s1{"sensor-1", "sensor-sensor-1-a"};
  EXPECT_EQ(check(*r, s1, Action::Publish, "sensors/sensor-1/data"), Decision::Allow);
  EXPECT_EQ(check(*r, s1, Action::Publish, "sensors/sensor-2/data"), Decision::Deny);
  EXPECT_EQ(check(*r, {"sensor-1", "other-id"}, Action::Publish, "sensors/sensor-1/data"), Decision::Deny);
  EXPECT_EQ(check(*r, s1, Action::Subscribe, "sensors/#"), Decision::Deny);
  EXPECT_EQ(check(*r, {"ops", "x"}, Action::Subscribe, "sensors/#"), Decision::Allow);
  EXPECT_EQ(check(*r, {"ops", "x"}, Action::Receive, "sensors/a/data"), Decision::Allow);
  EXPECT_EQ(check(*r, {"ops", "x"}, Action::Publish, "sensors/a/data"), Decision::Deny);
  EXPECT_EQ(check(*r, {"", "x"}, Action::Subscribe, "public/#"), Decision::Allow);
  EXPECT_EQ(check(*r, {"", "x"}, Action::Publish, "anon/1"), Decision::Allow);  // "*" skips anonymous
  EXPECT_EQ(check(*r, {"ops", "x"}, Action::Publish, "anon/1"), Decision::Deny);
  EXPECT_EQ(check(*r, {"ops", "x"}, Action::Subscribe, "public/#"), Decision::Deny);  // "" is anonymous only
}

TEST(OrderedRules, LiteralUserBucketsKeepTheWrittenOrder) {
  // alice's own rules and the generic ones interleave; the order decides.
  const auto r = OrderedRules::make({
      rule(false, kAll, "x/1", "alice"),
      rule(true, kAll, "x/#"),
      rule(false, kAll, "x/2", "alice"),  // after the generic grant: never decides
      rule(true, kAll, "y/#", "alice"),
  });
  EXPECT_EQ(check(*r, {"alice", "c"}, Action::Publish, "x/1"), Decision::Deny);
  EXPECT_EQ(check(*r, {"alice", "c"}, Action::Publish, "x/2"), Decision::Allow);
  EXPECT_EQ(check(*r, {"alice", "c"}, Action::Publish, "y/2"), Decision::Allow);
  EXPECT_EQ(check(*r, {"bob", "c"}, Action::Publish, "x/1"), Decision::Allow);
  EXPECT_EQ(check(*r, {"bob", "c"}, Action::Publish, "y/2"), Decision::Deny);
}

TEST(OrderedRules, SubstitutionIsSafeAndSysNeedsAGrant) {
  const auto r = OrderedRules::make({
      rule(true, kAll, "users/%u/#"),
      rule(true, kAll, "clients/%c/#"),
      rule(true, kRecv | kSub, "#"),
  });
  EXPECT_EQ(check(*r, {"alice", "c1"}, Action::Publish, "users/alice/x"), Decision::Allow);
  EXPECT_EQ(check(*r, {"alice", "c1"}, Action::Publish, "users/bob/x"), Decision::Deny);
  EXPECT_EQ(check(*r, {"alice", "c1"}, Action::Publish, "clients/c1/x"), Decision::Allow);
  // A wildcard or '/' in a user name never widens the rule.
  EXPECT_EQ(check(*r, {"#", "c1"}, Action::Publish, "users/bob/x"), Decision::Deny);
  EXPECT_EQ(check(*r, {"a/b", "c1"}, Action::Publish, "users/a/b/x"), Decision::Deny);
  // "#" does not reach $SYS.
  EXPECT_EQ(check(*r, {"alice", "c1"}, Action::Subscribe, "$SYS/#"), Decision::Deny);
  EXPECT_EQ(check(*r, {"alice", "c1"}, Action::Receive, "$SYS/broker/uptime"), Decision::Deny);
  const auto sys = OrderedRules::make({rule(true, kRecv | kSub, "$SYS/#", "monitor")});
  EXPECT_EQ(check(*sys, {"monitor", "m"}, Action::Subscribe, "$SYS/#"), Decision::Allow);
}

TEST(OrderedRules, InvalidRules) {
  EXPECT_THROW(OrderedRules::make({rule(true, 0, "a")}), std::invalid_argument);
  EXPECT_THROW(OrderedRules::make({rule(true, kAll, "")}), std::invalid_argument);
  EXPECT_THROW(OrderedRules::make({rule(true, kAll, "a/#/b")}), std::invalid_argument);
  EXPECT_THROW(OrderedRules::make({rule(true, kAll, "dev-%u/x")}), std::invalid_argument);
  EXPECT_THROW(OrderedRules::make({rule(true, kAll, "a", std::nullopt, "")}), std::invalid_argument);
  try {
    OrderedRules::make({rule(true, kAll, "ok"), rule(true, kAll, "a/#/b")});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("rule 2", 0), 0u) << e.what();
  }
}

TEST(AccessPolicy, RulesFirstThenTheFileThenDeny) {
  const auto rules = OrderedRules::make({
      rule(false, kAll, "shared/private/#"),
      rule(true, kPub, "toml/#", "alice"),
  });
  const auto file =
      Acl::parse_mosquitto("user alice\ntopic readwrite shared/#\ntopic deny file-denied/#\n", "acl");
  const AccessPolicy p(rules, file);
  const Identity alice{"alice", "c"};
  EXPECT_EQ(p.check(alice, Action::Publish, "toml/x"), Decision::Allow);           // a rule
  EXPECT_EQ(p.check(alice, Action::Publish, "shared/x"), Decision::Allow);         // the file
  EXPECT_EQ(p.check(alice, Action::Publish, "shared/private/x"), Decision::Deny);  // a rule, before the file
  EXPECT_EQ(p.check(alice, Action::Publish, "elsewhere"), Decision::Deny);         // nobody: deny
  EXPECT_EQ(p.check(alice, Action::Publish, "bad/+/topic"), Decision::Deny);       // not a topic name
  const AccessPolicy only_rules(rules, nullptr);
  EXPECT_EQ(only_rules.check(alice, Action::Publish, "shared/x"), Decision::Deny);
}

TEST(AccessPolicy, ConnectionRulesComeFirst) {
  const auto own = OrderedRules::make({rule(true, kPub, "token/#"), rule(false, kPub, "shared/x")});
  const auto file = Acl::parse_mosquitto("user alice\ntopic readwrite shared/#\n", "acl");
  const AccessPolicy p(nullptr, file);
  Identity replace{"alice", "c", own.get(), true};
  Identity prepend{"alice", "c", own.get(), false};
  EXPECT_EQ(authorize(&p, replace, Action::Publish, "token/1"), Decision::Allow);
  EXPECT_EQ(authorize(&p, replace, Action::Publish, "shared/y"), Decision::Deny);  // the file is not asked
  EXPECT_EQ(authorize(&p, prepend, Action::Publish, "shared/y"), Decision::Allow);
  EXPECT_EQ(authorize(&p, prepend, Action::Publish, "shared/x"), Decision::Deny);  // the token's deny first
  // No broker ACL at all: what the token does not decide is allowed, unless it replaces.
  EXPECT_EQ(authorize(nullptr, prepend, Action::Publish, "anything"), Decision::Allow);
  EXPECT_EQ(authorize(nullptr, replace, Action::Publish, "anything"), Decision::Deny);
  EXPECT_EQ(authorize(nullptr, Identity{"alice", "c"}, Action::Publish, "anything"), Decision::Allow);
}

// Publish-path cost with 1000 rules of 1000 users plus %u patterns: a check
// visits the user's bucket and the generic rules only. Prints ns per check.
TEST(OrderedRules, ThousandRulesCost) {
  std::vector<OrderedRule> rules;
  for (int i = 0; i < 1000; ++i)
    rules.push_back(rule(true, kPub, "fleet/u" + std::to_string(i) + "/#", "u" + std::to_string(i)));
  rules.push_back(rule(true, kPub, "users/%u/#", "*"));
  rules.push_back(rule(true, kRecv | kSub, "clients/%c/#"));
  const auto r = OrderedRules::make(std::move(rules));
  const AccessPolicy p(r, nullptr);
  const Identity who{"u500", "c500"};
  const int n = 200000;
  int allowed = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    allowed += p.check(who, Action::Publish, "users/u500/temp") == Decision::Allow;
    allowed += p.check(who, Action::Publish, "fleet/u500/x") == Decision::Allow;
  }
  const auto ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / (2.0 * n);
  EXPECT_EQ(allowed, 2 * n);
  std::printf("[ info ] ordered rules, 1002 rules: %.0f ns per check\n", ns);
}

}  // namespace
}  // namespace moat::security
