// A vector and a map that are one pointer while empty, for per-connection
// containers that are empty nearly always or for a connection's whole life
// (docs/benchmarks.md, "Memory per idle connection"): an empty std::vector is
// 24 bytes in every object that has one, an empty std::map 48.
#pragma once

#include <cstddef>
#include <map>
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

// std::map's lookups, insert_or_assign, erase and iteration. The map is
// allocated by the first insert and freed when an erase leaves it empty.
template <typename K, typename V, typename Compare>
class LazyMap {
  using Map = std::map<K, V, Compare>;

 public:
  using iterator = typename Map::iterator;
  using const_iterator = typename Map::const_iterator;

  bool empty() const { return !m_ || m_->empty(); }
  std::size_t size() const { return m_ ? m_->size() : 0; }
  // Without a map, begin() == end() (both of one empty map that nothing changes).
  iterator begin() { return m_ ? m_->begin() : none().begin(); }
  iterator end() { return m_ ? m_->end() : none().end(); }
  const_iterator begin() const { return m_ ? m_->cbegin() : none().cbegin(); }
  const_iterator end() const { return m_ ? m_->cend() : none().cend(); }
  template <typename Key>
  iterator find(const Key& k) {
    return m_ ? m_->find(k) : none().end();
  }
  template <typename Key>
  const_iterator find(const Key& k) const {
    return m_ ? m_->find(k) : none().cend();
  }
  template <typename Key, typename Value>
  void insert_or_assign(Key&& k, Value&& v) {
    if (!m_) m_ = std::make_unique<Map>();
    m_->insert_or_assign(std::forward<Key>(k), std::forward<Value>(v));
  }
  // `it` must be an element's.
  void erase(iterator it) {
    m_->erase(it);
    if (m_->empty()) m_.reset();
  }

 private:
  static Map& none() {
    static Map empty;  // never inserted into: shared by every thread for reading
    return empty;
  }
  std::unique_ptr<Map> m_;  // null while empty
};

}  // namespace moat::broker
