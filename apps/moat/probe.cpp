// moat probe: the handshake-delay table.
//
// Each run opens one connection and notes, from the start of the TCP connect,
// when each phase completes: TCP connected, each TLS flight (OpenSSL's message
// callback reports every handshake message as it is sent or parsed), the
// handshake done, the CONNACK, and the PUBACK of one QoS 1 PUBLISH. The socket
// is non-blocking and driven with poll(); OpenSSL works over memory BIOs, so
// each flight leaves in one write and the client's last flight travels with the
// CONNECT, as a client that writes at once would send it. MQTT packets are
// encoded and decoded by codec/ (no second implementation here).
#include "probe.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "cli.hpp"
#include "codec/decoder.hpp"
#include "codec/encoder.hpp"
#include "codec/errors.hpp"

namespace moat::cli {

namespace {

using Clock = std::chrono::steady_clock;

// The rows of the table, in this order. Times are from the start of the TCP connect.
enum Phase : std::size_t {
  kTcpConnected,    // connect() completed (SYN, SYN-ACK)
  kClientHello,     // ClientHello sent
  kServerHello,     // ServerHello received (first server flight)
  kServerFinished,  // server Finished received
  kClientFinished,  // client Finished sent
  kTlsDone,         // SSL_do_handshake returned 1
  kSessionTicket,   // first NewSessionTicket received
  kConnack,         // CONNACK decoded
  kPuback,          // PUBACK of the QoS 1 PUBLISH decoded
  kPhaseCount
};

struct PhaseName {
  const char* label;  // table row
  const char* key;    // JSON key
};
constexpr std::array<PhaseName, kPhaseCount> kPhaseNames = {{
    {"tcp connected", "tcp_connected"},
    {"client hello", "client_hello"},
    {"server hello", "server_hello"},
    {"server finished", "server_finished"},
    {"client finished", "client_finished"},
    {"tls done", "tls_done"},
    {"session ticket", "session_ticket"},
    {"connack", "connack"},
    {"puback", "puback"},
}};

// Handshake message types (RFC 8446 section 4, RFC 5246 section 7.4).
constexpr unsigned char kHsClientHello = 1;
constexpr unsigned char kHsServerHello = 2;
constexpr unsigned char kHsNewSessionTicket = 4;
constexpr unsigned char kHsFinished = 20;

// How long the connection that provides the session for --resume waits for a
// TLS 1.3 ticket after its PUBACK.
constexpr auto kTicketWait = std::chrono::seconds(2);

// A failed run: the exit status and the one-line message.
struct ProbeFailure {
  int exit;
  std::string message;
};

struct Sample {
  std::array<std::optional<double>, kPhaseCount> ms{};
  bool offered = false;  // a resumable session was offered
  bool resumed = false;
  std::string version;
  std::string cipher;
};

// The reason of the first error in OpenSSL's queue (the root cause; the others
// are the callers' reports of it), and the queue emptied.
std::string openssl_errors() {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    if (!out.empty()) continue;
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    // "error:0A000086:SSL routines::certificate verify failed" -> the reason only.
    std::string_view s(buf);
    const auto colon = s.rfind(':');
    if (colon != std::string_view::npos) s.remove_prefix(colon + 1);
    out = s;
  }
  return out;
}

// ---------------------------------------------------------------- target

struct Target {
  std::string host;  // without brackets
  std::string port;
  std::string display;  // as given, with the port
  std::vector<sockaddr_storage> addrs;
  std::vector<socklen_t> lens;
};

std::optional<std::string> parse_target(const std::string& s, const std::string& default_port, Target& t) {
  std::string host;
  std::string port;
  if (!s.empty() && s.front() == '[') {
    const auto close = s.find(']');
    if (close == std::string::npos) return "'" + s + "': missing ']' after an IPv6 address";
    host = s.substr(1, close - 1);
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') return "'" + s + "': expected ':PORT' after ']'";
      port = s.substr(close + 2);
    }
  } else {
    const auto colon = s.rfind(':');
    if (colon != std::string::npos && s.find(':') != colon) {
      host = s;  // a bare IPv6 address
    } else if (colon != std::string::npos) {
      host = s.substr(0, colon);
      port = s.substr(colon + 1);
    } else {
      host = s;
    }
  }
  if (host.empty()) return "'" + s + "': no host";
  if (port.empty()) port = default_port;
  char* end = nullptr;
  const long p = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || p < 1 || p > 65535) return "'" + s + "': the port must be 1-65535";
  t.host = host;
  t.port = std::to_string(p);
  t.display = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + t.port;
  return std::nullopt;
}

