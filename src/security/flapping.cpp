#include "security/flapping.hpp"

#include <algorithm>

namespace moat::security {

FlapDetector::FlapDetector(FlappingConfig config, std::unique_ptr<BanList> bans)
    : config_(std::move(config)), bans_(bans ? std::move(bans) : std::make_unique<MemoryBanList>()) {}

bool FlapDetector::exempt(std::string_view address) const {
  return in_any(config_.exempt, address);
}

std::size_t FlapDetector::tracked() const {
  std::lock_guard lock(mu_);
  return ids_.size();
}

FlapDetector::Verdict FlapDetector::on_connect(std::string_view client_id, std::string_view address,
                                               DefenceTime now) {
  Verdict v;
  if (!enabled() || exempt(address)) return v;
  std::lock_guard lock(mu_);
  if (auto b = bans_->find(client_id); b && b->until > now) {
    v.banned = true;
    v.banned_until = b->until;
    return v;
  }
  auto it = ids_.find(std::string(client_id));
  if (it == ids_.end()) return v;
  State& st = it->second;
  if (now - st.window_start >= config_.window) return v;  // a quiet window: starts afresh
  v.disconnections = st.disconnections;
  const std::uint32_t half = std::max<std::uint32_t>(1, config_.max / 2);
  if (st.disconnections >= half && config_.delay.count() > 0) {
    const unsigned shift = std::min<std::uint32_t>(st.disconnections - half, 30);
    const auto raw = config_.delay.count() * (std::int64_t{1} << shift);
    v.delay = std::chrono::milliseconds(std::min<std::int64_t>(raw, config_.delay_max.count()));
  }
  return v;
}

std::optional<Ban> FlapDetector::on_disconnect(std::string_view client_id, std::string_view address,
                                               DefenceTime now, FailureCounter* counted) {
  if (!enabled() || exempt(address)) return std::nullopt;
  std::lock_guard lock(mu_);
  auto it = ids_.find(std::string(client_id));
  if (it == ids_.end()) {
    make_room(now);
    it = ids_.emplace(std::string(client_id), State{}).first;
  }
  State& st = it->second;
  if (st.disconnections == 0 || now - st.window_start >= config_.window) {
    st.window_start = now;
    st.disconnections = 0;
  }
  ++st.disconnections;
  if (counted) *counted = {it->first, st.disconnections, st.window_start};
  if (st.disconnections < config_.max) return std::nullopt;
  Ban b{std::string(client_id), now + config_.ban_time,
        std::to_string(st.disconnections) + " disconnections within " +
            std::to_string(config_.window.count()) + " s"};
  bans_->put(b);
  ids_.erase(it);  // after the ban the count starts again
  if (counted) counted->failures = 0;
  return b;
}

void FlapDetector::forget_ended(DefenceTime now) {
  std::erase_if(ids_, [&](const auto& kv) {
    if (now - kv.second.window_start < config_.window) return false;
    forgotten_.push_back(kv.first);
    return true;
  });
}

void FlapDetector::make_room(DefenceTime now) {
  if (ids_.size() < config_.max_tracked) return;
  forget_ended(now);
  // Still full (very many identifiers flapping at once): forget arbitrary ones.
  while (!ids_.empty() && ids_.size() >= config_.max_tracked) {
    forgotten_.push_back(ids_.begin()->first);
    ids_.erase(ids_.begin());
  }
}

std::vector<Ban> FlapDetector::expire(DefenceTime now) {
  std::lock_guard lock(mu_);
  return bans_->take_ended(now);
}

void FlapDetector::restore(std::vector<Ban> bans, DefenceTime now) {
  std::lock_guard lock(mu_);
  for (auto& b : bans)
    if (b.until > now) bans_->put(std::move(b));
}

std::vector<std::string> FlapDetector::restore_counts(std::vector<FailureCounter> counts, DefenceTime now) {
  std::vector<std::string> dropped;
  std::lock_guard lock(mu_);
  for (auto& c : counts) {
    const auto since = still_counting(c, config_.window, now);
    if (!enabled() || !since || c.key.empty()) {
      dropped.push_back(std::move(c.key));
      continue;
    }
    make_room(now);
    ids_.insert_or_assign(std::move(c.key), State{*since, std::min(c.failures, config_.max)});
  }
  return dropped;
}

std::vector<std::string> FlapDetector::take_forgotten(DefenceTime now) {
  std::lock_guard lock(mu_);
  forget_ended(now);
  std::vector<std::string> out = std::move(forgotten_);
  forgotten_.clear();
  return out;
}

}  // namespace moat::security
