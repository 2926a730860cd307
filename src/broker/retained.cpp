#include "broker/retained.hpp"

#include <vector>

#include "codec/topic.hpp"

namespace moat::broker {

namespace {
std::uint64_t size_of(const Message& m) {
  return m.topic.size() + m.payload.size();
}
}  // namespace

bool RetainedStore::update(const MessagePtr& m) {
  return update(m, Limits{}) == Update::Changed;
}

RetainedStore::Update RetainedStore::update(const MessagePtr& m, const Limits& limits) {
  std::lock_guard lock(mu_);
  auto it = by_topic_.find(m->topic);
  // $SYS and other '$' topics are the broker's own: kept, never counted.
  const bool counted = m->topic.empty() || m->topic[0] != '$';
  if (m->payload.empty()) {
    if (it == by_topic_.end()) return Update::Unchanged;
    if (counted) {
      bytes_ -= size_of(*it->second);
      --counted_;
    }
    by_topic_.erase(it);
    return Update::Changed;
  }
  if (counted) {
    const std::uint64_t old = it == by_topic_.end() ? 0 : size_of(*it->second);
    const std::uint64_t after = bytes_ - old + size_of(*m);
    if (it == by_topic_.end() && limits.max_messages > 0 && counted_ >= limits.max_messages)
      return Update::OverMessages;
    if (limits.max_bytes > 0 && after > limits.max_bytes && after > bytes_) return Update::OverBytes;
    bytes_ = after;
    if (it == by_topic_.end()) ++counted_;
  }
  if (it == by_topic_.end())
    by_topic_.emplace(m->topic, m);
  else
    it->second = m;
  return Update::Changed;
}

std::uint64_t RetainedStore::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
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