void resolve(Target& t) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int r = ::getaddrinfo(t.host.c_str(), t.port.c_str(), &hints, &res);
  if (r != 0) throw ProbeFailure{kUnreachable, "cannot connect to " + t.display + ": " + ::gai_strerror(r)};
  for (addrinfo* a = res; a; a = a->ai_next) {
    sockaddr_storage ss{};
    std::memcpy(&ss, a->ai_addr, a->ai_addrlen);
    t.addrs.push_back(ss);
    t.lens.push_back(a->ai_addrlen);
  }
  ::freeaddrinfo(res);
}

// ---------------------------------------------------------------- TLS setup

// One SSL_CTX per TLS version, and the latest session the server gave us on it.
struct TlsSetup {
  SSL_CTX* ctx = nullptr;
  SSL_SESSION* session = nullptr;
  int version = 0;  // TLS1_2_VERSION | TLS1_3_VERSION
  std::string psk_identity;
  std::vector<unsigned char> psk;

  TlsSetup() = default;
  TlsSetup(const TlsSetup&) = delete;
  TlsSetup& operator=(const TlsSetup&) = delete;
  ~TlsSetup() {
    SSL_SESSION_free(session);
    SSL_CTX_free(ctx);
  }
};

int ctx_setup_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

TlsSetup* setup_of(SSL* ssl) {
  return static_cast<TlsSetup*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_setup_index()));
}

// Every session the server hands out (TLS 1.2 at the end of the handshake, TLS
// 1.3 with each NewSessionTicket after it) replaces the one kept.
int on_new_session(SSL* ssl, SSL_SESSION* session) {
  TlsSetup* s = setup_of(ssl);
  if (!s || SSL_SESSION_is_resumable(session) != 1) return 0;
  SSL_SESSION_free(s->session);
  s->session = session;
  return 1;  // we keep the reference
}

// TLS 1.2 PSK suites, and TLS 1.3 external PSK: OpenSSL uses this callback for
// TLS 1.3 too (with a SHA-256 suite) when no PSK session callback is set.
unsigned int on_psk(SSL* ssl, const char* /*hint*/, char* identity, unsigned int max_identity_len,
                    unsigned char* psk, unsigned int max_psk_len) {
  TlsSetup* s = setup_of(ssl);
  if (!s || s->psk.empty() || s->psk_identity.size() + 1 > max_identity_len || s->psk.size() > max_psk_len)
    return 0;
  std::memcpy(identity, s->psk_identity.c_str(), s->psk_identity.size() + 1);
  std::memcpy(psk, s->psk.data(), s->psk.size());
  return static_cast<unsigned int>(s->psk.size());
}

std::optional<std::vector<unsigned char>> parse_hex(std::string_view hex) {
  if (hex.empty() || hex.size() % 2 != 0) return std::nullopt;
  std::vector<unsigned char> out;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    unsigned v = 0;
    for (std::size_t j = 0; j < 2; ++j) {
      const char c = hex[i + j];
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f')
        v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        v |= static_cast<unsigned>(c - 'A' + 10);
      else
        return std::nullopt;
    }
    out.push_back(static_cast<unsigned char>(v));
  }
  return out;
}

