// Topic payload policies (broker/payload_policy): what a policy lets through,
// what it drops and why, signers bound to identities, decryption for
// subscribers, and the keyring checks made when the configuration loads.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "broker/payload_policy.hpp"
#include "security/payload/keyring.hpp"
#include "store/store.hpp"

namespace moat::broker {
namespace {

namespace fs = std::filesystem;
namespace payload = moat::payload;
using payload::Key;
using payload::KeyKind;
using payload::Mode;
using Action = PayloadVerdict::Action;

class PayloadPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moat-ppolicy-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes the key (its public half only when !priv) and returns the file name.
  std::string write_key(const Key& k, bool priv) {
    const std::string name = k.kid() + (priv ? ".jwk" : ".pub.jwk");
    payload::write_key_file(dir_ / name, k.to_jwk(priv), priv ? 0600 : 0644, true);
    return name;
  }
  fs::path write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return dir_ / name;
  }
  PayloadPolicySpec spec(std::vector<std::string> topics, PayloadRequirement req,
                         const std::string& keyring) {
    PayloadPolicySpec s;
    s.topics = std::move(topics);
    s.require = req;
    if (!keyring.empty()) s.keyring = dir_ / keyring;
    s.at = "moat.toml:1:1";
    s.keyring_at = "moat.toml:3:1";
    s.signers_at = "moat.toml:4:1";
    s.decrypt_at = "moat.toml:5:1";
    return s;
  }
  static std::string seal(const Key& k, std::string_view topic, std::string_view text, Mode m) {
    auto ring = payload::Keyring::single(k);
    auto env = ring->seal(topic, text, m);
    EXPECT_TRUE(env) << env.error().message();
    return env ? *env : std::string();
  }
  static std::string load_error(const std::vector<PayloadPolicySpec>& specs) {
    try {
      PayloadPolicies::load(specs);
    } catch (const PayloadPolicyError& e) {
      return e.what();
    }
    return "no error";
  }
  fs::path dir_;
};

TEST_F(PayloadPolicyTest, SignatureRequiredOnlyOnMatchingTopics) {
  const Key alice = Key::generate(KeyKind::Ed25519, "alice-sig");
  write("ring.toml", "[[topic]]\nfilter = \"plant/#\"\nkeys = [\"" + write_key(alice, false) + "\"]\n");
  auto p = PayloadPolicies::load({spec({"plant/+/cmd"}, PayloadRequirement::Signature, "ring.toml")});

  const std::string env = seal(alice, "plant/7/cmd", "open", Mode::Sign);
  auto v = p->check("plant/7/cmd", env, "alice", "c1");
  EXPECT_EQ(v.action, Action::Pass) << v.reason;
  EXPECT_TRUE(v.policed);
  EXPECT_EQ(v.kid, "alice-sig");

  // Another topic: no policy, anything passes.
  v = p->check("plant/7/temp", "21.5", "alice", "c1");
  EXPECT_EQ(v.action, Action::Pass);
  EXPECT_FALSE(v.policed);
}

TEST_F(PayloadPolicyTest, EachFailureHasItsOwnToken) {
  const Key alice = Key::generate(KeyKind::Ed25519, "alice-sig");
  const Key mallory = Key::generate(KeyKind::Ed25519, "mallory-sig");
  const Key mac = Key::generate(KeyKind::Hmac256, "alice-sig");  // same kid, wrong kind
  write("ring.toml", "[[topic]]\nfilter = \"#\"\nkeys = [\"" + write_key(alice, false) + "\"]\n");
  auto p = PayloadPolicies::load({spec({"cmd/#"}, PayloadRequirement::Signature, "ring.toml")});

  auto failure = [&](std::string_view topic, std::string_view bytes) {
    auto v = p->check(topic, bytes, "alice", "c1");
    EXPECT_EQ(v.action, Action::Reject);
    EXPECT_FALSE(v.reason.empty());
    return std::string(v.failure);
  };
  EXPECT_EQ(failure("cmd/a", "plain text"), "not_sealed");
  EXPECT_EQ(failure("cmd/a", ""), "not_sealed");
  EXPECT_EQ(failure("cmd/a", seal(mac, "cmd/a", "x", Mode::Mac)), "wrong_mode");
  EXPECT_EQ(failure("cmd/a", seal(mallory, "cmd/a", "x", Mode::Sign)), "unknown_key");

  // Moved to another topic: the topic is the external AAD.
  EXPECT_EQ(failure("cmd/b", seal(alice, "cmd/a", "x", Mode::Sign)), "verification_failed");

  // A flipped bit in the payload.
  std::string env = seal(alice, "cmd/a", "open valve", Mode::Sign);
  const auto at = env.find("open valve");
  ASSERT_NE(at, std::string::npos);
  env[at] ^= 0x01;
  EXPECT_EQ(failure("cmd/a", env), "verification_failed");

  // The same envelope twice.
  const std::string once = seal(alice, "cmd/a", "y", Mode::Sign);
  EXPECT_EQ(p->check("cmd/a", once, "alice", "c1").action, Action::Pass);
  EXPECT_EQ(failure("cmd/a", once), "replayed");

  // Without replay headers (another COSE library): refused, require_fresh is the default.
  auto ring = payload::Keyring::single(alice);
  payload::SealPolicy bare;
  bare.replay_headers = false;
  auto old = ring->seal("cmd/a", "z", Mode::Sign, bare);
  ASSERT_TRUE(old);
  EXPECT_EQ(failure("cmd/a", *old), "not_fresh");
}

