// Client-identifier binding: which client identifiers an authenticated user
// may connect with, so that a leaked password (or token, or certificate) is
// useless from another device's identifier. docs/security.md, "Client
// identifier binding", describes the rules and the moat.toml shape.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moat::security {

// Glob match of `text` against `pattern`: '*' matches any run of characters
// (none included), '?' exactly one character (one UTF-8 code point), "%u" the
// user name `user` literally (its own '*' or '?' are not wildcards; with an
// empty user name a pattern containing %u matches nothing). Every other byte
// matches itself. Never allocates.
bool glob_match(std::string_view pattern, std::string_view text, std::string_view user = {});
// True when the pattern has '*', '?' or "%u" (is not a plain literal).
bool is_glob(std::string_view pattern);

class ClientIdRules {
 public:
  struct Spec {
    // Per user name (the authenticated identity): the patterns it may use.
    std::unordered_map<std::string, std::vector<std::string>> users;
    // Users without an entry in `users`: these patterns; nullopt = any client id.
    std::optional<std::vector<std::string>> others;
    // Clients without an identity (anonymous): these patterns; nullopt = any.
    std::optional<std::vector<std::string>> anonymous;
  };

  // Throws std::invalid_argument naming the bad pattern (empty, or invalid UTF-8).
  static std::shared_ptr<const ClientIdRules> make(Spec spec);

  // May `identity` (empty: anonymous) connect with `client_id`?
  bool allowed(std::string_view identity, std::string_view client_id) const;
  const Spec& spec() const { return spec_; }

 private:
  explicit ClientIdRules(Spec s) : spec_(std::move(s)) {}
  Spec spec_;
};

}  // namespace moat::security
