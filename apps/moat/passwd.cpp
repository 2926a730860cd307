// `moat passwd`: create and update password files, as mosquitto_passwd does,
// with argon2id entries (Moat also reads Mosquitto's $6$/$7$ entries).
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli.hpp"
#include "security/password_file.hpp"

namespace moat::cli {
namespace {

// One line from stdin; without echo and asked twice when stdin is a terminal.
std::optional<std::string> read_password() {
  const bool tty = ::isatty(STDIN_FILENO) != 0;
  auto ask = [&](const char* prompt) -> std::optional<std::string> {
    termios old{};
    if (tty) {
      // Echo goes off before the prompt appears: typing that follows the prompt
      // at once (a script, a fast typist) is never shown.
      ::tcgetattr(STDIN_FILENO, &old);
      termios quiet = old;
      quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
      ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
      std::fprintf(stderr, "%s", prompt);
      std::fflush(stderr);
    }
    std::string line;
    const bool ok = static_cast<bool>(std::getline(std::cin, line));
    if (tty) {
      ::tcsetattr(STDIN_FILENO, TCSANOW, &old);
      std::fprintf(stderr, "\n");
    }
    if (!ok) return std::nullopt;
    if (!line.empty() && line.back() == '\r') line.pop_back();  // a CRLF line
    return line;
  };
  auto first = ask("Password: ");
  if (!first || !tty) return first;
  auto again = ask("Reenter password: ");
  if (!again || *again != *first) {
    std::fprintf(stderr, "moat passwd: passwords do not match\n");
    return std::nullopt;
  }
  return first;
}

}  // namespace

int run_passwd(const PasswdArgs& a) {
  try {
    if (const auto why = security::check_user_name(a.user); !why.empty()) {
      std::fprintf(stderr, "moat passwd: invalid user name: %s\n", why.c_str());
      return kUsage;
    }
    if (a.remove) {
      if (!security::delete_user(a.file, a.user)) {
        std::fprintf(stderr, "moat passwd: user %s is not in %s\n", a.user.c_str(), a.file.c_str());
        return kUsage;
      }
      return 0;
    }
    std::optional<std::string> password = a.batch ? a.password : read_password();
    if (!password) {
      std::fprintf(stderr, "moat passwd: no password given\n");
      return kUsage;
    }
    if (a.create) {
      // A new file replaces the old one only once it is complete.
      const std::filesystem::path fresh = a.file + ".new";
      std::filesystem::remove(fresh);
      security::set_password(fresh, a.user, *password);
      std::filesystem::rename(fresh, a.file);
      return 0;
    }
    security::set_password(a.file, a.user, *password);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moat passwd: %s\n", e.what());
    return kUsage;
  }
}

}  // namespace moat::cli
