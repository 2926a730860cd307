#include "security/payload/key.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace moat::payload {
namespace {

using crypto::Curve;

struct AlgName {
  std::int64_t id;
  std::string_view name;  // what Moat writes into a JWK
};
// COSE algorithm names (RFC 9053), and for HMAC the JOSE name "HS256" (RFC 7518),
// which is what other JWK tools write.
constexpr std::array<AlgName, 9> kAlgs{{{alg::A128GCM, "A128GCM"},
                                        {alg::A192GCM, "A192GCM"},
                                        {alg::A256GCM, "A256GCM"},
                                        {alg::HMAC256, "HS256"},
                                        {alg::ChaCha20Poly1305, "ChaCha20/Poly1305"},
                                        {alg::EdDSA, "EdDSA"},
                                        {alg::ES256, "ES256"},
                                        {alg::EcdhEsHkdf256, "ECDH-ES+HKDF-256"},
                                        {alg::SHA256, "SHA-256"}}};

std::optional<std::int64_t> alg_from_jwk(std::string_view s) {
  if (s == "HMAC 256/256") return alg::HMAC256;
  if (s == "ECDH-ES + HKDF-256") return alg::EcdhEsHkdf256;
  for (const auto& a : kAlgs)
    if (a.name == s && a.id != alg::SHA256) return a.id;
  return std::nullopt;
}

const nlohmann::json* member(const nlohmann::json& j, const char* name) {
  const auto it = j.find(name);
  return it == j.end() ? nullptr : &*it;
}

std::string string_member(const nlohmann::json& j, const char* name, bool required) {
  const nlohmann::json* m = member(j, name);
  if (!m) {
    if (required) throw KeyError(std::string("\"") + name + "\" is missing");
    return {};
  }
  if (!m->is_string()) throw KeyError(std::string("\"") + name + "\" must be a string");
  return m->get<std::string>();
}

crypto::Secret bytes_member(const nlohmann::json& j, const char* name, bool required, std::size_t size = 0) {
  const std::string text = string_member(j, name, required);
  if (text.empty() && !required) return {};
  auto bytes = base64url_decode(text);
  if (!bytes) throw KeyError(std::string("\"") + name + "\" is not base64url without padding");
  if (size != 0 && bytes->size() != size)
    throw KeyError(std::string("\"") + name + "\" must be " + std::to_string(size) + " bytes, not " +
                   std::to_string(bytes->size()));
  return crypto::Secret(std::move(*bytes));
}

Curve curve_of(Key::Type t) {
  switch (t) {
    case Key::Type::Ed25519:
      return Curve::Ed25519;
    case Key::Type::X25519:
      return Curve::X25519;
    default:
      return Curve::P256;
  }
}

}  // namespace

std::string alg_name(std::int64_t id) {
  for (const auto& a : kAlgs)
    if (a.id == id) return std::string(a.name);
  if (id == alg::Direct) return "direct";
  return std::to_string(id);
}

std::optional<KeyKind> parse_kind(std::string_view s) {
  if (s == "aes256") return KeyKind::Aes256;
  if (s == "chacha20") return KeyKind::ChaCha20;
  if (s == "hmac256") return KeyKind::Hmac256;
  if (s == "ed25519") return KeyKind::Ed25519;
  if (s == "p256") return KeyKind::P256;
  if (s == "x25519") return KeyKind::X25519;
  return std::nullopt;
}

crypto::Curve Key::curve() const {
  return curve_of(type_);
}

bool Key::allows(std::int64_t a) const {
  if (alg_ && *alg_ != a) return false;
  switch (type_) {
    case Type::Symmetric:
      switch (a) {
        case alg::A128GCM:
          return k_.size() == 16;
        case alg::A192GCM:
          return k_.size() == 24;
        case alg::A256GCM:
        case alg::ChaCha20Poly1305:
          return k_.size() == 32;
        case alg::HMAC256:
          return k_.size() >= 32;
        default:
          return false;
      }
    case Type::Ed25519:
      return a == alg::EdDSA;
    case Type::X25519:
      return a == alg::EcdhEsHkdf256;
    case Type::P256:
      if (a == alg::ES256) return use_ != "enc";
      if (a == alg::EcdhEsHkdf256) return use_ != "sig";
      return false;
  }
  return false;
}

