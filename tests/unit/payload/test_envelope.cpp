// Envelopes sealed and opened by Moat: every mode and algorithm round-trips, and
// each kind of damage is refused with its own error.
#include <gtest/gtest.h>

#include "security/payload/cbor.hpp"
#include "security/payload/cose.hpp"
#include "security/payload/keyring.hpp"
#include "vectors.hpp"

namespace moat::payload::test {
namespace {

constexpr std::int64_t kNow = 1'760'000'000;  // a fixed "now" (seconds)
constexpr std::string_view kTopic = "plant/7/cmd";

SealPolicy at(std::int64_t seconds, std::int64_t extra_us = 0) {
  SealPolicy p;
  p.now_us = seconds * 1'000'000 + extra_us;
  return p;
}

OpenPolicy now_policy(std::int64_t seconds = kNow) {
  OpenPolicy p;
  p.now_s = seconds;
  return p;
}

struct Case {
  const char* name;
  KeyKind kind;
  Mode mode;
  bool p256_ecdh = false;
  std::int64_t content_alg = alg::A256GCM;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

const Case kCases[] = {
    {"Aes256Gcm", KeyKind::Aes256, Mode::Encrypt},
    {"ChaCha20", KeyKind::ChaCha20, Mode::Encrypt},
    {"X25519", KeyKind::X25519, Mode::EncryptTo},
    {"X25519ChaCha", KeyKind::X25519, Mode::EncryptTo, false, alg::ChaCha20Poly1305},
    {"P256Ecdh", KeyKind::P256, Mode::EncryptTo, true},
    {"Hmac256", KeyKind::Hmac256, Mode::Mac},
    {"Ed25519", KeyKind::Ed25519, Mode::Sign},
    {"Es256", KeyKind::P256, Mode::Sign},
};

class Roundtrip : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const Case& c = GetParam();
    key_ = Key::generate(c.kind, std::string("k-") + c.name, c.p256_ecdh);
    // The sealer of encrypt-to and sign holds the public part only where that suffices.
    sealer_ = Keyring::single(c.mode == Mode::EncryptTo ? key_.public_only() : key_);
    opener_ = Keyring::single(c.mode == Mode::Sign ? key_.public_only() : key_);
  }
  Result<std::string> seal(std::string_view plaintext, std::int64_t when = kNow, std::int64_t us = 0) {
    SealPolicy p = at(when, us);
    p.content_alg = GetParam().content_alg;
    return sealer_->seal(kTopic, plaintext, GetParam().mode, p);
  }
  Key key_;
  std::unique_ptr<Keyring> sealer_, opener_;
};

TEST_P(Roundtrip, SealsAndOpens) {
  for (std::size_t size : {0, 1, 64, 1024, 65536}) {
    const std::string plaintext = crypto::random_bytes(size);
    auto env = seal(plaintext, kNow, static_cast<std::int64_t>(size));
    ASSERT_TRUE(env) << env.error().message();
    auto opened = opener_->open(kTopic, *env, now_policy());
    ASSERT_TRUE(opened) << opened.error().message();
    EXPECT_EQ(opened->plaintext, plaintext);
    EXPECT_EQ(opened->mode, GetParam().mode);
    EXPECT_EQ(opened->kid, key_.kid());
    EXPECT_EQ(opened->iat, kNow);
    ASSERT_TRUE(opened->seq);
  }
}

TEST_P(Roundtrip, CarriesReplayHeadersInTheProtectedHeader) {
  auto env = seal("x");
  ASSERT_TRUE(env);
  auto d = decode(*env);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_TRUE(d->tagged);
  EXPECT_EQ(d->iat, kNow);
  EXPECT_EQ(d->seq, static_cast<std::uint64_t>(kNow) * 1'000'000);
  if (GetParam().mode == Mode::EncryptTo) {
    ASSERT_EQ(d->recipients.size(), 1u);
    EXPECT_EQ(d->recipients[0].kid, key_.kid());
  } else {
    EXPECT_EQ(d->kid, key_.kid());
  }
}

TEST_P(Roundtrip, EachDamageHasItsError) {
  const std::string plaintext = "open valve 3";
  auto sealed = seal(plaintext);
  ASSERT_TRUE(sealed);
  const std::string env = *sealed;
  auto d = decode(env);
  ASSERT_TRUE(d);
  const auto offset = [&](std::string_view part) {
    return static_cast<std::size_t>(part.data() - env.data());
  };
  const auto flipped = [&](std::size_t at) {
    std::string e = env;
    e[at] = static_cast<char>(e[at] ^ 0x01);
    return e;
  };
  const auto refuse = [&](const std::string& e, Errc want, std::string_view topic = kTopic,
                          OpenPolicy p = now_policy()) {
    auto r = Keyring::single(GetParam().mode == Mode::Sign ? key_.public_only() : key_)->open(topic, e, p);
    ASSERT_FALSE(r) << "opened";
    EXPECT_EQ(r.code(), want) << r.error().message();
  };
  // A flipped bit in the payload (or ciphertext), in the tag, in the protected header.
  refuse(flipped(offset(d->content)), Errc::verification_failed);
  if (!d->tag.empty())
    refuse(flipped(offset(d->tag) + d->tag.size() - 1), Errc::verification_failed);
  else
    refuse(flipped(offset(d->content) + d->content.size() - 1), Errc::verification_failed);  // the AEAD tag
  refuse(flipped(offset(d->protected_bytes) + d->protected_bytes.size() - 1), Errc::verification_failed);
  // Another topic: the external AAD differs.
  refuse(env, Errc::verification_failed, "plant/8/cmd");
  // Truncated CBOR, and trailing bytes.
  refuse(env.substr(0, env.size() - 1), Errc::malformed);
  refuse(env.substr(0, 5), Errc::malformed);
  refuse(env + '\0', Errc::malformed);
  // Expired, and from the future.
  refuse(env, Errc::stale, kTopic, now_policy(kNow + 301));
  refuse(env, Errc::stale, kTopic, now_policy(kNow - 61));
  // Wrong key: another key with the same kid does not verify; another kid is unknown.
  const Case& c = GetParam();
  const Key other = Key::generate(c.kind, key_.kid(), c.p256_ecdh);
  auto r =
      Keyring::single(c.mode == Mode::Sign ? other.public_only() : other)->open(kTopic, env, now_policy());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::verification_failed) << r.error().message();
  r = Keyring::single(Key::generate(c.kind, "someone-else", c.p256_ecdh))->open(kTopic, env, now_policy());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::unknown_key) << r.error().message();
  // Replayed: the same envelope twice through one receiver.
  auto opener = Keyring::single(c.mode == Mode::Sign ? key_.public_only() : key_);
  ASSERT_TRUE(opener->open(kTopic, env, now_policy()));
  r = opener->open(kTopic, env, now_policy());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::replayed) << r.error().message();
}

