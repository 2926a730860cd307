#include "broker/subscription_index.hpp"

#include <algorithm>

#include "codec/topic.hpp"

namespace moat::broker {

SubscriptionIndex::SubscriptionIndex() : root_(std::make_unique<Node>()) {}
SubscriptionIndex::~SubscriptionIndex() = default;

namespace {

bool upsert(std::vector<Subscriber>& v, const Subscriber& s) {
  for (auto& e : v) {
    if (e.session_id == s.session_id) {
      e = s;
      return false;
    }
  }
  v.push_back(s);
  return true;
}

bool erase(std::vector<Subscriber>& v, std::uint64_t session_id) {
  auto it = std::find_if(v.begin(), v.end(), [&](const Subscriber& e) { return e.session_id == session_id; });
  if (it == v.end()) return false;
  *it = v.back();
  v.pop_back();
  return true;
}

}  // namespace

bool SubscriptionIndex::add(std::string_view filter, const Subscriber& s) {
  Node* n = root_.get();
  bool hash = false;
  codec::for_each_level(filter, [&](std::string_view level) {
    if (level == "#") {
      hash = true;
      return;
    }
    if (level == "+") {
      if (!n->plus) n->plus = std::make_unique<Node>();
      n = n->plus.get();
      return;
    }
    auto it = n->children.find(level);
    if (it == n->children.end()) it = n->children.emplace(std::string(level), std::make_unique<Node>()).first;
    n = it->second.get();
  });
  const bool added = upsert(hash ? n->hash : n->subs, s);
  if (added) {
    ++count_;
    by_session_[s.session_id].emplace_back(filter);
  }
  return added;
}

bool SubscriptionIndex::remove(std::string_view filter, std::uint64_t session_id) {
  // Walk down remembering the path, so empty nodes can be pruned on the way back.
  std::vector<std::pair<Node*, std::string_view>> path;
  Node* n = root_.get();
  bool hash = false;
  bool found = true;
  codec::for_each_level(filter, [&](std::string_view level) {
    if (!found) return;
    if (level == "#") {
      hash = true;
      return;
    }
    Node* next = nullptr;
    if (level == "+") {
      next = n->plus.get();
    } else {
      auto it = n->children.find(level);
      if (it != n->children.end()) next = it->second.get();
    }
    if (!next) {
      found = false;
      return;
    }
    path.emplace_back(n, level);
    n = next;
  });
  if (!found || !erase(hash ? n->hash : n->subs, session_id)) return false;
  --count_;
  if (auto it = by_session_.find(session_id); it != by_session_.end()) {
    auto& filters = it->second;
    if (auto f = std::find(filters.begin(), filters.end(), filter); f != filters.end()) filters.erase(f);
    if (filters.empty()) by_session_.erase(it);
  }
  for (auto it = path.rbegin(); it != path.rend(); ++it) {
    Node* parent = it->first;
    Node* child = it->second == "+" ? parent->plus.get() : parent->children.find(it->second)->second.get();
    if (!child->empty()) break;
    if (it->second == "+")
      parent->plus.reset();
    else
      parent->children.erase(parent->children.find(it->second));
  }
  return true;
}

void SubscriptionIndex::remove_session(std::uint64_t session_id) {
  auto it = by_session_.find(session_id);
  if (it == by_session_.end()) return;
  const auto filters = std::move(it->second);
  by_session_.erase(it);
  for (const auto& f : filters) remove(f, session_id);
}

void SubscriptionIndex::match(std::string_view topic, std::vector<Subscriber>& out) const {
  levels_.clear();
  codec::for_each_level(topic, [&](std::string_view l) { levels_.push_back(l); });
  match_from(*root_, levels_, 0, out);
}

void SubscriptionIndex::match_from(const Node& n, const std::vector<std::string_view>& levels, std::size_t i,
                                   std::vector<Subscriber>& out) const {
  // "a/#" also matches "a" itself (section 4.7.1.2), so '#' subscribers of this
  // node match whether or not levels remain.
  const bool dollar_root = i == 0 && !levels[0].empty() && levels[0].front() == '$';
  if (!dollar_root) out.insert(out.end(), n.hash.begin(), n.hash.end());
  if (i == levels.size()) {
    out.insert(out.end(), n.subs.begin(), n.subs.end());
    return;
  }
  if (n.plus && !dollar_root) match_from(*n.plus, levels, i + 1, out);
  if (auto it = n.children.find(levels[i]); it != n.children.end())
    match_from(*it->second, levels, i + 1, out);
}

void dedupe_max_qos(std::vector<Subscriber>& subs) {
  if (subs.size() < 2) return;
  std::sort(subs.begin(), subs.end(), [](const Subscriber& a, const Subscriber& b) {
    return a.session_id != b.session_id ? a.session_id < b.session_id : a.qos > b.qos;
  });
  subs.erase(
      std::unique(subs.begin(), subs.end(),
                  [](const Subscriber& a, const Subscriber& b) { return a.session_id == b.session_id; }),
      subs.end());
}

}  // namespace moat::broker