Key Key::from_jwk(std::string_view json) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json);
  } catch (const nlohmann::json::parse_error& e) {
    throw KeyError(std::string("not JSON: ") + e.what());
  }
  if (!j.is_object()) throw KeyError("a JWK is a JSON object");
  Key k;
  const std::string kty = string_member(j, "kty", true);
  k.kid_ = string_member(j, "kid", true);
  if (k.kid_.empty()) throw KeyError("\"kid\" is empty");
  k.use_ = string_member(j, "use", false);
  if (!k.use_.empty() && k.use_ != "sig" && k.use_ != "enc")
    throw KeyError("\"use\" must be \"sig\" or \"enc\"");
  if (const std::string a = string_member(j, "alg", false); !a.empty()) {
    k.alg_ = alg_from_jwk(a);
    if (!k.alg_) throw KeyError("\"alg\": \"" + a + "\" is not an algorithm Moat uses");
  }

  if (kty == "oct") {
    k.type_ = Type::Symmetric;
    k.k_ = bytes_member(j, "k", true);
    if (k.k_.size() < 16) throw KeyError("\"k\" must be at least 16 bytes");
    k.has_private_ = true;
  } else if (kty == "OKP" || kty == "EC") {
    const std::string crv = string_member(j, "crv", true);
    if (kty == "OKP" && crv == "Ed25519") {
      k.type_ = Type::Ed25519;
    } else if (kty == "OKP" && crv == "X25519") {
      k.type_ = Type::X25519;
    } else if (kty == "EC" && crv == "P-256") {
      k.type_ = Type::P256;
    } else {
      throw KeyError("\"crv\": \"" + crv + "\" is not supported with kty \"" + kty +
                     "\" (OKP: Ed25519, X25519; EC: P-256)");
    }
    const Curve c = k.curve();
    k.x_ = std::string(bytes_member(j, "x", true, 32).view());
    if (c == Curve::P256) k.y_ = std::string(bytes_member(j, "y", true, 32).view());
    k.public_ = crypto::public_key(c, k.x_, k.y_);
    if (!k.public_) throw KeyError("\"x\"/\"y\" is not a valid public key on " + crv);
    const crypto::Secret d = bytes_member(j, "d", false, 32);
    if (!d.empty()) {
      k.pkey_ = crypto::private_key(c, d.view());
      std::string px, py;
      if (!k.pkey_ || !crypto::raw_public(c, k.pkey_.get(), px, py))
        throw KeyError("\"d\" is not a valid private key");
      if (px != k.x_ || py != k.y_) throw KeyError("\"d\" does not belong to the public key \"x\"/\"y\"");
      k.has_private_ = true;
    } else {
      k.pkey_ = k.public_;
    }
  } else {
    throw KeyError("\"kty\": \"" + kty + "\" is not supported (oct, OKP or EC)");
  }
  if (k.alg_ && !k.allows(*k.alg_))
    throw KeyError("\"alg\": " + alg_name(*k.alg_) + " does not fit a key of this type and size");
  return k;
}

std::string Key::to_jwk(bool include_private) const {
  nlohmann::ordered_json j;
  switch (type_) {
    case Type::Symmetric:
      j["kty"] = "oct";
      break;
    case Type::Ed25519:
    case Type::X25519:
      j["kty"] = "OKP";
      break;
    case Type::P256:
      j["kty"] = "EC";
      break;
  }
  j["kid"] = kid_;
  if (alg_) j["alg"] = alg_name(*alg_);
  if (!use_.empty()) j["use"] = use_;
  if (type_ == Type::Symmetric) {
    if (include_private) j["k"] = base64url_encode(k_.view());
  } else {
    j["crv"] = type_ == Type::Ed25519 ? "Ed25519" : type_ == Type::X25519 ? "X25519" : "P-256";
    j["x"] = base64url_encode(x_);
    if (type_ == Type::P256) j["y"] = base64url_encode(y_);
    if (include_private && has_private_) {
      crypto::Secret d;
      if (!crypto::raw_private(curve(), pkey_.get(), d)) throw KeyError("cannot export the private key");
      j["d"] = base64url_encode(d.view());
    }
  }
  return j.dump(2) + "\n";
}

Key Key::public_only() const {
  if (type_ == Type::Symmetric) throw KeyError("a symmetric key has no public part");
  Key k = *this;
  k.pkey_ = public_;
  k.has_private_ = false;
  return k;
}