TEST_P(Roundtrip, WrongKindOfKeyIsWrongAlgorithm) {
  auto env = seal("x");
  ASSERT_TRUE(env);
  // A key with the same kid but for another algorithm.
  const KeyKind other = GetParam().kind == KeyKind::Hmac256 ? KeyKind::Ed25519 : KeyKind::Hmac256;
  auto r = Keyring::single(Key::generate(other, key_.kid()))->open(kTopic, *env, now_policy());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::wrong_algorithm) << r.error().message();
}

TEST_P(Roundtrip, ReorderedEnvelopesOpenOnce) {
  std::vector<std::string> envs;
  for (int i = 0; i < 5; ++i) {
    auto e = seal("m" + std::to_string(i), kNow, i);
    ASSERT_TRUE(e);
    envs.push_back(*e);
  }
  for (int i : {1, 0, 4, 2, 3}) {
    auto r = opener_->open(kTopic, envs[static_cast<std::size_t>(i)], now_policy());
    ASSERT_TRUE(r) << i << ": " << r.error().message();
    EXPECT_EQ(r->plaintext, "m" + std::to_string(i));
  }
  for (const auto& e : envs) {
    auto r = opener_->open(kTopic, e, now_policy());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.code(), Errc::replayed);
  }
}

INSTANTIATE_TEST_SUITE_P(Envelope, Roundtrip, ::testing::ValuesIn(kCases),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

TEST(Envelope, DigestIsAcceptedOnlyWhenAsked) {
  auto ring = Keyring::single(Key::generate(KeyKind::Hmac256, "k"));
  auto env = ring->seal(kTopic, "reading 42", Mode::Digest, at(kNow));
  ASSERT_TRUE(env) << env.error().message();
  auto d = decode(*env);
  ASSERT_TRUE(d);
  EXPECT_FALSE(d->tagged);
  EXPECT_EQ(d->alg, alg::SHA256);
  auto r = ring->open(kTopic, *env, now_policy());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::wrong_algorithm);
  OpenPolicy p = now_policy();
  p.allow_digest = true;
  r = ring->open(kTopic, *env, p);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->plaintext, "reading 42");
  EXPECT_EQ(r->mode, Mode::Digest);
  // A digest catches accidents: a flipped bit, another topic.
  std::string bad = *env;
  bad[bad.size() - 40] ^= 0x04;
  r = ring->open(kTopic, bad, p);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::verification_failed);
  r = ring->open("plant/8/cmd", *env, p);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::verification_failed);
}

