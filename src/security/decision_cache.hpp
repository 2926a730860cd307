// A per-session memo of authorization decisions, so that the publish and
// delivery paths pay for an ACL of any size once per (action, topic) rather
// than once per message. Direct-mapped, a few slots, allocated on first use
// (sessions on listeners without an ACL never pay for it). Every entry carries
// the generation of the policy it was computed under: a reloaded ACL bumps the
// generation and the stale entries miss. A decision also depends on the
// identity and its own rules, so the owner clears the cache when they change
// (a new connection for the session).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "security/acl.hpp"

namespace moat::security {

class DecisionCache {
 public:
  static constexpr std::size_t kSlots = 16;
  // Topics longer than this are not cached (the cost of the copy would
  // approach that of a small ACL).
  static constexpr std::size_t kMaxTopic = 256;

  // The decision stored for (action, topic) under policy generation `gen`
  // (never 0), if any.
  std::optional<Decision> find(std::uint64_t gen, Action action, std::string_view topic) const;
  void put(std::uint64_t gen, Action action, std::string_view topic, Decision d);
  void clear() { slots_.reset(); }

  std::uint64_t hits() const { return hits_; }
  std::uint64_t misses() const { return misses_; }

 private:
  struct Slot {
    std::uint64_t gen = 0;  // 0: empty
    std::size_t hash = 0;
    Action action = Action::Publish;
    Decision decision = Decision::Deny;
    std::string topic;
  };
  static std::size_t hash_of(Action action, std::string_view topic);
  std::unique_ptr<std::array<Slot, kSlots>> slots_;
  mutable std::uint64_t hits_ = 0;
  mutable std::uint64_t misses_ = 0;
};

}  // namespace moat::security
