// Session, QoS and routing state machines without sockets (MQTT 3.1.1 sections 3 and 4).
#include <algorithm>
#include <map>
#include <set>

#include "harness.hpp"

namespace moat::test {
namespace {

using codec::PacketType;
using codec::QoS;

class ShardTest : public BrokerFixture {
 protected:
  // Subscriber "s" of "x" at QoS 1, under these window and queue limits, after
  // publisher "p" sent it `n` messages "0".."n-1" at QoS 1. Returns "s".
  FakeConnection& qos1_backlog(std::uint32_t window, std::uint32_t queue, int n) {
    make();
    shared.limits.max_inflight_messages = window;
    shared.limits.max_queued_messages = queue;
    auto& sub = connect("s");
    subscribe(sub, "x", QoS::AtLeastOnce);
    sub.take();
    auto& pub = connect("p");
    for (int i = 0; i < n; ++i)
      publish(pub, "x", std::to_string(i), QoS::AtLeastOnce, static_cast<std::uint16_t>(1 + i % 60000));
    return sub;
  }
};

TEST_F(ShardTest, FirstPacketMustBeConnect_MQTT_3_1_0_1) {
  make();
  auto& c = raw();
  c.send(codec::Pingreq{});
  EXPECT_TRUE(c.closed);
  EXPECT_TRUE(c.take().empty());
  EXPECT_EQ(shard_list[0]->stats().protocol_errors.get(), 1u);
}

TEST_F(ShardTest, SecondConnectClosesConnection_MQTT_3_1_0_2) {
  make();
  auto& c = connect("a");
  codec::Connect again;
  again.client_id = "a";
  c.send(again);
  EXPECT_TRUE(c.closed);
}

TEST_F(ShardTest, UnsupportedLevelGetsConnack1ThenClose_MQTT_3_1_2_2) {
  make();
  auto& c = raw();
  // "MQTT", level 5 (not served yet), flags 2, keep-alive 0, client id "x".
  c.feed({0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 0, 1, 'x'});
  auto got = c.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].type, PacketType::Connack);
  EXPECT_EQ(got[0].connack.code, codec::ConnectReturnCode::UnacceptableProtocolVersion);
  EXPECT_TRUE(c.closed);
}

TEST_F(ShardTest, EmptyClientIdPersistentIsRejected_MQTT_3_1_3_8) {
  make();
  auto& c = raw();
  codec::Connect p;
  p.clean_session = false;
  c.send(p);
  auto got = c.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].connack.code, codec::ConnectReturnCode::IdentifierRejected);
  EXPECT_TRUE(c.closed);
}

TEST_F(ShardTest, EmptyClientIdCleanIsAssignedOnThisShard_MQTT_3_1_3_6) {
  make(4);
  auto& c = raw(2);
  codec::Connect p;
  c.send(p);
  auto got = c.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].connack.code, codec::ConnectReturnCode::Accepted);
  EXPECT_FALSE(c.migrated_to.has_value());
  EXPECT_EQ(shard_list[2]->session_count(), 1u);
}

TEST_F(ShardTest, ConnectOnOtherShardMigratesWithoutConsuming) {
  make(4);
  const std::string id = "sensor-17";
  const auto owner = broker::shard_of(id, 4);
  auto& c = raw((owner + 1) % 4);
  codec::Connect p;
  p.client_id = id;
  c.send(p);
  ASSERT_TRUE(c.migrated_to.has_value());
  EXPECT_EQ(*c.migrated_to, owner);
  EXPECT_FALSE(c.input.empty()) << "the CONNECT must travel with the connection";
  EXPECT_TRUE(c.take().empty());
}

TEST_F(ShardTest, MQTT31IdentifierLongerThan23IsRejected) {
  make();
  auto& c = raw();
  codec::Connect p;
  p.version = codec::ProtocolVersion::V31;
  p.client_id = "abcdefghijklmnopqrstuvwxyz";
  c.send(p);
  auto got = c.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].connack.code, codec::ConnectReturnCode::IdentifierRejected);
}

