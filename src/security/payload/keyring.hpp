// A keyring: which keys seal and open the envelopes of which topics, with the
// sender's sequence numbers and the receiver's replay windows. The client
// library and the broker's topic policies seal and open through it:
//
//   auto ring = payload::Keyring::load("keys.toml");
//   auto env = ring->seal("plant/7/cmd", "open valve", payload::Mode::Sign);
//   auto msg = ring->open("plant/7/cmd", *env, {.require_fresh = true});
//
// The file format (TOML) is in docs/payload-security.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "security/payload/cose.hpp"
#include "security/payload/errors.hpp"
#include "security/payload/key.hpp"
#include "security/payload/replay.hpp"

namespace moat::payload {

class KeyringError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct OpenPolicy {
  // Refuse an envelope without a protected timestamp and sequence number
  // (not_fresh). Without it, an envelope with no replay headers (from another COSE
  // library) opens; one that has them is still checked.
  bool require_fresh = false;
  // Accept a digest envelope (no key; not tamper-proof on its own).
  bool allow_digest = false;
  std::optional<std::int64_t> now_s;      // the time, seconds since the epoch; default: the system clock
  std::optional<std::int64_t> max_age_s;  // overrides the keyring's [replay] max_age
};

struct SealPolicy {
  bool replay_headers = true;          // timestamp and sequence number
  std::optional<std::int64_t> now_us;  // the time, microseconds since the epoch; default: the system clock
  std::int64_t content_alg = alg::A256GCM;  // encrypt-to
};

class Keyring {
 public:
  struct Entry {
    std::string filter;                            // MQTT topic filter; empty: every topic
    std::vector<std::shared_ptr<const Key>> keys;  // the first key fit for a mode seals; all open
    bool require_fresh = false;
    // How a client seals what it publishes on these topics (`seal = "sign"`);
    // none: the entry only opens, or the caller names the mode.
    std::optional<Mode> seal;
  };

  explicit Keyring(std::vector<Entry> entries, ReplayConfig replay = {});

  // Reads a keyring file and its key files (relative to the file's folder). Throws
  // KeyringError "FILE:LINE:COLUMN: KEY: REASON".
  static std::unique_ptr<Keyring> load(const std::filesystem::path& file);
  static std::unique_ptr<Keyring> parse(std::string_view text, const std::filesystem::path& source);
  // One key for every topic (what `moat seal --key` and `moat open --key` use).
  static std::unique_ptr<Keyring> single(Key key, ReplayConfig replay = {});

  // The keys of every entry whose filter matches `topic`, in file order.
  std::vector<std::shared_ptr<const Key>> keys_for(std::string_view topic) const;
  // Does any entry with a key match `topic`? keys_for() without building the list.
  bool has_keys_for(std::string_view topic) const;
  // The `seal` mode of the first matching entry that has one.
  std::optional<Mode> seal_mode_for(std::string_view topic) const;
  // Is there a key for `topic` that seals in `mode`? (digest: always)
  bool can_seal(std::string_view topic, Mode mode) const;

  Result<std::string> seal(std::string_view topic, std::string_view plaintext, Mode mode,
                           const SealPolicy& policy = {});
  // Decodes, finds the key (by kid), verifies or decrypts, then checks the
  // timestamp and the replay window, which it updates.
  Result<Opened> open(std::string_view topic, std::string_view envelope, const OpenPolicy& policy = {});
  // The same for an envelope already decoded (whose bytes outlive the call).
  Result<Opened> open(std::string_view topic, const Envelope& envelope, const OpenPolicy& policy = {});

  ReplayGuard& replay_guard() { return *guard_; }
  const ReplayConfig& replay_config() const { return replay_; }
  // The replay windows, to hand over to the keyring that replaces this one
  // (a reload must not forget which envelopes were seen).
  std::shared_ptr<ReplayGuard> replay_windows() const { return guard_; }
  // Uses `windows` (from the keyring this one replaces) from now on, with this
  // keyring's [replay] limits. Call before the keyring is shared.
  void adopt_replay_windows(std::shared_ptr<ReplayGuard> windows);
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  std::vector<Entry> entries_;
  ReplayConfig replay_;
  Sequencer sequencer_;
  std::shared_ptr<ReplayGuard> guard_;
};

}  // namespace moat::payload
