// moat bench: the load generator (see docs/cli.md, "moat bench", and
// docs/benchmarks.md). bench.cpp holds the flags, the event loops and the report;
// main.cpp only registers the subcommand.
#pragma once

#include <cstdint>
#include <string>

#include "tls_flags.hpp"

namespace CLI {
class App;
}

namespace moat::cli {

// Exit status of `moat bench` when QoS 1/2 messages were lost or reordered
// (or QoS 2 messages duplicated). The others are those of cli.hpp.
inline constexpr int kIntegrity = 7;

struct BenchArgs {
  std::string scenario;  // pub | sub | fanin | fanout | pairs | conn
  std::string host = "127.0.0.1";
  int port = 0;          // 0: 1883, or 8883 with TLS
  std::string username;  // empty: none
  std::string password;  // empty: none
  std::string topic = "moat-bench";
  // Each publisher cycles over this many topics below its own (TOPIC/0 ..);
  // 1: it publishes to its topic alone.
  unsigned spread = 1;
  std::string id_prefix;  // default: "mb<pid>-" (clean) or "moat-bench-" (--persistent)
  unsigned clients = 10;  // publishers, subscribers, pairs or concurrent connections
  int qos = 0;
  std::size_t size = 64;
  double rate = 0;  // messages per second over all publishers; 0 = flat out
  double duration = 5;
  double warmup = 1;
  double drain = 10;  // at most this long for the tail of deliveries
  unsigned threads = 1;
  unsigned inflight = 20;
  unsigned backlog = 1000;  // per publisher: published and not yet received (0 = unlimited)
  unsigned keepalive = 60;
  bool persistent = false;
  bool clean_session = false;  // the default; the flag exists to say so explicitly
  bool json = false;
  bool quiet = false;
  long broker_pid = 0;
  TlsFlags tls;         // as moat pub; --tls-resume sets tls.resume
  std::string seal;     // --seal sign | mac: publishers seal each message with --keyring
  std::string keyring;  // --keyring
};

// Adds the `bench` subcommand with its flags, which are parsed into `a`.
CLI::App* add_bench_command(CLI::App& app, BenchArgs& a);
// Validates `a` and runs the benchmark; returns the exit status.
int run_bench(const BenchArgs& a);

}  // namespace moat::cli
