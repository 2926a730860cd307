// Authentication: a chain of authenticators per listener; the first decisive
// answer wins and the end of the chain denies.
//
// An authenticator answers in one of three ways (mode()):
//   Immediate    authenticate() answers at once, on the event loop;
//   Blocking     authenticate() may take tens of milliseconds (a password hash):
//                the broker runs it on a worker thread;
//   Asynchronous authenticate_async() starts the work and returns; the answer
//                arrives later through a callback from any thread (an IAM server
//                over HTTP). The broker holds the connection's input meanwhile.
// The broker walks the chain one authenticator at a time, so an immediate
// method placed first (certificate) never waits for a slow one placed later.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moat::security {

class OrderedRules;

struct ConnectInfo {
  std::string_view listener;
  std::string_view peer;  // "address:port"
  std::string_view client_id;
  std::optional<std::string_view> username;
  std::optional<std::string_view> password;
  std::string_view certificate_identity;  // from the TLS client certificate (identity_from), or empty
  std::string_view psk_identity;          // the TLS-PSK identity, or empty
  // The client certificate's subject (RFC 2253) and the SHA-256 of its DER
  // (lowercase hex); empty without a client certificate.
  std::string_view certificate_subject;
  std::string_view certificate_fingerprint;
};

enum class AuthDecision {
  Continue,  // no opinion: ask the next authenticator
  Allow,
  BadCredentials,  // CONNACK 0x04
  NotAuthorized,   // CONNACK 0x05
  // The method could not decide (its server is unreachable, or it did not
  // answer in time): CONNACK 0x03, server unavailable. Not counted as a failed
  // authentication by the brute-force defence: an outage must not ban clients.
  Unavailable,
};

struct AuthResult {
  AuthDecision decision = AuthDecision::Continue;
  std::string identity;     // the authenticated user name, empty for anonymous
  std::string_view method;  // the authenticator's name() (static storage)
  // Why a client was refused, for the log and the audit stream ("wrong
  // password", "token expired"). Never contains a secret.
  std::string reason;
  // Rules this connection carries (a JWT's ACL claim): checked before the
  // broker's ACL; with `acl_only` they replace it. Null: none.
  std::shared_ptr<const OrderedRules> acl;
  bool acl_only = false;
  // Allowed every publish, subscribe and delivery (an IAM server's answer).
  bool superuser = false;
};

class Authenticator {
 public:
  enum class Mode { Immediate, Blocking, Asynchronous };
  using Done = std::function<void(AuthResult)>;

  virtual ~Authenticator() = default;
  virtual std::string_view name() const = 0;
  virtual Mode mode() const { return Mode::Immediate; }
  // Immediate and Blocking methods.
  virtual AuthResult authenticate(const ConnectInfo& info) = 0;
  // Asynchronous methods: start and return; call `done` exactly once, from any
  // thread. `info` and the strings it points into stay valid until then.
  virtual void authenticate_async(const ConnectInfo& info, Done done) { done(authenticate(info)); }

  bool blocking() const { return mode() == Mode::Blocking; }
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

// "certificate+password" / "psk+password": the TLS identity must equal the
// CONNECT user name and the password must verify for it (two factors: the
// key of the certificate or PSK, and the password). A client without that TLS
// identity: Continue. User name missing or different from the identity:
// NotAuthorized. Otherwise the password authenticator decides (BadCredentials
// for a wrong password). Blocking, like the password check it wraps.
class TlsIdentityPasswordAuthenticator final : public Authenticator {
 public:
  enum class Kind { Certificate, Psk };
  TlsIdentityPasswordAuthenticator(Kind kind, std::shared_ptr<Authenticator> password)
      : kind_(kind), password_(std::move(password)) {}
  std::string_view name() const override {
    return kind_ == Kind::Certificate ? "certificate+password" : "psk+password";
  }
  Mode mode() const override { return Mode::Blocking; }
  AuthResult authenticate(const ConnectInfo& info) override;

 private:
  Kind kind_;
  std::shared_ptr<Authenticator> password_;
};

class AuthChain {
 public:
  // Authenticators may be shared by several listeners (one password table).
  void add(std::shared_ptr<Authenticator> a) { chain_.push_back(std::move(a)); }
  bool empty() const { return chain_.empty(); }
  std::size_t size() const { return chain_.size(); }
  Authenticator& at(std::size_t i) const { return *chain_[i]; }
  // The whole chain, synchronously, on this thread (tests and tools). The
  // broker walks it step by step instead (see broker/client.cpp).
  AuthResult authenticate(const ConnectInfo& info) const;
  // What the end of the chain answers.
  static AuthResult end_of_chain();

 private:
  std::vector<std::shared_ptr<Authenticator>> chain_;
};

// The methods a listener may name in `auth = [...]` in this build.
bool is_supported_auth_method(std::string_view name);
// For the methods that need no configuration (anonymous, certificate, psk).
std::shared_ptr<Authenticator> make_authenticator(std::string_view name);

}  // namespace moat::security
