// The limits of docs/limits.md on the broker state machine: each refuses what
// it should, answers as documented, and is counted.
#include "broker/connections.hpp"
#include "broker/limit_checks.hpp"
#include "harness.hpp"
#include "security/flapping.hpp"

namespace moat::test {
namespace {

using broker::Limit;
using codec::PacketType;
using codec::QoS;

class LimitsTest : public BrokerFixture {
 protected:
  std::uint64_t hits(Limit l) const { return shared.limit_stats.count(l); }
};

TEST_F(LimitsTest, LongClientIdGetsIdentifierRejected) {
  shared.limits.max_client_id_length = 8;
  make();
  connect("12345678");  // at the limit: accepted
  auto& c = raw();
  codec::Connect p;
  p.client_id = "123456789";
  c.send(p);
  auto got = c.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].connack.code, codec::ConnectReturnCode::IdentifierRejected);
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(hits(Limit::ClientIdLength), 1u);
}

TEST_F(LimitsTest, PublishTopicOverLengthOrLevelsClosesTheConnection) {
  shared.limits.max_topic_length = 16;
  shared.limits.max_topic_levels = 3;
  make();
  auto& sub = connect("s");
  subscribe(sub, "#", QoS::AtMostOnce);
  sub.take();
  auto& a = connect("a");
  publish(a, "a/b/c", "ok", QoS::AtLeastOnce, 1);  // 3 levels: fine
  EXPECT_FALSE(a.closed);
  EXPECT_EQ(sub.take().size(), 1u);
  publish(a, "a/b/c/d", "x", QoS::AtLeastOnce, 2);
  EXPECT_TRUE(a.closed);
  auto acks = a.take();
  ASSERT_EQ(acks.size(), 1u);  // the first PUBACK only: nothing acknowledged was dropped
  EXPECT_EQ(acks[0].packet_id, 1u);
  auto& b = connect("b");
  publish(b, std::string(17, 'x'), "x", QoS::AtMostOnce);
  EXPECT_TRUE(b.closed);
  EXPECT_TRUE(sub.take().empty());
  EXPECT_EQ(hits(Limit::TopicLevels), 1u);
  EXPECT_EQ(hits(Limit::TopicLength), 1u);
}

TEST_F(LimitsTest, SubscribeFilterOverLimitsGets0x80) {
  shared.limits.max_topic_levels = 2;
  make();
  auto& c = connect("c");
  codec::Subscribe s;
  s.packet_id = 5;
  s.subscriptions.push_back({"a/+/c", QoS::AtMostOnce});
  s.subscriptions.push_back({"a/#", QoS::AtLeastOnce});
  c.send(s);
  auto got = c.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].return_codes, (std::vector<std::uint8_t>{codec::kSubackFailure, 1}));
  EXPECT_FALSE(c.closed);
  EXPECT_EQ(hits(Limit::TopicLevels), 1u);
}

TEST_F(LimitsTest, SubscriptionsPerClientBeyondTheLimitGet0x80) {
  shared.limits.max_subscriptions_per_client = 2;
  make();
  auto& c = connect("c");
  codec::Subscribe s;
  s.packet_id = 1;
  for (const char* f : {"a", "b", "c"}) s.subscriptions.push_back({f, QoS::AtMostOnce});
  c.send(s);
  auto got = c.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].return_codes, (std::vector<std::uint8_t>{0, 0, codec::kSubackFailure}));
  // Subscribing again to a held filter is a replacement, not one more.
  subscribe(c, "a", QoS::AtLeastOnce, 2);
  got = c.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].return_codes, (std::vector<std::uint8_t>{1}));
  EXPECT_EQ(hits(Limit::Subscriptions), 1u);
  EXPECT_EQ(shard_list[0]->subscription_index().size(), 2u);
}

TEST_F(LimitsTest, RetainedSetLimitsKeepOldTopicsAndStillDeliver) {
  shared.limits.max_retained_messages = 2;
  shared.limits.max_retained_bytes = 20;
  make();
  auto& sub = connect("s");
  subscribe(sub, "r/#", QoS::AtMostOnce);
  sub.take();
  auto& p = connect("p");
  publish(p, "r/a", "1", QoS::AtMostOnce, 0, true);
  publish(p, "r/b", "2", QoS::AtMostOnce, 0, true);
  publish(p, "r/c", "3", QoS::AtLeastOnce, 1, true);  // a third topic: not retained
  EXPECT_EQ(shared.retained.size(), 2u);
  EXPECT_EQ(sub.take().size(), 3u);  // all delivered live
  EXPECT_EQ(p.take().size(), 1u);    // and acknowledged
  EXPECT_EQ(hits(Limit::RetainedMessages), 1u);
  publish(p, "r/a", std::string(30, 'x'), QoS::AtMostOnce, 0, true);  // too many bytes: old one stays
  EXPECT_EQ(hits(Limit::RetainedBytes), 1u);
  publish(p, "r/a", "", QoS::AtMostOnce, 0, true);  // clearing always works
  EXPECT_EQ(shared.retained.size(), 1u);
  EXPECT_EQ(shared.retained.bytes(), 4u);            // "r/b" + "2"
  publish(p, "r/c", "3", QoS::AtMostOnce, 0, true);  // room again
  EXPECT_EQ(shared.retained.size(), 2u);
}

