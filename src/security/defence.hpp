// Brute-force defence: slows failed authentication per (address, user name)
// with exponential backoff, bans an address after repeated failures, and
// limits connection attempts per address. Time is passed in (tests use a fake
// clock); nothing here sleeps or reads a clock. docs/security.md, "Brute-force
// defence", describes the behaviour and [auth.defence] in moat.toml.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moat::security {

using DefenceClock = std::chrono::steady_clock;
using DefenceTime = DefenceClock::time_point;

// An IPv4 or IPv6 address (IPv4-mapped IPv6 addresses count as IPv4).
struct IpAddress {
  std::array<std::uint8_t, 16> bytes{};
  bool v4 = false;
  // "192.0.2.1", "2001:db8::1" (no brackets, no port); nullopt if malformed.
  static std::optional<IpAddress> parse(std::string_view text);
};

// "192.0.2.0/24", "2001:db8::/32", or a single address (a full-length prefix).
struct Cidr {
  IpAddress base;
  unsigned prefix = 0;
  // nullopt if malformed (bad address, prefix too long, bits set past it).
  static std::optional<Cidr> parse(std::string_view text);
  bool contains(const IpAddress& a) const;
};

// The address part of a peer written "ADDRESS:PORT" or "[IPV6]:PORT".
std::string_view peer_address(std::string_view peer);

struct DefenceConfig {
  bool enabled = true;
  // The n-th consecutive failure of one (address, user name) is refused after
  // min(backoff_initial * 2^(n-1), backoff_max). Zero initial: no backoff.
  std::chrono::milliseconds backoff_initial{250};
  std::chrono::milliseconds backoff_max{10'000};
  // Failures are counted over this window; a key's backoff resets after a
  // window without failures (or at a success).
  std::chrono::seconds window{60};
  std::uint32_t ban_after = 10;  // failures from one address within `window`; 0 = never ban
  std::chrono::seconds ban_time{600};
  // New connections per address per second (token bucket, bursts up to
  // connection_burst); 0 = unlimited.
  std::uint32_t connection_rate = 20;
  std::uint32_t connection_burst = 40;
  // Addresses exempt from everything here.
  std::vector<Cidr> allow = default_allow();
  // A refused (banned or rate-limited) address is reported at most once per interval.
  std::chrono::seconds log_interval{60};
  // Addresses and (address, user) pairs tracked at most; beyond, the stalest go.
  std::size_t max_tracked = 100'000;

  static std::vector<Cidr> default_allow();  // 127.0.0.0/8 and ::1
};

// Is `address` (an IP address as text) inside one of the blocks? False for
// text that is no IP address.
bool in_any(const std::vector<Cidr>& blocks, std::string_view address);

// Which peers of one listener the defence judges: [auth.defence]'s `enabled`
// and `allow`, or the listener's own [listener.defence]. The counts and bans
// are the address's, shared by every listener that judges it.
struct DefenceScope {
  bool enabled = true;
  std::vector<Cidr> allow = DefenceConfig::default_allow();
  bool covers(std::string_view address) const { return enabled && !in_any(allow, address); }
};

struct Ban {
  std::string address;
  DefenceTime until;
  std::string reason;
};

// Where bans live in memory. The throttle calls it under its own lock, so an
// implementation needs no locking of its own. Persistence is the broker's:
// it writes each new ban and each lifted one to the store and hands the
// stored ones back through AuthThrottle::restore at start-up.
class BanList {
 public:
  virtual ~BanList() = default;
  virtual std::optional<Ban> find(std::string_view address) const = 0;
  virtual void put(Ban ban) = 0;
  virtual void erase(std::string_view address) = 0;
  virtual std::vector<Ban> all() const = 0;
  // Removes and returns the bans that have ended by `now`.
  std::vector<Ban> take_ended(DefenceTime now);
};

// A failure counter of the defence as the store keeps it, so that a restart
// does not hand out a fresh allowance of guesses. `key` is either an address
// alone (its failures towards a ban, counted since `since`, the start of its
// window) or address + '\0' + user name (that pair's consecutive failures, the
// backoff; `since` is the last one). Addresses never contain '\0'.
struct FailureCounter {
  std::string key;
  std::uint32_t failures = 0;  // 0: the counter is gone (the store forgets it)
  DefenceTime since{};
};

// Start-up: the window start a stored counter still counts from, or nothing
// when it is empty or its window ended by `now` (the store forgets it). A time
// ahead of `now` (the wall clock was set back) counts from `now`.
std::optional<DefenceTime> still_counting(const FailureCounter& c, std::chrono::seconds window,
                                          DefenceTime now);

class MemoryBanList final : public BanList {
 public:
  std::optional<Ban> find(std::string_view address) const override;
  void put(Ban ban) override;
  void erase(std::string_view address) override;
  std::vector<Ban> all() const override;

