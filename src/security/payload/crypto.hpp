// The cryptographic primitives of the envelopes, on OpenSSL 3. The envelope code
// calls these functions and nothing else, and the Wycheproof tests
// (tests/unit/payload/test_wycheproof.cpp) run the same functions, so a vector
// that passes here passes in an envelope.
#pragma once

#include <openssl/types.h>

#include <array>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace moat::payload::crypto {

// Bytes wiped from memory when destroyed (key material, shared secrets).
class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string bytes) : bytes_(std::move(bytes)) {}
  Secret(const Secret& o) : bytes_(o.bytes_) {}
  Secret& operator=(const Secret& o);
  Secret(Secret&& o) noexcept : bytes_(std::move(o.bytes_)) { o.wipe(); }
  Secret& operator=(Secret&& o) noexcept;
  ~Secret() { wipe(); }

  std::string_view view() const { return bytes_; }
  std::string& bytes() { return bytes_; }
  std::size_t size() const { return bytes_.size(); }
  bool empty() const { return bytes_.empty(); }

 private:
  void wipe();
  std::string bytes_;
};

// ---- AEAD: AES-GCM (128/192/256-bit keys) and ChaCha20-Poly1305 ----

enum class Aead : std::uint8_t { AesGcm, ChaCha20Poly1305 };
inline constexpr std::size_t kAeadIvSize = 12;   // RFC 9053 sections 4.1 and 4.3: 96-bit nonces
inline constexpr std::size_t kAeadTagSize = 16;  // 128-bit tags

// Appends ciphertext || tag to `out`. False if the key or IV size is not one
// the algorithm takes in COSE (IV: 12 bytes; key: 16/24/32 for AES-GCM, 32 for ChaCha20).
bool aead_seal(Aead alg, std::string_view key, std::string_view iv, std::string_view aad,
               std::string_view plaintext, std::string& out);
// Replaces `out` with the plaintext. False (and `out` empty) if the sizes are wrong
// or the tag does not verify.
bool aead_open(Aead alg, std::string_view key, std::string_view iv, std::string_view aad,
               std::string_view ciphertext_and_tag, std::string& out);

// ---- hashes, MAC, KDF ----

using Digest = std::array<unsigned char, 32>;

// SHA-256 of the concatenation of the pieces.
Digest sha256(std::initializer_list<std::string_view> pieces);
// HMAC-SHA-256 (RFC 2104) of the concatenation of the pieces.
Digest hmac_sha256(std::string_view key, std::initializer_list<std::string_view> pieces);
// Constant-time comparison.
bool equal(std::string_view a, std::string_view b);
inline std::string_view view(const Digest& d) {
  return {reinterpret_cast<const char*>(d.data()), d.size()};
}

// HKDF-SHA-256 (RFC 5869), extract then expand. False if `length` is 0 or more
// than 255 * 32.
bool hkdf_sha256(std::string_view ikm, std::string_view salt, std::string_view info, std::size_t length,
                 Secret& out);

// ---- asymmetric keys ----

struct PKeyFree {
  void operator()(EVP_PKEY* p) const;
};
using PKey = std::shared_ptr<EVP_PKEY>;

enum class Curve : std::uint8_t { Ed25519, X25519, P256 };

// A public key from its raw form: 32 bytes for Ed25519/X25519 (RFC 8032, 7748),
// the two 32-byte coordinates for P-256 (checked to be on the curve). Null if invalid.
PKey public_key(Curve c, std::string_view x, std::string_view y = {});
// A private key from its raw form (the 32-byte seed or scalar). Null if invalid.
PKey private_key(Curve c, std::string_view d);
// A fresh key pair.
PKey generate(Curve c);
// The raw public key: x (and y for P-256). False if the key is not of curve c.
bool raw_public(Curve c, const EVP_PKEY* key, std::string& x, std::string& y);
// The raw private key (seed or scalar, 32 bytes).
bool raw_private(Curve c, const EVP_PKEY* key, Secret& d);

// Ed25519 (PureEdDSA, RFC 8032): a 64-byte signature.
bool ed25519_sign(EVP_PKEY* key, std::string_view msg, std::string& sig);
bool ed25519_verify(EVP_PKEY* key, std::string_view msg, std::string_view sig);

// ECDSA P-256 with SHA-256 over the concatenation of the pieces; the signature is
// r || s, 32 bytes each (IEEE P1363, as COSE requires: RFC 9053 section 2.1).
bool es256_sign(EVP_PKEY* key, std::initializer_list<std::string_view> pieces, std::string& sig);
bool es256_verify(EVP_PKEY* key, std::initializer_list<std::string_view> pieces, std::string_view sig);

// The ECDH shared secret (X25519: 32 bytes; P-256: the x coordinate, 32 bytes).
// False if the keys do not match, or for X25519 if the result is all zero (a
// low-order peer key: RFC 7748 section 6.1).
bool ecdh(EVP_PKEY* own_private, EVP_PKEY* peer_public, Secret& shared);

// Cryptographically secure random bytes (OpenSSL's DRBG).
std::string random_bytes(std::size_t n);

}  // namespace moat::payload::crypto
