// libFuzzer target for the moat.toml parser (config::parse): any text either
// parses or is refused with a ConfigError "FILE:LINE:COLUMN: KEY: REASON";
// nothing else may escape, crash or leak. Seeds: tests/fuzz/seeds/fuzz_config.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "config/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto c = moat::config::parse(text, "/fuzz/moat.toml");
    if (c.listeners.empty()) {
      std::fprintf(stderr, "fuzz_config: a configuration without listeners was accepted\n");
      std::abort();
    }
  } catch (const moat::config::ConfigError& e) {
    if (std::string_view(e.what()).rfind("/fuzz/moat.toml:", 0) != 0) {
      std::fprintf(stderr, "fuzz_config: error without file:line: %s\n", e.what());
      std::abort();
    }
  }
  return 0;
}