TEST(Envelope, WithoutReplayHeadersOpensUnlessFreshnessIsRequired) {
  const Key key = Key::generate(KeyKind::Hmac256, "k");
  SealOptions bare;  // no sequence, no timestamp: what another COSE library may send
  auto env = seal(Mode::Mac, &key, kTopic, "hello", bare);
  ASSERT_TRUE(env);
  auto ring = Keyring::single(key);
  auto r = ring->open(kTopic, *env, now_policy());
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_FALSE(r->seq);
  EXPECT_FALSE(r->iat);
  OpenPolicy fresh = now_policy();
  fresh.require_fresh = true;
  r = ring->open(kTopic, *env, fresh);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::not_fresh);
  // A timestamp alone is not enough either.
  SealOptions ts;
  ts.iat = kNow;
  env = seal(Mode::Mac, &key, kTopic, "hello", ts);
  r = ring->open(kTopic, *env, fresh);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::not_fresh);
}

TEST(Envelope, WithoutKidTriesTheTopicsKeys) {
  const Key old_key = Key::generate(KeyKind::Aes256, "old");
  const Key new_key = Key::generate(KeyKind::Aes256, "new");
  SealOptions o;
  o.kid = false;
  auto env = seal(Mode::Encrypt, &old_key, kTopic, "secret", o);
  ASSERT_TRUE(env);
  std::vector<Keyring::Entry> entries(1);
  entries[0].keys = {std::make_shared<const Key>(new_key), std::make_shared<const Key>(old_key)};
  Keyring ring(entries);
  auto r = ring.open(kTopic, *env);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->plaintext, "secret");
  EXPECT_EQ(r->kid, "old");
}

TEST(Envelope, SequenceWindowRefusesWhatFellBelowIt) {
  ReplayConfig rc;
  rc.window = 4;
  const Key key = Key::generate(KeyKind::Hmac256, "k");
  auto sealer = Keyring::single(key);
  auto opener = Keyring::single(key, rc);
  std::vector<std::string> envs;
  for (int i = 0; i < 8; ++i) envs.push_back(*sealer->seal(kTopic, "m", Mode::Mac, at(kNow, i)));
  for (std::size_t i = 1; i < 8; ++i) ASSERT_TRUE(opener->open(kTopic, envs[i], now_policy()));
  // envs[0] was never seen, but is older than the window's floor now.
  auto r = opener->open(kTopic, envs[0], now_policy());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::replayed);
  EXPECT_NE(r.error().detail.find("below the replay window"), std::string::npos);
}

