#include "broker/retained.hpp"

#include <algorithm>
#include <vector>

#include "codec/topic.hpp"

namespace moat::broker {

namespace {
std::uint64_t size_of(const Message& m) {
  return m.topic.size() + m.payload.size();
}

}  // namespace

template <typename N>
N* RetainedStore::find(N& root, std::string_view topic) {
  N* n = &root;
  bool more = true;
  while (more) {
    const auto it = n->children.find(codec::next_level(topic, more));
    if (it == n->children.end()) return nullptr;
    n = it->second.get();
  }
  return n;
}

RetainedStore::Node& RetainedStore::make(std::string_view topic) {
  Node* n = &root_;
  codec::for_each_level(topic, [&n](std::string_view level) {
    auto it = n->children.find(level);
    if (it == n->children.end()) it = n->children.emplace(std::string(level), std::make_unique<Node>()).first;
    n = it->second.get();
  });
  return *n;
}

void RetainedStore::erase(std::string_view topic) {
  // The path from the root, to prune nodes left empty.
  std::vector<std::pair<Node*, std::string_view>> path;
  Node* n = &root_;
  bool more = true;
  while (more) {
    const std::string_view level = codec::next_level(topic, more);
    auto it = n->children.find(level);
    if (it == n->children.end()) return;
    path.emplace_back(n, level);
    n = it->second.get();
  }
  n->message.reset();
  for (auto p = path.rbegin(); p != path.rend(); ++p) {
    auto it = p->first->children.find(p->second);
    if (it->second->message || !it->second->children.empty()) break;
    p->first->children.erase(it);
  }
}

bool RetainedStore::update(const MessagePtr& m) {
  return update(m, Limits{}) == Update::Changed;
}

RetainedStore::Update RetainedStore::update(const MessagePtr& m, const Limits& limits, std::uint32_t loop) {
  std::lock_guard lock(mu_);
  Node* node = find(root_, m->topic);
  const MessagePtr* old = node && node->message ? &node->message : nullptr;
  // $SYS and other '$' topics are the broker's own: kept, never counted.
  const bool counted = m->topic.empty() || m->topic[0] != '$';
  if (m->payload.empty()) {
    if (!old) return Update::Unchanged;
    if (counted) {
      bytes_ -= size_of(**old);
      --counted_;
    }
    --size_;
    erase(m->topic);
    ++version_;
    return Update::Changed;
  }
  if (counted) {
    const std::uint64_t before = old ? size_of(**old) : 0;
    const std::uint64_t after = bytes_ - before + size_of(*m);
    if (!old && limits.max_messages > 0 && counted_ >= limits.max_messages) return Update::OverMessages;
    if (limits.max_bytes > 0 && after > limits.max_bytes && after > bytes_) return Update::OverBytes;
    bytes_ = after;
    if (!old) ++counted_;
  }
  if (!old) ++size_;
  Node& n = node ? *node : make(m->topic);
  n.message = m;
  n.version = ++version_;
  n.loop = loop;
  return Update::Changed;
}

std::uint64_t RetainedStore::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

template <typename F>
void RetainedStore::walk(std::string_view filter, F&& f) const {
  if (filter.find_first_of("+#") == std::string_view::npos) {
    if (const Node* n = find(root_, filter); n && n->message) f(*n);
    return;
  }
  // Every message at or below a node ('#').
  const auto subtree = [&f](const Node& start) {
    std::vector<const Node*> todo{&start};
    while (!todo.empty()) {
      const Node* n = todo.back();
      todo.pop_back();
      if (n->message) f(*n);
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
    const std::string_view level = codec::next_level(rest, more);
    const auto visible = [&step](const std::string& name) {
      return !step.first || name.empty() || name[0] != '$';
    };
    if (level == "#") {
      // "a/#" matches "a" itself too [MQTT-4.7.1-2].
      if (!step.first && step.node->message) f(*step.node);
      for (const auto& [name, child] : step.node->children)
        if (visible(name)) subtree(*child);
      continue;
    }
    const auto visit = [&](const Node& child) {
      if (more)
        todo.push_back({&child, rest, false});
      else if (child.message)
        f(child);
    };
    if (level == "+") {
      for (const auto& [name, child] : step.node->children)
        if (visible(name)) visit(*child);
    } else if (auto it = step.node->children.find(level); it != step.node->children.end()) {
      visit(*it->second);
    }
  }
}

namespace {
// In topic order, whatever the walk's order: the same subscription always
// gets its retained messages in the same order.
void sort_by_topic(std::vector<MessagePtr>& v) {
  std::sort(v.begin(), v.end(), [](const MessagePtr& a, const MessagePtr& b) { return a->topic < b->topic; });
}
}  // namespace

RetainedStore::Matches RetainedStore::match(std::string_view filter) const {
  Matches out;
  {
    std::lock_guard lock(mu_);
    walk(filter, [&out](const Node& n) { out.messages.push_back(n.message); });
    out.version = version_;
  }
  sort_by_topic(out.messages);
  return out;
}

std::vector<MessagePtr> RetainedStore::changed_since(std::string_view filter, std::uint64_t version,
                                                     std::uint32_t loop) const {
  std::vector<MessagePtr> out;
  {
    std::lock_guard lock(mu_);
    if (version == version_) return out;  // nothing changed at all: the common case
    walk(filter, [&](const Node& n) {
      if (n.version > version && n.loop == loop) out.push_back(n.message);
    });
  }
  sort_by_topic(out);
  return out;
}

std::size_t RetainedStore::size() const {
  std::lock_guard lock(mu_);
  return size_;
}

}  // namespace moat::broker
