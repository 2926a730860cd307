// TLS for moat::client: the context (one SSL_CTX, its trust store, client
// certificate, PSK and the session store) and the transport (an Asio SSL stream
// over TCP). The only file of the client library that includes OpenSSL.
#include "client/tls.hpp"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include "client/tls_transport.hpp"

namespace moat::client {

namespace asio = boost::asio;

// ---------------------------------------------------------------- error category

namespace {

class TlsCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "moat.tls"; }
  std::string message(int v) const override {
    switch (static_cast<TlsErrc>(v)) {
      case TlsErrc::Setup:
        return "TLS cannot be set up";
      case TlsErrc::Verification:
        return "TLS server certificate verification failed";
      case TlsErrc::PeerAlert:
        return "the TLS peer sent an alert";
      case TlsErrc::Handshake:
        return "TLS handshake failed";
      case TlsErrc::ClosedInHandshake:
        return "connection closed during the TLS handshake";
    }
    return "TLS error";
  }
};

// Cipher lists used when TlsOptions leaves them empty: forward secrecy and AEAD
// only, as moatd's listeners (docs/security.md).
constexpr const char* kDefaultCiphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
constexpr const char* kDefaultPskCiphers =
    "ECDHE-PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305";

struct SessionFree {
  void operator()(SSL_SESSION* s) const { SSL_SESSION_free(s); }
};
using SessionPtr = std::unique_ptr<SSL_SESSION, SessionFree>;

// The OpenSSL error queue as one line (most recent reason last), then cleared.
std::string openssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    const char* r = ERR_reason_error_string(e);
    if (!out.empty()) out += "; ";
    out += r ? r : "error " + std::to_string(e);
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

[[noreturn]] void fail(const std::string& what) {
  ERR_clear_error();
  throw TlsSetupError(what);
}

// "cannot read": a clearer reason than OpenSSL's for a missing or unreadable file.
void require_readable(const char* what, const std::string& path, bool dir = false) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(std::string(what) + " '" + path + "': " + std::strerror(errno));
  if (dir != S_ISDIR(st.st_mode))
    fail(std::string(what) + " '" + path + "': " + (dir ? "not a folder" : "is a folder, not a file"));
}

bool is_ip_address(const std::string& s) {
  unsigned char buf[16];
  return ::inet_pton(AF_INET, s.c_str(), buf) == 1 || ::inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

std::string name_text(const X509_NAME* n) {
  if (!n) return {};
  BIO* b = BIO_new(BIO_s_mem());
  X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
  char* data = nullptr;
  const long len = BIO_get_mem_data(b, &data);
  std::string s(data, static_cast<std::size_t>(len));
  BIO_free(b);
  return s;
}

std::string time_text(const ASN1_TIME* t) {
  if (!t) return {};
  BIO* b = BIO_new(BIO_s_mem());
  ASN1_TIME_print(b, t);
  char* data = nullptr;
  const long len = BIO_get_mem_data(b, &data);
  std::string s(data, static_cast<std::size_t>(len));
  BIO_free(b);
  return s;
}

// "DNS:localhost, IP:127.0.0.1" (or "CN=..." when the certificate has no SAN).
std::string names_of(X509* cert) {
  std::string out;
  auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
    std::string item;
    if (g->type == GEN_DNS) {
      item = "DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.dNSName)),
                                  static_cast<std::size_t>(ASN1_STRING_length(g->d.dNSName)));
    } else if (g->type == GEN_IPADD) {
      const int len = ASN1_STRING_length(g->d.iPAddress);
      char buf[INET6_ADDRSTRLEN] = {};
      if (len == 4 || len == 16)
        ::inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(g->d.iPAddress), buf, sizeof buf);
      item = std::string("IP:") + buf;
    } else {
      continue;
    }
    if (!out.empty()) out += ", ";
    out += item;
  }
  GENERAL_NAMES_free(sans);
  if (out.empty()) out = name_text(X509_get_subject_name(cert));
  // Names come from the peer: keep the line printable.
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return out;
}

}  // namespace

const std::error_category& tls_category() {
  static const TlsCategory c;
  return c;
}

// ---------------------------------------------------------------- context

