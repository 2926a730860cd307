// The TLS flags of moat pub, moat sub and moat bench (mosquitto_pub's names),
// and how they become a client::TlsContext.
#pragma once

#include <string>
#include <vector>

#include "client/client.hpp"

namespace CLI {
class App;
}

namespace moat::cli {

struct TlsFlags {
  std::string cafile;
  std::string capath;
  bool os_certs = false;  // --tls-use-os-certs
  std::string cert;
  std::string key;
  std::string key_password;
  bool insecure = false;
  std::string version;      // --tls-version: minimum
  std::string max_version;  // --tls-max-version
  std::string ciphers;
  std::string ciphersuites;
  std::string psk;
  std::string psk_identity;
  std::vector<std::string> alpn;
  std::string sni;
  bool resume = true;  // keep the TLS session for a reconnect (bench: --tls-resume)
};

void add_tls_flags(CLI::App* app, TlsFlags& f);

// True when a flag that switches TLS on was given (--cafile, --capath,
// --tls-use-os-certs, --psk), as mosquitto_pub decides.
bool tls_requested(const TlsFlags& f);

// Sets o.tls from the flags (nothing without TLS). On a problem prints one
// line "moat CMD: ..." and returns false (exit status 1). --insecure prints its
// warning line here.
bool apply_tls_flags(const std::string& cmd, const TlsFlags& f, client::Options& o);

}  // namespace moat::cli
