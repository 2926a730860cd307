#include "security/defence.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>

namespace moat::security {

// ---- addresses ----

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  if (text.empty() || text.size() > 45) return std::nullopt;
  char buf[46];
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  IpAddress a;
  if (text.find(':') == std::string_view::npos) {
    in_addr v4{};
    if (::inet_pton(AF_INET, buf, &v4) != 1) return std::nullopt;
    a.v4 = true;
    std::memcpy(a.bytes.data(), &v4, 4);
    return a;
  }
  in6_addr v6{};
  if (::inet_pton(AF_INET6, buf, &v6) != 1) return std::nullopt;
  std::memcpy(a.bytes.data(), &v6, 16);
  static constexpr std::uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
  if (std::memcmp(a.bytes.data(), kMapped, 12) == 0) {  // ::ffff:a.b.c.d is an IPv4 peer
    std::memmove(a.bytes.data(), a.bytes.data() + 12, 4);
    std::memset(a.bytes.data() + 4, 0, 12);
    a.v4 = true;
  }
  return a;
}

std::optional<Cidr> Cidr::parse(std::string_view text) {
  Cidr c;
  const auto slash = text.find('/');
  const auto addr = IpAddress::parse(text.substr(0, slash));
  if (!addr) return std::nullopt;
  c.base = *addr;
  const unsigned max = addr->v4 ? 32 : 128;
  c.prefix = max;
  if (slash != std::string_view::npos) {
    const auto p = text.substr(slash + 1);
    unsigned v = 0;
    const auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
    if (p.empty() || ec != std::errc() || end != p.data() + p.size() || v > max) return std::nullopt;
    c.prefix = v;
  }
  // No bits set past the prefix: "10.0.0.1/8" is more likely a typo than intent.
  for (unsigned bit = c.prefix; bit < max; ++bit)
    if (c.base.bytes[bit / 8] & (0x80u >> (bit % 8))) return std::nullopt;
  return c;
}

bool Cidr::contains(const IpAddress& a) const {
  if (a.v4 != base.v4) return false;
  const unsigned full = prefix / 8;
  if (std::memcmp(a.bytes.data(), base.bytes.data(), full) != 0) return false;
  const unsigned rest = prefix % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<std::uint8_t>(0xFFu << (8 - rest));
  return (a.bytes[full] & mask) == (base.bytes[full] & mask);
}

std::string_view peer_address(std::string_view peer) {
  if (!peer.empty() && peer.front() == '[') {
    const auto close = peer.find(']');
    return close == std::string_view::npos ? peer.substr(1) : peer.substr(1, close - 1);
  }
  const auto colon = peer.rfind(':');
  if (colon == std::string_view::npos || peer.find(':') != colon) return peer;  // no port, or bare IPv6
  return peer.substr(0, colon);
}

std::vector<Cidr> DefenceConfig::default_allow() {
  return {*Cidr::parse("127.0.0.0/8"), *Cidr::parse("::1")};
}

// ---- bans ----

std::optional<Ban> MemoryBanList::find(std::string_view address) const {
  auto it = bans_.find(std::string(address));
  if (it == bans_.end()) return std::nullopt;
  return it->second;
}

void MemoryBanList::put(Ban ban) {
  std::string key = ban.address;
  bans_.insert_or_assign(std::move(key), std::move(ban));
}

void MemoryBanList::erase(std::string_view address) {
  bans_.erase(std::string(address));
}

std::vector<Ban> MemoryBanList::all() const {
  std::vector<Ban> out;
  out.reserve(bans_.size());
  for (const auto& [k, b] : bans_) out.push_back(b);
  return out;
}

std::vector<Ban> BanList::take_ended(DefenceTime now) {
  std::vector<Ban> ended;
  for (auto& b : all())
    if (b.until <= now) ended.push_back(std::move(b));
  for (const auto& b : ended) erase(b.address);
  return ended;
}

// ---- throttle ----

AuthThrottle::AuthThrottle(DefenceConfig config, std::unique_ptr<BanList> bans)
    : config_(std::move(config)), bans_(bans ? std::move(bans) : std::make_unique<MemoryBanList>()) {}

bool in_any(const std::vector<Cidr>& blocks, std::string_view address) {
  if (blocks.empty()) return false;
  const auto a = IpAddress::parse(address);
  return a && std::any_of(blocks.begin(), blocks.end(), [&](const Cidr& c) { return c.contains(*a); });
}

