// JWT authentication: the CONNECT password carries a compact JWS (RFC 7515)
// whose claims (RFC 7519) name the user and may carry its ACL. HS256, RS256
// and ES256 (RFC 7518) only; the key decides the algorithm, so a token cannot
// choose a weaker one ("none", HS256 signed with a public key, ...).
// docs/security.md, "JWT", has the configuration and the claim formats.
#pragma once

#include <openssl/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "security/authn.hpp"

namespace moat::security {

class OrderedRules;

struct JwtConfig {
  std::filesystem::path secret_file;  // HS256 shared secret (at least 32 bytes)
  std::filesystem::path public_key;   // RS256 (RSA >= 2048 bits) or ES256 (P-256): PEM key or certificate
  std::filesystem::path jwks;         // a JWK Set (RFC 7517) file
  std::string issuer;                 // when set, "iss" must equal it
  std::vector<std::string> audience;  // when set, "aud" must name one of these
  std::chrono::seconds leeway{30};    // clock skew allowed for exp and nbf
  bool require_exp = true;
  std::string username_claim = "sub";
  bool match_username = true;     // the CONNECT user name must equal the claim
  std::string acl_claim = "acl";  // "" = ignore ACL claims
  bool acl_replace = true;        // acl_mode: "replace" (true) or "prepend"
  std::size_t max_token_size = 16 * 1024;
};

enum class JwtAlg { HS256, RS256, ES256 };
std::string_view to_string(JwtAlg a);

// The verification keys, immutable once loaded.
class JwtKeys {
 public:
  struct Key {
    JwtAlg alg;
    std::string kid;                 // "" when the key has none
    std::string secret;              // HS256
    std::shared_ptr<EVP_PKEY> pkey;  // RS256 / ES256
    std::string source;              // "jwks.json key 2 (kid 'a')", for messages
  };

  // Loads every file the config names; throws std::runtime_error naming the
  // file and the reason. Keys of a JWKS that Moat cannot use (another kty,
  // curve or "use": "enc") are skipped and listed in warnings().
  static std::shared_ptr<const JwtKeys> load(const JwtConfig& config);
  // From contents rather than files (tests); empty strings are skipped.
  static std::shared_ptr<const JwtKeys> from_text(std::string_view secret, std::string_view pem,
                                                  std::string_view jwks_json);

  const std::vector<Key>& keys() const { return keys_; }
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  std::vector<Key> keys_;
  std::vector<std::string> warnings_;
  friend struct JwtKeysBuilder;
};

struct JwtClaims {
  std::string username;
  std::shared_ptr<const OrderedRules> acl;  // null: no ACL claim
};

// Verifies signature and claims. Returns the claims or the reason for refusal
// ("token expired", "signature does not verify", ...), never the token.
std::variant<JwtClaims, std::string> verify_jwt(std::string_view token, const JwtKeys& keys,
                                                const JwtConfig& config,
                                                std::chrono::system_clock::time_point now);

// Parses an ACL claim (EMQX's two forms, docs/security.md) into ordered rules;
// throws std::invalid_argument with the reason.
std::shared_ptr<const OrderedRules> parse_acl_claim(std::string_view json);

// Does `password` look like a compact JWS (three base64url parts, the first a
// JSON object)? Passwords that do not are left to the next method.
bool looks_like_jwt(std::string_view password);

// "jwt": no password, or a password that is not a JWT: Continue. A JWT that
// does not verify: BadCredentials (the reason says why). A user name that is
// not the token's username claim (match_username): NotAuthorized. Otherwise
// Allow with identity = the claim, and the token's ACL rules.
class JwtAuthenticator final : public Authenticator {
 public:
  using Now = std::function<std::chrono::system_clock::time_point()>;
  JwtAuthenticator(
      JwtConfig config, std::shared_ptr<const JwtKeys> keys,
      Now now = [] { return std::chrono::system_clock::now(); });
  std::string_view name() const override { return "jwt"; }
  AuthResult authenticate(const ConnectInfo& info) override;
  void reload(std::shared_ptr<const JwtKeys> keys) {
    std::lock_guard lock(mu_);
    keys_.swap(keys);
  }
  std::shared_ptr<const JwtKeys> keys() const {
    std::lock_guard lock(mu_);
    return keys_;
  }
  const JwtConfig& config() const { return config_; }

 private:
  const JwtConfig config_;
  const Now now_;
  mutable std::mutex mu_;
  std::shared_ptr<const JwtKeys> keys_;
};

}  // namespace moat::security
