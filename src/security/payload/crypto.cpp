#include "security/payload/crypto.hpp"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>

#include <stdexcept>

namespace moat::payload::crypto {
namespace {

const unsigned char* u8(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// Algorithms are fetched once (an implicit fetch per call costs a lock and a lookup
// in OpenSSL 3) and live for the whole process.
const EVP_CIPHER* cipher(Aead alg, std::size_t key_size) {
  static EVP_CIPHER* const aes128 = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
  static EVP_CIPHER* const aes192 = EVP_CIPHER_fetch(nullptr, "AES-192-GCM", nullptr);
  static EVP_CIPHER* const aes256 = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  static EVP_CIPHER* const chacha = EVP_CIPHER_fetch(nullptr, "ChaCha20-Poly1305", nullptr);
  if (alg == Aead::ChaCha20Poly1305) return key_size == 32 ? chacha : nullptr;
  switch (key_size) {
    case 16:
      return aes128;
    case 24:
      return aes192;
    case 32:
      return aes256;
    default:
      return nullptr;
  }
}

const EVP_MD* sha256_md() {
  static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA2-256", nullptr);
  return md;
}

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;
struct PKeyCtxFree {
  void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};
using PKeyCtx = std::unique_ptr<EVP_PKEY_CTX, PKeyCtxFree>;
struct BnFree {
  void operator()(BIGNUM* b) const { BN_clear_free(b); }
};
using Bn = std::unique_ptr<BIGNUM, BnFree>;

PKey own(EVP_PKEY* p) {
  return p ? PKey(p, PKeyFree{}) : PKey();
}

int int_size(std::size_t n) {
  if (n > static_cast<std::size_t>(INT32_MAX)) throw std::length_error("input larger than 2 GiB");
  return static_cast<int>(n);
}

const char* okp_name(Curve c) {
  return c == Curve::Ed25519 ? "ED25519" : "X25519";
}
int okp_id(Curve c) {
  return c == Curve::Ed25519 ? EVP_PKEY_ED25519 : EVP_PKEY_X25519;
}

bool is_curve(Curve c, const EVP_PKEY* key) {
  if (!key) return false;
  if (c == Curve::P256) {
    char group[32] = {};
    std::size_t len = 0;
    return EVP_PKEY_is_a(key, "EC") &&
           EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &len) == 1 &&
           std::string_view(group, len) == "prime256v1";
  }
  return EVP_PKEY_is_a(key, okp_name(c));
}

// A P-256 key from its parts: public point (always) and private scalar (optional).
PKey p256_from(std::string_view x, std::string_view y, const BIGNUM* d) {
  if (x.size() != 32 || y.size() != 32) return {};
  std::string point;
  point.reserve(65);
  point.push_back('\x04');  // uncompressed (SEC 1 section 2.3.3)
  point.append(x);
  point.append(y);
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  if (!bld) return {};
  OSSL_PARAM* params = nullptr;
  if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) == 1 &&
      OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) == 1 &&
      (!d || OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, d) == 1)) {
    params = OSSL_PARAM_BLD_to_param(bld);
  }
  OSSL_PARAM_BLD_free(bld);
  if (!params) return {};
  EVP_PKEY* raw = nullptr;
  PKeyCtx ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  if (ctx && EVP_PKEY_fromdata_init(ctx.get()) == 1) {
    EVP_PKEY_fromdata(ctx.get(), &raw, d ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params);
  }
  OSSL_PARAM_free(params);
  PKey key = own(raw);
  if (!key) return {};
  // On the curve and not the point at infinity. P-256 has cofactor 1, so every
  // point on the curve is in the prime-order group: the "quick" check suffices.
  PKeyCtx check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (!check || EVP_PKEY_public_check_quick(check.get()) != 1) return {};
  return key;
}

}  // namespace

void PKeyFree::operator()(EVP_PKEY* p) const {
  EVP_PKEY_free(p);
}

Secret& Secret::operator=(const Secret& o) {
  if (this != &o) {
    wipe();
    bytes_ = o.bytes_;
  }
  return *this;
}

Secret& Secret::operator=(Secret&& o) noexcept {
  if (this != &o) {
    wipe();
    bytes_ = std::move(o.bytes_);
    o.wipe();
  }
  return *this;
}

void Secret::wipe() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
  bytes_.clear();
}

// ---- AEAD ----

