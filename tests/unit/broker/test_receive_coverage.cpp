// A delivery matched against the shard's own index skips the receive check
// when every topic the session's subscriptions can match may be received
// (Shard::receive_covered, security::allows_every_match). What it must never
// do is deliver a topic the ACL denies: a deny rule reaching one of the
// filters, a reloaded ACL, a new subscription or a new identity each bring
// the check back.
#include "harness.hpp"
#include "security/acl.hpp"

namespace moat::test {
namespace {

using codec::PacketType;
using codec::QoS;

// The deny rules below deny receiving only: the publisher may still publish,
// so what the subscriber misses was routed to it and refused at delivery.
constexpr auto kReceive = static_cast<std::uint8_t>(security::Action::Receive);

security::OrderedRule rule(bool allow, std::string topic, std::uint8_t actions = security::AclRule::kAll) {
  security::OrderedRule r;
  r.actions = actions;
  r.topic = std::move(topic);
  r.allow = allow;
  return r;
}

std::shared_ptr<const security::AccessPolicy> policy_of(std::vector<security::OrderedRule> rules) {
  return std::make_shared<const security::AccessPolicy>(security::OrderedRules::make(std::move(rules)), nullptr);
}

class ReceiveCoverageTest : public BrokerFixture {
 protected:
  void SetUp() override {
    acl = std::make_shared<security::Reloadable<security::AccessPolicy>>(
        policy_of({rule(false, "a/secret/#", kReceive), rule(true, "a/#")}));
    shared.acl = acl;
    make();
    advance(std::chrono::milliseconds(1));  // the shard takes the ACL
  }
  std::vector<std::string> received(FakeConnection& c) {
    std::vector<std::string> out;
    for (const auto& r : c.take())
      if (r.type == PacketType::Publish) out.push_back(r.topic);
    return out;
  }
  broker::Session& session(const std::string& id) { return *shard_list[0]->find_session(id); }
  // `sub` subscribes to a/open/#, which the ACL wholly allows, and receives
  // pub's a/open/x without a check of its own.
  void subscribed_and_covered(FakeConnection& sub, FakeConnection& pub) {
    subscribe(sub, "a/open/#", QoS::AtMostOnce);
    sub.take();
    publish(pub, "a/open/x", "1", QoS::AtMostOnce);
    EXPECT_EQ(received(sub), std::vector<std::string>{"a/open/x"});
    EXPECT_TRUE(session("sub").receive_covered);
  }
  std::shared_ptr<security::Reloadable<security::AccessPolicy>> acl;
};

TEST_F(ReceiveCoverageTest, CoveredSubscriptionsSkipTheCheckUncoveredOnesKeepIt) {
  auto& sub = connect("sub");
  auto& pub = connect("pub");
  subscribed_and_covered(sub, pub);

  // "a/#" reaches a/secret/...: no longer covered, and the deny holds.
  subscribe(sub, "a/#", QoS::AtMostOnce, 2);
  sub.take();
  publish(pub, "a/secret/x", "2", QoS::AtMostOnce);
  publish(pub, "a/open/y", "3", QoS::AtMostOnce);
  EXPECT_EQ(received(sub), std::vector<std::string>{"a/open/y"});
  EXPECT_FALSE(session("sub").receive_covered);

  // Without it, covered again.
  codec::Unsubscribe u;
  u.packet_id = 3;
  u.filters.push_back("a/#");
  sub.send(u);
  bus.settle();
  sub.take();
  publish(pub, "a/open/z", "4", QoS::AtMostOnce);
  EXPECT_EQ(received(sub), std::vector<std::string>{"a/open/z"});
  EXPECT_TRUE(session("sub").receive_covered);
}

TEST_F(ReceiveCoverageTest, AReloadedAclIsHonouredAtOnce) {
  auto& sub = connect("sub");
  auto& pub = connect("pub");
  subscribed_and_covered(sub, pub);
  // The reload denies receiving a/open/x.
  acl->store(policy_of({rule(false, "a/open/x", kReceive), rule(true, "a/#")}));
  advance(std::chrono::milliseconds(1));
  publish(pub, "a/open/x", "2", QoS::AtMostOnce);
  publish(pub, "a/open/y", "3", QoS::AtMostOnce);
  EXPECT_EQ(received(sub), std::vector<std::string>{"a/open/y"});
  EXPECT_FALSE(session("sub").receive_covered);
}

}  // namespace
}  // namespace moat::test
