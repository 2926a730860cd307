// Shared by the moat.toml unit tests.
#pragma once

#include <string>
#include <string_view>

#include "config/config.hpp"

namespace moat::config::test_util {

// The message of the ConfigError that parsing `text` throws, or "no error".
inline std::string error_of(std::string_view text) {
  try {
    parse(text, "/etc/moat/moat.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

// One anonymous loopback listener, the smallest valid configuration.
inline constexpr std::string_view kListener = R"(
[[listener]]
name = "local"
bind = "127.0.0.1:1883"
auth = ["anonymous"]
)";

}  // namespace moat::config::test_util
