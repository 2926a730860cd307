// Brute-force defence with a fake clock: exponential backoff per (address,
// user), bans after N failures in a window and their expiry, the allow-list,
// connection rates, reporting once per interval, bounded memory, addresses.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <thread>

#include "security/defence.hpp"

namespace moat::security {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

const DefenceTime kT0{seconds(5000)};

DefenceConfig test_config() {
  DefenceConfig c;
  c.allow.clear();  // loopback is exempt by default; these tests use documentation addresses
  c.backoff_initial = milliseconds(100);
  c.backoff_max = milliseconds(1000);
  c.window = seconds(60);
  c.ban_after = 5;
  c.ban_time = seconds(300);
  c.connection_rate = 2;
  c.connection_burst = 4;
  c.log_interval = seconds(10);
  return c;
}

TEST(Addresses, ParseAndMatch) {
  ASSERT_TRUE(IpAddress::parse("192.0.2.7"));
  EXPECT_TRUE(IpAddress::parse("192.0.2.7")->v4);
  EXPECT_TRUE(IpAddress::parse("::ffff:192.0.2.7")->v4);  // IPv4-mapped counts as IPv4
  EXPECT_FALSE(IpAddress::parse("2001:db8::1")->v4);
  EXPECT_FALSE(IpAddress::parse("192.0.2"));
  EXPECT_FALSE(IpAddress::parse("localhost"));
  EXPECT_FALSE(IpAddress::parse(""));

  const auto net = Cidr::parse("10.1.0.0/16");
  ASSERT_TRUE(net);
  EXPECT_TRUE(net->contains(*IpAddress::parse("10.1.255.3")));
  EXPECT_FALSE(net->contains(*IpAddress::parse("10.2.0.1")));
  EXPECT_TRUE(net->contains(*IpAddress::parse("::ffff:10.1.0.9")));
  EXPECT_FALSE(net->contains(*IpAddress::parse("2001:db8::1")));
  const auto v6 = Cidr::parse("2001:db8::/33");
  ASSERT_TRUE(v6);
  EXPECT_TRUE(v6->contains(*IpAddress::parse("2001:db8:7fff::1")));
  EXPECT_FALSE(v6->contains(*IpAddress::parse("2001:db8:8000::1")));
  EXPECT_TRUE(Cidr::parse("0.0.0.0/0")->contains(*IpAddress::parse("8.8.8.8")));
  EXPECT_TRUE(Cidr::parse("::1")->contains(*IpAddress::parse("::1")));
  EXPECT_FALSE(Cidr::parse("10.0.0.1/8"));  // bits set past the prefix
  EXPECT_FALSE(Cidr::parse("10.0.0.0/33"));
  EXPECT_FALSE(Cidr::parse("10.0.0.0/"));
  EXPECT_FALSE(Cidr::parse("10.0.0.0/8x"));

  EXPECT_EQ(peer_address("192.0.2.7:1883"), "192.0.2.7");
  EXPECT_EQ(peer_address("[2001:db8::1]:8883"), "2001:db8::1");
  EXPECT_EQ(peer_address("2001:db8::1"), "2001:db8::1");
}

TEST(AuthThrottle, BackoffDoublesPerUserAndAddressUpToTheMaximum) {
  AuthThrottle t(test_config());
  auto now = kT0;
  std::vector<long> delays;
  for (int i = 0; i < 5; ++i) {
    delays.push_back(static_cast<long>(t.failure("192.0.2.1", "alice", now).delay.count()));
    now += seconds(1);
    t.success("192.0.2.9", "x");  // other addresses do not reset it
  }
  EXPECT_EQ(delays, (std::vector<long>{100, 200, 400, 800, 1000}));
  // Another user from the same address, and the same user from elsewhere, start at the beginning.
  EXPECT_EQ(t.failure("192.0.2.1", "bob", now).delay, milliseconds(100));
  EXPECT_EQ(t.failure("192.0.2.2", "alice", now).delay, milliseconds(100));
}

TEST(AuthThrottle, SuccessAndQuietTimeResetTheBackoff) {
  auto cfg = test_config();
  cfg.ban_after = 0;
  AuthThrottle t(cfg);
  auto now = kT0;
  t.failure("192.0.2.1", "alice", now);
  EXPECT_EQ(t.failure("192.0.2.1", "alice", now).delay, milliseconds(200));
  t.success("192.0.2.1", "alice");
  EXPECT_EQ(t.failure("192.0.2.1", "alice", now).delay, milliseconds(100));
  EXPECT_EQ(t.failure("192.0.2.1", "alice", now + seconds(59)).delay, milliseconds(200));
  // A whole window without failures.
  EXPECT_EQ(t.failure("192.0.2.1", "alice", now + seconds(59 + 60)).delay, milliseconds(100));
}

TEST(AuthThrottle, BanAfterNFailuresInTheWindowAndExpiry) {
  AuthThrottle t(test_config());
  auto now = kT0;
  for (int i = 1; i < 5; ++i) {
    // Different user names: the ban counts per address.
    auto f = t.failure("192.0.2.1", "user" + std::to_string(i), now);
    EXPECT_FALSE(f.banned) << i;
    now += seconds(5);
  }
  EXPECT_FALSE(t.banned("192.0.2.1", now));
  auto f = t.failure("192.0.2.1", "user5", now);
  ASSERT_TRUE(f.banned);
  EXPECT_EQ(f.banned->address, "192.0.2.1");
  EXPECT_EQ(f.banned->until, now + seconds(300));
  EXPECT_EQ(f.banned->reason, "5 failed authentications within 60 s");
  EXPECT_TRUE(t.banned("192.0.2.1", now));
  EXPECT_FALSE(t.banned("192.0.2.2", now));

  auto v = t.admit_connection("192.0.2.1", now + seconds(1));
  EXPECT_EQ(v.admission, AuthThrottle::Admission::Banned);
  EXPECT_EQ(v.banned_until, now + seconds(300));
  EXPECT_EQ(t.check_ban("192.0.2.1", now + seconds(2)).admission, AuthThrottle::Admission::Banned);

  EXPECT_TRUE(t.expire(now + seconds(299)).empty());
  const auto ended = t.expire(now + seconds(300));
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].address, "192.0.2.1");
  EXPECT_FALSE(t.banned("192.0.2.1", now + seconds(300)));
  EXPECT_EQ(t.admit_connection("192.0.2.1", now + seconds(301)).admission, AuthThrottle::Admission::Admit);
}

