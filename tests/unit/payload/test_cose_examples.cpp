// The COSE working group's examples (../shared/vectors/cose-examples) through
// Moat's decoder and open_with(): every file has an expected outcome. Examples of
// the algorithms and structures Moat implements open to their plaintext; the
// "-fail-" ones are refused with the error class their change calls for; the rest
// (algorithms or structures Moat does not implement) are refused with
// wrong_algorithm or unsupported, or their key is refused by the JWK loader. The
// per-outcome counts are printed and pinned.
#include <map>

#include "security/payload/cose.hpp"
#include "security/payload/key.hpp"
#include "vectors.hpp"

namespace moat::payload::test {
namespace {

namespace fs = std::filesystem;

// The example's key as a JWK: hex members (x_hex, d_hex, ...) become base64url.
std::optional<Key> example_key(nlohmann::json k, std::string& why) {
  for (const char* m : {"x", "y", "d", "k"}) {
    const std::string hexname = std::string(m) + "_hex";
    if (k.contains(hexname)) {
      k[m] = base64url_encode(unhex(k[hexname].get<std::string>()));
      k.erase(hexname);
    }
  }
  if (!k.contains("kid")) k["kid"] = "example";
  try {
    return Key::from_jwk(k.dump());
  } catch (const KeyError& e) {
    why = e.what();
    return std::nullopt;
  }
}

struct Example {
  fs::path file;
  nlohmann::json doc;
  std::string kind;  // encrypted, enveloped, mac0, mac, sign0, sign
  nlohmann::json body;
};

Example read_example(const fs::path& file) {
  Example e{file, read_json(file), {}, {}};
  for (const char* k : {"encrypted", "enveloped", "mac0", "mac", "sign0", "sign"}) {
    if (e.doc.at("input").contains(k)) {
      e.kind = k;
      e.body = e.doc.at("input").at(k);
    }
  }
  return e;
}

nlohmann::json key_json(const Example& e) {
  if (e.kind == "sign0") return e.body.at("key");
  if (e.kind == "sign") return e.body.at("signers").at(0).at("key");
  return e.body.at("recipients").at(0).at("key");
}

// What an example's "failures" member calls for.
Errc expected_failure(const nlohmann::json& failures) {
  if (failures.contains("ChangeCBORTag")) return Errc::malformed;
  if (failures.contains("ChangeAttr")) return Errc::wrong_algorithm;
  return Errc::verification_failed;  // ChangeTag, AddProtected, RemoveProtected
}

TEST(CoseExamples, EveryExampleHasItsOutcome) {
  std::map<std::string, int> outcomes;
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(vectors_dir() / "cose-examples"))
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  ASSERT_GT(files.size(), 100u);

