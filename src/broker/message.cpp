#include "broker/message.hpp"

#include <cstring>
#include <new>
#include <vector>

#include "codec/encoder.hpp"

namespace moat::broker {

Message::Message(std::uint8_t* wire, std::string_view topic_name, std::string_view payload_bytes, codec::QoS q,
                 bool r)
    : qos(q), retain(r) {
  const std::size_t field = 2 + topic_name.size();
  end_ = wire_size(topic_name, payload_bytes);
  wire_ = wire;
  std::uint8_t* w = wire;
  std::uint8_t header[codec::kPublishHeaderMax];
  const std::size_t n = codec::encode_publish_header(codec::QoS::AtMostOnce, false, false,
                                                     field + payload_bytes.size(), header);
  start_ = kHeaderRoom - n;
  std::memcpy(w + start_, header, n);
  w[kHeaderRoom] = static_cast<std::uint8_t>(topic_name.size() >> 8);
  w[kHeaderRoom + 1] = static_cast<std::uint8_t>(topic_name.size() & 0xFF);
  if (!topic_name.empty()) std::memcpy(w + kHeaderRoom + 2, topic_name.data(), topic_name.size());
  if (!payload_bytes.empty())
    std::memcpy(w + kHeaderRoom + field, payload_bytes.data(), payload_bytes.size());
  topic = {reinterpret_cast<const char*>(w + kHeaderRoom + 2), topic_name.size()};
  payload = {reinterpret_cast<const char*>(w + kHeaderRoom + field), payload_bytes.size()};
}

namespace {

// Freed message blocks kept by the thread that freed them, per size class of
// 64 bytes up to 2 KiB, for the next message of that class. Messages are made
// and released in bursts of a loop turn, more than the allocator's per-thread
// cache holds (and blocks above 1 KiB are not in that cache at all: freeing
// one merges it with its neighbours, whose headers are cold by then). The
// keep list is bounded per class and all classes together by kKeepBytes. A
// block taken from here may be freed on any thread.
class BlockPool {
 public:
  static constexpr std::size_t kGrain = 64;
  static constexpr std::size_t kClasses = 32;
  static constexpr std::size_t kKeep = 512;
  static constexpr std::size_t kKeepBytes = std::size_t{2} << 20;

  static std::size_t rounded(std::size_t size) { return (size + kGrain - 1) / kGrain * kGrain; }
  static constexpr std::size_t class_bytes(std::size_t c) { return (c + 1) * kGrain; }

  ~BlockPool() {
    gone_ = true;
    for (auto& list : free_)
      for (void* p : list) ::operator delete(p);
  }
  // A block of a class is always its class's full size, even from a thread
  // whose pool is gone: another thread may keep it and hand it out for any
  // size of that class.
  static void* take(std::size_t size) {
    const std::size_t c = (size - 1) / kGrain;
    if (c >= kClasses) return ::operator new(size);
    if (!gone_) {
      auto& list = pool_.free_[c];
      if (!list.empty()) {
        void* p = list.back();
        list.pop_back();
        pool_.kept_bytes_ -= class_bytes(c);
        return p;
      }
    }
    return ::operator new(rounded(size));
  }
  // Called from a noexcept deallocate: it must not throw. The keep list is
  // reserved on first use; without memory for it the block is freed instead,
  // and push_back within the capacity allocates nothing.
  static void give(void* p, std::size_t size) noexcept {
    const std::size_t c = (size - 1) / kGrain;
    if (c < kClasses && !gone_) {
      auto& list = pool_.free_[c];
      if (list.size() < kKeep && pool_.kept_bytes_ + class_bytes(c) <= kKeepBytes) {
        bool room = list.capacity() > 0;
        if (!room) {
          try {
            list.reserve(kKeep);
            room = true;
          } catch (const std::bad_alloc&) {
            room = false;
          }
        }
        if (room) {
          list.push_back(p);
          pool_.kept_bytes_ += class_bytes(c);
          return;
        }
      }
    }
    ::operator delete(p);
  }

 private:
  std::vector<void*> free_[kClasses];
  std::size_t kept_bytes_ = 0;
  static thread_local BlockPool pool_;
  static thread_local bool gone_;  // after this thread's pool was destroyed
};
thread_local BlockPool BlockPool::pool_;
thread_local bool BlockPool::gone_ = false;

// Allocates what std::allocate_shared asks for (the reference count and the
// Message) plus `extra` bytes behind it, and tells where those begin: the
// message's wire bytes share its allocation.
template <typename T>
struct WithTrailing {
  using value_type = T;
  std::size_t extra;
  std::uint8_t** trailing;

  WithTrailing(std::size_t e, std::uint8_t** t) : extra(e), trailing(t) {}
  template <typename U>
  WithTrailing(const WithTrailing<U>& o) : extra(o.extra), trailing(o.trailing) {}  // NOLINT(google-explicit-constructor)

  T* allocate(std::size_t n) {
    static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);
    auto* block = static_cast<std::uint8_t*>(BlockPool::take(n * sizeof(T) + extra));
    *trailing = block + n * sizeof(T);
    return reinterpret_cast<T*>(block);  // NOLINT(cppcoreguidelines-pro-type-reinterpret-cast)
  }
  void deallocate(T* p, std::size_t n) noexcept { BlockPool::give(p, n * sizeof(T) + extra); }
  template <typename U>
  bool operator==(const WithTrailing<U>& o) const {
    return extra == o.extra;
  }
};

}  // namespace

MessagePtr make_message(std::string_view topic, std::string_view payload, codec::QoS qos, bool retain,
                        bool replay_marked) {
  std::uint8_t* wire = nullptr;
  // The constructor runs after the allocation, so `wire` is set by then.
  struct Placed : Message {
    Placed(std::uint8_t* const* w, std::string_view t, std::string_view p, codec::QoS q, bool r)
        : Message(*w, t, p, q, r) {}
  };
  std::shared_ptr<Message> m = std::allocate_shared<Placed>(
      WithTrailing<Placed>(Message::wire_size(topic, payload), &wire), &wire, topic, payload, qos, retain);
  m->replay_marked = replay_marked;
  return m;
}

}  // namespace moat::broker