std::unique_ptr<TlsSetup> make_tls(int version, const ProbeArgs& a) {
  auto s = std::make_unique<TlsSetup>();
  s->version = version;
  s->ctx = SSL_CTX_new(TLS_client_method());
  if (!s->ctx) throw ProbeFailure{kUsage, "cannot create a TLS context: " + openssl_errors()};
  SSL_CTX* ctx = s->ctx;
  SSL_CTX_set_ex_data(ctx, ctx_setup_index(), s.get());
  SSL_CTX_set_min_proto_version(ctx, version);
  SSL_CTX_set_max_proto_version(ctx, version);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx, on_new_session);
  static constexpr unsigned char kAlpn[] = {4, 'm', 'q', 't', 't'};
  SSL_CTX_set_alpn_protos(ctx, kAlpn, sizeof kAlpn);

  if (a.insecure) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    if (!a.cafile.empty()) {
      if (SSL_CTX_load_verify_locations(ctx, a.cafile.c_str(), nullptr) != 1)
        throw ProbeFailure{kUsage, "--cafile " + a.cafile + ": " + openssl_errors()};
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
      throw ProbeFailure{kUsage, "cannot load the system CA certificates: " + openssl_errors()};
    }
  }
  if (!a.cert.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, a.cert.c_str()) != 1)
      throw ProbeFailure{kUsage, "--cert " + a.cert + ": " + openssl_errors()};
    if (SSL_CTX_use_PrivateKey_file(ctx, a.key.c_str(), SSL_FILETYPE_PEM) != 1)
      throw ProbeFailure{kUsage, "--key " + a.key + ": " + openssl_errors()};
    if (SSL_CTX_check_private_key(ctx) != 1)
      throw ProbeFailure{kUsage, "--key " + a.key + " does not match --cert " + a.cert};
  }
  if (!a.psk.empty()) {
    s->psk = *parse_hex(a.psk);  // checked by run_probe
    s->psk_identity = a.psk_identity;
    SSL_CTX_set_psk_client_callback(ctx, on_psk);
  }
  return s;
}

