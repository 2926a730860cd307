#include "security/jwt.hpp"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "security/acl.hpp"

namespace moat::security {

using json = nlohmann::json;

std::string_view to_string(JwtAlg a) {
  switch (a) {
    case JwtAlg::HS256:
      return "HS256";
    case JwtAlg::RS256:
      return "RS256";
    case JwtAlg::ES256:
      return "ES256";
  }
  return "?";
}

namespace {

constexpr std::size_t kMinSecretBytes = 32;  // RFC 7518 3.2: at least the hash size
constexpr int kMinRsaBits = 2048;

std::optional<JwtAlg> parse_alg(std::string_view s) {
  if (s == "HS256") return JwtAlg::HS256;
  if (s == "RS256") return JwtAlg::RS256;
  if (s == "ES256") return JwtAlg::ES256;
  return std::nullopt;
}

// ---- base64url without padding (RFC 7515 section 2) ----

int b64url_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

std::optional<std::string> b64url_decode(std::string_view in) {
  if (in.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(in.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const int v = b64url_value(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

std::string read_file(const std::filesystem::path& p, std::string_view what) {
  std::ifstream in(p, std::ios::binary);
  if (!in)
    throw std::runtime_error(std::string(what) + " '" + p.string() +
                             "': cannot open: " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

std::shared_ptr<EVP_PKEY> own(EVP_PKEY* k) {
  return std::shared_ptr<EVP_PKEY>(k, PkeyFree{});
}

// Which algorithm a public key serves; the reason it serves none otherwise.
std::variant<JwtAlg, std::string> alg_of(EVP_PKEY* k) {
  const int id = EVP_PKEY_get_base_id(k);
  if (id == EVP_PKEY_RSA) {
    if (EVP_PKEY_get_bits(k) < kMinRsaBits)
      return "RSA key of " + std::to_string(EVP_PKEY_get_bits(k)) + " bits (at least 2048 needed)";
    return JwtAlg::RS256;
  }
  if (id == EVP_PKEY_EC) {
    char group[64] = {0};
    std::size_t len = 0;
    if (EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &len) != 1 ||
        std::string_view(group) != "prime256v1")
      return std::string("EC key on curve '") + group + "' (ES256 needs P-256)";
    return JwtAlg::ES256;
  }
  return std::string("key type ") + (EVP_PKEY_get0_type_name(k) ? EVP_PKEY_get0_type_name(k) : "?") +
         " (RSA for RS256 or EC P-256 for ES256)";
}

std::shared_ptr<EVP_PKEY> pkey_from_pem(std::string_view pem, std::string& why) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* k = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  if (!k) {
    BIO_free(bio);
    bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    if (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
      k = X509_get_pubkey(cert);
      X509_free(cert);
    }
  }
  BIO_free(bio);
  if (!k) {
    why = "no PEM public key or certificate found";
    return nullptr;
  }
  return own(k);
}

// Builds a public key from OSSL parameters and checks it (an EC point off the
// curve is refused here rather than at the first signature).
std::shared_ptr<EVP_PKEY> pkey_from_params(const char* type, OSSL_PARAM_BLD* bld, std::string& why) {
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr);
  EVP_PKEY* k = nullptr;
  const bool ok = params && ctx && EVP_PKEY_fromdata_init(ctx) == 1 &&
                  EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_PUBLIC_KEY, params) == 1;
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  if (!ok || !k) {
    why = "not a valid public key";
    EVP_PKEY_free(k);
    return nullptr;
  }
  EVP_PKEY_CTX* check = EVP_PKEY_CTX_new_from_pkey(nullptr, k, nullptr);
  const bool valid = check && EVP_PKEY_public_check(check) == 1;
  EVP_PKEY_CTX_free(check);
  if (!valid) {
    why = "public key fails its consistency check";
    EVP_PKEY_free(k);
    return nullptr;
  }
  return own(k);
}

std::optional<std::string> jwk_bytes(const json& jwk, const char* member, std::string& why) {
  auto it = jwk.find(member);
  if (it == jwk.end() || !it->is_string()) {
    why = std::string("missing member '") + member + "'";
    return std::nullopt;
  }
  auto v = b64url_decode(it->get<std::string>());
  if (!v || v->empty()) why = std::string("member '") + member + "' is not base64url";
  return v && !v->empty() ? v : std::nullopt;
}

BIGNUM* bn(const std::string& bytes) {
  return BN_bin2bn(reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()),
                   nullptr);
}

// One JWK; a result without alg and an empty `why` means "skip" (a kind Moat
// does not use), with `why` set means an error.
std::optional<JwtKeys::Key> key_from_jwk(const json& jwk, std::string& why, std::string& skip) {
  if (!jwk.is_object()) {
    why = "not a JSON object";
    return std::nullopt;
  }
  auto str = [&](const char* m) -> std::string {
    auto it = jwk.find(m);
    return it != jwk.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  const std::string kty = str("kty");
  const std::string use = str("use");
  const std::string alg_text = str("alg");
  JwtKeys::Key key{};
  key.kid = str("kid");
  if (!use.empty() && use != "sig") {
    skip = "\"use\": \"" + use + "\"";
    return std::nullopt;
  }
  if (kty == "oct") {
    auto k = jwk_bytes(jwk, "k", why);
    if (!k) return std::nullopt;
    if (k->size() < kMinSecretBytes) {
      why = "secret of " + std::to_string(k->size()) + " bytes (HS256 needs at least 32)";
      return std::nullopt;
    }
    key.alg = JwtAlg::HS256;
    key.secret = std::move(*k);
  } else if (kty == "RSA") {
    auto n = jwk_bytes(jwk, "n", why);
    if (!n) return std::nullopt;
    auto e = jwk_bytes(jwk, "e", why);
    if (!e) return std::nullopt;
    OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
    BIGNUM* bn_n = bn(*n);
    BIGNUM* bn_e = bn(*e);
    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n);
    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e);
    key.pkey = pkey_from_params("RSA", bld, why);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    if (!key.pkey) return std::nullopt;
  } else if (kty == "EC") {
    if (str("crv") != "P-256") {
      skip = "curve '" + str("crv") + "'";
      return std::nullopt;
    }
    auto x = jwk_bytes(jwk, "x", why);
    if (!x) return std::nullopt;
    auto y = jwk_bytes(jwk, "y", why);
    if (!y) return std::nullopt;
    if (x->size() != 32 || y->size() != 32) {
      why = "P-256 coordinates must be 32 bytes each";
      return std::nullopt;
    }
    std::string point = "\x04" + *x + *y;  // uncompressed SEC 1 point
    OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size());
    key.pkey = pkey_from_params("EC", bld, why);
    OSSL_PARAM_BLD_free(bld);
    if (!key.pkey) return std::nullopt;
  } else {
    skip = "kty '" + kty + "'";
    return std::nullopt;
  }
  if (key.pkey) {
    auto a = alg_of(key.pkey.get());
    if (auto* w = std::get_if<std::string>(&a)) {
      why = *w;
      return std::nullopt;
    }
    key.alg = std::get<JwtAlg>(a);
  }
  if (!alg_text.empty()) {
    auto declared = parse_alg(alg_text);
    if (!declared) {
      skip = "\"alg\": \"" + alg_text + "\"";
      return std::nullopt;
    }
    if (*declared != key.alg) {
      why = "\"alg\": \"" + alg_text + "\" does not fit its kty '" + kty + "'";
      return std::nullopt;
    }
  }
  return key;
}

std::string strip_newline(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

// ---- signatures ----

bool verify_hs256(const std::string& secret, std::string_view input, const std::string& sig) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len))
    return false;
  return sig.size() == len && CRYPTO_memcmp(mac, sig.data(), len) == 0;
}