TEST_F(ShardTest, Qos0Qos1Qos2RoundTripAcrossShards) {
  make(3);
  auto& sub = connect("subscriber");
  subscribe(sub, "t/#", QoS::ExactlyOnce);
  auto ack = sub.take();
  ASSERT_EQ(ack.size(), 1u);
  EXPECT_EQ(ack[0].type, PacketType::Suback);
  EXPECT_EQ(ack[0].return_codes, std::vector<std::uint8_t>{2});

  auto& pub = connect("publisher-on-another-shard");
  publish(pub, "t/0", "zero", QoS::AtMostOnce);
  publish(pub, "t/1", "one", QoS::AtLeastOnce, 7);
  publish(pub, "t/2", "two", QoS::ExactlyOnce, 8);
  auto pacts = pub.take();
  ASSERT_EQ(pacts.size(), 2u);
  EXPECT_EQ(pacts[0].type, PacketType::Puback);
  EXPECT_EQ(pacts[0].packet_id, 7);
  EXPECT_EQ(pacts[1].type, PacketType::Pubrec);
  EXPECT_EQ(pacts[1].packet_id, 8);

  auto got = sub.take();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].payload, "zero");
  EXPECT_EQ(got[0].qos, QoS::AtMostOnce);
  EXPECT_EQ(got[1].payload, "one");
  EXPECT_EQ(got[1].qos, QoS::AtLeastOnce);
  EXPECT_NE(got[1].packet_id, 0);
  EXPECT_EQ(got[2].payload, "two");
  EXPECT_EQ(got[2].qos, QoS::ExactlyOnce);

  pub.send(codec::Ack{PacketType::Pubrel, 8});
  auto comp = pub.take();
  ASSERT_EQ(comp.size(), 1u);
  EXPECT_EQ(comp[0].type, PacketType::Pubcomp);
}

TEST_F(ShardTest, Qos2DuplicateBeforePubrelIsDeliveredOnce_MQTT_4_3_3_2) {
  make();
  auto& sub = connect("s");
  subscribe(sub, "x", QoS::ExactlyOnce);
  sub.take();
  auto& pub = connect("p");
  publish(pub, "x", "once", QoS::ExactlyOnce, 5);
  publish(pub, "x", "once", QoS::ExactlyOnce, 5, false, true);  // DUP resend
  auto acks = pub.take();
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[1].type, PacketType::Pubrec);
  EXPECT_EQ(sub.take().size(), 1u);
  pub.send(codec::Ack{PacketType::Pubrel, 5});
  // After PUBREL the id is free: the same id is a new message.
  publish(pub, "x", "again", QoS::ExactlyOnce, 5);
  auto got = sub.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, "again");
}

TEST_F(ShardTest, OutboundQos2FlowAndPacketIdReuse) {
  make();
  auto& sub = connect("s");
  subscribe(sub, "x", QoS::ExactlyOnce);
  sub.take();
  auto& pub = connect("p");
  publish(pub, "x", "m", QoS::ExactlyOnce, 1);
  auto got = sub.take();
  ASSERT_EQ(got.size(), 1u);
  const auto id = got[0].packet_id;
  sub.send(codec::Ack{PacketType::Pubrec, id});
  auto rel = sub.take();
  ASSERT_EQ(rel.size(), 1u);
  EXPECT_EQ(rel[0].type, PacketType::Pubrel);
  EXPECT_EQ(rel[0].packet_id, id);
  ASSERT_EQ(shard_list[0]->find_session("s")->inflight.size(), 1u);
  sub.send(codec::Ack{PacketType::Pubcomp, id});
  EXPECT_TRUE(shard_list[0]->find_session("s")->inflight.empty());
}

TEST_F(ShardTest, OverlappingSubscriptionsDeliverOneCopyAtHighestQos) {
  make(2);
  auto& sub = connect("s");
  subscribe(sub, "a/#", QoS::AtMostOnce, 1);
  subscribe(sub, "a/b", QoS::ExactlyOnce, 2);
  subscribe(sub, "+/b", QoS::AtLeastOnce, 3);
  sub.take();
  auto& pub = connect("p");
  publish(pub, "a/b", "m", QoS::ExactlyOnce, 1);
  auto got = sub.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].qos, QoS::ExactlyOnce);
}

TEST_F(ShardTest, QosIsDowngradedToGranted_MQTT_3_8_4_6) {
  make();
  auto& sub = connect("s");
  subscribe(sub, "x", QoS::AtMostOnce);
  sub.take();
  auto& pub = connect("p");
  publish(pub, "x", "m", QoS::ExactlyOnce, 1);
  auto got = sub.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].qos, QoS::AtMostOnce);
}

