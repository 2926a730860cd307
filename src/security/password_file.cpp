#include "security/password_file.hpp"

#include <argon2.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <tuple>

#include "codec/topic.hpp"

namespace moat::security {
namespace {

using Scheme = PasswordFile::Scheme;
using Entry = PasswordFile::Entry;

constexpr std::size_t kArgonSaltBytes = 16;
constexpr std::size_t kArgonHashBytes = 32;
constexpr std::size_t kMaxDigestBytes = 1024;

// ---- base64 (RFC 4648 section 4, standard alphabet) ----

int b64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// Decodes padded (Mosquitto) or unpadded (PHC) base64; nullopt if malformed.
std::optional<std::string> b64_decode(std::string_view in, bool padded) {
  if (padded) {
    if (in.size() % 4 != 0) return std::nullopt;
    std::size_t pad = 0;
    while (pad < 2 && pad < in.size() && in[in.size() - 1 - pad] == '=') ++pad;
    in.remove_suffix(pad);
  }
  if (in.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(in.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const int v = b64_value(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  // Leftover bits must be zero (a canonical encoding).
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return std::nullopt;
  return out;
}

std::optional<std::uint32_t> parse_u32(std::string_view s) {
  if (s.empty() || s.size() > 10 || s.find_first_not_of("0123456789") != std::string_view::npos)
    return std::nullopt;
  std::uint64_t v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  if (v > 0xFFFFFFFFu) return std::nullopt;
  return static_cast<std::uint32_t>(v);
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  for (;;) {
    const auto p = s.find(sep, start);
    if (p == std::string_view::npos) {
      parts.push_back(s.substr(start));
      return parts;
    }
    parts.push_back(s.substr(start, p - start));
    start = p + 1;
  }
}

void check_argon2(std::uint32_t m, std::uint32_t t, std::uint32_t p) {
  if (p < 1 || p > 64) throw std::invalid_argument("argon2 parallelism must be between 1 and 64");
  if (m < 8 * p || m > 4194304)
    throw std::invalid_argument("argon2 memory must be between 8 x parallelism and 4194304 KiB");
  if (t < 1 || t > 1000) throw std::invalid_argument("argon2 iterations must be between 1 and 1000");
}

// Parses the hash part of one line; throws std::invalid_argument with the reason.
Entry parse_hash(std::string_view h) {
  Entry e;
  if (h.starts_with("$argon2id$")) {
    // $argon2id$v=19$m=M,t=T,p=P$SALT$HASH
    const auto parts = split(h.substr(1), '$');
    if (parts.size() != 5)
      throw std::invalid_argument("argon2id hash must be $argon2id$v=19$m=M,t=T,p=P$SALT$HASH");
    if (parts[1] != "v=19") throw std::invalid_argument("only argon2 version 19 (v=19) is supported");
    const auto params = split(parts[2], ',');
    if (params.size() != 3 || !params[0].starts_with("m=") || !params[1].starts_with("t=") ||
        !params[2].starts_with("p="))
      throw std::invalid_argument("argon2id parameters must be m=MEMORY_KIB,t=ITERATIONS,p=PARALLELISM");
    const auto m = parse_u32(params[0].substr(2));
    const auto t = parse_u32(params[1].substr(2));
    const auto p = parse_u32(params[2].substr(2));
    if (!m || !t || !p) throw std::invalid_argument("argon2id parameters must be decimal numbers");
    check_argon2(*m, *t, *p);
    auto salt = b64_decode(parts[3], false);
    auto hash = b64_decode(parts[4], false);
    if (!salt || !hash) throw std::invalid_argument("argon2id salt or hash is not unpadded base64");
    if (salt->size() < 8) throw std::invalid_argument("argon2id salt must be at least 8 bytes");
    if (hash->size() < 16 || hash->size() > kMaxDigestBytes)
      throw std::invalid_argument("argon2id hash must be between 16 and 1024 bytes");
    e.scheme = Scheme::Argon2id;
    e.memory_kib = *m;
    e.iterations = *t;
    e.parallelism = *p;
    e.salt = std::move(*salt);
    e.hash = std::move(*hash);
    return e;
  }
  if (h.starts_with("$7$")) {
    // Mosquitto PBKDF2-SHA512: $7$ITERATIONS$SALT$HASH (padded base64).
    const auto parts = split(h.substr(1), '$');
    if (parts.size() != 4) throw std::invalid_argument("PBKDF2 hash must be $7$ITERATIONS$SALT$HASH");
    const auto it = parse_u32(parts[1]);
    if (!it || *it < 1 || *it > 10'000'000)
      throw std::invalid_argument("PBKDF2 iterations must be a number between 1 and 10000000");
    auto salt = b64_decode(parts[2], true);
    auto hash = b64_decode(parts[3], true);
    if (!salt || !hash) throw std::invalid_argument("PBKDF2 salt or hash is not base64");
    if (salt->empty()) throw std::invalid_argument("PBKDF2 salt is empty");
    if (hash->size() < 16 || hash->size() > kMaxDigestBytes)
      throw std::invalid_argument("PBKDF2 hash must be between 16 and 1024 bytes");
    e.scheme = Scheme::Pbkdf2Sha512;
    e.iterations = *it;
    e.salt = std::move(*salt);
    e.hash = std::move(*hash);
    return e;
  }
  if (h.starts_with("$6$")) {
    // Mosquitto 1.6 and older: $6$SALT$HASH, HASH = SHA-512(password || salt).
    const auto parts = split(h.substr(1), '$');
    if (parts.size() != 3) throw std::invalid_argument("SHA-512 hash must be $6$SALT$HASH");
    auto salt = b64_decode(parts[1], true);
    auto hash = b64_decode(parts[2], true);
    if (!salt || !hash) throw std::invalid_argument("SHA-512 salt or hash is not base64");
    if (salt->empty()) throw std::invalid_argument("SHA-512 salt is empty");
    if (hash->size() != 64) throw std::invalid_argument("SHA-512 hash must be 64 bytes");
    e.scheme = Scheme::Sha512;
    e.salt = std::move(*salt);
    e.hash = std::move(*hash);
    return e;
  }
  if (h.starts_with("$argon2")) throw std::invalid_argument("only the argon2id variant is supported");
  throw std::invalid_argument(
      "unknown hash format (expected $argon2id$..., $7$... or $6$...; plain-text passwords are not "
      "accepted, use 'moat passwd')");
}

// The digest of `password` under e's scheme, salt and cost (same length as e.hash).
std::string compute(const Entry& e, std::string_view password) {
  std::string out(e.hash.size(), '\0');
  auto* dst = reinterpret_cast<unsigned char*>(out.data());
  switch (e.scheme) {
    case Scheme::Argon2id: {
      const int rc = argon2id_hash_raw(e.iterations, e.memory_kib, e.parallelism, password.data(),
                                       password.size(), e.salt.data(), e.salt.size(), dst, out.size());
      if (rc != ARGON2_OK) throw std::runtime_error(std::string("argon2id: ") + argon2_error_message(rc));
      break;
    }
    case Scheme::Pbkdf2Sha512:
      if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                            reinterpret_cast<const unsigned char*>(e.salt.data()),
                            static_cast<int>(e.salt.size()), static_cast<int>(e.iterations), EVP_sha512(),
                            static_cast<int>(out.size()), dst) != 1)
        throw std::runtime_error("PBKDF2-SHA512 failed");
      break;
    case Scheme::Sha512: {
      EVP_MD_CTX* ctx = EVP_MD_CTX_new();
      unsigned int len = 0;
      const bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha512(), nullptr) == 1 &&
                      EVP_DigestUpdate(ctx, password.data(), password.size()) == 1 &&
                      EVP_DigestUpdate(ctx, e.salt.data(), e.salt.size()) == 1 &&
                      EVP_DigestFinal_ex(ctx, dst, &len) == 1 && len == out.size();
      EVP_MD_CTX_free(ctx);
      if (!ok) throw std::runtime_error("SHA-512 failed");
      break;
    }
  }
  return out;
}

// Work model for choosing the dummy (estimated ns per verification on the
// reference machine; docs/security.md "Verification"). Only the order
// matters: the holding of cheaper answers uses measured durations, not these.
constexpr std::uint64_t kArgon2NsPerKibPass = 670;  // m=32768,t=2: ~44 ms
constexpr std::uint64_t kPbkdf2NsPerIteration = 700;
constexpr std::uint64_t kSha512Ns = 1'000;

std::uint64_t work_of(Scheme scheme, std::uint64_t m, std::uint64_t t) {
  switch (scheme) {
    case Scheme::Argon2id:
      return m * t * kArgon2NsPerKibPass;
    case Scheme::Pbkdf2Sha512:
      return t * kPbkdf2NsPerIteration;
    case Scheme::Sha512:
      return kSha512Ns;
  }
  return 0;
}

// Same scheme, parameters and sizes as the dummy: the same work.
bool same_cost(const Entry& a, const Entry& b) {
  return a.scheme == b.scheme && a.memory_kib == b.memory_kib && a.iterations == b.iterations &&
         a.parallelism == b.parallelism && a.salt.size() == b.salt.size() && a.hash.size() == b.hash.size();
}

std::string random_bytes(std::size_t n) {
  std::string s(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(s.data()), static_cast<int>(n)) != 1)
    throw std::runtime_error("RAND_bytes failed");
  return s;
}

std::string scheme_params(const Entry& e) {
  switch (e.scheme) {
    case Scheme::Argon2id:
      return "$argon2id$v=19$m=" + std::to_string(e.memory_kib) + ",t=" + std::to_string(e.iterations) +
             ",p=" + std::to_string(e.parallelism);
    case Scheme::Pbkdf2Sha512:
      return "$7$" + std::to_string(e.iterations);
    case Scheme::Sha512:
      return "$6$";
  }
  return {};
}

// One line of a password file as written, and the user it defines (if any).
struct Line {
  std::string text;
  std::string user;
};

struct Parsed {
  std::vector<Line> lines;
  std::map<std::string, std::pair<Entry, std::size_t>, std::less<>> entries;  // user -> (entry, line no)
};

Parsed parse_text(std::string_view text, std::string_view source) {
  Parsed out;
  std::size_t lineno = 0;
  std::size_t start = 0;
  while (start < text.size()) {
    auto nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(start, nl - start);
    start = nl + 1;
    ++lineno;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t'))
      line.remove_suffix(1);
    Line l{std::string(line), {}};
    auto fail = [&](const std::string& why) -> void {
      throw std::runtime_error(std::string(source) + ":" + std::to_string(lineno) + ": " + why);
    };
    if (!line.empty() && line.front() != '#') {
      const auto colon = line.find(':');
      if (colon == std::string_view::npos) fail("expected USER:HASH");
      const auto user = line.substr(0, colon);
      if (auto why = check_user_name(user); !why.empty()) fail(why);
      try {
        Entry e = parse_hash(line.substr(colon + 1));
        auto [it, fresh] = out.entries.try_emplace(std::string(user), std::move(e), lineno);
        if (!fresh)
          fail("user '" + std::string(user) + "' is defined twice (first on line " +
               std::to_string(it->second.second) + ")");
      } catch (const std::invalid_argument& ex) {
        fail("user '" + std::string(user) + "': " + ex.what());
      }
      l.user = std::string(user);
    }
    out.lines.push_back(std::move(l));
  }
  return out;
}

std::string read_file(const std::filesystem::path& path, bool missing_ok) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (missing_ok && errno == ENOENT) return {};
    throw std::runtime_error(path.string() + ": cannot open: " + std::strerror(errno));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw std::runtime_error(path.string() + ": read error");
  return ss.str();
}

