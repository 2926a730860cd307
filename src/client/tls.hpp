// TLS for moat::client: the options, and a context built from them once and
// shared by every connection (and every Client) that uses it.
//
//   moat::client::TlsOptions t;
//   t.ca_file = "ca.crt";
//   t.cert_file = "client.crt";
//   t.key_file = "client.key";
//   options.tls = moat::client::TlsContext::create(t);  // throws TlsSetupError
//
// The server's certificate chain and its host name (or IP address) are verified
// by default; the name checked (and sent as SNI) is Options::host unless
// TlsOptions::server_name says otherwise. The context keeps the last TLS
// session per server so that a reconnect resumes it (one round trip fewer).
// OpenSSL and Asio stay in tls.cpp.
#pragma once

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace moat::client {

// A problem with the TLS options or the files they name: "cannot read --cafile
// 'ca.crt': No such file or directory", "key 'client.key': wrong password", ...
class TlsSetupError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class TlsVerify {
  Full,       // chain to a trusted CA, and the host name (or IP address) matches
  ChainOnly,  // chain only; any host name is accepted (mosquitto's --insecure)
  None,       // nothing is verified: anyone in the path can read and change the traffic
};

struct TlsOptions {
  // Trust: a PEM bundle and/or a c_rehash folder. Neither: the system's trust store.
  std::string ca_file;
  std::string ca_dir;
  bool system_trust = false;  // also load the system's trust store with ca_file/ca_dir
  TlsVerify verify = TlsVerify::Full;
  // Sent as SNI and checked against the certificate instead of Options::host
  // (an IP address is checked against IP SANs and not sent as SNI).
  std::string server_name;
  // Client certificate (PEM, leaf then intermediates) and its key (PEM,
  // encrypted if key_password is set).
  std::string cert_file;
  std::string key_file;
  std::string key_password;
  // Versions: "1.2" | "1.3". Nothing older than TLS 1.2 can be negotiated.
  std::string min_version = "1.2";
  std::string max_version;        // "" = the newest
  std::string ciphers;            // TLS 1.2 cipher list; "" = ECDHE with AEAD (PSK suites with a PSK)
  std::string ciphersuites;       // TLS 1.3 suites; "" = OpenSSL's (AES-GCM, ChaCha20-Poly1305)
  std::vector<std::string> alpn;  // offered in this order, e.g. {"mqtt"}; empty = no ALPN
  // TLS-PSK instead of certificates: TLS 1.2 PSK suites and TLS 1.3 external
  // PSK (SHA-256). The key is hexadecimal; the server must know identity and key.
  std::string psk_identity;
  std::string psk_key_hex;
  bool resume_sessions = true;  // reuse the last session (ticket) of the same server
};

class TlsContext {
 public:
  // Loads every file now. Throws TlsSetupError.
  static std::shared_ptr<TlsContext> create(const TlsOptions& options);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  const TlsOptions& options() const;
  // Forgets the stored sessions: the next handshake with each server is a full one.
  void forget_sessions();
  // Sessions held (one per server name and port). Thread-safe.
  std::size_t session_count() const;

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  TlsContext();
  std::unique_ptr<Impl> impl_;
};

}  // namespace moat::client
