// TLS for Moat's listeners: configuration, a reloadable server context (SSL_CTX)
// and a sans-I/O engine per connection.
//
// The engine never touches a socket: the caller feeds it the bytes read from the
// socket and sends what it hands back. It owns one SSL* over two memory BIOs, so
// it can move between event loops with its connection (architecture.md, "Threads:
// one shard per event loop"); it must not be used by two threads at once.
//
// Reload contract: TlsServerContext::load() either returns a complete new
// context or throws TlsError. On SIGHUP the caller loads the new files and, only
// if that succeeds, swaps the listener's shared_ptr; on TlsError it logs the
// message and keeps the old context. Connections hold the context they were
// accepted with (TlsEngine keeps a shared_ptr) until they close.
#pragma once

#include <openssl/types.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace moat::security {

// Every problem found while loading TLS material. The message names the file and
// the reason ("tls: key 'server.key': wrong password (key_password)").
class TlsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class ClientCertMode { None, Optional, Required };
enum class CrlCheck { Leaf, Chain };
enum class IdentityFrom { Cn, SanDns, SanEmail, SanUri, Subject, Psk };

// Parsers for the moat.toml spellings ("none", "optional", ...); nullopt if unknown.
std::optional<ClientCertMode> parse_client_cert_mode(std::string_view s);
std::optional<CrlCheck> parse_crl_check(std::string_view s);
std::optional<IdentityFrom> parse_identity_from(std::string_view s);
std::string_view to_string(ClientCertMode m);
std::string_view to_string(CrlCheck c);
std::string_view to_string(IdentityFrom i);

// An extra certificate chosen when the client's SNI names `hostname`
// (exact match, case-insensitive, or "*.example.com" for one leftmost label).
struct TlsSniCert {
  std::string hostname;
  std::filesystem::path cert;
  std::filesystem::path key;
  std::string key_password;
};

// The [listener.tls] table, paths already resolved against the config folder.
struct TlsServerConfig {
  std::filesystem::path cert;    // PEM: leaf first, then intermediates
  std::filesystem::path key;     // PEM, optionally encrypted
  std::string key_password;      // empty: the key must not be encrypted
  std::filesystem::path ca;      // PEM bundle of CAs trusted for client certificates
  std::filesystem::path ca_dir;  // c_rehash-style folder of CAs
  ClientCertMode client_cert = ClientCertMode::None;
  int verify_depth = 4;                    // intermediates allowed between the leaf and a trusted CA
  std::vector<std::filesystem::path> crl;  // PEM or DER; several CRLs per file in PEM
  CrlCheck crl_check = CrlCheck::Leaf;
  std::string min_version = "1.2";  // "1.2" | "1.3"; nothing older is possible
  std::string ciphers;       // TLS 1.2 list; empty = kDefaultCiphers (+ kDefaultPskCiphers with psk_file)
  std::string ciphersuites;  // TLS 1.3 list; empty = kDefaultCiphersuites
  std::filesystem::path psk_file;  // "identity:hexkey" per line, '#' comments
  // Adds kPlainPskCiphers (TLS 1.2 PSK suites without ECDHE, hence without
  // forward secrecy) to the default list; for devices that cannot do ECDHE.
  bool psk_plain_suites = false;
  // DER OCSP response for `cert`, stapled when a client asks (status_request).
  std::filesystem::path ocsp_response;
  // moatd reloads the context when one of its files changes (besides SIGHUP).
  bool reload_on_change = true;
  IdentityFrom identity_from = IdentityFrom::Cn;
  // ALPN protocols accepted, in server preference order. A client offering ALPN
  // without any of these is refused (RFC 7301, no_application_protocol); a
  // client offering no ALPN is accepted. Empty = ignore ALPN.
  std::vector<std::string> alpn = {"mqtt"};
  std::vector<TlsSniCert> sni;
  bool session_tickets = true;
  std::chrono::seconds ticket_key_rotation = std::chrono::hours(12);
  // Per-connection caps on decrypted bytes not yet drained by the caller and on
  // encrypted bytes not yet sent; beyond them the engine fails ("buffer limit").
  std::size_t max_plaintext_backlog = std::size_t{1} << 20;
  std::size_t max_ciphertext_backlog = std::size_t{8} << 20;
};

