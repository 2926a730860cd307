// A vector that is one pointer while empty, for per-connection lists that are
// empty nearly always (docs/benchmarks.md, "Memory per idle connection"): an
// empty std::vector is 24 bytes in every object that has one. clear() frees.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

namespace moat::broker {

template <typename T>
class LazyVector {
 public:
  bool empty() const { return !v_ || v_->empty(); }
  std::size_t size() const { return v_ ? v_->size() : 0; }
  T& operator[](std::size_t i) { return (*v_)[i]; }
  const T& operator[](std::size_t i) const { return (*v_)[i]; }
  T* begin() { return v_ ? v_->data() : nullptr; }
  T* end() { return v_ ? v_->data() + v_->size() : nullptr; }
  const T* begin() const { return v_ ? v_->data() : nullptr; }
  const T* end() const { return v_ ? v_->data() + v_->size() : nullptr; }
  void push_back(T&& x) {
    if (!v_) v_ = std::make_unique<std::vector<T>>();
    v_->push_back(std::move(x));
  }
  void clear() { v_.reset(); }

 private:
  std::unique_ptr<std::vector<T>> v_;  // null while empty
};

}  // namespace moat::broker