TEST(Envelope, ReplayStateSurvivesSaveAndRestore) {
  const Key key = Key::generate(KeyKind::Ed25519, "signer");
  auto sealer = Keyring::single(key);
  const std::string env = *sealer->seal(kTopic, "m", Mode::Sign, at(kNow));
  auto first = Keyring::single(key.public_only());
  ASSERT_TRUE(first->open(kTopic, env, now_policy()));
  const std::string state = first->replay_guard().save();
  auto second = Keyring::single(key.public_only());
  second->replay_guard().restore(state);
  auto r = second->open(kTopic, env, now_policy());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::replayed);
  EXPECT_THROW(second->replay_guard().restore("{\"version\":2}"), std::runtime_error);
}

TEST(Envelope, ReplayMemoryIsBounded) {
  ReplayConfig rc;
  rc.window = 4;
  rc.max_senders = 3;
  rc.max_entries = 6;
  ReplayGuard g(rc);
  // Three senders of two numbers each fill the bound.
  for (const char* s : {"a", "b", "c"}) {
    ASSERT_TRUE(g.accept(s, 1));
    ASSERT_TRUE(g.accept(s, 2));
  }
  ASSERT_FALSE(g.accept("a", 2));  // "a" is now the most recently used
  // A fourth sender pushes out the least recently used one ("b").
  ASSERT_TRUE(g.accept("d", 1));
  EXPECT_TRUE(g.accept("b", 2));   // forgotten: accepted again (stale checks still apply)
  EXPECT_FALSE(g.accept("a", 1));  // kept
  // One sender beyond the entry bound takes the others' room, not its own.
  ReplayConfig one = rc;
  one.max_entries = 2;
  ReplayGuard h(one);
  ASSERT_TRUE(h.accept("x", 1));
  ASSERT_TRUE(h.accept("y", 1));
  ASSERT_TRUE(h.accept("y", 2));  // 3 entries > 2: "x" goes
  EXPECT_TRUE(h.accept("x", 1));   // forgotten
}

TEST(Envelope, ReplayFloorRaisedFromAStoredMark) {
  ReplayGuard g;
  std::uint64_t highest = 0;
  ASSERT_TRUE(g.accept("a", 10, &highest));
  EXPECT_EQ(highest, 10u);
  ASSERT_TRUE(g.accept("a", 5, &highest));  // out of order, above the floor
  EXPECT_EQ(highest, 10u);                  // the mark does not go back
  g.raise_floor("a", 20);
  EXPECT_FALSE(g.accept("a", 20));
  EXPECT_FALSE(g.accept("a", 15));
  g.raise_floor("a", 12);  // a lower mark (another loop's) leaves the floor
  EXPECT_FALSE(g.accept("a", 13));
  EXPECT_TRUE(g.accept("a", 21));
  g.raise_floor("b", 3);  // a sender not seen yet
  EXPECT_FALSE(g.accept("b", 3));
  EXPECT_TRUE(g.accept("b", 4));
}

TEST(Envelope, SequenceNumbersGrowAcrossRestartsAndBursts) {
  Sequencer s;
  EXPECT_EQ(s.next("a", 1000), 1000u);
  EXPECT_EQ(s.next("a", 1000), 1001u);  // same microsecond: still grows
  EXPECT_EQ(s.next("a", 999), 1002u);   // clock went back: still grows
  EXPECT_EQ(s.next("a", 5000), 5000u);
  EXPECT_EQ(s.next("b", 10), 10u);  // per key id
}

// ---- hand-made envelopes: the strict decoder ----

// A Mac0 over `protected_map` (encoded) with a correct tag, so only the header
// rules can refuse it.
std::string mac0_with(const Key& key, const std::string& protected_map,
                      const std::string& unprotected_map = "\xa0") {
  std::string prefix;
  cbor::Writer w(prefix);
  w.array(4);
  w.text("MAC0");
  w.bytes(protected_map);
  w.bytes(kTopic);
  w.bytes("p");
  const auto tag = crypto::hmac_sha256(key.secret(), {prefix});
  std::string out;
  cbor::Writer o(out);
  o.tag(tag::Mac0);
  o.array(4);
  o.bytes(protected_map);
  o.raw(unprotected_map);
  o.bytes("p");
  o.bytes(crypto::view(tag));
  return out;
}

