// ACLs: Mosquitto's acl_file format (user sections, topic/pattern, %u/%c, deny
// first, anonymous section), subscription coverage, $SYS, hostile identities.
#include <gtest/gtest.h>

#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "codec/topic.hpp"
#include "security/acl.hpp"

namespace moat::security {
namespace {

constexpr Identity kAnon{"", "anon-client"};

std::shared_ptr<const Acl> acl(std::string_view text) {
  return Acl::parse_mosquitto(text, "/etc/moat/acl");
}

std::string error_of(std::string_view text) {
  try {
    acl(text);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "no error";
}

bool allowed(const Acl& a, Identity who, Action act, std::string_view topic) {
  return a.check(who, act, topic) == Decision::Allow;
}

// The example of mosquitto.conf(5), extended.
constexpr std::string_view kExample = R"(# anonymous clients
topic read public/#
topic write public/inbox

user alice
topic readwrite alice/#
topic read shared/+/status
topic deny alice/secret/#

user bob
topic bob/#
# patterns apply to everybody, wherever they are written
pattern write sensor/%u/data
pattern read devices/%c/cmd
pattern write $SYS/broker/connection/%c/state
)";

TEST(Acl, AnonymousSectionAppliesOnlyToAnonymous) {
  const auto a = acl(kExample);
  EXPECT_TRUE(allowed(*a, kAnon, Action::Receive, "public/news"));
  EXPECT_TRUE(allowed(*a, kAnon, Action::Subscribe, "public/#"));
  EXPECT_TRUE(allowed(*a, kAnon, Action::Publish, "public/inbox"));
  EXPECT_FALSE(allowed(*a, kAnon, Action::Publish, "public/news"));  // read only
  EXPECT_FALSE(allowed(*a, kAnon, Action::Receive, "alice/x"));
  // A named user does not get the anonymous rules.
  EXPECT_FALSE(allowed(*a, {"alice", "c1"}, Action::Receive, "public/news"));
  EXPECT_FALSE(allowed(*a, {"carol", "c1"}, Action::Receive, "public/news"));
}

TEST(Acl, UserSections) {
  const auto a = acl(kExample);
  const Identity alice{"alice", "a1"};
  const Identity bob{"bob", "b1"};
  EXPECT_TRUE(allowed(*a, alice, Action::Publish, "alice/x/y"));
  EXPECT_TRUE(allowed(*a, alice, Action::Receive, "alice"));  // '#' covers the parent level
  EXPECT_TRUE(allowed(*a, alice, Action::Receive, "shared/room/status"));
  EXPECT_FALSE(allowed(*a, alice, Action::Publish, "shared/room/status"));
  EXPECT_FALSE(allowed(*a, alice, Action::Receive, "shared/room/other"));
  EXPECT_FALSE(allowed(*a, alice, Action::Publish, "bob/x"));
  // `topic bob/#` without an access word is readwrite.
  EXPECT_TRUE(allowed(*a, bob, Action::Publish, "bob/x"));
  EXPECT_TRUE(allowed(*a, bob, Action::Receive, "bob/x"));
  EXPECT_TRUE(allowed(*a, bob, Action::Subscribe, "bob/+/x"));
  EXPECT_FALSE(allowed(*a, bob, Action::Publish, "alice/x"));
  // Unknown users get only the patterns.
  EXPECT_FALSE(allowed(*a, {"carol", "c"}, Action::Publish, "bob/x"));
}

TEST(Acl, DenyWinsWhateverTheOrder) {
  const auto a = acl(kExample);
  const Identity alice{"alice", "a1"};
  EXPECT_FALSE(allowed(*a, alice, Action::Publish, "alice/secret/key"));
  EXPECT_FALSE(allowed(*a, alice, Action::Receive, "alice/secret"));
  EXPECT_FALSE(allowed(*a, alice, Action::Subscribe, "alice/secret/#"));
  EXPECT_TRUE(allowed(*a, alice, Action::Publish, "alice/public"));
  // deny written before the grant: same result.
  const auto b = acl("user u\ntopic deny x/private\ntopic readwrite x/#\n");
  EXPECT_FALSE(allowed(*b, {"u", "c"}, Action::Publish, "x/private"));
  EXPECT_TRUE(allowed(*b, {"u", "c"}, Action::Publish, "x/public"));
  // A pattern deny applies to every user, on top of their own grants.
  const auto c = acl("user u\ntopic readwrite #\npattern deny locked/%u\n");
  EXPECT_FALSE(allowed(*c, {"u", "c"}, Action::Receive, "locked/u"));
  EXPECT_TRUE(allowed(*c, {"u", "c"}, Action::Receive, "locked/v"));
}

TEST(Acl, SubscriptionOverlappingADeniedAreaIsAcceptedDeliveriesAreNot) {
  const auto a = acl(kExample);
  const Identity alice{"alice", "a1"};
  // alice/# is granted; the deny alice/secret/# does not cover all of it.
  EXPECT_TRUE(allowed(*a, alice, Action::Subscribe, "alice/#"));
  EXPECT_FALSE(allowed(*a, alice, Action::Receive, "alice/secret/x"));
  EXPECT_FALSE(allowed(*a, alice, Action::Subscribe, "alice/secret/+"));
}

TEST(Acl, PatternsSubstituteUserAndClientId) {
  const auto a = acl(kExample);
  const Identity alice{"alice", "dev-7"};
  EXPECT_TRUE(allowed(*a, alice, Action::Publish, "sensor/alice/data"));
  EXPECT_FALSE(allowed(*a, alice, Action::Publish, "sensor/bob/data"));
  EXPECT_FALSE(allowed(*a, alice, Action::Receive, "sensor/alice/data"));  // write only
  EXPECT_TRUE(allowed(*a, alice, Action::Subscribe, "devices/dev-7/cmd"));
  EXPECT_FALSE(allowed(*a, alice, Action::Subscribe, "devices/+/cmd"));
  EXPECT_FALSE(allowed(*a, alice, Action::Subscribe, "devices/dev-8/cmd"));
  EXPECT_TRUE(allowed(*a, alice, Action::Publish, "$SYS/broker/connection/dev-7/state"));
  // Patterns apply to users without a section and to anonymous clients (%c).
  EXPECT_TRUE(allowed(*a, {"carol", "c9"}, Action::Publish, "sensor/carol/data"));
  EXPECT_TRUE(allowed(*a, kAnon, Action::Receive, "devices/anon-client/cmd"));
  // %u never matches an anonymous client.
  EXPECT_FALSE(allowed(*a, {"", "x"}, Action::Publish, "sensor//data"));
  // `topic` lines are literal: no substitution.
  const auto b = acl("topic read lit/%u\n");
  EXPECT_TRUE(allowed(*b, kAnon, Action::Receive, "lit/%u"));
}

TEST(Acl, HostileIdentitiesCannotWidenPatterns) {
  const auto a = acl("pattern readwrite users/%u/#\npattern read clients/%c\n");
  // A user named "+" or "#" would turn users/%u/# into users/+/# or users/#/#.
  for (std::string_view evil : {"+", "#", "a/+", "a/#", "x/y", "+/+", "bob/#"}) {
    const Identity who{evil, "c"};
    EXPECT_FALSE(allowed(*a, who, Action::Subscribe, "users/+/#")) << evil;
    EXPECT_FALSE(allowed(*a, who, Action::Subscribe, "users/#")) << evil;
    EXPECT_FALSE(allowed(*a, who, Action::Receive, "users/bob/x")) << evil;
    EXPECT_FALSE(allowed(*a, who, Action::Publish, "users/bob/x")) << evil;
    // The identity's own literal topic does not match either: no match at all.
    EXPECT_FALSE(allowed(*a, who, Action::Publish, "users/x/y")) << evil;
    const Identity by_client{"ok", evil};
    EXPECT_FALSE(allowed(*a, by_client, Action::Subscribe, "clients/+")) << evil;
    EXPECT_FALSE(allowed(*a, by_client, Action::Receive, "clients/bob")) << evil;
  }
  // An honest user still works, and gets only their own tree.
  EXPECT_TRUE(allowed(*a, {"bob", "c"}, Action::Subscribe, "users/bob/#"));
  EXPECT_FALSE(allowed(*a, {"bob", "c"}, Action::Subscribe, "users/+/#"));
  // A first-level %u must not let a user called "$SYS" reach $SYS.
  const auto b = acl("pattern read %u/#\n");
  EXPECT_TRUE(allowed(*b, {"bob", "c"}, Action::Subscribe, "bob/#"));
  EXPECT_FALSE(allowed(*b, {"$SYS", "c"}, Action::Subscribe, "$SYS/#"));
  EXPECT_FALSE(allowed(*b, {"$SYS", "c"}, Action::Receive, "$SYS/broker/uptime"));
}

TEST(Acl, SysTopicsNeedAnExplicitGrant) {
  const auto a = acl("topic readwrite #\nuser admin\ntopic read $SYS/#\nuser plus\ntopic read +/broker/#\n");
  EXPECT_TRUE(allowed(*a, kAnon, Action::Receive, "any/topic"));
  EXPECT_FALSE(allowed(*a, kAnon, Action::Receive, "$SYS/broker/uptime"));
  EXPECT_FALSE(allowed(*a, kAnon, Action::Subscribe, "$SYS/#"));
  EXPECT_FALSE(allowed(*a, kAnon, Action::Publish, "$SYS/broker/uptime"));
  EXPECT_TRUE(allowed(*a, kAnon, Action::Subscribe, "#"));  // matches no $ topic
  EXPECT_TRUE(allowed(*a, {"admin", "c"}, Action::Receive, "$SYS/broker/uptime"));
  EXPECT_TRUE(allowed(*a, {"admin", "c"}, Action::Subscribe, "$SYS/broker/+"));
  EXPECT_FALSE(allowed(*a, {"admin", "c"}, Action::Publish, "$SYS/broker/uptime"));
  EXPECT_FALSE(allowed(*a, {"plus", "c"}, Action::Receive, "$SYS/broker/uptime"));
  EXPECT_FALSE(allowed(*a, {"plus", "c"}, Action::Subscribe, "$SYS/broker/#"));
  EXPECT_TRUE(allowed(*a, {"plus", "c"}, Action::Receive, "x/broker/uptime"));
}

TEST(Acl, DenyByDefault) {
  const auto empty = acl("# nothing\n\n");
  EXPECT_EQ(empty->size(), 0u);
  EXPECT_FALSE(allowed(*empty, kAnon, Action::Receive, "a"));
  EXPECT_FALSE(allowed(*empty, {"u", "c"}, Action::Publish, "a"));
  EXPECT_FALSE(allowed(*empty, {"u", "c"}, Action::Subscribe, "#"));
}

TEST(Acl, MalformedTopicsAreDenied) {
  const auto a = acl("topic readwrite #\n");
  EXPECT_TRUE(allowed(*a, kAnon, Action::Publish, "a/b"));
  EXPECT_FALSE(allowed(*a, kAnon, Action::Publish, "a/+"));
  EXPECT_FALSE(allowed(*a, kAnon, Action::Receive, ""));
  EXPECT_FALSE(allowed(*a, kAnon, Action::Subscribe, "a/#/b"));
  EXPECT_FALSE(allowed(*a, kAnon, Action::Subscribe, "a+"));
}

TEST(FilterCovers, Cases) {
  struct Case {
    std::string_view rule;
    std::string_view filter;
    bool covers;
  };
  const Case cases[] = {
      {"a/#", "a/#", true},     {"a/b", "a/#", false},      {"a/+", "a/#", false},
      {"a/#", "a/+", true},     {"a/#", "a", true},         {"a/#", "a/b/c", true},
      {"a/+", "a/b", true},     {"a/+", "a/+", true},       {"a/b", "a/+", false},
      {"a/b", "a/b", true},     {"a/b", "a/b/c", false},    {"a/b/c", "a/b", false},
      {"a/+", "a", false},      {"a/+/c", "a/+/c", true},   {"+/+", "a/+", true},
      {"+/b", "+/+", false},    {"#", "#", true},           {"#", "a/b/#", true},
      {"#", "+/x", true},       {"+", "#", false},          {"+/#", "#", false},
      {"#", "$SYS/#", false},   {"+/#", "$SYS/a", false},   {"$SYS/#", "$SYS/#", true},
      {"$SYS/#", "$SYS", true}, {"$SYS/+", "$SYS/a", true}, {"#", "/a", true},
      {"+/a", "/a", true},      {"a//b", "a/+/b", false},   {"a/+/b", "a//b", true},
      {"a", "a/", false},       {"a/+", "a/", true},        {"a/+/#", "a/#", false},
      {"a/+/#", "a/x/#", true},
  };
  for (const auto& c : cases)
    EXPECT_EQ(filter_covers(c.rule, c.filter), c.covers) << c.rule << " covers " << c.filter;
}

TEST(Acl, SubscribeNeedsCoverageNotOverlap) {
  const auto a = acl("user u\ntopic read a/#\ntopic read b/x\ntopic read c/+\ntopic write d/#\n");
  const Identity u{"u", "c"};
  EXPECT_TRUE(allowed(*a, u, Action::Subscribe, "a/#"));
  EXPECT_TRUE(allowed(*a, u, Action::Subscribe, "a/+/z"));
  EXPECT_FALSE(allowed(*a, u, Action::Subscribe, "b/#"));  // topic read b/x does not cover b/#
  EXPECT_FALSE(allowed(*a, u, Action::Subscribe, "b/+"));
  EXPECT_TRUE(allowed(*a, u, Action::Subscribe, "b/x"));
  EXPECT_TRUE(allowed(*a, u, Action::Subscribe, "c/+"));
  EXPECT_FALSE(allowed(*a, u, Action::Subscribe, "c/#"));
  EXPECT_FALSE(allowed(*a, u, Action::Subscribe, "d/#"));  // write does not grant subscribe
  EXPECT_FALSE(allowed(*a, u, Action::Subscribe, "#"));
}

TEST(Acl, SyntaxDetails) {
  // Topics may contain spaces; tabs, CRLF and indentation are accepted.
  const auto a =
      acl("topic read with space/#\r\n\ttopic\twrite  x y \r\n  # indented comment\nuser  spaced name \n"
          "topic deny q\n");
  EXPECT_TRUE(allowed(*a, kAnon, Action::Receive, "with space/1"));
  EXPECT_TRUE(allowed(*a, kAnon, Action::Publish, "x y"));
  EXPECT_EQ(a->size(), 3u);
  // A user may appear in two sections: rules add up.
  const auto b = acl("user u\ntopic read a\nuser v\ntopic read b\nuser u\ntopic read c\n");
  EXPECT_TRUE(allowed(*b, {"u", "x"}, Action::Receive, "a"));
  EXPECT_TRUE(allowed(*b, {"u", "x"}, Action::Receive, "c"));
  EXPECT_FALSE(allowed(*b, {"u", "x"}, Action::Receive, "b"));
}

TEST(Acl, ParseErrorsNameFileAndLine) {
  EXPECT_EQ(error_of("# c\nuser\n"), "/etc/moat/acl:2: 'user' needs a user name");
  EXPECT_EQ(error_of("topic read a\nsubscribe a\n"),
            "/etc/moat/acl:2: unknown keyword 'subscribe' (expected user, topic or pattern)");
  EXPECT_EQ(error_of("\n\ntopic\n"), "/etc/moat/acl:3: 'topic' needs a topic");
  EXPECT_EQ(error_of("topic read\n"),
            "/etc/moat/acl:1: missing topic after 'read' (a topic named 'read' is written 'topic readwrite "
            "read')");
  EXPECT_EQ(error_of("topic read a/#/b\n"),
            "/etc/moat/acl:1: 'a/#/b' is not a valid topic filter ('+' and '#' take a whole level, '#' only "
            "last)");
  EXPECT_EQ(error_of("topic read a\npattern write x/dev-%c/y\n"),
            "/etc/moat/acl:2: 'dev-%c': %u and %c must be the whole topic level (as in 'sensor/%u/data')");
  EXPECT_EQ(error_of("topic read a+\n").rfind("/etc/moat/acl:1: 'a+' is not a valid", 0), 0u);
  EXPECT_EQ(error_of("topic read a\xff\n").rfind("/etc/moat/acl:1: topic", 0), 0u);
  EXPECT_EQ(error_of("Topic read a\n").rfind("/etc/moat/acl:1: unknown keyword 'Topic'", 0), 0u);
}

TEST(Acl, LoadMissingFileNamesIt) {
  try {
    Acl::load_mosquitto("/nonexistent/acl");
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("/nonexistent/acl: cannot open", 0), 0u) << e.what();
  }
}

// The rule model that a TOML rule list will also produce.
TEST(Acl, FromRules) {
  std::vector<AclRule> rules;
  rules.push_back(
      {AclRule::Who::Any, "", static_cast<std::uint8_t>(Action::Receive), "news/#", false, true, 0});
  rules.push_back({AclRule::Who::User, "ops", AclRule::kAll, "ops/%c/#", true, true, 0});
  rules.push_back({AclRule::Who::Anonymous, "", AclRule::kWrite, "anon/in", false, true, 0});
  rules.push_back({AclRule::Who::Any, "", AclRule::kAll, "news/internal/#", false, false, 0});
  const auto a = Acl::from_rules(rules);
  EXPECT_EQ(a->size(), 4u);
  EXPECT_TRUE(allowed(*a, {"x", "c"}, Action::Receive, "news/today"));
  EXPECT_FALSE(allowed(*a, {"x", "c"}, Action::Subscribe, "news/#"));  // Receive only
  EXPECT_FALSE(allowed(*a, {"x", "c"}, Action::Receive, "news/internal/a"));
  EXPECT_TRUE(allowed(*a, {"ops", "m1"}, Action::Publish, "ops/m1/x"));
  EXPECT_FALSE(allowed(*a, {"ops", "m1"}, Action::Publish, "ops/m2/x"));
  EXPECT_TRUE(allowed(*a, kAnon, Action::Publish, "anon/in"));
  EXPECT_FALSE(allowed(*a, {"x", "c"}, Action::Publish, "anon/in"));

  rules.push_back({AclRule::Who::User, "", AclRule::kAll, "a", false, true, 7});
  try {
    Acl::from_rules(rules);
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), "rule 5 (line 7): empty user name");
  }
  EXPECT_THROW(Acl::from_rules({{AclRule::Who::Any, "", 0, "a", false, true, 0}}), std::invalid_argument);
  EXPECT_THROW(Acl::from_rules({{AclRule::Who::Any, "", AclRule::kAll, "a/#/b", false, true, 0}}),
               std::invalid_argument);
}