struct TlsContext::Impl {
  TlsOptions opt;
  asio::ssl::context ctx{asio::ssl::context::tls_client};
  std::vector<unsigned char> psk_key;
  mutable std::mutex mutex;
  std::map<std::string, SessionPtr> sessions;  // by server key (see TlsTransport::session_key)

  void build();
  void store(const std::string& key, SSL_SESSION* s) {
    SessionPtr copy(SSL_SESSION_dup(s));
    if (!copy) return;
    std::lock_guard lock(mutex);
    sessions[key] = std::move(copy);
  }
  // A copy of the stored session that the caller frees, or nullptr. A copy:
  // OpenSSL marks the session of a connection freed without a TLS shutdown
  // not resumable, and that must not reach the stored one.
  SSL_SESSION* find(const std::string& key) const {
    std::lock_guard lock(mutex);
    auto it = sessions.find(key);
    if (it == sessions.end() || !SSL_SESSION_is_resumable(it->second.get())) return nullptr;
    return SSL_SESSION_dup(it->second.get());
  }
};

namespace {

class TlsTransport;
TlsTransport* transport_of(SSL* ssl);
int context_index();

TlsContext::Impl* impl_of(SSL* ssl) {
  return static_cast<TlsContext::Impl*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), context_index()));
}

int context_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int transport_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// TLS 1.2 PSK suites.
unsigned int psk_client_cb(SSL* ssl, const char* /*hint*/, char* identity, unsigned int max_identity_len,
                           unsigned char* psk, unsigned int max_psk_len) {
  const TlsContext::Impl* impl = impl_of(ssl);
  if (!impl) return 0;
  const std::string& id = impl->opt.psk_identity;
  if (id.size() + 1 > max_identity_len || impl->psk_key.size() > max_psk_len) return 0;
  std::memcpy(identity, id.c_str(), id.size() + 1);
  std::memcpy(psk, impl->psk_key.data(), impl->psk_key.size());
  return static_cast<unsigned int>(impl->psk_key.size());
}

// TLS 1.3 external PSK: a session made from the key, SHA-256 based (what
// moatd, mosquitto and `openssl s_server -psk` expect).
int psk_use_session_cb(SSL* ssl, const EVP_MD* md, const unsigned char** id, std::size_t* idlen,
                       SSL_SESSION** sess) {
  *sess = nullptr;
  const TlsContext::Impl* impl = impl_of(ssl);
  if (!impl) return 0;
  if (md != nullptr && EVP_MD_get_type(md) != NID_sha256) return 1;  // after a HelloRetryRequest: no PSK
  static constexpr unsigned char kAes128GcmSha256[] = {0x13, 0x01};
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kAes128GcmSha256);
  if (!cipher) return 0;
  SSL_SESSION* s = SSL_SESSION_new();
  if (!s || SSL_SESSION_set1_master_key(s, impl->psk_key.data(), impl->psk_key.size()) != 1 ||
      SSL_SESSION_set_cipher(s, cipher) != 1 || SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION) != 1) {
    SSL_SESSION_free(s);
    return 0;
  }
  *sess = s;
  *id = reinterpret_cast<const unsigned char*>(impl->opt.psk_identity.data());
  *idlen = impl->opt.psk_identity.size();
  return 1;
}

int new_session_cb(SSL* ssl, SSL_SESSION* sess);
int verify_cb(int ok, X509_STORE_CTX* x);

std::vector<unsigned char> hex_key(const std::string& hex) {
  if (hex.empty()) fail("PSK key: empty");
  if (hex.size() % 2 != 0) fail("PSK key: odd number of hexadecimal digits");
  std::vector<unsigned char> out;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    auto digit = [&](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      fail("PSK key: not hexadecimal (" + std::string(1, c) + ")");
    };
    out.push_back(static_cast<unsigned char>(digit(hex[i]) * 16 + digit(hex[i + 1])));
  }
  if (out.size() > PSK_MAX_PSK_LEN)
    fail("PSK key: longer than " + std::to_string(PSK_MAX_PSK_LEN) + " bytes");
  return out;
}

int version_number(const std::string& v, const char* what) {
  if (v == "1.2") return TLS1_2_VERSION;
  if (v == "1.3") return TLS1_3_VERSION;
  fail(std::string(what) + " '" + v + "': expected 1.2 or 1.3 (older versions are not supported)");
}