TEST_F(ShardTest, InvalidFilterIsAProtocolViolation_MQTT_4_8_0_1) {
  make();
  auto& c = connect("s");
  codec::Subscribe s;
  s.packet_id = 9;
  s.subscriptions = {{"ok/+", QoS::AtLeastOnce}, {"a/#/b", QoS::AtMostOnce}};
  c.send(s);
  EXPECT_TRUE(c.take().empty());
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(shard_list[0]->subscription_index().size(), 0u) << "nothing of the packet is applied";
}

TEST_F(ShardTest, SubackCarriesOneGrantedQosPerFilterInOrder_MQTT_3_8_4_5) {
  make();
  auto& c = connect("s");
  codec::Subscribe s;
  s.packet_id = 9;
  s.subscriptions = {{"a", QoS::ExactlyOnce}, {"b/+", QoS::AtMostOnce}, {"#", QoS::AtLeastOnce}};
  c.send(s);
  auto got = c.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].packet_id, 9);
  EXPECT_EQ(got[0].return_codes, (std::vector<std::uint8_t>{2, 0, 1}));
}

TEST_F(ShardTest, RetainedSetReplaceClearAndDeliveredWithRetainFlag) {
  make(2);
  auto& pub = connect("p");
  publish(pub, "r/a", "v1", QoS::AtLeastOnce, 1, true);
  publish(pub, "r/a", "v2", QoS::AtMostOnce, 0, true);
  publish(pub, "r/b", "b", QoS::AtMostOnce, 0, true);
  auto& sub = connect("s");
  subscribe(sub, "r/+", QoS::AtLeastOnce);
  auto got = sub.take();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].type, PacketType::Suback);
  EXPECT_EQ(got[1].payload, "v2");
  EXPECT_TRUE(got[1].retain);  // [MQTT-3.3.1-8]
  EXPECT_EQ(got[1].qos, QoS::AtMostOnce);
  EXPECT_TRUE(got[2].retain);
  // Live delivery of a retained publish carries RETAIN 0 [MQTT-3.3.1-9].
  publish(pub, "r/a", "v3", QoS::AtMostOnce, 0, true);
  got = sub.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_FALSE(got[0].retain);
  // An empty retained payload clears the topic [MQTT-3.3.1-10] and is still delivered [MQTT-3.3.1-11].
  publish(pub, "r/a", "", QoS::AtMostOnce, 0, true);
  EXPECT_EQ(sub.take().size(), 1u);
  EXPECT_EQ(shared.retained.size(), 1u);
  EXPECT_EQ(store.load().retained.size(), 1u);
}

// Two loops, the subscriber's and the publisher's, at the same moment: the
// subscriber's loop looks the retained messages up before the publisher's sets
// one, and the publisher's routes it before it learns of the subscription.
// Neither path saw it; the publisher's loop delivers it once it learns.
TEST_F(ShardTest, RetainedMessageSetWhileASubscriptionTravelsIsDeliveredOnce) {
  make(2);
  std::string sid = "s", pid = "p";
  while (broker::shard_of(sid, 2) != 0) sid += "s";
  while (broker::shard_of(pid, 2) != 1) pid += "p";
  auto& sub = connect(sid);
  auto& pub = connect(pid);
  auto& other = connect(pid + "-other");  // on either loop: sets a topic before the subscription
  publish(other, "r/old", "o", QoS::AtMostOnce, 0, true);

  codec::Subscribe s;
  s.packet_id = 1;
  s.subscriptions.push_back({"r/#", QoS::AtLeastOnce});
  sub.send(s);  // handled on loop 0; the news waits in its outbox (no settle)
  codec::Publish p;
  p.topic = "r/new";
  p.payload = "n";
  p.qos = QoS::AtLeastOnce;
  p.packet_id = 1;
  p.retain = true;
  pub.send(p);  // handled on loop 1, which does not know the subscription yet
  bus.settle();

  auto got = sub.take();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].type, PacketType::Suback);
  EXPECT_EQ(got[1].payload, "o");  // looked up at the subscription
  EXPECT_TRUE(got[1].retain);
  EXPECT_EQ(got[2].topic, "r/new");  // published at the same moment: a live delivery
  EXPECT_EQ(got[2].payload, "n");
  EXPECT_FALSE(got[2].retain);
  EXPECT_EQ(got[2].qos, QoS::AtLeastOnce);
  // Once both loops know the subscription, a retained publish arrives once.
  publish(pub, "r/new", "n2", QoS::AtMostOnce, 0, true);
  got = sub.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, "n2");
  // The same subscription made again while a retained message is set on the
  // other loop: that loop routes it to the subscription it has, and does not
  // deliver it a second time when the repeat arrives.
  s.packet_id = 2;
  sub.send(s);
  p.payload = "n3";
  p.packet_id = 2;
  pub.send(p);
  bus.settle();
  got = sub.take();
  ASSERT_EQ(got.size(), 4u);  // SUBACK, the two retained messages again, "n3" once
  EXPECT_EQ(got[0].type, PacketType::Suback);
  EXPECT_EQ(got[1].payload, "n2");
  EXPECT_EQ(got[2].payload, "o");
  EXPECT_EQ(got[3].payload, "n3");
}

