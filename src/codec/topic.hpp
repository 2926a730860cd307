// Topic names, topic filters and the UTF-8 rules of MQTT 3.1.1 sections 1.5.3 and 4.7.
#pragma once

#include <cstddef>
#include <functional>
#include <string_view>

#include "codec/errors.hpp"

namespace moat::codec {

// [MQTT-1.5.3-1] well-formed UTF-8 without surrogates; [MQTT-1.5.3-2] no U+0000.
ProtocolError check_utf8(std::string_view s);

// A topic name in PUBLISH or a will: at least one character [MQTT-4.7.3-1] and no
// wildcard [MQTT-3.3.2-2][MQTT-4.7.1-1]. UTF-8 is checked separately.
bool valid_topic_name(std::string_view topic);

// A topic filter in SUBSCRIBE: non-empty [MQTT-4.7.3-1]; '#' alone in the last level
// [MQTT-4.7.1-2]; '+' occupies a whole level [MQTT-4.7.1-3].
bool valid_topic_filter(std::string_view filter);

// Does a valid filter match a valid topic name? Topics starting with '$' are not
// matched by a filter starting with '#' or '+' [MQTT-4.7.2-1].
bool topic_matches(std::string_view filter, std::string_view topic);

// Takes the first '/'-separated level off `rest` (all of it if there is no
// '/'), advancing `rest` past it and its separator; `more` says whether a
// separator followed, so "a/" yields "a" and then "".
inline std::string_view next_level(std::string_view& rest, bool& more) {
  const auto slash = rest.find('/');
  const std::string_view level = rest.substr(0, slash);
  more = slash != std::string_view::npos;
  rest = more ? rest.substr(slash + 1) : std::string_view{};
  return level;
}

// Calls f(level) for each '/'-separated level, empty levels included.
template <typename F>
void for_each_level(std::string_view s, F&& f) {
  bool more = true;
  while (more) f(next_level(s, more));
}

// Hash for unordered maps keyed by std::string that are searched with a
// string_view (a topic level) without building a string.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

}  // namespace moat::codec
