#include "security/pki.hpp"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>

namespace moat::security::pki {

namespace {

template <typename T, void (*F)(T*)>
struct Deleter {
  void operator()(T* p) const { F(p); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using CertPtr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using CrlPtr = std::unique_ptr<X509_CRL, Deleter<X509_CRL, X509_CRL_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION, X509_EXTENSION_free>>;
using NamePtr = std::unique_ptr<X509_NAME, Deleter<X509_NAME, X509_NAME_free>>;
using IntPtr = std::unique_ptr<ASN1_INTEGER, Deleter<ASN1_INTEGER, ASN1_INTEGER_free>>;
using BnPtr = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>>;
using TimePtr = std::unique_ptr<ASN1_TIME, Deleter<ASN1_TIME, ASN1_TIME_free>>;

[[noreturn]] void fail(const std::string& what) {
  std::string why;
  while (unsigned long e = ERR_get_error()) {
    const char* r = ERR_reason_error_string(e);
    why += why.empty() ? "" : "; ";
    why += r ? r : "error " + std::to_string(e);
  }
  throw PkiError("pki: " + what + (why.empty() ? "" : ": " + why));
}

void check(bool ok, const char* what) {
  if (!ok) fail(what);
}

KeyPtr new_key() {
  KeyPtr k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  check(k != nullptr, "cannot generate a P-256 key");
  return k;
}

std::string bio_text(BIO* b) {
  char* data = nullptr;
  const long len = BIO_get_mem_data(b, &data);
  return std::string(data, static_cast<std::size_t>(len));
}

std::string key_pem(EVP_PKEY* k) {
  BioPtr b(BIO_new(BIO_s_mem()));
  check(b && PEM_write_bio_PrivateKey(b.get(), k, nullptr, nullptr, 0, nullptr, nullptr) == 1,
        "cannot write key");
  return bio_text(b.get());
}

std::string cert_pem(X509* c) {
  BioPtr b(BIO_new(BIO_s_mem()));
  check(b && PEM_write_bio_X509(b.get(), c) == 1, "cannot write certificate");
  return bio_text(b.get());
}

KeyPtr read_key(const std::string& pem) {
  BioPtr b(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  KeyPtr k(b ? PEM_read_bio_PrivateKey(b.get(), nullptr, nullptr, nullptr) : nullptr);
  check(k != nullptr, "cannot read the CA key");
  return k;
}

CertPtr read_cert(const std::string& pem) {
  BioPtr b(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  CertPtr c(b ? PEM_read_bio_X509(b.get(), nullptr, nullptr, nullptr) : nullptr);
  check(c != nullptr, "cannot read a certificate");
  return c;
}

TimePtr asn1_time(std::chrono::system_clock::time_point t) {
  TimePtr a(ASN1_TIME_set(nullptr, std::chrono::system_clock::to_time_t(t)));
  check(a != nullptr, "time out of range");
  return a;
}

// A positive random 128-bit serial (RFC 5280 4.1.2.2: at most 20 octets).
void set_random_serial(X509* c) {
  unsigned char bytes[16];
  check(RAND_bytes(bytes, sizeof bytes) == 1, "no random bytes");
  bytes[0] &= 0x7f;
  bytes[0] |= 0x01;  // never zero, never negative
  BnPtr bn(BN_bin2bn(bytes, sizeof bytes, nullptr));
  check(bn != nullptr, "serial");
  IntPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  check(serial && X509_set_serialNumber(c, serial.get()) == 1, "serial");
}

NamePtr make_name(const CertSpec& spec) {
  NamePtr n(X509_NAME_new());
  check(n != nullptr, "name");
  if (!spec.organization.empty())
    check(X509_NAME_add_entry_by_txt(n.get(), "O", MBSTRING_UTF8,
                                     reinterpret_cast<const unsigned char*>(spec.organization.c_str()), -1,
                                     -1, 0) == 1,
          "organization name");
  check(X509_NAME_add_entry_by_txt(n.get(), "CN", MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1, -1,
                                   0) == 1,
        "common name");
  return n;
}

void add_ext(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  ExtPtr e(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  check(e != nullptr, ("extension " + std::string(OBJ_nid2sn(nid)) + " = " + value).c_str());
  check(X509_add_ext(cert, e.get(), -1) == 1, "add extension");
}

std::string san_value(const std::vector<std::string>& hosts) {
  std::string v;
  for (const auto& h : hosts) {
    unsigned char buf[16];
    const bool ip = ::inet_pton(AF_INET, h.c_str(), buf) == 1 || ::inet_pton(AF_INET6, h.c_str(), buf) == 1;
    if (h.empty() || h.find_first_of(",\n\r") != std::string::npos)
      throw PkiError("pki: bad host name '" + h + "'");
    v += (v.empty() ? "" : ",") + std::string(ip ? "IP:" : "DNS:") + h;
  }
  return v;
}

// Builds and signs a certificate for `spec` with `subject_key`; `issuer` null = self-signed.
CertPtr build(const CertSpec& spec, EVP_PKEY* subject_key, X509* issuer, EVP_PKEY* issuer_key) {
  if (spec.common_name.empty()) throw PkiError("pki: a certificate needs a common name");
  CertPtr c(X509_new());
  check(c != nullptr, "certificate");
  check(X509_set_version(c.get(), X509_VERSION_3) == 1, "version");
  set_random_serial(c.get());
  NamePtr subject = make_name(spec);
  check(X509_set_subject_name(c.get(), subject.get()) == 1, "subject");
  check(X509_set_issuer_name(c.get(), issuer ? X509_get_subject_name(issuer) : subject.get()) == 1, "issuer");
  auto nb = asn1_time(spec.not_before);
  auto na = asn1_time(spec.not_before + spec.validity);
  check(X509_set1_notBefore(c.get(), nb.get()) == 1 && X509_set1_notAfter(c.get(), na.get()) == 1,
        "validity");
  check(X509_set_pubkey(c.get(), subject_key) == 1, "public key");

  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer ? issuer : c.get(), c.get(), nullptr, nullptr, 0);
  switch (spec.kind) {
    case CertKind::Ca:
      add_ext(c.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE");
      add_ext(c.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
      break;
    case CertKind::Server:
      add_ext(c.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
      add_ext(c.get(), &ctx, NID_key_usage, "critical,digitalSignature");
      add_ext(c.get(), &ctx, NID_ext_key_usage, "serverAuth");
      break;
    case CertKind::Client:
      add_ext(c.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
      add_ext(c.get(), &ctx, NID_key_usage, "critical,digitalSignature");
      add_ext(c.get(), &ctx, NID_ext_key_usage, "clientAuth");
      break;
  }
  add_ext(c.get(), &ctx, NID_subject_key_identifier, "hash");
  if (issuer) add_ext(c.get(), &ctx, NID_authority_key_identifier, "keyid:always");
  if (!spec.hosts.empty()) add_ext(c.get(), &ctx, NID_subject_alt_name, san_value(spec.hosts));
  if (!spec.crl_url.empty()) add_ext(c.get(), &ctx, NID_crl_distribution_points, "URI:" + spec.crl_url);
  check(X509_sign(c.get(), issuer_key, EVP_sha256()) > 0, "cannot sign the certificate");
  return c;
}

}  // namespace

KeyAndCert make_ca(const CertSpec& spec) {
  CertSpec s = spec;
  s.kind = CertKind::Ca;
  KeyPtr key = new_key();
  CertPtr c = build(s, key.get(), nullptr, key.get());
  return {key_pem(key.get()), cert_pem(c.get())};
}

KeyAndCert issue(const CertSpec& spec, const KeyAndCert& ca) {
  KeyPtr ca_key = read_key(ca.key_pem);
  CertPtr ca_cert = read_cert(ca.cert_pem);
  check(X509_check_private_key(ca_cert.get(), ca_key.get()) == 1,
        "the CA key does not match the CA certificate");
  KeyPtr key = new_key();
  CertPtr c = build(spec, key.get(), ca_cert.get(), ca_key.get());
  return {key_pem(key.get()), cert_pem(c.get())};
}

std::string make_crl(const CrlSpec& spec, const KeyAndCert& ca) {
  KeyPtr ca_key = read_key(ca.key_pem);
  CertPtr ca_cert = read_cert(ca.cert_pem);
  CrlPtr crl(X509_CRL_new());
  check(crl != nullptr, "CRL");
  check(X509_CRL_set_version(crl.get(), X509_CRL_VERSION_2) == 1, "CRL version");
  check(X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca_cert.get())) == 1, "CRL issuer");
  auto last = asn1_time(spec.this_update);
  auto next = asn1_time(spec.this_update + spec.validity);
  check(X509_CRL_set1_lastUpdate(crl.get(), last.get()) == 1 &&
            X509_CRL_set1_nextUpdate(crl.get(), next.get()) == 1,
        "CRL dates");
  for (const auto& pem : spec.revoked_cert_pems) {
    CertPtr rc = read_cert(pem);
    X509_REVOKED* r = X509_REVOKED_new();
    check(r != nullptr, "revoked entry");
    if (X509_REVOKED_set_serialNumber(r, X509_get_serialNumber(rc.get())) != 1 ||
        X509_REVOKED_set_revocationDate(r, last.get()) != 1 || X509_CRL_add0_revoked(crl.get(), r) != 1) {
      X509_REVOKED_free(r);
      fail("revoked entry");
    }
  }
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca_cert.get(), nullptr, nullptr, crl.get(), 0);
  ExtPtr akid(X509V3_EXT_conf_nid(nullptr, &ctx, NID_authority_key_identifier, "keyid:always"));
  check(akid && X509_CRL_add_ext(crl.get(), akid.get(), -1) == 1, "CRL authority key identifier");
  IntPtr number(ASN1_INTEGER_new());
  check(number && ASN1_INTEGER_set_uint64(number.get(), spec.number) == 1, "CRL number");
  check(X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, number.get(), 0, 0) == 1, "CRL number");
  check(X509_CRL_sort(crl.get()) == 1, "CRL sort");
  check(X509_CRL_sign(crl.get(), ca_key.get(), EVP_sha256()) > 0, "cannot sign the CRL");
  BioPtr b(BIO_new(BIO_s_mem()));
  check(b && PEM_write_bio_X509_CRL(b.get(), crl.get()) == 1, "cannot write the CRL");
  return bio_text(b.get());
}

std::string encrypt_key(const std::string& pem, const std::string& password) {
  KeyPtr k = read_key(pem);
  BioPtr b(BIO_new(BIO_s_mem()));
  check(b && PEM_write_bio_PKCS8PrivateKey(b.get(), k.get(), EVP_aes_256_cbc(), password.data(),
                                           static_cast<int>(password.size()), nullptr, nullptr) == 1,
        "cannot encrypt the key");
  return bio_text(b.get());
}

}  // namespace moat::security::pki
