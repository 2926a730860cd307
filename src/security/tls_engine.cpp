// TlsEngine: one server-side SSL* over memory BIOs, and the failure words.
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <array>
#include <climits>
#include <cstring>
#include <utility>
#include <vector>

#include "security/tls.hpp"
#include "security/tls_internal.hpp"

namespace moat::security {

std::string_view to_string(TlsFailure f) {
  switch (f) {
    case TlsFailure::None:
      return "none";
    case TlsFailure::UnknownCa:
      return "unknown CA";
    case TlsFailure::CertExpired:
      return "certificate expired";
    case TlsFailure::CertNotYetValid:
      return "certificate not yet valid";
    case TlsFailure::CertRevoked:
      return "certificate revoked";
    case TlsFailure::CertBadPurpose:
      return "certificate not for client authentication";
    case TlsFailure::CertInvalid:
      return "invalid certificate";
    case TlsFailure::CrlProblem:
      return "CRL problem";
    case TlsFailure::NoClientCert:
      return "no client certificate";
    case TlsFailure::NoSharedCipher:
      return "no shared cipher";
    case TlsFailure::ProtocolVersion:
      return "protocol version too old";
    case TlsFailure::NotTls:
      return "not TLS";
    case TlsFailure::PskUnknownIdentity:
      return "PSK identity unknown";
    case TlsFailure::PskMismatch:
      return "PSK key mismatch";
    case TlsFailure::NoApplicationProtocol:
      return "no application protocol";
    case TlsFailure::PeerAlert:
      return "peer alert";
    case TlsFailure::BufferLimit:
      return "buffer limit";
    case TlsFailure::Protocol:
      return "TLS protocol error";
    case TlsFailure::Count:
      break;
  }
  return "?";
}

std::string_view to_slug(TlsFailure f) {
  switch (f) {
    case TlsFailure::None:
      return "none";
    case TlsFailure::UnknownCa:
      return "unknown_ca";
    case TlsFailure::CertExpired:
      return "certificate_expired";
    case TlsFailure::CertNotYetValid:
      return "certificate_not_yet_valid";
    case TlsFailure::CertRevoked:
      return "certificate_revoked";
    case TlsFailure::CertBadPurpose:
      return "certificate_bad_purpose";
    case TlsFailure::CertInvalid:
      return "certificate_invalid";
    case TlsFailure::CrlProblem:
      return "crl_problem";
    case TlsFailure::NoClientCert:
      return "no_client_certificate";
    case TlsFailure::NoSharedCipher:
      return "no_shared_cipher";
    case TlsFailure::ProtocolVersion:
      return "protocol_version";
    case TlsFailure::NotTls:
      return "not_tls";
    case TlsFailure::PskUnknownIdentity:
      return "psk_unknown_identity";
    case TlsFailure::PskMismatch:
      return "psk_mismatch";
    case TlsFailure::NoApplicationProtocol:
      return "no_application_protocol";
    case TlsFailure::PeerAlert:
      return "peer_alert";
    case TlsFailure::BufferLimit:
      return "buffer_limit";
    case TlsFailure::Protocol:
    case TlsFailure::Count:
      break;
  }
  return "protocol";
}

namespace {

constexpr std::size_t kReadChunk = 16 * 1024;

std::string name_rfc2253(const X509_NAME* name) {
  BIO* b = BIO_new(BIO_s_mem());
  std::string out;
  if (b && X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0) {
    char* data = nullptr;
    const long n = BIO_get_mem_data(b, &data);
    out.assign(data, static_cast<std::size_t>(n));
  }
  BIO_free(b);
  return out;
}

// An ASN.1 string as UTF-8; "" if it holds a NUL (an identity must not be truncatable).
std::string asn1_utf8(const ASN1_STRING* s) {
  unsigned char* utf8 = nullptr;
  const int n = ASN1_STRING_to_UTF8(&utf8, s);
  if (n < 0) return {};
  std::string out(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(n));
  OPENSSL_free(utf8);
  if (out.find('\0') != std::string::npos) return {};
  return out;
}

struct VerifyWords {
  TlsFailure failure;
  std::string_view words;
};

VerifyWords verify_words(long code) {
  switch (code) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
      return {TlsFailure::UnknownCa, "unknown CA"};
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return {TlsFailure::CertExpired, "certificate expired"};
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return {TlsFailure::CertNotYetValid, "certificate not yet valid"};
    case X509_V_ERR_CERT_REVOKED:
      return {TlsFailure::CertRevoked, "certificate revoked"};
    case X509_V_ERR_INVALID_PURPOSE:
    case X509_V_ERR_KEYUSAGE_NO_DIGITAL_SIGNATURE:
    case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
    case X509_V_ERR_INVALID_CA:
    case X509_V_ERR_CERT_REJECTED:
      return {TlsFailure::CertBadPurpose,
              "certificate not allowed for client authentication (purpose / key usage)"};
    case X509_V_ERR_UNABLE_TO_GET_CRL:
      return {TlsFailure::CrlProblem, "no CRL for the certificate's issuer"};
    case X509_V_ERR_CRL_HAS_EXPIRED:
      return {TlsFailure::CrlProblem, "CRL expired"};
    case X509_V_ERR_CRL_NOT_YET_VALID:
      return {TlsFailure::CrlProblem, "CRL not yet valid"};
    case X509_V_ERR_CRL_SIGNATURE_FAILURE:
    case X509_V_ERR_UNABLE_TO_DECRYPT_CRL_SIGNATURE:
      return {TlsFailure::CrlProblem, "CRL signature does not verify"};
    case X509_V_ERR_CERT_CHAIN_TOO_LONG:
    case X509_V_ERR_PATH_LENGTH_EXCEEDED:
      return {TlsFailure::CertInvalid, "certificate chain too long (verify_depth)"};
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_UNABLE_TO_DECRYPT_CERT_SIGNATURE:
      return {TlsFailure::CertInvalid, "bad certificate signature"};
    default:
      return {TlsFailure::CertInvalid, {}};
  }
}

// Peer-supplied text (a PSK identity) made safe for one log line.
std::string printable(std::string_view s) {
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out.push_back(ch);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

bool is_one_of(int reason, std::initializer_list<int> reasons) {
  for (int r : reasons)
    if (reason == r) return true;
  return false;
}

}  // namespace

std::string certificate_fingerprint_sha256(const X509* cert) {
  if (!cert) return {};
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (X509_digest(cert, EVP_sha256(), md, &n) != 1) return {};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (unsigned int i = 0; i < n; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

std::string certificate_identity(const X509* cert, IdentityFrom from) {
  if (!cert) return {};
  switch (from) {
    case IdentityFrom::Psk:
      return {};
    case IdentityFrom::Subject:
      return name_rfc2253(X509_get_subject_name(cert));
    case IdentityFrom::Cn: {
      // Exactly one CN: with several, which one is "the" identity is ambiguous.
      const X509_NAME* name = X509_get_subject_name(cert);
      const int first = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
      if (first < 0 || X509_NAME_get_index_by_NID(name, NID_commonName, first) >= 0) return {};
      return asn1_utf8(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, first)));
    }
    case IdentityFrom::SanDns:
    case IdentityFrom::SanEmail:
    case IdentityFrom::SanUri: {
      const int type = from == IdentityFrom::SanDns     ? GEN_DNS
                       : from == IdentityFrom::SanEmail ? GEN_EMAIL
                                                        : GEN_URI;
      auto* names =
          static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
      if (!names) return {};
      std::string out;
      for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
        const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
        if (g->type != type) continue;
        out = asn1_utf8(g->d.ia5);  // dNSName, rfc822Name and URI are IA5Strings
        break;
      }
      GENERAL_NAMES_free(names);
      return out;
    }
  }
  return {};
}

