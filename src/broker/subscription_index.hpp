// Topic-filter index: which sessions want a topic. A trie over topic levels with
// '+' and '#' as special edges. Each event loop keeps its own replica, updated in
// order from the loop that owns the subscribing session, so matching a PUBLISH
// takes no lock.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "codec/packet.hpp"
#include "codec/topic.hpp"

namespace moat::broker {

struct Subscriber {
  std::uint64_t session_id = 0;
  std::uint32_t shard = 0;  // event loop that owns the session
  codec::QoS qos = codec::QoS::AtMostOnce;
  bool durable = false;  // a persistent session: QoS 1/2 deliveries are stored
};

class SubscriptionIndex {
 public:
  SubscriptionIndex();
  ~SubscriptionIndex();
  SubscriptionIndex(const SubscriptionIndex&) = delete;
  SubscriptionIndex& operator=(const SubscriptionIndex&) = delete;

  // Adds the subscription, or replaces the QoS of the session's existing one on
  // the same filter. The filter must be valid. Returns true if it was new.
  bool add(std::string_view filter, const Subscriber& s);
  // Returns true if the session had that filter.
  bool remove(std::string_view filter, std::uint64_t session_id);
  void remove_session(std::uint64_t session_id);

  // Appends every matching subscription; a session with overlapping filters appears
  // once per filter (see dedupe_max_qos). Topics starting with '$' are not matched
  // by a first-level wildcard [MQTT-4.7.2-1].
  void match(std::string_view topic, std::vector<Subscriber>& out) const;

  std::size_t size() const { return count_; }

 private:
  struct Node;
  using Children = std::unordered_map<std::string, std::unique_ptr<Node>, codec::StringHash, std::equal_to<>>;
  struct Node {
    Children children;
    std::unique_ptr<Node> plus;    // the '+' edge
    std::vector<Subscriber> subs;  // filters ending at this node
    std::vector<Subscriber> hash;  // filters ending with '/#' below this node ('#' at the root)
    bool empty() const { return children.empty() && !plus && subs.empty() && hash.empty(); }
  };

  void match_from(const Node& n, const std::vector<std::string_view>& levels, std::size_t i,
                  std::vector<Subscriber>& out) const;

  std::unique_ptr<Node> root_;
  std::unordered_map<std::uint64_t, std::vector<std::string>> by_session_;
  std::size_t count_ = 0;
  mutable std::vector<std::string_view> levels_;  // scratch for match()
};

// Leaves one entry per session, with the highest QoS of its matching filters:
// overlapping subscriptions deliver one copy [MQTT-3.3.5-1].
void dedupe_max_qos(std::vector<Subscriber>& subs);

}  // namespace moat::broker
