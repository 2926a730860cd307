// Flapping detection's counts kept across a restart: what on_disconnect
// reports for the store, what restore_counts takes back, what is forgotten.
#include <gtest/gtest.h>

#include <algorithm>

#include "security/flapping.hpp"

namespace moat::security {
namespace {

using std::chrono::seconds;

constexpr DefenceTime kT0{seconds(5000)};

FlappingConfig config() {
  FlappingConfig c;
  c.max = 4;
  c.window = seconds(60);
  c.ban_time = seconds(300);
  c.exempt = {*Cidr::parse("198.51.100.0/24")};
  return c;
}

TEST(FlapDetector, CountedEndsAreReportedForTheStore) {
  FlapDetector d(config());
  FailureCounter c;
  EXPECT_FALSE(d.on_disconnect("dev-1", "192.0.2.1", kT0, &c));
  EXPECT_EQ(c.key, "dev-1");
  EXPECT_EQ(c.failures, 1u);
  EXPECT_EQ(c.since, kT0);
  EXPECT_FALSE(d.on_disconnect("dev-1", "192.0.2.1", kT0 + seconds(5), &c));
  EXPECT_EQ(c.failures, 2u);
  EXPECT_EQ(c.since, kT0);  // the window's start
  // Not counted: nothing reported.
  FailureCounter none;
  EXPECT_FALSE(d.on_disconnect("dev-1", "198.51.100.1", kT0, &none));
  EXPECT_TRUE(none.key.empty());
  // The ban resets the count: the store forgets it.
  d.on_disconnect("dev-1", "192.0.2.1", kT0 + seconds(6), &c);
  EXPECT_TRUE(d.on_disconnect("dev-1", "192.0.2.1", kT0 + seconds(7), &c));
  EXPECT_EQ(c.key, "dev-1");
  EXPECT_EQ(c.failures, 0u);
}

TEST(FlapDetector, RestoredCountsGoOnTowardsTheBan) {
  FlapDetector d(config());
  const DefenceTime now = kT0 + seconds(50);
  auto dropped =
      d.restore_counts({{"dev-1", 3, kT0}, {"dev-2", 3, kT0 - seconds(11)}, {"dev-3", 0, kT0}}, now);
  std::sort(dropped.begin(), dropped.end());
  EXPECT_EQ(dropped, (std::vector<std::string>{"dev-2", "dev-3"}));
  EXPECT_EQ(d.on_connect("dev-1", "192.0.2.1", now).disconnections, 3u);
  EXPECT_TRUE(d.on_disconnect("dev-1", "192.0.2.1", now));  // the fourth within the window
  EXPECT_FALSE(d.on_disconnect("dev-2", "192.0.2.1", now));
  // Off: nothing is restored.
  auto off = config();
  off.max = 0;
  FlapDetector none(off);
  EXPECT_EQ(none.restore_counts({{"dev-1", 3, kT0}}, kT0).size(), 1u);
}

TEST(FlapDetector, CountsWhoseWindowEndedOrThatMadeRoomAreForgotten) {
  FlapDetector d(config());
  d.on_disconnect("dev-1", "192.0.2.1", kT0);
  d.on_disconnect("dev-2", "192.0.2.1", kT0 + seconds(30));
  EXPECT_TRUE(d.take_forgotten(kT0 + seconds(59)).empty());
  EXPECT_EQ(d.take_forgotten(kT0 + seconds(60)), (std::vector<std::string>{"dev-1"}));
  EXPECT_EQ(d.tracked(), 1u);
  auto small = config();
  small.max_tracked = 3;
  FlapDetector bounded(small);
  for (int i = 0; i < 10; ++i) bounded.on_disconnect("dev-" + std::to_string(i), "192.0.2.1", kT0);
  EXPECT_EQ(bounded.take_forgotten(kT0).size() + bounded.tracked(), 10u);
}

}  // namespace
}  // namespace moat::security