bool aead_seal(Aead alg, std::string_view key, std::string_view iv, std::string_view aad,
               std::string_view plaintext, std::string& out) {
  const EVP_CIPHER* c = cipher(alg, key.size());
  if (!c || iv.size() != kAeadIvSize) return false;
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx || EVP_EncryptInit_ex2(ctx.get(), c, u8(key), u8(iv), nullptr) != 1) return false;
  int n = 0;
  if (!aad.empty() && EVP_EncryptUpdate(ctx.get(), nullptr, &n, u8(aad), int_size(aad.size())) != 1)
    return false;
  const std::size_t start = out.size();
  out.resize(start + plaintext.size() + kAeadTagSize);
  auto* dst = reinterpret_cast<unsigned char*>(out.data() + start);
  int written = 0;
  if (!plaintext.empty()) {
    if (EVP_EncryptUpdate(ctx.get(), dst, &n, u8(plaintext), int_size(plaintext.size())) != 1) {
      out.resize(start);
      return false;
    }
    written = n;
  }
  if (EVP_EncryptFinal_ex(ctx.get(), dst + written, &n) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, kAeadTagSize, dst + plaintext.size()) != 1) {
    out.resize(start);
    return false;
  }
  return true;
}

bool aead_open(Aead alg, std::string_view key, std::string_view iv, std::string_view aad,
               std::string_view ciphertext_and_tag, std::string& out) {
  out.clear();
  const EVP_CIPHER* c = cipher(alg, key.size());
  if (!c || iv.size() != kAeadIvSize || ciphertext_and_tag.size() < kAeadTagSize) return false;
  const std::string_view ct = ciphertext_and_tag.substr(0, ciphertext_and_tag.size() - kAeadTagSize);
  std::string tag(ciphertext_and_tag.substr(ct.size()));
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx || EVP_DecryptInit_ex2(ctx.get(), c, u8(key), u8(iv), nullptr) != 1) return false;
  int n = 0;
  if (!aad.empty() && EVP_DecryptUpdate(ctx.get(), nullptr, &n, u8(aad), int_size(aad.size())) != 1)
    return false;
  out.resize(ct.size());
  auto* dst = reinterpret_cast<unsigned char*>(out.data());
  int written = 0;
  if (!ct.empty()) {
    if (EVP_DecryptUpdate(ctx.get(), dst, &n, u8(ct), int_size(ct.size())) != 1) {
      OPENSSL_cleanse(out.data(), out.size());
      out.clear();
      return false;
    }
    written = n;
  }
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, kAeadTagSize, tag.data()) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), dst + written, &n) != 1) {
    // Never hand out plaintext that failed authentication.
    OPENSSL_cleanse(out.data(), out.size());
    out.clear();
    return false;
  }
  return true;
}

// ---- hashes, MAC, KDF ----

Digest sha256(std::initializer_list<std::string_view> pieces) {
  Digest d{};
  MdCtx ctx(EVP_MD_CTX_new());
  unsigned int len = 0;
  if (!ctx || EVP_DigestInit_ex2(ctx.get(), sha256_md(), nullptr) != 1) throw std::bad_alloc();
  for (auto p : pieces) EVP_DigestUpdate(ctx.get(), p.data(), p.size());
  if (EVP_DigestFinal_ex(ctx.get(), d.data(), &len) != 1) throw std::runtime_error("SHA-256 failed");
  return d;
}

Digest hmac_sha256(std::string_view key, std::initializer_list<std::string_view> pieces) {
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  Digest d{};
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(mac);
  if (!ctx) throw std::bad_alloc();
  char digest_name[] = "SHA2-256";
  const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
                               OSSL_PARAM_construct_end()};
  // A zero-length key is still a key: pass a valid pointer, never null.
  static const unsigned char empty = 0;
  bool ok = EVP_MAC_init(ctx, key.empty() ? &empty : u8(key), key.size(), params) == 1;
  for (auto p : pieces) ok = ok && EVP_MAC_update(ctx, u8(p), p.size()) == 1;
  std::size_t len = 0;
  ok = ok && EVP_MAC_final(ctx, d.data(), &len, d.size()) == 1 && len == d.size();
  EVP_MAC_CTX_free(ctx);
  if (!ok) throw std::runtime_error("HMAC-SHA-256 failed");
  return d;
}

bool equal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