std::string map_of(std::initializer_list<std::pair<std::int64_t, std::string>> entries) {
  std::string out;
  cbor::Writer w(out);
  w.map(entries.size());
  for (const auto& [k, v] : entries) {
    w.integer(k);
    w.raw(v);
  }
  return out;
}

std::string enc_int(std::int64_t v) {
  std::string out;
  cbor::Writer(out).integer(v);
  return out;
}
std::string enc_bytes(std::string_view b) {
  std::string out;
  cbor::Writer(out).bytes(b);
  return out;
}

TEST(StrictDecoding, AWellFormedHandMadeMac0Opens) {
  const Key key = Key::generate(KeyKind::Hmac256, "k");
  const std::string env = mac0_with(key, map_of({{1, enc_int(alg::HMAC256)}}));
  auto r = Keyring::single(key)->open(kTopic, env);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->plaintext, "p");
}

TEST(StrictDecoding, RefusesWhatRfc9052Forbids) {
  const Key key = Key::generate(KeyKind::Hmac256, "k");
  auto ring = Keyring::single(key);
  const auto code = [&](const std::string& env) {
    auto r = ring->open(kTopic, env);
    return r ? Errc{} : r.code();
  };
  const std::string alg5 = enc_int(alg::HMAC256);
  // An unknown critical header.
  std::string crit;
  cbor::Writer(crit).array(1);
  crit += enc_int(99);
  EXPECT_EQ(code(mac0_with(key, map_of({{1, alg5}, {2, crit}, {99, enc_int(1)}}))), Errc::unsupported);
  // crit naming a label that is not in the protected header.
  EXPECT_EQ(code(mac0_with(key, map_of({{1, alg5}, {2, crit}}))), Errc::malformed);
  // A known critical header is fine.
  std::string crit_kid;
  cbor::Writer(crit_kid).array(1);
  crit_kid += enc_int(4);
  EXPECT_EQ(code(mac0_with(key, map_of({{1, alg5}, {2, crit_kid}, {4, enc_bytes("k")}}))), Errc{});
  // The same label twice in one map (also when encoded differently), or in both buckets.
  std::string dup = "\xa2\x01\x05\x18\x01\x05";  // {1: 5, 1 (two-byte form): 5}
  EXPECT_EQ(code(mac0_with(key, dup)), Errc::malformed);
  EXPECT_EQ(code(mac0_with(key, map_of({{1, alg5}}), map_of({{1, alg5}}))), Errc::malformed);
  // Wrong value types.
  EXPECT_EQ(code(mac0_with(key, map_of({{1, alg5}, {4, enc_int(7)}}))), Errc::malformed);    // kid not bstr
  EXPECT_EQ(code(mac0_with(key, map_of({{1, alg5}, {15, enc_int(7)}}))), Errc::malformed);   // claims not map
  EXPECT_EQ(code(mac0_with(key, map_of({{1, alg5}, {6, enc_bytes(std::string(9, 'x'))}}))),  // seq > 8 bytes
            Errc::malformed);
  // No algorithm, a text algorithm, an unknown one.
  EXPECT_EQ(code(mac0_with(key, map_of({{4, enc_bytes("k")}}))), Errc::wrong_algorithm);
  std::string text_alg;
  cbor::Writer(text_alg).text("HS256");
  EXPECT_EQ(code(mac0_with(key, map_of({{1, text_alg}}))), Errc::wrong_algorithm);
  EXPECT_EQ(code(mac0_with(key, map_of({{1, enc_int(-999)}}))), Errc::wrong_algorithm);
  // The protected header is not a map, or has trailing bytes.
  EXPECT_EQ(code(mac0_with(key, enc_int(1))), Errc::malformed);
  EXPECT_EQ(code(mac0_with(key, map_of({{1, alg5}}) + std::string(1, '\0'))), Errc::malformed);
  // A wrong CBOR tag, and COSE_Mac (tag 97).
  std::string good = mac0_with(key, map_of({{1, alg5}}));
  std::string wrong_tag = good;
  wrong_tag[0] = static_cast<char>(0xd2);             // Sign1
  EXPECT_EQ(code(wrong_tag), Errc::wrong_algorithm);  // HMAC in a Sign1 tag
  wrong_tag = "\xd8\x63" + good.substr(1);            // tag 99
  EXPECT_EQ(code(wrong_tag), Errc::malformed);
  wrong_tag = "\xd8\x61" + good.substr(1);  // tag 97: COSE_Mac
  EXPECT_EQ(code(wrong_tag), Errc::unsupported);
  // Indefinite lengths are refused even where the content would be right.
  std::string indef = good;
  indef[1] = static_cast<char>(0x9f);  // array(4) -> indefinite array
  indef += '\xff';
  EXPECT_EQ(code(indef), Errc::malformed);
}