bool AuthThrottle::exempt(std::string_view address) const {
  return !config_.enabled || in_any(config_.allow, address);
}

std::optional<Ban> AuthThrottle::active_ban(std::string_view address, DefenceTime now) const {
  auto b = bans_->find(address);
  if (b && b->until > now) return b;
  return std::nullopt;
}

bool AuthThrottle::banned(std::string_view address, DefenceTime now) const {
  if (exempt(address)) return false;
  std::lock_guard lock(mu_);
  return active_ban(address, now).has_value();
}

std::size_t AuthThrottle::tracked() const {
  std::lock_guard lock(mu_);
  return addresses_.size() + keys_.size();
}

std::optional<DefenceTime> still_counting(const FailureCounter& c, std::chrono::seconds window,
                                          DefenceTime now) {
  const DefenceTime since = std::min(c.since, now);
  if (c.failures == 0 || now - since >= window) return std::nullopt;
  return since;
}

void AuthThrottle::forget_quiet_keys(DefenceTime now) {
  std::erase_if(keys_, [&](const auto& kv) {
    if (now - kv.second.last < config_.window) return false;
    forgotten_.push_back(kv.first);
    return true;
  });
}

void AuthThrottle::make_room(DefenceTime now) {
  if (addresses_.size() + keys_.size() < config_.max_tracked) return;
  // Forget what no longer matters: failures older than the window, full buckets.
  // The failure counters forgotten are reported (take_forgotten) for the store.
  forget_quiet_keys(now);
  std::erase_if(addresses_, [&](const auto& kv) {
    const AddressState& s = kv.second;
    const bool stale =
        now - s.touched >= std::max<DefenceClock::duration>(config_.window, std::chrono::seconds(1)) &&
        (now - s.last_report >= config_.log_interval || !s.reported);
    if (stale && s.failures > 0) forgotten_.push_back(kv.first);
    return stale;
  });
  // Still full (an attack from very many addresses): drop arbitrary entries.
  // The bans themselves are kept; only counters are lost.
  while (!keys_.empty() && addresses_.size() + keys_.size() >= config_.max_tracked) {
    forgotten_.push_back(keys_.begin()->first);
    keys_.erase(keys_.begin());
  }
  while (!addresses_.empty() && addresses_.size() + keys_.size() >= config_.max_tracked) {
    if (addresses_.begin()->second.failures > 0) forgotten_.push_back(addresses_.begin()->first);
    addresses_.erase(addresses_.begin());
  }
}

AuthThrottle::AddressState& AuthThrottle::address_state(std::string_view address, DefenceTime now) {
  auto it = addresses_.find(std::string(address));
  if (it == addresses_.end()) {
    make_room(now);
    it = addresses_.emplace(std::string(address), AddressState{}).first;
  }
  it->second.touched = now;
  return it->second;
}

AuthThrottle::Verdict AuthThrottle::refuse(AddressState& st, Admission why, DefenceTime now,
                                           DefenceTime until) {
  Verdict v;
  v.admission = why;
  v.banned_until = until;
  if (!st.reported || now - st.last_report >= config_.log_interval) {
    v.report = true;
    v.suppressed = st.suppressed;
    st.reported = true;
    st.last_report = now;
    st.suppressed = 0;
  } else {
    ++st.suppressed;
  }
  return v;
}

AuthThrottle::Verdict AuthThrottle::admit_connection(std::string_view address, DefenceTime now) {
  if (exempt(address)) return {};
  std::lock_guard lock(mu_);
  if (auto b = active_ban(address, now))
    return refuse(address_state(address, now), Admission::Banned, now, b->until);
  if (config_.connection_rate == 0) return {};
  AddressState& st = address_state(address, now);
  const double burst = std::max<double>(config_.connection_burst, 1);
  if (st.tokens < 0) {
    st.tokens = burst;
  } else {
    const double elapsed = std::chrono::duration<double>(now - st.refilled).count();
    st.tokens = std::min(burst, st.tokens + std::max(0.0, elapsed) * config_.connection_rate);
  }
  st.refilled = now;
  if (st.tokens < 1) return refuse(st, Admission::RateLimited, now, {});
  st.tokens -= 1;
  return {};
}

AuthThrottle::Verdict AuthThrottle::check_ban(std::string_view address, DefenceTime now) {
  if (exempt(address)) return {};
  std::lock_guard lock(mu_);
  if (auto b = active_ban(address, now))
    return refuse(address_state(address, now), Admission::Banned, now, b->until);
  return {};
}

