// A small certificate authority on OpenSSL's C API: ECDSA P-256 keys, a CA
// certificate, server and client certificates signed by it, and CRLs. Used by
// `moat init` (a complete TLS setup in one command) and by tests that need
// certificates without the openssl command line. Everything is PEM text.
#pragma once

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace moat::security::pki {

class PkiError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class CertKind {
  Ca,      // basicConstraints CA:TRUE (critical), keyCertSign + cRLSign
  Server,  // CA:FALSE, digitalSignature, extendedKeyUsage serverAuth
  Client,  // CA:FALSE, digitalSignature, extendedKeyUsage clientAuth
};

struct CertSpec {
  CertKind kind = CertKind::Client;
  std::string common_name;
  std::string organization;        // "" = none
  std::vector<std::string> hosts;  // subjectAltName: IP addresses as IP, anything else as DNS
  std::chrono::system_clock::time_point not_before =
      std::chrono::system_clock::now() - std::chrono::minutes(5);
  std::chrono::seconds validity = std::chrono::hours(24 * 397);
  std::string crl_url;  // CRL distribution point (URI), "" = none
};

struct KeyAndCert {
  std::string key_pem;   // PKCS#8, unencrypted
  std::string cert_pem;  // the certificate alone
};

// A new P-256 key and a self-signed CA certificate.
KeyAndCert make_ca(const CertSpec& spec);
// A new P-256 key and a certificate for `spec` signed by `ca` (SHA-256, random
// 128-bit serial, subject and authority key identifiers).
KeyAndCert issue(const CertSpec& spec, const KeyAndCert& ca);

struct CrlSpec {
  std::chrono::system_clock::time_point this_update =
      std::chrono::system_clock::now() - std::chrono::minutes(5);
  std::chrono::seconds validity = std::chrono::hours(24 * 397);  // nextUpdate - thisUpdate
  std::uint64_t number = 1;                                      // cRLNumber
  std::vector<std::string> revoked_cert_pems;                    // certificates to list as revoked
};
// A CRL signed by `ca` (version 2, authority key identifier, cRLNumber).
std::string make_crl(const CrlSpec& spec, const KeyAndCert& ca);

// The PEM private key encrypted with `password` (PKCS#8, PBES2: PBKDF2 and
// AES-256-CBC), for encrypted-key setups and their tests.
std::string encrypt_key(const std::string& key_pem, const std::string& password);

}  // namespace moat::security::pki
