// Replay marks of the payload policies in the store (docs/payload-security.md,
// "A window lives in memory"): an accepted envelope stores its sender's mark,
// every delivery of it waits for that write (the acknowledgement does not),
// and the mark is erased once it is of no use.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "broker/payload_policy.hpp"
#include "harness.hpp"
#include "security/payload/keyring.hpp"

namespace moat::test {
namespace {

namespace fs = std::filesystem;
using codec::PacketType;
using codec::QoS;

class ReplayMarks : public BrokerFixture {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moat-marks-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    payload::write_key_file(dir_ / "m.jwk", key_.to_jwk(true), 0600, true);
    std::ofstream(dir_ / "ring.toml") << "[[topic]]\nfilter = \"sec/#\"\nkeys = [\"m.jwk\"]\n"
                                      << "[replay]\nmax_age = 30\nmax_future = 10\n";
    broker::PayloadPolicySpec spec;
    spec.topics = {"sec/#"};
    spec.require = broker::PayloadRequirement::Mac;
    spec.keyring = dir_ / "ring.toml";
    shared.payload = std::make_shared<security::Reloadable<broker::PayloadPolicies>>(
        broker::PayloadPolicies::load({spec}));
    make(1);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string seal(const std::string& topic, const std::string& text) {
    auto env = ring_->seal(topic, text, payload::Mode::Mac);
    EXPECT_TRUE(env);
    return env ? *env : std::string();
  }

  fs::path dir_;
  payload::Key key_ = payload::Key::generate(payload::KeyKind::Hmac256, "m");
  std::unique_ptr<payload::Keyring> ring_ = payload::Keyring::single(key_);
};

TEST_F(ReplayMarks, AcceptedEnvelopeStoresItsMarkBeforeDeliveryThenItGoes) {
  auto& sub = connect("sub");
  subscribe(sub, "#", QoS::AtLeastOnce);
  sub.take();
  auto& pub = connect("pub");
  const int sub_holds = sub.holds;
  const int pub_holds = pub.holds;

  // Not policed: nothing stored, nothing held.
  publish(pub, "plain/a", "x", QoS::AtLeastOnce, 1);
  EXPECT_EQ(pub.holds, pub_holds);
  EXPECT_EQ(sub.holds, sub_holds);
  EXPECT_TRUE(store.load().replay_marks.empty());

  publish(pub, "sec/a", seal("sec/a", "open"), QoS::AtLeastOnce, 2);
  auto acks = pub.take();
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[1].type, PacketType::Puback);
  EXPECT_EQ(pub.holds, pub_holds);  // the PUBACK need not wait for the mark
  EXPECT_GT(sub.holds, sub_holds);  // the delivery does
  auto got = sub.take();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].topic, "sec/a");
  auto marks = store.load().replay_marks;
  ASSERT_EQ(marks.size(), 1u);
  EXPECT_EQ(marks[0].scope, (dir_ / "ring.toml").string());
  EXPECT_EQ(marks[0].loop, 0u);
  EXPECT_EQ(marks[0].sender, "m");
  const std::uint64_t first = marks[0].seq;
  EXPECT_GT(first, 0u);

  // A second envelope raises the mark (one record per loop and sender).
  publish(pub, "sec/a", seal("sec/a", "close"), QoS::AtMostOnce);
  marks = store.load().replay_marks;
  ASSERT_EQ(marks.size(), 1u);
  EXPECT_GT(marks[0].seq, first);

  // Of use for max_age + max_future (40 s) after it was written, then erased.
  advance(std::chrono::seconds(39));
  EXPECT_EQ(store.load().replay_marks.size(), 1u);
  advance(std::chrono::seconds(2));
  EXPECT_TRUE(store.load().replay_marks.empty());
}

TEST_F(ReplayMarks, DeliveryLeftInTheQueueWaitsWhenItIsSent) {
  // A window of one: the second message stays queued and is sent in a later
  // turn (at the PUBACK of the first), when its mark may not be durable yet.
  shared.limits.max_inflight_messages = 1;
  auto& sub = connect("sub");
  subscribe(sub, "sec/#", QoS::AtLeastOnce);
  sub.take();
  auto& pub = connect("pub");
  publish(pub, "sec/a", seal("sec/a", "one"), QoS::AtLeastOnce, 1);
  publish(pub, "sec/a", seal("sec/a", "two"), QoS::AtLeastOnce, 2);
  auto got = sub.take();
  ASSERT_EQ(got.size(), 1u);
  const int holds = sub.holds;
  sub.send(codec::Ack{PacketType::Puback, got[0].packet_id});
  bus.settle();
  got = sub.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].type, PacketType::Publish);
  EXPECT_GT(sub.holds, holds);
}

TEST_F(ReplayMarks, RefusedEnvelopeStoresNothing) {
  auto& pub = connect("pub");
  const std::string env = seal("sec/a", "open");
  publish(pub, "sec/a", env, QoS::AtLeastOnce, 1);
  ASSERT_EQ(store.load().replay_marks.size(), 1u);
  advance(std::chrono::seconds(41));
  ASSERT_TRUE(store.load().replay_marks.empty());
  publish(pub, "sec/a", env, QoS::AtLeastOnce, 2);  // replayed: dropped
  EXPECT_TRUE(store.load().replay_marks.empty());
  publish(pub, "sec/a", "not an envelope", QoS::AtLeastOnce, 3);
  EXPECT_TRUE(store.load().replay_marks.empty());
}

}  // namespace
}  // namespace moat::test