[[noreturn]] void fail_errno(const std::filesystem::path& p, const char* what) {
  throw std::runtime_error(p.string() + ": " + what + ": " + std::strerror(errno));
}

// Writes `content` to a temporary file next to `path` (mode 0600), fsyncs it,
// renames it over `path` and fsyncs the folder: readers see the old or the new
// file, never a mix.
void write_atomically(const std::filesystem::path& path, const std::string& content) {
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : ".";
  std::string tmp = (dir / ("." + path.filename().string() + ".tmpXXXXXX")).string();
  const int fd = ::mkstemp(tmp.data());  // created with mode 0600
  if (fd < 0) fail_errno(tmp, "cannot create");
  auto abandon = [&](const char* what) {
    const int saved = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    errno = saved;
    fail_errno(tmp, what);
  };
  if (::fchmod(fd, S_IRUSR | S_IWUSR) != 0) abandon("chmod");
  std::size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      abandon("write");
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) abandon("fsync");
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail_errno(tmp, "close");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int saved = errno;
    ::unlink(tmp.c_str());
    errno = saved;
    fail_errno(path, "rename");
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

std::string join(const std::vector<Line>& lines) {
  std::string s;
  for (const auto& l : lines) {
    s += l.text;
    s += '\n';
  }
  return s;
}

}  // namespace

