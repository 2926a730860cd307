#include "security/authn.hpp"

namespace moat::security {

AuthResult AnonymousAuthenticator::authenticate(const ConnectInfo& info) {
  return AuthResult{AuthDecision::Allow, std::string(info.username.value_or("")), name()};
}

AuthResult AuthChain::authenticate(const ConnectInfo& info) const {
  for (const auto& a : chain_) {
    auto r = a->authenticate(info);
    if (r.decision != AuthDecision::Continue) return r;
  }
  return AuthResult{AuthDecision::NotAuthorized, {}, "end of chain"};
}

AuthResult CertificateAuthenticator::authenticate(const ConnectInfo& info) {
  if (info.certificate_identity.empty()) return {};
  return AuthResult{AuthDecision::Allow, std::string(info.certificate_identity), name()};
}

AuthResult PskAuthenticator::authenticate(const ConnectInfo& info) {
  if (info.psk_identity.empty()) return {};
  return AuthResult{AuthDecision::Allow, std::string(info.psk_identity), name()};
}

bool AuthChain::blocking() const {
  for (const auto& a : chain_)
    if (a->blocking()) return true;
  return false;
}

bool is_supported_auth_method(std::string_view name) {
  return name == "anonymous" || name == "password" || name == "certificate" || name == "psk";
}

std::shared_ptr<Authenticator> make_authenticator(std::string_view name) {
  if (name == "anonymous") return std::make_shared<AnonymousAuthenticator>();
  if (name == "certificate") return std::make_shared<CertificateAuthenticator>();
  if (name == "psk") return std::make_shared<PskAuthenticator>();
  return nullptr;
}

}  // namespace moat::security