TEST(AuthThrottle, FailuresOutsideTheWindowDoNotBan) {
  AuthThrottle t(test_config());
  auto now = kT0;
  for (int i = 0; i < 20; ++i) {
    EXPECT_FALSE(t.failure("192.0.2.1", "alice", now).banned) << i;
    now += seconds(16);  // 4 failures per 60 s window at most
  }
}

TEST(AuthThrottle, AllowListIsExemptFromEverything) {
  auto cfg = test_config();
  cfg.allow = {*Cidr::parse("198.51.100.0/24"), *Cidr::parse("2001:db8::/32")};
  AuthThrottle t(cfg);
  for (int i = 0; i < 50; ++i) {
    auto f = t.failure("198.51.100.20", "alice", kT0);
    EXPECT_EQ(f.delay, milliseconds(0));
    EXPECT_FALSE(f.banned);
    EXPECT_EQ(t.admit_connection("198.51.100.20", kT0).admission, AuthThrottle::Admission::Admit);
    EXPECT_EQ(t.admit_connection("2001:db8::5", kT0).admission, AuthThrottle::Admission::Admit);
  }
  EXPECT_EQ(t.tracked(), 0u);
  // The default allow-list is loopback.
  AuthThrottle d{DefenceConfig{}};
  EXPECT_TRUE(d.exempt("127.0.0.1"));
  EXPECT_TRUE(d.exempt("127.3.2.1"));
  EXPECT_TRUE(d.exempt("::1"));
  EXPECT_FALSE(d.exempt("192.0.2.1"));
  // Disabled: everyone is exempt.
  auto off = test_config();
  off.enabled = false;
  EXPECT_TRUE(AuthThrottle(off).exempt("192.0.2.1"));
}

TEST(AuthThrottle, ConnectionRateIsATokenBucketPerAddress) {
  AuthThrottle t(test_config());  // 2 per second, bursts of 4
  auto now = kT0;
  int admitted = 0;
  for (int i = 0; i < 10; ++i)
    admitted += t.admit_connection("192.0.2.1", now).admission == AuthThrottle::Admission::Admit;
  EXPECT_EQ(admitted, 4);
  EXPECT_EQ(t.admit_connection("192.0.2.2", now).admission, AuthThrottle::Admission::Admit);
  now += milliseconds(500);  // one token back
  EXPECT_EQ(t.admit_connection("192.0.2.1", now).admission, AuthThrottle::Admission::Admit);
  EXPECT_EQ(t.admit_connection("192.0.2.1", now).admission, AuthThrottle::Admission::RateLimited);
  now += seconds(10);  // refilled to the burst, not beyond
  admitted = 0;
  for (int i = 0; i < 10; ++i)
    admitted += t.admit_connection("192.0.2.1", now).admission == AuthThrottle::Admission::Admit;
  EXPECT_EQ(admitted, 4);
  auto unlimited = test_config();
  unlimited.connection_rate = 0;
  AuthThrottle u(unlimited);
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(u.admit_connection("192.0.2.1", now).admission, AuthThrottle::Admission::Admit);
}