void Argon2Params::validate() const {
  check_argon2(memory_kib, iterations, parallelism);
}

std::string hash_argon2id(std::string_view password, const Argon2Params& params) {
  params.validate();
  const std::string salt = random_bytes(kArgonSaltBytes);
  const std::size_t len = argon2_encodedlen(params.iterations, params.memory_kib, params.parallelism,
                                            kArgonSaltBytes, kArgonHashBytes, Argon2_id);
  std::string encoded(len, '\0');
  const int rc = argon2id_hash_encoded(params.iterations, params.memory_kib, params.parallelism,
                                       password.data(), password.size(), salt.data(), salt.size(),
                                       kArgonHashBytes, encoded.data(), encoded.size());
  if (rc != ARGON2_OK) throw std::runtime_error(std::string("argon2id: ") + argon2_error_message(rc));
  encoded.resize(std::strlen(encoded.c_str()));
  return encoded;
}

std::string check_user_name(std::string_view user) {
  if (user.empty()) return "empty user name";
  if (user.size() > 65535) return "user name longer than 65535 bytes";
  if (user.find_first_of(":\r\n") != std::string_view::npos) return "user name contains ':', CR or LF";
  if (user.front() == '#') return "user name starts with '#' (a comment)";
  if (codec::check_utf8(user) != codec::ProtocolError::None) return "user name is not valid UTF-8";
  return {};
}