bool verify_digest(EVP_PKEY* k, std::string_view input, const unsigned char* sig, std::size_t sig_len) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok = ctx && EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, k) == 1 &&
                  EVP_DigestVerify(ctx, sig, sig_len, reinterpret_cast<const unsigned char*>(input.data()),
                                   input.size()) == 1;
  EVP_MD_CTX_free(ctx);
  return ok;
}

// JWS ES256 signatures are R || S, 32 bytes each (RFC 7518 3.4); OpenSSL
// verifies the DER-encoded ECDSA-Sig-Value.
bool verify_es256(EVP_PKEY* k, std::string_view input, const std::string& sig) {
  if (sig.size() != 64) return false;
  const auto* raw = reinterpret_cast<const unsigned char*>(sig.data());
  BIGNUM* r = BN_bin2bn(raw, 32, nullptr);
  BIGNUM* s = BN_bin2bn(raw + 32, 32, nullptr);
  ECDSA_SIG* es = ECDSA_SIG_new();
  if (!r || !s || !es || ECDSA_SIG_set0(es, r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return false;
  }
  unsigned char* der = nullptr;
  const int der_len = i2d_ECDSA_SIG(es, &der);
  ECDSA_SIG_free(es);  // frees r and s
  if (der_len <= 0) return false;
  const bool ok = verify_digest(k, input, der, static_cast<std::size_t>(der_len));
  OPENSSL_free(der);
  return ok;
}

bool verify_with(const JwtKeys::Key& key, std::string_view input, const std::string& sig) {
  switch (key.alg) {
    case JwtAlg::HS256:
      return verify_hs256(key.secret, input, sig);
    case JwtAlg::RS256:
      return verify_digest(key.pkey.get(), input, reinterpret_cast<const unsigned char*>(sig.data()),
                           sig.size());
    case JwtAlg::ES256:
      return verify_es256(key.pkey.get(), input, sig);
  }
  return false;
}

std::optional<double> number_claim(const json& claims, const char* name, std::string& why) {
  auto it = claims.find(name);
  if (it == claims.end()) return std::nullopt;
  if (!it->is_number()) {
    why = std::string("claim '") + name + "' is not a number";
    return std::nullopt;
  }
  return it->get<double>();
}

std::uint8_t action_bits(const std::string& a) {
  if (a == "publish") return static_cast<std::uint8_t>(Action::Publish);
  if (a == "subscribe") return static_cast<std::uint8_t>(Action::Subscribe);
  if (a == "receive") return static_cast<std::uint8_t>(Action::Receive);
  if (a == "all") return AclRule::kAll;
  return 0;
}

std::shared_ptr<const OrderedRules> acl_from_json(const json& j) {
  std::vector<OrderedRule> rules;
  auto topics_of = [](const json& v, const std::string& where) {
    std::vector<std::string> out;
    if (!v.is_array()) throw std::invalid_argument(where + " must be an array of topic filters");
    for (const auto& t : v) {
      if (!t.is_string()) throw std::invalid_argument(where + " must hold strings");
      out.push_back(t.get<std::string>());
    }
    return out;
  };
  if (j.is_object()) {
    // {"pub": [...], "sub": [...], "all": [...]}: grants. "sub" covers
    // subscribing and receiving, as a subscription without delivery is useless.
    for (const auto& [k, v] : j.items()) {
      std::uint8_t bits = 0;
      if (k == "pub")
        bits = AclRule::kWrite;
      else if (k == "sub")
        bits = AclRule::kRead;
      else if (k == "all")
        bits = AclRule::kAll;
      else
        throw std::invalid_argument("unknown member '" + k + "' (pub, sub, all)");
      for (auto& t : topics_of(v, "'" + k + "'")) {
        OrderedRule r;
        r.actions = bits;
        r.topic = std::move(t);
        rules.push_back(std::move(r));
      }
    }
  } else if (j.is_array()) {
    // [{"permission": "allow", "action": "publish", "topic": "a/b"}, ...]: in order.
    std::size_t n = 0;
    for (const auto& e : j) {
      ++n;
      const std::string where = "rule " + std::to_string(n);
      if (!e.is_object()) throw std::invalid_argument(where + " is not an object");
      for (const auto& [k, v] : e.items())
        if (k != "permission" && k != "action" && k != "topic" && k != "topics")
          throw std::invalid_argument(where + ": unknown member '" + k + "'");
      auto perm = e.find("permission");
      auto act = e.find("action");
      if (perm == e.end() || !perm->is_string() ||
          (perm->get<std::string>() != "allow" && perm->get<std::string>() != "deny"))
        throw std::invalid_argument(where + ": permission must be \"allow\" or \"deny\"");
      if (act == e.end() || !act->is_string() || action_bits(act->get<std::string>()) == 0)
        throw std::invalid_argument(where + ": action must be publish, subscribe, receive or all");
      std::vector<std::string> topics;
      if (auto t = e.find("topic"); t != e.end()) {
        if (!t->is_string()) throw std::invalid_argument(where + ": topic must be a string");
        topics.push_back(t->get<std::string>());
      }
      if (auto t = e.find("topics"); t != e.end())
        for (auto& x : topics_of(*t, where + ": topics")) topics.push_back(std::move(x));
      if (topics.empty()) throw std::invalid_argument(where + ": no topic");
      for (auto& t : topics) {
        OrderedRule r;
        r.actions = action_bits(act->get<std::string>());
        r.allow = perm->get<std::string>() == "allow";
        r.topic = std::move(t);
        rules.push_back(std::move(r));
      }
    }
  } else {
    throw std::invalid_argument("must be an object or an array");
  }
  return OrderedRules::make(std::move(rules));
}

}  // namespace