// What an idle established connection keeps here is this struct (about 72 B)
// and SSL's own state: the buffers are allocated while bytes pass through,
// the strings that a PSK, a client certificate or a failure fill are in
// `rare`, and what SSL knows already (version, cipher, ALPN, SNI) is asked
// of SSL.
struct TlsEngine::Impl : tls_detail::ConnectionHooks {
  std::shared_ptr<const TlsServerContext> context;
  SSL* ssl = nullptr;
  // Bytes on their way through, allocated while any are held: an idle
  // connection holds none, and these are most of what it would keep here.
  struct Buffers {
    // Ciphertext from the socket that SSL has not read yet: a view of the bytes
    // being fed, or of `input` (what a feed left over, kept for the next one).
    std::span<const std::uint8_t> in;
    std::vector<std::uint8_t> input;
    std::vector<std::uint8_t> plain;
    std::vector<std::uint8_t> cipher;
  };
  std::unique_ptr<Buffers> io;
  Buffers& bufs() {
    if (!io) io = std::make_unique<Buffers>();
    return *io;
  }
  // Frees the buffers once nothing is in them (their capacity goes too).
  void release_idle() {
    if (io && io->in.empty() && io->input.empty() && io->plain.empty() && io->cipher.empty()) io.reset();
  }
  // The accept time until the handshake completes, then how long it took
  // (`timed`): one field, as nothing needs the accept time afterwards.
  Clock::duration start_or_duration{};
  TlsState state = TlsState::Handshaking;
  TlsFailure failure = TlsFailure::None;
  bool peer_closed = false;
  bool resumed = false;
  bool completed = false;  // the handshake completed (version() and cipher() known)
  bool timed = false;      // `duration` is known