std::shared_ptr<const PasswordFile> PasswordFile::parse(std::string_view text, std::string_view source) {
  Parsed p = parse_text(text, source);
  std::shared_ptr<PasswordFile> f(new PasswordFile());
  f->entries_.reserve(p.entries.size());
  // The dummy takes the costliest scheme and cost present (ties: the more
  // common, then the later in key order): an unknown user then costs at least
  // what any known user costs, and cheaper entries are held up to it in verify().
  using Profile = std::tuple<int, std::uint32_t, std::uint32_t, std::uint32_t, std::size_t, std::size_t>;
  std::map<Profile, std::size_t> census;
  for (auto& [user, entry_line] : p.entries) {
    const Entry& e = entry_line.first;
    ++census[{static_cast<int>(e.scheme), e.memory_kib, e.iterations, e.parallelism, e.salt.size(),
              e.hash.size()}];
    f->entries_.emplace(user, std::move(entry_line.first));
  }
  Entry d;
  if (census.empty()) {
    const Argon2Params def;
    d.scheme = Scheme::Argon2id;
    d.memory_kib = def.memory_kib;
    d.iterations = def.iterations;
    d.parallelism = def.parallelism;
    d.salt = random_bytes(kArgonSaltBytes);
    d.hash = random_bytes(kArgonHashBytes);
  } else {
    auto rank = [](const std::pair<const Profile, std::size_t>& c) {
      const Profile& k = c.first;
      return std::pair(work_of(static_cast<Scheme>(std::get<0>(k)), std::get<1>(k), std::get<2>(k)),
                       c.second);
    };
    auto best = census.begin();
    for (auto it = census.begin(); it != census.end(); ++it)
      if (rank(*it) >= rank(*best)) best = it;
    const auto& [scheme, m, t, par, salt_len, hash_len] = best->first;
    d.scheme = static_cast<Scheme>(scheme);
    d.memory_kib = m;
    d.iterations = t;
    d.parallelism = par;
    d.salt = random_bytes(salt_len);
    d.hash = random_bytes(hash_len);
  }
  f->dummy_ = std::move(d);
  return f;
}

std::shared_ptr<const PasswordFile> PasswordFile::load(const std::filesystem::path& path) {
  return parse(read_file(path, false), path.string());
}

bool PasswordFile::contains(std::string_view user) const {
  return entries_.find(user) != entries_.end();
}

std::string PasswordFile::dummy_params() const {
  return entries_.empty() ? std::string() : scheme_params(dummy_);
}

std::uint64_t PasswordFile::work(const Entry& e) {
  return work_of(e.scheme, e.memory_kib, e.iterations);
}