struct JwtKeysBuilder {
  static std::shared_ptr<const JwtKeys> build(std::string_view secret, std::string_view secret_src,
                                              std::string_view pem, std::string_view pem_src,
                                              std::string_view jwks, std::string_view jwks_src) {
    auto keys = std::make_shared<JwtKeys>();
    if (!secret.empty()) {
      std::string s = strip_newline(std::string(secret));
      if (s.size() < kMinSecretBytes)
        throw std::runtime_error("jwt: secret_file '" + std::string(secret_src) + "': " +
                                 std::to_string(s.size()) + " bytes; HS256 needs at least 32 (RFC 7518 3.2)");
      keys->keys_.push_back(JwtKeys::Key{JwtAlg::HS256, {}, std::move(s), nullptr, std::string(secret_src)});
    }
    if (!pem.empty()) {
      std::string why;
      auto k = pkey_from_pem(pem, why);
      if (!k) throw std::runtime_error("jwt: public_key '" + std::string(pem_src) + "': " + why);
      auto a = alg_of(k.get());
      if (auto* w = std::get_if<std::string>(&a))
        throw std::runtime_error("jwt: public_key '" + std::string(pem_src) + "': " + *w);
      keys->keys_.push_back(JwtKeys::Key{std::get<JwtAlg>(a), {}, {}, std::move(k), std::string(pem_src)});
    }
    if (!jwks.empty()) {
      const std::string src = "jwt: jwks '" + std::string(jwks_src) + "'";
      json j = json::parse(jwks, nullptr, false);
      if (j.is_discarded()) throw std::runtime_error(src + ": not valid JSON");
      if (!j.is_object() || !j.contains("keys") || !j["keys"].is_array())
        throw std::runtime_error(src + ": expected {\"keys\": [...]}");
      std::size_t n = 0;
      std::size_t usable = 0;
      for (const auto& jwk : j["keys"]) {
        ++n;
        std::string why;
        std::string skip;
        auto k = key_from_jwk(jwk, why, skip);
        std::string name = "key " + std::to_string(n);
        if (jwk.is_object() && jwk.contains("kid") && jwk["kid"].is_string())
          name += " (kid '" + jwk["kid"].get<std::string>() + "')";
        if (!why.empty()) throw std::runtime_error(src + ": " + name + ": " + why);
        if (!k) {
          keys->warnings_.push_back(src + ": " + name + " skipped: " + skip + " is not used by Moat");
          continue;
        }
        k->source = std::string(jwks_src) + " " + name;
        keys->keys_.push_back(std::move(*k));
        ++usable;
      }
      if (usable == 0)
        throw std::runtime_error(src + ": no usable key (HS256 oct, RS256 RSA, ES256 EC P-256)");
    }
    if (keys->keys_.empty()) throw std::runtime_error("jwt: no key (secret_file, public_key or jwks)");
    return keys;
  }
};