TEST(Acl, LongPatternExpansionUsesTheHeap) {
  const std::string user(300, 'u');
  const auto a = acl("pattern read long/%u/%c\n");
  EXPECT_TRUE(allowed(*a, {user, "cid"}, Action::Receive, "long/" + user + "/cid"));
  EXPECT_FALSE(allowed(*a, {user, "cid"}, Action::Receive, "long/" + user + "/cie"));
}

// The publish/receive index against the rules' plain meaning, computed here
// rule by rule: expand %u/%c whole levels (a value that is empty, holds '/',
// '+' or '#', or starts with '$' in the first level excludes the rule), then
// codec::topic_matches; any deny denies, else any allow allows.
std::optional<Decision> reference(const std::vector<AclRule>& rules, const Identity& who, Action action,
                                  std::string_view topic) {
  const auto bit = static_cast<std::uint8_t>(action);
  bool deny = false;
  bool allow = false;
  for (const auto& r : rules) {
    if ((r.actions & bit) == 0) continue;
    if (r.who == AclRule::Who::Anonymous && !who.username.empty()) continue;
    if (r.who == AclRule::Who::User && (who.username.empty() || r.user != who.username)) continue;
    std::string filter;
    bool usable = true;
    std::size_t at = 0;
    for (std::size_t level = 0;; ++level) {
      const auto end = std::min(r.filter.find('/', at), r.filter.size());
      std::string part = r.filter.substr(at, end - at);
      if (r.substitute && (part == "%u" || part == "%c")) {
        part = std::string(part == "%u" ? who.username : who.client_id);
        if (part.empty() || part.find_first_of("/+#") != std::string::npos || (level == 0 && part[0] == '$'))
          usable = false;
      }
      filter += (level ? "/" : "") + part;
      if (end == r.filter.size()) break;
      at = end + 1;
    }
    if (usable && codec::topic_matches(filter, topic)) (r.allow ? allow : deny) = true;
  }
  if (deny) return Decision::Deny;
  if (allow) return Decision::Allow;
  return std::nullopt;
}

