// security::AccessCache, a session's memory of ACL decisions: answers only
// what was put under the same policy version, and grows for a client that
// cycles over more topics than its slots hold, up to a bound.
#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <string>

#include "security/acl.hpp"

namespace moat::security {
namespace {

using Time = AccessCache::Time;
constexpr Time kNow = Time{} + std::chrono::hours(1);
constexpr Time kLater = kNow + std::chrono::hours(1);

Decision decision_of(const std::string& topic) {
  return topic.size() % 2 ? Decision::Allow : Decision::Deny;
}

// Checks every topic of `topics` once, as the broker does: find, else decide
// and put. Returns the number of hits; fails on a wrong answer.
int cycle(AccessCache& cache, int topics, std::uint64_t version, const std::string& prefix = "t/") {
  int hits = 0;
  for (int i = 0; i < topics; ++i) {
    const std::string topic = prefix + std::to_string(i);
    if (const auto d = cache.find(Action::Publish, topic, version, kNow)) {
      EXPECT_EQ(*d, decision_of(topic)) << topic;
      ++hits;
    } else {
      cache.put(Action::Publish, topic, decision_of(topic), version, kLater);
    }
  }
  return hits;
}

TEST(AccessCache, AFewTopicsStayInTheFirstSlots) {
  AccessCache cache;
  EXPECT_EQ(cache.capacity(), 0u);  // nothing allocated before the first put
  cycle(cache, 5, 1);
  for (int round = 0; round < 100; ++round) EXPECT_EQ(cycle(cache, 5, 1), 5);
  EXPECT_EQ(cache.capacity(), AccessCache::kSlots);
}

TEST(AccessCache, GrowsForAClientCyclingOverManyTopics) {
  AccessCache cache;
  for (int round = 0; round < 10; ++round) cycle(cache, 64, 1);
  EXPECT_EQ(cache.capacity(), AccessCache::kMaxSlots);
  int hits = 0;
  for (int round = 0; round < 10; ++round) hits += cycle(cache, 64, 1);
  EXPECT_GE(hits, 640 * 9 / 10) << "64 topics in " << cache.capacity() << " slots";
}

TEST(AccessCache, NeverGrowsPastItsBoundNorAnswersWrongly) {
  AccessCache cache;
  for (int round = 0; round < 3; ++round) cycle(cache, 10'000, 1);
  EXPECT_EQ(cache.capacity(), AccessCache::kMaxSlots);
  // Receive entries are apart from publish ones.
  cache.put(Action::Receive, "t/1", Decision::Deny, 1, kLater);
  EXPECT_EQ(cache.find(Action::Receive, "t/1", 1, kNow), Decision::Deny);
  const auto publish = cache.find(Action::Publish, "t/1", 1, kNow);
  EXPECT_TRUE(!publish || *publish == decision_of("t/1"));
}

TEST(AccessCache, AnswersOnlyForTheSameVersionAndBeforeExpiry) {
  AccessCache cache;
  for (int round = 0; round < 10; ++round) cycle(cache, 64, 1);
  EXPECT_EQ(cycle(cache, 64, 2), 0);  // a reloaded policy: nothing of version 1 is served
  cache.put(Action::Subscribe, "a/#", Decision::Allow, 2, kNow);
  EXPECT_EQ(cache.find(Action::Subscribe, "a/#", 2, kNow), std::nullopt);  // expired
  EXPECT_EQ(cache.find(Action::Publish, "t/0", 0, kNow), std::nullopt);    // version 0 is never cached
  cache.clear();
  EXPECT_EQ(cache.capacity(), 0u);
  EXPECT_EQ(cycle(cache, 64, 2), 0);
}

}  // namespace
}  // namespace moat::security
