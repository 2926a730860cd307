// The CONNECT path with authentication: client-identifier binding, the
// brute-force defence (held refusals, bans), an asynchronous authenticator
// (input held until it answers), per-connection ACL rules from the
// authenticator, and the audit events of each.
#include <map>
#include <mutex>

#include "harness.hpp"
#include "security/acl.hpp"
#include "security/jwt.hpp"

namespace moat::test {
namespace {

using codec::ConnectReturnCode;
using codec::PacketType;
using codec::QoS;

class CapturingAudit final : public security::AuditSink {
 public:
  void emit(const security::AuditEvent& e) override {
    std::lock_guard lock(mu);
    Event x;
    x.event = e.event;
    x.reason = e.reason;
    x.method = e.method;
    x.identity = e.identity;
    x.client_id = e.client_id;
    x.action = e.action;
    x.topic = e.topic;
    x.address = e.address;
    x.peer = e.peer;
    x.listener = e.listener;
    x.code = e.code.value_or(-1);
    x.delay_ms = e.delay_ms.value_or(-1);
    events.push_back(std::move(x));
  }
  struct Event {
    std::string event, reason, method, identity, client_id, action, topic, address, peer, listener;
    int code = -1;
    std::int64_t delay_ms = -1;
  };
  std::vector<Event> of(std::string_view name) const {
    std::vector<Event> out;
    for (const auto& e : events)
      if (e.event == name) out.push_back(e);
    return out;
  }
  mutable std::mutex mu;
  std::vector<Event> events;
};

// Admits a fixed password per user, optionally with ACL rules for the connection.
class TableAuthenticator final : public security::Authenticator {
 public:
  std::string_view name() const override { return "table"; }
  security::AuthResult authenticate(const security::ConnectInfo& info) override {
    security::AuthResult r;
    r.method = name();
    if (!info.username) return r;
    auto it = users.find(std::string(*info.username));
    if (it == users.end() || !info.password || *info.password != it->second) {
      r.decision = security::AuthDecision::BadCredentials;
      r.reason = "wrong password";
      return r;
    }
    r.decision = security::AuthDecision::Allow;
    r.identity = std::string(*info.username);
    r.acl = acl;
    r.acl_only = acl_only;
    return r;
  }
  std::map<std::string, std::string> users;
  std::shared_ptr<const security::OrderedRules> acl;
  bool acl_only = true;
};

// Answers later, when the test says so (an IAM server stand-in).
class LaterAuthenticator final : public security::Authenticator {
 public:
  std::string_view name() const override { return "later"; }
  Mode mode() const override { return Mode::Asynchronous; }
  security::AuthResult authenticate(const security::ConnectInfo&) override { return {}; }
  void authenticate_async(const security::ConnectInfo& info, Done done) override {
    seen_user = std::string(info.username.value_or(""));
    pending = std::move(done);
  }
  void answer(security::AuthDecision d, std::string identity) {
    auto done = std::move(pending);
    pending = nullptr;
    done(security::AuthResult{d, std::move(identity), name(), "", nullptr, false, false});
  }
  Done pending;
  std::string seen_user;
};

class AuthFlowTest : public BrokerFixture {
 protected:
  void SetUp() override { shared.audit = audit; }

  FakeConnection& open(const std::string& peer) {
    conns.push_back(std::make_unique<FakeConnection>(*shard_list[0], policy, peer));
    return *conns.back();
  }
  void send_connect(FakeConnection& c, const std::string& client_id, std::optional<std::string> user = {},
                    std::optional<std::string> password = {}, std::optional<codec::Will> will = {}) {
    codec::Connect p;
    p.client_id = client_id;
    p.clean_session = true;
    if (user) p.username = *user;
    if (password) p.password = *password;
    p.will = will;
    c.send(p);
    bus.settle();
  }
  // The CONNACK code, or -1 if none was sent.
  int connack(FakeConnection& c) {
    for (const auto& r : c.take())
      if (r.type == PacketType::Connack) return static_cast<int>(r.connack.code);
    return -1;
  }

