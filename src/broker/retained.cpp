#include "broker/retained.hpp"

#include <vector>

#include "codec/topic.hpp"

namespace moat::broker {

bool RetainedStore::update(const MessagePtr& m) {
  std::lock_guard lock(mu_);
  if (m->payload.empty()) {
    auto it = by_topic_.find(m->topic);
    if (it == by_topic_.end()) return false;
    by_topic_.erase(it);
    return true;
  }
  by_topic_.insert_or_assign(m->topic, m);
  return true;
}

void RetainedStore::for_each_match(std::string_view filter,
                                   const std::function<void(const MessagePtr&)>& f) const {
  std::vector<MessagePtr> hits;
  {
    std::lock_guard lock(mu_);
    if (filter.find_first_of("+#") == std::string_view::npos) {
      if (auto it = by_topic_.find(filter); it != by_topic_.end()) hits.push_back(it->second);
    } else {
      for (const auto& [topic, m] : by_topic_)
        if (codec::topic_matches(filter, topic)) hits.push_back(m);
    }
  }
  // Deliver outside the lock: delivery may take other locks or run long.
  for (const auto& m : hits) f(m);
}

std::size_t RetainedStore::size() const {
  std::lock_guard lock(mu_);
  return by_topic_.size();
}

}  // namespace moat::broker
