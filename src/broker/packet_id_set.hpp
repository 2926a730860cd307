// A set of packet identifiers that holds no memory while it is empty: the
// inbound QoS 2 messages of a session awaiting their PUBREL, which nearly
// every session has none of (docs/benchmarks.md, "Memory per idle
// connection"). An empty std::unordered_set is 56 bytes in each session; this
// is one pointer, and the table is freed again when it empties.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_set>

namespace moat::broker {

class PacketIdSet {
 public:
  bool empty() const { return !ids_; }
  std::size_t size() const { return ids_ ? ids_->size() : 0; }
  bool contains(std::uint16_t id) const { return ids_ && ids_->count(id) != 0; }
  // True when `id` was not in the set yet.
  bool insert(std::uint16_t id) {
    if (!ids_) ids_ = std::make_unique<std::unordered_set<std::uint16_t>>();
    return ids_->insert(id).second;
  }
  template <typename It>
  void insert(It first, It last) {
    for (; first != last; ++first) insert(*first);
  }
  // True when `id` was in the set.
  bool erase(std::uint16_t id) {
    if (!ids_ || ids_->erase(id) == 0) return false;
    if (ids_->empty()) ids_.reset();
    return true;
  }

 private:
  std::unique_ptr<std::unordered_set<std::uint16_t>> ids_;  // null when empty
};

}  // namespace moat::broker