int password_cb(char* buf, int size, int /*rwflag*/, void* user) {
  const auto* pw = static_cast<const std::string*>(user);
  if (!pw || pw->size() > static_cast<std::size_t>(size)) return -1;
  std::memcpy(buf, pw->data(), pw->size());
  return static_cast<int>(pw->size());
}

}  // namespace

void TlsContext::Impl::build() {
  SSL_CTX* c = ctx.native_handle();
  SSL_CTX_set_ex_data(c, context_index(), this);
  SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  const bool psk = !opt.psk_identity.empty() || !opt.psk_key_hex.empty();

  if (SSL_CTX_set_min_proto_version(c, version_number(opt.min_version, "minimum TLS version")) != 1)
    fail("minimum TLS version: " + openssl_errors());
  if (!opt.max_version.empty()) {
    const int max = version_number(opt.max_version, "maximum TLS version");
    if (max < version_number(opt.min_version, "minimum TLS version"))
      fail("maximum TLS version " + opt.max_version + " is below the minimum " + opt.min_version);
    SSL_CTX_set_max_proto_version(c, max);
  }

  const std::string ciphers = !opt.ciphers.empty() ? opt.ciphers : psk ? kDefaultPskCiphers : kDefaultCiphers;
  if (SSL_CTX_set_cipher_list(c, ciphers.c_str()) != 1)
    fail("ciphers '" + ciphers + "': no cipher of the list is known or allowed");
  if (!opt.ciphersuites.empty() && SSL_CTX_set_ciphersuites(c, opt.ciphersuites.c_str()) != 1)
    fail("TLS 1.3 ciphersuites '" + opt.ciphersuites + "': no suite of the list is known");

  if (!opt.alpn.empty()) {
    std::vector<unsigned char> wire;
    for (const auto& p : opt.alpn) {
      if (p.empty() || p.size() > 255) fail("ALPN protocol '" + p + "': must be 1 to 255 bytes");
      wire.push_back(static_cast<unsigned char>(p.size()));
      wire.insert(wire.end(), p.begin(), p.end());
    }
    if (SSL_CTX_set_alpn_protos(c, wire.data(), static_cast<unsigned int>(wire.size())) != 0)
      fail("ALPN: " + openssl_errors());
  }

  if (psk) {
    if (opt.psk_identity.empty()) fail("PSK: a key needs an identity");
    if (opt.psk_key_hex.empty()) fail("PSK: an identity needs a key");
    if (opt.psk_identity.size() > PSK_MAX_IDENTITY_LEN)
      fail("PSK identity: longer than " + std::to_string(PSK_MAX_IDENTITY_LEN) + " bytes");
    if (!opt.ca_file.empty() || !opt.ca_dir.empty() || !opt.cert_file.empty() || opt.system_trust)
      fail("PSK and certificates exclude each other: give a PSK, or a CA (and a client certificate)");
    psk_key = hex_key(opt.psk_key_hex);
    SSL_CTX_set_psk_client_callback(c, psk_client_cb);
    SSL_CTX_set_psk_use_session_callback(c, psk_use_session_cb);
    // The PSK authenticates the server; a server that answers a TLS 1.3 PSK
    // offer with a certificate instead is refused after the handshake.
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);
    opt.resume_sessions = false;  // a PSK handshake costs no more round trips than a resumption
  } else {
    if (!opt.ca_file.empty()) {
      require_readable("CA file", opt.ca_file);
      if (SSL_CTX_load_verify_file(c, opt.ca_file.c_str()) != 1)
        fail("CA file '" + opt.ca_file +
             "': no certificate could be read (PEM expected): " + openssl_errors());
    }
    if (!opt.ca_dir.empty()) {
      require_readable("CA folder", opt.ca_dir, true);
      if (SSL_CTX_load_verify_dir(c, opt.ca_dir.c_str()) != 1)
        fail("CA folder '" + opt.ca_dir + "': " + openssl_errors());
    }
    if ((opt.ca_file.empty() && opt.ca_dir.empty()) || opt.system_trust) {
      if (SSL_CTX_set_default_verify_paths(c) != 1) fail("system trust store: " + openssl_errors());
    }
    SSL_CTX_set_verify(c, opt.verify == TlsVerify::None ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, verify_cb);
  }

  if (!opt.key_file.empty() && opt.cert_file.empty()) fail("a client key needs a client certificate");
  if (!opt.cert_file.empty()) {
    require_readable("certificate", opt.cert_file);
    if (SSL_CTX_use_certificate_chain_file(c, opt.cert_file.c_str()) != 1)
      fail("certificate '" + opt.cert_file + "': not a PEM certificate: " + openssl_errors());
    const std::string& key_path = opt.key_file.empty() ? opt.cert_file : opt.key_file;
    require_readable("key", key_path);
    std::string pem;
    {
      std::FILE* f = std::fopen(key_path.c_str(), "rb");
      if (!f) fail("key '" + key_path + "': " + std::strerror(errno));
      char buf[4096];
      std::size_t n = 0;
      while ((n = std::fread(buf, 1, sizeof buf, f)) > 0 && pem.size() < (std::size_t{1} << 20))
        pem.append(buf, n);
      std::fclose(f);
    }
    BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    EVP_PKEY* key = b ? PEM_read_bio_PrivateKey(b, nullptr, password_cb, &opt.key_password) : nullptr;
    BIO_free(b);
    const bool encrypted = pem.find("ENCRYPTED") != std::string::npos;
    OPENSSL_cleanse(pem.data(), pem.size());
    if (!key) {
      if (encrypted)
        fail("key '" + key_path +
             "': " + (opt.key_password.empty() ? "encrypted: a password is needed" : "wrong password"));
      fail("key '" + key_path + "': not a PEM private key: " + openssl_errors());
    }
    const int used = SSL_CTX_use_PrivateKey(c, key);
    EVP_PKEY_free(key);
    if (used != 1 || SSL_CTX_check_private_key(c) != 1)
      fail("key '" + key_path + "' does not match certificate '" + opt.cert_file + "'");
  }

  // Sessions go to our store (one per server), not to OpenSSL's cache.
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(c, new_session_cb);
  ERR_clear_error();
}

