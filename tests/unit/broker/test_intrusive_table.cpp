// The intrusive hash table behind the shard's sessions: against a std::map
// through random inserts and erases across growth, with keys that collide in
// every bucket, and for_each visiting each entry once.
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "broker/intrusive_table.hpp"

namespace moat::test {
namespace {

struct Item {
  std::string name;
  Item* next = nullptr;
};

struct ByName {
  static std::string_view key(const Item& i) { return i.name; }
  static std::size_t hash(std::string_view k) { return std::hash<std::string_view>{}(k); }
  static Item*& link(Item& i) { return i.next; }
};
// Every key in one chain: find and erase must walk it.
struct AllCollide {
  static std::string_view key(const Item& i) { return i.name; }
  static std::size_t hash(std::string_view) { return 7; }
  static Item*& link(Item& i) { return i.next; }
};

template <typename Traits>
void against_a_map(unsigned seed, int keys, int steps) {
  broker::IntrusiveTable<Item, std::string_view, Traits> table;
  std::map<std::string, std::unique_ptr<Item>> model;
  std::mt19937 rng(seed);
  for (int step = 0; step < steps; ++step) {
    const std::string k = "client-" + std::to_string(rng() % static_cast<unsigned>(keys));
    auto it = model.find(k);
    if (it == model.end()) {
      ASSERT_EQ(table.find(k), nullptr) << k;
      auto item = std::make_unique<Item>(Item{k});
      table.insert(*item);
      model.emplace(k, std::move(item));
    } else {
      ASSERT_EQ(table.find(k), it->second.get()) << k;
      table.erase(*it->second);
      ASSERT_EQ(table.find(k), nullptr) << k;
      model.erase(it);
    }
    ASSERT_EQ(table.size(), model.size());
  }
  for (const auto& [k, item] : model) EXPECT_EQ(table.find(k), item.get()) << k;
  std::map<const Item*, int> seen;
  table.for_each([&](Item& i) { ++seen[&i]; });
  EXPECT_EQ(seen.size(), model.size());
  for (const auto& [item, n] : seen) EXPECT_EQ(n, 1) << item->name;
}

TEST(IntrusiveTable, MatchesAMapThroughGrowthInsertsAndErases) {
  against_a_map<ByName>(1, 5000, 40000);
}

TEST(IntrusiveTable, KeysThatShareOneBucket) {
  against_a_map<AllCollide>(2, 200, 4000);
}

TEST(IntrusiveTable, EmptyTableFindsNothing) {
  broker::IntrusiveTable<Item, std::string_view, ByName> table;
  EXPECT_EQ(table.find("x"), nullptr);
  EXPECT_TRUE(table.empty());
  int visited = 0;
  table.for_each([&](Item&) { ++visited; });
  EXPECT_EQ(visited, 0);
  Item a{"a"};
  table.erase(a);  // not in: nothing happens
  EXPECT_TRUE(table.empty());
  table.insert(a);
  Item other{"b"};
  table.erase(other);
  EXPECT_EQ(table.size(), 1U);
  table.erase(a);
  EXPECT_EQ(table.find("a"), nullptr);
  EXPECT_EQ(a.next, nullptr);
}

}  // namespace
}  // namespace moat::test
