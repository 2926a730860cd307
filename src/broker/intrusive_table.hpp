// A hash table of objects that carry their own chain link: one pointer in the
// object and about one in the bucket array per entry, where std::unordered_map
// allocates a node per entry (32-48 B with glibc's overhead) and divides by a
// prime on every lookup. For the shard's sessions, by client identifier and by
// id (docs/benchmarks.md, "Memory per idle connection").
//
// The table does not own its objects. An object is in at most one table per
// link, its key does not change while it is in, and a key is in at most once.
#pragma once

#include <cstddef>
#include <memory>

namespace moat::broker {

// Traits: `static K key(const T&)`, `static std::size_t hash(K)`, and
// `static T*& link(T&)`.
template <typename T, typename K, typename Traits>
class IntrusiveTable {
 public:
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  T* find(K key) const {
    if (size_ == 0) return nullptr;
    for (T* t = buckets_[Traits::hash(key) & mask_]; t; t = Traits::link(*t))
      if (Traits::key(*t) == key) return t;
    return nullptr;
  }

  // `t`'s key must not be in the table.
  void insert(T& t) {
    if (size_ + 1 > buckets()) grow();
    T*& head = buckets_[Traits::hash(Traits::key(t)) & mask_];
    Traits::link(t) = head;
    head = &t;
    ++size_;
  }

  // Does nothing if `t` is not in the table.
  void erase(T& t) {
    if (size_ == 0) return;
    T** p = &buckets_[Traits::hash(Traits::key(t)) & mask_];
    while (*p && *p != &t) p = &Traits::link(**p);
    if (!*p) return;
    *p = Traits::link(t);
    Traits::link(t) = nullptr;
    --size_;
  }

  // Calls f(T&) for every entry; f must not insert or erase.
  template <typename F>
  void for_each(F&& f) const {
    for (std::size_t i = 0; i < buckets(); ++i)
      for (T* t = buckets_[i]; t;) {
        T* next = Traits::link(*t);  // read first: f may change what it points at, not the table
        f(*t);
        t = next;
      }
  }

 private:
  std::size_t buckets() const { return buckets_ ? mask_ + 1 : 0; }

  // Doubles the buckets (16 at first): the load stays between 1/2 and 1.
  void grow() {
    const std::size_t n = buckets_ ? 2 * (mask_ + 1) : 16;
    auto fresh = std::make_unique<T*[]>(n);  // value-initialised: null
    for (std::size_t i = 0; i < buckets(); ++i)
      for (T* t = buckets_[i]; t;) {
        T* next = Traits::link(*t);
        T*& head = fresh[Traits::hash(Traits::key(*t)) & (n - 1)];
        Traits::link(*t) = head;
        head = t;
        t = next;
      }
    buckets_ = std::move(fresh);
    mask_ = n - 1;
  }

  std::unique_ptr<T*[]> buckets_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

}  // namespace moat::broker
