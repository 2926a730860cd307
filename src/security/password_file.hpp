// Password files: one "user:hash" line per user, hashed with argon2id (what Moat
// writes) or Mosquitto's PBKDF2-SHA512 ($7$) and SHA-512 ($6$) forms (read so that
// a Mosquitto user keeps their file). See docs/security.md for the formats.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "security/authn.hpp"

namespace moat::security {

// argon2id cost. The defaults take ~35-45 ms per verification on the reference
// machine (one core of an AMD EPYC, shared) and 32 MiB of memory while it runs;
// docs/security.md explains the choice.
struct Argon2Params {
  std::uint32_t memory_kib = 32768;
  std::uint32_t iterations = 2;
  std::uint32_t parallelism = 1;

  // Throws std::invalid_argument naming the parameter out of range:
  // parallelism 1..64, memory_kib 8*parallelism..4194304 (4 GiB), iterations 1..1000.
  void validate() const;
};

// "$argon2id$v=19$m=...,t=...,p=...$SALT$HASH" (PHC string format, unpadded
// base64) with a fresh 16-byte random salt and a 32-byte hash.
std::string hash_argon2id(std::string_view password, const Argon2Params& params);

// A user name Moat accepts in a password file: non-empty, valid UTF-8 without
// U+0000, at most 65535 bytes, no ':', CR or LF, not starting with '#'.
// Returns the reason it is not, or an empty string.
std::string check_user_name(std::string_view user);

// The immutable, thread-safe table of one password file. verify() may run on
// several threads at once; a reload builds a new table and swaps the pointer.
class PasswordFile {
 public:
  enum class Scheme : std::uint8_t { Argon2id, Pbkdf2Sha512, Sha512 };

  struct Entry {
    Scheme scheme = Scheme::Argon2id;
    std::uint32_t iterations = 0;   // argon2 t, or PBKDF2 iterations
    std::uint32_t memory_kib = 0;   // argon2 only
    std::uint32_t parallelism = 0;  // argon2 only
    std::string salt;               // decoded bytes
    std::string hash;               // decoded bytes
  };

  // Throws std::runtime_error "FILE:LINE: reason" for the first malformed line
  // (or "FILE: reason" when the file cannot be read).
  static std::shared_ptr<const PasswordFile> load(const std::filesystem::path& path);
  // Same, from text; `source` names it in errors.
  static std::shared_ptr<const PasswordFile> parse(std::string_view text, std::string_view source);

  // Constant time in the stored hash, and the time to answer does not tell
  // whether the user exists (docs/security.md, "Verification"): an unknown user
  // costs one hash against the "dummy", an entry of the costliest scheme and
  // cost in the file; a wrong password for a user whose entry is cheaper than
  // the dummy is held as long as a dummy hash takes (a duration drawn from the
  // recent ones). A right password is answered at once.
  bool verify(std::string_view user, std::string_view password) const;

  std::size_t size() const { return entries_.size(); }
  bool contains(std::string_view user) const;
  // Hashes computed by verify() so far (known and unknown users alike).
  std::uint64_t hashes_computed() const { return hashes_.load(std::memory_order_relaxed); }
  // The scheme and cost of the dummy entry, e.g. "$argon2id$v=19$m=32768,t=2,p=1",
  // "$7$101" or "$6$"; empty for an empty file (which then uses a default argon2id dummy).
  std::string dummy_params() const;
  // Wrong-password answers held to a dummy hash's duration so far.
  std::uint64_t padded_answers() const { return padded_.load(std::memory_order_relaxed); }
  // The recent durations of hashes with the dummy's cost (unknown users, and
  // users whose entry has the dummy's cost) that the holding draws from.
  std::vector<std::chrono::nanoseconds> dummy_durations() const;
  // Estimated work of one verification of `e`, in nanoseconds on the reference
  // machine: the dummy is the entry with the most work (docs/security.md).
  static std::uint64_t work(const Entry& e);

  PasswordFile(const PasswordFile&) = delete;
  PasswordFile& operator=(const PasswordFile&) = delete;

 private:
  PasswordFile() = default;
  struct Hash {
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    using is_transparent = void;
  };
  void record_dummy_duration(std::chrono::nanoseconds d) const;
  // Holds a wrong-password answer that began at `start` until a dummy hash's duration.
  void hold_like_dummy(std::chrono::steady_clock::time_point start, std::string_view password) const;

  std::unordered_map<std::string, Entry, Hash, std::equal_to<>> entries_;
  Entry dummy_;
  mutable std::atomic<std::uint64_t> hashes_{0};
  mutable std::atomic<std::uint64_t> padded_{0};
  // A ring of the last kDurations dummy-cost hash durations (ns; 0 = not yet
  // written) and how many were recorded in all.
  static constexpr std::size_t kDurations = 16;
  mutable std::array<std::atomic<std::int64_t>, kDurations> durations_{};
  mutable std::atomic<std::uint64_t> recorded_{0};
};

// Creates or replaces USER's entry (argon2id with `params`), keeping every other
// line as it was, and rewrites the file atomically (temporary file in the same
// folder, fsync, rename) with mode 0600. Creates the file if missing. Refuses
// (std::runtime_error) when the existing file does not parse, and
// (std::invalid_argument) a bad user name or an empty password.
// Returns true when the user was added, false when replaced.
bool set_password(const std::filesystem::path& path, std::string_view user, std::string_view password,
                  const Argon2Params& params = {});

// Removes USER's entry the same way; false (file untouched) if there was none.
bool delete_user(const std::filesystem::path& path, std::string_view user);

// "password": a client that sent a user name must match the password file.
// No user name: Continue (a later method decides). User name without password,
// unknown user or wrong password: BadCredentials. Otherwise Allow with
// identity = the user name. Thread-safe; reload() swaps the table atomically.
class PasswordAuthenticator final : public Authenticator {
 public:
  explicit PasswordAuthenticator(std::shared_ptr<const PasswordFile> file) : file_(std::move(file)) {}
  std::string_view name() const override { return "password"; }
  AuthResult authenticate(const ConnectInfo& info) override;
  Mode mode() const override { return Mode::Blocking; }
  void reload(std::shared_ptr<const PasswordFile> file) {
    std::lock_guard lock(mu_);
    file_.swap(file);  // the old table is released outside the lock
  }
  std::shared_ptr<const PasswordFile> table() const {
    std::lock_guard lock(mu_);
    return file_;
  }

 private:
  // A mutex, not std::atomic<std::shared_ptr>: libstdc++ 12's version trips TSan,
  // and the lock is held for a pointer copy next to a ~44 ms hash.
  mutable std::mutex mu_;
  std::shared_ptr<const PasswordFile> file_;
};

}  // namespace moat::security
