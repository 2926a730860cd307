// Handshake counters per listener.
#include <algorithm>

#include "security/tls.hpp"

namespace moat::security {

void TlsHandshakeMetrics::record(const TlsEngine& engine) {
  switch (engine.state()) {
    case TlsState::Handshaking:
      return;
    case TlsState::Failed:
      if (engine.version().empty()) return record_failure(engine.failure());
      [[fallthrough]];  // failed after the handshake (buffer limit, revoked on resumption): completed
    case TlsState::Established:
    case TlsState::Closed:
      if (engine.version().empty()) return;  // closed before the handshake ended
      record_completed(engine.version(), engine.resumed(), engine.psk_used(), engine.handshake_duration());
      return;
  }
}

void TlsHandshakeMetrics::record_completed(std::string_view version, bool resumed, bool psk,
                                           std::optional<std::chrono::steady_clock::duration> duration) {
  constexpr auto r = std::memory_order_relaxed;
  completed_.fetch_add(1, r);
  if (resumed) resumed_.fetch_add(1, r);
  if (psk) psk_.fetch_add(1, r);
  if (version == "TLSv1.3") tls13_.fetch_add(1, r);
  if (version == "TLSv1.2") tls12_.fetch_add(1, r);
  if (duration) {
    const auto us = static_cast<std::uint64_t>(
        std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::microseconds>(*duration).count()));
    std::size_t b = 0;
    while (b < kBucketMicros.size() && us > kBucketMicros[b]) ++b;
    buckets_[b].fetch_add(1, r);
    duration_count_.fetch_add(1, r);
    duration_sum_.fetch_add(us, r);
  }
}

void TlsHandshakeMetrics::record_closed_revoked() {
  closed_revoked_.fetch_add(1, std::memory_order_relaxed);
}

void TlsHandshakeMetrics::record_failure(TlsFailure reason) {
  const auto i = static_cast<std::size_t>(reason);
  if (i < kTlsFailureCount) failures_[i].fetch_add(1, std::memory_order_relaxed);
}

TlsHandshakeMetrics::Snapshot TlsHandshakeMetrics::snapshot() const {
  constexpr auto r = std::memory_order_relaxed;
  Snapshot s;
  s.completed = completed_.load(r);
  s.resumed = resumed_.load(r);
  s.tls12 = tls12_.load(r);
  s.tls13 = tls13_.load(r);
  s.psk = psk_.load(r);
  for (std::size_t i = 0; i < kTlsFailureCount; ++i) s.failures[i] = failures_[i].load(r);
  for (std::size_t i = 0; i < buckets_.size(); ++i) s.duration_buckets[i] = buckets_[i].load(r);
  s.duration_count = duration_count_.load(r);
  s.duration_sum_micros = duration_sum_.load(r);
  s.closed_revoked = closed_revoked_.load(r);
  return s;
}

std::uint64_t TlsHandshakeMetrics::Snapshot::failed() const {
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < kTlsFailureCount; ++i)
    if (i != static_cast<std::size_t>(TlsFailure::None)) n += failures[i];
  return n;
}

double TlsHandshakeMetrics::Snapshot::duration_quantile_micros(double q) const {
  std::uint64_t total = 0;
  for (const auto n : duration_buckets) total += n;
  if (total == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  // The rank of the quantile among `total` samples, found in the cumulative counts,
  // placed linearly between its bucket's bounds.
  const double rank = q * static_cast<double>(total);
  double seen = 0;
  for (std::size_t b = 0; b < duration_buckets.size(); ++b) {
    const auto n = static_cast<double>(duration_buckets[b]);
    if (n > 0 && seen + n >= rank) {
      const double lo = b == 0 ? 0.0 : static_cast<double>(kBucketMicros[b - 1]);
      if (b == kBucketMicros.size()) return lo;  // beyond the last bound: only a floor is known
      const double hi = static_cast<double>(kBucketMicros[b]);
      return lo + (hi - lo) * std::clamp((rank - seen) / n, 0.0, 1.0);
    }
    seen += n;
  }
  return static_cast<double>(kBucketMicros.back());
}

}  // namespace moat::security
