// The byte stream under a moat::client::Client: TCP, a Unix socket, or TLS over
// TCP (client/tls.hpp). Small on purpose, so another transport is a small class.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace moat::client {

// What a TLS transport negotiated; empty `version` for a plain transport.
struct TlsInfo {
  std::string version;       // "TLSv1.2" | "TLSv1.3"
  std::string cipher;        // e.g. "TLS_AES_128_GCM_SHA256"
  std::string alpn;          // negotiated protocol, "" if none
  std::string peer_subject;  // server certificate subject (RFC 2253), "" with PSK
  std::string psk_identity;  // with a PSK handshake
  bool resumed = false;      // resumed from a session of an earlier connection
};

// Errors of the TLS layer (category tls_category()). Anything else a transport
// reports from async_connect counts as "unreachable".
enum class TlsErrc {
  Setup = 1,          // this side cannot start TLS (no host name to verify, Unix socket, ...)
  Verification,       // the server's certificate or host name did not verify
  PeerAlert,          // the server refused the handshake (an alert: our certificate, PSK, version, ...)
  Handshake,          // any other handshake failure (no shared cipher, malformed, ...)
  ClosedInHandshake,  // the connection ended during the handshake (not a TLS port?)
};
const std::error_category& tls_category();
inline std::error_code make_error_code(TlsErrc e) {
  return {static_cast<int>(e), tls_category()};
}

class Transport {
 public:
  using ConnectHandler = std::function<void(const std::error_code&, const std::string& detail)>;
  using IoHandler = std::function<void(const std::error_code&, std::size_t)>;

  virtual ~Transport() = default;
  // Opens the stream (resolve, connect, and for TLS the handshake).
  virtual void async_connect(ConnectHandler done) = 0;
  virtual void async_read_some(std::span<std::uint8_t> into, IoHandler done) = 0;
  // Writes all of `bytes`; the buffer must stay valid until done is called.
  virtual void async_write(std::span<const std::uint8_t> bytes, IoHandler done) = 0;
  // Closes at once; pending operations complete with an error.
  virtual void close() = 0;
  // One line saying why `ec` (from a read or write of this transport) happened;
  // a TLS transport tells which alert the server sent.
  virtual std::string describe(const std::error_code& ec) const { return ec.message(); }
  // Known once async_connect succeeded.
  virtual TlsInfo tls_info() const { return {}; }
};

}  // namespace moat::client

template <>
struct std::is_error_code_enum<moat::client::TlsErrc> : std::true_type {};