bool is_ip_literal(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return ::inet_pton(AF_INET, host.c_str(), buf) == 1 || ::inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// ---------------------------------------------------------------- one run

class Run {
 public:
  Run(const Target& target, std::size_t addr, TlsSetup* tls, bool resume, bool want_session,
      const ProbeArgs& a)
      : target_(target), addr_(addr), tls_(tls), resume_(resume), want_session_(want_session), args_(a) {}
  ~Run() {
    SSL_free(ssl_);
    if (fd_ >= 0) ::close(fd_);
  }
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  Sample go() {
    start_ = Clock::now();
    deadline_ =
        start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(args_.timeout_s));
    connect_tcp();
    mark(kTcpConnected);
    if (tls_) handshake();
    mqtt();
    return sample_;
  }

 private:
  void mark(Phase p) {
    if (!sample_.ms[p])
      sample_.ms[p] = std::chrono::duration<double, std::milli>(Clock::now() - start_).count();
  }

  [[noreturn]] void timed_out() {
    throw ProbeFailure{kTimeout, "timed out after " + fmt_seconds(args_.timeout_s) + " waiting for " +
                                     waiting_ + " from " + target_.display};
  }

  static std::string fmt_seconds(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g s", s);
    return buf;
  }

  // Waits until the socket is ready for `events`, or throws at the deadline.
  void wait(short events) {
    for (;;) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline_ - Clock::now()).count();
      if (left <= 0) timed_out();
      pollfd p{fd_, events, 0};
      const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, INT_MAX)));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw ProbeFailure{kLost, std::string("poll: ") + std::strerror(errno)};
      if (r > 0) return;
    }
  }

  void connect_tcp() {
    waiting_ = "the TCP connection";
    const auto& ss = target_.addrs[addr_];
    fd_ = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw ProbeFailure{kUnreachable, std::string("socket: ") + std::strerror(errno)};
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // no Nagle: each flight leaves at once
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&ss), target_.lens[addr_]) != 0) {
      if (errno != EINPROGRESS)
        throw ProbeFailure{kUnreachable,
                           "cannot connect to " + target_.display + ": " + std::strerror(errno)};
      wait(POLLOUT);
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0)
        throw ProbeFailure{kUnreachable, "cannot connect to " + target_.display + ": " + std::strerror(err)};
    }
  }

  void send_all(const std::uint8_t* data, std::size_t n) {
    while (n > 0) {
      const ssize_t w = ::send(fd_, data, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wait(POLLOUT);
        continue;
      }
      if (w < 0)
        throw ProbeFailure{kLost, "connection to " + target_.display + " lost: " + std::strerror(errno)};
      data += w;
      n -= static_cast<std::size_t>(w);
    }
  }

  // Reads what the socket has (waiting for at least one byte).
  std::size_t recv_some() {
    for (;;) {
      const ssize_t r = ::recv(fd_, buf_.data(), buf_.size(), 0);
      if (r > 0) return static_cast<std::size_t>(r);
      if (r == 0)
        throw ProbeFailure{kLost,
                           "connection closed by " + target_.display + " while waiting for " + waiting_};
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        wait(POLLIN);
        continue;
      }
      throw ProbeFailure{kLost, "connection to " + target_.display + " lost: " + std::strerror(errno)};
    }
  }

  // TLS: sends everything OpenSSL wrote into the memory BIO, in one write.
  void flush_tls() {
    const std::size_t pending = BIO_ctrl_pending(wbio_);
    if (pending == 0) return;
    out_.resize(pending);
    const int got = BIO_read(wbio_, out_.data(), static_cast<int>(pending));
    if (got > 0) send_all(out_.data(), static_cast<std::size_t>(got));
  }

  void feed_tls() {
    const std::size_t n = recv_some();
    BIO_write(rbio_, buf_.data(), static_cast<int>(n));
  }

  static void on_message(int write_p, int /*version*/, int content_type, const void* buf, std::size_t len,
                         SSL* /*ssl*/, void* arg) {
    if (content_type != SSL3_RT_HANDSHAKE || len == 0) return;
    auto* self = static_cast<Run*>(arg);
    const unsigned char type = *static_cast<const unsigned char*>(buf);
    if (write_p) {
      if (type == kHsClientHello) self->mark(kClientHello);
      if (type == kHsFinished) self->mark(kClientFinished);
    } else {
      if (type == kHsServerHello) self->mark(kServerHello);
      if (type == kHsFinished) self->mark(kServerFinished);
      if (type == kHsNewSessionTicket) self->mark(kSessionTicket);
    }
  }

  [[noreturn]] void tls_failed(int ssl_error) {
    std::string why;
    const long vr = SSL_get_verify_result(ssl_);
    if (vr != X509_V_OK) why = std::string("certificate verify failed: ") + X509_verify_cert_error_string(vr);
    std::string errors = openssl_errors();
    if (why.empty()) why = errors;
    if (why.empty() && ssl_error == SSL_ERROR_SYSCALL) why = "unexpected end of input";
    throw ProbeFailure{kTlsFailed,
                       "TLS handshake with " + target_.display + " failed: " + (why.empty() ? "unknown" : why)};
  }

  void handshake() {
    waiting_ = "the TLS handshake";
    ssl_ = SSL_new(tls_->ctx);
    rbio_ = BIO_new(BIO_s_mem());
    wbio_ = BIO_new(BIO_s_mem());
    if (!ssl_ || !rbio_ || !wbio_) {
      BIO_free(rbio_);
      BIO_free(wbio_);
      throw ProbeFailure{kLost, "out of memory"};
    }
    BIO_set_mem_eof_return(rbio_, -1);  // empty input means "want more"
    SSL_set_bio(ssl_, rbio_, wbio_);
    SSL_set_msg_callback(ssl_, on_message);
    SSL_set_msg_callback_arg(ssl_, this);
    SSL_set_connect_state(ssl_);
    const bool ip = is_ip_literal(target_.host);
    if (!ip)  // SNI; SSL_set_tlsext_host_name is this call behind a C cast
      SSL_ctrl(ssl_, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
               const_cast<char*>(target_.host.c_str()));
    if (!args_.insecure) {
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
      if (ip)
        X509_VERIFY_PARAM_set1_ip_asc(param, target_.host.c_str());
      else
        SSL_set1_host(ssl_, target_.host.c_str());
    }
    // OpenSSL marks a TLS 1.3 session not resumable once it has been used
    // (RFC 8446 C.4: tickets are for one connection); a server renews it by
    // sending a new ticket on every resumed handshake.
    if (resume_ && tls_->session && SSL_SESSION_is_resumable(tls_->session) == 1) {
      SSL_set_session(ssl_, tls_->session);
      sample_.offered = true;
    }

    for (;;) {
      ERR_clear_error();
      const int r = SSL_do_handshake(ssl_);
      if (r == 1) break;  // our last flight stays buffered: it leaves with the CONNECT
      const int e = SSL_get_error(ssl_, r);
      flush_tls();  // a flight, or an alert before failing
      if (e == SSL_ERROR_WANT_READ) {
        feed_tls();
        continue;
      }
      tls_failed(e);
    }
    mark(kTlsDone);
    sample_.resumed = SSL_session_reused(ssl_) == 1;
    sample_.version = SSL_get_version(ssl_);
    if (const SSL_CIPHER* c = SSL_get_current_cipher(ssl_)) sample_.cipher = SSL_CIPHER_get_name(c);
  }

  void send_app(const codec::Bytes& bytes) {
    if (!ssl_) return send_all(bytes.data(), bytes.size());
    std::size_t written = 0;
    ERR_clear_error();
    if (SSL_write_ex(ssl_, bytes.data(), bytes.size(), &written) != 1 || written != bytes.size())
      throw ProbeFailure{kLost, "TLS write failed: " + openssl_errors()};
    flush_tls();
  }

  // Appends at least one more plaintext byte to in_.
  void recv_app() {
    if (!ssl_) {
      const std::size_t n = recv_some();
      in_.insert(in_.end(), buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(n));
      return;
    }
    for (;;) {
      std::size_t n = 0;
      ERR_clear_error();
      const int r = SSL_read_ex(ssl_, buf_.data(), buf_.size(), &n);
      flush_tls();  // post-handshake answers (key update), if any
      if (r == 1) {
        in_.insert(in_.end(), buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(n));
        return;
      }
      const int e = SSL_get_error(ssl_, r);
      if (e == SSL_ERROR_WANT_READ) {
        feed_tls();
        continue;
      }
      if (e == SSL_ERROR_ZERO_RETURN)
        throw ProbeFailure{kLost,
                           "connection closed by " + target_.display + " while waiting for " + waiting_};
      throw ProbeFailure{kLost, "TLS error from " + target_.display + ": " + openssl_errors()};
    }
  }

  // The next packet from the server, as (type, fields we need).
  struct Received {
    codec::PacketType type;
    codec::Connack connack;
    std::uint16_t packet_id = 0;
  };
  Received next_packet() {
    codec::DecoderOptions opts;
    opts.server = false;
    for (;;) {
      const auto d = codec::decode(in_, opts);
      if (d.status == codec::DecodeStatus::Ok) {
        Received r{codec::type_of(d.packet), {}, 0};
        if (const auto* c = std::get_if<codec::Connack>(&d.packet)) r.connack = *c;
        if (const auto* k = std::get_if<codec::Ack>(&d.packet)) r.packet_id = k->packet_id;
        in_.erase(in_.begin(), in_.begin() + static_cast<std::ptrdiff_t>(d.consumed));
        return r;
      }
      if (d.status == codec::DecodeStatus::Error)
        throw ProbeFailure{kLost, "protocol error from " + target_.display + ": " + codec::describe(d.error)};
      recv_app();
    }
  }

  void mqtt() {
    codec::Connect c;
    c.version = codec::ProtocolVersion::V311;
    c.clean_session = true;
    c.keep_alive = 60;
    c.client_id = "";  // assigned by the broker (clean session)
    if (!args_.username.empty()) c.username = args_.username;
    if (!args_.password.empty()) c.password = args_.password;
    codec::Bytes bytes;
    codec::encode(codec::Packet{c}, bytes);
    waiting_ = "the CONNACK";
    send_app(bytes);
    Received r = next_packet();
    if (r.type != codec::PacketType::Connack)
      throw ProbeFailure{kLost, std::string("expected CONNACK, got ") + codec::name_of(r.type)};
    mark(kConnack);
    const int code = static_cast<int>(r.connack.code);
    if (code != 0) {
      static constexpr const char* kWords[] = {
          "accepted",           "unacceptable protocol version", "identifier rejected",
          "server unavailable", "bad user name or password",     "not authorized"};
      const std::string what =
          std::string(code < 6 ? kWords[code] : "unknown reason") + " (CONNACK " + std::to_string(code) + ")";
      if (code == 4 || code == 5) throw ProbeFailure{kAuthFailed, "authentication failed: " + what};
      throw ProbeFailure{kRefused, "connection refused: " + what};
    }

    codec::Publish p;
    p.qos = codec::QoS::AtLeastOnce;
    p.topic = args_.topic;
    p.packet_id = 1;
    p.payload = "moat probe";
    bytes.clear();
    codec::encode(codec::Packet{p}, bytes);
    waiting_ = "the PUBACK";
    send_app(bytes);
    for (;;) {
      r = next_packet();
      if (r.type == codec::PacketType::Puback && r.packet_id == 1) break;
      if (r.type != codec::PacketType::Publish)
        throw ProbeFailure{kLost, std::string("expected PUBACK, got ") + codec::name_of(r.type)};
    }
    mark(kPuback);

    if (ssl_ && want_session_ && !tls_->session && SSL_version(ssl_) == TLS1_3_VERSION) {
      // TLS 1.3 tickets come after the handshake, usually with the CONNACK. A
      // server that sends none is reported by the caller ("no session to resume").
      waiting_ = "a session ticket";
      deadline_ = std::min(deadline_, Clock::now() + kTicketWait);
      try {
        while (!tls_->session) recv_app();
      } catch (const ProbeFailure& f) {
        if (f.exit != kTimeout) throw;
      }
    }

    bytes.clear();
    codec::encode(codec::Packet{codec::Disconnect{}}, bytes);
    send_app(bytes);
    if (ssl_) {
      ERR_clear_error();
      SSL_shutdown(ssl_);
      flush_tls();
    }
    ::shutdown(fd_, SHUT_WR);
  }

  const Target& target_;
  std::size_t addr_;
  TlsSetup* tls_;
  bool resume_;
  bool want_session_;
  const ProbeArgs& args_;
  int fd_ = -1;
  SSL* ssl_ = nullptr;
  BIO* rbio_ = nullptr;  // socket -> SSL (owned by ssl_ once set)
  BIO* wbio_ = nullptr;  // SSL -> socket
  Clock::time_point start_;
  Clock::time_point deadline_;
  std::string waiting_;
  Sample sample_;
  std::array<std::uint8_t, 16384> buf_{};
  std::vector<std::uint8_t> out_;
  std::vector<std::uint8_t> in_;
};

