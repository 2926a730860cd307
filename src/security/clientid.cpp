#include "security/clientid.hpp"

#include <stdexcept>

#include "codec/topic.hpp"

namespace moat::security {
namespace {

// Length of the UTF-8 sequence starting at s[i] (1 for anything malformed, so
// '?' always advances).
std::size_t char_len(std::string_view s, std::size_t i) {
  std::size_t n = 1;
  while (i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xC0) == 0x80) ++n;
  return n;
}

bool is_user_token(std::string_view p, std::size_t i) {
  return p[i] == '%' && i + 1 < p.size() && p[i + 1] == 'u';
}

}  // namespace

bool is_glob(std::string_view pattern) {
  for (std::size_t i = 0; i < pattern.size(); ++i)
    if (pattern[i] == '*' || pattern[i] == '?' || is_user_token(pattern, i)) return true;
  return false;
}

bool glob_match(std::string_view p, std::string_view t, std::string_view user) {
  // The classic two-cursor matcher with one backtrack point (the last '*'):
  // every token other than '*' matches a fixed-length piece of text, so moving
  // the last star's extent one character at a time finds a match if any exists.
  std::size_t pi = 0;
  std::size_t ti = 0;
  std::size_t star_p = std::string_view::npos;
  std::size_t star_t = 0;
  while (ti < t.size() || pi < p.size()) {
    if (pi < p.size()) {
      if (p[pi] == '*') {
        star_p = pi++;
        star_t = ti;
        continue;
      }
      if (p[pi] == '?') {
        if (ti < t.size()) {
          ti += char_len(t, ti);
          ++pi;
          continue;
        }
      } else if (is_user_token(p, pi)) {
        if (user.empty()) return false;
        if (t.substr(ti, user.size()) == user) {
          ti += user.size();
          pi += 2;
          continue;
        }
      } else if (ti < t.size() && p[pi] == t[ti]) {
        ++pi;
        ++ti;
        continue;
      }
    }
    // Mismatch (or pattern exhausted with text left): let the last star eat
    // one more character.
    if (star_p == std::string_view::npos || star_t >= t.size()) return false;
    star_t += char_len(t, star_t);
    ti = star_t;
    pi = star_p + 1;
  }
  return true;
}

std::shared_ptr<const ClientIdRules> ClientIdRules::make(Spec spec) {
  auto check = [](const std::vector<std::string>& list, const std::string& where) {
    if (list.empty()) throw std::invalid_argument(where + ": empty list (no client id would be allowed)");
    for (const auto& p : list) {
      if (p.empty()) throw std::invalid_argument(where + ": empty pattern");
      if (codec::check_utf8(p) != codec::ProtocolError::None)
        throw std::invalid_argument(where + ": pattern is not valid UTF-8");
    }
  };
  for (const auto& [user, list] : spec.users) {
    if (user.empty()) throw std::invalid_argument("users: empty user name");
    check(list, "users." + user);
  }
  if (spec.others) check(*spec.others, "others");
  if (spec.anonymous) check(*spec.anonymous, "anonymous");
  return std::shared_ptr<const ClientIdRules>(new ClientIdRules(std::move(spec)));
}

bool ClientIdRules::allowed(std::string_view identity, std::string_view client_id) const {
  const std::vector<std::string>* list = nullptr;
  if (identity.empty()) {
    if (!spec_.anonymous) return true;
    list = &*spec_.anonymous;
  } else if (auto it = spec_.users.find(std::string(identity)); it != spec_.users.end()) {
    list = &it->second;
  } else {
    if (!spec_.others) return true;
    list = &*spec_.others;
  }
  for (const auto& p : *list)
    if (glob_match(p, client_id, identity)) return true;
  return false;
}

}  // namespace moat::security