AuthThrottle::Failure AuthThrottle::failure(std::string_view address, std::string_view username,
                                            DefenceTime now) {
  Failure f;
  if (exempt(address)) return f;
  std::lock_guard lock(mu_);
  std::string key;
  key.reserve(address.size() + 1 + username.size());
  key.append(address).push_back('\0');
  key.append(username);
  auto it = keys_.find(key);
  if (it == keys_.end()) {
    make_room(now);
    it = keys_.emplace(std::move(key), KeyState{}).first;
  }
  KeyState& k = it->second;
  if (k.failures > 0 && now - k.last >= config_.window) k.failures = 0;  // quiet long enough
  k.failures = k.failures < 1'000'000 ? k.failures + 1 : k.failures;
  k.last = now;
  f.failures = k.failures;
  f.counters.push_back({it->first, k.failures, k.last});
  if (config_.backoff_initial.count() > 0) {
    // initial * 2^(n-1), capped; the shift is bounded so it cannot overflow.
    const unsigned shift = std::min<std::uint32_t>(k.failures - 1, 30);
    const auto raw = config_.backoff_initial.count() * (std::int64_t{1} << shift);
    f.delay = std::chrono::milliseconds(std::min<std::int64_t>(raw, config_.backoff_max.count()));
  }

  AddressState& st = address_state(address, now);
  if (st.failures == 0 || now - st.window_start >= config_.window) {
    st.window_start = now;
    st.failures = 0;
  }
  ++st.failures;
  if (config_.ban_after > 0 && st.failures >= config_.ban_after && !active_ban(address, now)) {
    Ban b{std::string(address), now + config_.ban_time,
          std::to_string(st.failures) + " failed authentications within " +
              std::to_string(config_.window.count()) + " s"};
    bans_->put(b);
    f.banned = std::move(b);
    st.failures = 0;
    st.reported = false;  // the first refusal under the new ban is reported
    st.suppressed = 0;
  }
  f.counters.push_back({std::string(address), st.failures, st.window_start});
  return f;
}

std::optional<std::string> AuthThrottle::success(std::string_view address, std::string_view username) {
  if (exempt(address)) return std::nullopt;
  std::lock_guard lock(mu_);
  if (keys_.empty()) return std::nullopt;
  std::string key;
  key.append(address).push_back('\0');
  key.append(username);
  if (keys_.erase(key) == 0) return std::nullopt;
  return key;
}

std::vector<Ban> AuthThrottle::expire(DefenceTime now) {
  std::lock_guard lock(mu_);
  return bans_->take_ended(now);
}

void AuthThrottle::restore(std::vector<Ban> bans, DefenceTime now) {
  std::lock_guard lock(mu_);
  for (auto& b : bans) {
    if (b.until <= now || exempt(b.address)) continue;
    bans_->put(std::move(b));
  }
}

std::vector<std::string> AuthThrottle::restore_failures(std::vector<FailureCounter> counters,
                                                        DefenceTime now) {
  std::vector<std::string> dropped;
  std::lock_guard lock(mu_);
  for (auto& c : counters) {
    const auto nul = c.key.find('\0');
    const std::string_view address = std::string_view(c.key).substr(0, nul);
    const auto since = still_counting(c, config_.window, now);
    if (!since || address.empty() || exempt(address)) {
      dropped.push_back(std::move(c.key));
      continue;
    }
    const std::uint32_t failures = std::min<std::uint32_t>(c.failures, 1'000'000);
    if (nul == std::string::npos) {
      AddressState& st = address_state(address, now);
      st.window_start = *since;
      st.failures = failures;
    } else {
      make_room(now);
      keys_.insert_or_assign(std::move(c.key), KeyState{failures, *since});
    }
  }
  return dropped;
}

std::vector<std::string> AuthThrottle::take_forgotten(DefenceTime now) {
  std::lock_guard lock(mu_);
  forget_quiet_keys(now);
  for (auto& [address, st] : addresses_) {
    if (st.failures == 0 || now - st.window_start < config_.window) continue;
    st.failures = 0;  // failure() would start a new window anyway
    forgotten_.push_back(address);
  }
  std::vector<std::string> out = std::move(forgotten_);
  forgotten_.clear();
  return out;
}

}  // namespace moat::security