TlsContext::TlsContext() : impl_(std::make_unique<Impl>()) {}
TlsContext::~TlsContext() = default;

std::shared_ptr<TlsContext> TlsContext::create(const TlsOptions& options) {
  std::shared_ptr<TlsContext> c(new TlsContext());
  c->impl_->opt = options;
  c->impl_->build();
  return c;
}

const TlsOptions& TlsContext::options() const {
  return impl_->opt;
}

void TlsContext::forget_sessions() {
  std::lock_guard lock(impl_->mutex);
  impl_->sessions.clear();
}

std::size_t TlsContext::session_count() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->sessions.size();
}

// ---------------------------------------------------------------- transport

namespace {

using tcp = asio::ip::tcp;

// What the verify callback saw first, for the error message.
struct VerifyFailure {
  int error = X509_V_OK;
  int depth = -1;
  std::string subject;
  std::string issuer;
  std::string names;  // SANs of the leaf
  std::string not_before;
  std::string not_after;
};

class TlsTransport final : public Transport {
 public:
  TlsTransport(asio::io_context& io, std::string host, std::uint16_t port,
               std::shared_ptr<TlsContext> context)
      : resolver_(io),
        context_(std::move(context)),
        stream_(io, context_->impl().ctx),
        host_(std::move(host)),
        port_(port) {
    const auto& o = context_->options();
    name_ = o.server_name.empty() ? host_ : o.server_name;
    if (!name_.empty() && name_.back() == '.') name_.pop_back();
    psk_ = !o.psk_identity.empty();
    SSL_set_ex_data(stream_.native_handle(), transport_index(), this);
  }

  void async_connect(ConnectHandler done) override {
    resolver_.async_resolve(host_, std::to_string(port_),
                            [this, done = std::move(done)](const boost::system::error_code& ec,
                                                           const tcp::resolver::results_type& results) {
                              if (ec) return done(ec, "cannot resolve " + host_ + ": " + ec.message());
                              asio::async_connect(
                                  stream_.next_layer(), results,
                                  [this, done](const boost::system::error_code& cec, const tcp::endpoint&) {
                                    if (cec)
                                      return done(cec, "cannot connect to " + where() + ": " + cec.message());
                                    boost::system::error_code oec;
                                    // Nagle plus delayed ACK would stall small packets by 40 ms.
                                    stream_.next_layer().set_option(tcp::no_delay(true), oec);
                                    handshake(done);
                                  });
                            });
  }

