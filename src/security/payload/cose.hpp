// COSE envelopes (RFC 9052, algorithms of RFC 9053) bound to an MQTT topic: the
// topic name is the external AAD of every envelope, so an envelope moved to
// another topic does not verify.
//
//   encrypt     COSE_Encrypt0, AES-256-GCM or ChaCha20/Poly1305, a shared key
//   encrypt-to  COSE_Encrypt, one ECDH-ES + HKDF-256 recipient (X25519 or P-256):
//               the sender needs only the recipient's public key
//   mac         COSE_Mac0, HMAC 256/256
//   sign        COSE_Sign1, EdDSA (Ed25519) or ES256 (P-256)
//   digest      Moat's digest envelope: SHA-256, no key. Not tamper-proof: anyone can
//               compute it. For links already authenticated (TLS) that want an
//               end-to-end integrity check against accidents.
//
// Replay headers, all in the protected header: kid (label 4), a timestamp as CWT
// claim iat in a CWT claims header (label 15, RFC 9597) and a sequence number:
// Partial IV (label 6) in mac, sign and digest envelopes; the CWT claim cti in
// encrypt envelopes, where RFC 9052 section 3.1 forbids a Partial IV next to the IV.
// docs/payload-security.md has the exact CBOR of each envelope.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "security/payload/cbor.hpp"
#include "security/payload/errors.hpp"
#include "security/payload/key.hpp"

namespace moat::payload {

enum class Mode : std::uint8_t { Encrypt, EncryptTo, Mac, Sign, Digest };
std::string_view to_string(Mode m);  // "encrypt", "encrypt-to", "mac", "sign", "digest"
std::optional<Mode> parse_mode(std::string_view s);

// CBOR tags of the COSE messages (RFC 9052 section 2).
namespace tag {
inline constexpr std::uint64_t Encrypt0 = 16;
inline constexpr std::uint64_t Mac0 = 17;
inline constexpr std::uint64_t Sign1 = 18;
inline constexpr std::uint64_t Encrypt = 96;
inline constexpr std::uint64_t Mac = 97;
inline constexpr std::uint64_t Sign = 98;
}  // namespace tag

struct SealOptions {
  std::optional<std::uint64_t> seq;  // sequence number; none: no sequence header
  std::optional<std::int64_t> iat;   // seconds since the epoch; none: no timestamp
  bool kid = true;                   // write the key id (label 4)
  // encrypt-to: the content algorithm (A256GCM or ChaCha20/Poly1305).
  std::int64_t content_alg = alg::A256GCM;
};

// Seals `plaintext` for `topic`. The key: encrypt: an AEAD key; encrypt-to: the
// recipient's X25519 or P-256 key (public part); mac: an HMAC key; sign: a private
// Ed25519 or P-256 key; digest: none (or a key whose kid is written).
Result<std::string> seal(Mode mode, const Key* key, std::string_view topic, std::string_view plaintext,
                         const SealOptions& options = {});

// A decoded envelope: views into the input bytes (which must outlive it).
struct Envelope {
  enum class Kind : std::uint8_t { Encrypt0, Encrypt, Mac0, Sign1, Digest };

  struct EphemeralKey {
    std::int64_t kty = 0;
    std::int64_t crv = 0;
    std::string_view x, y;
  };
  struct Recipient {
    std::int64_t alg = 0;
    std::string_view protected_bytes;  // the bstr content, as sent
    std::optional<std::string_view> kid;
    std::optional<EphemeralKey> ephemeral;
    std::string_view salt;  // HKDF salt (label -20), empty if absent
    // PartyU/PartyV identity, nonce, other (labels -21..-26): encoded CBOR items,
    // empty if absent (then nil goes into the KDF context).
    std::string_view party[6];
  };

  Kind kind = Kind::Encrypt0;
  bool tagged = false;
  std::int64_t alg = 0;              // body algorithm (the content algorithm when encrypting)
  std::string_view protected_bytes;  // the bstr content, as sent
  std::string_view content;          // payload, or ciphertext with its tag
  std::string_view tag;              // MAC tag, signature or digest (empty when encrypting)
  std::string_view iv;
  std::optional<std::string_view> kid;  // protected, or else unprotected
  std::optional<std::uint64_t> seq;     // protected only
  std::optional<std::int64_t> iat;      // protected only
  std::vector<Recipient> recipients;

  cbor::Tree outer;       // the message
  cbor::Tree protected_;  // the protected header map
};

Mode mode_of(Envelope::Kind k);

// Strict decoding; errors: malformed, unsupported, wrong_algorithm.
Result<Envelope> decode(std::string_view bytes);

struct Opened {
  std::string plaintext;
  Mode mode = Mode::Sign;
  std::int64_t alg = 0;
  std::string kid;     // the key that opened it (digest: the header's kid)
  std::string sender;  // replay window id: the key id, or the ephemeral key (encrypt-to)
  std::optional<std::uint64_t> seq;
  std::optional<std::int64_t> iat;
  // Keyring::open, once `seq` is accepted: the highest number the sender's
  // replay window holds (the mark a broker stores to keep it across restarts).
  std::optional<std::uint64_t> replay_mark;
};

// Verifies or decrypts with one key (null for a digest envelope). No freshness or
// replay checks: those need state, see Keyring::open. Errors: wrong_algorithm (the
// key is not for this algorithm), verification_failed, malformed (bad ephemeral key).
Result<Opened> open_with(const Envelope& env, const Key* key, std::string_view topic);

// The kid an envelope asks for: the body's, or (COSE_Encrypt) the first
// recipient's that has one.
std::optional<std::string_view> wanted_kid(const Envelope& env);

}  // namespace moat::payload