// ---------------------------------------------------------------- columns and output

struct Column {
  std::string name;  // "TLS 1.2 resumed"
  std::string tls;   // "1.2" | "1.3" | "none"
  bool resume = false;
  std::vector<Sample> samples;
};

std::optional<double> median(const std::vector<Sample>& samples, std::size_t phase) {
  std::vector<double> v;
  for (const auto& s : samples)
    if (s.ms[phase]) v.push_back(*s.ms[phase]);
  if (v.empty()) return std::nullopt;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::size_t resumed_count(const Column& c) {
  return static_cast<std::size_t>(
      std::count_if(c.samples.begin(), c.samples.end(), [](const Sample& s) { return s.resumed; }));
}

double round3(double v) {
  return std::round(v * 1000) / 1000;
}

std::string table(const std::vector<Column>& cols, const std::vector<std::size_t>& rows) {
  std::size_t label_width = 0;
  for (auto r : rows) label_width = std::max(label_width, std::strlen(kPhaseNames[r].label));
  // Values are right-aligned so that " ms" lines up under the end of a 7-letter title.
  struct Layout {
    std::size_t start, end;
  };
  std::vector<std::vector<std::string>> cells(cols.size());
  std::vector<Layout> layout;
  std::size_t start = label_width + 4;
  for (std::size_t c = 0; c < cols.size(); ++c) {
    std::size_t width = 1;
    for (auto r : rows) {
      const auto m = median(cols[c].samples, r);
      char buf[32];
      if (m)
        std::snprintf(buf, sizeof buf, "%.1f ms", *m);
      else
        std::snprintf(buf, sizeof buf, "-");
      cells[c].emplace_back(buf);
      width = std::max(width, cells[c].back().size());
    }
    const std::size_t end = start + std::max<std::size_t>(7, width - 1);
    layout.push_back({start, end});
    start = std::max(start + cols[c].name.size(), end) + 3;
  }
  auto put = [](std::string& line, std::size_t at, const std::string& s) {
    if (line.size() < at + s.size()) line.resize(at + s.size(), ' ');
    line.replace(at, s.size(), s);
  };
  std::string out;
  std::string head;
  for (std::size_t c = 0; c < cols.size(); ++c) put(head, layout[c].start, cols[c].name);
  out += head + "\n";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    std::string line = kPhaseNames[rows[i]].label;
    for (std::size_t c = 0; c < cols.size(); ++c) put(line, layout[c].end - cells[c][i].size(), cells[c][i]);
    out += line + "\n";
  }
  return out;
}

