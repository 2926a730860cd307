// Keys of the envelopes and their files: JSON Web Keys (RFC 7517), one key per
// file with its "kid"; OKP keys (Ed25519, X25519) as in RFC 8037, EC P-256 keys as
// in RFC 7518 section 6.2, symmetric keys as "oct". docs/payload-security.md shows
// each kind.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "security/payload/crypto.hpp"

namespace moat::payload {

// COSE algorithm identifiers (IANA "COSE Algorithms"; RFC 9053, RFC 9054).
namespace alg {
inline constexpr std::int64_t A128GCM = 1;
inline constexpr std::int64_t A192GCM = 2;
inline constexpr std::int64_t A256GCM = 3;
inline constexpr std::int64_t HMAC256 = 5;  // HMAC 256/256
inline constexpr std::int64_t ChaCha20Poly1305 = 24;
inline constexpr std::int64_t EdDSA = -8;
inline constexpr std::int64_t ES256 = -7;
inline constexpr std::int64_t Direct = -6;
inline constexpr std::int64_t EcdhEsHkdf256 = -25;  // ECDH-ES + HKDF-256
inline constexpr std::int64_t SHA256 = -16;         // RFC 9054
}  // namespace alg

// The name of a COSE algorithm ("A256GCM", "EdDSA", ...) or its number.
std::string alg_name(std::int64_t id);

// What `moat keygen --kind` makes.
enum class KeyKind : std::uint8_t { Aes256, ChaCha20, Hmac256, Ed25519, P256, X25519 };
std::optional<KeyKind> parse_kind(std::string_view s);  // "aes256", "chacha20", ...

class KeyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Key {
 public:
  enum class Type : std::uint8_t { Symmetric, Ed25519, X25519, P256 };

  Type type() const { return type_; }
  const std::string& kid() const { return kid_; }
  // The COSE algorithm the key is restricted to (from the JWK "alg"), if any.
  std::optional<std::int64_t> alg() const { return alg_; }
  bool has_private() const { return has_private_; }
  bool is_symmetric() const { return type_ == Type::Symmetric; }

  // Symmetric key bytes (Type::Symmetric only).
  std::string_view secret() const { return k_.view(); }
  // The OpenSSL key (asymmetric types only); the private key if has_private().
  EVP_PKEY* pkey() const { return pkey_.get(); }
  // The public key alone (asymmetric types).
  EVP_PKEY* public_pkey() const { return public_.get(); }
  crypto::Curve curve() const;
  const std::string& x() const { return x_; }  // public coordinates (raw bytes)
  const std::string& y() const { return y_; }  // P-256 only

  // Can this key seal or open with COSE algorithm `a`? (type, length and the
  // JWK "alg" restriction agree).
  bool allows(std::int64_t a) const;
  // The algorithm Moat seals with for this key: its "alg", else the natural one
  // (A256GCM for a 32-byte key, EdDSA, ES256, ECDH-ES + HKDF-256).
  std::int64_t seal_alg() const;

  // ---- JWK ----
  // Parses one JWK (a JSON object). Throws KeyError naming the member at fault.
  static Key from_jwk(std::string_view json);
  // The JWK text: with the private part, or the public part only.
  std::string to_jwk(bool include_private) const;
  // The same key without its private part.
  Key public_only() const;

  // A new random key of `kind` with key id `kid`. P-256 keys are for signing
  // (ES256) unless `p256_for_ecdh`, then ECDH-ES + HKDF-256.
  static Key generate(KeyKind kind, std::string kid, bool p256_for_ecdh = false);

 private:
  Type type_ = Type::Symmetric;
  std::string kid_;
  std::optional<std::int64_t> alg_;
  std::string use_;  // JWK "use": "sig", "enc" or empty
  bool has_private_ = false;
  crypto::Secret k_;  // symmetric
  crypto::PKey pkey_;
  crypto::PKey public_;
  std::string x_, y_;
};

// Reads a key file. A file with a private or symmetric key must not be accessible
// by group or others (mode 0600 or stricter), as ssh does for its keys; throws
// KeyError "FILE: reason" otherwise or when the file is not a valid JWK.
Key load_key_file(const std::filesystem::path& path);

// Writes `text` to `path` with mode `mode`, refusing to replace an existing file
// unless `overwrite`. Throws KeyError.
void write_key_file(const std::filesystem::path& path, std::string_view text, unsigned mode, bool overwrite);

// base64url without padding (RFC 4648 section 5, as JWK uses it).
std::string base64url_encode(std::string_view bytes);
std::optional<std::string> base64url_decode(std::string_view text);

}  // namespace moat::payload
