#include "codec/topic.hpp"

#include <cstdint>
#include <cstring>

namespace moat::codec {

namespace {

// Word-at-a-time tests (topics are mostly short ASCII and checked on every
// PUBLISH): any byte of `w` zero, or any byte equal to `c`.
constexpr std::uint64_t kOnes = 0x0101010101010101ull;
constexpr std::uint64_t kHighs = 0x8080808080808080ull;
inline bool has_zero_byte(std::uint64_t w) {
  return ((w - kOnes) & ~w & kHighs) != 0;
}
inline bool has_byte(std::uint64_t w, std::uint8_t c) {
  return has_zero_byte(w ^ (kOnes * c));
}
inline std::uint64_t load8(const std::uint8_t* p) {
  std::uint64_t w;
  std::memcpy(&w, p, sizeof w);
  return w;
}

}  // namespace

ProtocolError check_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    // Eight ASCII bytes without U+0000 at a time.
    while (n - i >= 8) {
      const std::uint64_t w = load8(p + i);
      if ((w & kHighs) != 0 || has_zero_byte(w)) break;
      i += 8;
    }
    if (i >= n) break;
    const std::uint8_t c = p[i];
    if (c < 0x80) {
      if (c == 0) return ProtocolError::NullCharacter;
      ++i;
      continue;
    }
    // RFC 3629 section 4: the well-formed byte sequences.
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return ProtocolError::InvalidUtf8;  // continuation byte, C0/C1 or F5..FF lead
    }
    if (n - i < len) return ProtocolError::InvalidUtf8;
    for (std::size_t k = 1; k < len; ++k) {
      const std::uint8_t cc = p[i + k];
      if ((cc & 0xC0) != 0x80) return ProtocolError::InvalidUtf8;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates [MQTT-1.5.3-1] and code points past U+10FFFF.
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return ProtocolError::InvalidUtf8;
    i += len;
  }
  return ProtocolError::None;
}

bool valid_topic_name(std::string_view topic) {
  if (topic.empty()) return false;
  const auto* p = reinterpret_cast<const std::uint8_t*>(topic.data());
  const std::size_t n = topic.size();
  std::size_t i = 0;
  for (; n - i >= 8; i += 8) {
    const std::uint64_t w = load8(p + i);
    if (has_byte(w, '+') || has_byte(w, '#')) return false;
  }
  for (; i < n; ++i)
    if (p[i] == '+' || p[i] == '#') return false;
  return true;
}

bool valid_topic_filter(std::string_view filter) {
  if (filter.empty()) return false;
  bool ok = true;
  bool seen_hash = false;
  for_each_level(filter, [&](std::string_view level) {
    if (seen_hash) ok = false;  // '#' must be the last level
    if (level.find_first_of("+#") == std::string_view::npos) return;
    if (level == "#")
      seen_hash = true;
    else if (level != "+")
      ok = false;
  });
  return ok;
}

bool topic_matches(std::string_view filter, std::string_view topic) {
  if (!topic.empty() && topic.front() == '$' && !filter.empty() &&
      (filter.front() == '+' || filter.front() == '#'))
    return false;
  std::size_t f = 0;
  std::size_t t = 0;
  for (;;) {
    const auto fend = std::min(filter.find('/', f), filter.size());
    const auto flevel = filter.substr(f, fend - f);
    if (flevel == "#") return true;  // matches the parent level too ("a/#" matches "a")
    const auto tend = std::min(topic.find('/', t), topic.size());
    if (flevel != "+" && flevel != topic.substr(t, tend - t)) return false;
    const bool flast = fend == filter.size();
    const bool tlast = tend == topic.size();
    if (flast || tlast) {
      if (flast && tlast) return true;
      // The topic ended: "a/#" still matches "a" through the next filter level.
      return tlast && !flast && filter.substr(fend + 1) == "#";
    }
    f = fend + 1;
    t = tend + 1;
  }
}

}  // namespace moat::codec