  void async_read_some(std::span<std::uint8_t> into, IoHandler done) override {
    stream_.async_read_some(asio::buffer(into.data(), into.size()),
                            [this, done = std::move(done)](const boost::system::error_code& ec,
                                                           std::size_t n) { done(translate(ec), n); });
  }

  void async_write(std::span<const std::uint8_t> bytes, IoHandler done) override {
    asio::async_write(stream_, asio::buffer(bytes.data(), bytes.size()),
                      [this, done = std::move(done)](const boost::system::error_code& ec, std::size_t n) {
                        done(translate(ec), n);
                      });
  }

  void close() override {
    resolver_.cancel();
    boost::system::error_code ec;
    stream_.lowest_layer().close(ec);
  }

  std::string describe(const std::error_code& ec) const override {
    if (ec.category() == tls_category() && !last_error_.empty()) return last_error_;
    return ec.message();
  }

  TlsInfo tls_info() const override { return info_; }

  // Called by OpenSSL (verify_cb, new_session_cb).
  void on_verify_failure(X509_STORE_CTX* x) {
    if (failure_.error != X509_V_OK) return;
    failure_.error = X509_STORE_CTX_get_error(x);
    failure_.depth = X509_STORE_CTX_get_error_depth(x);
    if (X509* c = X509_STORE_CTX_get_current_cert(x)) {
      failure_.subject = name_text(X509_get_subject_name(c));
      failure_.issuer = name_text(X509_get_issuer_name(c));
      failure_.names = names_of(c);
      failure_.not_before = time_text(X509_get0_notBefore(c));
      failure_.not_after = time_text(X509_get0_notAfter(c));
    }
  }
  void on_new_session(SSL_SESSION* s) {
    if (context_->options().resume_sessions && SSL_SESSION_is_resumable(s))
      context_->impl().store(session_key(), s);
  }

 private:
  std::string where() const { return host_ + ":" + std::to_string(port_); }
  std::string session_key() const { return host_ + "|" + name_ + "|" + std::to_string(port_); }

  void handshake(const ConnectHandler& done) {
    SSL* ssl = stream_.native_handle();
    const auto& o = context_->options();
    if (!psk_ && o.verify == TlsVerify::Full) {
      if (name_.empty()) return done(TlsErrc::Setup, "TLS needs a host name or address to verify");
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
      X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      const bool ok = is_ip_address(name_) ? X509_VERIFY_PARAM_set1_ip_asc(param, name_.c_str()) == 1
                                           : SSL_set1_host(ssl, name_.c_str()) == 1;
      if (!ok) return done(TlsErrc::Setup, "cannot check the server certificate against '" + name_ + "'");
    }
    // RFC 6066 3: SNI carries host names only, never an address literal.
    if (!name_.empty() && !is_ip_address(name_))  // SSL_set_tlsext_host_name, without its C cast
      SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
               const_cast<char*>(name_.c_str()));
    if (o.resume_sessions) {
      if (SSL_SESSION* s = context_->impl().find(session_key())) {
        SSL_set_session(ssl, s);
        SSL_SESSION_free(s);
        offered_session_ = true;
      }
    }
    stream_.async_handshake(
        asio::ssl::stream_base::client, [this, done](const boost::system::error_code& ec) {
          if (ec == asio::error::operation_aborted) return done(ec, "closed");
          if (ec) {
            const TlsErrc code = classify(ec);
            return done(code, "TLS handshake with " + where() + " failed: " + last_error_);
          }
          SSL* s = stream_.native_handle();
          if (psk_ && SSL_version(s) == TLS1_3_VERSION && !SSL_session_reused(s)) {
            last_error_ = "the broker did not accept PSK identity '" + context_->options().psk_identity +
                          "' (it answered with a certificate)";
            return done(TlsErrc::PeerAlert, "TLS handshake with " + where() + " failed: " + last_error_);
          }
          info_.version = SSL_get_version(s);
          if (const SSL_CIPHER* c = SSL_get_current_cipher(s)) info_.cipher = SSL_CIPHER_get_name(c);
          const unsigned char* alpn = nullptr;
          unsigned int alpn_len = 0;
          SSL_get0_alpn_selected(s, &alpn, &alpn_len);
          if (alpn) info_.alpn.assign(reinterpret_cast<const char*>(alpn), alpn_len);
          if (X509* peer = SSL_get0_peer_certificate(s))
            info_.peer_subject = name_text(X509_get_subject_name(peer));
          if (psk_) info_.psk_identity = context_->options().psk_identity;
          info_.resumed = offered_session_ && SSL_session_reused(s) == 1;
          done({}, {});
        });
  }