TEST_F(ShardTest, WildcardsDoNotMatchDollarTopics_MQTT_4_7_2_1) {
  make();
  auto& pub = connect("p");
  publish(pub, "$SYS/x", "sys", QoS::AtMostOnce, 0, true);
  auto& sub = connect("s");
  subscribe(sub, "#", QoS::AtMostOnce, 1);
  subscribe(sub, "+/x", QoS::AtMostOnce, 2);
  auto got = sub.take();
  EXPECT_EQ(got.size(), 2u);  // two SUBACKs, no retained message
  subscribe(sub, "$SYS/#", QoS::AtMostOnce, 3);
  got = sub.take();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].topic, "$SYS/x");
}

TEST_F(ShardTest, WillOnKeepAliveTimeoutNotAfterDisconnect) {
  make(2);
  auto& watcher = connect("w");
  subscribe(watcher, "will/#", QoS::AtLeastOnce);
  watcher.take();
  codec::Will will{"will/a", "gone", QoS::AtLeastOnce, false};
  auto& a = connect("a", true, 2, will);
  advance(std::chrono::milliseconds(2900));
  EXPECT_FALSE(a.closed);
  advance(std::chrono::milliseconds(200));  // 3.1 s > 1.5 x 2 s
  EXPECT_TRUE(a.closed);
  auto got = watcher.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, "gone");

  codec::Will will2{"will/b", "never", QoS::AtMostOnce, false};
  auto& b = connect("b", true, 0, will2);
  b.send(codec::Disconnect{});
  EXPECT_TRUE(b.closed);
  b.drop();
  bus.settle();
  EXPECT_TRUE(watcher.take().empty());  // [MQTT-3.14.4-3]
}

TEST_F(ShardTest, WillOnConnectionLossAndOnProtocolError) {
  make();
  auto& watcher = connect("w");
  subscribe(watcher, "will", QoS::AtMostOnce);
  watcher.take();
  auto& a = connect("a", true, 0, codec::Will{"will", "lost", QoS::AtMostOnce, true});
  a.drop();
  bus.settle();
  ASSERT_EQ(watcher.take().size(), 1u);
  EXPECT_EQ(shared.retained.size(), 1u);  // will retain honoured
  auto& b = connect("b", true, 0, codec::Will{"will", "bad", QoS::AtMostOnce, false});
  b.feed({0xF0, 0x00});  // reserved packet type 15
  EXPECT_TRUE(b.closed);
  auto got = watcher.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, "bad");
}

TEST_F(ShardTest, ConnectTimeout) {
  make();
  shared.limits.connect_timeout = std::chrono::seconds(2);
  auto& c = raw();
  advance(std::chrono::milliseconds(1900));
  EXPECT_FALSE(c.closed);
  advance(std::chrono::milliseconds(200));
  EXPECT_TRUE(c.closed);
}

