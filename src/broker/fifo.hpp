// A first-in first-out queue that holds no memory until something is queued.
// std::deque allocates a map and a 512-byte block when it is constructed;
// sessions and connections each keep a few queues that are empty nearly all the
// time, and an idle connection should cost little more than its socket
// (docs/benchmarks.md, "Memory per idle connection").
//
// A vector and the index of the front: pop_front() moves the index; the
// consumed prefix is dropped when it is at least half of the storage, and the
// storage is freed once the queue empties after having grown large.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace moat::broker {

template <typename T>
class Fifo {
 public:
  bool empty() const { return head_ == items_.size(); }
  std::size_t size() const { return items_.size() - head_; }

  T& front() { return items_[head_]; }
  const T& front() const { return items_[head_]; }
  T& back() { return items_.back(); }
  const T& back() const { return items_.back(); }

  void push_back(T&& v) { items_.push_back(std::move(v)); }
  void push_back(const T& v) { items_.push_back(v); }
  template <typename... Args>
  T& emplace_back(Args&&... args) {
    return items_.emplace_back(std::forward<Args>(args)...);
  }

  void pop_front() {
    items_[head_] = T();  // what it held goes now, not when the prefix is dropped
    ++head_;
    if (head_ == items_.size()) {
      clear();
    } else if (head_ >= kCompactFrom && head_ * 2 >= items_.size()) {
      items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
  }

  // Removes the element at `p` (one of this queue's elements), keeping order.
  void erase(const T* p) {
    if (p == &items_[head_]) {
      pop_front();
      return;
    }
    items_.erase(items_.begin() + (p - items_.data()));
  }

  void clear() {
    head_ = 0;
    if (items_.capacity() > kKeep)
      std::vector<T>().swap(items_);
    else
      items_.clear();
  }

  auto begin() { return items_.begin() + static_cast<std::ptrdiff_t>(head_); }
  auto end() { return items_.end(); }
  auto begin() const { return items_.begin() + static_cast<std::ptrdiff_t>(head_); }
  auto end() const { return items_.end(); }

 private:
  static constexpr std::size_t kCompactFrom = 32;
  static constexpr std::size_t kKeep = 16;  // elements of storage kept when the queue empties
  std::vector<T> items_;
  std::size_t head_ = 0;
};

}  // namespace moat::broker