TEST_F(LimitsTest, PayloadLimitPerTopicPatternDropsButAcknowledges) {
  shared.limits.payload.push_back({"sensor/#", 4});
  shared.limits.payload.push_back({"#", 100});
  make();
  auto& sub = connect("s");
  subscribe(sub, "#", QoS::AtLeastOnce);
  sub.take();
  auto& p = connect("p");
  publish(p, "sensor/1", "1234", QoS::AtLeastOnce, 1);
  publish(p, "sensor/1", "12345", QoS::AtLeastOnce, 2);
  publish(p, "other", std::string(50, 'y'), QoS::ExactlyOnce, 3);
  auto acks = p.take();
  ASSERT_EQ(acks.size(), 3u);
  EXPECT_EQ(acks[1].type, PacketType::Puback);
  EXPECT_EQ(acks[1].packet_id, 2u);
  auto got = sub.take();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].payload, "1234");
  EXPECT_EQ(got[1].topic, "other");
  EXPECT_FALSE(p.closed);
  EXPECT_EQ(hits(Limit::Payload), 1u);
}

TEST_F(LimitsTest, FlappingClientIsDelayedThenBanned) {
  security::FlappingConfig fc;
  fc.max = 4;
  fc.window = std::chrono::seconds(60);
  fc.delay = std::chrono::milliseconds(100);
  fc.ban_time = std::chrono::seconds(30);
  shared.flapping = std::make_shared<security::FlapDetector>(fc);
  make();
  // Two drops: from max/2 on, each CONNECT is held.
  for (int i = 0; i < 2; ++i) connect("f").drop();
  auto& held = raw();
  codec::Connect p;
  p.client_id = "f";
  held.send(p);
  EXPECT_TRUE(held.take().empty());
  ASSERT_EQ(held.held.size(), 1u);
  EXPECT_EQ(held.held[0].first, std::chrono::milliseconds(100));
  held.release();
  auto got = held.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].connack.code, codec::ConnectReturnCode::Accepted);
  EXPECT_EQ(hits(Limit::FlappingDelayed), 1u);
  held.drop();
  // A clean DISCONNECT does not count.
  auto& polite = raw();
  polite.send(p);
  polite.release();
  polite.take();
  polite.send(codec::Disconnect{});
  EXPECT_EQ(hits(Limit::FlappingBanned), 0u);
  auto& fourth = raw();
  fourth.send(p);
  fourth.release();
  EXPECT_EQ(fourth.take().size(), 1u);
  fourth.drop();  // the fourth drop: banned
  EXPECT_EQ(hits(Limit::FlappingBanned), 1u);
  auto& refused = raw();
  refused.send(p);
  got = refused.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].connack.code, codec::ConnectReturnCode::NotAuthorized);
  EXPECT_TRUE(refused.closed);
  EXPECT_EQ(hits(Limit::FlappingRefused), 1u);
  // Other identifiers are not affected; the ban ends.
  connect("g");
  advance(std::chrono::seconds(31));
  connect("f");
}

TEST(LimitStats, ReportsOncePerIntervalWithTheCount) {
  broker::LimitStats st;
  const broker::TimePoint t0{std::chrono::seconds(100)};
  const std::chrono::seconds iv{10};
  EXPECT_EQ(st.hit(Limit::Payload, t0, iv), 1u);
  EXPECT_EQ(st.hit(Limit::Payload, t0 + std::chrono::seconds(1), iv), 0u);
  EXPECT_EQ(st.hit(Limit::Payload, t0 + std::chrono::seconds(2), iv), 0u);
  EXPECT_EQ(st.hit(Limit::TopicLength, t0, iv), 1u);  // each limit on its own
  EXPECT_EQ(st.hit(Limit::Payload, t0 + std::chrono::seconds(10), iv), 3u);
  EXPECT_EQ(st.count(Limit::Payload), 4u);
}

TEST(ConnectionCounter, TotalAndPerAddressWithExemptions) {
  broker::ConnectionCounter cc(3, 2, {*security::Cidr::parse("10.0.0.0/8")});
  using A = broker::ConnectionCounter::Admission;
  broker::ConnectionCounter::Slot a, b, c, d, e;
  EXPECT_EQ(cc.acquire("192.0.2.1", a), A::Admit);
  EXPECT_EQ(cc.acquire("192.0.2.1", b), A::Admit);
  EXPECT_EQ(cc.acquire("192.0.2.1", c), A::AddressFull);
  EXPECT_FALSE(c.held());
  EXPECT_EQ(cc.acquire("10.1.1.1", c), A::Admit);  // exempt from the per-address limit
  EXPECT_EQ(cc.acquire("10.1.1.1", d), A::TotalFull);
  EXPECT_EQ(cc.total(), 3u);
  a.release();
  EXPECT_EQ(cc.of("192.0.2.1"), 1u);
  {
    broker::ConnectionCounter::Slot moved(std::move(b));
    EXPECT_FALSE(b.held());
    EXPECT_EQ(cc.total(), 2u);
  }
  EXPECT_EQ(cc.total(), 1u);
  EXPECT_EQ(cc.of("192.0.2.1"), 0u);
  EXPECT_EQ(cc.acquire("10.1.1.1", e), A::Admit);
}

TEST(TopicLimits, LengthAndLevels) {
  broker::Limits l;
  l.max_topic_length = 5;
  l.max_topic_levels = 2;
  EXPECT_FALSE(broker::topic_over_limits("a/b", l));
  EXPECT_EQ(broker::topic_over_limits("a/b/c", l), Limit::TopicLevels);
  EXPECT_EQ(broker::topic_over_limits("abcdef", l), Limit::TopicLength);
  EXPECT_FALSE(broker::topic_over_limits("/", l));  // two empty levels
}

}  // namespace
}  // namespace moat::test