TEST(Acl, IndexedNameChecksMatchTheRulesOneByOne) {
  std::mt19937 rng(20261127);
  auto pick = [&](const std::vector<std::string>& from) { return from[rng() % from.size()]; };
  const std::vector<std::string> rule_levels = {"a", "b", "$SYS", "%u", "%c", "+", "", "u1"};
  const std::vector<std::string> topic_levels = {"a", "b", "$SYS", "u1", "c1", "", "%u"};
  const std::vector<std::string> names = {"", "u1", "a", "$SYS", "c1", "x/y", "+"};
  for (int round = 0; round < 300; ++round) {
    std::vector<AclRule> rules(1 + rng() % 12);
    for (auto& r : rules) {
      const auto levels = 1 + rng() % 4;
      for (unsigned i = 0; i < levels; ++i) r.filter += (i ? "/" : "") + pick(rule_levels);
      if (rng() % 3 == 0) r.filter += "/#";
      if (r.filter.empty()) r.filter = "#";  // one empty level is no filter
      r.who = static_cast<AclRule::Who>(rng() % 3);
      if (r.who == AclRule::Who::User) r.user = pick({"u1", "a"});
      r.actions = static_cast<std::uint8_t>(1 + rng() % 7);
      r.substitute = rng() % 2 == 0;
      r.allow = rng() % 4 != 0;
    }
    const auto acl_under_test = Acl::from_rules(rules);
    for (int q = 0; q < 200; ++q) {
      std::string topic;
      const auto levels = 1 + rng() % 5;
      for (unsigned i = 0; i < levels; ++i) topic += (i ? "/" : "") + pick(topic_levels);
      if (topic.empty()) topic = "a";
      const std::string user = pick(names);
      const std::string client = pick(names);
      const Identity who{user, client};
      for (const Action action : {Action::Publish, Action::Receive}) {
        const auto want = reference(rules, who, action, topic);
        ASSERT_EQ(acl_under_test->decide(who, action, topic), want)
            << "topic '" << topic << "' user '" << user << "' client '" << client << "' action "
            << to_string(action) << ", round " << round;
      }
    }
  }
}