nlohmann::json to_json(const ProbeArgs& a, const Target& t, const std::vector<Column>& cols) {
  nlohmann::json j;
  j["target"] = t.display;
  j["runs"] = a.runs;
  j["unit"] = "ms";
  j["columns"] = nlohmann::json::array();
  for (const auto& c : cols) {
    nlohmann::json col;
    col["name"] = c.name;
    col["tls"] = c.tls;
    col["resume"] = c.resume;
    col["runs"] = c.samples.size();
    col["resumed"] = resumed_count(c);
    col["version"] = c.samples.empty() ? "" : c.samples.back().version;
    col["cipher"] = c.samples.empty() ? "" : c.samples.back().cipher;
    nlohmann::json med = nlohmann::json::object();
    nlohmann::json all = nlohmann::json::object();
    for (std::size_t p = 0; p < kPhaseCount; ++p) {
      const auto m = median(c.samples, p);
      med[kPhaseNames[p].key] = m ? nlohmann::json(round3(*m)) : nlohmann::json(nullptr);
      nlohmann::json v = nlohmann::json::array();
      for (const auto& s : c.samples)
        v.push_back(s.ms[p] ? nlohmann::json(round3(*s.ms[p])) : nlohmann::json(nullptr));
      all[kPhaseNames[p].key] = std::move(v);
    }
    col["median_ms"] = std::move(med);
    col["samples_ms"] = std::move(all);
    nlohmann::json resumed = nlohmann::json::array();
    for (const auto& s : c.samples) resumed.push_back(s.resumed);
    col["samples_resumed"] = std::move(resumed);
    j["columns"].push_back(std::move(col));
  }
  return j;
}

