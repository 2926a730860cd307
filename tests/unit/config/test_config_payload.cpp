// moat.toml: [[payload_policy]] tables parse into broker::PayloadPolicySpec, and
// each mistake is an error naming the file, the line, the column and the key.
#include <gtest/gtest.h>

#include "config/config.hpp"
#include "config_test_util.hpp"

namespace moat::config {
namespace {

using broker::PayloadRequirement;

using test_util::error_of;
using test_util::kListener;

TEST(ConfigPayload, PoliciesInOrder) {
  const auto c = parse(std::string(kListener) + R"(
[[payload_policy]]
topic = "plant/+/cmd"
require = "signature"
keyring = "keys/plant.toml"
signers = { "alice-2025" = "alice", "ops" = ["bob", "carol"] }

[[payload_policy]]
topic = ["zone/#", "secure/#"]
require = "encrypted"
keyring = "/etc/moat/zone.toml"
decrypt = true

[[payload_policy]]
topic = "telemetry/#"
require = "mac"
keyring = "keys/mac.toml"
bind = "mac-%u"
require_fresh = false

[[payload_policy]]
topic = "e2e/#"
require = "encrypted"
)",
                       "/etc/moat/moat.toml");
  ASSERT_EQ(c.payload_policies.size(), 4u);
  const auto& p0 = c.payload_policies[0];
  EXPECT_EQ(p0.topics, std::vector<std::string>{"plant/+/cmd"});
  EXPECT_EQ(p0.require, PayloadRequirement::Signature);
  EXPECT_EQ(p0.keyring, "/etc/moat/keys/plant.toml");
  EXPECT_EQ(p0.signers.at("alice-2025"), std::vector<std::string>{"alice"});
  EXPECT_EQ(p0.signers.at("ops"), (std::vector<std::string>{"bob", "carol"}));
  EXPECT_TRUE(p0.require_fresh);
  EXPECT_FALSE(p0.decrypt);
  EXPECT_EQ(p0.at, "/etc/moat/moat.toml:7:1");
  EXPECT_EQ(p0.keyring_at, "/etc/moat/moat.toml:10:11");
  const auto& p1 = c.payload_policies[1];
  EXPECT_EQ(p1.topics, (std::vector<std::string>{"zone/#", "secure/#"}));
  EXPECT_EQ(p1.require, PayloadRequirement::Encrypted);
  EXPECT_TRUE(p1.decrypt);
  const auto& p2 = c.payload_policies[2];
  EXPECT_EQ(p2.require, PayloadRequirement::Mac);
  EXPECT_EQ(p2.bind, "mac-%u");
  EXPECT_FALSE(p2.require_fresh);
  EXPECT_TRUE(c.payload_policies[3].keyring.empty());
}

TEST(ConfigPayload, MistakesNameFileLineAndKey) {
  const std::string l(kListener);
  EXPECT_EQ(error_of(l + "[payload_policy]\ntopic = \"a\"\n"),
            "/etc/moat/moat.toml:6:1: payload_policy: must be an array of tables ([[payload_policy]])");
  EXPECT_EQ(
      error_of(l + "[[payload_policy]]\nrequire = \"mac\"\nkeyring = \"k\"\n"),
      "/etc/moat/moat.toml:6:1: payload_policy[0]: missing key 'topic' (a topic filter or an array of them)");
  EXPECT_EQ(error_of(l + "[[payload_policy]]\ntopic = \"a/#/b\"\nrequire = \"mac\"\nkeyring = \"k\"\n"),
            "/etc/moat/moat.toml:7:9: payload_policy[0].topic: 'a/#/b' is not a valid topic filter");
  EXPECT_EQ(
      error_of(l + "[[payload_policy]]\ntopic = \"a\"\n"),
      "/etc/moat/moat.toml:6:1: payload_policy[0]: missing key 'require' (mac | signature | encrypted)");
  EXPECT_NE(error_of(l + "[[payload_policy]]\ntopic = \"a\"\nrequire = \"signed\"\nkeyring = \"k\"\n")
                .find("/etc/moat/moat.toml:8:11: payload_policy[0].require: "),
            std::string::npos);
  EXPECT_EQ(
      error_of(l + "[[payload_policy]]\ntopic = \"a\"\nrequire = \"signature\"\n"),
      "/etc/moat/moat.toml:6:1: payload_policy[0]: require = \"signature\" needs a keyring = \"...\" with "
      "the keys that verify");
  EXPECT_NE(
      error_of(l + "[[payload_policy]]\ntopic = \"a\"\nrequire = \"mac\"\nkeyring = \"k\"\ntopics = \"b\"\n")
          .find("/etc/moat/moat.toml:10:10: payload_policy[0].topics: unknown key"),
      std::string::npos);
  EXPECT_EQ(
      error_of(l + "[[payload_policy]]\ntopic = \"a\"\nrequire = \"mac\"\nkeyring = \"k\"\ndecrypt = true\n"),
      "/etc/moat/moat.toml:10:11: payload_policy[0].decrypt: only with require = \"encrypted\"");
  EXPECT_EQ(
      error_of(l + "[[payload_policy]]\ntopic = \"a\"\nrequire = \"encrypted\"\ndecrypt = true\n"),
      "/etc/moat/moat.toml:9:11: payload_policy[0].decrypt: needs a keyring = \"...\" with the broker's "
      "decryption key");
  EXPECT_EQ(
      error_of(l + "[[payload_policy]]\ntopic = \"a\"\nrequire = \"mac\"\nkeyring = \"k\"\nbind = \"%x\"\n"),
      "/etc/moat/moat.toml:10:8: payload_policy[0].bind: only %u (identity), %c (client id) and %% may "
      "follow a %");
  EXPECT_EQ(
      error_of(l + "[[payload_policy]]\ntopic = \"a\"\nrequire = \"signature\"\nkeyring = \"k\"\n"
                   "signers = { k1 = [] }\n"),
      "/etc/moat/moat.toml:10:18: payload_policy[0].signers.k1: must be an identity or a non-empty array of "
      "identities");
  EXPECT_EQ(
      error_of(l + "[[payload_policy]]\ntopic = \"a\"\nrequire = \"encrypted\"\nbind = \"%u\"\n"),
      "/etc/moat/moat.toml:9:8: payload_policy[0].bind: binds MAC and signature keys to publishers: only "
      "with require = \"mac\" or \"signature\"");
}

}  // namespace
}  // namespace moat::config
