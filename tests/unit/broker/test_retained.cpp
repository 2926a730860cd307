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
  store.for_each_match(filter, [&](const broker::MessagePtr& m) { got.emplace_back(m->topic); });
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
  store.for_each_match("a/#", [&](const broker::MessagePtr& m) { payloads.emplace_back(m->payload); });
  EXPECT_EQ(payloads, std::vector<std::string>{"2"});
  store.update(broker::make_message("a/b/c", "", QoS::AtMostOnce, true));
  EXPECT_EQ(store.size(), 0u);
  EXPECT_TRUE(lookup(store, "#").empty());
  store.update(broker::make_message("a/b", "3", QoS::AtMostOnce, true));
  EXPECT_EQ(lookup(store, "a/+/#"), std::vector<std::string>{"a/b"});
}

}  // namespace
}  // namespace moat::test
