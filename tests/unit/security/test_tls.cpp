// TLS: TlsServerContext loading, TlsEngine handshakes against a plain OpenSSL
// client over memory BIOs, and the handshake metrics. Certificates, keys and
// CRLs are generated when the tests start (tls_test_pki.hpp).
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <openssl/ocsp.h>

#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include "security/tls.hpp"
#include "tls_test_pki.hpp"

namespace moat::security {
namespace {

namespace fs = std::filesystem;
using namespace testpki;
using namespace std::chrono_literals;

// ---------------------------------------------------------------- PKI

struct Pki {
  fs::path dir;
  Key ca_key, other_ca_key, server_key, server2_key, rsa_server_key, client_key;
  Cert ca, other_ca, server, server2, rsa_server, expired_server;
  Cert device1, expired, revoked, intruder, server_purpose;

  fs::path p(const char* name) const { return dir / name; }

  Pki() {
    dir = make_temp_dir();
    ca_key = ec_key();
    other_ca_key = ec_key();
    server_key = ec_key();
    server2_key = ec_key();
    rsa_server_key = rsa_key();
    client_key = ec_key();
    CertSpec ca_spec;
    ca_spec.cn = "Moat Test CA";
    ca_spec.ca = true;
    ca = make_cert(ca_spec, ca_key.get(), nullptr, nullptr);
    ca_spec.cn = "Other CA";
    other_ca = make_cert(ca_spec, other_ca_key.get(), nullptr, nullptr);
    const CertSpec srv{
        .cn = "localhost", .serial = 0x100, .san = "DNS:localhost,IP:127.0.0.1", .eku = "serverAuth"};
    server = make_cert(srv, server_key.get(), ca.get(), ca_key.get());
    CertSpec srv2 = srv;
    srv2.cn = "broker2.test";
    srv2.serial = 0x101;
    srv2.san = "DNS:broker2.test";
    server2 = make_cert(srv2, server2_key.get(), ca.get(), ca_key.get());
    CertSpec rsa = srv;
    rsa.serial = 0x102;
    rsa_server = make_cert(rsa, rsa_server_key.get(), ca.get(), ca_key.get());
    CertSpec old = srv;
    old.serial = 0x103;
    old.not_before = -30L * 86400;
    old.not_after = -86400;
    expired_server = make_cert(old, server_key.get(), ca.get(), ca_key.get());

    const CertSpec dev{.cn = "device-1",
                       .serial = 0x1001,
                       .san = "email:device-1@example.com,URI:urn:moat:device-1,DNS:device-1.example.com",
                       .eku = "clientAuth"};
    device1 = make_cert(dev, client_key.get(), ca.get(), ca_key.get());
    CertSpec exp = dev;
    exp.cn = "device-old";
    exp.serial = 0x1002;
    exp.not_before = -30L * 86400;
    exp.not_after = -86400;
    expired = make_cert(exp, client_key.get(), ca.get(), ca_key.get());
    CertSpec rev = dev;
    rev.cn = "device-2";
    rev.serial = 0x1003;
    revoked = make_cert(rev, client_key.get(), ca.get(), ca_key.get());
    CertSpec intr = dev;
    intr.cn = "intruder";
    intruder = make_cert(intr, client_key.get(), other_ca.get(), other_ca_key.get());
    CertSpec purp = dev;
    purp.cn = "device-3";
    purp.serial = 0x1004;
    purp.eku = "serverAuth";
    server_purpose = make_cert(purp, client_key.get(), ca.get(), ca_key.get());

    write_certs(p("ca.crt"), {ca.get()});
    write_certs(p("other-ca.crt"), {other_ca.get()});
    write_certs(p("server.crt"), {server.get(), ca.get()});
    write_key(p("server.key"), server_key.get());
    write_key(p("server-enc.key"), server_key.get(), "s3cret");
    write_certs(p("server2.crt"), {server2.get()});
    write_key(p("server2.key"), server2_key.get());
    write_certs(p("rsa.crt"), {rsa_server.get()});
    write_key(p("rsa.key"), rsa_server_key.get());
    write_certs(p("expired-server.crt"), {expired_server.get()});
    write_certs(p("device-1.crt"), {device1.get()});
    write_certs(p("expired.crt"), {expired.get()});
    write_certs(p("revoked.crt"), {revoked.get()});
    write_certs(p("intruder.crt"), {intruder.get()});
    write_certs(p("purpose.crt"), {server_purpose.get()});
    write_key(p("client.key"), client_key.get());

    auto crl = make_crl(ca.get(), ca_key.get(), {0x1003}, -3600, 7L * 86400);
    write_crl_pem(p("ca.crl"), crl.get());
    write_crl_der(p("ca.crl.der"), crl.get());
    auto empty_crl = make_crl(ca.get(), ca_key.get(), {}, -3600, 7L * 86400);
    write_crl_pem(p("empty.crl"), empty_crl.get());
    auto stale = make_crl(ca.get(), ca_key.get(), {0x1003}, -10L * 86400, -86400);
    write_crl_pem(p("expired.crl"), stale.get());
    auto forged = make_crl(ca.get(), other_ca_key.get(), {}, -3600, 7L * 86400);
    write_crl_pem(p("forged.crl"), forged.get());

    std::ofstream(p("psk.txt"))
        << "# identity:hexkey\n"
           "sensor-7:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
           "\n"
           "sensor-8 : 1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100\n";
    fs::permissions(p("psk.txt"), fs::perms::owner_read | fs::perms::owner_write);
  }
  ~Pki() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

const Pki& pki() {
  static const Pki instance;
  return instance;
}

std::vector<unsigned char> psk7() {
  std::vector<unsigned char> k(32);
  for (int i = 0; i < 32; ++i) k[static_cast<std::size_t>(i)] = static_cast<unsigned char>(i);
  return k;
}

TlsServerConfig base_config() {
  TlsServerConfig c;
  c.cert = pki().p("server.crt");
  c.key = pki().p("server.key");
  c.ca = pki().p("ca.crt");
  return c;
}

TlsServerConfig mtls_config(ClientCertMode mode = ClientCertMode::Required) {
  TlsServerConfig c = base_config();
  c.client_cert = mode;
  c.crl = {pki().p("ca.crl")};
  return c;
}

TlsServerConfig psk_only_config() {
  TlsServerConfig c;
  c.psk_file = pki().p("psk.txt");
  c.identity_from = IdentityFrom::Psk;
  return c;
}

std::string load_error(const TlsServerConfig& c) {
  try {
    TlsServerContext::load(c);
  } catch (const TlsError& e) {
    return e.what();
  }
  return "no error";
}

// ---------------------------------------------------------------- a plain OpenSSL client

struct ClientOptions {
  int min_version = TLS1_2_VERSION;
  int max_version = TLS1_3_VERSION;
  fs::path cert, key;
  std::string ciphers, ciphersuites;
  std::string sni;
  std::vector<std::string> alpn;
  std::string psk_identity;
  std::vector<unsigned char> psk;
  SSL_SESSION* session = nullptr;
  bool verify = true;
  int security_level = -1;
};

class TestClient {
 public:
  explicit TestClient(const ClientOptions& o) : o_(o) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (o.security_level >= 0) SSL_CTX_set_security_level(ctx_, o.security_level);
    SSL_CTX_set_min_proto_version(ctx_, o.min_version);
    SSL_CTX_set_max_proto_version(ctx_, o.max_version);
    if (!o.ciphers.empty()) {
      EXPECT_EQ(SSL_CTX_set_cipher_list(ctx_, o.ciphers.c_str()), 1);
    }
    if (!o.ciphersuites.empty()) {
      EXPECT_EQ(SSL_CTX_set_ciphersuites(ctx_, o.ciphersuites.c_str()), 1);
    }
    SSL_CTX_load_verify_locations(ctx_, pki().p("ca.crt").c_str(), nullptr);
    SSL_CTX_set_verify(ctx_, o.verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
    if (!o.cert.empty()) {
      EXPECT_EQ(SSL_CTX_use_certificate_chain_file(ctx_, o.cert.c_str()), 1);
      EXPECT_EQ(SSL_CTX_use_PrivateKey_file(ctx_, o.key.c_str(), SSL_FILETYPE_PEM), 1);
    }
    // No client cache: with one, a TLS 1.3 ticket received on a resumed
    // connection marks the session it resumed from not resumable, and the
    // tests reuse one session several times.
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_OFF);
    ssl_ = SSL_new(ctx_);
    SSL_set_ex_data(ssl_, 0, this);
    rbio_ = BIO_new(BIO_s_mem());
    wbio_ = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(rbio_, -1);
    SSL_set_bio(ssl_, rbio_, wbio_);
    SSL_set_connect_state(ssl_);
    if (!o.sni.empty())
      SSL_ctrl(ssl_, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
               const_cast<char*>(o.sni.c_str()));
    if (!o.alpn.empty()) {
      std::vector<unsigned char> wire;
      for (const auto& a : o.alpn) {
        wire.push_back(static_cast<unsigned char>(a.size()));
        wire.insert(wire.end(), a.begin(), a.end());
      }
      EXPECT_EQ(SSL_set_alpn_protos(ssl_, wire.data(), static_cast<unsigned>(wire.size())), 0);
    }
    if (!o.psk_identity.empty()) {
      SSL_set_psk_client_callback(ssl_, psk12_cb);
      SSL_set_psk_use_session_callback(ssl_, psk13_cb);
    }
    if (o.session) SSL_set_session(ssl_, o.session);
  }
  ~TestClient() {
    // Without this, SSL_free of a connection that was not shut down marks its
    // session not resumable (ssl_clear_bad_session).
    SSL_set_shutdown(ssl_, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(ssl_);
    SSL_CTX_free(ctx_);
  }
  TestClient(const TestClient&) = delete;
  TestClient& operator=(const TestClient&) = delete;

  // Advances the handshake or reads application data; false once failed.
  void step() {
    if (failed_) return;
    ERR_clear_error();
    if (!SSL_is_init_finished(ssl_)) {
      const int r = SSL_do_handshake(ssl_);
      if (r != 1) {
        const int e = SSL_get_error(ssl_, r);
        if (e != SSL_ERROR_WANT_READ) failed_ = true;
        return;
      }
    }
    unsigned char buf[4096];
    for (;;) {
      std::size_t n = 0;
      if (SSL_read_ex(ssl_, buf, sizeof buf, &n) == 1) {
        received.insert(received.end(), buf, buf + n);
        continue;
      }
      const int e = SSL_get_error(ssl_, 0);
      if (e == SSL_ERROR_ZERO_RETURN) got_close_notify = true;
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_ZERO_RETURN) failed_ = true;
      return;
    }
  }
  std::vector<unsigned char> take_output() {
    std::vector<unsigned char> out(BIO_ctrl_pending(wbio_));
    if (!out.empty()) BIO_read(wbio_, out.data(), static_cast<int>(out.size()));
    return out;
  }
  void give_input(const std::vector<unsigned char>& in) {
    if (!in.empty()) BIO_write(rbio_, in.data(), static_cast<int>(in.size()));
  }
  void send(std::string_view s) {
    std::size_t n = 0;
    ASSERT_EQ(SSL_write_ex(ssl_, s.data(), s.size(), &n), 1);
  }
  bool established() const { return SSL_is_init_finished(ssl_) && !failed_; }
  bool failed() const { return failed_; }
  SSL* ssl() const { return ssl_; }
  SSL_SESSION* session() const { return SSL_get1_session(ssl_); }
  std::string server_cn() const {
    X509* peer = SSL_get1_peer_certificate(ssl_);
    std::string cn = certificate_identity(peer, IdentityFrom::Cn);
    X509_free(peer);
    return cn;
  }

