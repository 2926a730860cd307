#include "security/authn.hpp"

#include <future>

namespace moat::security {

AuthResult AnonymousAuthenticator::authenticate(const ConnectInfo& info) {
  return AuthResult{
      AuthDecision::Allow, std::string(info.username.value_or("")), name(), {}, {}, false, false};
}

AuthResult AuthChain::end_of_chain() {
  return AuthResult{AuthDecision::NotAuthorized,
                    {},
                    "none",
                    "no authentication method admitted the client",
                    {},
                    false,
                    false};
}

AuthResult AuthChain::authenticate(const ConnectInfo& info) const {
  for (const auto& a : chain_) {
    AuthResult r;
    if (a->mode() == Authenticator::Mode::Asynchronous) {
      std::promise<AuthResult> p;
      auto f = p.get_future();
      a->authenticate_async(info, [&p](AuthResult res) { p.set_value(std::move(res)); });
      r = f.get();
    } else {
      r = a->authenticate(info);
    }
    if (r.decision != AuthDecision::Continue) return r;
  }
  return end_of_chain();
}

AuthResult CertificateAuthenticator::authenticate(const ConnectInfo& info) {
  if (info.certificate_identity.empty())
    return AuthResult{AuthDecision::Continue, {}, name(), {}, {}, false, false};
  return AuthResult{
      AuthDecision::Allow, std::string(info.certificate_identity), name(), {}, {}, false, false};
}

AuthResult PskAuthenticator::authenticate(const ConnectInfo& info) {
  if (info.psk_identity.empty()) return AuthResult{AuthDecision::Continue, {}, name(), {}, {}, false, false};
  return AuthResult{AuthDecision::Allow, std::string(info.psk_identity), name(), {}, {}, false, false};
}

AuthResult TlsIdentityPasswordAuthenticator::authenticate(const ConnectInfo& info) {
  const std::string_view id = kind_ == Kind::Certificate ? info.certificate_identity : info.psk_identity;
  AuthResult r;
  r.method = name();
  if (id.empty()) return r;  // Continue: not this kind of client
  if (!info.username) {
    r.decision = AuthDecision::NotAuthorized;
    r.reason = kind_ == Kind::Certificate ? "no user name (certificate+password needs one)"
                                          : "no user name (psk+password needs one)";
    return r;
  }
  if (*info.username != id) {
    r.decision = AuthDecision::NotAuthorized;
    r.reason = kind_ == Kind::Certificate ? "user name differs from the certificate identity"
                                          : "user name differs from the PSK identity";
    return r;
  }
  if (!password_) {
    r.decision = AuthDecision::NotAuthorized;
    r.reason = "no password file";
    return r;
  }
  AuthResult p = password_->authenticate(info);
  p.method = name();
  if (p.decision == AuthDecision::Continue) {  // cannot happen with a user name; stay closed
    p.decision = AuthDecision::BadCredentials;
    p.reason = "password not verified";
  }
  return p;
}

bool is_supported_auth_method(std::string_view name) {
  return name == "anonymous" || name == "password" || name == "certificate" || name == "psk" ||
         name == "jwt" || name == "http" || name == "certificate+password" || name == "psk+password";
}

std::shared_ptr<Authenticator> make_authenticator(std::string_view name) {
  if (name == "anonymous") return std::make_shared<AnonymousAuthenticator>();
  if (name == "certificate") return std::make_shared<CertificateAuthenticator>();
  if (name == "psk") return std::make_shared<PskAuthenticator>();
  return nullptr;
}

}  // namespace moat::security
