// libFuzzer target for the password file parser (PasswordFile::parse, the
// Mosquitto-compatible format): any text either parses or is refused with a
// std::runtime_error "SOURCE:LINE: reason"; nothing else may escape or crash.
// verify() is not called: it hashes, and hashing cost is bounded by the parser.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string_view>

#include "security/password_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto f = moat::security::PasswordFile::parse(text, "fuzz");
    // Every user of a line that parsed is in the table.
    const auto colon = text.find(':');
    if (f->size() > 0 && colon != std::string_view::npos && colon > 0 && text.find('\n') > colon &&
        text[0] != '#' && text[0] != ' ' && text[0] != '\t' && text[0] != '\r') {
      const auto user = text.substr(0, colon);
      if (moat::security::check_user_name(user).empty() && !f->contains(user)) {
        std::fprintf(stderr, "fuzz_password_file: the first line's user is missing\n");
        std::abort();
      }
    }
  } catch (const std::runtime_error& e) {
    if (std::string_view(e.what()).rfind("fuzz", 0) != 0) {
      std::fprintf(stderr, "fuzz_password_file: error without its source: %s\n", e.what());
      std::abort();
    }
  }
  return 0;
}