  std::shared_ptr<CapturingAudit> audit = std::make_shared<CapturingAudit>();
};

TEST_F(AuthFlowTest, ClientIdBindingRefusesAnotherDevicesIdentifier) {
  auto auth = std::make_shared<TableAuthenticator>();
  auth->users["alice"] = "pw";
  policy.auth.add(auth);
  security::ClientIdRules::Spec spec;
  spec.users["alice"] = {"alice-*"};
  spec.others = std::vector<std::string>{"%u"};
  policy.clientid =
      std::make_shared<security::Reloadable<security::ClientIdRules>>(security::ClientIdRules::make(spec));
  make();
  auto& ok = open("192.0.2.1:1");
  send_connect(ok, "alice-phone", "alice", "pw");
  EXPECT_EQ(connack(ok), 0);
  // The right password from another device's identifier: refused (CONNACK 5).
  auto& bad = open("192.0.2.1:2");
  send_connect(bad, "bob-phone", "alice", "pw");
  EXPECT_EQ(connack(bad), static_cast<int>(ConnectReturnCode::NotAuthorized));
  EXPECT_TRUE(bad.closed);
  const auto fails = audit->of("auth.failure");
  ASSERT_EQ(fails.size(), 1u);
  EXPECT_EQ(fails[0].reason, "client identifier not allowed for this identity");
  EXPECT_EQ(fails[0].client_id, "bob-phone");
  EXPECT_EQ(fails[0].method, "table");
  EXPECT_EQ(fails[0].code, 5);
  EXPECT_EQ(fails[0].listener, "test");
  EXPECT_EQ(fails[0].peer, "192.0.2.1:2");
  ASSERT_EQ(audit->of("auth.success").size(), 1u);
  EXPECT_EQ(audit->of("auth.success")[0].identity, "alice");
  // A wrong password is still a wrong password (CONNACK 4).
  auto& wrong = open("192.0.2.1:3");
  send_connect(wrong, "alice-phone", "alice", "nope");
  EXPECT_EQ(connack(wrong), static_cast<int>(ConnectReturnCode::BadUsernameOrPassword));
}

TEST_F(AuthFlowTest, FailuresAreHeldWithBackoffThenTheAddressIsBanned) {
  auto auth = std::make_shared<TableAuthenticator>();
  auth->users["alice"] = "pw";
  policy.auth.add(auth);
  security::DefenceConfig d;
  d.allow.clear();
  d.backoff_initial = std::chrono::milliseconds(100);
  d.backoff_max = std::chrono::milliseconds(400);
  d.ban_after = 4;
  shared.defence = std::make_shared<security::AuthThrottle>(d);
  make();
  std::vector<std::int64_t> delays;
  for (int i = 0; i < 4; ++i) {
    auto& c = open("192.0.2.7:" + std::to_string(100 + i));
    send_connect(c, "c" + std::to_string(i), "alice", "guess" + std::to_string(i));
    // No CONNACK yet: the refusal is held on a timer.
    EXPECT_EQ(connack(c), -1);
    EXPECT_FALSE(c.closed);
    ASSERT_EQ(c.held.size(), 1u);
    delays.push_back(c.held[0].first.count());
    c.release();
    EXPECT_EQ(connack(c), static_cast<int>(ConnectReturnCode::BadUsernameOrPassword));
    EXPECT_TRUE(c.closed);
  }
  EXPECT_EQ(delays, (std::vector<std::int64_t>{100, 200, 400, 400}));
  ASSERT_EQ(audit->of("ban").size(), 1u);
  EXPECT_EQ(audit->of("ban")[0].address, "192.0.2.7");
  // The ban is in the store, ending about ban_time from now (wall clock).
  {
    const auto bans = store.load().bans;
    ASSERT_EQ(bans.size(), 1u);
    EXPECT_EQ(bans[0].address, "192.0.2.7");
    EXPECT_NEAR(static_cast<double>(bans[0].until_unix_ms - store::unix_ms_now()), 600'000.0, 5'000.0);
  }
  // Banned: even the right password is refused, at once and without asking the authenticator.
  auto& c = open("192.0.2.7:200");
  send_connect(c, "c9", "alice", "pw");
  EXPECT_EQ(connack(c), static_cast<int>(ConnectReturnCode::NotAuthorized));
  ASSERT_EQ(audit->of("connection.refused").size(), 1u);
  EXPECT_EQ(audit->of("connection.refused")[0].reason, "address banned");
  // Other addresses are unaffected; the ban lifts when it ends (shard 0's tick).
  auto& other = open("192.0.2.8:1");
  send_connect(other, "c10", "alice", "pw");
  EXPECT_EQ(connack(other), 0);
  advance(std::chrono::seconds(601));
  ASSERT_EQ(audit->of("unban").size(), 1u);
  EXPECT_TRUE(store.load().bans.empty());  // lifted in the store too
  auto& again = open("192.0.2.7:201");
  send_connect(again, "c11", "alice", "pw");
  EXPECT_EQ(connack(again), 0);
}

TEST_F(AuthFlowTest, AsynchronousAuthenticatorHoldsInputUntilItAnswers) {
  auto later = std::make_shared<LaterAuthenticator>();
  policy.auth.add(later);
  make();
  auto& c = open("192.0.2.1:1");
  codec::Connect p;
  p.client_id = "async-1";
  p.username = "carol";
  p.password = std::string_view("token");
  codec::Bytes bytes;
  codec::encode(p, bytes);
  codec::Publish pub;
  pub.topic = "t";
  pub.payload = "pipelined";
  pub.qos = QoS::AtLeastOnce;
  pub.packet_id = 1;
  codec::encode(pub, bytes);
  c.feed(bytes);
  ASSERT_TRUE(later->pending);
  EXPECT_EQ(later->seen_user, "carol");
  EXPECT_TRUE(c.take().empty());  // neither CONNACK nor PUBACK before the answer
  EXPECT_FALSE(c.input.empty());  // the PUBLISH waits, unread
  later->answer(security::AuthDecision::Allow, "carol");
  bus.settle();
  const auto got = c.take();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].type, PacketType::Connack);
  EXPECT_EQ(got[1].type, PacketType::Puback);
  EXPECT_EQ(audit->of("auth.success").back().method, "later");