  std::vector<unsigned char> received;
  bool got_close_notify = false;

 private:
  static unsigned int psk12_cb(SSL* ssl, const char*, char* identity, unsigned int max_id, unsigned char* psk,
                               unsigned int max_psk) {
    auto* self = static_cast<TestClient*>(SSL_get_ex_data(ssl, 0));
    if (self->o_.psk_identity.size() + 1 > max_id || self->o_.psk.size() > max_psk) return 0;
    std::memcpy(identity, self->o_.psk_identity.c_str(), self->o_.psk_identity.size() + 1);
    std::memcpy(psk, self->o_.psk.data(), self->o_.psk.size());
    return static_cast<unsigned int>(self->o_.psk.size());
  }
  static int psk13_cb(SSL* ssl, const EVP_MD* md, const unsigned char** id, std::size_t* idlen,
                      SSL_SESSION** sess) {
    auto* self = static_cast<TestClient*>(SSL_get_ex_data(ssl, 0));
    static constexpr unsigned char kAes128[] = {0x13, 0x01};
    const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kAes128);
    *sess = nullptr;
    if (md && md != SSL_CIPHER_get_handshake_digest(cipher)) return 1;
    SSL_SESSION* s = SSL_SESSION_new();
    SSL_SESSION_set1_master_key(s, self->o_.psk.data(), self->o_.psk.size());
    SSL_SESSION_set_cipher(s, cipher);
    SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION);
    *sess = s;
    *id = reinterpret_cast<const unsigned char*>(self->o_.psk_identity.data());
    *idlen = self->o_.psk_identity.size();
    return 1;
  }

  ClientOptions o_;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  BIO* rbio_ = nullptr;
  BIO* wbio_ = nullptr;
  bool failed_ = false;
};

// Moves bytes both ways until nothing moves. `chunk` > 0 feeds the server that
// many bytes at a time.
void pump(TestClient& c, TlsEngine& s, std::size_t chunk = 0, TlsEngine::Clock::time_point now = {}) {
  for (int round = 0; round < 100; ++round) {
    c.step();
    const auto to_server = c.take_output();
    if (chunk == 0) {
      s.feed(to_server, now);
    } else {
      for (std::size_t i = 0; i < to_server.size(); i += chunk)
        s.feed(std::span(to_server).subspan(i, std::min(chunk, to_server.size() - i)), now);
    }
    std::vector<unsigned char> to_client;
    to_client.swap(s.ciphertext());
    c.give_input(to_client);
    if (to_server.empty() && to_client.empty()) {
      c.step();
      return;
    }
  }
  ADD_FAILURE() << "pump did not settle";
}

struct Connection {
  std::unique_ptr<TestClient> client;
  std::unique_ptr<TlsEngine> server;
};

Connection connect(std::shared_ptr<const TlsServerContext> ctx, const ClientOptions& o = {}) {
  Connection c{std::make_unique<TestClient>(o), std::make_unique<TlsEngine>(std::move(ctx))};
  pump(*c.client, *c.server);
  return c;
}

std::shared_ptr<const TlsServerContext> load(const TlsServerConfig& c) {
  return TlsServerContext::load(c);
}

