// Flapping detection ([limits] flapping_*, docs/limits.md): a client identifier
// whose connections keep ending (crash loops, two devices taking each other's
// identifier over) has its CONNECTs answered later and later, and is banned for
// a while once it goes on. Keyed by client identifier; the bans live in a
// BanList (docs/security.md, "Brute-force defence"). Time is passed in.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "security/defence.hpp"

namespace moat::security {

struct FlappingConfig {
  // Disconnections of one client identifier within `window` that ban it; 0 = off.
  std::uint32_t max = 15;
  std::chrono::seconds window{60};
  // From max/2 disconnections in the window on, each CONNECT of the identifier
  // is answered after `delay`, doubling with every further one, at most `delay_max`.
  std::chrono::milliseconds delay{1000};
  std::chrono::milliseconds delay_max{30'000};
  std::chrono::seconds ban_time{300};
  std::vector<Cidr> exempt;  // connections from these addresses are never counted nor held
  std::size_t max_tracked = 100'000;
};

// Thread-safe (one mutex; a few map operations per CONNECT and disconnection).
class FlapDetector {
 public:
  explicit FlapDetector(FlappingConfig config, std::unique_ptr<BanList> bans = nullptr);

  struct Verdict {
    bool banned = false;
    DefenceTime banned_until{};
    std::chrono::milliseconds delay{0};  // hold the CONNACK this long
    std::uint32_t disconnections = 0;    // in the current window
  };
  // A CONNECT of `client_id` from `address`.
  Verdict on_connect(std::string_view client_id, std::string_view address, DefenceTime now);
  // A connection of `client_id` that had been accepted has ended; returns the
  // ban this caused, if any. A counted end sets `counted` (when given) to the
  // identifier's count for the store (key: the client identifier; failures:
  // the ends in the window, 0 once the ban reset it; since: the window's start).
  std::optional<Ban> on_disconnect(std::string_view client_id, std::string_view address, DefenceTime now,
                                   FailureCounter* counted = nullptr);
  // Lifts the bans that ended; returns them (to log them).
  std::vector<Ban> expire(DefenceTime now);
  // Bans kept across a restart (Ban::address holds the client identifier);
  // ended ones are skipped.
  void restore(std::vector<Ban> bans, DefenceTime now);
  // Counts kept from the previous run (FailureCounter::key: the client
  // identifier); those whose window ended by `now` are not restored, their
  // keys returned (the store forgets them).
  std::vector<std::string> restore_counts(std::vector<FailureCounter> counts, DefenceTime now);
  // The identifiers whose count was forgotten since the last call (window
  // ended by `now`, or room made for others), for the store.
  std::vector<std::string> take_forgotten(DefenceTime now);

  bool enabled() const { return config_.max > 0; }
  bool exempt(std::string_view address) const;
  const FlappingConfig& config() const { return config_; }
  std::size_t tracked() const;

 private:
  struct State {
    DefenceTime window_start{};
    std::uint32_t disconnections = 0;
  };
  void make_room(DefenceTime now);
  // Moves the counts whose window ended by `now` to forgotten_.
  void forget_ended(DefenceTime now);

  const FlappingConfig config_;
  mutable std::mutex mu_;
  std::unique_ptr<BanList> bans_;
  std::unordered_map<std::string, State> ids_;
  std::vector<std::string> forgotten_;  // counts dropped, until take_forgotten
};

}  // namespace moat::security
