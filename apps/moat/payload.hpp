// moat keygen, moat seal, moat open: payload envelopes from the command line (see
// docs/cli.md and docs/payload-security.md). payload.cpp holds the flags and the
// work; main.cpp only registers the subcommands.
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace moat::cli {

// Exit statuses of `moat open`, one per failure class (usage errors are 1, as in
// every command). docs/cli.md lists them.
inline constexpr int kVerificationFailed = 10;  // tampered, or sealed for another topic
inline constexpr int kReplayed = 11;
inline constexpr int kStale = 12;
inline constexpr int kUnknownKey = 13;
inline constexpr int kMalformed = 14;
inline constexpr int kWrongAlgorithm = 15;
inline constexpr int kNotFresh = 16;
inline constexpr int kUnsupported = 17;

struct KeygenArgs {
  std::string kind;  // aes256 | chacha20 | hmac256 | ed25519 | p256 | x25519
  std::string kid;
  std::string output;
  std::string use = "sig";  // p256: sig (ES256) or enc (ECDH-ES + HKDF-256)
  bool force = false;
};

struct SealArgs {
  std::string mode;
  std::string key;      // --key FILE
  std::string keyring;  // --keyring FILE
  std::string topic;
  std::string alg = "A256GCM";  // encrypt-to: the content algorithm
  bool no_replay_headers = false;
};

struct OpenArgs {
  std::string key;
  std::string keyring;
  std::string topic;
  std::string replay_state;  // a file that keeps the replay windows between runs
  bool require_fresh = false;
  bool digest = false;        // accept digest envelopes
  std::int64_t max_age = -1;  // seconds; -1: the keyring's (or 300)
  std::int64_t now = -1;      // judge freshness at this time (seconds since the epoch); -1: the clock
  bool verbose = false;
};

struct PayloadCommands {
  CLI::App* keygen = nullptr;
  CLI::App* seal = nullptr;
  CLI::App* open = nullptr;
  KeygenArgs keygen_args;
  SealArgs seal_args;
  OpenArgs open_args;
};

// Adds `keygen`, `seal` and `open` with their flags, parsed into `c`.
void add_payload_commands(CLI::App& app, PayloadCommands& c);
// Runs whichever of them was given; returns the exit status, or -1 if none was.
int run_payload_command(const PayloadCommands& c);

}  // namespace moat::cli
