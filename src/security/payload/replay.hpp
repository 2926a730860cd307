// Replay protection: the sender's sequence numbers and the receiver's windows.
//
// A sender numbers its envelopes per key id with a sequence that only grows: the
// next number is the larger of (last + 1) and the current time in microseconds, so
// a sender that restarts without any saved state still continues above what it
// sent before (as long as its clock does not go back).
//
// A receiver keeps one window per sender: the sequence numbers accepted most
// recently (up to `window` of them) and a floor below which everything is refused.
// The window is a set, not a bitmap, because time-based sequence numbers are sparse
// and messages may arrive slightly out of order.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "security/payload/errors.hpp"

namespace moat::payload {

struct ReplayConfig {
  std::int64_t max_age_s = 300;      // an envelope older than this (by its iat) is stale
  std::int64_t max_future_s = 60;    // clock skew allowed into the future
  std::size_t window = 1024;         // sequence numbers remembered per sender
  std::size_t max_senders = 100000;  // windows kept; the least recently used goes first
  // Sequence numbers remembered over all windows (about 50 bytes each): bounds the
  // memory a flood of senders can take (anyone may seal to an encrypt-to key).
  std::size_t max_entries = 1'000'000;
};

class Sequencer {
 public:
  // The next sequence number for `kid`, given the time in microseconds.
  std::uint64_t next(std::string_view kid, std::uint64_t now_us);

 private:
  std::mutex mu_;
  std::unordered_map<std::string, std::uint64_t> last_;
};

class ReplayGuard {
 public:
  explicit ReplayGuard(ReplayConfig c = {}) : config_(c) {}

  ReplayConfig config() const {
    std::lock_guard lock(mu_);
    return config_;
  }
  // New limits (a reloaded keyring); windows over them shrink at their next use.
  void reconfigure(ReplayConfig c) {
    std::lock_guard lock(mu_);
    config_ = c;
  }
  // Senders with a window (tests, statistics).
  std::size_t senders() const {
    std::lock_guard lock(mu_);
    return windows_.size();
  }

  // Accepts `seq` for `sender` if it is new and above the window's floor, and
  // records it. Call only for an envelope that verified. `highest`: set to the
  // highest number the sender's window now holds (what a store keeps as the
  // sender's replay mark).
  Result<bool> accept(std::string_view sender, std::uint64_t seq, std::uint64_t* highest = nullptr);
  // Refuses everything <= `floor` from `sender` from now on (a replay mark kept
  // across a restart); a higher floor already in place stays.
  void raise_floor(std::string_view sender, std::uint64_t floor);

  // Saved state (for a command that runs once per envelope): JSON text.
  std::string save() const;
  // Throws std::runtime_error if `json` is not what save() writes.
  void restore(std::string_view json);

 private:
  struct Window {
    std::set<std::uint64_t> recent;
    std::optional<std::uint64_t> floor;  // everything <= floor is refused
    std::list<std::string>::iterator lru;
  };
  Window& window(std::string_view sender);
  void drop_oldest();

  ReplayConfig config_;
  mutable std::mutex mu_;
  std::map<std::string, Window, std::less<>> windows_;
  std::list<std::string> lru_;  // sender ids, most recently used first
  std::size_t entries_ = 0;     // sum of the windows' sizes
};

}  // namespace moat::payload
