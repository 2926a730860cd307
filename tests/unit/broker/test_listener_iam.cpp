// [listener.http]: the remote authorizer that decides a connection's publishes,
// subscriptions and will is the one of the listener it came in through
// (ListenerPolicy::acl_slot), and an answer one authorizer gave is never
// served to a connection another one judges.
#include "harness.hpp"
#include "security/acl.hpp"

namespace moat::test {
namespace {

using codec::PacketType;
using codec::QoS;

// Allows what starts with `prefix`, answers at once and logs every question.
class PrefixAuthorizer final : public security::RemoteAuthorizer {
 public:
  explicit PrefixAuthorizer(std::string prefix) : prefix_(std::move(prefix)) {}
  std::optional<Answer> cached(const security::Identity&, security::Action, std::string_view, Time) override {
    return std::nullopt;  // the session's cache is what is under test
  }
  void ask(const security::Identity&, security::Action action, std::string_view topic, Done done) override {
    asked.push_back(std::string(security::to_string(action)) + " " + std::string(topic));
    const bool allow = topic.substr(0, prefix_.size()) == prefix_;
    done(Answer{allow ? security::Decision::Allow : security::Decision::Deny, Time::max()});
  }
  std::vector<std::string> asked;

 private:
  std::string prefix_;
};

class ListenerIamTest : public BrokerFixture {
 protected:
  // [auth.http] (slot 0) allows a/, listener "b" (slot 1) its own IAM
  // allowing b/, listener "c" (slot 2) its own ACL and [auth.http]'s IAM.
  void SetUp() override {
    shared.authorizer = iam_a;
    shared.listener_access = {{nullptr, iam_b}, {nullptr, iam_a}};
    for (auto* l : {&on_b, &on_c}) l->auth.add(security::make_authenticator("anonymous"));
    on_b.name = "b";
    on_b.acl_slot = 1;
    on_c.name = "c";
    on_c.acl_slot = 2;
  }
  FakeConnection& connect_via(const broker::ListenerPolicy& listener, const std::string& client_id,
                              bool clean = true, std::optional<std::string_view> will = std::nullopt) {
    conns.push_back(std::make_unique<FakeConnection>(*shard_list[0], listener, "127.0.0.1:7"));
    auto& c = *conns.back();
    codec::Connect p;
    p.client_id = client_id;
    p.clean_session = clean;
    if (will) p.will = codec::Will{*will, "gone"};
    c.send(p);
    bus.settle();
    return c;
  }
  std::uint8_t subscribe_code(FakeConnection& c, const std::string& filter) {
    subscribe(c, filter, QoS::AtLeastOnce, ++packet_id);
    auto got = c.take();
    EXPECT_EQ(got.size(), 1u);
    if (got.size() != 1 || got[0].return_codes.size() != 1) return 0xff;
    return got[0].return_codes[0];
  }
  static std::vector<std::string> topics(const std::vector<Received>& got) {
    std::vector<std::string> out;
    for (const auto& r : got)
      if (r.type == PacketType::Publish) out.push_back(r.topic);
    return out;
  }
  std::shared_ptr<PrefixAuthorizer> iam_a = std::make_shared<PrefixAuthorizer>("a/");
  std::shared_ptr<PrefixAuthorizer> iam_b = std::make_shared<PrefixAuthorizer>("b/");
  broker::ListenerPolicy on_b, on_c;
  std::uint16_t packet_id = 0;
};

TEST_F(ListenerIamTest, EachConnectionIsJudgedByItsListenersIamServer) {
  make();
  auto& a = connect_via(policy, "on-a");
  auto& b = connect_via(on_b, "on-b");
  auto& c = connect_via(on_c, "on-c");
  a.take();
  b.take();
  c.take();
  EXPECT_EQ(subscribe_code(a, "a/x"), 1);
  EXPECT_EQ(subscribe_code(a, "b/x"), 0x80);
  EXPECT_EQ(subscribe_code(b, "a/x"), 0x80);
  EXPECT_EQ(subscribe_code(b, "b/x"), 1);
  EXPECT_EQ(subscribe_code(c, "a/y"), 1);  // no [listener.http]: [auth.http]'s IAM
  EXPECT_EQ(subscribe_code(c, "b/y"), 0x80);
  EXPECT_EQ(iam_a->asked,
            std::vector<std::string>({"subscribe a/x", "subscribe b/x", "subscribe a/y", "subscribe b/y"}));
  EXPECT_EQ(iam_b->asked, std::vector<std::string>({"subscribe a/x", "subscribe b/x"}));
  // Publishes: each asked of its own listener's IAM, and routed by its answer.
  iam_a->asked.clear();
  iam_b->asked.clear();
  publish(b, "b/x", "yes", QoS::AtLeastOnce, 20);
  publish(b, "a/x", "no", QoS::AtLeastOnce, 21);
  EXPECT_EQ(iam_b->asked, std::vector<std::string>({"publish b/x", "publish a/x"}));
  EXPECT_TRUE(iam_a->asked.empty());
  EXPECT_EQ(topics(b.take()), std::vector<std::string>{"b/x"});
  EXPECT_EQ(topics(a.take()), std::vector<std::string>{});  // a/x was dropped
}

// An answer of one IAM server, kept in the session's cache, is not served when
// the session comes back through a listener another IAM server judges.
TEST_F(ListenerIamTest, CachedAnswersStayWithTheirIamServer) {
  make();
  {
    auto& a = connect_via(policy, "dev", false);
    a.take();
    EXPECT_EQ(subscribe_code(a, "a/x"), 1);
    publish(a, "a/x", "1", QoS::AtLeastOnce, 30);
    publish(a, "a/x", "2", QoS::AtLeastOnce, 31);  // answered from the session's cache
    EXPECT_EQ(iam_a->asked, std::vector<std::string>({"subscribe a/x", "publish a/x"}));
    a.send(codec::Disconnect{});
    bus.settle();
  }
  auto& b = connect_via(on_b, "dev", false);
  auto got = b.take();
  ASSERT_FALSE(got.empty());
  EXPECT_TRUE(got[0].connack.session_present);
  publish(b, "a/x", "3", QoS::AtLeastOnce, 32);
  EXPECT_EQ(topics(b.take()), std::vector<std::string>{});  // refused by b's IAM: not routed
  EXPECT_EQ(subscribe_code(b, "a/x"), 0x80);
  // b's IAM decided the session's subscription again before the CONNACK (it
  // was a's grant), then the publish and the new SUBSCRIBE.
  EXPECT_EQ(iam_b->asked, std::vector<std::string>({"subscribe a/x", "publish a/x", "subscribe a/x"}));
  EXPECT_EQ(iam_a->asked.size(), 2u);  // nothing more asked of a's IAM
}

// The will topic at CONNECT is decided by the IAM of the listener.
TEST_F(ListenerIamTest, WillIsDecidedByTheListenersIamServer) {
  make();
  auto& refused = connect_via(on_b, "w1", true, "a/will");
  auto got = refused.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].connack.code, codec::ConnectReturnCode::NotAuthorized);
  auto& accepted = connect_via(on_b, "w2", true, "b/will");
  got = accepted.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].connack.code, codec::ConnectReturnCode::Accepted);
  EXPECT_EQ(iam_b->asked, std::vector<std::string>({"publish a/will", "publish b/will"}));
  EXPECT_TRUE(iam_a->asked.empty());
}

}  // namespace
}  // namespace moat::test