 private:
  std::unordered_map<std::string, Ban> bans_;
};

// Thread-safe (one mutex; every call is a few map operations).
class AuthThrottle {
 public:
  explicit AuthThrottle(DefenceConfig config, std::unique_ptr<BanList> bans = nullptr);

  enum class Admission : std::uint8_t { Admit, Banned, RateLimited };
  struct Verdict {
    Admission admission = Admission::Admit;
    // Report this refusal (the first one, then at most once per log_interval);
    // `suppressed` refusals were not reported since the last report.
    bool report = false;
    std::uint64_t suppressed = 0;
    DefenceTime banned_until{};
  };
  // A new connection from `address` (at accept): banned, over its rate, or admitted.
  Verdict admit_connection(std::string_view address, DefenceTime now);
  // At CONNECT: refused only when banned (a ban can start after the accept).
  Verdict check_ban(std::string_view address, DefenceTime now);

  struct Failure {
    std::chrono::milliseconds delay{0};  // hold the refusal this long
    std::optional<Ban> banned;           // the address was banned by this failure
    std::uint32_t failures = 0;          // consecutive failures of this (address, user)
    // The counters this failure changed (the pair's, the address's), to store;
    // one with failures 0 was reset (by the ban) and is to be forgotten.
    std::vector<FailureCounter> counters;
  };
  // A refused authentication of `username` ("" without one) from `address`.
  Failure failure(std::string_view address, std::string_view username, DefenceTime now);
  // A successful one: the pair's backoff starts again. Returns the key of the
  // pair's counter when there was one (the store forgets it too).
  std::optional<std::string> success(std::string_view address, std::string_view username);
  // Lifts the bans that ended; returns them (to log them).
  std::vector<Ban> expire(DefenceTime now);
  // Start-up: bans kept from the previous run (the store holds them; the
  // broker writes each ban and unban there). Bans that ended are skipped;
  // exempt addresses are not restored.
  void restore(std::vector<Ban> bans, DefenceTime now);
  // Start-up: failure counters kept from the previous run. Those whose window
  // ended by `now`, of exempt addresses, or malformed, are not restored; their
  // keys are returned (the store forgets them).
  std::vector<std::string> restore_failures(std::vector<FailureCounter> counters, DefenceTime now);
  // The keys of the counters forgotten since the last call: their window ended
  // by `now` (forgotten here), or they made room for others. The broker calls
  // it with expire() so that the store keeps only what memory has.
  std::vector<std::string> take_forgotten(DefenceTime now);

  bool exempt(std::string_view address) const;
  bool banned(std::string_view address, DefenceTime now) const;
  const DefenceConfig& config() const { return config_; }
  std::size_t tracked() const;

 private:
  struct AddressState {
    DefenceTime window_start{};
    std::uint32_t failures = 0;
    double tokens = -1;  // < 0: full bucket, not yet used
    DefenceTime refilled{};
    DefenceTime last_report{};
    bool reported = false;
    std::uint64_t suppressed = 0;
    DefenceTime touched{};
  };
  struct KeyState {
    std::uint32_t failures = 0;
    DefenceTime last{};
  };
  AddressState& address_state(std::string_view address, DefenceTime now);
  Verdict refuse(AddressState& st, Admission why, DefenceTime now, DefenceTime until);
  void make_room(DefenceTime now);
  // Moves the (address, user) counters quiet for a window to forgotten_.
  void forget_quiet_keys(DefenceTime now);
  std::optional<Ban> active_ban(std::string_view address, DefenceTime now) const;

  const DefenceConfig config_;
  mutable std::mutex mu_;
  std::unique_ptr<BanList> bans_;
  std::unordered_map<std::string, AddressState> addresses_;
  std::unordered_map<std::string, KeyState> keys_;  // address + '\0' + user name
  // The failure counters dropped, until take_forgotten.
  std::vector<std::string> forgotten_;
};

}  // namespace moat::security