bool hkdf_sha256(std::string_view ikm, std::string_view salt, std::string_view info, std::size_t length,
                 Secret& out) {
  if (length == 0 || length > std::size_t{255} * 32) return false;
  static EVP_KDF* const kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  if (!ctx) throw std::bad_alloc();
  char digest[] = "SHA2-256";
  // OpenSSL takes the parameters as non-const pointers (it does not write to them)
  // and refuses a null pointer even for zero bytes.
  static char empty = 0;
  const auto octets = [](const char* name, std::string_view v) {
    return OSSL_PARAM_construct_octet_string(name, v.empty() ? &empty : const_cast<char*>(v.data()),
                                             v.size());
  };
  // RFC 5869 section 2.2: without a salt, HMAC's key is HashLen zeros, which is
  // what an empty salt gives too.
  const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
                               octets(OSSL_KDF_PARAM_KEY, ikm), octets(OSSL_KDF_PARAM_SALT, salt),
                               octets(OSSL_KDF_PARAM_INFO, info), OSSL_PARAM_construct_end()};
  std::string okm(length, '\0');
  const bool ok = EVP_KDF_derive(ctx, reinterpret_cast<unsigned char*>(okm.data()), okm.size(), params) == 1;
  EVP_KDF_CTX_free(ctx);
  if (!ok) {
    OPENSSL_cleanse(okm.data(), okm.size());
    return false;
  }
  out = Secret(std::move(okm));
  return true;
}

// ---- asymmetric keys ----

PKey public_key(Curve c, std::string_view x, std::string_view y) {
  if (c == Curve::P256) return p256_from(x, y, nullptr);
  if (x.size() != 32 || !y.empty()) return {};
  return own(EVP_PKEY_new_raw_public_key(okp_id(c), nullptr, u8(x), x.size()));
}

PKey private_key(Curve c, std::string_view d) {
  if (d.size() != 32) return {};
  if (c != Curve::P256) return own(EVP_PKEY_new_raw_private_key(okp_id(c), nullptr, u8(d), d.size()));
  // P-256: the public point is computed from the scalar.
  Bn scalar(BN_bin2bn(u8(d), 32, nullptr));
  EC_GROUP* group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  EC_POINT* pub = group ? EC_POINT_new(group) : nullptr;
  PKey key;
  if (scalar && pub && !BN_is_zero(scalar.get()) && BN_cmp(scalar.get(), EC_GROUP_get0_order(group)) < 0 &&
      EC_POINT_mul(group, pub, scalar.get(), nullptr, nullptr, nullptr) == 1) {
    unsigned char buf[65];
    if (EC_POINT_point2oct(group, pub, POINT_CONVERSION_UNCOMPRESSED, buf, sizeof buf, nullptr) == 65) {
      const std::string_view point(reinterpret_cast<const char*>(buf), 65);
      key = p256_from(point.substr(1, 32), point.substr(33, 32), scalar.get());
    }
  }
  EC_POINT_free(pub);
  EC_GROUP_free(group);
  return key;
}

PKey generate(Curve c) {
  if (c == Curve::P256) return own(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  return own(EVP_PKEY_Q_keygen(nullptr, nullptr, okp_name(c)));
}

bool raw_public(Curve c, const EVP_PKEY* key, std::string& x, std::string& y) {
  if (!is_curve(c, key)) return false;
  if (c != Curve::P256) {
    unsigned char buf[32];
    std::size_t len = sizeof buf;
    if (EVP_PKEY_get_raw_public_key(key, buf, &len) != 1 || len != 32) return false;
    x.assign(reinterpret_cast<const char*>(buf), len);
    y.clear();
    return true;
  }
  BIGNUM* bx = nullptr;
  BIGNUM* by = nullptr;
  bool ok = EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &bx) == 1 &&
            EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &by) == 1;
  if (ok) {
    x.assign(32, '\0');
    y.assign(32, '\0');
    ok = BN_bn2binpad(bx, reinterpret_cast<unsigned char*>(x.data()), 32) == 32 &&
         BN_bn2binpad(by, reinterpret_cast<unsigned char*>(y.data()), 32) == 32;
  }
  BN_free(bx);
  BN_free(by);
  return ok;
}

bool raw_private(Curve c, const EVP_PKEY* key, Secret& d) {
  if (!is_curve(c, key)) return false;
  std::string buf(32, '\0');
  bool ok = false;
  if (c != Curve::P256) {
    std::size_t len = buf.size();
    ok = EVP_PKEY_get_raw_private_key(key, reinterpret_cast<unsigned char*>(buf.data()), &len) == 1 &&
         len == 32;
  } else {
    BIGNUM* bd = nullptr;
    ok = EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_PRIV_KEY, &bd) == 1 &&
         BN_bn2binpad(bd, reinterpret_cast<unsigned char*>(buf.data()), 32) == 32;
    BN_clear_free(bd);
  }
  d = Secret(std::move(buf));
  return ok;
}

