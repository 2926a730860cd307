// The byte stream under a moat::client::Client: TCP, a Unix socket, or (from the
// TLS layer) TLS. Small on purpose, so another transport is a small class.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace moat::client {

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
};

}  // namespace moat::client
