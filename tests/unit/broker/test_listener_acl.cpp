// [listener.acl]: a connection is judged by the access policy of the listener
// it came in through (ListenerPolicy::acl_slot), at subscribe, publish and
// delivery, and a session restored from the store by the policy of the
// listener its client reconnects through.
#include "harness.hpp"
#include "security/acl.hpp"

namespace moat::test {
namespace {

using codec::PacketType;
using codec::QoS;

// Anonymous clients may do everything under `prefix`/.
std::shared_ptr<security::Reloadable<security::AccessPolicy>> allow_under(const std::string& prefix) {
  security::OrderedRule r;
  r.actions = security::AclRule::kAll;
  r.topic = prefix + "/#";
  return std::make_shared<security::Reloadable<security::AccessPolicy>>(
      std::make_shared<const security::AccessPolicy>(security::OrderedRules::make({r}), nullptr));
}

class ListenerAclTest : public BrokerFixture {
 protected:
  // [acl] grants a/, listener "b" (slot 1) its own ACL granting b/.
  void make_policies(broker::BrokerShared& s) {
    s.acl = allow_under("a");
    s.listener_access = {{allow_under("b"), nullptr}};
  }
  void SetUp() override {
    make_policies(shared);
    on_b.name = "b";
    on_b.auth.add(security::make_authenticator("anonymous"));
    on_b.acl_slot = 1;
  }
  FakeConnection& connect_via(broker::Shard& shard, const broker::ListenerPolicy& listener,
                              const std::string& client_id, bool clean = true) {
    conns.push_back(std::make_unique<FakeConnection>(shard, listener, "127.0.0.1:7"));
    auto& c = *conns.back();
    codec::Connect p;
    p.client_id = client_id;
    p.clean_session = clean;
    c.send(p);
    bus.settle();
    return c;
  }
  std::vector<std::string> topics(const std::vector<Received>& got) {
    std::vector<std::string> out;
    for (const auto& r : got)
      if (r.type == PacketType::Publish) out.push_back(r.topic);
    return out;
  }
  broker::ListenerPolicy on_b;
};

TEST_F(ListenerAclTest, EachConnectionIsJudgedByItsListenersPolicy) {
  make();
  auto& a = connect_via(*shard_list[0], policy, "on-a");
  auto& b = connect_via(*shard_list[0], on_b, "on-b");
  a.take();
  b.take();
  subscribe(a, "a/x", QoS::AtLeastOnce);
  subscribe(b, "a/x", QoS::AtLeastOnce, 2);
  subscribe(b, "b/x", QoS::AtLeastOnce, 3);
  subscribe(a, "b/x", QoS::AtLeastOnce, 4);
  auto sa = a.take();
  auto sb = b.take();
  ASSERT_EQ(sa.size(), 2u);
  ASSERT_EQ(sb.size(), 2u);
  EXPECT_EQ(sa[0].return_codes, std::vector<std::uint8_t>{1});
  EXPECT_EQ(sa[1].return_codes, std::vector<std::uint8_t>{0x80});
  EXPECT_EQ(sb[0].return_codes, std::vector<std::uint8_t>{0x80});
  EXPECT_EQ(sb[1].return_codes, std::vector<std::uint8_t>{1});
  // Publish through B: a/x dropped, b/x routed.
  publish(b, "a/x", "no", QoS::AtLeastOnce, 10);
  publish(b, "b/x", "yes", QoS::AtLeastOnce, 11);
  EXPECT_EQ(topics(a.take()), std::vector<std::string>{});
  EXPECT_EQ(topics(b.take()), std::vector<std::string>{"b/x"});
}

// A session restored from the store has no listener until its client is back;
// the queue is then filtered by the policy of the listener it reconnects through.
TEST_F(ListenerAclTest, RestoredQueueIsJudgedByTheListenerOfTheReconnect) {
  make();  // the anonymous listener `policy` (slot 0)
  for (const bool via_b : {false, true}) {
    SCOPED_TRACE(via_b ? "reconnect via b" : "reconnect via a");
    store::MemoryStore st;
    {
      broker::BrokerShared s1;  // no ACL: everything is queued
      s1.store = &st;
      s1.sys_interval = std::chrono::seconds(0);
      FakeBus bus1;
      broker::Shard shard(0, s1, bus1);
      bus1.shards = {&shard};
      broker::ListenerPolicy open;
      open.name = "open";
      open.auth.add(security::make_authenticator("anonymous"));
      {
        FakeConnection dev(shard, open, "127.0.0.1:1");
        codec::Connect c;
        c.client_id = "dev";
        c.clean_session = false;
        dev.send(c);
        codec::Subscribe sub;
        sub.packet_id = 1;
        sub.subscriptions.push_back({"#", QoS::AtLeastOnce});
        dev.send(sub);
        bus1.settle();
        dev.send(codec::Disconnect{});
        bus1.settle();
      }
      FakeConnection pub(shard, open, "127.0.0.1:2");
      codec::Connect c;
      c.client_id = "pub";
      pub.send(c);
      for (const char* t : {"a/1", "b/1", "a/2", "b/2"}) {
        codec::Publish p;
        p.topic = t;
        p.payload = "m";
        p.qos = QoS::AtLeastOnce;
        p.packet_id = 5;
        pub.send(p);
        bus1.settle();
      }
    }
    const auto snap = st.load();
    broker::BrokerShared s2;
    s2.store = &st;
    s2.sys_interval = std::chrono::seconds(0);
    s2.next_seq = snap.next_seq;
    s2.next_session_id = snap.next_session_id;
    make_policies(s2);
    FakeBus bus2;
    broker::Shard shard(0, s2, bus2);
    bus2.shards = {&shard};
    shard.restore(snap);
    auto& dev = connect_via(shard, via_b ? on_b : policy, "dev", false);
    bus2.settle();
    auto got = dev.take();
    ASSERT_FALSE(got.empty());
    EXPECT_TRUE(got[0].connack.session_present);
    EXPECT_EQ(topics(got),
              via_b ? std::vector<std::string>({"b/1", "b/2"}) : std::vector<std::string>({"a/1", "a/2"}));
    conns.pop_back();  // the connection goes before the shard it lives on
  }
}

}  // namespace
}  // namespace moat::test