TEST(Acl, ConcurrentChecksAndReload) {
  Reloadable<Acl> table(acl("topic read a/#\n"));
  std::atomic<int> wrong{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 3; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        const auto snap = table.load();
        if (!allowed(*snap, kAnon, Action::Receive, "a/b")) ++wrong;
      }
    });
  for (int i = 0; i < 50; ++i) table.store(acl("topic read a/#\ntopic read b\n"));
  for (auto& t : ts) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(table.load()->size(), 2u);
}

TEST(Acl, FiltersIntersect) {
  EXPECT_TRUE(filters_intersect("a/b", "a/b"));
  EXPECT_TRUE(filters_intersect("a/+", "+/b"));
  EXPECT_TRUE(filters_intersect("a/#", "a"));
  EXPECT_TRUE(filters_intersect("a", "a/#"));
  EXPECT_TRUE(filters_intersect("#", "x/y/z"));
  EXPECT_TRUE(filters_intersect("a//b", "a/+/b"));
  EXPECT_FALSE(filters_intersect("a/b", "a/c"));
  EXPECT_FALSE(filters_intersect("a/b", "a/b/c"));
  EXPECT_FALSE(filters_intersect("a/+", "a"));
  EXPECT_FALSE(filters_intersect("a/+/c", "a/b/d/#"));
  EXPECT_FALSE(filters_intersect("a/+/c", "a/b/d"));
}

