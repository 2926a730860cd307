#include "security/payload/replay.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "security/payload/key.hpp"

namespace moat::payload {

std::uint64_t Sequencer::next(std::string_view kid, std::uint64_t now_us) {
  std::lock_guard lock(mu_);
  auto [it, inserted] = last_.try_emplace(std::string(kid), 0);
  const std::uint64_t seq = inserted ? now_us : std::max(it->second + 1, now_us);
  it->second = seq;
  return seq;
}

Result<bool> ReplayGuard::accept(std::string_view sender, std::uint64_t seq, std::uint64_t* highest) {
  std::lock_guard lock(mu_);
  Window& w = window(sender);
  if (w.floor && seq <= *w.floor)
    return fail(Errc::replayed, "sequence number " + std::to_string(seq) +
                                    " is below the replay window (floor " + std::to_string(*w.floor) + ")");
  if (!w.recent.insert(seq).second)
    return fail(Errc::replayed, "sequence number " + std::to_string(seq) + " was already accepted");
  ++entries_;
  while (w.recent.size() > config_.window) {
    w.floor = *w.recent.begin();
    w.recent.erase(w.recent.begin());
    --entries_;
  }
  if (highest) *highest = *w.recent.rbegin();
  // Over the memory bound: the least recently used senders lose their windows
  // (never the one just used).
  while (entries_ > config_.max_entries && windows_.size() > 1) drop_oldest();
  return true;
}

void ReplayGuard::raise_floor(std::string_view sender, std::uint64_t floor) {
  std::lock_guard lock(mu_);
  Window& w = window(sender);
  if (w.floor && *w.floor >= floor) return;
  w.floor = floor;
  while (!w.recent.empty() && *w.recent.begin() <= floor) {
    w.recent.erase(w.recent.begin());
    --entries_;
  }
}

void ReplayGuard::drop_oldest() {
  const auto it = windows_.find(lru_.back());
  entries_ -= it->second.recent.size();
  windows_.erase(it);
  lru_.pop_back();
}

ReplayGuard::Window& ReplayGuard::window(std::string_view sender) {
  auto it = windows_.find(sender);
  if (it != windows_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return it->second;
  }
  // The sender not seen for the longest time loses its window. Its old envelopes
  // are still refused as stale when they carry a timestamp.
  while (!lru_.empty() && windows_.size() >= std::max<std::size_t>(config_.max_senders, 1)) drop_oldest();
  lru_.emplace_front(sender);
  it = windows_.emplace(std::string(sender), Window{}).first;
  it->second.lru = lru_.begin();
  return it->second;
}

std::string ReplayGuard::save() const {
  std::lock_guard lock(mu_);
  nlohmann::ordered_json j;
  j["version"] = 1;
  nlohmann::ordered_json senders = nlohmann::ordered_json::object();
  for (const auto& [sender, w] : windows_) {
    nlohmann::ordered_json e;
    if (w.floor) e["floor"] = *w.floor;
    e["recent"] = std::vector<std::uint64_t>(w.recent.begin(), w.recent.end());
    // Sender ids are bytes (a key id or a public key): stored as base64url.
    senders[base64url_encode(sender)] = std::move(e);
  }
  j["senders"] = std::move(senders);
  return j.dump() + "\n";
}

void ReplayGuard::restore(std::string_view json) {
  nlohmann::json j = nlohmann::json::parse(json);  // throws parse_error (a runtime_error)
  if (!j.is_object() || j.value("version", 0) != 1 || !j.contains("senders") || !j["senders"].is_object())
    throw std::runtime_error("not a replay state file (version 1)");
  struct Entry {
    std::string sender;
    std::optional<std::uint64_t> floor;
    std::vector<std::uint64_t> recent;
  };
  std::vector<Entry> entries;
  for (const auto& [name, e] : j["senders"].items()) {
    auto sender = base64url_decode(name);
    if (!sender || !e.is_object() || !e.contains("recent") || !e["recent"].is_array())
      throw std::runtime_error("malformed sender entry in the replay state");
    Entry en{std::move(*sender), std::nullopt, e["recent"].get<std::vector<std::uint64_t>>()};
    if (e.contains("floor")) en.floor = e["floor"].get<std::uint64_t>();
    entries.push_back(std::move(en));
  }
  std::lock_guard lock(mu_);
  windows_.clear();
  lru_.clear();
  entries_ = 0;
  for (auto& en : entries) {
    Window& w = window(en.sender);
    w.floor = en.floor;
    w.recent.insert(en.recent.begin(), en.recent.end());
    entries_ += w.recent.size();
  }
}

}  // namespace moat::payload
