// The in-flight window: ids taken are known with and without the id bitmap,
// entries leave from anywhere in the window, order is kept, and the bitmap
// exists only while the window is large.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "broker/inflight.hpp"

namespace moat::test {
namespace {

struct Entry {
  std::uint16_t packet_id = 0;
  int payload = 0;
};
using Window = broker::InflightWindow<Entry>;

std::vector<std::uint16_t> ids(const Window& w) {
  std::vector<std::uint16_t> out;
  for (const auto& e : w) out.push_back(e.packet_id);
  return out;
}

TEST(InflightWindow, SmallWindowScansAndLargeOneIndexes) {
  Window w;
  for (std::uint16_t id = 1; id <= Window::kIndexFrom; ++id) w.push_back({id, id});
  EXPECT_FALSE(w.indexed());
  EXPECT_TRUE(w.in_use(1));
  EXPECT_TRUE(w.in_use(Window::kIndexFrom));
  EXPECT_FALSE(w.in_use(Window::kIndexFrom + 1));
  w.push_back({40000, 7});
  EXPECT_TRUE(w.indexed());
  // Ids pushed before the bitmap existed are in it.
  for (std::uint16_t id = 1; id <= Window::kIndexFrom; ++id) EXPECT_TRUE(w.in_use(id)) << id;
  EXPECT_TRUE(w.in_use(40000));
  EXPECT_FALSE(w.in_use(39999));
  ASSERT_NE(w.find(40000), nullptr);
  EXPECT_EQ(w.find(40000)->payload, 7);
  EXPECT_EQ(w.find(39999), nullptr);
}

TEST(InflightWindow, EraseFromFrontMiddleAndBackKeepsOrder) {
  Window w;
  for (std::uint16_t id = 1; id <= 100; ++id) w.push_back({id, id});
  w.erase(w.find(1));   // the oldest, the usual case
  w.erase(w.find(50));  // out of turn
  w.erase(w.find(100));
  EXPECT_EQ(w.size(), 97u);
  EXPECT_FALSE(w.in_use(1));
  EXPECT_FALSE(w.in_use(50));
  EXPECT_FALSE(w.in_use(100));
  EXPECT_TRUE(w.in_use(2));
  EXPECT_TRUE(w.in_use(51));
  const auto left = ids(w);
  EXPECT_TRUE(std::is_sorted(left.begin(), left.end()));
  EXPECT_EQ(left.front(), 2);
  EXPECT_EQ(left.back(), 99);
}

TEST(InflightWindow, BitmapGoesWhenTheWindowEmpties) {
  Window w;
  for (std::uint16_t id = 1; id <= 64; ++id) w.push_back({id, 0});
  ASSERT_TRUE(w.indexed());
  for (std::uint16_t id = 1; id <= 64; ++id) w.erase(w.find(id));
  EXPECT_TRUE(w.empty());
  EXPECT_FALSE(w.indexed());
  EXPECT_FALSE(w.in_use(1));
  EXPECT_EQ(w.find(1), nullptr);
}

// Against a plain list, with random pushes and removals across the threshold.
TEST(InflightWindow, AgreesWithALinearList) {
  std::mt19937 rng(9);
  Window w;
  std::vector<Entry> model;
  std::uint16_t next = 1;
  for (int step = 0; step < 20000; ++step) {
    const bool push = model.empty() || (model.size() < 300 && rng() % 100 < (model.size() < 40 ? 60u : 45u));
    if (push) {
      while (std::any_of(model.begin(), model.end(), [&](const Entry& e) { return e.packet_id == next; }))
        next = next == 65535 ? 1 : next + 1;
      w.push_back({next, step});
      model.push_back({next, step});
      next = next == 65535 ? 1 : next + 1;
    } else {
      // Mostly the oldest, sometimes any.
      const std::size_t i = rng() % 4 == 0 ? rng() % model.size() : 0;
      Entry* e = w.find(model[i].packet_id);
      ASSERT_NE(e, nullptr);
      EXPECT_EQ(e->payload, model[i].payload);
      w.erase(e);
      model.erase(model.begin() + static_cast<std::ptrdiff_t>(i));
    }
    ASSERT_EQ(w.size(), model.size());
    const std::uint16_t probe = static_cast<std::uint16_t>(1 + rng() % 400);
    const bool held =
        std::any_of(model.begin(), model.end(), [&](const Entry& e) { return e.packet_id == probe; });
    ASSERT_EQ(w.in_use(probe), held) << "step " << step << " id " << probe;
  }
  std::vector<std::uint16_t> want;
  want.reserve(model.size());
  for (const auto& e : model) want.push_back(e.packet_id);
  EXPECT_EQ(ids(w), want);
}

}  // namespace
}  // namespace moat::test
