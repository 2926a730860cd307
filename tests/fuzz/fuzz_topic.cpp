// libFuzzer target for check_utf8, valid_topic_name, valid_topic_filter and topic_matches.
//
// The input is split at its first NUL into a filter and a topic (without a NUL, both are
// the whole input). Each function is compared with a straightforward reference written
// from the specification text (sections 1.5.3, 4.7), plus these properties:
//   - a valid topic name is also a valid topic filter, and matches itself;
//   - "#" matches every valid topic not starting with '$' [MQTT-4.7.2-1];
//   - filter "f/#" matches topic f (the parent level, section 4.7.1.2);
//   - topic_matches never crashes, even on invalid arguments.
//
// Build: clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc
//        tests/fuzz/fuzz_topic.cpp src/codec/*.cpp -o fuzz_topic
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "codec/topic.hpp"

namespace {

using namespace moat::codec;

[[noreturn]] void fail(const char* what, std::string_view filter, std::string_view topic) {
  auto hex = [](std::string_view s) {
    std::string out;
    char buf[4];
    for (unsigned char c : s) {
      std::snprintf(buf, sizeof buf, "%02X", c);
      out += buf;
    }
    return out;
  };
  std::fprintf(stderr, "fuzz_topic: %s\n  filter %s\n  topic  %s\n", what, hex(filter).c_str(),
               hex(topic).c_str());
  std::abort();
}

// Reference UTF-8 check: decode each code point from its lead byte, the way RFC 3629
// section 3 describes, and reject what section 1.5.3 of MQTT forbids.
ProtocolError ref_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    std::size_t extra;
    std::uint32_t cp;
    std::uint32_t min;
    if (c <= 0x7F) {
      extra = 0, cp = c, min = 0;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3, cp = c & 0x07, min = 0x10000;
    } else {
      return ProtocolError::InvalidUtf8;
    }
    if (s.size() - i <= extra) return ProtocolError::InvalidUtf8;  // truncated sequence
    for (std::size_t k = 1; k <= extra; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return ProtocolError::InvalidUtf8;
      cp = cp << 6 | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return ProtocolError::InvalidUtf8;
    if (cp == 0) return ProtocolError::NullCharacter;
    i += extra + 1;
  }
  return ProtocolError::None;
}

std::vector<std::string_view> levels(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  while (true) {
    const auto slash = s.find('/', start);
    if (slash == std::string_view::npos) break;
    out.push_back(s.substr(start, slash - start));
    start = slash + 1;
  }
  out.push_back(s.substr(start));
  return out;
}

bool ref_topic_name(std::string_view t) {
  if (t.empty()) return false;
  for (char c : t)
    if (c == '+' || c == '#') return false;
  return true;
}

bool ref_topic_filter(std::string_view f) {
  if (f.empty()) return false;
  const auto ls = levels(f);
  for (std::size_t i = 0; i < ls.size(); ++i) {
    const auto l = ls[i];
    if (l == "#") {
      if (i + 1 != ls.size()) return false;
    } else if (l != "+" && l.find_first_of("+#") != std::string_view::npos) {
      return false;
    }
  }
  return true;
}

bool ref_matches(std::string_view filter, std::string_view topic) {
  if (!topic.empty() && topic[0] == '$' && (filter[0] == '+' || filter[0] == '#')) return false;
  const auto f = levels(filter);
  const auto t = levels(topic);
  for (std::size_t i = 0; i < f.size(); ++i) {
    if (f[i] == "#") return true;  // this level and all below, including none
    if (i >= t.size()) return false;
    if (f[i] != "+" && f[i] != t[i]) return false;
  }
  return f.size() == t.size();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto nul = in.find('\0');
  const std::string_view filter = nul == std::string_view::npos ? in : in.substr(0, nul);
  const std::string_view topic = nul == std::string_view::npos ? in : in.substr(nul + 1);

  if (check_utf8(in) != ref_utf8(in)) fail("check_utf8 differs from the reference (whole input)", in, in);
  if (check_utf8(topic) != ref_utf8(topic)) fail("check_utf8 differs from the reference", filter, topic);
  if (valid_topic_name(topic) != ref_topic_name(topic)) fail("valid_topic_name differs", filter, topic);
  if (valid_topic_filter(filter) != ref_topic_filter(filter))
    fail("valid_topic_filter differs", filter, topic);

  // Memory safety on any arguments.
  (void)topic_matches(filter, topic);
  (void)topic_matches(topic, filter);

  const bool filter_ok = valid_topic_filter(filter);
  const bool topic_ok = valid_topic_name(topic);
  if (topic_ok) {
    if (!valid_topic_filter(topic)) fail("a valid topic name is not a valid filter", topic, topic);
    if (!topic_matches(topic, topic)) fail("a topic name does not match itself as a filter", topic, topic);
    if (topic_matches("#", topic) != (topic[0] != '$')) fail("\"#\" and '$' rule [MQTT-4.7.2-1]", "#", topic);
    const std::string parent = std::string(topic) + "/#";
    if (!topic_matches(parent, topic)) fail("\"t/#\" does not match t", parent, topic);
  }
  if (filter_ok && topic_ok) {
    const bool m = topic_matches(filter, topic);
    if (m != ref_matches(filter, topic))
      fail(m ? "matches, reference says no" : "no match, reference says yes", filter, topic);
    if (filter == topic && !m) fail("a filter equal to the topic does not match it", filter, topic);
  }
  return 0;
}