inline constexpr std::string_view kDefaultCiphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
// With a PSK the session keys come from the PSK alone unless an ECDHE exchange
// is mixed in: the default keeps forward secrecy (ECDHE-PSK; TLS 1.3 external
// PSK uses psk_dhe_ke). The plain suites are an opt-in (psk_plain_suites).
inline constexpr std::string_view kDefaultPskCiphers = "ECDHE-PSK-CHACHA20-POLY1305";
inline constexpr std::string_view kPlainPskCiphers =
    "PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305";
inline constexpr std::string_view kDefaultCiphersuites =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
inline constexpr std::string_view kGroups = "X25519:P-256:P-384";

class TlsEngine;
enum class TlsFailure : std::uint8_t;

class TlsServerContext {
 public:
  // Builds the SSL_CTX from the files named in `config`. `now` is the wall-clock
  // time used to judge certificate and CRL validity. `previous` (the context
  // being replaced on reload) passes on its session-ticket keys, so a reload of
  // the server certificate does not invalidate the tickets clients hold; a
  // reload that changes the client-authentication settings or the trust (CA
  // content, PSKs, with crl_check = "chain" the CRLs) starts new keys, and its
  // session id context no longer matches older sessions. Throws TlsError.
  static std::shared_ptr<const TlsServerContext> load(
      const TlsServerConfig& config,
      std::chrono::system_clock::time_point now = std::chrono::system_clock::now(),
      const TlsServerContext* previous = nullptr);

  ~TlsServerContext();
  TlsServerContext(const TlsServerContext&) = delete;
  TlsServerContext& operator=(const TlsServerContext&) = delete;

  const TlsServerConfig& config() const;
  // Non-fatal findings at load: server certificate expiring within 30 days or not
  // yet valid, key file readable by group/others, ...
  const std::vector<std::string>& warnings() const;
  SSL_CTX* native_handle() const;

  // True if `cert` (serial + issuer) is listed in one of this context's CRLs.
  // After a reload with a new CRL the caller checks every live connection's
  // TlsEngine::peer_certificate() against the new context and closes the revoked.
  bool revoked(const X509* cert) const;
  bool has_crl() const;
  std::size_t psk_count() const;
  // Checks an established connection's client certificate against this context
  // (normally a newer one than the connection was accepted with): CertRevoked
  // if one of these CRLs lists the leaf; if this context's CAs or (with
  // crl_check = "chain") CRLs differ from the connection's, the whole chain is
  // verified again (validity dates aside: reload does not expire connections)
  // and a failure gives its reason. TlsFailure::None when the certificate still
  // stands or the connection has none. `why` gets the words for the log.
  TlsFailure recheck(const TlsEngine& engine, std::string* why = nullptr) const;
  // A valid OCSP response is stapled for the default certificate.
  bool staples_ocsp() const;

  // Session-ticket keys: a ring of the current key and the previous one. New
  // tickets use the current key; a ticket under the previous key still resumes
  // and is renewed. Rotation happens when an engine passes a `now` at least
  // ticket_key_rotation after the last rotation, or explicitly here.
  void rotate_ticket_keys() const;
  void maybe_rotate_ticket_keys(std::chrono::steady_clock::time_point now) const;

  struct Impl;  // tls_internal.hpp

 private:
  TlsServerContext();
  std::unique_ptr<Impl> impl_;
};

enum class TlsState : std::uint8_t { Handshaking, Established, Failed, Closed };