std::optional<std::string> check_args(const ProbeArgs& a) {
  const bool tls = a.tls != "none";
  if (!tls) {
    if (a.resume) return "--resume needs TLS (--tls 1.2, 1.3 or both)";
    if (!a.cafile.empty() || !a.cert.empty() || a.insecure || !a.psk.empty())
      return "--cafile, --cert, --key, --insecure and --psk need TLS (--tls 1.2, 1.3 or both)";
  }
  if (a.cert.empty() != a.key.empty()) return "--cert and --key go together";
  if (a.psk.empty() != a.psk_identity.empty()) return "--psk and --psk-identity go together";
  if (!a.psk.empty() && !parse_hex(a.psk)) return "--psk: the key must be an even number of hex digits";
  if (!a.password.empty() && a.username.empty()) return "a password (-P) needs a user name (-u)";
  if (auto problem = topic_name_problem(a.topic)) return "--topic: " + *problem;
  return std::nullopt;
}

}  // namespace

CLI::App* add_probe_command(CLI::App& app, ProbeArgs& a) {
  CLI::App* p = app.add_subcommand(
      "probe",
      "time each phase of a connection: TCP, TLS flights, CONNACK, QoS 1 round trip (see docs/cli.md)");
  p->set_help_flag("--help", "print this help and exit");
  p->add_option("TARGET", a.target,
                "HOST:PORT of the broker (PORT defaults to 8883, or 1883 with --tls none)")
      ->required();
  p->add_option("--tls", a.tls, "TLS versions measured: 1.2 | 1.3 | both | none (plain TCP)")
      ->capture_default_str()
      ->check(CLI::IsMember({"1.2", "1.3", "both", "none"}));
  p->add_flag("--resume", a.resume, "also measure resumed handshakes (after a first full one)");
  p->add_option("-n,--runs", a.runs, "connections per column; the table shows medians")
      ->capture_default_str()
      ->check(CLI::Range(1u, 10000u));
  p->add_option("--cafile", a.cafile, "CA certificates (PEM) to verify the server (default: the system's)");
  p->add_option("--cert", a.cert, "client certificate chain (PEM), for mutual TLS");
  p->add_option("--key", a.key, "private key of --cert (PEM)");
  p->add_flag("--insecure", a.insecure, "do not verify the server certificate or host name (warns)");
  p->add_option("--psk", a.psk, "TLS-PSK key in hex (with --psk-identity)");
  p->add_option("--psk-identity", a.psk_identity, "TLS-PSK identity");
  p->add_option("-u,--username", a.username, "user name in CONNECT");
  p->add_option("-P,--pw", a.password, "password in CONNECT (needs -u)");
  p->add_option("-t,--topic", a.topic, "topic of the QoS 1 PUBLISH")->capture_default_str();
  p->add_option("--timeout", a.timeout_s, "seconds allowed per connection, TCP connect to PUBACK")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  p->add_flag("--json", a.json, "print one JSON object (medians and every sample) instead of the table");
  return p;
}

