#include "security/decision_cache.hpp"

#include <gtest/gtest.h>

#include <string>

namespace moat::security {
namespace {

TEST(DecisionCache, EmptyMissesAndStoresPerActionAndTopic) {
  DecisionCache c;
  EXPECT_FALSE(c.find(1, Action::Publish, "a/b"));
  c.put(1, Action::Publish, "a/b", Decision::Allow);
  ASSERT_TRUE(c.find(1, Action::Publish, "a/b"));
  EXPECT_EQ(*c.find(1, Action::Publish, "a/b"), Decision::Allow);
  // Another action or topic is another question.
  EXPECT_FALSE(c.find(1, Action::Receive, "a/b"));
  EXPECT_FALSE(c.find(1, Action::Publish, "a/c"));
  c.put(1, Action::Receive, "a/b", Decision::Deny);
  ASSERT_TRUE(c.find(1, Action::Receive, "a/b"));
  EXPECT_EQ(*c.find(1, Action::Receive, "a/b"), Decision::Deny);
}

TEST(DecisionCache, AnotherGenerationMisses) {
  DecisionCache c;
  c.put(3, Action::Publish, "t", Decision::Allow);
  EXPECT_FALSE(c.find(4, Action::Publish, "t"));
  EXPECT_TRUE(c.find(3, Action::Publish, "t"));
}

TEST(DecisionCache, ClearForgetsEverything) {
  DecisionCache c;
  c.put(1, Action::Publish, "t", Decision::Allow);
  c.clear();
  EXPECT_FALSE(c.find(1, Action::Publish, "t"));
}

TEST(DecisionCache, CollidingTopicsNeverAnswerForEachOther) {
  // More topics than slots: whatever a slot holds, a lookup answers only for
  // its own (action, topic), with the decision stored for it.
  DecisionCache c;
  for (int i = 0; i < 200; ++i)
    c.put(1, Action::Publish, "t/" + std::to_string(i), i % 2 ? Decision::Allow : Decision::Deny);
  int hits = 0;
  for (int i = 0; i < 200; ++i) {
    const auto d = c.find(1, Action::Publish, "t/" + std::to_string(i));
    if (!d) continue;
    ++hits;
    EXPECT_EQ(*d, i % 2 ? Decision::Allow : Decision::Deny) << i;
  }
  EXPECT_GT(hits, 0);
  EXPECT_LE(hits, static_cast<int>(DecisionCache::kSlots));
}

TEST(DecisionCache, LongTopicsAreNotCached) {
  DecisionCache c;
  const std::string long_topic(DecisionCache::kMaxTopic + 1, 'x');
  c.put(1, Action::Publish, long_topic, Decision::Allow);
  EXPECT_FALSE(c.find(1, Action::Publish, long_topic));
}

}  // namespace
}  // namespace moat::security