TEST_F(ShardTest, TakeoverClosesOldConnectionAndPublishesItsWill_MQTT_3_1_4_2) {
  make(2);
  auto& watcher = connect("w");
  subscribe(watcher, "will", QoS::AtMostOnce);
  watcher.take();
  auto& first = connect("dev", false, 0, codec::Will{"will", "old", QoS::AtMostOnce, false});
  subscribe(first, "cmd", QoS::AtLeastOnce);
  first.take();
  bool present = false;
  auto& second = connect("dev", false, 0, std::nullopt, &present);
  EXPECT_TRUE(first.closed);
  EXPECT_TRUE(present);
  EXPECT_EQ(watcher.take().size(), 1u);
  auto& pub = connect("p");
  publish(pub, "cmd", "go", QoS::AtLeastOnce, 1);
  EXPECT_TRUE(first.take().empty());
  EXPECT_EQ(second.take().size(), 1u);
}

TEST_F(ShardTest, PersistentSessionQueuesWhileOfflineAndResendsUnacked_MQTT_4_4_0_1) {
  make(2);
  auto& s1 = connect("dev", false);
  subscribe(s1, "q", QoS::ExactlyOnce);
  s1.take();
  auto& pub = connect("p");
  publish(pub, "q", "1", QoS::AtLeastOnce, 1);
  publish(pub, "q", "2", QoS::ExactlyOnce, 2);
  auto first = s1.take();
  ASSERT_EQ(first.size(), 2u);
  s1.send(codec::Ack{PacketType::Pubrec, first[1].packet_id});  // QoS 2 half done
  s1.take();
  s1.drop();
  bus.settle();
  publish(pub, "q", "3", QoS::AtLeastOnce, 3);
  publish(pub, "q", "4", QoS::AtMostOnce);  // QoS 0 is not queued for offline sessions
  publish(pub, "q", "5", QoS::ExactlyOnce, 4);

  bool present = false;
  auto& s2 = connect("dev", false, 0, std::nullopt, &present);
  EXPECT_TRUE(present);
  auto got = s2.take();
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].type, PacketType::Publish);
  EXPECT_TRUE(got[0].dup);
  EXPECT_EQ(got[0].payload, "1");
  EXPECT_EQ(got[0].packet_id, first[0].packet_id);
  EXPECT_EQ(got[1].type, PacketType::Pubrel);
  EXPECT_EQ(got[1].packet_id, first[1].packet_id);
  EXPECT_EQ(got[2].payload, "3");
  EXPECT_FALSE(got[2].dup);
  EXPECT_EQ(got[3].payload, "5");
  EXPECT_EQ(shard_list[broker::shard_of("dev", 2)]->stats().dropped_offline_qos0.get(), 1u);
}

TEST_F(ShardTest, CleanSessionDiscardsPersistentState_MQTT_3_1_2_6) {
  make();
  auto& s1 = connect("dev", false);
  subscribe(s1, "q", QoS::AtLeastOnce);
  s1.drop();
  bool present = true;
  auto& s2 = connect("dev", true, 0, std::nullopt, &present);
  EXPECT_FALSE(present);
  auto& pub = connect("p");
  publish(pub, "q", "x", QoS::AtLeastOnce, 1);
  EXPECT_TRUE(s2.take().empty());
  EXPECT_TRUE(store.load().sessions.empty());
}

// A clean session is never resumed, so its window keeps ids and states only:
// once written, the message is held by nothing of that session. A persistent
// session's window keeps it, to resend after a reconnect, until acknowledged.
TEST_F(ShardTest, OnlyAPersistentSessionsWindowKeepsTheMessage_MQTT_4_4_0_1) {
  make();
  auto& clean = connect("c");
  subscribe(clean, "x", QoS::AtLeastOnce);
  auto& durable = connect("d", false);
  subscribe(durable, "x", QoS::AtLeastOnce);
  clean.take();
  durable.take();
  auto& pub = connect("p");
  publish(pub, "x", std::string(1024, 'm'), QoS::AtLeastOnce, 1);
  const auto to_clean = clean.take();
  const auto to_durable = durable.take();
  ASSERT_EQ(to_clean.size(), 1u);
  ASSERT_EQ(to_durable.size(), 1u);
  const broker::Session* c = shard_list[0]->find_session("c");
  const broker::Session* d = shard_list[0]->find_session("d");
  ASSERT_EQ(c->inflight.size(), 1u);
  ASSERT_EQ(d->inflight.size(), 1u);
  EXPECT_EQ(c->inflight.begin()->message, nullptr);
  const std::weak_ptr<const broker::Message> kept = d->inflight.begin()->message;
  EXPECT_EQ(kept.use_count(), 1);  // the persistent window only
  clean.send(codec::Ack{PacketType::Puback, to_clean[0].packet_id});
  EXPECT_TRUE(c->inflight.empty());
  EXPECT_FALSE(kept.expired());
  durable.send(codec::Ack{PacketType::Puback, to_durable[0].packet_id});
  EXPECT_TRUE(d->inflight.empty());
  EXPECT_TRUE(kept.expired());
}