  ~Impl() { SSL_free(ssl); }  // frees the BIO

  void fail(TlsFailure f, std::string words) {
    state = TlsState::Failed;
    failure = f;
    set().error = std::move(words);
    ERR_clear_error();
  }
  std::vector<std::uint8_t>* pending_app() { return rare ? &rare->pending_app : nullptr; }
  // Keeps what SSL left of the bytes just fed (in) for the next feed.
  void keep_unread();
  bool check_limits();
  void handshake();
  void on_established();
  void read_records();
  void encrypt(std::span<const std::uint8_t> app);
  void fail_from_openssl(int ssl_error);
};

// One BIO of our own between SSL and the socket, in both directions: SSL reads
// the ciphertext being fed where it lies and writes records straight into
// `cipher`. Two memory BIOs cost each connection two BIOs and four BUF_MEMs
// (about 450 B while idle, docs/benchmarks.md "Memory per idle connection"),
// and a copy of every byte each way.
namespace {

TlsEngine::Impl* engine_of(BIO* b) {
  return static_cast<TlsEngine::Impl*>(BIO_get_data(b));
}

int engine_bio_write(BIO* b, const char* data, std::size_t len, std::size_t* written) {
  auto& cipher = engine_of(b)->bufs().cipher;
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(data);
  cipher.insert(cipher.end(), bytes, bytes + len);
  *written = len;
  return 1;
}

int engine_bio_read(BIO* b, char* data, std::size_t len, std::size_t* read) {
  TlsEngine::Impl* e = engine_of(b);
  BIO_clear_retry_flags(b);
  if (!e->io || e->io->in.empty()) {
    BIO_set_retry_read(b);  // no input yet means "want more", not EOF
    *read = 0;
    return 0;
  }
  auto& in = e->io->in;
  const std::size_t n = std::min(len, in.size());
  std::memcpy(data, in.data(), n);
  in = in.subspan(n);
  *read = n;
  return 1;
}

long engine_bio_ctrl(BIO* b, int cmd, long num, void* ptr) {
  (void)num;
  (void)ptr;
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_PENDING: {
      const TlsEngine::Impl* e = engine_of(b);
      return e->io ? static_cast<long>(std::min<std::size_t>(e->io->in.size(), LONG_MAX)) : 0;
    }
    default:
      // BIO_CTRL_WPENDING among them: written bytes are in `cipher` at once.
      return 0;
  }
}

