// The retained store's filter lookup (a trie over topic levels) finds exactly
// the topics codec::topic_matches accepts, in topic order, as topics come and go.
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <string>
#include <vector>

#include "broker/retained.hpp"
#include "codec/topic.hpp"

namespace moat::test {
namespace {

using broker::RetainedStore;
using codec::QoS;

std::vector<std::string> lookup(const RetainedStore& store, std::string_view filter) {
  std::vector<std::string> got;
  for (const auto& m : store.match(filter).messages) got.emplace_back(m->topic);
  return got;
}

std::vector<std::string> expected(const std::set<std::string>& topics, std::string_view filter) {
  std::vector<std::string> want;
  for (const auto& t : topics)
    if (codec::topic_matches(filter, t)) want.push_back(t);
  return want;  // std::set: already in topic order
}

TEST(RetainedStore, FilterLookupMatchesTopicMatchesAsTopicsComeAndGo) {
  const std::vector<std::string> levels = {"a", "b", "", "$SYS", "$x", "long-level-name"};
  std::mt19937 rng(20261126);
  const auto random_topic = [&] {
    std::string t;
    const int n = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < n; ++i) {
      if (i) t += '/';
      t += levels[rng() % levels.size()];
    }
    return t;
  };
  std::vector<std::string> filters = {"#", "+", "+/#", "a/#", "a/+", "+/+", "a/+/b", "$SYS/#", "+/b/#",
                                      "/#", "+/", "a//#", "$x/+", "a", "a/b/+/#", "+/+/+/+"};
  RetainedStore store;
  std::set<std::string> topics;
  for (int round = 0; round < 400; ++round) {
    const std::string t = random_topic();
    const bool clear = rng() % 3 == 0;
    store.update(broker::make_message(t, clear ? "" : "v", QoS::AtMostOnce, true));
    if (clear)
      topics.erase(t);
    else
      topics.insert(t);
    ASSERT_EQ(store.size(), topics.size());
    if (round % 20 != 0) continue;
    for (const auto& f : filters) EXPECT_EQ(lookup(store, f), expected(topics, f)) << "filter " << f;
    filters.push_back(random_topic());  // a literal filter too
  }
}

TEST(RetainedStore, WildcardsAtTheFirstLevelSkipDollarTopics) {
  RetainedStore store;
  for (const char* t : {"$SYS/broker/uptime", "$SYS", "a", "a/b", "/x"})
    store.update(broker::make_message(t, "v", QoS::AtMostOnce, true));
  EXPECT_EQ(lookup(store, "#"), (std::vector<std::string>{"/x", "a", "a/b"}));
  EXPECT_EQ(lookup(store, "+"), (std::vector<std::string>{"a"}));
  EXPECT_EQ(lookup(store, "+/+"), (std::vector<std::string>{"/x", "a/b"}));
  EXPECT_EQ(lookup(store, "$SYS/#"), (std::vector<std::string>{"$SYS", "$SYS/broker/uptime"}));
  EXPECT_EQ(lookup(store, "a/#"), (std::vector<std::string>{"a", "a/b"}));
}

TEST(RetainedStore, ClearingPrunesAndReplacingKeepsOneMessage) {
  RetainedStore store;
  store.update(broker::make_message("a/b/c", "1", QoS::AtMostOnce, true));
  store.update(broker::make_message("a/b/c", "2", QoS::AtMostOnce, true));
  std::vector<std::string> payloads;
  for (const auto& m : store.match("a/#").messages) payloads.emplace_back(m->payload);
  EXPECT_EQ(payloads, std::vector<std::string>{"2"});
  store.update(broker::make_message("a/b/c", "", QoS::AtMostOnce, true));
  EXPECT_EQ(store.size(), 0u);
  EXPECT_TRUE(lookup(store, "#").empty());
  store.update(broker::make_message("a/b", "3", QoS::AtMostOnce, true));
  EXPECT_EQ(lookup(store, "a/+/#"), std::vector<std::string>{"a/b"});
}

// What a loop must deliver to a subscription that reaches it late: the
// matching messages it set after the subscriber's lookup, and nothing else.
TEST(RetainedStore, ChangedSinceGivesWhatOneLoopSetAfterALookup) {
  RetainedStore store;
  const RetainedStore::Limits none;
  auto set = [&](const char* topic, const char* payload, std::uint32_t loop) {
    return store.update(broker::make_message(topic, payload, QoS::AtMostOnce, true), none, loop);
  };
  auto topics = [](const std::vector<broker::MessagePtr>& v) {
    std::vector<std::string> out;
    out.reserve(v.size());
    for (const auto& m : v) out.push_back(std::string(m->topic) + "=" + std::string(m->payload));
    return out;
  };
  set("a/1", "x", 1);
  set("a/2", "x", 0);
  const auto seen = store.match("a/#");
  EXPECT_EQ(topics(seen.messages), (std::vector<std::string>{"a/1=x", "a/2=x"}));
  EXPECT_TRUE(store.changed_since("a/#", seen.version, 1).empty());  // nothing since

  set("a/3", "y", 1);
  set("a/2", "y", 1);  // replaced by loop 1
  set("a/1", "y", 0);  // replaced by loop 0: no longer loop 1's
  set("b/1", "y", 1);  // does not match
  EXPECT_EQ(store.update(broker::make_message("a/9", "", QoS::AtMostOnce, true), none, 1),
            RetainedStore::Update::Unchanged);
  EXPECT_EQ(topics(store.changed_since("a/#", seen.version, 1)), (std::vector<std::string>{"a/2=y", "a/3=y"}));
  EXPECT_EQ(topics(store.changed_since("a/+", seen.version, 0)), (std::vector<std::string>{"a/1=y"}));
  EXPECT_EQ(topics(store.changed_since("a/3", seen.version, 1)), (std::vector<std::string>{"a/3=y"}));
  // A lookup now has seen all of it.
  EXPECT_TRUE(store.changed_since("a/#", store.match("a/#").version, 1).empty());
  // Restored and $SYS messages belong to no loop.
  store.update(broker::make_message("a/4", "z", QoS::AtMostOnce, true));
  EXPECT_EQ(topics(store.changed_since("a/4", seen.version, 1)), std::vector<std::string>{});
  EXPECT_EQ(topics(store.changed_since("a/4", seen.version, 0)), std::vector<std::string>{});
}

}  // namespace
}  // namespace moat::test