TEST_F(ShardTest, InflightWindowQueuesInOrderAndFullQueueIsCounted) {
  auto& sub = qos1_backlog(2, 3, 7);
  auto got = sub.take();
  ASSERT_EQ(got.size(), 2u);                                       // the window
  EXPECT_EQ(shard_list[0]->stats().dropped_queue_full.get(), 2u);  // 7 - 2 in flight - 3 queued
  std::vector<std::string> seen{got[0].payload, got[1].payload};
  for (int round = 0; round < 4 && !got.empty(); ++round) {
    for (const auto& g : got) sub.send(codec::Ack{PacketType::Puback, g.packet_id});
    got = sub.take();
    for (const auto& g : got) seen.push_back(g.payload);
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"0", "1", "2", "3", "4"}));
}

// A window larger than the id bitmap's threshold, acknowledged out of turn:
// every message arrives once, in order, and no id in flight is given twice.
TEST_F(ShardTest, LargeInflightWindowAcknowledgedOutOfTurn) {
  constexpr int kMessages = 1000;
  auto& sub = qos1_backlog(200, 10000, kMessages);
  std::vector<std::string> seen;
  std::set<std::uint16_t> outstanding;
  auto got = sub.take();
  ASSERT_EQ(got.size(), 200u);  // the window
  for (int round = 0; round < 100 && !got.empty(); ++round) {
    for (const auto& g : got) {
      EXPECT_TRUE(outstanding.insert(g.packet_id).second) << "id " << g.packet_id << " given twice";
      seen.push_back(g.payload);
    }
    // Acknowledge every other one, newest first, then the rest.
    std::vector<std::uint16_t> acks(outstanding.rbegin(), outstanding.rend());
    std::stable_partition(acks.begin(), acks.end(), [](std::uint16_t id) { return id % 2 == 0; });
    for (std::size_t i = 0; i < acks.size() / 2; ++i) {
      sub.send(codec::Ack{PacketType::Puback, acks[i]});
      outstanding.erase(acks[i]);
    }
    got = sub.take();
    if (got.empty()) {
      for (auto id : std::vector<std::uint16_t>(outstanding.begin(), outstanding.end()))
        sub.send(codec::Ack{PacketType::Puback, id});
      outstanding.clear();
      got = sub.take();
    }
  }
  ASSERT_EQ(seen.size(), static_cast<std::size_t>(kMessages));
  for (int i = 0; i < kMessages; ++i) EXPECT_EQ(seen[i], std::to_string(i));
  for (auto id : std::vector<std::uint16_t>(outstanding.begin(), outstanding.end()))
    sub.send(codec::Ack{PacketType::Puback, id});
  EXPECT_TRUE(shard_list[0]->find_session("s")->inflight.empty());
}

TEST_F(ShardTest, FullQueueDropsTheOldestWhenConfigured) {
  make();
  shared.limits.max_inflight_messages = 1;
  shared.limits.max_queued_messages = 3;
  shared.limits.queue_full = broker::QueueFullPolicy::DropOldest;
  auto& sub = connect("s", false);
  subscribe(sub, "x", QoS::AtLeastOnce);
  sub.take();
  auto& pub = connect("p");
  for (int i = 0; i < 7; ++i)
    publish(pub, "x", std::to_string(i), QoS::AtLeastOnce, static_cast<std::uint16_t>(i + 1));
  EXPECT_EQ(shard_list[0]->stats().dropped_queue_full.get(), 3u);  // 1, 2 and 3 made room
  std::vector<std::string> seen;
  for (auto got = sub.take(); !got.empty(); got = sub.take()) {
    for (const auto& g : got) {
      seen.push_back(g.payload);
      sub.send(codec::Ack{PacketType::Puback, g.packet_id});
    }
    bus.settle();
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"0", "4", "5", "6"}));
  // The dropped messages left the store too.
  EXPECT_TRUE(store.load().sessions.at(0).queued.empty());
}