int engine_bio_create(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

int engine_bio_type() {
  static const int type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK;
  return type;
}

const BIO_METHOD* engine_bio_method() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(engine_bio_type(), "moat TLS engine");
    if (!m) return m;
    BIO_meth_set_write_ex(m, engine_bio_write);
    BIO_meth_set_read_ex(m, engine_bio_read);
    BIO_meth_set_ctrl(m, engine_bio_ctrl);
    BIO_meth_set_create(m, engine_bio_create);
    return m;
  }();
  return method;
}

}  // namespace

tls_detail::ConnectionHooks* tls_detail::hooks_of(SSL* ssl) {
  BIO* b = SSL_get_rbio(ssl);
  if (!b || BIO_method_type(b) != engine_bio_type()) return nullptr;
  return engine_of(b);
}

void TlsEngine::Impl::keep_unread() {
  if (!io) return;
  auto& in = io->in;
  auto& input = io->input;
  if (!input.empty()) {  // `in` is what is left of it
    if (in.empty())
      std::vector<std::uint8_t>().swap(input);  // idle: hold nothing
    else
      input.erase(input.begin(), input.begin() + static_cast<std::ptrdiff_t>(input.size() - in.size()));
  } else if (!in.empty()) {
    input.assign(in.begin(), in.end());  // a view of the caller's bytes
  }
  in = std::span<const std::uint8_t>(input);
}

bool TlsEngine::Impl::check_limits() {
  const TlsServerConfig& c = context->config();
  const std::vector<std::uint8_t>* pending = pending_app();
  const std::size_t plain = io ? io->plain.size() : 0;
  const std::size_t cipher = io ? io->cipher.size() : 0;
  if (plain > c.max_plaintext_backlog || (pending && pending->size() > c.max_ciphertext_backlog)) {
    fail(TlsFailure::BufferLimit, "buffer limit: more than " + std::to_string(c.max_plaintext_backlog) +
                                      " decrypted bytes not consumed");
    return false;
  }
  if (cipher > c.max_ciphertext_backlog) {
    fail(TlsFailure::BufferLimit,
         "buffer limit: more than " + std::to_string(c.max_ciphertext_backlog) + " encrypted bytes not sent");
    return false;
  }
  return true;
}

void TlsEngine::Impl::handshake() {
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl);
  if (r == 1) return on_established();
  const int e = SSL_get_error(ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
  fail_from_openssl(e);
}

void TlsEngine::Impl::on_established() {
  state = TlsState::Established;
  completed = true;
  resumed = SSL_session_reused(ssl) == 1 && !psk_external;
  if (!psk_used && resumed) {
    // TLS 1.2 PSK sessions resumed from a ticket keep their identity in the session.
    if (const char* id = SSL_get_psk_identity(ssl)) {
      psk_used = true;
      set().psk_identity = id;
    }
  }
  const X509* peer = SSL_get0_peer_certificate(ssl);
  const TlsServerConfig& cfg = context->config();
  if (psk_used)
    set().identity = psk_identity();
  else if (peer)
    if (std::string id = certificate_identity(peer, cfg.identity_from); !id.empty())
      set().identity = std::move(id);
  if (!timed && start_or_duration != Clock::duration{} && now != Clock::time_point{}) {
    start_or_duration = now - Clock::time_point(start_or_duration);
    timed = true;
  }

  // A resumed session skipped certificate checks: apply the current CRLs and mode.
  if (peer && context->revoked(peer)) {
    set().verify_subject = name_rfc2253(X509_get_subject_name(peer));
    return fail(TlsFailure::CertRevoked, "certificate revoked: " + verify_subject());
  }
  // ... and the certificate's validity now: a session lives as long as its
  // ticket key (up to ticket_key_rotation), the certificate perhaps not.
  if (peer && resumed && X509_cmp_current_time(X509_get0_notAfter(peer)) < 0) {
    set().verify_subject = name_rfc2253(X509_get_subject_name(peer));
    return fail(TlsFailure::CertExpired, "certificate expired: " + verify_subject());
  }
  if (!peer && !psk_used && cfg.client_cert == ClientCertMode::Required)
    return fail(TlsFailure::NoClientCert, "no client certificate");

  if (std::vector<std::uint8_t>* pending = pending_app(); pending && !pending->empty()) {
    std::vector<std::uint8_t> app;
    app.swap(*pending);
    encrypt(app);
  }
}