TEST(AuthThrottle, RefusalsAreReportedOncePerInterval) {
  AuthThrottle t(test_config());  // log_interval 10 s
  auto now = kT0;
  for (int i = 0; i < 5; ++i) t.failure("192.0.2.1", "a", now);
  ASSERT_TRUE(t.banned("192.0.2.1", now));
  auto v = t.admit_connection("192.0.2.1", now);
  EXPECT_EQ(v.admission, AuthThrottle::Admission::Banned);
  EXPECT_TRUE(v.report);
  EXPECT_EQ(v.suppressed, 0u);
  for (int i = 0; i < 7; ++i) {
    v = i % 2 ? t.admit_connection("192.0.2.1", now + seconds(1))
              : t.check_ban("192.0.2.1", now + seconds(1));
    EXPECT_EQ(v.admission, AuthThrottle::Admission::Banned);
    EXPECT_FALSE(v.report);
  }
  v = t.admit_connection("192.0.2.1", now + seconds(10));
  EXPECT_TRUE(v.report);
  EXPECT_EQ(v.suppressed, 7u);

  // Rate limiting reports the same way.
  for (int i = 0; i < 4; ++i) t.admit_connection("192.0.2.2", now);
  v = t.admit_connection("192.0.2.2", now);
  EXPECT_EQ(v.admission, AuthThrottle::Admission::RateLimited);
  EXPECT_TRUE(v.report);
  EXPECT_FALSE(t.admit_connection("192.0.2.2", now).report);
}

TEST(AuthThrottle, TrackedStateIsBounded) {
  auto cfg = test_config();
  cfg.max_tracked = 100;
  cfg.ban_after = 0;
  AuthThrottle t(cfg);
  for (int i = 0; i < 1000; ++i) {
    const std::string addr = "192.0.2." + std::to_string(i % 250);
    t.failure(addr, "user" + std::to_string(i), kT0 + milliseconds(i));
    t.admit_connection(addr, kT0 + milliseconds(i));
    ASSERT_LE(t.tracked(), 100u);
  }
}

TEST(AuthThrottle, BansSurviveInTheirList) {
  // The ban list is an interface: a store-backed one can replace the memory one.
  class CountingList final : public BanList {
   public:
    std::optional<Ban> find(std::string_view a) const override { return inner.find(a); }
    void put(Ban b) override {
      ++puts;
      inner.put(std::move(b));
    }
    void erase(std::string_view a) override { inner.erase(a); }
    std::vector<Ban> all() const override { return inner.all(); }
    MemoryBanList inner;
    int puts = 0;
  };
  auto list = std::make_unique<CountingList>();
  auto* raw = list.get();
  raw->inner.put(Ban{"203.0.113.9", kT0 + seconds(60), "restored"});
  AuthThrottle t(test_config(), std::move(list));
  EXPECT_TRUE(t.banned("203.0.113.9", kT0));
  for (int i = 0; i < 5; ++i) t.failure("192.0.2.1", "a", kT0);
  EXPECT_EQ(raw->puts, 1);
  EXPECT_EQ(raw->all().size(), 2u);
}

TEST(AuthThrottle, RestoredBansHoldUntilTheirEnd) {
  DefenceConfig cfg = test_config();
  cfg.allow = {*Cidr::parse("198.51.100.0/24")};
  AuthThrottle t(cfg);
  t.restore({Ban{"192.0.2.1", kT0 + seconds(30), "from the last run"},
             Ban{"192.0.2.2", kT0 - seconds(1), "already over"},
             Ban{"198.51.100.9", kT0 + seconds(30), "now exempt"}},
            kT0);
  EXPECT_TRUE(t.banned("192.0.2.1", kT0));
  EXPECT_EQ(t.admit_connection("192.0.2.1", kT0).admission, AuthThrottle::Admission::Banned);
  EXPECT_FALSE(t.banned("192.0.2.2", kT0));
  EXPECT_FALSE(t.banned("198.51.100.9", kT0));
  EXPECT_TRUE(t.expire(kT0 + seconds(29)).empty());
  const auto ended = t.expire(kT0 + seconds(30));
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].address, "192.0.2.1");
  EXPECT_FALSE(t.banned("192.0.2.1", kT0 + seconds(30)));
}

