// moat: the command-line client. Shared declarations of main.cpp (options),
// run.cpp (the event loop: pub and sub), output.cpp (printing) and init.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "client/client.hpp"

namespace moat::payload {
class Keyring;  // security/payload/keyring.hpp
enum class Mode : std::uint8_t;
}  // namespace moat::payload

namespace moat::cli {

// Exit statuses; docs/cli.md lists them. Each failure class has its own.
enum Exit : int {
  kOk = 0,
  kUsage = 1,        // bad flag, topic, QoS, file; moat init refusing a folder
  kUnreachable = 2,  // TCP/Unix connect failed
  kRefused = 3,      // CONNACK 1, 2 or 3; every subscription refused
  kAuthFailed = 4,   // CONNACK 4 or 5
  kTimeout = 5,      // -W elapsed, or no CONNACK within the connect timeout
  kLost = 6,         // connection lost or protocol error mid-session
  // 7 is moat bench's kIntegrity (bench.hpp)
  kTlsFailed = 8,  // TLS handshake failed: certificate, host name, PSK, version, cipher
};

// Flags shared by pub and sub, already validated.
struct Common {
  std::string command;  // "pub" or "sub": prefixes every message
  client::Options options;
  bool debug = false;
};

enum class Source { Message, File, Lines, Null, Stdin };

struct PubArgs {
  Common common;
  std::string topic;
  Source source = Source::Message;
  std::string payload;  // for Message, File, Null and Stdin (already read)
  client::QoS qos = client::QoS::AtMostOnce;
  bool retain = false;
  // --seal MODE --keyring F: common.options.payload seals each message.
};

enum class Format { Text, Json };

struct SubArgs {
  Common common;
  std::vector<std::string> filters;
  client::QoS qos = client::QoS::AtMostOnce;
  std::vector<std::string> filter_out;  // -T
  bool verbose = false;                 // -v
  bool no_eol = false;                  // -N
  bool no_retained = false;             // -R
  std::size_t count = 0;                // -C; 0 = no limit
  unsigned timeout_s = 0;               // -W; 0 = none
  Format format = Format::Text;
  // --open --keyring F: common.options.payload verifies or decrypts each message;
  // failures go to stderr and are neither printed nor counted for -C.
  bool require_fresh = false;  // --require-fresh
};

// payload.cpp: a keyring file (throws with FILE:LINE:COLUMN), a seal mode by name
// (encrypt | encrypt-to | mac | sign), and the payload an integrity envelope
// (COSE_Sign1, COSE_Mac0) carries, unverified (moat bench's subscribers).
std::shared_ptr<payload::Keyring> load_keyring(const std::string& path);
std::optional<payload::Mode> seal_mode(std::string_view name);
std::optional<std::string_view> envelope_content(std::string_view bytes);

int run_pub(const PubArgs& a);
int run_sub(const SubArgs& a);
// moat init DIR [--host NAME]... [--tls-bind A:P] [--local-bind A:P] [--force]
struct InitArgs {
  std::string dir;
  std::vector<std::string> hosts;  // server certificate names; empty = localhost, 127.0.0.1
  std::string tls_bind = "0.0.0.0:8883";
  std::string local_bind = "127.0.0.1:1883";
  bool force = false;
};
int run_init(const InitArgs& a);

// moat passwd [-c] [-b] [-D] [--argon2-memory KIB] [--argon2-iterations N]
//             [--argon2-parallelism N] FILE USER [PASSWORD]
struct PasswdArgs {
  std::string file;
  std::string user;
  std::optional<std::string> password;  // with -b
  bool create = false;                  // -c: start a new file
  bool batch = false;                   // -b: the password is on the command line
  bool remove = false;                  // -D: delete the user
  // argon2id cost; unset = the default (security::Argon2Params). Range-checked
  // by run_passwd, so a wrong value gets an error that names its flag.
  std::optional<std::uint64_t> argon2_memory_kib;
  std::optional<std::uint64_t> argon2_iterations;
  std::optional<std::uint64_t> argon2_parallelism;
};
int run_passwd(const PasswdArgs& a);

// Prints "moat CMD: MESSAGE" as one line on stderr (newlines in MESSAGE are folded).
void error_line(std::string_view command, std::string_view message);
// Prints "moat: MESSAGE" on stderr (the -d lines).
void debug_line(std::string_view message);

// Why `topic` is not a valid PUBLISH topic name; nullopt when it is.
std::optional<std::string> topic_name_problem(std::string_view topic);
// Why `filter` is not a valid SUBSCRIBE topic filter; nullopt when it is.
std::optional<std::string> topic_filter_problem(std::string_view filter);

// Writes one received message to stdout in the chosen format and flushes.
void print_message(const SubArgs& a, const client::Message& m);
// For -d: `'topic'` quoted with non-printable bytes escaped.
std::string quoted(std::string_view s);

// Exposed for tests of the output format (and used by print_message).
std::string base64(std::string_view bytes);
std::string rfc3339_now_utc();
bool is_utf8_text(std::string_view s);

}  // namespace moat::cli