void TlsEngine::Impl::read_records() {
  while (state == TlsState::Established) {
    if (!check_limits()) return;
    // Records are decrypted into one buffer per thread and appended: the
    // plaintext buffer of a connection grows to what arrived, not to a record.
    thread_local std::array<std::uint8_t, kReadChunk> record;
    std::size_t n = 0;
    ERR_clear_error();
    const int r = SSL_read_ex(ssl, record.data(), record.size(), &n);
    if (r == 1) {
      auto& plain = bufs().plain;
      plain.insert(plain.end(), record.data(), record.data() + n);
      continue;
    }
    const int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
    if (e == SSL_ERROR_ZERO_RETURN) {
      state = TlsState::Closed;
      peer_closed = true;
      return;
    }
    fail_from_openssl(e);
  }
}

void TlsEngine::Impl::encrypt(std::span<const std::uint8_t> app) {
  while (!app.empty() && state == TlsState::Established) {
    std::size_t written = 0;
    ERR_clear_error();
    const int r = SSL_write_ex(ssl, app.data(), app.size(), &written);
    if (r != 1) {
      const int e = SSL_get_error(ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) continue;  // memory BIOs never block
      return fail_from_openssl(e);
    }
    app = app.subspan(written);
  }
}

void TlsEngine::Impl::fail_from_openssl(int ssl_error) {
  // The first SSL-library error says why; alerts from the peer appear as
  // reasons SSL_AD_REASON_OFFSET + alert.
  int reason = 0;
  std::string reason_text;
  for (int i = 0;; ++i) {
    const unsigned long e = ERR_get_error();
    if (e == 0) break;
    if (reason == 0 && ERR_GET_LIB(e) == ERR_LIB_SSL) {
      reason = ERR_GET_REASON(e);
      if (const char* s = ERR_reason_error_string(e)) reason_text = s;
    }
    if (reason_text.empty())
      if (const char* s = ERR_reason_error_string(e)) reason_text = s;
    (void)i;
  }
  const long vr = SSL_get_verify_result(ssl);
  const std::string who = verify_subject().empty() ? std::string() : ": " + verify_subject();
  if (vr != X509_V_OK && (reason == SSL_R_CERTIFICATE_VERIFY_FAILED || reason == 0)) {
    const VerifyWords w = verify_words(vr);
    const std::string words =
        w.words.empty() ? std::string(X509_verify_cert_error_string(vr)) : std::string(w.words);
    return fail(w.failure, words + who);
  }
  if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
    const int alert = reason - SSL_AD_REASON_OFFSET;
    return fail(TlsFailure::PeerAlert, std::string("peer sent alert: ") + SSL_alert_desc_string_long(alert));
  }
  if (is_one_of(reason,
                {SSL_R_NO_SHARED_CIPHER, SSL_R_NO_SHARED_GROUPS, SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM,
                 SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS, SSL_R_NO_CIPHERS_AVAILABLE})) {
    if (psk_unknown)
      return fail(TlsFailure::PskUnknownIdentity,
                  "PSK identity unknown: '" + printable(psk_identity()) + "'");
    return fail(TlsFailure::NoSharedCipher, "no shared cipher (" + reason_text + ")");
  }
  if (is_one_of(reason, {SSL_R_UNSUPPORTED_PROTOCOL, SSL_R_VERSION_TOO_LOW, SSL_R_UNSUPPORTED_SSL_VERSION,
                         SSL_R_WRONG_SSL_VERSION, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION}))
    return fail(TlsFailure::ProtocolVersion,
                "protocol version too old (minimum TLS " + context->config().min_version + ")");
  if (is_one_of(reason, {SSL_R_WRONG_VERSION_NUMBER, SSL_R_HTTP_REQUEST, SSL_R_HTTPS_PROXY_REQUEST,
                         SSL_R_UNKNOWN_PROTOCOL, SSL_R_PACKET_LENGTH_TOO_LONG, SSL_R_RECORD_LENGTH_MISMATCH,
                         SSL_R_WRONG_VERSION_NUMBER, SSL_R_UNEXPECTED_MESSAGE, SSL_R_UNEXPECTED_RECORD}) &&
      SSL_get_state(ssl) == TLS_ST_BEFORE)
    return fail(TlsFailure::NotTls, "not TLS (" + reason_text + "): plaintext on a TLS port?");
  if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
    return fail(TlsFailure::NoClientCert, "no client certificate");
  if (reason == SSL_R_PSK_IDENTITY_NOT_FOUND)
    return fail(TlsFailure::PskUnknownIdentity, "PSK identity unknown: '" + printable(psk_identity()) + "'");
  if (reason == SSL_R_BINDER_DOES_NOT_VERIFY ||
      (psk_used && is_one_of(reason, {SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC, SSL_R_DIGEST_CHECK_FAILED,
                                      SSL_R_DECRYPTION_FAILED})))
    return fail(TlsFailure::PskMismatch, "PSK key mismatch for identity '" + printable(psk_identity()) + "'");
  if (reason == SSL_R_NO_APPLICATION_PROTOCOL)
    return fail(TlsFailure::NoApplicationProtocol,
                "no application protocol: the client did not offer \"mqtt\" in ALPN");
  if (psk_unknown && state == TlsState::Handshaking)
    return fail(TlsFailure::PskUnknownIdentity, "PSK identity unknown: '" + printable(psk_identity()) + "'");
  if (ssl_error == SSL_ERROR_SYSCALL && reason_text.empty()) reason_text = "unexpected end of input";
  return fail(TlsFailure::Protocol,
              "TLS protocol error: " + (reason_text.empty() ? std::string("unknown") : reason_text));
}