// Why a handshake or connection failed; the counters of TlsHandshakeMetrics.
enum class TlsFailure : std::uint8_t {
  None,
  UnknownCa,  // client certificate not issued by a trusted CA
  CertExpired,
  CertNotYetValid,
  CertRevoked,
  CertBadPurpose,   // wrong extended key usage / key usage / not a CA
  CertInvalid,      // bad signature, malformed, chain too long, ...
  CrlProblem,       // CRL missing, expired or unverifiable during a handshake
  NoClientCert,     // client_cert = required and none sent
  NoSharedCipher,   // no common cipher, group or signature algorithm
  ProtocolVersion,  // TLS 1.0/1.1, or 1.2 against min_version 1.3
  NotTls,           // plaintext MQTT, HTTP or garbage on a TLS port
  PskUnknownIdentity,
  PskMismatch,            // known identity, different key
  NoApplicationProtocol,  // ALPN offered without "mqtt"
  PeerAlert,              // the client aborted (it rejected our certificate, ...)
  BufferLimit,
  Protocol,  // any other TLS protocol error
  Count
};
inline constexpr std::size_t kTlsFailureCount = static_cast<std::size_t>(TlsFailure::Count);
std::string_view to_string(TlsFailure f);
// The stable token of a failure, one topic level: the $SYS counters
// (failures/<token>) and the audit log's "failure" field use it
// ("unknown_ca", "certificate_revoked", ...; docs/audit.md lists them).
std::string_view to_slug(TlsFailure f);

// Every file and folder a context is built from (cert, key, ca, ca_dir, crl,
// psk_file, ocsp_response, sni certificates and keys): what a reload on file
// change watches.
std::vector<std::filesystem::path> watched_paths(const TlsServerConfig& config);

// One TLS server connection: SSL reads the ciphertext fed to it and writes
// records into ciphertext() through a BIO of the engine's own.
class TlsEngine {
 public:
  using Clock = std::chrono::steady_clock;

  // `start` is when the connection was accepted; with it (and a `now` in feed)
  // the engine reports handshake_duration(). It never reads a clock itself.
  explicit TlsEngine(std::shared_ptr<const TlsServerContext> context, Clock::time_point start = {});
  // No connection (a plain one, or an engine moved away): only operator bool,
  // assignment and destruction may be used.
  TlsEngine() noexcept;
  explicit operator bool() const { return impl_ != nullptr; }
  ~TlsEngine();
  TlsEngine(TlsEngine&&) noexcept;
  TlsEngine& operator=(TlsEngine&&) noexcept;

  // Ciphertext received from the socket: advances the handshake and appends
  // decrypted application bytes to plaintext(). After a failure the bytes are
  // ignored. Handshake flights, alerts and tickets go to ciphertext().
  void feed(std::span<const std::uint8_t> from_socket, Clock::time_point now = {});
  // Encrypts application bytes into ciphertext(). Before the handshake is done
  // they are kept and encrypted when it completes.
  void write(std::span<const std::uint8_t> app);
  // Queues a close_notify alert; the state becomes Closed.
  void close_notify();

  // Buffers the caller drains (clear() or swap() them after use). They are
  // allocated while bytes pass through: once the caller has drained them,
  // release_idle_buffers() gives their memory back (an idle connection then
  // holds none). has_*() ask without allocating.
  std::vector<std::uint8_t>& plaintext();
  std::vector<std::uint8_t>& ciphertext();
  bool has_plaintext() const;
  bool has_ciphertext() const;
  void release_idle_buffers();
  // The buffer's bytes moved out, then release_idle_buffers(): how a
  // connection drains them.
  std::vector<std::uint8_t> take_plaintext();
  std::vector<std::uint8_t> take_ciphertext();
  bool holds_buffers() const;  // memory for bytes in passage is allocated

  TlsState state() const;
  bool established() const { return state() == TlsState::Established; }
  // The failure and its description ("certificate expired: CN=device-1, ...")
  // for the log and the audit stream. A failed engine may still hold an alert in
  // ciphertext(): send it, then close the socket.
  TlsFailure failure() const;
  const std::string& error() const;
  // Closed by the peer's close_notify (as opposed to by close_notify()).
  bool peer_closed() const;

