// The lazy containers of per-connection state: one pointer while empty, the
// storage freed again when emptied, and the usual answers in between.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "broker/lazy_vector.hpp"

namespace moat::test {
namespace {

TEST(LazyMap, EmptyIterationFindAndFreeOnLastErase) {
  broker::LazyMap<std::string, int, std::less<>> m;
  static_assert(sizeof(m) == sizeof(void*));
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(m.begin(), m.end());
  EXPECT_EQ(m.find(std::string_view("a")), m.end());

  m.insert_or_assign(std::string("b"), 2);
  m.insert_or_assign(std::string("a"), 1);
  m.insert_or_assign(std::string("b"), 3);  // assigns
  EXPECT_EQ(m.size(), 2U);
  std::vector<std::pair<std::string, int>> seen(m.begin(), m.end());
  EXPECT_EQ(seen, (std::vector<std::pair<std::string, int>>{{"a", 1}, {"b", 3}}));
  const auto& cm = m;
  ASSERT_NE(cm.find(std::string_view("b")), cm.end());
  EXPECT_EQ(cm.find(std::string_view("b"))->second, 3);

  m.erase(m.find(std::string_view("a")));
  EXPECT_EQ(m.size(), 1U);
  m.erase(m.find(std::string_view("b")));
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(m.begin(), m.end());
  m.insert_or_assign(std::string("c"), 4);  // allocated again
  EXPECT_EQ(m.size(), 1U);
}

TEST(LazyVector, PushBackAndClear) {
  broker::LazyVector<int> v;
  static_assert(sizeof(v) == sizeof(void*));
  EXPECT_TRUE(v.empty());
  EXPECT_EQ(v.begin(), v.end());
  v.push_back(1);
  v.push_back(2);
  EXPECT_EQ(v.size(), 2U);
  EXPECT_EQ(v[1], 2);
  v.clear();
  EXPECT_TRUE(v.empty());
  EXPECT_EQ(v.size(), 0U);
}

}  // namespace
}  // namespace moat::test
