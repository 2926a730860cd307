// libFuzzer target for the payload envelopes (security/payload).
//
// Every input is used twice:
//   - as an envelope: cbor::decode and payload::decode must not crash, every view
//     they return lies inside the input, and open_with() with each of a few fixed
//     keys must not crash either (it can only succeed for envelopes sealed with
//     them, which the fuzzer will not find);
//   - as a payload: the first byte picks a mode and a topic length, the rest is
//     the topic and the plaintext; sealing with a fixed key and opening again
//     must give the plaintext back, and under another topic must fail.
//
// Seeds: the COSE working group's examples (make_seeds.py --cose).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "security/payload/cbor.hpp"
#include "security/payload/cose.hpp"
#include "security/payload/key.hpp"

namespace {

namespace payload = moat::payload;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_cose: %s\n", what);
  std::abort();
}

bool inside(std::string_view part, std::string_view whole) {
  return part.empty() ||
         (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

struct Keys {
  payload::Key aes = payload::Key::generate(payload::KeyKind::Aes256, "aes");
  payload::Key chacha = payload::Key::generate(payload::KeyKind::ChaCha20, "chacha");
  payload::Key mac = payload::Key::generate(payload::KeyKind::Hmac256, "mac");
  payload::Key ed = payload::Key::generate(payload::KeyKind::Ed25519, "ed");
  payload::Key es = payload::Key::generate(payload::KeyKind::P256, "es");
  payload::Key x = payload::Key::generate(payload::KeyKind::X25519, "x");
  payload::Key p = payload::Key::generate(payload::KeyKind::P256, "p", true);
};

const Keys& keys() {
  static const Keys k;
  return k;
}

void as_envelope(std::string_view in) {
  std::string why;
  if (auto tree = payload::cbor::decode(in, why)) {
    if ((*tree)[0].encoded != in) fail("the root item does not span the input");
    for (std::uint32_t i = 0; i < tree->size(); ++i) {
      const auto& item = (*tree)[i];
      if (!inside(item.encoded, in) || !inside(item.data, in)) fail("a view points outside the input");
      if (item.end <= i || item.end > tree->size()) fail("bad subtree end");
    }
  }
  auto env = payload::decode(in);
  if (!env) return;
  if (!inside(env->protected_bytes, in) || !inside(env->content, in) || !inside(env->tag, in) ||
      !inside(env->iv, in))
    fail("an envelope view points outside the input");
  const Keys& k = keys();
  for (const payload::Key* key : {&k.aes, &k.chacha, &k.mac, &k.ed, &k.es, &k.x, &k.p}) {
    auto opened = payload::open_with(*env, key, "t");
    if (opened && env->kind != payload::Envelope::Kind::Digest) fail("an envelope the fuzzer made opened");
  }
  (void)payload::open_with(*env, nullptr, "t");
}

void as_payload(std::string_view in) {
  if (in.empty()) return;
  const auto selector = static_cast<unsigned char>(in[0]);
  in.remove_prefix(1);
  const std::size_t topic_len = std::min<std::size_t>(selector >> 3, in.size());
  const std::string topic(in.substr(0, topic_len));
  const std::string_view plaintext = in.substr(topic_len);
  const Keys& k = keys();
  struct Choice {
    payload::Mode mode;
    const payload::Key* key;
  };
  const Choice choices[8] = {{payload::Mode::Encrypt, &k.aes}, {payload::Mode::Encrypt, &k.chacha},
                             {payload::Mode::EncryptTo, &k.x}, {payload::Mode::EncryptTo, &k.p},
                             {payload::Mode::Mac, &k.mac},     {payload::Mode::Sign, &k.ed},
                             {payload::Mode::Sign, &k.es},     {payload::Mode::Digest, nullptr}};
  const Choice& c = choices[selector & 7];
  payload::SealOptions o;
  o.seq = selector;
  o.iat = 1'760'000'000;
  auto env = payload::seal(c.mode, c.key, topic, plaintext, o);
  if (!env) fail("sealing failed");
  auto d = payload::decode(*env);
  if (!d) fail("Moat cannot decode its own envelope");
  if (d->seq != o.seq || d->iat != o.iat) fail("replay headers lost");
  auto opened = payload::open_with(*d, c.key, topic);
  if (!opened || opened->plaintext != plaintext) fail("an envelope does not open to its plaintext");
  if (payload::open_with(*d, c.key, topic + "/x")) fail("an envelope opened under another topic");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  as_envelope(in);
  as_payload(in);
  return 0;
}