bool ed25519_sign(EVP_PKEY* key, std::string_view msg, std::string& sig) {
  MdCtx ctx(EVP_MD_CTX_new());
  std::size_t len = 64;
  sig.assign(64, '\0');
  return ctx && EVP_DigestSignInit_ex(ctx.get(), nullptr, nullptr, nullptr, nullptr, key, nullptr) == 1 &&
         EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, u8(msg), msg.size()) ==
             1 &&
         len == 64;
}

bool ed25519_verify(EVP_PKEY* key, std::string_view msg, std::string_view sig) {
  if (sig.size() != 64) return false;
  MdCtx ctx(EVP_MD_CTX_new());
  return ctx && EVP_DigestVerifyInit_ex(ctx.get(), nullptr, nullptr, nullptr, nullptr, key, nullptr) == 1 &&
         EVP_DigestVerify(ctx.get(), u8(sig), sig.size(), u8(msg), msg.size()) == 1;
}

bool es256_sign(EVP_PKEY* key, std::initializer_list<std::string_view> pieces, std::string& sig) {
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestSignInit_ex(ctx.get(), nullptr, "SHA2-256", nullptr, nullptr, key, nullptr) != 1)
    return false;
  for (auto p : pieces)
    if (EVP_DigestSignUpdate(ctx.get(), p.data(), p.size()) != 1) return false;
  unsigned char der[80];
  std::size_t der_len = sizeof der;
  if (EVP_DigestSignFinal(ctx.get(), der, &der_len) != 1) return false;
  const unsigned char* p = der;
  ECDSA_SIG* s = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len));
  if (!s) return false;
  sig.assign(64, '\0');
  auto* out = reinterpret_cast<unsigned char*>(sig.data());
  const bool ok = BN_bn2binpad(ECDSA_SIG_get0_r(s), out, 32) == 32 &&
                  BN_bn2binpad(ECDSA_SIG_get0_s(s), out + 32, 32) == 32;
  ECDSA_SIG_free(s);
  return ok;
}

bool es256_verify(EVP_PKEY* key, std::initializer_list<std::string_view> pieces, std::string_view sig) {
  // P1363: r and s, each exactly the size of the group order (RFC 9053 section 2.1).
  if (sig.size() != 64) return false;
  ECDSA_SIG* s = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(u8(sig), 32, nullptr);
  BIGNUM* ss = BN_bin2bn(u8(sig) + 32, 32, nullptr);
  if (!s || !r || !ss || ECDSA_SIG_set0(s, r, ss) != 1) {
    ECDSA_SIG_free(s);
    BN_free(r);
    BN_free(ss);
    return false;
  }
  unsigned char der[80];
  unsigned char* p = der;
  const int der_len = i2d_ECDSA_SIG(s, nullptr) <= static_cast<int>(sizeof der) ? i2d_ECDSA_SIG(s, &p) : -1;
  ECDSA_SIG_free(s);
  if (der_len <= 0) return false;
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit_ex(ctx.get(), nullptr, "SHA2-256", nullptr, nullptr, key, nullptr) != 1)
    return false;
  for (auto piece : pieces)
    if (EVP_DigestVerifyUpdate(ctx.get(), piece.data(), piece.size()) != 1) return false;
  return EVP_DigestVerifyFinal(ctx.get(), der, static_cast<std::size_t>(der_len)) == 1;
}

bool ecdh(EVP_PKEY* own_private, EVP_PKEY* peer_public, Secret& shared) {
  PKeyCtx ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, own_private, nullptr));
  std::size_t len = 0;
  // The peer key was checked when it was made (public_key()); a full check here
  // would multiply by the group order again.
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 ||
      EVP_PKEY_derive_set_peer_ex(ctx.get(), peer_public, 0) != 1 ||
      EVP_PKEY_derive(ctx.get(), nullptr, &len) != 1 || len != 32)
    return false;
  std::string out(len, '\0');
  if (EVP_PKEY_derive(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len) != 1 || len != 32) {
    OPENSSL_cleanse(out.data(), out.size());
    return false;
  }
  // RFC 7748 section 6.1: an all-zero X25519 output means a low-order point. (On
  // P-256 an x coordinate of zero is a valid point.)
  static const std::string zeros(32, '\0');
  if (EVP_PKEY_is_a(own_private, "X25519") && equal(out, zeros)) {
    OPENSSL_cleanse(out.data(), out.size());
    return false;
  }
  shared = Secret(std::move(out));
  return true;
}

std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  if (n > 0 && RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), int_size(n)) != 1)
    throw std::runtime_error("the random number generator failed");
  return out;
}

}  // namespace moat::payload::crypto