TEST_F(ShardTest, QueueBytesLimitCountsTopicAndPayload) {
  make();
  shared.limits.max_inflight_messages = 1;
  shared.limits.max_queued_messages = 100;
  shared.limits.max_queued_bytes = 25;  // topic "x" + 10-byte payload = 11 bytes: two fit
  auto& sub = connect("s");
  subscribe(sub, "x", QoS::AtLeastOnce);
  sub.take();
  auto& pub = connect("p");
  for (int i = 0; i < 5; ++i)
    publish(pub, "x", std::string(9, 'a') + std::to_string(i), QoS::AtLeastOnce,
            static_cast<std::uint16_t>(i + 1));
  EXPECT_EQ(shard_list[0]->stats().dropped_queue_full.get(), 2u);  // 1 in flight, 2 queued
  std::vector<std::string> seen;
  for (auto got = sub.take(); !got.empty(); got = sub.take()) {
    for (const auto& g : got) {
      seen.push_back(g.payload.substr(9));
      sub.send(codec::Ack{PacketType::Puback, g.packet_id});
    }
    bus.settle();
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"0", "1", "2"}));
  // Drained: the byte count went back to zero, so the queue takes messages again.
  publish(pub, "x", std::string(10, 'b'), QoS::AtLeastOnce, 9);
  publish(pub, "x", std::string(10, 'c'), QoS::AtLeastOnce, 10);
  EXPECT_EQ(shard_list[0]->stats().dropped_queue_full.get(), 2u);
}

TEST_F(ShardTest, UnsubscribeStopsDeliveryEverywhere) {
  make(3);
  auto& sub = connect("s");
  subscribe(sub, "x/+", QoS::AtMostOnce);
  codec::Unsubscribe u;
  u.packet_id = 4;
  u.filters = {"x/+", "never-subscribed"};
  sub.send(u);
  bus.settle();
  auto got = sub.take();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].type, PacketType::Unsuback);
  EXPECT_EQ(got[1].packet_id, 4);
  for (auto& s : shard_list) EXPECT_EQ(s->subscription_index().size(), 0u);
}