// A topic name that `filter` matches, its wildcards filled from `levels`.
std::string instance(std::string_view filter, std::mt19937& rng, const std::vector<std::string>& levels) {
  std::string out;
  std::size_t at = 0;
  bool first = true;
  auto add = [&](const std::string& level) {
    out += (first ? "" : "/") + level;
    first = false;
  };
  while (at <= filter.size()) {
    const auto end = std::min(filter.find('/', at), filter.size());
    const std::string_view level = filter.substr(at, end - at);
    if (level == "#") {
      const auto n = rng() % 4;  // "a/#" matches "a" too
      for (unsigned i = 0; i < n; ++i) add(levels[rng() % levels.size()]);
      if (first) add(levels[rng() % levels.size()]);  // "#" alone: one level at least
      break;
    }
    add(level == "+" ? levels[rng() % levels.size()] : std::string(level));
    at = end + 1;
  }
  return out;
}

// allows_every_match() promises that every topic name a filter matches is
// allowed: checked against decide_locally() on random names of random
// filters, under random ordered rules and files. It must also say yes often
// enough to be of use, and never for a filter a deny rule reaches.
TEST(Acl, AllowsEveryMatchHoldsForEveryNameOfTheFilter) {
  std::mt19937 rng(20261127);
  auto pick = [&](const std::vector<std::string>& from) { return from[rng() % from.size()]; };
  const std::vector<std::string> rule_levels = {"a", "b", "$SYS", "%u", "%c", "+", "u1", "c1"};
  const std::vector<std::string> filter_levels = {"a", "b", "$SYS", "u1", "c1", "+", ""};
  const std::vector<std::string> name_levels = {"a", "b", "$SYS", "u1", "c1", "", "x", "%u"};
  const std::vector<std::string> names = {"", "u1", "c1", "a", "$SYS", "x/y", "+"};
  auto rule_filter = [&] {
    std::string f;
    const auto levels = 1 + rng() % 3;
    for (unsigned i = 0; i < levels; ++i) f += (i ? "/" : "") + pick(rule_levels);
    if (rng() % 2 == 0) f += "/#";
    return f;
  };
  int covered = 0;
  int not_covered = 0;
  for (int round = 0; round < 400; ++round) {
    std::vector<AclRule> file_rules(rng() % 6);
    for (auto& r : file_rules) {
      r.filter = rule_filter();
      r.who = static_cast<AclRule::Who>(rng() % 3);
      if (r.who == AclRule::Who::User) r.user = pick({"u1", "a"});
      r.actions = static_cast<std::uint8_t>(1 + rng() % 7);
      r.substitute = rng() % 2 == 0;
      r.allow = rng() % 4 != 0;
    }
    std::vector<OrderedRule> ordered(rng() % 6);
    for (auto& r : ordered) {
      r.topic = rule_filter();
      r.actions = static_cast<std::uint8_t>(1 + rng() % 7);
      if (rng() % 3 == 0) r.user = pick({"u1", "a", "u*", "*"});
      if (rng() % 4 == 0) r.client_id = pick({"c1", "c*", "%u"});
      r.allow = rng() % 4 != 0;
    }
    const AccessPolicy policy(ordered.empty() ? nullptr : OrderedRules::make(ordered),
                              file_rules.empty() ? nullptr : Acl::from_rules(file_rules));
    for (int q = 0; q < 60; ++q) {
      std::string filter;
      const auto levels = 1 + rng() % 4;
      for (unsigned i = 0; i < levels; ++i) filter += (i ? "/" : "") + pick(filter_levels);
      if (rng() % 3 == 0) filter += "/#";
      if (rng() % 10 == 0) filter = "#";
      if (!codec::valid_topic_filter(filter)) continue;
      const std::string user = pick(names);
      const std::string client = pick(names);
      const Identity who{user, client};
      for (const Action action : {Action::Publish, Action::Receive}) {
        const auto resolved = policy.resolve(who);
        const bool every = allows_every_match(&policy, who, action, filter, rng() % 2 ? &resolved : nullptr);
        (every ? covered : not_covered)++;
        if (!every) continue;
        for (int n = 0; n < 40; ++n) {
          const std::string topic = instance(filter, rng, name_levels);
          if (!codec::valid_topic_name(topic) || !codec::topic_matches(filter, topic)) continue;
          ASSERT_EQ(decide_locally(&policy, who, action, topic), Decision::Allow)
              << "filter '" << filter << "' topic '" << topic << "' user '" << who.username << "' client '"
              << who.client_id << "' action " << to_string(action) << ", round " << round;
        }
      }
    }
  }
  EXPECT_GT(covered, 500);
  EXPECT_GT(not_covered, 500);
}