Key Key::generate(KeyKind kind, std::string kid, bool p256_for_ecdh) {
  if (kid.empty()) throw KeyError("the key id is empty");
  Key k;
  k.kid_ = std::move(kid);
  switch (kind) {
    case KeyKind::Aes256:
    case KeyKind::ChaCha20:
    case KeyKind::Hmac256:
      k.type_ = Type::Symmetric;
      k.k_ = crypto::Secret(crypto::random_bytes(32));
      k.alg_ = kind == KeyKind::Aes256     ? alg::A256GCM
               : kind == KeyKind::ChaCha20 ? alg::ChaCha20Poly1305
                                           : alg::HMAC256;
      k.use_ = kind == KeyKind::Hmac256 ? "sig" : "enc";
      k.has_private_ = true;
      return k;
    case KeyKind::Ed25519:
      k.type_ = Type::Ed25519;
      k.alg_ = alg::EdDSA;
      k.use_ = "sig";
      break;
    case KeyKind::X25519:
      k.type_ = Type::X25519;
      k.alg_ = alg::EcdhEsHkdf256;
      k.use_ = "enc";
      break;
    case KeyKind::P256:
      k.type_ = Type::P256;
      k.alg_ = p256_for_ecdh ? alg::EcdhEsHkdf256 : alg::ES256;
      k.use_ = p256_for_ecdh ? "enc" : "sig";
      break;
  }
  k.pkey_ = crypto::generate(k.curve());
  if (!k.pkey_ || !crypto::raw_public(k.curve(), k.pkey_.get(), k.x_, k.y_))
    throw KeyError("key generation failed");
  k.public_ = crypto::public_key(k.curve(), k.x_, k.y_);
  if (!k.public_) throw KeyError("key generation failed");
  k.has_private_ = true;
  return k;
}

Key load_key_file(const std::filesystem::path& path) {
  const std::string name = path.string();
  const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ELOOP) throw KeyError(name + ": is a symbolic link; give the key file itself");
    throw KeyError(name + ": " + std::strerror(errno));
  }
  struct stat st {};
  std::string text;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw KeyError(name + ": not a regular file");
  }
  if (st.st_size > 65536) {
    ::close(fd);
    throw KeyError(name + ": larger than 64 KiB; not a key file");
  }
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw KeyError(name + ": " + std::strerror(err));
    }
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  crypto::Secret wipe_text(std::move(text));
  Key k;
  try {
    k = Key::from_jwk(wipe_text.view());
  } catch (const KeyError& e) {
    throw KeyError(name + ": " + e.what());
  }
  if (k.has_private() && (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    throw KeyError(name + ": holds a " + std::string(k.is_symmetric() ? "secret" : "private") +
                   " key but has mode " + mode + ", open to group or others; chmod 600 " + name);
  }
  return k;
}

void write_key_file(const std::filesystem::path& path, std::string_view text, unsigned mode, bool overwrite) {
  const std::string name = path.string();
  // Written under a temporary name with its final mode, then renamed: the key is
  // never readable with a wider mode, and a crash leaves no half-written key.
  const std::string tmp = name + ".tmp" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) throw KeyError(tmp + ": " + std::strerror(errno));
  bool ok = ::fchmod(fd, mode) == 0;
  std::size_t done = 0;
  while (ok && done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      ok = false;
    else
      done += static_cast<std::size_t>(n);
  }
  ok = ok && ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    throw KeyError(name + ": " + std::strerror(err));
  }
  if (!overwrite) {
    // link() fails if the name exists, so an existing key is never replaced.
    if (::link(tmp.c_str(), name.c_str()) != 0) {
      const int e = errno;
      ::unlink(tmp.c_str());
      throw KeyError(name + ": " +
                     (e == EEXIST ? std::string("exists (use --force to replace it)") : std::strerror(e)));
    }
    ::unlink(tmp.c_str());
    return;
  }
  if (::rename(tmp.c_str(), name.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw KeyError(name + ": " + std::strerror(e));
  }
}

std::string base64url_encode(std::string_view bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  std::size_t i = 0;
  const auto at = [&](std::size_t k) { return static_cast<unsigned char>(bytes[k]); };
  for (; i + 3 <= bytes.size(); i += 3) {
    const unsigned v = (at(i) << 16) | (at(i + 1) << 8) | at(i + 2);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (bytes.size() - i == 1) {
    const unsigned v = at(i) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
  } else if (bytes.size() - i == 2) {
    const unsigned v = (at(i) << 16) | (at(i + 1) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
  }
  return out;
}

std::optional<std::string> base64url_decode(std::string_view text) {
  const auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
  };
  if (text.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(text.size() * 3 / 4);
  unsigned acc = 0;
  int bits = 0;
  for (char c : text) {
    const int v = value(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<unsigned>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  // The unused low bits of the last character must be zero (one encoding per value).
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return std::nullopt;
  return out;
}

}  // namespace moat::payload
