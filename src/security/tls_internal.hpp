// Shared between tls_context.cpp and tls_engine.cpp; not part of the public API.
#pragma once

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <chrono>
#include <cstdint>
#include <ctime>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "security/tls.hpp"

namespace moat::security::tls_detail {

// What the SSL_CTX callbacks learn about one connection; owned by the engine
// (its Impl, at a stable address) and reached through the engine's BIO, whose
// data is the engine: an SSL ex_data slot would cost every connection a stack
// of OpenSSL's (about 100 B).
struct ConnectionHooks {
  // Strings that only a PSK, a client certificate, a failure or a write before
  // the handshake ended fill: allocated when first set, so an established
  // connection with a server certificate alone holds none of them.
  struct Rare {
    std::string psk_identity;
    std::string verify_subject;             // the first certificate that failed verification (RFC 2253)
    std::string identity;                   // TlsEngine::peer_identity()
    std::string error;                      // TlsEngine::error()
    std::vector<std::uint8_t> pending_app;  // written before the handshake completed
  };
  std::unique_ptr<Rare> rare;
  std::chrono::steady_clock::time_point now{};
  int verify_depth = -1;      // of the certificate in verify_subject
  bool psk_used = false;      // a PSK callback found the identity
  bool psk_external = false;  // the TLS 1.3 session came from the PSK file, not a ticket
  bool psk_unknown = false;   // a PSK identity was offered and not found

  Rare& set() {
    if (!rare) rare = std::make_unique<Rare>();
    return *rare;
  }
  const std::string& psk_identity() const { return rare ? rare->psk_identity : no_words(); }
  const std::string& verify_subject() const { return rare ? rare->verify_subject : no_words(); }
  static const std::string& no_words() {
    static const std::string empty;
    return empty;
  }
};

// The hooks of an SSL driven by a TlsEngine; nullptr for any other SSL.
ConnectionHooks* hooks_of(SSL* ssl);
std::string lower(std::string_view s);  // ASCII
// A certificate's serial number in upper-case hex ("" when it has none).
std::string serial_hex(const X509* cert);

struct TicketKey {
  unsigned char name[16];
  unsigned char aes[32];
  unsigned char hmac[32];
};

class TicketKeyRing {
 public:
  explicit TicketKeyRing(std::chrono::seconds interval);
  ~TicketKeyRing();
  void rotate();
  void maybe_rotate(std::chrono::steady_clock::time_point now);
  // Copies the current key; false if none.
  void current(TicketKey& out);
  // Finds a key by name: 1 = current, 2 = older (renew the ticket), 0 = unknown.
  int find(const unsigned char name[16], TicketKey& out);

 private:
  std::mutex mu_;
  std::chrono::seconds interval_;
  std::chrono::steady_clock::time_point next_{};
  std::vector<TicketKey> keys_;  // [0] current, [1] previous
};

struct SniEntry {
  std::string hostname;  // lower case; "*.example.com" allowed
  X509* cert = nullptr;
  EVP_PKEY* key = nullptr;
  STACK_OF(X509) * chain = nullptr;
};

}  // namespace moat::security::tls_detail

namespace moat::security {

struct TlsServerContext::Impl {
  TlsServerConfig config;
  SSL_CTX* ctx = nullptr;
  std::vector<std::string> warnings;
  std::vector<X509_CRL*> crls;
  std::map<std::string, std::vector<unsigned char>, std::less<>> psk;
  std::vector<tls_detail::SniEntry> sni;
  std::shared_ptr<tls_detail::TicketKeyRing> tickets;
  // SHA-256 of the CA material (ca, ca_dir) and of the CRL files as read: a
  // reload re-verifies live chains only when these change.
  std::string ca_digest;
  std::string crl_digest;
  // The session id context (SHA-256 of the client-authentication settings and
  // of the trust material): sessions and tickets resume only under an equal one.
  std::string session_context;
  // The stapled OCSP response (DER) for `ocsp_leaf`; not stapled after
  // `ocsp_next_update` (0: the response names no next update).
  std::vector<unsigned char> ocsp_der;
  X509* ocsp_leaf = nullptr;
  std::time_t ocsp_next_update = 0;
  ~Impl();
};

}  // namespace moat::security
