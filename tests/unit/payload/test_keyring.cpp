// Keyring files (TOML) and key files (JWK): topic filters, rotation, file modes,
// and the errors a mistyped file gets.
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "security/payload/keyring.hpp"
#include "vectors.hpp"

namespace moat::payload::test {
namespace {

namespace fs = std::filesystem;

class KeyringFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moat-keyring-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write_key(const std::string& name, const Key& k, bool priv = true) {
    const fs::path p = dir_ / name;
    write_key_file(p, k.to_jwk(priv), priv ? 0600 : 0644, false);
    return p;
  }
  fs::path write(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    std::ofstream(p) << text;
    return p;
  }
  std::string load_error(const std::string& toml) {
    try {
      Keyring::load(write("keys.toml", toml));
    } catch (const KeyringError& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(KeyringFiles, MapsFiltersToKeysAndRotates) {
  const Key cmd_new = Key::generate(KeyKind::Ed25519, "cmd-2025");
  const Key cmd_old = Key::generate(KeyKind::Ed25519, "cmd-2024");
  const Key tele = Key::generate(KeyKind::Aes256, "telemetry");
  write_key("cmd-2025.jwk", cmd_new);
  write_key("cmd-2024.jwk", cmd_old);
  write_key("telemetry.jwk", tele);
  auto ring = Keyring::load(write("keys.toml", R"(
# the newest key first: it seals; all of them open
[[topic]]
filter = "plant/+/cmd"
keys = ["cmd-2025.jwk", "cmd-2024.jwk"]
require_fresh = true

[[topic]]
filter = "plant/#"
keys = ["telemetry.jwk"]

[replay]
max_age = 60
window = 16
)"));
  EXPECT_EQ(ring->keys_for("plant/7/cmd").size(), 3u);
  EXPECT_EQ(ring->keys_for("plant/7/temp").size(), 1u);
  EXPECT_TRUE(ring->keys_for("office/7/cmd").empty());
  EXPECT_TRUE(ring->has_keys_for("plant/7/cmd"));
  EXPECT_TRUE(ring->has_keys_for("plant/7/temp"));
  EXPECT_FALSE(ring->has_keys_for("office/7/cmd"));
  EXPECT_EQ(ring->replay_guard().config().max_age_s, 60);

  auto env = ring->seal("plant/7/cmd", "open", Mode::Sign);
  ASSERT_TRUE(env) << env.error().message();
  auto opened = ring->open("plant/7/cmd", *env);
  ASSERT_TRUE(opened) << opened.error().message();
  EXPECT_EQ(opened->kid, "cmd-2025");

  // An envelope of the previous key still opens.
  auto old_env = Keyring::single(cmd_old)->seal("plant/7/cmd", "close", Mode::Sign);
  opened = ring->open("plant/7/cmd", *old_env);
  ASSERT_TRUE(opened) << opened.error().message();
  EXPECT_EQ(opened->kid, "cmd-2024");

  // The topic's require_fresh applies to envelopes without replay headers.
  auto bare = seal(Mode::Sign, &cmd_new, "plant/7/cmd", "x", {});
  auto r = ring->open("plant/7/cmd", *bare);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::not_fresh);

  // Encrypt picks the topic's AEAD key; no key can MAC there.
  env = ring->seal("plant/7/temp", "21.5", Mode::Encrypt);
  ASSERT_TRUE(env);
  EXPECT_EQ(ring->open("plant/7/temp", *env)->kid, "telemetry");
  auto no_mac = ring->seal("plant/7/temp", "21.5", Mode::Mac);
  ASSERT_FALSE(no_mac);
  EXPECT_EQ(no_mac.code(), Errc::unknown_key);
  r = ring->open("office/1", *env);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::unknown_key);
}

TEST_F(KeyringFiles, RefusesPrivateKeysOthersCanRead) {
  const Key k = Key::generate(KeyKind::Hmac256, "m");
  const fs::path p = write_key("m.jwk", k);
  ASSERT_EQ(::chmod(p.c_str(), 0640), 0);
  try {
    load_key_file(p);
    FAIL() << "a group-readable secret key was loaded";
  } catch (const KeyError& e) {
    EXPECT_NE(std::string(e.what()).find("mode 0640"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("chmod 600"), std::string::npos) << e.what();
  }
  const std::string err = load_error("[[topic]]\nfilter = \"a\"\nkeys = [\"m.jwk\"]\n");
  EXPECT_NE(err.find("keys.toml:3:9: topic.keys: "), std::string::npos) << err;
  // A public key may be readable by anyone.
  const Key s = Key::generate(KeyKind::Ed25519, "s");
  const fs::path pub = write_key("s.pub", s, false);
  EXPECT_NO_THROW(load_key_file(pub));
  // A symbolic link to a key is not followed.
  fs::create_symlink(pub, dir_ / "link.pub");
  EXPECT_THROW(load_key_file(dir_ / "link.pub"), KeyError);
}

TEST_F(KeyringFiles, ErrorsNameFileLineColumnKeyAndReason) {
  write_key("k.jwk", Key::generate(KeyKind::Aes256, "k"));
  EXPECT_EQ(load_error("[[topic]]\nfilter = \"a/#\"\nkeys = [\"k.jwk\"]\nfiltr = 1\n"),
            (dir_ / "keys.toml").string() +
                ":4:9: topic.filtr: unknown key (known here: filter, keys, require_fresh, seal)");
  EXPECT_NE(load_error("[[topic]]\nfilter = \"a/#/b\"\nkeys = [\"k.jwk\"]\n").find(":2:10: topic.filter: "),
            std::string::npos);
  EXPECT_NE(
      load_error("[[topic]]\nfilter = \"a\"\nkeys = []\n").find(":3:8: topic.keys: must be a non-empty"),
      std::string::npos);
  EXPECT_NE(
      load_error("[[topic]]\nfilter = \"a\"\nkeys = [\"missing.jwk\"]\n").find("missing.jwk: No such file"),
      std::string::npos);
  EXPECT_NE(load_error("[replay]\nmax_age = 0\n[[topic]]\nfilter = \"a\"\nkeys = [\"k.jwk\"]\n")
                .find(":2:11: replay.max_age: must be between 1 and"),
            std::string::npos);
  EXPECT_NE(load_error("[[topic]]\nfilter = \"a\"\n").find("topic.keys: missing"), std::string::npos);
  EXPECT_NE(load_error("").find("no [[topic]] entries"), std::string::npos);
  EXPECT_NE(load_error("[[topic]\n").find("keys.toml:1:"), std::string::npos);
  // Two different keys with one key id under one filter would make "kid" ambiguous.
  const Key a = Key::generate(KeyKind::Aes256, "same");
  const Key b = Key::generate(KeyKind::Aes256, "same");
  write_key("a.jwk", a);
  write_key("b.jwk", b);
  EXPECT_NE(load_error("[[topic]]\nfilter = \"a\"\nkeys = [\"a.jwk\", \"b.jwk\"]\n").find("key id \"same\""),
            std::string::npos);
}

TEST_F(KeyringFiles, HashFilterDoesNotMatchDollarTopics) {
  write_key("k.jwk", Key::generate(KeyKind::Aes256, "k"));
  auto ring = Keyring::load(write("keys.toml", "[[topic]]\nfilter = \"#\"\nkeys = [\"k.jwk\"]\n"));
  EXPECT_EQ(ring->keys_for("a/b").size(), 1u);
  EXPECT_TRUE(ring->keys_for("$SYS/broker").empty());  // [MQTT-4.7.2-1]
  EXPECT_TRUE(ring->has_keys_for("a/b"));
  EXPECT_FALSE(ring->has_keys_for("$SYS/broker"));
}

}  // namespace
}  // namespace moat::payload::test
