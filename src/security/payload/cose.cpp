#include "security/payload/cose.hpp"

#include <cmath>

namespace moat::payload {
namespace {

using cbor::Tree;
using cbor::Type;
using crypto::Aead;

// Header labels (RFC 9052 section 3.1, RFC 9053 section 6.4, RFC 9597).
namespace label {
constexpr std::int64_t Alg = 1;
constexpr std::int64_t Crit = 2;
constexpr std::int64_t ContentType = 3;
constexpr std::int64_t Kid = 4;
constexpr std::int64_t Iv = 5;
constexpr std::int64_t PartialIv = 6;
constexpr std::int64_t CwtClaims = 15;
constexpr std::int64_t EphemeralKey = -1;
constexpr std::int64_t Salt = -20;
constexpr std::int64_t PartyUIdentity = -21;  // .. -26: PartyU nonce, other, PartyV identity, nonce, other
constexpr std::int64_t PartyVOther = -26;
}  // namespace label

// CWT claims (RFC 8392 section 3.1).
constexpr std::int64_t kClaimIat = 6;
constexpr std::int64_t kClaimCti = 7;

// COSE_Key (RFC 9052 section 7, RFC 9053 section 7).
constexpr std::int64_t kKeyKty = 1;
constexpr std::int64_t kKeyCrv = -1;
constexpr std::int64_t kKeyX = -2;
constexpr std::int64_t kKeyY = -3;
constexpr std::int64_t kKtyOkp = 1;
constexpr std::int64_t kKtyEc2 = 2;
constexpr std::int64_t kCrvP256 = 1;
constexpr std::int64_t kCrvX25519 = 4;

bool is_aead(std::int64_t a) {
  return a == alg::A128GCM || a == alg::A192GCM || a == alg::A256GCM || a == alg::ChaCha20Poly1305;
}
Aead aead_of(std::int64_t a) {
  return a == alg::ChaCha20Poly1305 ? Aead::ChaCha20Poly1305 : Aead::AesGcm;
}
std::size_t aead_key_size(std::int64_t a) {
  return a == alg::A128GCM ? 16 : a == alg::A192GCM ? 24 : 32;
}
bool is_sign(std::int64_t a) {
  return a == alg::EdDSA || a == alg::ES256;
}

std::string seq_bytes(std::uint64_t seq) {
  // Big-endian, no leading zero bytes (one byte for 0), as OSCORE encodes its Partial IV.
  std::string out;
  do {
    out.insert(out.begin(), static_cast<char>(seq & 0xff));
    seq >>= 8;
  } while (seq != 0);
  return out;
}

// ---- sealing ----

std::string protected_header(std::int64_t a, const Key* key, const SealOptions& o, bool seq_as_cti) {
  const bool kid = key && o.kid;
  const bool piv = o.seq && !seq_as_cti;
  const bool cti = o.seq && seq_as_cti;
  const bool claims = o.iat || cti;
  std::string out;
  cbor::Writer w(out);
  // Labels in the order of RFC 8949 section 4.2.1 (bytewise order of their encodings).
  w.map(1 + static_cast<std::size_t>(kid) + static_cast<std::size_t>(piv) + static_cast<std::size_t>(claims));
  w.uint(label::Alg);
  w.integer(a);
  if (kid) {
    w.uint(label::Kid);
    w.bytes(key->kid());
  }
  if (piv) {
    w.uint(label::PartialIv);
    w.bytes(seq_bytes(*o.seq));
  }
  if (claims) {
    w.uint(label::CwtClaims);
    w.map(static_cast<std::size_t>(o.iat.has_value()) + static_cast<std::size_t>(cti));
    if (o.iat) {
      w.uint(kClaimIat);
      w.integer(*o.iat);
    }
    if (cti) {
      w.uint(kClaimCti);
      w.bytes(seq_bytes(*o.seq));
    }
  }
  return out;
}

// Enc_structure (RFC 9052 section 5.3).
std::string enc_structure(std::string_view context, std::string_view protected_bytes,
                          std::string_view topic) {
  std::string out;
  cbor::Writer w(out);
  w.array(3);
  w.text(context);
  w.bytes(protected_bytes);
  w.bytes(topic);
  return out;
}

// MAC_structure, Sig_structure (RFC 9052 sections 6.3, 4.4) and Moat's
// Digest_structure up to the payload's head: the payload follows as a separate
// piece, so it is not copied.
std::string structure_prefix(std::string_view context, std::string_view protected_bytes,
                             std::string_view topic, std::size_t payload_size) {
  std::string out;
  out.reserve(32 + protected_bytes.size() + topic.size());
  cbor::Writer w(out);
  w.array(4);
  w.text(context);
  w.bytes(protected_bytes);
  w.bytes(topic);
  w.bytes_head(payload_size);
  return out;
}

// COSE_KDF_Context (RFC 9053 section 5.2) for a recipient with no PartyU/V data
// given as encoded items (empty: nil).
std::string kdf_context(std::int64_t content_alg, std::string_view recipient_protected,
                        const std::string_view (&party)[6]) {
  std::string out;
  cbor::Writer w(out);
  w.array(4);
  w.integer(content_alg);
  for (int side = 0; side < 2; ++side) {
    w.array(3);
    for (int i = 0; i < 3; ++i) {
      const std::string_view item = party[side * 3 + i];
      if (item.empty())
        w.null();
      else
        w.raw(item);
    }
  }
  w.array(2);
  w.uint(aead_key_size(content_alg) * 8);
  w.bytes(recipient_protected);
  return out;
}

const std::string& ecdh_recipient_protected() {
  static const std::string p = [] {
    std::string out;
    cbor::Writer w(out);
    w.map(1);
    w.uint(label::Alg);
    w.integer(alg::EcdhEsHkdf256);
    return out;
  }();
  return p;
}

Result<crypto::Secret> derive_cek(EVP_PKEY* own, EVP_PKEY* peer, std::int64_t content_alg,
                                  std::string_view recipient_protected, std::string_view salt,
                                  const std::string_view (&party)[6]) {
  crypto::Secret z;
  if (!crypto::ecdh(own, peer, z))
    return fail(Errc::malformed,
                "the ephemeral public key is invalid (ECDH failed or gave a low-order result)");
  crypto::Secret cek;
  if (!crypto::hkdf_sha256(z.view(), salt, kdf_context(content_alg, recipient_protected, party),
                           aead_key_size(content_alg), cek))
    return fail(Errc::malformed, "HKDF failed");
  return cek;
}

Result<std::int64_t> symmetric_aead_alg(const Key& key) {
  if (!key.is_symmetric())
    return fail(Errc::wrong_algorithm, "encrypt needs a symmetric key (aes256 or chacha20)");
  std::int64_t a = 0;
  if (key.alg()) {
    a = *key.alg();
  } else {
    a = key.secret().size() == 16 ? alg::A128GCM : key.secret().size() == 24 ? alg::A192GCM : alg::A256GCM;
  }
  if (!is_aead(a) || !key.allows(a))
    return fail(Errc::wrong_algorithm,
                "key " + key.kid() + " is for " + alg_name(a) + ", not for encryption");
  return a;
}

Result<std::string> seal_encrypt0(const Key& key, std::string_view topic, std::string_view plaintext,
                                  const SealOptions& o) {
  auto a = symmetric_aead_alg(key);
  if (!a) return a.error();
  const std::string prot = protected_header(*a, &key, o, true);
  const std::string iv = crypto::random_bytes(crypto::kAeadIvSize);
  std::string ct;
  ct.reserve(plaintext.size() + crypto::kAeadTagSize);
  if (!crypto::aead_seal(aead_of(*a), key.secret(), iv, enc_structure("Encrypt0", prot, topic), plaintext,
                         ct))
    return fail(Errc::wrong_algorithm, "encryption failed");
  std::string out;
  out.reserve(ct.size() + prot.size() + 32);
  cbor::Writer w(out);
  w.tag(tag::Encrypt0);
  w.array(3);
  w.bytes(prot);
  w.map(1);
  w.uint(label::Iv);
  w.bytes(iv);
  w.bytes(ct);
  return out;
}

void write_cose_key(cbor::Writer& w, crypto::Curve c, const std::string& x, const std::string& y) {
  const bool ec2 = c == crypto::Curve::P256;
  w.map(ec2 ? 4 : 3);
  w.uint(kKeyKty);
  w.uint(ec2 ? kKtyEc2 : kKtyOkp);
  w.integer(kKeyCrv);
  w.uint(ec2 ? kCrvP256 : kCrvX25519);
  w.integer(kKeyX);
  w.bytes(x);
  if (ec2) {
    w.integer(kKeyY);
    w.bytes(y);
  }
}

Result<std::string> seal_encrypt_to(const Key& key, std::string_view topic, std::string_view plaintext,
                                    const SealOptions& o) {
  if (!key.allows(alg::EcdhEsHkdf256))
    return fail(
        Errc::wrong_algorithm,
        "encrypt-to needs an X25519 or P-256 key for ECDH-ES + HKDF-256; key " + key.kid() + " is not one");
  if (o.content_alg != alg::A256GCM && o.content_alg != alg::ChaCha20Poly1305)
    return fail(Errc::wrong_algorithm,
                "encrypt-to encrypts with A256GCM or ChaCha20/Poly1305, not " + alg_name(o.content_alg));
  const crypto::PKey eph = crypto::generate(key.curve());
  std::string ex, ey;
  if (!eph || !crypto::raw_public(key.curve(), eph.get(), ex, ey))
    return fail(Errc::wrong_algorithm, "ephemeral key generation failed");
  const std::string& rprot = ecdh_recipient_protected();
  const std::string_view no_party[6] = {};
  auto cek = derive_cek(eph.get(), key.public_pkey(), o.content_alg, rprot, {}, no_party);
  if (!cek) return fail(Errc::wrong_algorithm, "ECDH with the recipient key failed");

  SealOptions body = o;
  body.kid = false;  // the recipient's kid goes into the recipient structure
  const std::string prot = protected_header(o.content_alg, nullptr, body, true);
  const std::string iv = crypto::random_bytes(crypto::kAeadIvSize);
  std::string ct;
  ct.reserve(plaintext.size() + crypto::kAeadTagSize);
  if (!crypto::aead_seal(aead_of(o.content_alg), cek->view(), iv, enc_structure("Encrypt", prot, topic),
                         plaintext, ct))
    return fail(Errc::wrong_algorithm, "encryption failed");
  std::string out;
  out.reserve(ct.size() + prot.size() + 160);
  cbor::Writer w(out);
  w.tag(tag::Encrypt);
  w.array(4);
  w.bytes(prot);
  w.map(1);
  w.uint(label::Iv);
  w.bytes(iv);
  w.bytes(ct);
  w.array(1);  // recipients
  w.array(3);
  w.bytes(rprot);
  w.map(o.kid ? 2 : 1);
  if (o.kid) {
    w.uint(label::Kid);
    w.bytes(key.kid());
  }
  w.integer(label::EphemeralKey);
  write_cose_key(w, key.curve(), ex, ey);
  w.bytes({});  // no encrypted key: ECDH-ES direct
  return out;
}

// Mac0, Sign1 and the digest envelope share their shape: [protected, {}, payload, tag].
std::string four_items(std::uint64_t t, bool tagged, std::string_view prot, std::string_view payload,
                       std::string_view tag_bytes) {
  std::string out;
  out.reserve(prot.size() + payload.size() + tag_bytes.size() + 16);
  cbor::Writer w(out);
  if (tagged) w.tag(t);
  w.array(4);
  w.bytes(prot);
  w.map(0);
  w.bytes(payload);
  w.bytes(tag_bytes);
  return out;
}

Result<std::string> seal_mac0(const Key& key, std::string_view topic, std::string_view plaintext,
                              const SealOptions& o) {
  if (!key.allows(alg::HMAC256))
    return fail(Errc::wrong_algorithm, "mac needs an HMAC 256/256 key; key " + key.kid() + " is not one");
  const std::string prot = protected_header(alg::HMAC256, &key, o, false);
  const auto mac =
      crypto::hmac_sha256(key.secret(), {structure_prefix("MAC0", prot, topic, plaintext.size()), plaintext});
  return four_items(tag::Mac0, true, prot, plaintext, crypto::view(mac));
}

Result<std::string> seal_sign1(const Key& key, std::string_view topic, std::string_view plaintext,
                               const SealOptions& o) {
  const std::int64_t a = key.type() == Key::Type::Ed25519 ? alg::EdDSA : alg::ES256;
  if (!key.allows(a) || !key.has_private())
    return fail(Errc::wrong_algorithm,
                "sign needs a private Ed25519 or P-256 signing key; key " + key.kid() + " is not one");
  const std::string prot = protected_header(a, &key, o, false);
  std::string prefix = structure_prefix("Signature1", prot, topic, plaintext.size());
  std::string sig;
  bool ok = false;
  if (a == alg::EdDSA) {
    prefix.append(plaintext);  // PureEdDSA signs the whole message in one piece
    ok = crypto::ed25519_sign(key.pkey(), prefix, sig);
  } else {
    ok = crypto::es256_sign(key.pkey(), {prefix, plaintext}, sig);
  }
  if (!ok) return fail(Errc::wrong_algorithm, "signing failed");
  return four_items(tag::Sign1, true, prot, plaintext, sig);
}

Result<std::string> seal_digest(const Key* key, std::string_view topic, std::string_view plaintext,
                                const SealOptions& o) {
  const std::string prot = protected_header(alg::SHA256, key, o, false);
  const auto d = crypto::sha256({structure_prefix("Digest", prot, topic, plaintext.size()), plaintext});
  return four_items(0, false, prot, plaintext, crypto::view(d));
}

// ---- decoding ----

struct Ref {
  const Tree* t = nullptr;
  std::uint32_t i = 0;
  bool prot = false;
  explicit operator bool() const { return t != nullptr; }
  const cbor::Item& item() const { return (*t)[i]; }
};

struct Label {
  bool text = false;
  std::int64_t n = 0;
  std::string_view s;
  bool operator==(const Label& o) const { return text == o.text && n == o.n && s == o.s; }
};

struct Headers {
  Ref alg, crit, kid, iv, piv, claims, eph, salt;
  Ref party[6];
  std::vector<Label> protected_labels;
};

std::optional<Label> label_of(const Tree& t, std::uint32_t i) {
  if (t[i].type == Type::Text) return Label{true, 0, t[i].data};
  if (auto n = t.as_int(i)) return Label{false, *n, {}};
  return std::nullopt;
}

Error malformed(std::string why) {
  return fail(Errc::malformed, std::move(why));
}

// Reads one header bucket into `h`.
Result<bool> read_bucket(const Tree& t, std::uint32_t map, bool prot, bool recipient, Headers& h) {
  if (t[map].type != Type::Map)
    return malformed(prot ? "the protected header is not a map" : "the unprotected header is not a map");
  for (std::uint32_t k = map + 1; k < t[map].end;) {
    const std::uint32_t v = t[k].end;
    const std::uint32_t next = t[v].end;
    const auto l = label_of(t, k);
    if (!l) return malformed("a header label is neither an integer nor a text string");
    if (prot) {
      h.protected_labels.push_back(*l);
    } else {
      for (const Label& p : h.protected_labels)
        if (p == *l) return malformed("a header label is in both the protected and the unprotected bucket");
    }
    const Ref r{&t, v, prot};
    const Type vt = t[v].type;
    const bool is_int = vt == Type::Unsigned || vt == Type::Negative;
    if (!l->text) {
      switch (l->n) {
        case label::Alg:
          if (!is_int && vt != Type::Text) return malformed("alg is neither an integer nor a text string");
          h.alg = r;
          break;
        case label::Crit:
          if (!prot) return malformed("crit must be in the protected header");
          if (vt != Type::Array || t[v].value == 0) return malformed("crit must be a non-empty array");
          h.crit = r;
          break;
        case label::ContentType:
          if (vt != Type::Unsigned && vt != Type::Text) return malformed("content type has the wrong type");
          break;
        case label::Kid:
          if (vt != Type::Bytes) return malformed("kid must be a byte string");
          h.kid = r;
          break;
        case label::Iv:
          if (vt != Type::Bytes) return malformed("IV must be a byte string");
          h.iv = r;
          break;
        case label::PartialIv:
          if (vt != Type::Bytes) return malformed("Partial IV must be a byte string");
          h.piv = r;
          break;
        case label::CwtClaims:
          if (vt != Type::Map) return malformed("CWT claims must be a map");
          h.claims = r;
          break;
        default:
          if (!recipient) break;
          if (l->n == label::EphemeralKey) {
            if (vt != Type::Map) return malformed("the ephemeral key must be a COSE_Key map");
            h.eph = r;
          } else if (l->n == label::Salt) {
            if (vt != Type::Bytes) return malformed("salt must be a byte string");
            h.salt = r;
          } else if (l->n <= label::PartyUIdentity && l->n >= label::PartyVOther) {
            h.party[label::PartyUIdentity - l->n] = r;
          }
          break;
      }
    }
    k = next;
  }
  return true;
}

bool understood(const Label& l, bool recipient) {
  if (l.text) return false;
  switch (l.n) {
    case label::Alg:
    case label::Crit:
    case label::ContentType:
    case label::Kid:
    case label::Iv:
    case label::PartialIv:
    case label::CwtClaims:
      return true;
    default:
      return recipient && (l.n == label::EphemeralKey || (l.n <= label::Salt && l.n >= label::PartyVOther));
  }
}

// Both buckets of one layer; the protected one is decoded from its bstr into `pt`.
Result<bool> read_headers(const Tree& outer, std::uint32_t prot_bstr, std::uint32_t unprot, bool recipient,
                          Tree& pt, Headers& h) {
  if (outer[prot_bstr].type != Type::Bytes) return malformed("the protected header is not a byte string");
  const std::string_view pbytes = outer[prot_bstr].data;
  if (!pbytes.empty()) {
    std::string why;
    auto t = cbor::decode(pbytes, why);
    if (!t) return malformed("protected header: " + why);
    pt = std::move(*t);
    if (auto r = read_bucket(pt, 0, true, recipient, h); !r) return r.error();
  }
  if (pt.size() == 1 && pt[0].type == Type::Map) {
    // An empty map in the bstr means no protected headers, and the structures that
    // are signed, MACed or encrypted then hold a zero-length bstr (RFC 9052 sections
    // 3 and 4.4). The caller uses protected_bytes(), which is then empty.
    pt = Tree();
  }
  if (auto r = read_bucket(outer, unprot, false, recipient, h); !r) return r.error();
  if (h.crit) {
    // RFC 9052 section 3.1: each label in crit is in the protected header and must
    // be understood, or the message is rejected.
    const Tree& t = *h.crit.t;
    for (std::uint32_t i = h.crit.i + 1; i < t[h.crit.i].end; i = t[i].end) {
      const auto l = label_of(t, i);
      if (!l) return malformed("crit lists something that is not a label");
      bool present = false;
      for (const Label& p : h.protected_labels) present = present || p == *l;
      if (!present) return malformed("crit lists a label that is not in the protected header");
      if (!understood(*l, recipient))
        return fail(Errc::unsupported,
                    "critical header " + (l->text ? "\"" + std::string(l->s) + "\"" : std::to_string(l->n)) +
                        " is not understood");
    }
  }
  return true;
}

Result<std::int64_t> alg_value(const Headers& h) {
  if (!h.alg) return fail(Errc::wrong_algorithm, "no algorithm (label 1) in the headers");
  if (h.alg.item().type == Type::Text)
    return fail(Errc::wrong_algorithm,
                "algorithm \"" + std::string(h.alg.item().data) + "\" is not supported");
  const auto a = h.alg.t->as_int(h.alg.i);
  if (!a) return fail(Errc::wrong_algorithm, "algorithm number out of range");
  return *a;
}

Result<bool> read_ephemeral(const Ref& r, Envelope::EphemeralKey& k) {
  const Tree& t = *r.t;
  const auto get = [&](std::int64_t key) { return t.find(r.i, key); };
  const auto kty = get(kKeyKty), crv = get(kKeyCrv), x = get(kKeyX), y = get(kKeyY);
  if (!kty || !crv || !x) return malformed("the ephemeral key lacks kty, crv or x");
  const auto kv = t.as_int(*kty), cv = t.as_int(*crv);
  if (!kv || !cv) return malformed("the ephemeral key's kty or crv is not an integer");
  if (t[*x].type != Type::Bytes) return malformed("the ephemeral key's x is not a byte string");
  k.kty = *kv;
  k.crv = *cv;
  k.x = t[*x].data;
  if (k.kty == kKtyEc2) {
    if (!y) return malformed("the ephemeral EC2 key lacks y");
    if (t[*y].type == Type::Bool)
      return fail(Errc::unsupported, "compressed ephemeral points (y as a sign bit) are not supported");
    if (t[*y].type != Type::Bytes) return malformed("the ephemeral key's y is not a byte string");
    k.y = t[*y].data;
  }
  return true;
}

// Reads the replay headers of the body.
Result<bool> read_freshness(const Headers& h, Envelope& env) {
  std::optional<std::string_view> seq;
  if (h.piv && h.piv.prot && env.kind != Envelope::Kind::Encrypt0 && env.kind != Envelope::Kind::Encrypt)
    seq = h.piv.item().data;
  if (h.claims && h.claims.prot) {
    const Tree& t = *h.claims.t;
    if (auto iat = t.find(h.claims.i, kClaimIat)) {
      if (auto n = t.as_int(*iat)) {
        env.iat = *n;
      } else if (t[*iat].type == Type::Float && std::isfinite(t[*iat].number) &&
                 std::fabs(t[*iat].number) < 1e15) {
        env.iat = static_cast<std::int64_t>(std::floor(t[*iat].number));
      } else {
        return malformed("the iat claim is not a number of seconds");
      }
    }
    if (auto cti = t.find(h.claims.i, kClaimCti); cti && !seq) {
      if (t[*cti].type != Type::Bytes) return malformed("the cti claim is not a byte string");
      seq = t[*cti].data;
    }
  }
  if (seq) {
    if (seq->empty() || seq->size() > 8) return malformed("the sequence number is not 1 to 8 bytes");
    std::uint64_t v = 0;
    for (char c : *seq) v = (v << 8) | static_cast<unsigned char>(c);
    env.seq = v;
  }
  return true;
}

Result<Envelope::Kind> kind_for(std::int64_t a, std::uint32_t size, bool recipients_array) {
  if (size == 3) {
    if (is_aead(a)) return Envelope::Kind::Encrypt0;
  } else if (size == 4 && recipients_array) {
    if (is_aead(a)) return Envelope::Kind::Encrypt;
  } else if (size == 4) {
    if (a == alg::HMAC256) return Envelope::Kind::Mac0;
    if (is_sign(a)) return Envelope::Kind::Sign1;
    if (a == alg::SHA256) return Envelope::Kind::Digest;
  }
  return fail(Errc::wrong_algorithm, "algorithm " + alg_name(a) + " is not one Moat opens in this structure");
}

Result<bool> read_recipient(const Tree& outer, std::uint32_t r, Envelope& env) {
  if (outer[r].type != Type::Array) return malformed("a recipient is not an array");
  if (outer[r].value == 4) return fail(Errc::unsupported, "nested recipients are not supported");
  if (outer[r].value != 3) return malformed("a recipient is not an array of 3");
  Envelope::Recipient rec;
  Tree pt;
  Headers h;
  if (auto ok = read_headers(outer, outer.child(r, 0), outer.child(r, 1), true, pt, h); !ok)
    return ok.error();
  auto a = alg_value(h);
  if (!a) return a.error();
  rec.alg = *a;
  rec.protected_bytes = pt.size() == 0 ? std::string_view() : outer[outer.child(r, 0)].data;
  const std::uint32_t ct = outer.child(r, 2);
  if (outer[ct].type != Type::Bytes) return malformed("a recipient's ciphertext is not a byte string");
  if (h.kid) rec.kid = h.kid.item().data;
  if (rec.alg == alg::Direct) {
    if (!rec.protected_bytes.empty() || !outer[ct].data.empty())
      return malformed("a direct recipient has a protected header or a ciphertext");
  } else if (rec.alg == alg::EcdhEsHkdf256) {
    if (!outer[ct].data.empty()) return malformed("an ECDH-ES direct recipient has a ciphertext");
    if (!h.eph) return malformed("the ECDH-ES recipient has no ephemeral key (label -1)");
    Envelope::EphemeralKey k;
    if (auto ok = read_ephemeral(h.eph, k); !ok) return ok.error();
    rec.ephemeral = k;
    if (h.salt) rec.salt = h.salt.item().data;
    for (int i = 0; i < 6; ++i)
      if (h.party[i]) rec.party[i] = h.party[i].item().encoded;
  } else {
    return fail(Errc::wrong_algorithm, "recipient algorithm " + alg_name(rec.alg) +
                                           " is not supported (direct, ECDH-ES + HKDF-256)");
  }
  // A protected-header tree of a recipient is not kept: every value used above
  // is a view into the input bytes.
  env.recipients.push_back(rec);
  return true;
}

}  // namespace

std::string_view to_string(Mode m) {
  switch (m) {
    case Mode::Encrypt:
      return "encrypt";
    case Mode::EncryptTo:
      return "encrypt-to";
    case Mode::Mac:
      return "mac";
    case Mode::Sign:
      return "sign";
    case Mode::Digest:
      return "digest";
  }
  return "?";
}

std::optional<Mode> parse_mode(std::string_view s) {
  for (Mode m : {Mode::Encrypt, Mode::EncryptTo, Mode::Mac, Mode::Sign, Mode::Digest})
    if (to_string(m) == s) return m;
  return std::nullopt;
}

Mode mode_of(Envelope::Kind k) {
  switch (k) {
    case Envelope::Kind::Encrypt0:
      return Mode::Encrypt;
    case Envelope::Kind::Encrypt:
      return Mode::EncryptTo;
    case Envelope::Kind::Mac0:
      return Mode::Mac;
    case Envelope::Kind::Sign1:
      return Mode::Sign;
    case Envelope::Kind::Digest:
      return Mode::Digest;
  }
  return Mode::Digest;
}

Result<std::string> seal(Mode mode, const Key* key, std::string_view topic, std::string_view plaintext,
                         const SealOptions& options) {
  if (mode != Mode::Digest && !key) return fail(Errc::unknown_key, "no key given");
  switch (mode) {
    case Mode::Encrypt:
      return seal_encrypt0(*key, topic, plaintext, options);
    case Mode::EncryptTo:
      return seal_encrypt_to(*key, topic, plaintext, options);
    case Mode::Mac:
      return seal_mac0(*key, topic, plaintext, options);
    case Mode::Sign:
      return seal_sign1(*key, topic, plaintext, options);
    case Mode::Digest:
      return seal_digest(key, topic, plaintext, options);
  }
  return fail(Errc::wrong_algorithm, "unknown mode");
}

Result<Envelope> decode(std::string_view bytes) {
  Envelope env;
  std::string why;
  auto tree = cbor::decode(bytes, why);
  if (!tree) return malformed(why);
  env.outer = std::move(*tree);
  const Tree& t = env.outer;

  std::uint32_t root = 0;
  std::optional<std::uint64_t> message_tag;
  if (t[0].type == Type::Tag) {
    message_tag = t[0].value;
    root = 1;
    if (*message_tag == tag::Mac || *message_tag == tag::Sign)
      return fail(Errc::unsupported,
                  "COSE_Mac and COSE_Sign (tags 97, 98) are not supported; use Mac0 or Sign1");
    if (*message_tag != tag::Encrypt0 && *message_tag != tag::Encrypt && *message_tag != tag::Mac0 &&
        *message_tag != tag::Sign1)
      return malformed("CBOR tag " + std::to_string(*message_tag) + " is not a COSE message tag");
  }
  env.tagged = message_tag.has_value();
  if (t[root].type != Type::Array) return malformed("a COSE message is an array");
  const auto size = static_cast<std::uint32_t>(t[root].value);
  if (size != 3 && size != 4) return malformed("a COSE message is an array of 3 or 4 items");

  Headers h;
  if (auto ok = read_headers(t, t.child(root, 0), t.child(root, 1), false, env.protected_, h); !ok)
    return ok.error();
  env.protected_bytes = env.protected_.size() == 0 ? std::string_view() : t[t.child(root, 0)].data;
  auto a = alg_value(h);
  if (!a) return a.error();
  env.alg = *a;

  const bool recipients_array = size == 4 && t[t.child(root, 3)].type == Type::Array;
  if (message_tag) {
    // The structure the tag names must hold, and the algorithm must be of its class.
    const std::uint32_t want = *message_tag == tag::Encrypt0 ? 3 : 4;
    if (size != want || recipients_array != (*message_tag == tag::Encrypt))
      return malformed("the array does not have the shape of CBOR tag " + std::to_string(*message_tag));
  }
  auto kind = kind_for(env.alg, size, recipients_array);
  if (!kind) return kind.error();
  env.kind = *kind;
  if (message_tag) {
    const bool fits = (*message_tag == tag::Encrypt0 && env.kind == Envelope::Kind::Encrypt0) ||
                      (*message_tag == tag::Encrypt && env.kind == Envelope::Kind::Encrypt) ||
                      (*message_tag == tag::Mac0 && env.kind == Envelope::Kind::Mac0) ||
                      (*message_tag == tag::Sign1 && env.kind == Envelope::Kind::Sign1);
    if (!fits)
      return fail(Errc::wrong_algorithm, "algorithm " + alg_name(env.alg) + " does not belong in CBOR tag " +
                                             std::to_string(*message_tag));
  }

  const std::uint32_t content = t.child(root, 2);
  if (t[content].type == Type::Null)
    return fail(Errc::unsupported, "detached content (nil payload) is not supported");
  if (t[content].type != Type::Bytes) return malformed("the payload or ciphertext is not a byte string");
  env.content = t[content].data;
  if (h.kid) env.kid = h.kid.item().data;

  const bool encrypting = env.kind == Envelope::Kind::Encrypt0 || env.kind == Envelope::Kind::Encrypt;
  if (encrypting) {
    if (h.piv && h.iv) return malformed("IV and Partial IV are both present (RFC 9052 section 3.1)");
    if (h.piv) return fail(Errc::unsupported, "a Partial IV needs a context IV, which Moat keys do not have");
    if (!h.iv) return malformed("no IV (label 5)");
    if (h.iv.item().data.size() != crypto::kAeadIvSize) return malformed("the IV is not 12 bytes");
    env.iv = h.iv.item().data;
  } else {
    const std::uint32_t tg = t.child(root, 3);
    if (t[tg].type != Type::Bytes) return malformed("the tag or signature is not a byte string");
    env.tag = t[tg].data;
  }
  if (env.kind == Envelope::Kind::Encrypt) {
    const std::uint32_t rs = t.child(root, 3);
    if (t[rs].value == 0) return malformed("COSE_Encrypt without recipients");
    for (std::uint32_t r = rs + 1; r < t[rs].end; r = t[r].end)
      if (auto ok = read_recipient(t, r, env); !ok) return ok.error();
  }
  if (auto ok = read_freshness(h, env); !ok) return ok.error();
  return env;
}

std::optional<std::string_view> wanted_kid(const Envelope& env) {
  if (env.kind == Envelope::Kind::Encrypt) {
    for (const auto& r : env.recipients)
      if (r.kid) return r.kid;
    return std::nullopt;
  }
  return env.kid;
}

Result<Opened> open_with(const Envelope& env, const Key* key, std::string_view topic) {
  Opened o;
  o.mode = mode_of(env.kind);
  o.alg = env.alg;
  o.seq = env.seq;
  o.iat = env.iat;
  const Error tampered = fail(Errc::verification_failed, "");
  switch (env.kind) {
    case Envelope::Kind::Encrypt0: {
      if (!key || !key->allows(env.alg))
        return fail(Errc::wrong_algorithm, "the key is not for " + alg_name(env.alg));
      if (!crypto::aead_open(aead_of(env.alg), key->secret(), env.iv,
                             enc_structure("Encrypt0", env.protected_bytes, topic), env.content, o.plaintext))
        return tampered;
      break;
    }
    case Envelope::Kind::Encrypt: {
      if (!key) return fail(Errc::unknown_key, "no key given");
      // The recipient this key opens: the one with its kid, or else the first one
      // of the key's kind.
      const Envelope::Recipient* rec = nullptr;
      for (const auto& r : env.recipients)
        if (!rec && r.kid && *r.kid == key->kid()) rec = &r;
      for (const auto& r : env.recipients)
        if (!rec && (r.alg == alg::Direct) == key->is_symmetric()) rec = &r;
      if (!rec) return fail(Errc::wrong_algorithm, "no recipient of this envelope is for key " + key->kid());
      crypto::Secret cek_storage;
      std::string_view cek;
      if (rec->alg == alg::Direct) {
        if (!key->is_symmetric() || !key->allows(env.alg))
          return fail(Errc::wrong_algorithm, "key " + key->kid() + " is not for " + alg_name(env.alg));
        cek = key->secret();
      } else {
        if (!key->allows(alg::EcdhEsHkdf256) || !key->has_private())
          return fail(Errc::wrong_algorithm, "key " + key->kid() + " is not a private ECDH key");
        if (env.alg != alg::A128GCM && env.alg != alg::A192GCM && env.alg != alg::A256GCM &&
            env.alg != alg::ChaCha20Poly1305)
          return fail(Errc::wrong_algorithm, "content algorithm " + alg_name(env.alg) + " is not supported");
        const auto& e = *rec->ephemeral;
        const bool x25519 = key->type() == Key::Type::X25519;
        if (e.kty != (x25519 ? kKtyOkp : kKtyEc2) || e.crv != (x25519 ? kCrvX25519 : kCrvP256))
          return fail(Errc::wrong_algorithm, "the ephemeral key is not on the curve of key " + key->kid());
        const crypto::PKey peer = crypto::public_key(key->curve(), e.x, e.y);
        if (!peer) return malformed("the ephemeral public key is not a valid point");
        auto derived =
            derive_cek(key->pkey(), peer.get(), env.alg, rec->protected_bytes, rec->salt, rec->party);
        if (!derived) return derived.error();
        cek_storage = std::move(*derived);
        cek = cek_storage.view();
        // Each envelope has its own ephemeral key: a replayed envelope repeats it.
        o.sender = std::string(e.x) + std::string(e.y);
      }
      if (!crypto::aead_open(aead_of(env.alg), cek, env.iv,
                             enc_structure("Encrypt", env.protected_bytes, topic), env.content, o.plaintext))
        return tampered;
      break;
    }
    case Envelope::Kind::Mac0: {
      if (!key || !key->allows(env.alg))
        return fail(Errc::wrong_algorithm, "the key is not for " + alg_name(env.alg));
      const auto mac = crypto::hmac_sha256(
          key->secret(),
          {structure_prefix("MAC0", env.protected_bytes, topic, env.content.size()), env.content});
      if (!crypto::equal(crypto::view(mac), env.tag)) return tampered;
      o.plaintext.assign(env.content);
      break;
    }
    case Envelope::Kind::Sign1: {
      if (!key || !key->allows(env.alg))
        return fail(Errc::wrong_algorithm, "the key is not for " + alg_name(env.alg));
      std::string prefix = structure_prefix("Signature1", env.protected_bytes, topic, env.content.size());
      if (env.alg == alg::EdDSA) {
        const std::size_t head = prefix.size();
        prefix.reserve(head + env.content.size());
        prefix.append(env.content);
        if (!crypto::ed25519_verify(key->public_pkey(), prefix, env.tag)) return tampered;
        // The payload is the tail of the signed bytes: reuse that buffer.
        prefix.erase(0, head);
        o.plaintext = std::move(prefix);
      } else {
        if (!crypto::es256_verify(key->public_pkey(), {prefix, env.content}, env.tag)) return tampered;
        o.plaintext.assign(env.content);
      }
      break;
    }
    case Envelope::Kind::Digest: {
      const auto d = crypto::sha256(
          {structure_prefix("Digest", env.protected_bytes, topic, env.content.size()), env.content});
      if (!crypto::equal(crypto::view(d), env.tag)) return tampered;
      o.plaintext.assign(env.content);
      if (env.kid) o.kid = std::string(*env.kid);
      o.sender = o.kid;
      return o;
    }
  }
  o.kid = key->kid();
  if (o.sender.empty()) o.sender = key->kid();
  return o;
}

}  // namespace moat::payload
