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
  std::string_view certificate_identity;  // from the TLS client certificate (identity_from), or empty
  std::string_view psk_identity;          // the TLS-PSK identity, or empty
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
  // True when authenticate() may take long (a password hash): the broker then
  // runs the chain off its event loop.
  virtual bool blocking() const { return false; }
};

// "anonymous": admits every client; its user name, if any, is taken as given.
class AnonymousAuthenticator final : public Authenticator {
 public:
  std::string_view name() const override { return "anonymous"; }
  AuthResult authenticate(const ConnectInfo& info) override;
};

// "certificate": admits a TLS client whose certificate gave an identity, which
// becomes its user name.
class CertificateAuthenticator final : public Authenticator {
 public:
  std::string_view name() const override { return "certificate"; }
  AuthResult authenticate(const ConnectInfo& info) override;
};

// "psk": admits a TLS-PSK client; the PSK identity becomes its user name.
class PskAuthenticator final : public Authenticator {
 public:
  std::string_view name() const override { return "psk"; }
  AuthResult authenticate(const ConnectInfo& info) override;
};

class AuthChain {
 public:
  // Authenticators may be shared by several listeners (one password table).
  void add(std::shared_ptr<Authenticator> a) { chain_.push_back(std::move(a)); }
  AuthResult authenticate(const ConnectInfo& info) const;
  bool empty() const { return chain_.empty(); }
  bool blocking() const;

 private:
  std::vector<std::shared_ptr<Authenticator>> chain_;
};

// The methods a listener may name in `auth = [...]` in this build.
bool is_supported_auth_method(std::string_view name);
// For the methods that need no configuration (anonymous, certificate, psk).
std::shared_ptr<Authenticator> make_authenticator(std::string_view name);

}  // namespace moat::security
