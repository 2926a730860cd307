#include "security/decision_cache.hpp"

#include <functional>

namespace moat::security {

std::size_t DecisionCache::hash_of(Action action, std::string_view topic) {
  return std::hash<std::string_view>{}(topic) ^ (static_cast<std::size_t>(action) * 0x9e3779b97f4a7c15ULL);
}

std::optional<Decision> DecisionCache::find(std::uint64_t gen, Action action, std::string_view topic) const {
  if (!slots_ || topic.size() > kMaxTopic) {
    ++misses_;
    return std::nullopt;
  }
  const std::size_t h = hash_of(action, topic);
  const Slot& s = (*slots_)[h % kSlots];
  if (s.gen == gen && s.hash == h && s.action == action && s.topic == topic) {
    ++hits_;
    return s.decision;
  }
  ++misses_;
  return std::nullopt;
}

void DecisionCache::put(std::uint64_t gen, Action action, std::string_view topic, Decision d) {
  if (topic.size() > kMaxTopic) return;
  if (!slots_) slots_ = std::make_unique<std::array<Slot, kSlots>>();
  const std::size_t h = hash_of(action, topic);
  Slot& s = (*slots_)[h % kSlots];
  s.gen = gen;
  s.hash = h;
  s.action = action;
  s.decision = d;
  s.topic.assign(topic);
}

}  // namespace moat::security