  for (const auto& file : files) {
    SCOPED_TRACE(file.string());
    const Example ex = read_example(file);
    ASSERT_FALSE(ex.kind.empty());
    const std::string bytes = unhex(ex.doc.at("output").at("cbor").get<std::string>());
    const std::string plaintext = ex.doc.at("input").at("plaintext").get<std::string>();
    const std::string external =
        ex.body.contains("external") ? unhex(ex.body.at("external").get<std::string>()) : "";
    const bool must_fail =
        file.filename().string().find("-fail-") != std::string::npos || ex.doc.value("fail", false);
    const nlohmann::json failures = ex.doc.at("input").value("failures", nlohmann::json::object());

    auto env = decode(bytes);
    if (!env) {
      const Errc c = env.code();
      if (must_fail && (ex.kind == "mac" || ex.kind == "sign")) {
        // A damaged COSE_Mac or COSE_Sign: Moat refuses the structure itself.
        EXPECT_EQ(c, Errc::unsupported) << env.error().message();
        ++outcomes["-fail- refused at decoding (" + std::string(to_string(c)) + ")"];
      } else if (must_fail) {
        EXPECT_EQ(c, expected_failure(failures)) << env.error().message();
        ++outcomes["-fail- refused at decoding (" + std::string(to_string(c)) + ")"];
      } else {
        // Not implemented by Moat: a structure (COSE_Mac, COSE_Sign, a Partial IV
        // with a context IV) or an algorithm (AES-CCM, HMAC 384/512, HMAC 256/64,
        // ES384/512, ECDH-SS, ECDH-ES + HKDF-512, direct HKDF).
        EXPECT_TRUE(c == Errc::unsupported || c == Errc::wrong_algorithm) << env.error().message();
        ++outcomes["not implemented, refused at decoding (" + std::string(to_string(c)) + ")"];
      }
      continue;
    }
    std::string why;
    const auto key = example_key(key_json(ex), why);
    if (!key) {
      // P-521 and Ed448 keys: curves Moat does not implement.
      EXPECT_FALSE(must_fail) << "a -fail- example must fail for its own reason";
      EXPECT_TRUE(why.find("crv") != std::string::npos) << why;
      ++outcomes["not implemented: key refused by the JWK loader (" +
                 key_json(ex).at("crv").get<std::string>() + ")"];
      continue;
    }
    auto opened = open_with(*env, &*key, external);
    if (must_fail) {
      ASSERT_FALSE(opened) << "a -fail- example opened";
      EXPECT_EQ(opened.code(), expected_failure(failures)) << opened.error().message();
      ++outcomes["-fail- refused when opening (" + std::string(to_string(opened.code())) + ")"];
      continue;
    }
    if (!opened) {
      // ECDH-ES + HKDF-256 recipients on P-521 would fail at the key; anything
      // else that fails here is a defect.
      ADD_FAILURE() << opened.error().message();
      continue;
    }
    EXPECT_EQ(opened->plaintext, plaintext);
    ++outcomes["opens to its plaintext (" + ex.kind + ")"];
  }
  int total = 0;
  for (const auto& [what, n] : outcomes) {
    std::cout << "[cose-examples] " << n << " " << what << "\n";
    total += n;
  }
  EXPECT_EQ(total, static_cast<int>(files.size()));
  EXPECT_EQ(outcomes["opens to its plaintext (encrypted)"], 8);
  EXPECT_EQ(outcomes["opens to its plaintext (enveloped)"], 11);
  EXPECT_EQ(outcomes["opens to its plaintext (mac0)"], 5);
  EXPECT_EQ(outcomes["opens to its plaintext (sign0)"], 5);
}

// The examples of the algorithms Moat seals with, one by one, so a failure names
// the file.
class Applicable : public ::testing::TestWithParam<const char*> {};

TEST_P(Applicable, Opens) {
  const Example ex = read_example(vectors_dir() / "cose-examples" / GetParam());
  const std::string bytes = unhex(ex.doc.at("output").at("cbor").get<std::string>());
  auto env = decode(bytes);
  ASSERT_TRUE(env) << env.error().message();
  std::string why;
  const auto key = example_key(key_json(ex), why);
  ASSERT_TRUE(key) << why;
  const std::string external =
      ex.body.contains("external") ? unhex(ex.body.at("external").get<std::string>()) : "";
  auto opened = open_with(*env, &*key, external);
  ASSERT_TRUE(opened) << opened.error().message();
  EXPECT_EQ(opened->plaintext, ex.doc.at("input").at("plaintext").get<std::string>());
  // With another external AAD (the topic, for Moat) it must not open.
  auto moved = open_with(*env, &*key, external + "x");
  ASSERT_FALSE(moved);
  EXPECT_EQ(moved.code(), Errc::verification_failed);
}

INSTANTIATE_TEST_SUITE_P(
    CoseExamples, Applicable,
    ::testing::Values("aes-gcm-examples/aes-gcm-enc-03.json",          // A256GCM Encrypt0
                      "chacha-poly-examples/chacha-poly-enc-01.json",  // ChaCha20 Encrypt0
                      "chacha-poly-examples/chacha-poly-01.json",
                      "hmac-examples/HMac-enc-01.json",    // HMAC 256/256 Mac0
                      "mac0-tests/mac-pass-02.json",       // with external AAD
                      "eddsa-examples/eddsa-sig-01.json",  // Ed25519 Sign1
                      "ecdsa-examples/ecdsa-sig-01.json",  // ES256 Sign1
                      "sign1-tests/sign-pass-02.json",
                      "sign1-tests/sign-pass-03.json",               // untagged
                      "ecdh-direct-examples/p256-hkdf-256-02.json",  // P-256 ECDH-ES
                      "X25519-tests/x25519-hkdf-256-direct.json"),   // X25519 ECDH-ES
    [](const auto& param_info) {
      std::string n = param_info.param;
      for (char& c : n)
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      return n;
    });

}  // namespace
}  // namespace moat::payload::test
