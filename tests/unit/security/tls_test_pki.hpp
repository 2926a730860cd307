// Test-time PKI for the TLS tests: keys, certificates and CRLs made with the
// OpenSSL API into a temporary folder. No key material is committed.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace moat::security::testpki {

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct CrlFree {
  void operator()(X509_CRL* c) const { X509_CRL_free(c); }
};
using Key = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Crl = std::unique_ptr<X509_CRL, CrlFree>;

inline void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("test PKI: ") + what);
}

inline Key ec_key() {
  return Key(EVP_EC_gen("P-256"));
}
inline Key rsa_key() {
  return Key(EVP_RSA_gen(2048));
}

struct CertSpec {
  std::string cn;
  long serial = 1;
  long not_before = -3600;            // seconds from now
  long not_after = 365L * 24 * 3600;  // seconds from now
  bool ca = false;
  std::string san;  // "DNS:localhost,IP:127.0.0.1"
  std::string eku;  // "serverAuth" / "clientAuth"
};

inline void add_ext(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  check(ext != nullptr, "extension");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// issuer == nullptr: self-signed with `key`.
inline Cert make_cert(const CertSpec& s, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key) {
  Cert c(X509_new());
  X509_set_version(c.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(c.get()), s.serial);
  X509_gmtime_adj(X509_getm_notBefore(c.get()), s.not_before);
  X509_gmtime_adj(X509_getm_notAfter(c.get()), s.not_after);
  X509_set_pubkey(c.get(), key);
  X509_NAME* name = X509_get_subject_name(c.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("Moat Test"), -1,
                             -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(s.cn.c_str()),
                             -1, -1, 0);
  X509* iss = issuer ? issuer : c.get();
  X509_set_issuer_name(c.get(), X509_get_subject_name(iss));
  add_ext(c.get(), iss, NID_basic_constraints, s.ca ? "critical,CA:TRUE" : "CA:FALSE");
  add_ext(c.get(), iss, NID_key_usage,
          s.ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature,keyEncipherment");
  add_ext(c.get(), iss, NID_subject_key_identifier, "hash");
  if (issuer) add_ext(c.get(), iss, NID_authority_key_identifier, "keyid:always");
  if (!s.san.empty()) add_ext(c.get(), iss, NID_subject_alt_name, s.san);
  if (!s.eku.empty()) add_ext(c.get(), iss, NID_ext_key_usage, s.eku);
  check(X509_sign(c.get(), issuer_key ? issuer_key : key, EVP_sha256()) > 0, "sign certificate");
  return c;
}

// A CRL in the name of `issuer`, signed with `sign_key` (normally the issuer's).
inline Crl make_crl(X509* issuer, EVP_PKEY* sign_key, const std::vector<long>& revoked_serials,
                    long last_update, long next_update) {
  Crl crl(X509_CRL_new());
  X509_CRL_set_version(crl.get(), 1);
  X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(issuer));
  ASN1_TIME* t = ASN1_TIME_adj(nullptr, time(nullptr), 0, last_update);
  X509_CRL_set1_lastUpdate(crl.get(), t);
  ASN1_TIME_adj(t, time(nullptr), 0, next_update);
  X509_CRL_set1_nextUpdate(crl.get(), t);
  for (long serial : revoked_serials) {
    X509_REVOKED* r = X509_REVOKED_new();
    ASN1_INTEGER* i = ASN1_INTEGER_new();
    ASN1_INTEGER_set(i, serial);
    X509_REVOKED_set_serialNumber(r, i);
    ASN1_INTEGER_free(i);
    ASN1_TIME_adj(t, time(nullptr), 0, last_update);
    X509_REVOKED_set_revocationDate(r, t);
    X509_CRL_add0_revoked(crl.get(), r);
  }
  ASN1_TIME_free(t);
  X509_CRL_sort(crl.get());
  check(X509_CRL_sign(crl.get(), sign_key, EVP_sha256()) > 0, "sign CRL");
  return crl;
}

inline FILE* open_w(const std::filesystem::path& p) {
  FILE* f = std::fopen(p.c_str(), "wb");
  check(f != nullptr, "open for writing");
  return f;
}

inline void write_certs(const std::filesystem::path& p, std::initializer_list<X509*> certs) {
  FILE* f = open_w(p);
  for (X509* c : certs) PEM_write_X509(f, c);
  std::fclose(f);
}

inline void write_key(const std::filesystem::path& p, EVP_PKEY* k, const std::string& password = {}) {
  FILE* f = open_w(p);
  if (password.empty())
    PEM_write_PrivateKey(f, k, nullptr, nullptr, 0, nullptr, nullptr);
  else
    PEM_write_PrivateKey(f, k, EVP_aes_256_cbc(), reinterpret_cast<const unsigned char*>(password.data()),
                         static_cast<int>(password.size()), nullptr, nullptr);
  std::fclose(f);
  std::filesystem::permissions(p, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

inline void write_crl_pem(const std::filesystem::path& p, X509_CRL* crl) {
  FILE* f = open_w(p);
  PEM_write_X509_CRL(f, crl);
  std::fclose(f);
}

inline void write_crl_der(const std::filesystem::path& p, X509_CRL* crl) {
  FILE* f = open_w(p);
  i2d_X509_CRL_fp(f, crl);
  std::fclose(f);
}

inline std::filesystem::path make_temp_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "moat-tls-XXXXXX").string();
  check(mkdtemp(tmpl.data()) != nullptr, "mkdtemp");
  return tmpl;
}

}  // namespace moat::security::testpki