TEST(AuthThrottle, ConcurrentUse) {
  AuthThrottle t(test_config());
  std::vector<std::thread> threads;
  for (int n = 0; n < 4; ++n)
    threads.emplace_back([&t, n] {
      for (int i = 0; i < 2000; ++i) {
        const std::string addr = "192.0.2." + std::to_string((i + n) % 20);
        t.failure(addr, "u", kT0 + milliseconds(i));
        t.admit_connection(addr, kT0 + milliseconds(i));
        t.success(addr, "u");
        if (i % 100 == 0) t.expire(kT0 + seconds(i));
      }
    });
  for (auto& th : threads) th.join();
  SUCCEED();
}

// What the store would hold: each failure's counters written, those at 0 and
// those forgotten erased (as the broker does, Shard::persist_failures).
using Stored = std::map<std::string, FailureCounter>;
void keep(Stored& stored, const AuthThrottle::Failure& f) {
  for (const auto& c : f.counters) {
    if (c.failures == 0)
      stored.erase(c.key);
    else
      stored[c.key] = c;
  }
}
std::vector<FailureCounter> all(const Stored& stored) {
  std::vector<FailureCounter> out;
  for (const auto& [k, c] : stored) out.push_back(c);
  return out;
}
constexpr std::string_view kPairA{"192.0.2.1\0alice", 15};  // address, 0 byte, user name

TEST(AuthThrottle, FailuresReportTheCountersToStore) {
  AuthThrottle t(test_config());  // ban_after 5, window 60 s
  auto f = t.failure("192.0.2.1", "alice", kT0);
  ASSERT_EQ(f.counters.size(), 2u);
  EXPECT_EQ(f.counters[0].key, kPairA);
  EXPECT_EQ(f.counters[0].failures, 1u);
  EXPECT_EQ(f.counters[0].since, kT0);  // the pair's last failure
  EXPECT_EQ(f.counters[1].key, "192.0.2.1");
  EXPECT_EQ(f.counters[1].failures, 1u);
  EXPECT_EQ(f.counters[1].since, kT0);  // the address's window start
  f = t.failure("192.0.2.1", "alice", kT0 + seconds(2));
  EXPECT_EQ(f.counters[0].failures, 2u);
  EXPECT_EQ(f.counters[0].since, kT0 + seconds(2));
  EXPECT_EQ(f.counters[1].failures, 2u);
  EXPECT_EQ(f.counters[1].since, kT0);
  // A success forgets the pair's counter (not the address's).
  EXPECT_EQ(t.success("192.0.2.1", "alice"), kPairA);
  EXPECT_EQ(t.success("192.0.2.1", "alice"), std::nullopt);
  EXPECT_EQ(t.success("192.0.2.1", "bob"), std::nullopt);
  // The ban resets the address's count: its counter goes.
  for (int i = 0; i < 2; ++i) t.failure("192.0.2.1", "bob", kT0 + seconds(3));
  f = t.failure("192.0.2.1", "bob", kT0 + seconds(3));
  ASSERT_TRUE(f.banned);
  EXPECT_EQ(f.counters[1].key, "192.0.2.1");
  EXPECT_EQ(f.counters[1].failures, 0u);
  // Exempt addresses have none.
  DefenceConfig cfg = test_config();
  cfg.allow = {*Cidr::parse("198.51.100.0/24")};
  AuthThrottle exempt(cfg);
  EXPECT_TRUE(exempt.failure("198.51.100.1", "alice", kT0).counters.empty());
}

TEST(AuthThrottle, CountersWhoseWindowEndedAreForgottenAndReported) {
  AuthThrottle t(test_config());
  t.failure("192.0.2.1", "alice", kT0);
  t.failure("192.0.2.2", "bob", kT0 + seconds(30));
  EXPECT_TRUE(t.take_forgotten(kT0 + seconds(59)).empty());
  auto gone = t.take_forgotten(kT0 + seconds(60));
  std::sort(gone.begin(), gone.end());
  EXPECT_EQ(gone, (std::vector<std::string>{"192.0.2.1", std::string(kPairA)}));
  EXPECT_TRUE(t.take_forgotten(kT0 + seconds(61)).empty());  // once
  // The address's next failure starts a new window.
  const auto f = t.failure("192.0.2.1", "alice", kT0 + seconds(70));
  EXPECT_EQ(f.counters[0].failures, 1u);
  EXPECT_EQ(f.counters[1].failures, 1u);
  EXPECT_EQ(f.delay, milliseconds(100));
}