// ---------------------------------------------------------------- TlsEngine

TlsEngine::TlsEngine(std::shared_ptr<const TlsServerContext> context, Clock::time_point start)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.context = std::move(context);
  m.start_or_duration = start.time_since_epoch();
  m.ssl = SSL_new(m.context->native_handle());
  const BIO_METHOD* method = engine_bio_method();
  BIO* bio = method ? BIO_new(method) : nullptr;
  if (!m.ssl || !bio) {
    BIO_free(bio);
    m.fail(TlsFailure::Protocol, "TLS protocol error: out of memory");
    return;
  }
  BIO_set_data(bio, &m);         // hooks_of(ssl) finds the engine here
  SSL_set_bio(m.ssl, bio, bio);  // one reference, owned by ssl from here
  SSL_set_accept_state(m.ssl);
}

TlsEngine::TlsEngine() noexcept = default;
TlsEngine::~TlsEngine() = default;
TlsEngine::TlsEngine(TlsEngine&&) noexcept = default;
TlsEngine& TlsEngine::operator=(TlsEngine&&) noexcept = default;

void TlsEngine::feed(std::span<const std::uint8_t> from_socket, Clock::time_point now) {
  Impl& m = *impl_;
  if (m.state == TlsState::Failed || m.state == TlsState::Closed) return;
  if (now != Clock::time_point{}) m.now = now;
  Impl::Buffers& b = m.bufs();
  if (b.input.empty()) {
    b.in = from_socket;  // read where it lies
  } else {
    b.input.insert(b.input.end(), from_socket.begin(), from_socket.end());  // behind what is left
    b.in = std::span<const std::uint8_t>(b.input);
  }
  if (m.state == TlsState::Handshaking) m.handshake();
  if (m.state == TlsState::Established) m.read_records();
  m.keep_unread();  // before from_socket's bytes go away
  if (m.state == TlsState::Established || m.state == TlsState::Handshaking) m.check_limits();
  m.release_idle();
}