int run_probe(const ProbeArgs& a) {
  if (auto problem = check_args(a)) {
    error_line("probe", *problem);
    return kUsage;
  }
  Target target;
  if (auto problem = parse_target(a.target, a.tls == "none" ? "1883" : "8883", target)) {
    error_line("probe", *problem);
    return kUsage;
  }
  if (a.insecure) error_line("probe", "warning: --insecure: the server certificate is not verified");

  std::vector<Column> cols;
  std::vector<std::unique_ptr<TlsSetup>> setups;  // one per version, shared by its full and resumed columns
  try {
    resolve(target);
    std::vector<int> versions;
    if (a.tls == "1.2" || a.tls == "both") versions.push_back(TLS1_2_VERSION);
    if (a.tls == "1.3" || a.tls == "both") versions.push_back(TLS1_3_VERSION);

    // The first address that accepts a connection is used for every run.
    std::size_t addr = 0;
    auto run = [&](TlsSetup* tls, bool resume, bool want_session) {
      for (;;) {
        try {
          return Run(target, addr, tls, resume, want_session, a).go();
        } catch (const ProbeFailure& f) {
          if (f.exit != kUnreachable || addr + 1 >= target.addrs.size()) throw;
          ++addr;
        }
      }
    };

    if (versions.empty()) {
      Column c{"TCP", "none", false, {}};
      for (unsigned i = 0; i < a.runs; ++i) c.samples.push_back(run(nullptr, false, false));
      cols.push_back(std::move(c));
    }
    for (int v : versions) {
      const std::string ver = v == TLS1_2_VERSION ? "1.2" : "1.3";
      setups.push_back(make_tls(v, a));
      TlsSetup* tls = setups.back().get();
      Column full{"TLS " + ver, ver, false, {}};
      for (unsigned i = 0; i < a.runs; ++i)
        full.samples.push_back(run(tls, false, a.resume && i + 1 == a.runs));
      cols.push_back(std::move(full));
      if (!a.resume) continue;
      if (!tls->session)
        throw ProbeFailure{kLost, "--resume: " + target.display + " gave no TLS " + ver +
                                      " session to resume (no session ticket)"};
      Column resumed{"TLS " + ver + " resumed", ver, true, {}};
      for (unsigned i = 0; i < a.runs; ++i) resumed.samples.push_back(run(tls, true, false));
      std::size_t not_offered = 0;
      std::size_t refused = 0;
      for (const auto& s : resumed.samples) {
        not_offered += s.offered ? 0 : 1;
        refused += s.offered && !s.resumed ? 1 : 0;
      }
      const std::string of = " of " + std::to_string(resumed.samples.size()) + " handshakes ";
      if (not_offered > 0)
        error_line("probe", "warning: TLS " + ver + ": " + std::to_string(not_offered) + of +
                                "were full: no unused session ticket to offer (the server sent no new ticket "
                                "on a resumed handshake)");
      if (refused > 0)
        error_line("probe", "warning: TLS " + ver + ": " + std::to_string(refused) + of +
                                "were full: the server did not resume the session offered");
      cols.push_back(std::move(resumed));
    }
  } catch (const ProbeFailure& f) {
    error_line("probe", f.message);
    return f.exit;
  }

  if (a.json) {
    std::printf("%s\n", to_json(a, target, cols).dump().c_str());
  } else {
    std::vector<std::size_t> rows;
    for (std::size_t p = 0; p < kPhaseCount; ++p) {
      bool any = false;
      for (const auto& c : cols) any = any || median(c.samples, p).has_value();
      if (any) rows.push_back(p);
    }
    std::printf("%s", table(cols, rows).c_str());
    std::printf("(%s: median of %u connection%s per column, from the start of the TCP connect)\n",
                target.display.c_str(), a.runs, a.runs == 1 ? "" : "s");
  }
  std::fflush(stdout);
  return kOk;
}

}  // namespace moat::cli