std::vector<std::chrono::nanoseconds> PasswordFile::dummy_durations() const {
  std::vector<std::chrono::nanoseconds> out;
  for (const auto& d : durations_)
    if (const auto ns = d.load(std::memory_order_relaxed); ns > 0) out.emplace_back(ns);
  return out;
}

void PasswordFile::record_dummy_duration(std::chrono::nanoseconds d) const {
  const auto slot = recorded_.fetch_add(1, std::memory_order_relaxed) % kDurations;
  durations_[slot].store(std::max<std::int64_t>(1, d.count()), std::memory_order_relaxed);
}

void PasswordFile::hold_like_dummy(std::chrono::steady_clock::time_point start,
                                   std::string_view password) const {
  padded_.fetch_add(1, std::memory_order_relaxed);
  // A duration drawn at random from the recent ones, so that held answers
  // spread like the dummy's own (load included), not around a fixed mean.
  const auto n = std::min<std::uint64_t>(recorded_.load(std::memory_order_relaxed), kDurations);
  std::int64_t target = 0;
  if (n > 0) {
    std::uint32_t r = 0;
    const std::string bytes = random_bytes(sizeof r);
    std::memcpy(&r, bytes.data(), sizeof r);
    target = durations_[r % n].load(std::memory_order_relaxed);
  }
  if (target <= 0) {
    // Nothing measured yet in this table: pay a real dummy hash, and measure it.
    const auto t0 = std::chrono::steady_clock::now();
    (void)compute(dummy_, password);
    hashes_.fetch_add(1, std::memory_order_relaxed);
    record_dummy_duration(std::chrono::steady_clock::now() - t0);
    return;
  }
  std::this_thread::sleep_until(start + std::chrono::nanoseconds(target));
}

bool PasswordFile::verify(std::string_view user, std::string_view password) const {
  const auto start = std::chrono::steady_clock::now();
  const auto it = entries_.find(user);
  const bool known = it != entries_.end();
  const Entry& e = known ? it->second : dummy_;
  const std::string digest = compute(e, password);
  hashes_.fetch_add(1, std::memory_order_relaxed);
  const bool same =
      digest.size() == e.hash.size() && CRYPTO_memcmp(digest.data(), e.hash.data(), e.hash.size()) == 0;
  if (!known || same_cost(e, dummy_))
    record_dummy_duration(std::chrono::steady_clock::now() - start);
  else if (!same)
    hold_like_dummy(start, password);
  return known & same;
}

bool set_password(const std::filesystem::path& path, std::string_view user, std::string_view password,
                  const Argon2Params& params) {
  if (auto why = check_user_name(user); !why.empty()) throw std::invalid_argument(why);
  if (password.empty()) throw std::invalid_argument("empty password");
  params.validate();
  Parsed p = parse_text(read_file(path, true), path.string());
  const std::string line = std::string(user) + ":" + hash_argon2id(password, params);
  bool added = true;
  for (auto& l : p.lines) {
    if (l.user == user) {
      l.text = line;
      added = false;
    }
  }
  if (added) p.lines.push_back(Line{line, std::string(user)});
  write_atomically(path, join(p.lines));
  return added;
}

bool delete_user(const std::filesystem::path& path, std::string_view user) {
  Parsed p = parse_text(read_file(path, false), path.string());
  const auto before = p.lines.size();
  std::erase_if(p.lines, [&](const Line& l) { return l.user == user; });
  if (p.lines.size() == before) return false;
  write_atomically(path, join(p.lines));
  return true;
}

AuthResult PasswordAuthenticator::authenticate(const ConnectInfo& info) {
  AuthResult r;
  r.method = name();
  if (!info.username) return r;  // Continue: another method may admit a client without a user name
  r.decision = AuthDecision::BadCredentials;
  if (!info.password) {
    r.reason = "no password";
    return r;
  }
  const auto file = table();
  if (file && file->verify(*info.username, *info.password)) {
    r.decision = AuthDecision::Allow;
    r.identity = std::string(*info.username);
    return r;
  }
  // The same words for an unknown user as for a wrong password: the audit
  // stream must not become a user-name oracle for whoever reads it.
  r.reason = "unknown user or wrong password";
  return r;
}

}  // namespace moat::security