TEST(StrictDecoding, EncryptionHeadersFollowRfc9052) {
  const Key key = Key::generate(KeyKind::Aes256, "k");
  auto ring = Keyring::single(key);
  const auto encrypt0 = [&](const std::string& unprotected) {
    std::string out;
    cbor::Writer w(out);
    w.tag(tag::Encrypt0);
    w.array(3);
    w.bytes(map_of({{1, enc_int(alg::A256GCM)}}));
    w.raw(unprotected);
    w.bytes(std::string(32, 'c'));
    return out;
  };
  const std::string iv = enc_bytes(std::string(12, 'i'));
  auto r = ring->open(kTopic, encrypt0(map_of({{5, iv}, {6, enc_bytes("\x01")}})));
  EXPECT_EQ(r.code(), Errc::malformed);  // IV and Partial IV together
  r = ring->open(kTopic, encrypt0(map_of({{6, enc_bytes("\x01")}})));
  EXPECT_EQ(r.code(), Errc::unsupported);  // a Partial IV needs a context IV
  r = ring->open(kTopic, encrypt0(map_of({{5, enc_bytes("short")}})));
  EXPECT_EQ(r.code(), Errc::malformed);
  r = ring->open(kTopic, encrypt0(map_of({{5, iv}})));
  EXPECT_EQ(r.code(), Errc::verification_failed);
}

TEST(StrictDecoding, CompressedEphemeralKeysAreUnsupported) {
  const Key key = Key::generate(KeyKind::P256, "r", true);
  auto env = seal(Mode::EncryptTo, &key, kTopic, "x", {});
  ASSERT_TRUE(env);
  // Replace the ephemeral key's y (label -3, 0x22, a 32-byte bstr) by true.
  const std::string y_head("\x22\x58\x20", 3);
  const auto at = env->rfind(y_head);
  ASSERT_NE(at, std::string::npos);
  std::string compressed = env->substr(0, at) + "\x22\xf5" + env->substr(at + 3 + 32);
  auto r = Keyring::single(key)->open(kTopic, compressed);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::unsupported) << r.error().message();
}

TEST(StrictDecoding, InvalidEphemeralPointIsMalformed) {
  const Key key = Key::generate(KeyKind::X25519, "r");
  auto env = seal(Mode::EncryptTo, &key, kTopic, "x", {});
  ASSERT_TRUE(env);
  // An all-zero X25519 public key gives an all-zero shared secret.
  const std::string x_head("\x21\x58\x20", 3);
  const auto at = env->rfind(x_head);
  ASSERT_NE(at, std::string::npos);
  std::string zero = *env;
  std::fill(zero.begin() + static_cast<std::ptrdiff_t>(at + 3),
            zero.begin() + static_cast<std::ptrdiff_t>(at + 35), '\0');
  auto r = Keyring::single(key)->open(kTopic, zero);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.code(), Errc::malformed) << r.error().message();
}

}  // namespace
}  // namespace moat::payload::test
