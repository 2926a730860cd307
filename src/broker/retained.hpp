// Retained messages, shared by all event loops (section 3.3.1.3). Touched only by
// PUBLISH packets with RETAIN=1 and by new subscriptions, never by plain routing.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker/message.hpp"
#include "codec/topic.hpp"

namespace moat::broker {

class RetainedStore {
 public:
  // No event loop: a change that no loop routes to subscribers (restored
  // messages, $SYS), or that no loop needs to deliver again.
  static constexpr std::uint32_t kNoLoop = UINT32_MAX;

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
  // past max_bytes (then the previous message stays). `loop` is the event loop
  // that routes the message (see changed_since).
  Update update(const MessagePtr& m, const Limits& limits, std::uint32_t loop = kNoLoop);
  std::uint64_t bytes() const;

  // Every retained message whose topic matches the (valid) filter, in topic
  // order, and the store's version when they were taken: every later change
  // has a larger one. Walks a trie of topic levels: a filter visits only the
  // branches it can match (a literal level is one lookup), not every topic.
  struct Matches {
    std::vector<MessagePtr> messages;
    std::uint64_t version = 0;
  };
  Matches match(std::string_view filter) const;
  // The messages matching the filter that `loop` set after `version`.
  //
  // A new subscription reaches the other loops' indexes a moment after its own
  // loop looked up the retained messages (match). A message another loop set
  // in between was neither found by that lookup nor routed to the new
  // subscriber by the loop that set it; that loop asks for these when the
  // subscription reaches it (Shard::apply).
  std::vector<MessagePtr> changed_since(std::string_view filter, std::uint64_t version,
                                        std::uint32_t loop) const;
  std::size_t size() const;

 private:
  // One topic level; `message` is set when a retained message has exactly
  // this topic. Nodes without message and children are removed, so the trie
  // holds what is retained and nothing else: it is the only index (a filter
  // without wildcards is one lookup per level).
  struct Node {
    std::unordered_map<std::string, std::unique_ptr<Node>, codec::StringHash, std::equal_to<>> children;
    MessagePtr message;
    std::uint64_t version = 0;       // version_ when `message` was set
    std::uint32_t loop = kNoLoop;    // the loop that set it
  };
  // Calls f for every node with a message whose topic matches the filter; mu_ held.
  template <typename F>
  void walk(std::string_view filter, F&& f) const;
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
  std::uint64_t version_ = 0;  // changes made so far
};

}  // namespace moat::broker