  // Known once the handshake completed.
  std::string_view version() const;  // "TLSv1.2" | "TLSv1.3"
  std::string_view cipher() const;   // IANA/OpenSSL name, e.g. "TLS_AES_128_GCM_SHA256"
  bool resumed() const;              // resumed from a session ticket (not an external PSK)
  std::string_view alpn() const;     // "" if none negotiated
  std::string sni() const;           // server name the client asked for, lower case; "" if none
  // The MQTT identity: with a PSK handshake the PSK identity (whatever
  // identity_from says); with a certificate the field chosen by identity_from;
  // "" without either, or if the field is absent or ambiguous.
  const std::string& peer_identity() const;
  const std::string& psk_identity() const;
  bool psk_used() const;
  std::string peer_fingerprint_sha256() const;  // lowercase hex of the leaf's DER, "" if none
  const X509* peer_certificate() const;         // borrowed; nullptr if none
  // "CN=device-1,O=Acme" and the serial in hex ("1003"); "" without a certificate.
  std::string peer_subject() const;
  std::string peer_serial() const;
  std::optional<Clock::duration> handshake_duration() const;
  const TlsServerContext& context() const;

  struct Impl;

 private:
  friend class TlsServerContext;  // recheck() reads the peer's chain
  std::unique_ptr<Impl> impl_;
};

// Certificate fields for identities (exposed for tests and the x509 authenticator).
std::string certificate_identity(const X509* cert, IdentityFrom from);
std::string certificate_fingerprint_sha256(const X509* cert);

// Handshake counters of one listener, updated from every event loop (relaxed
// atomics) and read by the metrics endpoint through snapshot().
struct TlsHandshakeMetrics {
  // Upper bounds of the duration buckets in microseconds; one more bucket (+Inf) follows.
  static constexpr std::array<std::uint64_t, 15> kBucketMicros = {100,    250,    500,     1000,    2000,
                                                                  5000,   10000,  25000,   50000,   100000,
                                                                  250000, 500000, 1000000, 2500000, 5000000};

  struct Snapshot {
    std::uint64_t completed = 0;
    std::uint64_t resumed = 0;
    std::uint64_t tls12 = 0;
    std::uint64_t tls13 = 0;
    std::uint64_t psk = 0;
    std::array<std::uint64_t, kTlsFailureCount> failures{};
    std::array<std::uint64_t, kBucketMicros.size() + 1> duration_buckets{};  // not cumulative
    std::uint64_t duration_count = 0;
    std::uint64_t duration_sum_micros = 0;
    // Established connections closed because a reload revoked their certificate.
    std::uint64_t closed_revoked = 0;

    std::uint64_t failed() const;
    // The q-quantile (0..1) of the handshake durations in microseconds,
    // interpolated within its bucket; 0 without any.
    double duration_quantile_micros(double q) const;
  };

  // Call once per connection when its handshake ends (Established or Failed
  // before being established); a no-op for an engine still handshaking.
  void record(const TlsEngine& engine);
  void record_completed(std::string_view version, bool resumed, bool psk,
                        std::optional<std::chrono::steady_clock::duration> duration);
  void record_failure(TlsFailure reason);
  void record_closed_revoked();
  Snapshot snapshot() const;

 private:
  std::atomic<std::uint64_t> completed_{0}, resumed_{0}, tls12_{0}, tls13_{0}, psk_{0};
  std::array<std::atomic<std::uint64_t>, kTlsFailureCount> failures_{};
  std::array<std::atomic<std::uint64_t>, kBucketMicros.size() + 1> buckets_{};
  std::atomic<std::uint64_t> duration_count_{0}, duration_sum_{0};
  std::atomic<std::uint64_t> closed_revoked_{0};
};

}  // namespace moat::security
