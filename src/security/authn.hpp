// Authentication: a chain of authenticators per listener; the first decisive
// answer wins and the end of the chain denies.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moat::security {

struct ConnectInfo {
  std::string_view listener;
  std::string_view peer;  // "address:port"
  std::string_view client_id;
  std::optional<std::string_view> username;
  std::optional<std::string_view> password;
};

enum class AuthDecision {
  Continue,  // no opinion: ask the next authenticator
  Allow,
  BadCredentials,  // CONNACK 0x04
  NotAuthorized,   // CONNACK 0x05
};

struct AuthResult {
  AuthDecision decision = AuthDecision::Continue;
  std::string identity;  // the authenticated user name, empty for anonymous
  std::string_view method;
};

class Authenticator {
 public:
  virtual ~Authenticator() = default;
  virtual std::string_view name() const = 0;
  virtual AuthResult authenticate(const ConnectInfo& info) = 0;
};

// "anonymous": admits every client; its user name, if any, is taken as given.
class AnonymousAuthenticator final : public Authenticator {
 public:
  std::string_view name() const override { return "anonymous"; }
  AuthResult authenticate(const ConnectInfo& info) override;
};

class AuthChain {
 public:
  void add(std::unique_ptr<Authenticator> a) { chain_.push_back(std::move(a)); }
  AuthResult authenticate(const ConnectInfo& info) const;
  bool empty() const { return chain_.empty(); }

 private:
  std::vector<std::unique_ptr<Authenticator>> chain_;
};

// The methods a listener may name in `auth = [...]` in this build.
bool is_supported_auth_method(std::string_view name);
std::unique_ptr<Authenticator> make_authenticator(std::string_view name);

}  // namespace moat::security
