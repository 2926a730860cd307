// security::pki (moat init's certificate authority): the certificates and CRLs
// it makes verify with OpenSSL, carry the extensions their role needs, and load
// into a TLS listener context with client certificates and a CRL.
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>

#include "security/pki.hpp"
#include "security/tls.hpp"

namespace moat::security::pki {
namespace {

using namespace std::chrono_literals;

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct CrlFree {
  void operator()(X509_CRL* x) const { X509_CRL_free(x); }
};
using Cert = std::unique_ptr<X509, X509Free>;
using Crl = std::unique_ptr<X509_CRL, CrlFree>;

Cert parse(const std::string& pem) {
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  Cert c(PEM_read_bio_X509(b, nullptr, nullptr, nullptr));
  BIO_free(b);
  EXPECT_NE(c, nullptr);
  return c;
}

Crl parse_crl(const std::string& pem) {
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  Crl c(PEM_read_bio_X509_CRL(b, nullptr, nullptr, nullptr));
  BIO_free(b);
  EXPECT_NE(c, nullptr);
  return c;
}

// X509_verify_cert of `leaf` against `ca` (and `crl` with CRL checking); the X509_V_ code.
int verify(X509* leaf, X509* ca, X509_CRL* crl, int purpose) {
  X509_STORE* store = X509_STORE_new();
  X509_STORE_add_cert(store, ca);
  if (crl) {
    X509_STORE_add_crl(store, crl);
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  }
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, leaf, nullptr);
  X509_STORE_CTX_set_purpose(ctx, purpose);
  const int ok = X509_verify_cert(ctx);
  const int err = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  return err;
}

CertSpec spec(CertKind kind, const std::string& cn, std::vector<std::string> hosts = {}) {
  CertSpec s;
  s.kind = kind;
  s.common_name = cn;
  s.hosts = std::move(hosts);
  return s;
}

TEST(Pki, ServerCertificateVerifiesForItsNamesOnly) {
  const auto ca = make_ca(spec(CertKind::Ca, "Test CA"));
  auto s = spec(CertKind::Server, "broker.example", {"broker.example", "127.0.0.1", "::1"});
  s.crl_url = "http://broker.example/ca.crl";
  const auto server = issue(s, ca);
  auto leaf = parse(server.cert_pem);
  auto root = parse(ca.cert_pem);
  EXPECT_EQ(verify(leaf.get(), root.get(), nullptr, X509_PURPOSE_SSL_SERVER), X509_V_OK);
  // A server certificate is not a client certificate.
  EXPECT_EQ(verify(leaf.get(), root.get(), nullptr, X509_PURPOSE_SSL_CLIENT), X509_V_ERR_INVALID_PURPOSE);
  EXPECT_EQ(X509_check_host(leaf.get(), "broker.example", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_host(leaf.get(), "other.example", 0, 0, nullptr), 0);
  EXPECT_EQ(X509_check_ip_asc(leaf.get(), "127.0.0.1", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(leaf.get(), "::1", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(leaf.get(), "127.0.0.2", 0), 0);
  // The distribution point is there for scanners.
  auto* dps = static_cast<CRL_DIST_POINTS*>(
      X509_get_ext_d2i(leaf.get(), NID_crl_distribution_points, nullptr, nullptr));
  ASSERT_NE(dps, nullptr);
  EXPECT_EQ(sk_DIST_POINT_num(dps), 1);
  CRL_DIST_POINTS_free(dps);
  // Not a CA.
  EXPECT_EQ(X509_check_ca(leaf.get()), 0);
  EXPECT_NE(X509_check_ca(root.get()), 0);
}

TEST(Pki, ValidityAndUniqueSerials) {
  const auto ca = make_ca(spec(CertKind::Ca, "Test CA"));
  auto s = spec(CertKind::Client, "device-1");
  s.validity = std::chrono::hours(24 * 60);
  auto a = parse(issue(s, ca).cert_pem);
  auto b = parse(issue(s, ca).cert_pem);
  int days = 0, secs = 0;
  ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(a.get()), X509_get0_notAfter(a.get())), 1);
  EXPECT_EQ(days, 60);
  EXPECT_EQ(secs, 0);
  EXPECT_NE(ASN1_INTEGER_cmp(X509_get0_serialNumber(a.get()), X509_get0_serialNumber(b.get())), 0);
  // An expired certificate does not verify.
  auto old = spec(CertKind::Client, "device-old");
  old.not_before = std::chrono::system_clock::now() - std::chrono::hours(24 * 10);
  old.validity = std::chrono::hours(24);
  auto root = parse(ca.cert_pem);
  EXPECT_EQ(verify(parse(issue(old, ca).cert_pem).get(), root.get(), nullptr, X509_PURPOSE_SSL_CLIENT),
            X509_V_ERR_CERT_HAS_EXPIRED);
}

TEST(Pki, ForeignCaDoesNotVerify) {
  const auto ca = make_ca(spec(CertKind::Ca, "Test CA"));
  const auto other = make_ca(spec(CertKind::Ca, "Other CA"));
  auto leaf = parse(issue(spec(CertKind::Client, "device-1"), other).cert_pem);
  auto root = parse(ca.cert_pem);
  EXPECT_EQ(verify(leaf.get(), root.get(), nullptr, X509_PURPOSE_SSL_CLIENT),
            X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
}

TEST(Pki, CrlIsSignedAndRevokes) {
  const auto ca = make_ca(spec(CertKind::Ca, "Test CA"));
  const auto good = issue(spec(CertKind::Client, "device-1"), ca);
  const auto stolen = issue(spec(CertKind::Client, "device-stolen"), ca);
  auto root = parse(ca.cert_pem);

  CrlSpec empty;
  auto crl0 = parse_crl(make_crl(empty, ca));
  EXPECT_EQ(X509_CRL_verify(crl0.get(), X509_get0_pubkey(root.get())), 1);
  EXPECT_LE(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl0.get())), 0);  // -1: no list at all
  EXPECT_EQ(verify(parse(good.cert_pem).get(), root.get(), crl0.get(), X509_PURPOSE_SSL_CLIENT), X509_V_OK);

  CrlSpec one;
  one.number = 2;
  one.revoked_cert_pems = {stolen.cert_pem};
  auto crl1 = parse_crl(make_crl(one, ca));
  EXPECT_EQ(verify(parse(good.cert_pem).get(), root.get(), crl1.get(), X509_PURPOSE_SSL_CLIENT), X509_V_OK);
  EXPECT_EQ(verify(parse(stolen.cert_pem).get(), root.get(), crl1.get(), X509_PURPOSE_SSL_CLIENT),
            X509_V_ERR_CERT_REVOKED);

  // A CRL signed by another CA is not accepted for this one.
  const auto other = make_ca(spec(CertKind::Ca, "Test CA"));
  auto forged = parse_crl(make_crl(empty, other));
  EXPECT_NE(X509_CRL_verify(forged.get(), X509_get0_pubkey(root.get())), 1);
}

TEST(Pki, EncryptedKeyNeedsItsPassword) {
  const auto ca = make_ca(spec(CertKind::Ca, "Test CA"));
  const std::string enc = encrypt_key(ca.key_pem, "s3cret");
  EXPECT_NE(enc.find("ENCRYPTED"), std::string::npos);
  auto read = [&](const char* pw) {
    BIO* b = BIO_new_mem_buf(enc.data(), static_cast<int>(enc.size()));
    EVP_PKEY* k = PEM_read_bio_PrivateKey(b, nullptr, nullptr, const_cast<char*>(pw));
    BIO_free(b);
    const bool ok = k != nullptr;
    EVP_PKEY_free(k);
    return ok;
  };
  EXPECT_TRUE(read("s3cret"));
  EXPECT_FALSE(read("wrong"));
}

TEST(Pki, BadInputIsRefused) {
  EXPECT_THROW(make_ca(spec(CertKind::Ca, "")), PkiError);
  const auto ca = make_ca(spec(CertKind::Ca, "Test CA"));
  EXPECT_THROW(issue(spec(CertKind::Server, "x", {"a,DNS:evil"}), ca), PkiError);
  KeyAndCert mismatched{make_ca(spec(CertKind::Ca, "Other")).key_pem, ca.cert_pem};
  EXPECT_THROW(issue(spec(CertKind::Client, "device-1"), mismatched), PkiError);
}

// What moat init writes loads as a TLS listener with mutual TLS and the CRL.
TEST(Pki, LoadsIntoAListenerContext) {
  const auto dir = std::filesystem::temp_directory_path() / ("moat-pki-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto write = [&](const char* name, const std::string& text) {
    std::ofstream(dir / name) << text;
    std::filesystem::permissions(dir / name,
                                 std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    return dir / name;
  };
  const auto ca = make_ca(spec(CertKind::Ca, "Test CA"));
  const auto server = issue(spec(CertKind::Server, "localhost", {"localhost", "127.0.0.1"}), ca);
  TlsServerConfig c;
  c.cert = write("server.crt", server.cert_pem);
  c.key = write("server.key", server.key_pem);
  c.ca = write("ca.crt", ca.cert_pem);
  c.crl = {write("ca.crl", make_crl({}, ca))};
  c.client_cert = ClientCertMode::Required;
  std::shared_ptr<const TlsServerContext> ctx;
  EXPECT_NO_THROW(ctx = TlsServerContext::load(c));
  ASSERT_NE(ctx, nullptr);
  EXPECT_TRUE(ctx->has_crl());
  EXPECT_TRUE(ctx->warnings().empty()) << ctx->warnings().front();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moat::security::pki
