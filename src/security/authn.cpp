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

bool is_supported_auth_method(std::string_view name) {
  return name == "anonymous";
}

std::unique_ptr<Authenticator> make_authenticator(std::string_view name) {
  if (name == "anonymous") return std::make_unique<AnonymousAuthenticator>();
  return nullptr;
}

}  // namespace moat::security