TEST_F(PayloadPolicyTest, RequireFreshFalseAcceptsEnvelopesWithoutReplayHeaders) {
  const Key alice = Key::generate(KeyKind::Hmac256, "k1");
  write("ring.toml", "[[topic]]\nfilter = \"#\"\nkeys = [\"" + write_key(alice, true) + "\"]\n");
  auto s = spec({"#"}, PayloadRequirement::Mac, "ring.toml");
  s.require_fresh = false;
  auto p = PayloadPolicies::load({s});
  auto ring = payload::Keyring::single(alice);
  payload::SealPolicy bare;
  bare.replay_headers = false;
  auto env = ring->seal("t", "z", Mode::Mac, bare);
  ASSERT_TRUE(env);
  EXPECT_EQ(p->check("t", *env, "", "c").action, Action::Pass);
}

TEST_F(PayloadPolicyTest, SignersCountOnlyForTheIdentityTheyAreBoundTo) {
  const Key alice = Key::generate(KeyKind::Ed25519, "alice-sig");
  const Key bob = Key::generate(KeyKind::P256, "bob-sig");
  write("ring.toml", "[[topic]]\nfilter = \"#\"\nkeys = [\"" + write_key(alice, false) + "\", \"" +
                         write_key(bob, false) + "\"]\n");
  auto s = spec({"plant/#"}, PayloadRequirement::Signature, "ring.toml");
  s.signers = {{"alice-sig", {"alice"}}, {"bob-sig", {"bob", "ops"}}};
  auto p = PayloadPolicies::load({s});

  EXPECT_EQ(p->check("plant/1", seal(alice, "plant/1", "a", Mode::Sign), "alice", "c").action, Action::Pass);
  EXPECT_EQ(p->check("plant/1", seal(bob, "plant/1", "b", Mode::Sign), "ops", "c").action, Action::Pass);

  // A valid signature by a key bound to someone else.
  auto v = p->check("plant/1", seal(alice, "plant/1", "a", Mode::Sign), "bob", "c");
  EXPECT_EQ(v.action, Action::Reject);
  EXPECT_EQ(v.failure, "signer_not_bound");
  EXPECT_NE(v.reason.find("identity \"bob\""), std::string::npos) << v.reason;
  // Anonymous publishers have no identity to bind.
  v = p->check("plant/1", seal(alice, "plant/1", "a", Mode::Sign), "", "alice");
  EXPECT_EQ(v.failure, "signer_not_bound");

  // The refused envelope used up no sequence number: the same envelope from
  // its bound publisher still verifies.
  const std::string env = seal(alice, "plant/1", "once", Mode::Sign);
  EXPECT_EQ(p->check("plant/1", env, "mallory", "c").failure, "signer_not_bound");
  EXPECT_EQ(p->check("plant/1", env, "alice", "c").action, Action::Pass);
}