TEST(Acl, AllowsEveryMatchExamples) {
  const AccessPolicy file(nullptr, acl("pattern read tenant/%u/#\nuser u1\ntopic deny tenant/u1/secret\n"));
  EXPECT_TRUE(allows_every_match(&file, {"u2", "c"}, Action::Receive, "tenant/u2/#"));
  EXPECT_FALSE(allows_every_match(&file, {"u2", "c"}, Action::Receive, "tenant/+/x"));  // not all u2's
  EXPECT_FALSE(allows_every_match(&file, {"u1", "c"}, Action::Receive, "tenant/u1/#"));  // the deny
  EXPECT_TRUE(allows_every_match(&file, {"u1", "c"}, Action::Receive, "tenant/u1/open/#"));
  EXPECT_FALSE(allows_every_match(&file, {"u2", "c"}, Action::Publish, "tenant/u2/#"));  // read only
  EXPECT_FALSE(allows_every_match(&file, {"u2", "c"}, Action::Subscribe, "tenant/u2/#"));
  EXPECT_FALSE(allows_every_match(nullptr, {"u2", "c"}, Action::Receive, "tenant/u2/#"));
  Identity root{"root", "c"};
  root.superuser = true;
  EXPECT_TRUE(allows_every_match(&file, root, Action::Receive, "#"));
}

}  // namespace
}  // namespace moat::security