  auto& d = open("192.0.2.1:2");
  send_connect(d, "async-2", "dave", "token");
  later->answer(security::AuthDecision::NotAuthorized, "");
  EXPECT_EQ(connack(d), static_cast<int>(ConnectReturnCode::NotAuthorized));
}

TEST_F(AuthFlowTest, AnAsynchronousAuthenticatorThatNeverAnswersTimesOut) {
  auto later = std::make_shared<LaterAuthenticator>();
  policy.auth.add(later);
  make();
  auto& c = open("192.0.2.1:1");
  send_connect(c, "silent-1", "carol", "token");
  ASSERT_TRUE(later->pending);
  EXPECT_EQ(connack(c), -1);
  // The broker's bound ([limits] auth_timeout) is a timer of the connection.
  ASSERT_EQ(c.held.size(), 1u);
  EXPECT_EQ(c.held[0].first, shared.limits.auth_timeout);
  c.release();
  bus.settle();
  EXPECT_EQ(connack(c), static_cast<int>(ConnectReturnCode::ServerUnavailable));
  EXPECT_TRUE(c.closed);
  ASSERT_EQ(audit->of("auth.failure").size(), 1u);
  EXPECT_EQ(audit->of("auth.failure")[0].reason, "authentication timed out");
  // A late answer finds nothing to do.
  later->answer(security::AuthDecision::Allow, "carol");
  bus.settle();
  EXPECT_EQ(connack(c), -1);
}

TEST_F(AuthFlowTest, ConnectionRulesFromTheAuthenticatorGovernPublishSubscribeReceiveAndWill) {
  auto auth = std::make_shared<TableAuthenticator>();
  auth->users["alice"] = "pw";
  auth->users["watcher"] = "pw";
  auth->acl = security::parse_acl_claim(R"({"pub": ["devices/%u/#"], "sub": ["devices/%u/in/#"]})");
  policy.auth.add(auth);
  make();
  // The will is checked against the same rules.
  auto& w = open("192.0.2.1:1");
  send_connect(w, "alice-w", "alice", "pw", codec::Will{"elsewhere/will", "x", QoS::AtMostOnce, false});
  EXPECT_EQ(connack(w), static_cast<int>(ConnectReturnCode::NotAuthorized));
  ASSERT_EQ(audit->of("acl.deny").size(), 1u);
  EXPECT_EQ(audit->of("acl.deny")[0].action, "will");

  auto& a = open("192.0.2.1:2");
  send_connect(a, "alice-1", "alice", "pw");
  ASSERT_EQ(connack(a), 0);
  subscribe(a, "devices/alice/in/#", QoS::AtLeastOnce, 1);
  subscribe(a, "devices/bob/#", QoS::AtLeastOnce, 2);
  auto got = a.take();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].return_codes, std::vector<std::uint8_t>{1});
  EXPECT_EQ(got[1].return_codes, std::vector<std::uint8_t>{codec::kSubackFailure});
  publish(a, "devices/alice/in/x", "ok", QoS::AtLeastOnce, 3);
  publish(a, "devices/bob/out", "no", QoS::AtLeastOnce, 4);
  EXPECT_EQ(shard_list[0]->stats().dropped_not_authorized.get(), 1u);
  got = a.take();
  // Her own message comes back through her subscription (receive allowed), and both are acknowledged.
  int pubacks = 0;
  int delivered = 0;
  for (const auto& r : got) {
    pubacks += r.type == PacketType::Puback;
    delivered += r.type == PacketType::Publish && r.topic == "devices/alice/in/x";
  }
  EXPECT_EQ(pubacks, 2);
  EXPECT_EQ(delivered, 1);
  const auto denies = audit->of("acl.deny");
  ASSERT_EQ(denies.size(), 3u);
  EXPECT_EQ(denies[1].action, "subscribe");
  EXPECT_EQ(denies[1].topic, "devices/bob/#");
  EXPECT_EQ(denies[2].action, "publish");
  EXPECT_EQ(denies[2].topic, "devices/bob/out");
  EXPECT_EQ(denies[2].identity, "alice");
}

}  // namespace
}  // namespace moat::test
