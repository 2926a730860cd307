#include "broker/retained.hpp"

#include <algorithm>
#include <vector>

#include "codec/topic.hpp"

namespace moat::broker {

namespace {
std::uint64_t size_of(const Message& m) {
  return m.topic.size() + m.payload.size();
}

// The level of `s` up to the next '/' (all of it if none); advances `s` past
// it and its separator. `more` says whether a separator followed.
std::string_view next_level(std::string_view& s, bool& more) {
  const auto slash = s.find('/');
  const std::string_view level = s.substr(0, slash);
  more = slash != std::string_view::npos;
  s = more ? s.substr(slash + 1) : std::string_view{};
  return level;
}
}  // namespace

void RetainedStore::trie_put(std::string_view topic, const MessagePtr& m) {
  Node* n = &root_;
  bool more = true;
  while (more) {
    auto& child = n->children[std::string(next_level(topic, more))];
    if (!child) child = std::make_unique<Node>();
    n = child.get();
  }
  n->message = m;
}

void RetainedStore::trie_erase(std::string_view topic) {
  // The path from the root, to prune nodes left empty.
  std::vector<std::pair<Node*, std::string_view>> path;
  Node* n = &root_;
  bool more = true;
  while (more) {
    const std::string_view level = next_level(topic, more);
    auto it = n->children.find(std::string(level));
    if (it == n->children.end()) return;
    path.emplace_back(n, level);
    n = it->second.get();
  }
  n->message.reset();
  for (auto p = path.rbegin(); p != path.rend(); ++p) {
    auto it = p->first->children.find(std::string(p->second));
    if (it->second->message || !it->second->children.empty()) break;
    p->first->children.erase(it);
  }
}

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
    trie_erase(m->topic);
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
  trie_put(m->topic, m);
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
      // Every message at or below a node ('#').
      const auto subtree = [&hits](const Node& start) {
        std::vector<const Node*> todo{&start};
        while (!todo.empty()) {
          const Node* n = todo.back();
          todo.pop_back();
          if (n->message) hits.push_back(n->message);
          for (const auto& [level, child] : n->children) todo.push_back(child.get());
        }
      };
      // Depth-first over (node, rest of the filter). [MQTT-4.7.2-1] a wildcard
      // at the first level does not match topics that start with '$'.
      struct Step {
        const Node* node;
        std::string_view rest;
        bool first;
      };
      std::vector<Step> todo{{&root_, filter, true}};
      while (!todo.empty()) {
        const Step step = todo.back();
        todo.pop_back();
        std::string_view rest = step.rest;
        bool more = false;
        const std::string_view level = next_level(rest, more);
        const auto visible = [&step](const std::string& name) {
          return !step.first || name.empty() || name[0] != '$';
        };
        if (level == "#") {
          // "a/#" matches "a" itself too [MQTT-4.7.1-2].
          if (!step.first && step.node->message) hits.push_back(step.node->message);
          for (const auto& [name, child] : step.node->children)
            if (visible(name)) subtree(*child);
          continue;
        }
        const auto visit = [&](const Node& child) {
          if (more)
            todo.push_back({&child, rest, false});
          else if (child.message)
            hits.push_back(child.message);
        };
        if (level == "+") {
          for (const auto& [name, child] : step.node->children)
            if (visible(name)) visit(*child);
        } else if (auto it = step.node->children.find(std::string(level)); it != step.node->children.end()) {
          visit(*it->second);
        }
      }
    }
  }
  // In topic order, whatever the walk's order: the same subscription always
  // gets its retained messages in the same order.
  std::sort(hits.begin(), hits.end(),
            [](const MessagePtr& a, const MessagePtr& b) { return a->topic < b->topic; });
  // Deliver outside the lock: delivery may take other locks or run long.
  for (const auto& m : hits) f(m);
}

std::size_t RetainedStore::size() const {
  std::lock_guard lock(mu_);
  return by_topic_.size();
}

}  // namespace moat::broker