TEST(AuthThrottle, CountersDroppedToBoundMemoryAreReported) {
  auto cfg = test_config();
  cfg.max_tracked = 10;
  cfg.ban_after = 0;
  AuthThrottle t(cfg);
  Stored stored;
  for (int i = 0; i < 100; ++i) keep(stored, t.failure("192.0.2." + std::to_string(i), "u", kT0));
  for (const auto& key : t.take_forgotten(kT0)) stored.erase(key);
  // The store keeps no more than memory does.
  EXPECT_LE(stored.size(), t.tracked());
  EXPECT_LE(t.tracked(), 10u);
}

TEST(AuthThrottle, RestoredFailuresCountTowardsTheBanAndTheBackoff) {
  DefenceConfig cfg = test_config();  // ban_after 5, window 60 s, backoff 100 ms doubling
  cfg.allow = {*Cidr::parse("198.51.100.0/24")};
  Stored stored;
  {
    AuthThrottle before(cfg);
    for (int i = 0; i < 3; ++i) keep(stored, before.failure("192.0.2.1", "alice", kT0 + seconds(i)));
    keep(stored, before.failure("192.0.2.1", "bob", kT0 + seconds(3)));
    keep(stored, before.failure("192.0.2.9", "carol", kT0));
  }
  ASSERT_EQ(stored.size(), 5u);
  auto counters = all(stored);
  counters.push_back({std::string("198.51.100.7") + '\0' + "dave", 3, kT0});  // now exempt
  counters.push_back({"198.51.100.7", 3, kT0});
  counters.push_back({"192.0.2.50", 0, kT0});                  // no count
  counters.push_back({std::string(1, '\0') + "eve", 2, kT0});  // no address
  // The broker restarts 50 s later: the window of 192.0.2.1 (from kT0) has 10 s left.
  AuthThrottle after(cfg);
  const DefenceTime now = kT0 + seconds(50);
  auto dropped = after.restore_failures(counters, now);
  std::sort(dropped.begin(), dropped.end());
  EXPECT_EQ(dropped, (std::vector<std::string>{std::string(1, '\0') + "eve", "192.0.2.50", "198.51.100.7",
                                               std::string("198.51.100.7") + '\0' + "dave"}));
  // alice's fourth failure is held as long as it would have been without the
  // restart, and as the fifth of its address within the window it bans it.
  auto f = after.failure("192.0.2.1", "alice", now);
  EXPECT_EQ(f.failures, 4u);
  EXPECT_EQ(f.delay, milliseconds(800));
  ASSERT_TRUE(f.banned);
  EXPECT_TRUE(after.banned("192.0.2.1", now));
  f = after.failure("192.0.2.9", "carol", now);
  EXPECT_EQ(f.failures, 2u);
  EXPECT_EQ(f.delay, milliseconds(200));
  EXPECT_FALSE(f.banned);
}

TEST(AuthThrottle, RestoredFailuresWhoseWindowEndedAreDropped) {
  AuthThrottle t(test_config());
  const std::vector<FailureCounter> counters{
      {"192.0.2.1", 4, kT0}, {std::string(kPairA), 4, kT0}, {"192.0.2.2", 4, kT0 + seconds(30)}};
  auto dropped = t.restore_failures(counters, kT0 + seconds(60));
  std::sort(dropped.begin(), dropped.end());
  EXPECT_EQ(dropped, (std::vector<std::string>{"192.0.2.1", std::string(kPairA)}));
  // The one restored: one more failure bans 192.0.2.2; 192.0.2.1 starts afresh.
  EXPECT_TRUE(t.failure("192.0.2.2", "x", kT0 + seconds(61)).banned);
  const auto f = t.failure("192.0.2.1", "alice", kT0 + seconds(61));
  EXPECT_FALSE(f.banned);
  EXPECT_EQ(f.failures, 1u);
  // A time ahead of now (the wall clock went back) counts from now.
  AuthThrottle later(test_config());
  EXPECT_TRUE(later.restore_failures({{"192.0.2.3", 4, kT0 + seconds(3600)}}, kT0).empty());
  EXPECT_TRUE(later.failure("192.0.2.3", "x", kT0 + seconds(59)).banned);
}

}  // namespace
}  // namespace moat::security