std::shared_ptr<const JwtKeys> JwtKeys::load(const JwtConfig& c) {
  const std::string secret =
      c.secret_file.empty() ? std::string() : read_file(c.secret_file, "jwt: secret_file");
  if (!c.secret_file.empty() && secret.empty())
    throw std::runtime_error("jwt: secret_file '" + c.secret_file.string() + "' is empty");
  const std::string pem = c.public_key.empty() ? std::string() : read_file(c.public_key, "jwt: public_key");
  const std::string jwks = c.jwks.empty() ? std::string() : read_file(c.jwks, "jwt: jwks");
  return JwtKeysBuilder::build(secret, c.secret_file.string(), pem, c.public_key.string(), jwks,
                               c.jwks.string());
}

std::shared_ptr<const JwtKeys> JwtKeys::from_text(std::string_view secret, std::string_view pem,
                                                  std::string_view jwks_json) {
  return JwtKeysBuilder::build(secret, "secret", pem, "public key", jwks_json, "jwks");
}

bool looks_like_jwt(std::string_view p) {
  const auto a = p.find('.');
  if (a == std::string_view::npos) return false;
  const auto b = p.find('.', a + 1);
  if (b == std::string_view::npos || p.find('.', b + 1) != std::string_view::npos) return false;
  // A JSON object's base64url starts with "ey" ('{"' or '{ ' ...): "eyJ" for '{"'.
  if (p.substr(0, 2) != "ey") return false;
  for (char c : p)
    if (c != '.' && b64url_value(c) < 0) return false;
  return true;
}

