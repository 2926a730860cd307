// `moat passwd`: create and update password files, as mosquitto_passwd does,
// with argon2id entries (Moat also reads Mosquitto's $6$/$7$ entries).
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

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

// The argon2id cost from the flags, or the reason it is refused (naming the
// flag, with the same bounds as the password file's parser).
std::optional<std::string> argon2_params(const PasswdArgs& a, security::Argon2Params& out) {
  out = security::Argon2Params{};
  if (a.argon2_parallelism) {
    if (*a.argon2_parallelism < 1 || *a.argon2_parallelism > 64)
      return "--argon2-parallelism must be between 1 and 64, not " + std::to_string(*a.argon2_parallelism);
    out.parallelism = static_cast<std::uint32_t>(*a.argon2_parallelism);
  }
  if (a.argon2_iterations) {
    if (*a.argon2_iterations < 1 || *a.argon2_iterations > 1000)
      return "--argon2-iterations must be between 1 and 1000, not " + std::to_string(*a.argon2_iterations);
    out.iterations = static_cast<std::uint32_t>(*a.argon2_iterations);
  }
  if (a.argon2_memory_kib) {
    const std::uint64_t least = std::uint64_t{8} * out.parallelism;
    if (*a.argon2_memory_kib < least || *a.argon2_memory_kib > 4194304)
      return "--argon2-memory must be between " + std::to_string(least) +
             " (8 x parallelism) and 4194304 KiB, not " + std::to_string(*a.argon2_memory_kib);
    out.memory_kib = static_cast<std::uint32_t>(*a.argon2_memory_kib);
  }
  return std::nullopt;  // the default memory (32768 KiB) covers 8 x 64 lanes
}

}  // namespace

int run_passwd(const PasswdArgs& a) {
  try {
    if (const auto why = security::check_user_name(a.user); !why.empty()) {
      std::fprintf(stderr, "moat passwd: invalid user name: %s\n", why.c_str());
      return kUsage;
    }
    const bool cost_given = a.argon2_memory_kib || a.argon2_iterations || a.argon2_parallelism;
    if (a.remove && cost_given) {
      std::fprintf(stderr, "moat passwd: -D deletes a user; the --argon2-* flags need a password to hash\n");
      return kUsage;
    }
    security::Argon2Params params;
    if (const auto why = argon2_params(a, params)) {
      std::fprintf(stderr, "moat passwd: %s\n", why->c_str());
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
      security::set_password(fresh, a.user, *password, params);
      std::filesystem::rename(fresh, a.file);
      return 0;
    }
    security::set_password(a.file, a.user, *password, params);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moat passwd: %s\n", e.what());
    return kUsage;
  }
}

}  // namespace moat::cli
