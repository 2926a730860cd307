// Topic names, topic filters and the UTF-8 rules of MQTT 3.1.1 sections 1.5.3 and 4.7.
#pragma once

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

// Calls f(level) for each '/'-separated level, empty levels included.
template <typename F>
void for_each_level(std::string_view s, F&& f) {
  std::size_t start = 0;
  for (;;) {
    const auto slash = s.find('/', start);
    if (slash == std::string_view::npos) {
      f(s.substr(start));
      return;
    }
    f(s.substr(start, slash - start));
    start = slash + 1;
  }
}

}  // namespace moat::codec