std::string text(const std::vector<std::uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

ClientOptions with_client_cert(const char* cert) {
  ClientOptions o;
  o.cert = pki().p(cert);
  o.key = pki().p("client.key");
  return o;
}

// ---------------------------------------------------------------- handshakes

TEST(TlsEngine, Tls13HandshakeSucceeds) {
  auto ctx = load(base_config());
  EXPECT_TRUE(ctx->warnings().empty()) << ctx->warnings().front();
  auto c = connect(ctx);
  ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
  EXPECT_TRUE(c.client->established());
  EXPECT_EQ(c.server->version(), "TLSv1.3");
  EXPECT_EQ(c.server->cipher(), "TLS_AES_128_GCM_SHA256");
  EXPECT_FALSE(c.server->resumed());
  EXPECT_EQ(c.server->peer_identity(), "");
  EXPECT_EQ(c.server->peer_fingerprint_sha256(), "");
  EXPECT_EQ(c.server->alpn(), "");
  EXPECT_EQ(c.client->server_cn(), "localhost");
}

TEST(TlsEngine, Tls12HandshakeSucceedsWithEcdheAead) {
  auto ctx = load(base_config());
  ClientOptions o;
  o.max_version = TLS1_2_VERSION;
  auto c = connect(ctx, o);
  ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
  EXPECT_EQ(c.server->version(), "TLSv1.2");
  EXPECT_EQ(c.server->cipher(), "ECDHE-ECDSA-AES128-GCM-SHA256");
}

TEST(TlsEngine, Tls12WithRsaCertificate) {
  TlsServerConfig cfg = base_config();
  cfg.cert = pki().p("rsa.crt");
  cfg.key = pki().p("rsa.key");
  ClientOptions o;
  o.max_version = TLS1_2_VERSION;
  auto c = connect(load(cfg), o);
  ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
  EXPECT_EQ(c.server->cipher(), "ECDHE-RSA-AES128-GCM-SHA256");
}

TEST(TlsEngine, Tls12CbcOnlyClientHasNoSharedCipher) {
  ClientOptions o;
  o.max_version = TLS1_2_VERSION;
  o.ciphers = "ECDHE-ECDSA-AES128-SHA";
  auto c = connect(load(base_config()), o);
  ASSERT_EQ(c.server->state(), TlsState::Failed);
  EXPECT_EQ(c.server->failure(), TlsFailure::NoSharedCipher) << c.server->error();
  EXPECT_NE(c.server->error().find("no shared cipher"), std::string::npos);
}

TEST(TlsEngine, MinVersion13RefusesTls12Client) {
  TlsServerConfig cfg = base_config();
  cfg.min_version = "1.3";
  ClientOptions o;
  o.max_version = TLS1_2_VERSION;
  auto c = connect(load(cfg), o);
  ASSERT_EQ(c.server->state(), TlsState::Failed);
  EXPECT_EQ(c.server->failure(), TlsFailure::ProtocolVersion) << c.server->error();
  EXPECT_NE(c.server->error().find("protocol version"), std::string::npos) << c.server->error();
  EXPECT_TRUE(c.client->failed());  // it got the alert
}

TEST(TlsEngine, Tls10And11AreRefused) {
  auto ctx = load(base_config());
  for (int v : {TLS1_VERSION, TLS1_1_VERSION}) {
    ClientOptions o;
    o.min_version = v;
    o.max_version = v;
    o.security_level = 0;  // let the client offer them at all
    o.ciphers = "ALL:@SECLEVEL=0";
    auto c = connect(ctx, o);
    ASSERT_EQ(c.server->state(), TlsState::Failed) << v;
    EXPECT_EQ(c.server->failure(), TlsFailure::ProtocolVersion) << c.server->error();
  }
}

TEST(TlsEngine, PlaintextMqttOnTlsPortIsNotTls) {
  TlsEngine e(load(base_config()));
  const std::uint8_t connect_packet[] = {0x10, 0x0c, 0x00, 0x04, 'M',  'Q', 'T',
                                         'T',  0x04, 0x02, 0x00, 0x3c, 0,   0};
  e.feed(connect_packet);
  ASSERT_EQ(e.state(), TlsState::Failed);
  EXPECT_EQ(e.failure(), TlsFailure::NotTls) << e.error();
}

// ---------------------------------------------------------------- mutual TLS

TEST(TlsEngine, RequiredClientCertMissingFails) {
  auto c = connect(load(mtls_config()));
  ASSERT_EQ(c.server->state(), TlsState::Failed);
  EXPECT_EQ(c.server->failure(), TlsFailure::NoClientCert) << c.server->error();
}

TEST(TlsEngine, RequiredClientCertMissingFailsTls12) {
  ClientOptions o;
  o.max_version = TLS1_2_VERSION;
  auto c = connect(load(mtls_config()), o);
  ASSERT_EQ(c.server->state(), TlsState::Failed);
  EXPECT_EQ(c.server->failure(), TlsFailure::NoClientCert) << c.server->error();
}

TEST(TlsEngine, UnknownCaIsRefused) {
  auto c = connect(load(mtls_config()), with_client_cert("intruder.crt"));
  ASSERT_EQ(c.server->state(), TlsState::Failed);
  EXPECT_EQ(c.server->failure(), TlsFailure::UnknownCa);
  EXPECT_NE(c.server->error().find("unknown CA"), std::string::npos) << c.server->error();
  EXPECT_NE(c.server->error().find("CN=intruder"), std::string::npos) << c.server->error();
}

TEST(TlsEngine, ExpiredClientCertIsRefused) {
  auto c = connect(load(mtls_config()), with_client_cert("expired.crt"));
  ASSERT_EQ(c.server->state(), TlsState::Failed);
  EXPECT_EQ(c.server->failure(), TlsFailure::CertExpired);
  EXPECT_NE(c.server->error().find("expired"), std::string::npos) << c.server->error();
}

TEST(TlsEngine, RevokedClientCertIsRefused) {
  for (const char* crl : {"ca.crl", "ca.crl.der"}) {
    TlsServerConfig cfg = mtls_config();
    cfg.crl = {pki().p(crl)};
    auto c = connect(load(cfg), with_client_cert("revoked.crt"));
    ASSERT_EQ(c.server->state(), TlsState::Failed) << crl;
    EXPECT_EQ(c.server->failure(), TlsFailure::CertRevoked) << c.server->error();
    EXPECT_NE(c.server->error().find("revoked"), std::string::npos) << c.server->error();
  }
}

TEST(TlsEngine, ClientCertForServerAuthOnlyIsRefused) {
  auto c = connect(load(mtls_config()), with_client_cert("purpose.crt"));
  ASSERT_EQ(c.server->state(), TlsState::Failed);
  EXPECT_EQ(c.server->failure(), TlsFailure::CertBadPurpose) << c.server->error();
}

TEST(TlsEngine, GoodClientCertGivesIdentityAndFingerprint) {
  const std::string fp = certificate_fingerprint_sha256(pki().device1.get());
  ASSERT_EQ(fp.size(), 64u);
  const std::pair<IdentityFrom, std::string> cases[] = {
      {IdentityFrom::Cn, "device-1"},
      {IdentityFrom::SanEmail, "device-1@example.com"},
      {IdentityFrom::SanUri, "urn:moat:device-1"},
      {IdentityFrom::SanDns, "device-1.example.com"},
      {IdentityFrom::Subject, "CN=device-1,O=Moat Test"},
      {IdentityFrom::Psk, ""},
  };
  for (const auto& [from, want] : cases) {
    for (int max : {TLS1_2_VERSION, TLS1_3_VERSION}) {
      TlsServerConfig cfg = mtls_config();
      cfg.identity_from = from;
      ClientOptions o = with_client_cert("device-1.crt");
      o.max_version = max;
      auto c = connect(load(cfg), o);
      ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
      EXPECT_EQ(c.server->peer_identity(), want) << to_string(from);
      EXPECT_EQ(c.server->peer_fingerprint_sha256(), fp);
      EXPECT_FALSE(c.server->psk_used());
    }
  }
}

TEST(TlsEngine, OptionalModeWithoutCertIsEstablishedWithoutIdentity) {
  auto ctx = load(mtls_config(ClientCertMode::Optional));
  auto c = connect(ctx);
  ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
  EXPECT_EQ(c.server->peer_identity(), "");
  EXPECT_EQ(c.server->peer_certificate(), nullptr);
  // A certificate offered in optional mode is still verified.
  auto bad = connect(ctx, with_client_cert("expired.crt"));
  EXPECT_EQ(bad.server->failure(), TlsFailure::CertExpired);
  auto good = connect(ctx, with_client_cert("device-1.crt"));
  EXPECT_EQ(good.server->peer_identity(), "device-1");
}

// ---------------------------------------------------------------- PSK

TEST(TlsEngine, Psk12SuitesGiveThePskIdentity) {
  TlsServerConfig cfg = psk_only_config();
  cfg.psk_plain_suites = true;
  auto ctx = load(cfg);
  EXPECT_EQ(ctx->psk_count(), 2u);
  for (const char* suite : {"PSK-AES128-GCM-SHA256", "ECDHE-PSK-CHACHA20-POLY1305"}) {
    ClientOptions o;
    o.max_version = TLS1_2_VERSION;
    o.ciphers = suite;
    o.psk_identity = "sensor-7";
    o.psk = psk7();
    auto c = connect(ctx, o);
    ASSERT_EQ(c.server->state(), TlsState::Established) << suite << ": " << c.server->error();
    EXPECT_EQ(c.server->cipher(), suite);
    EXPECT_EQ(c.server->peer_identity(), "sensor-7");
    EXPECT_TRUE(c.server->psk_used());
    EXPECT_FALSE(c.server->resumed());
  }
}

TEST(TlsEngine, Psk12WithoutForwardSecrecyOnlyWhenConfigured) {
  // The default keeps forward secrecy: a client that offers only plain PSK
  // suites finds no shared cipher.
  ClientOptions o;
  o.max_version = TLS1_2_VERSION;
  o.ciphers = "PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305";
  o.psk_identity = "sensor-7";
  o.psk = psk7();
  auto refused = connect(load(psk_only_config()), o);
  ASSERT_EQ(refused.server->state(), TlsState::Failed);
  EXPECT_EQ(refused.server->failure(), TlsFailure::NoSharedCipher) << refused.server->error();

  TlsServerConfig cfg = psk_only_config();
  cfg.psk_plain_suites = true;
  auto accepted = connect(load(cfg), o);
  ASSERT_EQ(accepted.server->state(), TlsState::Established) << accepted.server->error();
  EXPECT_EQ(accepted.server->peer_identity(), "sensor-7");

  cfg = base_config();
  cfg.psk_plain_suites = true;  // without psk_file
  EXPECT_NE(load_error(cfg).find("psk_plain_suites"), std::string::npos);
}

TEST(TlsEngine, Psk12WrongKeyAndUnknownIdentityFail) {
  auto ctx = load(psk_only_config());
  ClientOptions o;
  o.max_version = TLS1_2_VERSION;
  o.ciphers = "ECDHE-PSK-CHACHA20-POLY1305";
  o.psk_identity = "sensor-7";
  o.psk = std::vector<unsigned char>(32, 0xaa);
  auto c = connect(ctx, o);
  ASSERT_EQ(c.server->state(), TlsState::Failed);
  EXPECT_EQ(c.server->failure(), TlsFailure::PskMismatch) << c.server->error();
  o.psk_identity = "nobody";
  auto u = connect(ctx, o);
  ASSERT_EQ(u.server->state(), TlsState::Failed);
  EXPECT_EQ(u.server->failure(), TlsFailure::PskUnknownIdentity) << u.server->error();
  EXPECT_NE(u.server->error().find("nobody"), std::string::npos);
}

TEST(TlsEngine, Psk13ExternalGivesThePskIdentity) {
  auto ctx = load(psk_only_config());
  ClientOptions o;
  o.min_version = TLS1_3_VERSION;
  o.psk_identity = "sensor-7";
  o.psk = psk7();
  auto c = connect(ctx, o);
  ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
  EXPECT_EQ(c.server->version(), "TLSv1.3");
  EXPECT_EQ(c.server->peer_identity(), "sensor-7");
  EXPECT_TRUE(c.server->psk_used());
  EXPECT_FALSE(c.server->resumed());
}

TEST(TlsEngine, Psk13AlongsideACertificate) {
  TlsServerConfig cfg = base_config();
  cfg.psk_file = pki().p("psk.txt");
  ClientOptions o;
  o.min_version = TLS1_3_VERSION;
  o.psk_identity = "sensor-8";
  o.psk = psk7();
  std::reverse(o.psk.begin(), o.psk.end());
  auto c = connect(load(cfg), o);
  ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
  EXPECT_EQ(c.server->peer_identity(), "sensor-8");  // PSK identity whatever identity_from says
}

TEST(TlsEngine, Psk13WrongKeyAndUnknownIdentityFail) {
  auto ctx = load(psk_only_config());
  ClientOptions o;
  o.min_version = TLS1_3_VERSION;
  o.psk_identity = "sensor-7";
  o.psk = std::vector<unsigned char>(32, 0xaa);
  auto c = connect(ctx, o);
  ASSERT_EQ(c.server->state(), TlsState::Failed);
  EXPECT_EQ(c.server->failure(), TlsFailure::PskMismatch) << c.server->error();
  o.psk_identity = "nobody";
  auto u = connect(ctx, o);
  ASSERT_EQ(u.server->state(), TlsState::Failed);
  EXPECT_EQ(u.server->failure(), TlsFailure::PskUnknownIdentity) << u.server->error();
}

// ---------------------------------------------------------------- data

TEST(TlsEngine, ApplicationDataBothWays) {
  for (std::size_t chunk : {std::size_t{0}, std::size_t{1}}) {
    for (int max : {TLS1_2_VERSION, TLS1_3_VERSION}) {
      ClientOptions o;
      o.max_version = max;
      TestClient client(o);
      TlsEngine server(load(base_config()));
      pump(client, server, chunk);
      ASSERT_EQ(server.state(), TlsState::Established) << server.error();
      client.send("hello broker");
      pump(client, server, chunk);
      EXPECT_EQ(text(server.plaintext()), "hello broker");
      server.plaintext().clear();
      const std::string big(100000, 'x');
      server.write(std::span(reinterpret_cast<const std::uint8_t*>(big.data()), big.size()));
      pump(client, server, chunk);
      EXPECT_EQ(client.received.size(), big.size());
      server.close_notify();
      EXPECT_EQ(server.state(), TlsState::Closed);
      pump(client, server, chunk);
      EXPECT_TRUE(client.got_close_notify);
    }
  }
}

// An idle connection holds no buffers: they are allocated while bytes pass
// and given back once drained; a partial record is not lost by that.
TEST(TlsEngine, BuffersAreHeldOnlyWhileBytesPass) {
  TestClient client({});
  TlsEngine server(load(base_config()));
  pump(client, server);
  ASSERT_EQ(server.state(), TlsState::Established) << server.error();
  server.release_idle_buffers();
  EXPECT_FALSE(server.holds_buffers());
  EXPECT_FALSE(server.has_plaintext());
  EXPECT_FALSE(server.has_ciphertext());
  EXPECT_FALSE(server.holds_buffers());  // asking allocates nothing

  client.send("hello broker");
  client.step();
  const auto record = client.take_output();
  ASSERT_GT(record.size(), 2u);
  const std::size_t half = record.size() / 2;
  server.feed(std::span(record).first(half));
  EXPECT_FALSE(server.has_plaintext());
  server.release_idle_buffers();  // SSL or the engine keeps the first half
  server.feed(std::span(record).subspan(half));
  ASSERT_TRUE(server.has_plaintext());
  EXPECT_EQ(text(server.plaintext()), "hello broker");
  std::vector<std::uint8_t>().swap(server.plaintext());
  server.release_idle_buffers();
  EXPECT_FALSE(server.holds_buffers());

  const std::string reply = "PINGRESP";
  server.write(std::span(reinterpret_cast<const std::uint8_t*>(reply.data()), reply.size()));
  EXPECT_TRUE(server.has_ciphertext());
  server.release_idle_buffers();  // not drained yet: kept
  ASSERT_TRUE(server.has_ciphertext());
  std::vector<std::uint8_t> out;
  out.swap(server.ciphertext());
  server.release_idle_buffers();
  EXPECT_FALSE(server.holds_buffers());
  client.give_input(out);
  client.step();
  EXPECT_EQ(std::string(client.received.begin(), client.received.end()), reply);

  // take_*() drain and release in one step, as the connection does.
  client.send("again");
  client.step();
  server.feed(client.take_output());
  EXPECT_EQ(text(server.take_plaintext()), "again");
  EXPECT_FALSE(server.holds_buffers());
  server.write(std::span(reinterpret_cast<const std::uint8_t*>(reply.data()), reply.size()));
  const auto records = server.take_ciphertext();
  EXPECT_FALSE(server.holds_buffers());
  client.give_input(records);
  client.step();
  EXPECT_EQ(std::string(client.received.begin(), client.received.end()), reply + reply);
}

TEST(TlsEngine, WriteBeforeHandshakeIsSentAfterIt) {
  TestClient client({});
  TlsEngine server(load(base_config()));
  const std::string early = "CONNACK";
  server.write(std::span(reinterpret_cast<const std::uint8_t*>(early.data()), early.size()));
  pump(client, server);
  ASSERT_EQ(server.state(), TlsState::Established);
  EXPECT_EQ(std::string(client.received.begin(), client.received.end()), early);
}

TEST(TlsEngine, PeerCloseNotifyCloses) {
  TestClient client({});
  TlsEngine server(load(base_config()));
  pump(client, server);
  SSL_shutdown(client.ssl());
  pump(client, server);
  EXPECT_EQ(server.state(), TlsState::Closed);
  EXPECT_TRUE(server.peer_closed());
}

TEST(TlsEngine, UndrainedPlaintextHitsTheBufferLimit) {
  TlsServerConfig cfg = base_config();
  cfg.max_plaintext_backlog = 4096;
  TestClient client({});
  TlsEngine server(load(cfg));
  pump(client, server);
  ASSERT_EQ(server.state(), TlsState::Established);
  client.send(std::string(3000, 'a'));
  pump(client, server);
  EXPECT_EQ(server.state(), TlsState::Established);
  client.send(std::string(3000, 'b'));  // the server never drains plaintext()
  pump(client, server);
  ASSERT_EQ(server.state(), TlsState::Failed);
  EXPECT_EQ(server.failure(), TlsFailure::BufferLimit);
  EXPECT_NE(server.error().find("buffer limit"), std::string::npos);
}

TEST(TlsEngine, UnsentCiphertextHitsTheBufferLimit) {
  TlsServerConfig cfg = base_config();
  cfg.max_ciphertext_backlog = 64 * 1024;
  TestClient client({});
  TlsEngine server(load(cfg));
  pump(client, server);
  const std::vector<std::uint8_t> chunk(16 * 1024, 7);
  for (int i = 0; i < 5; ++i) server.write(chunk);  // never drained
  EXPECT_EQ(server.failure(), TlsFailure::BufferLimit);
}

TEST(TlsEngine, MovesBetweenThreadsMidHandshake) {
  TestClient client({});
  auto server = std::make_unique<TlsEngine>(load(base_config()));
  client.step();
  server->feed(client.take_output());  // ClientHello on this thread
  std::vector<unsigned char> flight;
  flight.swap(server->ciphertext());
  client.give_input(flight);
  client.step();
  const auto finished = client.take_output();
  std::thread other([&] {
    TlsEngine moved(std::move(*server));
    moved.feed(finished);  // Finished on another thread
    EXPECT_EQ(moved.state(), TlsState::Established) << moved.error();
  });
  other.join();
}

TEST(TlsEngine, HandshakeDurationFromCallerTime) {
  const TlsEngine::Clock::time_point t0{std::chrono::seconds(1000)};
  TestClient client({});
  TlsEngine server(load(base_config()), t0);
  pump(client, server, 0, t0 + 3ms);
  ASSERT_TRUE(server.handshake_duration().has_value());
  EXPECT_EQ(*server.handshake_duration(), 3ms);
}

// ---------------------------------------------------------------- resumption, ALPN, SNI

// Handshake, let the client read the ticket, return its session.
SSL_SESSION* first_session(std::shared_ptr<const TlsServerContext> ctx, ClientOptions o) {
  auto c = connect(std::move(ctx), o);
  EXPECT_EQ(c.server->state(), TlsState::Established) << c.server->error();
  return c.client->session();
}

TEST(TlsEngine, ResumptionWithTicket) {
  for (int max : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    auto ctx = load(mtls_config());
    ClientOptions o = with_client_cert("device-1.crt");
    o.max_version = max;
    o.session = first_session(ctx, o);
    ASSERT_NE(o.session, nullptr);
    auto c = connect(ctx, o);
    ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
    EXPECT_TRUE(c.server->resumed()) << max;
    EXPECT_EQ(c.server->peer_identity(), "device-1");  // the certificate comes back with the session
    SSL_SESSION_free(o.session);
  }
}

// TLS 1.3 tickets are for one connection (RFC 8446 section C.4; OpenSSL clients
// with a session cache never offer one twice): each resumed handshake must hand
// out a new ticket, or every other connection of such a client is a full one.
TEST(TlsEngine, ResumedTls13HandshakeBringsNewTicket) {
  auto ctx = load(base_config());
  ClientOptions o;
  o.min_version = TLS1_3_VERSION;
  o.session = first_session(ctx, o);
  ASSERT_NE(o.session, nullptr);
  for (int i = 0; i < 3; ++i) {
    auto c = connect(ctx, o);
    ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
    EXPECT_TRUE(c.server->resumed()) << i;
    SSL_SESSION* next = c.client->session();
    const unsigned char* used = nullptr;
    const unsigned char* fresh = nullptr;
    std::size_t used_len = 0;
    std::size_t fresh_len = 0;
    SSL_SESSION_get0_ticket(o.session, &used, &used_len);
    SSL_SESSION_get0_ticket(next, &fresh, &fresh_len);
    EXPECT_TRUE(fresh_len > 0 && (fresh_len != used_len || std::memcmp(fresh, used, used_len) != 0))
        << "no new ticket on resumed handshake " << i;
    SSL_SESSION_free(o.session);
    o.session = next;
  }
  SSL_SESSION_free(o.session);
}

TEST(TlsEngine, TicketKeysRotate) {
  auto ctx = load(base_config());
  ClientOptions o;
  o.session = first_session(ctx, o);
  ctx->rotate_ticket_keys();  // the ticket's key is now the previous one: still accepted
  EXPECT_TRUE(connect(ctx, o).server->resumed());
  ctx->rotate_ticket_keys();  // retired
  EXPECT_FALSE(connect(ctx, o).server->resumed());
  SSL_SESSION_free(o.session);

  // Rotation driven by the time engines pass in.
  TlsServerConfig cfg = base_config();
  cfg.ticket_key_rotation = 1h;
  auto timed = load(cfg);
  const TlsEngine::Clock::time_point t0{std::chrono::hours(100)};
  TestClient c1({});
  TlsEngine s1(timed, t0);
  pump(c1, s1, 0, t0);  // starts the period
  ClientOptions again;
  again.session = c1.session();
  for (auto t : {t0 + 30min, t0 + 61min, t0 + 122min}) {
    TestClient c2(again);
    TlsEngine s2(timed, t);
    pump(c2, s2, 0, t);
    EXPECT_EQ(s2.resumed(), t < t0 + 2h) << (t - t0).count();
  }
  SSL_SESSION_free(again.session);
}

TEST(TlsEngine, ResumedPsk13KeepsIdentity) {
  auto ctx = load(psk_only_config());
  ClientOptions o;
  o.min_version = TLS1_3_VERSION;
  o.psk_identity = "sensor-7";
  o.psk = psk7();
  ClientOptions r;
  r.min_version = TLS1_3_VERSION;
  r.session = first_session(ctx, o);
  auto c = connect(ctx, r);
  ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
  EXPECT_TRUE(c.server->resumed());
  EXPECT_EQ(c.server->peer_identity(), "sensor-7");
  SSL_SESSION_free(r.session);
}

TEST(TlsEngine, SessionsDoNotResumeIntoStricterClientAuth) {
  auto lax = load(base_config());
  ClientOptions o;
  o.session = first_session(lax, o);
  TlsServerConfig strict_cfg = mtls_config();
  auto strict =
      TlsServerContext::load(strict_cfg, std::chrono::system_clock::now(), lax.get());  // same ticket keys
  auto c = connect(strict, o);
  EXPECT_EQ(c.server->failure(), TlsFailure::NoClientCert) << c.server->error();
  SSL_SESSION_free(o.session);
}

// A reload that rewrites the CA file at the same path without the device's CA:
// a session from before must not resume (its certificate was verified against
// the old CAs); the full handshake that follows refuses the certificate.
TEST(TlsEngine, SessionsDoNotResumeAfterTheCaContentChanges) {
  const fs::path trust = pki().p("trust-resume.crt");
  for (int max : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    write_certs(trust, {pki().ca.get(), pki().other_ca.get()});
    TlsServerConfig cfg = base_config();
    cfg.ca = trust;
    cfg.client_cert = ClientCertMode::Required;
    auto before = load(cfg);
    ClientOptions o = with_client_cert("intruder.crt");  // issued by "Other CA"
    o.max_version = max;
    o.session = first_session(before, o);
    ASSERT_NE(o.session, nullptr);

    // Same content reloaded: the ticket keys carry over and the session resumes.
    auto same = TlsServerContext::load(cfg, std::chrono::system_clock::now(), before.get());
    auto again = connect(same, o);
    ASSERT_EQ(again.server->state(), TlsState::Established) << again.server->error();
    EXPECT_TRUE(again.server->resumed()) << max;

    write_certs(trust, {pki().ca.get()});
    auto after = TlsServerContext::load(cfg, std::chrono::system_clock::now(), same.get());
    auto c = connect(after, o);
    EXPECT_FALSE(c.server->resumed()) << max;
    EXPECT_EQ(c.server->state(), TlsState::Failed) << max;
    EXPECT_EQ(c.server->failure(), TlsFailure::UnknownCa) << c.server->error();
    SSL_SESSION_free(o.session);
  }
  fs::remove(trust);
}

// With crl_check = "chain" a new CRL changes the session context too; with
// "leaf" sessions resume and the leaf is checked against the current CRLs.
TEST(TlsEngine, ChainCrlChangeEndsSessions) {
  TlsServerConfig cfg = mtls_config();
  cfg.crl = {pki().p("empty.crl")};
  cfg.crl_check = CrlCheck::Chain;
  auto before = load(cfg);
  ClientOptions o = with_client_cert("device-1.crt");
  o.max_version = TLS1_2_VERSION;
  o.session = first_session(before, o);
  ASSERT_NE(o.session, nullptr);
  cfg.crl = {pki().p("ca.crl")};
  auto after = TlsServerContext::load(cfg, std::chrono::system_clock::now(), before.get());
  auto c = connect(after, o);
  ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
  EXPECT_FALSE(c.server->resumed());
  cfg.crl_check = CrlCheck::Leaf;
  cfg.crl = {pki().p("empty.crl")};
  auto leaf_before = load(cfg);
  SSL_SESSION_free(o.session);
  o.session = nullptr;
  o.session = first_session(leaf_before, o);
  cfg.crl = {pki().p("ca.crl")};
  auto leaf_after = TlsServerContext::load(cfg, std::chrono::system_clock::now(), leaf_before.get());
  auto d = connect(leaf_after, o);
  ASSERT_EQ(d.server->state(), TlsState::Established) << d.server->error();
  EXPECT_TRUE(d.server->resumed());
  SSL_SESSION_free(o.session);
}

TEST(TlsEngine, AlpnMqttIsNegotiated) {
  auto ctx = load(base_config());
  ClientOptions o;
  o.alpn = {"x-other", "mqtt"};
  auto c = connect(ctx, o);
  ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
  EXPECT_EQ(c.server->alpn(), "mqtt");
  o.alpn = {"h2"};
  auto bad = connect(ctx, o);
  ASSERT_EQ(bad.server->state(), TlsState::Failed);
  EXPECT_EQ(bad.server->failure(), TlsFailure::NoApplicationProtocol) << bad.server->error();
}

TEST(TlsEngine, SniPicksTheSecondCertificate) {
  TlsServerConfig cfg = base_config();
  cfg.sni.push_back({"BROKER2.test", pki().p("server2.crt"), pki().p("server2.key"), ""});
  auto ctx = load(cfg);
  for (int max : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    ClientOptions o;
    o.max_version = max;
    o.sni = "broker2.test";
    auto c = connect(ctx, o);
    ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
    EXPECT_EQ(c.server->sni(), "broker2.test");
    EXPECT_EQ(c.client->server_cn(), "broker2.test");
    o.sni = "localhost";
    auto d = connect(ctx, o);
    EXPECT_EQ(d.client->server_cn(), "localhost");
  }
}

// ---------------------------------------------------------------- load errors

TEST(TlsServerContext, LoadErrorsNameTheFileAndReason) {
  TlsServerConfig c = base_config();
  c.key = pki().p("server2.key");
  std::string e = load_error(c);
  EXPECT_NE(e.find("server2.key"), std::string::npos) << e;
  EXPECT_NE(e.find("does not match"), std::string::npos) << e;

  c = base_config();
  c.key = pki().p("server-enc.key");
  c.key_password = "wrong";
  e = load_error(c);
  EXPECT_NE(e.find("server-enc.key"), std::string::npos) << e;
  EXPECT_NE(e.find("wrong password"), std::string::npos) << e;
  c.key_password = "";
  e = load_error(c);
  EXPECT_NE(e.find("key_password is not set"), std::string::npos) << e;
  c.key_password = "s3cret";
  EXPECT_EQ(load_error(c), "no error");

  c = base_config();
  c.cert = pki().p("missing.crt");
  e = load_error(c);
  EXPECT_NE(e.find("missing.crt"), std::string::npos) << e;
  EXPECT_NE(e.find("No such file"), std::string::npos) << e;

  c = base_config();
  c.cert = pki().p("expired-server.crt");
  e = load_error(c);
  EXPECT_NE(e.find("expired-server.crt"), std::string::npos) << e;
  EXPECT_NE(e.find("expired"), std::string::npos) << e;

  c = mtls_config();
  c.crl = {pki().p("expired.crl")};
  e = load_error(c);
  EXPECT_NE(e.find("expired.crl"), std::string::npos) << e;
  EXPECT_NE(e.find("expired"), std::string::npos) << e;

  c.crl = {pki().p("forged.crl")};
  e = load_error(c);
  EXPECT_NE(e.find("forged.crl"), std::string::npos) << e;
  EXPECT_NE(e.find("does not verify"), std::string::npos) << e;

  c.crl = {pki().p("server.key")};
  e = load_error(c);
  EXPECT_NE(e.find("server.key"), std::string::npos) << e;

  c = mtls_config();
  c.ca = pki().p("other-ca.crt");  // the CRL's issuer is not a configured CA
  e = load_error(c);
  EXPECT_NE(e.find("ca.crl"), std::string::npos) << e;
  EXPECT_NE(e.find("not among the CAs"), std::string::npos) << e;

  c = base_config();
  c.ca = pki().p("nope.crt");
  c.client_cert = ClientCertMode::Required;
  e = load_error(c);
  EXPECT_NE(e.find("nope.crt"), std::string::npos) << e;

  c = base_config();
  c.ca.clear();
  c.client_cert = ClientCertMode::Required;
  EXPECT_NE(load_error(c).find("needs ca"), std::string::npos);

  c = base_config();
  c.min_version = "1.1";
  EXPECT_NE(load_error(c).find("min_version"), std::string::npos);

  c = base_config();
  c.ciphers = "NOT-A-CIPHER";
  EXPECT_NE(load_error(c).find("ciphers"), std::string::npos);
}

TEST(TlsServerContext, PskFileErrorsNameTheLine) {
  const fs::path bad = pki().dir / "bad-psk.txt";
  const std::pair<std::string, std::string> cases[] = {
      {"a:00112233445566778899aabbccddeeff\nb 0011\n", "line 2"},
      {"a:0011\n", "shorter than 16 bytes"},
      {"a:zz112233445566778899aabbccddeeff\n", "not hexadecimal"},
      {"a:00112233445566778899aabbccddeeff\na:00112233445566778899aabbccddeeff\n", "duplicate"},
      {"# nothing\n", "no 'identity:hexkey'"},
  };
  for (const auto& [content, want] : cases) {
    std::ofstream(bad) << content;
    TlsServerConfig c;
    c.psk_file = bad;
    const std::string e = load_error(c);
    EXPECT_NE(e.find("bad-psk.txt"), std::string::npos) << e;
    EXPECT_NE(e.find(want), std::string::npos) << e;
  }
}

TEST(TlsServerContext, WarningsForKeyFileModeAndSoonExpiry) {
  const fs::path key = pki().dir / "open.key";
  fs::copy_file(pki().p("server.key"), key, fs::copy_options::overwrite_existing);
  fs::permissions(key, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  TlsServerConfig c = base_config();
  c.key = key;
  auto ctx = TlsServerContext::load(c, std::chrono::system_clock::now() + std::chrono::hours(24 * 350));
  ASSERT_EQ(ctx->warnings().size(), 2u);
  EXPECT_NE(ctx->warnings()[0].find("readable by group"), std::string::npos);
  EXPECT_NE(ctx->warnings()[1].find("expires on"), std::string::npos);
}

// ---------------------------------------------------------------- revocation after reload

TEST(TlsServerContext, RevokedCheckAgainstAReloadedContext) {
  TlsServerConfig cfg = base_config();
  cfg.client_cert = ClientCertMode::Required;
  cfg.crl = {pki().p("empty.crl")};
  auto old_ctx = load(cfg);
  auto c = connect(old_ctx, with_client_cert("revoked.crt"));
  ASSERT_EQ(c.server->state(), TlsState::Established) << c.server->error();
  auto good = connect(old_ctx, with_client_cert("device-1.crt"));
  ASSERT_EQ(good.server->state(), TlsState::Established);
  EXPECT_FALSE(old_ctx->revoked(c.server->peer_certificate()));

  cfg.crl = {pki().p("ca.crl")};  // SIGHUP with a CRL that now lists device-2
  auto new_ctx = TlsServerContext::load(cfg, std::chrono::system_clock::now(), old_ctx.get());
  EXPECT_TRUE(new_ctx->revoked(c.server->peer_certificate()));
  EXPECT_FALSE(new_ctx->revoked(good.server->peer_certificate()));
  EXPECT_FALSE(new_ctx->revoked(pki().intruder.get()));  // another issuer

  // A session ticket from before the reload does not bring the revoked certificate back.
  ClientOptions o = with_client_cert("revoked.crt");
  o.session = c.client->session();
  auto resumed = connect(new_ctx, o);
  EXPECT_EQ(resumed.server->failure(), TlsFailure::CertRevoked) << resumed.server->error();
  SSL_SESSION_free(o.session);
}

TEST(TlsServerContext, RecheckAfterReload) {
  TlsServerConfig cfg = base_config();
  cfg.client_cert = ClientCertMode::Required;
  cfg.crl = {pki().p("empty.crl")};
  auto old_ctx = load(cfg);
  auto stolen = connect(old_ctx, with_client_cert("revoked.crt"));
  auto good = connect(old_ctx, with_client_cert("device-1.crt"));
  ASSERT_EQ(stolen.server->state(), TlsState::Established) << stolen.server->error();
  ASSERT_EQ(good.server->state(), TlsState::Established) << good.server->error();
  EXPECT_EQ(old_ctx->recheck(*stolen.server), TlsFailure::None);
  EXPECT_EQ(stolen.server->peer_serial(), "1003");
  EXPECT_EQ(stolen.server->peer_subject(), "CN=device-2,O=Moat Test");

  // A new CRL lists device-2.
  cfg.crl = {pki().p("ca.crl")};
  auto new_crl = TlsServerContext::load(cfg, std::chrono::system_clock::now(), old_ctx.get());
  std::string why;
  EXPECT_EQ(new_crl->recheck(*stolen.server, &why), TlsFailure::CertRevoked);
  EXPECT_EQ(why, "certificate revoked: CN=device-2,O=Moat Test");
  EXPECT_EQ(new_crl->recheck(*good.server), TlsFailure::None);

  // The CA is no longer trusted: every certificate it issued goes.
  cfg.ca = pki().p("other-ca.crt");
  cfg.crl.clear();
  auto new_ca = TlsServerContext::load(cfg, std::chrono::system_clock::now(), old_ctx.get());
  EXPECT_EQ(new_ca->recheck(*good.server, &why), TlsFailure::UnknownCa);
  EXPECT_NE(why.find("unknown CA"), std::string::npos) << why;

  // Connections without a client certificate have nothing to recheck.
  TlsServerConfig plain = base_config();
  auto anonymous = connect(load(plain), {});
  ASSERT_EQ(anonymous.server->state(), TlsState::Established);
  EXPECT_EQ(new_ca->recheck(*anonymous.server), TlsFailure::None);
}

// ---------------------------------------------------------------- OCSP stapling

struct OcspRespFree {
  void operator()(OCSP_RESPONSE* r) const { OCSP_RESPONSE_free(r); }
};

// A DER OCSP response about `subject` (issued by `issuer`), signed with `signer`/`signer_key`.
std::vector<unsigned char> make_ocsp(X509* subject, X509* issuer, X509* signer, EVP_PKEY* signer_key,
                                     int status, long this_update, long next_update) {
  OCSP_CERTID* id = OCSP_cert_to_id(EVP_sha1(), subject, issuer);
  OCSP_BASICRESP* bs = OCSP_BASICRESP_new();
  ASN1_TIME* thisupd = X509_gmtime_adj(nullptr, this_update);
  ASN1_TIME* nextupd = X509_gmtime_adj(nullptr, next_update);
  ASN1_TIME* revoked_at = status == V_OCSP_CERTSTATUS_REVOKED ? X509_gmtime_adj(nullptr, -7200) : nullptr;
  EXPECT_NE(
      OCSP_basic_add1_status(bs, id, status, OCSP_REVOKED_STATUS_KEYCOMPROMISE, revoked_at, thisupd, nextupd),
      nullptr);
  EXPECT_EQ(OCSP_basic_sign(bs, signer, signer_key, EVP_sha256(), nullptr, 0), 1);
  std::unique_ptr<OCSP_RESPONSE, OcspRespFree> r(OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, bs));
  unsigned char* der = nullptr;
  const int n = i2d_OCSP_RESPONSE(r.get(), &der);
  std::vector<unsigned char> out(der, der + std::max(n, 0));
  OPENSSL_free(der);
  OCSP_BASICRESP_free(bs);
  OCSP_CERTID_free(id);
  ASN1_TIME_free(thisupd);
  ASN1_TIME_free(nextupd);
  ASN1_TIME_free(revoked_at);
  return out;
}

fs::path write_bytes(const char* name, const std::vector<unsigned char>& bytes) {
  const fs::path p = pki().dir / name;
  std::ofstream(p, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return p;
}

// The OCSP response the client received in the handshake ("" if none).
std::vector<unsigned char> stapled(std::shared_ptr<const TlsServerContext> ctx, bool ask, int max_version) {
  ClientOptions o;
  o.max_version = max_version;
  TestClient client(o);
  if (ask) SSL_set_tlsext_status_type(client.ssl(), TLSEXT_STATUSTYPE_ocsp);
  TlsEngine server(std::move(ctx));
  pump(client, server);
  EXPECT_TRUE(client.established());
  const unsigned char* resp = nullptr;
  const long n = SSL_get_tlsext_status_ocsp_resp(client.ssl(), &resp);
  return resp && n > 0 ? std::vector<unsigned char>(resp, resp + n) : std::vector<unsigned char>{};
}

TEST(TlsServerContext, OcspResponseIsStapled) {
  const Pki& k = pki();
  const auto good = make_ocsp(k.server.get(), k.ca.get(), k.ca.get(), k.ca_key.get(), V_OCSP_CERTSTATUS_GOOD,
                              -3600, 7L * 86400);
  TlsServerConfig cfg = base_config();
  cfg.ocsp_response = write_bytes("good.ocsp", good);
  auto ctx = load(cfg);
  EXPECT_TRUE(ctx->staples_ocsp());
  EXPECT_EQ(stapled(ctx, true, TLS1_3_VERSION), good);
  EXPECT_EQ(stapled(ctx, true, TLS1_2_VERSION), good);
  EXPECT_TRUE(stapled(ctx, false, TLS1_3_VERSION).empty());  // not asked, not sent
  EXPECT_FALSE(load(base_config())->staples_ocsp());
}

TEST(TlsServerContext, OcspResponseErrorsNameTheFileAndReason) {
  const Pki& k = pki();
  TlsServerConfig cfg = base_config();
  auto error_for = [&](const char* name, const std::vector<unsigned char>& der) {
    cfg.ocsp_response = write_bytes(name, der);
    return load_error(cfg);
  };
  std::string e = error_for("garbage.ocsp", {0x30, 0x03, 0x0a, 0x01, 0x00, 0xff});
  EXPECT_NE(e.find("garbage.ocsp"), std::string::npos) << e;
  EXPECT_NE(e.find("not a DER OCSP response"), std::string::npos) << e;

  e = error_for("other.ocsp", make_ocsp(k.server2.get(), k.ca.get(), k.ca.get(), k.ca_key.get(),
                                        V_OCSP_CERTSTATUS_GOOD, -3600, 86400));
  EXPECT_NE(e.find("not about the server certificate"), std::string::npos) << e;

  e = error_for("stale.ocsp", make_ocsp(k.server.get(), k.ca.get(), k.ca.get(), k.ca_key.get(),
                                        V_OCSP_CERTSTATUS_GOOD, -3L * 86400, -86400));
  EXPECT_NE(e.find("stale.ocsp"), std::string::npos) << e;
  EXPECT_NE(e.find("expired"), std::string::npos) << e;

  e = error_for("revoked.ocsp", make_ocsp(k.server.get(), k.ca.get(), k.ca.get(), k.ca_key.get(),
                                          V_OCSP_CERTSTATUS_REVOKED, -3600, 86400));
  EXPECT_NE(e.find("revoked"), std::string::npos) << e;

  e = error_for("forged.ocsp", make_ocsp(k.server.get(), k.ca.get(), k.other_ca.get(), k.other_ca_key.get(),
                                         V_OCSP_CERTSTATUS_GOOD, -3600, 86400));
  EXPECT_NE(e.find("signature does not verify"), std::string::npos) << e;

  cfg = psk_only_config();
  cfg.ocsp_response = pki().dir / "good.ocsp";
  EXPECT_NE(load_error(cfg).find("needs cert"), std::string::npos);
}

// ---------------------------------------------------------------- metrics

TEST(TlsHandshakeMetrics, CountsCompletedFailedAndDurations) {
  TlsHandshakeMetrics m;
  auto ctx = load(mtls_config(ClientCertMode::Optional));
  const TlsEngine::Clock::time_point t0{std::chrono::seconds(5)};
  {
    TestClient client({});
    TlsEngine e(ctx, t0);
    pump(client, e, 0, t0 + 1500us);
    m.record(e);
  }
  {
    ClientOptions o;
    o.max_version = TLS1_2_VERSION;
    TestClient client(o);
    TlsEngine e(ctx, t0);
    pump(client, e, 0, t0 + 7ms);
    m.record(e);
  }
  m.record(*connect(ctx, with_client_cert("expired.crt")).server);
  m.record(*connect(ctx, with_client_cert("revoked.crt")).server);
  TlsEngine idle(ctx);
  m.record(idle);  // still handshaking: not counted
  const auto s = m.snapshot();
  EXPECT_EQ(s.completed, 2u);
  EXPECT_EQ(s.tls13, 1u);
  EXPECT_EQ(s.tls12, 1u);
  EXPECT_EQ(s.resumed, 0u);
  EXPECT_EQ(s.failures[static_cast<std::size_t>(TlsFailure::CertExpired)], 1u);
  EXPECT_EQ(s.failures[static_cast<std::size_t>(TlsFailure::CertRevoked)], 1u);
  EXPECT_EQ(s.duration_count, 2u);
  EXPECT_EQ(s.duration_sum_micros, 8500u);
  EXPECT_EQ(s.duration_buckets[4], 1u);  // <= 2 ms
  EXPECT_EQ(s.duration_buckets[6], 1u);  // <= 10 ms
  EXPECT_EQ(s.failed(), 2u);
  // One sample in (1, 2] ms and one in (5, 10] ms: the median is the top of the
  // first, the 99th percentile near the top of the second.
  EXPECT_DOUBLE_EQ(s.duration_quantile_micros(0.5), 2000.0);
  EXPECT_NEAR(s.duration_quantile_micros(0.99), 9900.0, 1.0);
  EXPECT_EQ(TlsHandshakeMetrics::Snapshot{}.duration_quantile_micros(0.5), 0.0);
  m.record_closed_revoked();
  EXPECT_EQ(m.snapshot().closed_revoked, 1u);
}

TEST(TlsHandshakeMetrics, FailureSlugsAreDistinctTopicLevels) {
  // The same tokens in $SYS topics and the audit log (docs/audit.md, docs/mqtt.md).
  EXPECT_EQ(to_slug(TlsFailure::UnknownCa), "unknown_ca");
  EXPECT_EQ(to_slug(TlsFailure::CertExpired), "certificate_expired");
  EXPECT_EQ(to_slug(TlsFailure::NoClientCert), "no_client_certificate");
  EXPECT_EQ(to_slug(TlsFailure::NotTls), "not_tls");
  std::set<std::string> seen;
  for (std::size_t f = 0; f < kTlsFailureCount; ++f) {
    const std::string slug(to_slug(static_cast<TlsFailure>(f)));
    EXPECT_EQ(slug.find_first_of("/+# "), std::string::npos) << slug;
    EXPECT_TRUE(seen.insert(slug).second) << slug;
  }
}

TEST(TlsConfig, ParsersAcceptTheTomlSpellings) {
  EXPECT_EQ(parse_client_cert_mode("required"), ClientCertMode::Required);
  EXPECT_EQ(parse_client_cert_mode("yes"), std::nullopt);
  EXPECT_EQ(parse_crl_check("chain"), CrlCheck::Chain);
  EXPECT_EQ(parse_identity_from("san-uri"), IdentityFrom::SanUri);
  EXPECT_EQ(parse_identity_from("uid"), std::nullopt);
  for (auto i : {IdentityFrom::Cn, IdentityFrom::SanDns, IdentityFrom::SanEmail, IdentityFrom::SanUri,
                 IdentityFrom::Subject, IdentityFrom::Psk})
    EXPECT_EQ(parse_identity_from(to_string(i)), i);
}

}  // namespace
}  // namespace moat::security
