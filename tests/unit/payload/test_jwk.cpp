// JSON Web Keys: what Moat writes reads back, published examples read, and bad
// keys are refused with the member at fault.
#include <sys/stat.h>
#include <unistd.h>

#include "security/payload/key.hpp"
#include "vectors.hpp"

namespace moat::payload::test {
namespace {

TEST(Jwk, EveryKindRoundTrips) {
  for (auto kind : {KeyKind::Aes256, KeyKind::ChaCha20, KeyKind::Hmac256, KeyKind::Ed25519, KeyKind::P256,
                    KeyKind::X25519}) {
    const Key k = Key::generate(kind, "kid-1");
    const Key back = Key::from_jwk(k.to_jwk(true));
    EXPECT_EQ(back.kid(), "kid-1");
    EXPECT_EQ(back.type(), k.type());
    EXPECT_EQ(back.alg(), k.alg());
    EXPECT_TRUE(back.has_private());
    EXPECT_EQ(back.to_jwk(true), k.to_jwk(true));
    if (!k.is_symmetric()) {
      const Key pub = Key::from_jwk(k.to_jwk(false));
      EXPECT_FALSE(pub.has_private());
      EXPECT_EQ(pub.x(), k.x());
      EXPECT_EQ(pub.to_jwk(false).find("\"d\""), std::string::npos);
    }
  }
}

// RFC 8037 appendix A.1 and A.2: the Ed25519 example key.
TEST(Jwk, ReadsTheRfc8037ExampleKey) {
  const Key k = Key::from_jwk(R"({"kty":"OKP","crv":"Ed25519","kid":"rfc8037",
      "d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
      "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})");
  EXPECT_EQ(k.type(), Key::Type::Ed25519);
  EXPECT_TRUE(k.has_private());
  EXPECT_TRUE(k.allows(alg::EdDSA));
  EXPECT_FALSE(k.allows(alg::ES256));
  // RFC 8037 A.4: the signature of "Example of Ed25519 signing" (as JWS input).
  std::string sig;
  ASSERT_TRUE(
      crypto::ed25519_sign(k.pkey(), "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc", sig));
  EXPECT_EQ(base64url_encode(sig),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg");
}

TEST(Jwk, RefusesBadKeys) {
  const auto why = [](const std::string& json) {
    try {
      Key::from_jwk(json);
    } catch (const KeyError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(why(R"({"kty":"oct","k":"hJtXIZ2uSN5kbQfbtTNWbg"})"), "\"kid\" is missing");
  EXPECT_EQ(why(R"({"kty":"RSA","kid":"a"})"), "\"kty\": \"RSA\" is not supported (oct, OKP or EC)");
  EXPECT_EQ(why(R"({"kty":"oct","kid":"a","k":"c2hvcnQ"})"), "\"k\" must be at least 16 bytes");
  EXPECT_EQ(why(R"({"kty":"oct","kid":"a","k":"hJtXIZ2uSN5kbQfbtTNWbg=="})"),
            "\"k\" is not base64url without padding");
  EXPECT_EQ(why(R"({"kty":"OKP","kid":"a","crv":"Ed448","x":"AA"})"),
            "\"crv\": \"Ed448\" is not supported with kty \"OKP\" (OKP: Ed25519, X25519; EC: P-256)");
  EXPECT_EQ(why(R"({"kty":"oct","kid":"a","alg":"A256GCM","k":"hJtXIZ2uSN5kbQfbtTNWbg"})"),
            "\"alg\": A256GCM does not fit a key of this type and size");
  EXPECT_EQ(why(R"({"kty":"oct","kid":"a","alg":"RS256","k":"hJtXIZ2uSN5kbQfbtTNWbg"})"),
            "\"alg\": \"RS256\" is not an algorithm Moat uses");
  // A P-256 point that is not on the curve.
  EXPECT_EQ(why(R"({"kty":"EC","kid":"a","crv":"P-256",
      "x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE"})"),
            "\"x\"/\"y\" is not a valid public key on P-256");
  // A private key that does not belong to the public key.
  const Key a = Key::generate(KeyKind::Ed25519, "a");
  const Key b = Key::generate(KeyKind::Ed25519, "b");
  auto ja = nlohmann::json::parse(a.to_jwk(true));
  ja["x"] = nlohmann::json::parse(b.to_jwk(false))["x"];
  EXPECT_EQ(why(ja.dump()), "\"d\" does not belong to the public key \"x\"/\"y\"");
}

TEST(Jwk, P256KeysAreForSigningOrForEcdh) {
  const Key sig = Key::generate(KeyKind::P256, "s");
  EXPECT_TRUE(sig.allows(alg::ES256));
  EXPECT_FALSE(sig.allows(alg::EcdhEsHkdf256));
  const Key enc = Key::generate(KeyKind::P256, "e", true);
  EXPECT_FALSE(enc.allows(alg::ES256));
  EXPECT_TRUE(enc.allows(alg::EcdhEsHkdf256));
  // Without "alg" and "use" (another tool's key), both.
  auto j = nlohmann::json::parse(enc.to_jwk(true));
  j.erase("alg");
  j.erase("use");
  const Key any = Key::from_jwk(j.dump());
  EXPECT_TRUE(any.allows(alg::ES256));
  EXPECT_TRUE(any.allows(alg::EcdhEsHkdf256));
}

TEST(Jwk, WritesKeyFilesWithTheirModeAndNeverReplaces) {
  const auto path = std::filesystem::temp_directory_path() / ("moat-jwk-" + std::to_string(::getpid()));
  std::filesystem::remove(path);
  const ::mode_t old = ::umask(0);  // the mode must not depend on the umask
  write_key_file(path, "{}", 0600, false);
  ::umask(old);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_THROW(write_key_file(path, "{}", 0600, false), KeyError);
  EXPECT_NO_THROW(write_key_file(path, "{\"a\":1}", 0600, true));
  std::filesystem::remove(path);
}

TEST(Base64url, RoundTripsAndIsStrict) {
  for (std::size_t n = 0; n < 40; ++n) {
    const std::string bytes = crypto::random_bytes(n);
    EXPECT_EQ(base64url_decode(base64url_encode(bytes)), bytes);
  }
  EXPECT_EQ(base64url_encode("\xfb\xff"), "-_8");
  EXPECT_FALSE(base64url_decode("-_9"));    // unused bits set
  EXPECT_FALSE(base64url_decode("AAAAA"));  // length 1 mod 4
  EXPECT_FALSE(base64url_decode("AA=="));   // padding
  EXPECT_FALSE(base64url_decode("A+/A"));   // standard alphabet
}

}  // namespace
}  // namespace moat::payload::test