TEST_F(PayloadPolicyTest, BindPatternNamesTheKeyIdOfEachPublisher) {
  const Key alice = Key::generate(KeyKind::Ed25519, "sig-alice");
  const Key bob = Key::generate(KeyKind::Ed25519, "sig-bob");
  write("ring.toml", "[[topic]]\nfilter = \"#\"\nkeys = [\"" + write_key(alice, false) + "\", \"" +
                         write_key(bob, false) + "\"]\n");
  auto s = spec({"#"}, PayloadRequirement::Signature, "ring.toml");
  s.bind = "sig-%u";
  auto p = PayloadPolicies::load({s});
  EXPECT_EQ(p->check("t", seal(alice, "t", "a", Mode::Sign), "alice", "c").action, Action::Pass);
  EXPECT_EQ(p->check("t", seal(alice, "t", "a", Mode::Sign), "bob", "c").failure, "signer_not_bound");
  EXPECT_EQ(p->check("t", seal(bob, "t", "a", Mode::Sign), "", "c").failure, "signer_not_bound");
}

TEST_F(PayloadPolicyTest, EncryptedWithDecryptDeliversThePlaintext) {
  const Key topic = Key::generate(KeyKind::X25519, "broker-enc");
  const Key sym = Key::generate(KeyKind::ChaCha20, "zone-key");
  write("ring.toml", "[[topic]]\nfilter = \"zone/#\"\nkeys = [\"" + write_key(topic, true) + "\", \"" +
                         write_key(sym, true) + "\"]\n");
  auto s = spec({"zone/#"}, PayloadRequirement::Encrypted, "ring.toml");
  s.decrypt = true;
  auto p = PayloadPolicies::load({s});

  auto v =
      p->check("zone/a", seal(topic.public_only(), "zone/a", "secret reading", Mode::EncryptTo), "", "c");
  ASSERT_EQ(v.action, Action::Replace) << v.reason;
  EXPECT_EQ(v.plaintext, "secret reading");
  v = p->check("zone/a", seal(sym, "zone/a", "sym reading", Mode::Encrypt), "", "c");
  ASSERT_EQ(v.action, Action::Replace) << v.reason;
  EXPECT_EQ(v.plaintext, "sym reading");

  // Plaintext, a signature, or an envelope for another topic: dropped.
  EXPECT_EQ(p->check("zone/a", "hello", "", "c").failure, "not_sealed");
  EXPECT_EQ(p->check("zone/b", seal(sym, "zone/a", "x", Mode::Encrypt), "", "c").failure,
            "verification_failed");
}

TEST_F(PayloadPolicyTest, EncryptedWithoutKeyringChecksTheFormOnly) {
  const Key sym = Key::generate(KeyKind::Aes256, "k");
  auto p = PayloadPolicies::load({spec({"e2e/#"}, PayloadRequirement::Encrypted, "")});
  const std::string env = seal(sym, "e2e/x", "opaque", Mode::Encrypt);
  auto v = p->check("e2e/x", env, "", "c");
  EXPECT_EQ(v.action, Action::Pass);  // delivered as sealed
  EXPECT_EQ(p->check("e2e/x", "{\"t\": 1}", "", "c").failure, "not_sealed");
}

TEST_F(PayloadPolicyTest, FirstMatchingPolicyDecides) {
  const Key k = Key::generate(KeyKind::Hmac256, "m");
  write("ring.toml", "[[topic]]\nfilter = \"#\"\nkeys = [\"" + write_key(k, true) + "\"]\n");
  auto p = PayloadPolicies::load({spec({"a/b"}, PayloadRequirement::Encrypted, ""),
                                  spec({"a/#"}, PayloadRequirement::Mac, "ring.toml")});
  EXPECT_EQ(p->check("a/b", seal(k, "a/b", "x", Mode::Mac), "", "c").failure, "wrong_mode");
  EXPECT_EQ(p->check("a/c", seal(k, "a/c", "x", Mode::Mac), "", "c").action, Action::Pass);
}