void TlsEngine::write(std::span<const std::uint8_t> app) {
  Impl& m = *impl_;
  if (m.state == TlsState::Handshaking) {
    std::vector<std::uint8_t>& pending = m.set().pending_app;
    pending.insert(pending.end(), app.begin(), app.end());
  } else if (m.state == TlsState::Established) {
    m.encrypt(app);
  } else {
    return;
  }
  m.check_limits();
}

void TlsEngine::close_notify() {
  Impl& m = *impl_;
  if (m.state == TlsState::Established) {
    ERR_clear_error();
    SSL_shutdown(m.ssl);
    ERR_clear_error();
  }
  if (m.state != TlsState::Failed) m.state = TlsState::Closed;
}

std::vector<std::uint8_t>& TlsEngine::plaintext() {
  return impl_->bufs().plain;
}
std::vector<std::uint8_t>& TlsEngine::ciphertext() {
  return impl_->bufs().cipher;
}
bool TlsEngine::has_plaintext() const {
  return impl_->io && !impl_->io->plain.empty();
}
bool TlsEngine::has_ciphertext() const {
  return impl_->io && !impl_->io->cipher.empty();
}
bool TlsEngine::holds_buffers() const {
  return impl_->io != nullptr;
}
void TlsEngine::release_idle_buffers() {
  impl_->release_idle();
}
std::vector<std::uint8_t> TlsEngine::take_plaintext() {
  std::vector<std::uint8_t> out = std::exchange(impl_->bufs().plain, {});
  impl_->release_idle();
  return out;
}
std::vector<std::uint8_t> TlsEngine::take_ciphertext() {
  std::vector<std::uint8_t> out = std::exchange(impl_->bufs().cipher, {});
  impl_->release_idle();
  return out;
}
TlsState TlsEngine::state() const {
  return impl_->state;
}
TlsFailure TlsEngine::failure() const {
  return impl_->failure;
}
const std::string& TlsEngine::error() const {
  return impl_->rare ? impl_->rare->error : Impl::no_words();
}
bool TlsEngine::peer_closed() const {
  return impl_->peer_closed;
}
std::string_view TlsEngine::version() const {
  return impl_->completed ? SSL_get_version(impl_->ssl) : std::string_view();
}
std::string_view TlsEngine::cipher() const {
  const SSL_CIPHER* c = impl_->completed ? SSL_get_current_cipher(impl_->ssl) : nullptr;
  return c ? SSL_CIPHER_get_name(c) : std::string_view();
}
bool TlsEngine::resumed() const {
  return impl_->resumed;
}
std::string_view TlsEngine::alpn() const {
  const unsigned char* proto = nullptr;
  unsigned int len = 0;
  if (impl_->completed) SSL_get0_alpn_selected(impl_->ssl, &proto, &len);
  return proto ? std::string_view(reinterpret_cast<const char*>(proto), len) : std::string_view();
}
std::string TlsEngine::sni() const {
  const char* name = impl_->ssl ? SSL_get_servername(impl_->ssl, TLSEXT_NAMETYPE_host_name) : nullptr;
  return name ? tls_detail::lower(name) : std::string();
}
const std::string& TlsEngine::peer_identity() const {
  return impl_->rare ? impl_->rare->identity : Impl::no_words();
}
const std::string& TlsEngine::psk_identity() const {
  return impl_->psk_used ? impl_->psk_identity() : Impl::no_words();
}
bool TlsEngine::psk_used() const {
  return impl_->psk_used;
}
const X509* TlsEngine::peer_certificate() const {
  return impl_->ssl ? SSL_get0_peer_certificate(impl_->ssl) : nullptr;
}
std::string TlsEngine::peer_subject() const {
  const X509* c = peer_certificate();
  return c ? name_rfc2253(X509_get_subject_name(c)) : std::string();
}
std::string tls_detail::serial_hex(const X509* cert) {
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr);
  char* hex = bn ? BN_bn2hex(bn) : nullptr;
  std::string out = hex ? hex : "";
  OPENSSL_free(hex);
  BN_free(bn);
  return out;
}

