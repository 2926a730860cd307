// Retained messages, shared by all event loops (section 3.3.1.3). Touched only by
// PUBLISH packets with RETAIN=1 and by new subscriptions, never by plain routing.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "broker/message.hpp"
#include "codec/topic.hpp"

namespace moat::broker {

class RetainedStore {
 public:
  // A zero-length payload clears the topic [MQTT-3.3.1-10]; otherwise it replaces
  // the topic's retained message [MQTT-3.3.1-5]. Returns true if the set changed.
  // Not limited: restored messages and $SYS.
  bool update(const MessagePtr& m);

  // [limits] max_retained_messages / max_retained_bytes (topic + payload); 0 = none.
  // Topics starting with '$' ($SYS) are neither limited nor counted.
  struct Limits {
    std::uint64_t max_messages = 0;
    std::uint64_t max_bytes = 0;
  };
  enum class Update : std::uint8_t {
    Unchanged,     // clearing a topic that held nothing
    Changed,       // stored, replaced or cleared
    OverMessages,  // a new topic while max_messages are retained: not retained
    OverBytes,     // a new topic, or a larger replacement, past max_bytes: not retained
  };
  // update() for clients' messages: a new topic is retained only within the
  // limits; replacing a topic's message always is, unless it grows the total
  // past max_bytes (then the previous message stays).
  Update update(const MessagePtr& m, const Limits& limits);
  std::uint64_t bytes() const;
  // Calls f for every retained message whose topic matches the (valid) filter.
  // Walks a trie of topic levels: a filter visits only the branches it can
  // match (a literal level is one lookup), not every retained topic.
  void for_each_match(std::string_view filter, const std::function<void(const MessagePtr&)>& f) const;
  std::size_t size() const;

 private:
  // One topic level; `message` is set when a retained message has exactly
  // this topic. Nodes without message and children are removed, so the trie
  // holds what is retained and nothing else: it is the only index (a filter
  // without wildcards is one lookup per level).
  struct Node {
    std::unordered_map<std::string, std::unique_ptr<Node>, codec::StringHash, std::equal_to<>> children;
    MessagePtr message;
  };
  // The topic's node, or null; N is Node or const Node.
  template <typename N>
  static N* find(N& root, std::string_view topic);
  // The topic's node, made with its path if missing.
  Node& make(std::string_view topic);
  void erase(std::string_view topic);

  mutable std::mutex mu_;
  Node root_;
  std::size_t size_ = 0;       // retained messages, '$' topics included
  std::uint64_t bytes_ = 0;    // topic + payload of the counted ('$'-less) retained messages
  std::uint64_t counted_ = 0;  // retained messages whose topic does not start with '$'
};

}  // namespace moat::broker