  // Maps an error of the SSL stream to a TlsErrc and explains it in last_error_.
  std::error_code translate(const boost::system::error_code& ec) {
    if (!ec || ec.category() != asio::error::get_ssl_category()) return ec;
    if (ec == asio::ssl::error::stream_truncated) return ec;  // the TCP connection ended without close_notify
    return classify(ec);
  }

  TlsErrc classify(const boost::system::error_code& ec) {
    const auto& o = context_->options();
    if (ec.category() != asio::error::get_ssl_category() || ec == asio::ssl::error::stream_truncated) {
      last_error_ = "the broker closed the connection during the handshake (" +
                    (ec == asio::ssl::error::stream_truncated ? std::string("no TLS alert") : ec.message()) +
                    "; is " + std::to_string(port_) + " a TLS port?" +
                    (psk_ ? " does it know PSK identity '" + o.psk_identity + "'?" : "") + ")";
      return TlsErrc::ClosedInHandshake;
    }
    const unsigned long e = static_cast<unsigned long>(ec.value());
    const int reason = ERR_GET_REASON(e);
    if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
      last_error_ = verify_text(SSL_get_verify_result(stream_.native_handle()));
      return TlsErrc::Verification;
    }
    if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
      last_error_ = alert_text(reason - SSL_AD_REASON_OFFSET);
      return TlsErrc::PeerAlert;
    }
    const char* r = ERR_reason_error_string(e);
    std::string text = r ? r : ec.message();
    if (reason == SSL_R_NO_CIPHERS_AVAILABLE || reason == SSL_R_NO_SHARED_CIPHER)
      text += " (check --ciphers / --tls-version)";
    if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG ||
        reason == SSL_R_RECORD_LENGTH_MISMATCH)
      text += " (is " + std::to_string(port_) + " a TLS port?)";
    last_error_ = text;
    return TlsErrc::Handshake;
  }

  std::string verify_text(long result) const {
    const int err = failure_.error != X509_V_OK ? failure_.error : static_cast<int>(result);
    const bool leaf = failure_.depth <= 0;
    const std::string which =
        leaf ? "server certificate" : "CA certificate '" + failure_.subject + "' of the server";
    switch (err) {
      case X509_V_ERR_HOSTNAME_MISMATCH:
      case X509_V_ERR_IP_ADDRESS_MISMATCH:
      case X509_V_ERR_EMAIL_MISMATCH:
        return "server certificate does not match host name '" + name_ + "' (it is for " + failure_.names +
               ")";
      case X509_V_ERR_CERT_HAS_EXPIRED:
        return which + " expired on " + failure_.not_after;
      case X509_V_ERR_CERT_NOT_YET_VALID:
        return which + " is not valid before " + failure_.not_before;
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
      case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
      case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
      case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        return "server certificate issued by an unknown CA '" + failure_.issuer + "' (not in " +
               trust_text() + ")";
      case X509_V_ERR_CERT_REVOKED:
        return which + " is revoked";
      case X509_V_ERR_INVALID_PURPOSE:
        return which + " is not allowed for TLS servers (extended key usage)";
      case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        return which + " has a signature that does not verify";
      default:
        return which + " did not verify: " + X509_verify_cert_error_string(err);
    }
  }

  std::string trust_text() const {
    const auto& o = context_->options();
    std::string t;
    if (!o.ca_file.empty()) t = "CA file '" + o.ca_file + "'";
    if (!o.ca_dir.empty()) t += (t.empty() ? "" : ", ") + std::string("CA folder '") + o.ca_dir + "'";
    if (t.empty() || o.system_trust) t += (t.empty() ? "" : ", ") + std::string("the system trust store");
    return t;
  }

  // OpenSSL 3.0 has no long names for the TLS 1.3 era alerts.
  static std::string alert_name(int alert) {
    switch (alert) {
      case SSL_AD_MISSING_EXTENSION:
        return "missing extension";
      case SSL_AD_UNRECOGNIZED_NAME:
        return "unrecognized name";
      case SSL_AD_UNKNOWN_PSK_IDENTITY:
        return "unknown PSK identity";
      case SSL_AD_CERTIFICATE_REQUIRED:
        return "certificate required";
      case SSL_AD_NO_APPLICATION_PROTOCOL:
        return "no application protocol";
      default:
        return SSL_alert_desc_string_long(alert);
    }
  }

  std::string alert_text(int alert) const {
    const auto& o = context_->options();
    const std::string name = "alert '" + alert_name(alert) + "'";
    const bool sent_cert = !o.cert_file.empty();
    switch (alert) {
      case SSL_AD_UNKNOWN_CA:
      case SSL_AD_BAD_CERTIFICATE:
      case SSL_AD_UNSUPPORTED_CERTIFICATE:
      case SSL_AD_CERTIFICATE_REVOKED:
      case SSL_AD_CERTIFICATE_EXPIRED:
      case SSL_AD_CERTIFICATE_UNKNOWN:
        if (sent_cert) return "the broker rejected our client certificate (" + name + ")";
        return "the broker refused the handshake (" + name + ")";
      case SSL_AD_CERTIFICATE_REQUIRED:
        return "the broker requires a client certificate (" + name + ")";
      case SSL_AD_HANDSHAKE_FAILURE:
        if (psk_)
          return "the broker refused the handshake (" + name + "; does it know PSK identity '" +
                 o.psk_identity + "' with this key?)";
        if (!sent_cert)
          return "the broker refused the handshake (" + name + "; does it require a client certificate?)";
        return "the broker refused the handshake (" + name + "; no shared cipher or version?)";
      case SSL_AD_PROTOCOL_VERSION:
        return "the broker does not accept the TLS versions offered (" + name + ")";
      case SSL_AD_UNKNOWN_PSK_IDENTITY:
        return "the broker does not know PSK identity '" + o.psk_identity + "' (" + name + ")";
      case SSL_AD_DECRYPT_ERROR:
      case SSL_AD_BAD_RECORD_MAC:
      case SSL_AD_ILLEGAL_PARAMETER:
        if (psk_)
          return "the broker rejected the key of PSK identity '" + o.psk_identity + "' (" + name + ")";
        return "the broker refused the handshake (" + name + ")";
      case SSL_AD_NO_APPLICATION_PROTOCOL:
        return "the broker accepts none of the ALPN protocols offered (" + name + ")";
      case SSL_AD_ACCESS_DENIED:
        return "the broker denied access (" + name + ")";
      default:
        return "the broker sent " + name;
    }
  }

  tcp::resolver resolver_;
  std::shared_ptr<TlsContext> context_;
  asio::ssl::stream<tcp::socket> stream_;
  std::string host_;
  std::uint16_t port_;
  std::string name_;  // verified and sent as SNI
  bool psk_ = false;
  bool offered_session_ = false;
  VerifyFailure failure_;
  std::string last_error_;
  TlsInfo info_;
};

TlsTransport* transport_of(SSL* ssl) {
  return static_cast<TlsTransport*>(SSL_get_ex_data(ssl, transport_index()));
}

int verify_cb(int ok, X509_STORE_CTX* x) {
  if (ok) return ok;
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx()));
  TlsTransport* t = ssl ? transport_of(ssl) : nullptr;
  if (t) t->on_verify_failure(x);
  return ok;
}

int new_session_cb(SSL* ssl, SSL_SESSION* sess) {
  if (TlsTransport* t = transport_of(ssl)) t->on_new_session(sess);
  return 0;  // we kept a copy, not this reference
}

}  // namespace

namespace detail {

std::unique_ptr<Transport> make_tls_transport(asio::io_context& io, std::string host, std::uint16_t port,
                                              std::shared_ptr<TlsContext> context) {
  return std::make_unique<TlsTransport>(io, std::move(host), port, std::move(context));
}

}  // namespace detail

}  // namespace moat::client