std::string TlsEngine::peer_serial() const {
  const X509* c = peer_certificate();
  return c ? tls_detail::serial_hex(c) : std::string();
}
std::string TlsEngine::peer_fingerprint_sha256() const {
  return certificate_fingerprint_sha256(peer_certificate());
}
std::optional<TlsEngine::Clock::duration> TlsEngine::handshake_duration() const {
  if (!impl_->timed) return std::nullopt;
  return impl_->start_or_duration;
}
const TlsServerContext& TlsEngine::context() const {
  return *impl_->context;
}

// ---------------------------------------------------------------- recheck after reload

TlsFailure TlsServerContext::recheck(const TlsEngine& engine, std::string* why) const {
  const TlsEngine::Impl& e = *engine.impl_;
  if (!e.ssl || e.state != TlsState::Established) return TlsFailure::None;
  X509* leaf = SSL_get0_peer_certificate(e.ssl);
  if (!leaf) return TlsFailure::None;
  const std::string subject = name_rfc2253(X509_get_subject_name(leaf));
  auto verdict = [&](TlsFailure f, std::string_view words) {
    if (why) *why = std::string(words) + ": " + subject;
    return f;
  };
  if (revoked(leaf)) return verdict(TlsFailure::CertRevoked, "certificate revoked");

  const Impl& before = *e.context->impl_;
  const Impl& now = *impl_;
  const bool cas_changed = before.ca_digest != now.ca_digest;
  const bool chain_crls_changed =
      now.config.crl_check == CrlCheck::Chain && before.crl_digest != now.crl_digest;
  if (&before == &now || (!cas_changed && !chain_crls_changed)) return TlsFailure::None;
  if (now.config.client_cert == ClientCertMode::None) return TlsFailure::None;  // certificates not asked for

  // The chain the client sent, against the new CAs and CRLs. Dates are not
  // judged again: a certificate that expires during a connection is the
  // handshake's business, not the reload's.
  X509_STORE_CTX* x = X509_STORE_CTX_new();
  if (!x) return TlsFailure::None;
  long err = X509_V_OK;
  if (X509_STORE_CTX_init(x, SSL_CTX_get_cert_store(now.ctx), leaf, SSL_get_peer_cert_chain(e.ssl)) == 1) {
    X509_STORE_CTX_set_purpose(x, X509_PURPOSE_SSL_CLIENT);
    X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(x);
    X509_VERIFY_PARAM_set_depth(param, now.config.verify_depth);
    X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_NO_CHECK_TIME);
    if (X509_verify_cert(x) != 1) err = X509_STORE_CTX_get_error(x);
  }
  X509_STORE_CTX_free(x);
  ERR_clear_error();
  if (err == X509_V_OK) return TlsFailure::None;
  const VerifyWords w = verify_words(err);
  return verdict(w.failure, w.words.empty() ? std::string_view(X509_verify_cert_error_string(err)) : w.words);
}

}  // namespace moat::security