std::shared_ptr<const OrderedRules> parse_acl_claim(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) throw std::invalid_argument("not valid JSON");
  return acl_from_json(j);
}

std::variant<JwtClaims, std::string> verify_jwt(std::string_view token, const JwtKeys& keys,
                                                const JwtConfig& config,
                                                std::chrono::system_clock::time_point now) {
  if (token.size() > config.max_token_size) return std::string("token too long");
  const auto d1 = token.find('.');
  const auto d2 = d1 == std::string_view::npos ? d1 : token.find('.', d1 + 1);
  if (d2 == std::string_view::npos || token.find('.', d2 + 1) != std::string_view::npos)
    return std::string("not a compact JWS (three parts)");
  const auto header_raw = b64url_decode(token.substr(0, d1));
  const auto payload_raw = b64url_decode(token.substr(d1 + 1, d2 - d1 - 1));
  const auto sig = b64url_decode(token.substr(d2 + 1));
  if (!header_raw || !payload_raw || !sig) return std::string("malformed base64url");
  const json header = json::parse(*header_raw, nullptr, false);
  if (header.is_discarded() || !header.is_object()) return std::string("header is not a JSON object");
  auto alg_it = header.find("alg");
  if (alg_it == header.end() || !alg_it->is_string()) return std::string("header has no alg");
  const std::string alg_name = alg_it->get<std::string>();
  const auto alg = parse_alg(alg_name);
  if (!alg)
    return "algorithm '" + (alg_name.size() > 16 ? alg_name.substr(0, 16) + "..." : alg_name) +
           "' not accepted (HS256, RS256, ES256)";
  // RFC 7515 4.1.11: an extension we do not understand must be refused.
  if (header.contains("crit")) return std::string("header has 'crit' extensions");
  std::string kid;
  if (auto k = header.find("kid"); k != header.end()) {
    if (!k->is_string()) return std::string("kid is not a string");
    kid = k->get<std::string>();
  }

  // The key decides: only keys made for this algorithm are tried.
  const std::string_view signing_input = token.substr(0, d2);
  bool any_of_alg = false;
  bool verified = false;
  for (const auto& key : keys.keys()) {
    if (key.alg != *alg) continue;
    if (!kid.empty() && !key.kid.empty() && key.kid != kid) continue;
    any_of_alg = true;
    if (verify_with(key, signing_input, *sig)) {
      verified = true;
      break;
    }
  }
  if (!any_of_alg) {
    if (kid.empty()) return "no " + alg_name + " key configured";
    const bool kid_known = std::any_of(keys.keys().begin(), keys.keys().end(),
                                       [&](const JwtKeys::Key& k) { return k.kid == kid; });
    // The kid comes from the client: keep what reaches the log short.
    const std::string shown = kid.size() > 64 ? kid.substr(0, 64) + "..." : kid;
    return kid_known ? "key '" + shown + "' is not a " + alg_name + " key" : "unknown key id '" + shown + "'";
  }
  if (!verified) return std::string("signature does not verify");

  const json claims = json::parse(*payload_raw, nullptr, false);
  if (claims.is_discarded() || !claims.is_object()) return std::string("claims are not a JSON object");
  const double t = std::chrono::duration<double>(now.time_since_epoch()).count();
  const double leeway = static_cast<double>(config.leeway.count());
  std::string why;
  const auto exp = number_claim(claims, "exp", why);
  if (!why.empty()) return why;
  if (!exp && config.require_exp) return std::string("no exp claim");
  if (exp && t > *exp + leeway) return std::string("token expired");
  const auto nbf = number_claim(claims, "nbf", why);
  if (!why.empty()) return why;
  if (nbf && t + leeway < *nbf) return std::string("token not yet valid (nbf)");
  if (!config.issuer.empty()) {
    auto iss = claims.find("iss");
    if (iss == claims.end() || !iss->is_string() || iss->get<std::string>() != config.issuer)
      return std::string("wrong issuer");
  }
  if (!config.audience.empty()) {
    auto aud = claims.find("aud");
    auto wanted = [&](const json& v) {
      return v.is_string() && std::find(config.audience.begin(), config.audience.end(),
                                        v.get<std::string>()) != config.audience.end();
    };
    bool ok = false;
    if (aud != claims.end()) {
      if (aud->is_array())
        ok = std::any_of(aud->begin(), aud->end(), wanted);
      else
        ok = wanted(*aud);
    }
    if (!ok) return std::string("wrong audience");
  }
  JwtClaims out;
  auto user = claims.find(config.username_claim);
  if (user == claims.end() || !user->is_string() || user->get<std::string>().empty())
    return "no '" + config.username_claim + "' claim (the user name)";
  out.username = user->get<std::string>();
  if (!config.acl_claim.empty()) {
    if (auto acl = claims.find(config.acl_claim); acl != claims.end()) {
      try {
        out.acl = acl_from_json(*acl);
      } catch (const std::invalid_argument& e) {
        return "malformed '" + config.acl_claim + "' claim: " + e.what();
      }
    }
  }
  return out;
}

JwtAuthenticator::JwtAuthenticator(JwtConfig config, std::shared_ptr<const JwtKeys> keys, Now now)
    : config_(std::move(config)), now_(std::move(now)), keys_(std::move(keys)) {}

AuthResult JwtAuthenticator::authenticate(const ConnectInfo& info) {
  AuthResult r;
  r.method = name();
  if (!info.password || !looks_like_jwt(*info.password)) return r;  // Continue
  auto v = verify_jwt(*info.password, *keys(), config_, now_());
  if (auto* why = std::get_if<std::string>(&v)) {
    r.decision = AuthDecision::BadCredentials;
    r.reason = *why;
    return r;
  }
  auto& claims = std::get<JwtClaims>(v);
  if (config_.match_username && info.username && *info.username != claims.username) {
    r.decision = AuthDecision::NotAuthorized;
    r.reason = "user name differs from the token's '" + config_.username_claim + "' claim";
    return r;
  }
  r.decision = AuthDecision::Allow;
  r.identity = std::move(claims.username);
  r.acl = std::move(claims.acl);
  r.acl_only = config_.acl_replace;
  return r;
}

}  // namespace moat::security
