// Private to the client library: the TLS transport that client.cpp creates when
// Options::tls is set (tls.cpp). No Asio or OpenSSL headers here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "client/tls.hpp"
#include "client/transport.hpp"

namespace boost::asio {
class io_context;
}

namespace moat::client::detail {

std::unique_ptr<Transport> make_tls_transport(boost::asio::io_context& io, std::string host,
                                              std::uint16_t port, std::shared_ptr<TlsContext> context);

}  // namespace moat::client::detail