TEST_F(PayloadPolicyTest, LoadChecksTheKeyringAgainstThePolicy) {
  const Key mac = Key::generate(KeyKind::Hmac256, "mac1");
  const Key sig = Key::generate(KeyKind::Ed25519, "sig1");
  write("mac.toml", "[[topic]]\nfilter = \"#\"\nkeys = [\"" + write_key(mac, true) + "\"]\n");
  write("sig.toml", "[[topic]]\nfilter = \"#\"\nkeys = [\"" + write_key(sig, false) + "\"]\n");

  EXPECT_EQ(load_error({spec({"#"}, PayloadRequirement::Signature, "mac.toml")}),
            "moat.toml:3:1: payload_policy.keyring: " + (dir_ / "mac.toml").string() +
                " has no key that verifies signatures (ed25519 or p256 keys)");
  auto s = spec({"#"}, PayloadRequirement::Signature, "sig.toml");
  s.signers = {{"sig2", {"alice"}}};
  EXPECT_EQ(load_error({s}), "moat.toml:4:1: payload_policy.signers: " + (dir_ / "sig.toml").string() +
                                 " has no key with key id \"sig2\" that verifies signatures");
  // A public key cannot decrypt.
  const Key x = Key::generate(KeyKind::X25519, "x1");
  write("pub.toml", "[[topic]]\nfilter = \"#\"\nkeys = [\"" + write_key(x, false) + "\"]\n");
  auto d = spec({"#"}, PayloadRequirement::Encrypted, "pub.toml");
  d.decrypt = true;
  EXPECT_NE(load_error({d}).find("has no key that decrypts"), std::string::npos);
  // A keyring that does not load names the policy's line.
  EXPECT_NE(load_error({spec({"#"}, PayloadRequirement::Mac, "missing.toml")})
                .find("moat.toml:3:1: payload_policy.keyring: "),
            std::string::npos);
}

TEST_F(PayloadPolicyTest, ReloadKeepsTheReplayWindows) {
  const Key k = Key::generate(KeyKind::Hmac256, "m");
  write("ring.toml", "[[topic]]\nfilter = \"#\"\nkeys = [\"" + write_key(k, true) + "\"]\n");
  const auto specs = std::vector{spec({"#"}, PayloadRequirement::Mac, "ring.toml")};
  auto first = PayloadPolicies::load(specs);
  const std::string env = seal(k, "t", "x", Mode::Mac);
  EXPECT_EQ(first->check("t", env, "", "c").action, Action::Pass);
  auto second = PayloadPolicies::load(specs, first.get());
  EXPECT_EQ(second->check("t", env, "", "c").failure, "replayed");
}

TEST_F(PayloadPolicyTest, StoredReplayMarksRefuseWhatWasAcceptedBeforeARestart) {
  const Key k = Key::generate(KeyKind::Hmac256, "m");
  write("ring.toml", "[[topic]]\nfilter = \"#\"\nkeys = [\"" + write_key(k, true) + "\"]\n");
  const auto specs = std::vector{spec({"#"}, PayloadRequirement::Mac, "ring.toml")};
  auto before = PayloadPolicies::load(specs);
  const std::string old1 = seal(k, "t", "1", Mode::Mac);
  const std::string old2 = seal(k, "t", "2", Mode::Mac);
  const auto v = before->check("t", old2, "", "c");
  ASSERT_EQ(v.action, Action::Pass) << v.reason;
  ASSERT_TRUE(v.replay_mark);
  EXPECT_EQ(v.replay_scope, (dir_ / "ring.toml").native());
  EXPECT_EQ(v.replay_sender, "m");
  const std::int64_t now = store::unix_ms_now();
  const std::string scope(v.replay_scope);
  const std::vector<store::ReplayMarkRecord> marks{
      {scope, 0, "m", *v.replay_mark, now - 1000},
      {scope, 1, "m", *v.replay_mark - 1, now - 1000},                  // a lower mark of another loop
      {scope, 0, "gone", 99, now - std::int64_t{300 + 60} * 1000 - 1},  // older than max_age + max_future
      {(dir_ / "other.toml").string(), 0, "m", 1, now},                 // a keyring no longer configured
  };
  auto after = PayloadPolicies::load(specs);  // a restart: empty windows
  const auto restored = after->restore_replay_marks(marks, now);
  EXPECT_EQ(restored.restored, 2u);
  EXPECT_EQ(restored.useless,
            (std::vector<std::string>{store::replay_mark_key(scope, 0, "gone"),
                                      store::replay_mark_key((dir_ / "other.toml").string(), 0, "m")}));
  EXPECT_EQ(after->check("t", old2, "", "c").failure, "replayed");
  // At or below the mark: refused, even one that never arrived before.
  EXPECT_EQ(after->check("t", old1, "", "c").failure, "replayed");
  EXPECT_EQ(after->check("t", seal(k, "t", "3", Mode::Mac), "", "c").action, Action::Pass);
}

}  // namespace
}  // namespace moat::broker