// A second broker started on the same store gets back every persistent session
// with its subscriptions, what was queued for it, what was in flight (resent with
// DUP=1 and the same packet id), and the inbound QoS 2 ids awaiting PUBREL.
TEST_F(ShardTest, RestartFromStoreRestoresSessionsQueuesAndInflight) {
  make(2);
  shared.limits.max_inflight_messages = 2;
  auto& sub = connect("dev", false);
  subscribe(sub, "a/#", QoS::ExactlyOnce);
  sub.take();
  auto& pub = connect("pub", false);
  for (int i = 1; i <= 4; ++i)
    publish(pub, "a/x", "m" + std::to_string(i), QoS::ExactlyOnce, static_cast<std::uint16_t>(i));
  auto first = sub.take();
  ASSERT_EQ(first.size(), 2u);                                   // the window; m3 and m4 are queued
  sub.send(codec::Ack{PacketType::Pubrec, first[0].packet_id});  // m1 now awaits PUBCOMP
  bus.settle();
  // pub's inbound ids 1..4 await PUBREL; release 1 only.
  pub.send(codec::Ack{PacketType::Pubrel, 1});
  bus.settle();
  publish(pub, "a/r", "kept", QoS::AtLeastOnce, 9, true);
  sub.take();

  const auto snap = store.load();
  ASSERT_EQ(snap.sessions.size(), 2u);
  broker::BrokerShared shared2;
  shared2.shard_count = 2;
  shared2.store = &store;
  shared2.sys_interval = std::chrono::seconds(0);
  shared2.next_seq = snap.next_seq;
  shared2.next_session_id = snap.next_session_id;
  FakeBus bus2;
  broker::Shard a(0, shared2, bus2), b(1, shared2, bus2);
  bus2.shards = {&a, &b};
  a.restore(snap);
  b.restore(snap);
  // Both replicas of the index hold the subscription at once, without events
  // between the shards: a publisher that connects first must find it.
  EXPECT_TRUE(bus2.in_flight.empty());
  EXPECT_EQ(a.subscription_index().size(), 1u);
  EXPECT_EQ(b.subscription_index().size(), 1u);
  bus2.settle();
  EXPECT_EQ(a.session_count() + b.session_count(), 2u);
  EXPECT_EQ(a.subscription_index().size(), 1u);
  EXPECT_EQ(b.subscription_index().size(), 1u);
  EXPECT_EQ(snap.retained.size(), 1u);

  auto& owner = broker::shard_of("dev", 2) == 0 ? a : b;
  FakeConnection again(owner, policy, "127.0.0.1:2");
  codec::Connect c;
  c.client_id = "dev";
  c.clean_session = false;
  again.send(c);
  bus2.settle();
  auto got = again.take();
  ASSERT_EQ(got.size(), 6u);
  EXPECT_TRUE(got[0].connack.session_present);
  EXPECT_EQ(got[1].type, PacketType::Pubrel);  // m1: PUBREC was stored, never resend PUBLISH
  EXPECT_EQ(got[1].packet_id, first[0].packet_id);
  EXPECT_EQ(got[2].payload, "m2");
  EXPECT_TRUE(got[2].dup);
  EXPECT_EQ(got[2].packet_id, first[1].packet_id);
  // The queue follows, in order (the new broker's window is the default 20).
  EXPECT_EQ(got[3].payload, "m3");
  EXPECT_FALSE(got[3].dup);
  EXPECT_EQ(got[4].payload, "m4");
  EXPECT_EQ(got[5].payload, "kept");

  auto& pub_owner = broker::shard_of("pub", 2) == 0 ? a : b;
  auto* ps = pub_owner.find_session("pub");
  ASSERT_NE(ps, nullptr);
  EXPECT_EQ(ps->awaiting_pubrel.size(), 3U);
  for (const std::uint16_t id : {2, 3, 4}) EXPECT_TRUE(ps->awaiting_pubrel.contains(id)) << id;
}

TEST_F(ShardTest, AcknowledgedMessagesLeaveTheStore) {
  make(1);
  auto& sub = connect("dev", false);
  subscribe(sub, "q", QoS::AtLeastOnce);
  sub.take();
  auto& pub = connect("p");
  publish(pub, "q", "x", QoS::AtLeastOnce, 1);
  auto got = sub.take();
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(store.load().sessions.at(0).queued.size(), 1u);
  EXPECT_EQ(store.load().sessions.at(0).queued.at(0).packet_id, got[0].packet_id);
  sub.send(codec::Ack{PacketType::Puback, got[0].packet_id});
  bus.settle();
  EXPECT_TRUE(store.load().sessions.at(0).queued.empty());
  // A clean session is never stored.
  EXPECT_EQ(store.load().sessions.size(), 1u);
}

TEST_F(ShardTest, SysTopicsPublishCountersFromEveryShard) {
  make(2);
  shared.sys_interval = std::chrono::seconds(5);
  shared.limits.max_queued_messages = 0;
  shared.limits.max_inflight_messages = 1;
  auto& sub = connect("s");
  subscribe(sub, "x", QoS::AtLeastOnce);
  auto& pub = connect("p");
  publish(pub, "x", "1", QoS::AtLeastOnce, 1);
  publish(pub, "x", "2", QoS::AtLeastOnce, 2);  // window full, no queue: dropped
  auto& watcher = connect("w");
  subscribe(watcher, "$SYS/broker/messages/#", QoS::AtMostOnce);
  watcher.take();
  advance(std::chrono::milliseconds(10));
  std::map<std::string, std::string> seen;
  for (const auto& r : watcher.take()) seen[r.topic] = r.payload;
  EXPECT_EQ(seen["$SYS/broker/messages/received"], "2");
  EXPECT_EQ(seen["$SYS/broker/messages/sent"], "1");
  EXPECT_EQ(seen["$SYS/broker/messages/dropped/queue_full"], "1");
  // Not again before the interval has passed.
  advance(std::chrono::seconds(2));
  EXPECT_TRUE(watcher.take().empty());
  advance(std::chrono::seconds(4));
  EXPECT_FALSE(watcher.take().empty());
}

}  // namespace
}  // namespace moat::test
