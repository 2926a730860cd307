// moat probe: times each phase of a connection to a broker — TCP connect, each
// TLS flight, CONNACK, the first QoS 1 round trip — and prints the medians of N
// runs per TLS variant (docs/cli.md, "moat probe"; docs/tls-handshake.md).
// probe.cpp drives OpenSSL and a non-blocking socket itself; main.cpp only
// registers the subcommand.
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace moat::cli {

struct ProbeArgs {
  std::string target;        // HOST:PORT, [IPv6]:PORT or HOST
  std::string tls = "both";  // 1.2 | 1.3 | both | none
  bool resume = false;
  unsigned runs = 5;
  std::string cafile;
  std::string cert;
  std::string key;
  bool insecure = false;
  std::string psk;  // hex
  std::string psk_identity;
  std::string username;
  std::string password;
  std::string topic = "moat/probe";
  double timeout_s = 10;  // per connection, TCP connect to PUBACK
  bool json = false;
};

// Adds the `probe` subcommand with its flags, which are parsed into `a`.
CLI::App* add_probe_command(CLI::App& app, ProbeArgs& a);
// Validates `a`, runs the probe and prints the table (or JSON); returns the exit status.
int run_probe(const ProbeArgs& a);

}  // namespace moat::cli
