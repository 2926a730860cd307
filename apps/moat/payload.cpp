// moat keygen / seal / open. The envelope work is in security/payload; this file
// reads flags, files and stdin, and turns each failure class into its exit status.
#include "payload.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli.hpp"
#include "security/payload/keyring.hpp"

namespace moat::cli {
namespace {

namespace payload = moat::payload;

// Envelopes travel in one MQTT PUBLISH: 256 MiB at most.
constexpr std::size_t kMaxInput = 268'435'455;

bool read_stdin(std::string& out) {
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() > kMaxInput) return true;
  }
}

bool write_stdout(std::string_view bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(STDOUT_FILENO, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

int exit_status(payload::Errc e) {
  switch (e) {
    case payload::Errc::verification_failed:
      return kVerificationFailed;
    case payload::Errc::replayed:
      return kReplayed;
    case payload::Errc::stale:
      return kStale;
    case payload::Errc::unknown_key:
      return kUnknownKey;
    case payload::Errc::malformed:
      return kMalformed;
    case payload::Errc::wrong_algorithm:
      return kWrongAlgorithm;
    case payload::Errc::not_fresh:
      return kNotFresh;
    case payload::Errc::unsupported:
      return kUnsupported;
  }
  return kUsage;
}

std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int run_keygen(const KeygenArgs& a) {
  const auto kind = payload::parse_kind(a.kind);
  if (!kind) {
    error_line("keygen",
               "unknown --kind '" + a.kind + "' (aes256, chacha20, hmac256, ed25519, p256, x25519)");
    return kUsage;
  }
  if (a.use != "sig" && a.use != "enc") {
    error_line("keygen", "--use must be sig or enc");
    return kUsage;
  }
  if (a.use == "enc" && *kind != payload::KeyKind::P256) {
    error_line("keygen", "--use applies to p256 keys only (the other kinds have one use)");
    return kUsage;
  }
  const bool pair = *kind == payload::KeyKind::Ed25519 || *kind == payload::KeyKind::P256 ||
                    *kind == payload::KeyKind::X25519;
  try {
    const payload::Key key = payload::Key::generate(*kind, a.kid, a.use == "enc");
    payload::write_key_file(a.output, key.to_jwk(true), 0600, a.force);
    if (pair) payload::write_key_file(a.output + ".pub", key.to_jwk(false), 0644, a.force);
  } catch (const payload::KeyError& e) {
    error_line("keygen", e.what());
    return kUsage;
  }
  return kOk;
}

int run_seal(const SealArgs& a) {
  const auto mode = payload::parse_mode(a.mode);
  if (!mode) {
    error_line("seal", "unknown --mode '" + a.mode + "' (encrypt, encrypt-to, mac, sign, digest)");
    return kUsage;
  }
  if (auto problem = topic_name_problem(a.topic)) {
    error_line("seal", *problem);
    return kUsage;
  }
  std::int64_t content_alg = payload::alg::A256GCM;
  if (a.alg == "ChaCha20/Poly1305" || a.alg == "chacha20") {
    content_alg = payload::alg::ChaCha20Poly1305;
  } else if (a.alg != "A256GCM" && a.alg != "aes256") {
    error_line("seal", "--alg must be A256GCM or ChaCha20/Poly1305");
    return kUsage;
  }
  if (a.key.empty() == a.keyring.empty() && !(*mode == payload::Mode::Digest && a.keyring.empty())) {
    error_line("seal", "give one of --key FILE and --keyring FILE");
    return kUsage;
  }
  std::string plaintext;
  if (!read_stdin(plaintext)) {
    error_line("seal", std::string("cannot read stdin: ") + std::strerror(errno));
    return kUsage;
  }
  if (plaintext.size() > kMaxInput) {
    error_line("seal", "the payload is larger than an MQTT message can be (256 MiB)");
    return kUsage;
  }
  payload::Result<std::string> env = payload::fail(payload::Errc::unknown_key, "");
  try {
    if (!a.keyring.empty()) {
      auto ring = payload::Keyring::load(a.keyring);
      payload::SealPolicy p;
      p.replay_headers = !a.no_replay_headers;
      p.content_alg = content_alg;
      env = ring->seal(a.topic, plaintext, *mode, p);
    } else {
      std::optional<payload::Key> key;
      if (!a.key.empty()) key = payload::load_key_file(a.key);
      payload::SealOptions o;
      o.content_alg = content_alg;
      if (!a.no_replay_headers) {
        // One envelope per run: the time in microseconds is the sequence number,
        // so it grows from one run to the next.
        const std::int64_t us = now_us();
        o.seq = static_cast<std::uint64_t>(us);
        o.iat = us / 1'000'000;
      }
      env = payload::seal(*mode, key ? &*key : nullptr, a.topic, plaintext, o);
    }
  } catch (const std::exception& e) {  // KeyError, KeyringError
    error_line("seal", e.what());
    return kUsage;
  }
  if (!env) {
    error_line("seal", env.error().message());
    return kUsage;
  }
  if (!write_stdout(*env)) {
    error_line("seal", std::string("cannot write stdout: ") + std::strerror(errno));
    return kUsage;
  }
  return kOk;
}

void save_state(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  {
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error(tmp + ": " + std::strerror(errno));
    const bool ok =
        ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) throw std::runtime_error(tmp + ": cannot write");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": " + std::strerror(errno));
}

int run_open(const OpenArgs& a) {
  if (auto problem = topic_name_problem(a.topic)) {
    error_line("open", *problem);
    return kUsage;
  }
  if (!a.key.empty() && !a.keyring.empty()) {
    error_line("open", "give only one of --key and --keyring");
    return kUsage;
  }
  if (a.key.empty() && a.keyring.empty() && !a.digest) {
    error_line("open", "give --key FILE or --keyring FILE (or --digest for digest envelopes)");
    return kUsage;
  }
  std::string envelope;
  if (!read_stdin(envelope)) {
    error_line("open", std::string("cannot read stdin: ") + std::strerror(errno));
    return kUsage;
  }
  std::unique_ptr<payload::Keyring> ring;
  try {
    if (!a.keyring.empty()) {
      ring = payload::Keyring::load(a.keyring);
    } else if (!a.key.empty()) {
      ring = payload::Keyring::single(payload::load_key_file(a.key));
    } else {
      ring = std::make_unique<payload::Keyring>(std::vector<payload::Keyring::Entry>{});
    }
    if (!a.replay_state.empty() && std::filesystem::exists(a.replay_state)) {
      std::ifstream in(a.replay_state, std::ios::binary);
      std::ostringstream ss;
      ss << in.rdbuf();
      if (!in) throw std::runtime_error(a.replay_state + ": cannot read");
      try {
        ring->replay_guard().restore(ss.str());
      } catch (const std::exception& e) {
        throw std::runtime_error(a.replay_state + ": " + e.what());
      }
    }
  } catch (const std::exception& e) {
    error_line("open", e.what());
    return kUsage;
  }

  payload::OpenPolicy policy;
  policy.require_fresh = a.require_fresh;
  policy.allow_digest = a.digest;
  if (a.max_age >= 0) policy.max_age_s = a.max_age;
  if (a.now >= 0) policy.now_s = a.now;
  auto opened = ring->open(a.topic, envelope, policy);
  if (!opened) {
    error_line("open", opened.error().message());
    return exit_status(opened.code());
  }
  if (a.verbose) {
    std::string line = std::string(payload::to_string(opened->mode)) + " " + payload::alg_name(opened->alg);
    if (!opened->kid.empty()) line += " kid=" + cli::quoted(opened->kid);
    line += opened->seq ? " seq=" + std::to_string(*opened->seq) : " seq=none";
    line += opened->iat ? " iat=" + std::to_string(*opened->iat) : " iat=none";
    error_line("open", line);
  }
  if (!a.replay_state.empty()) {
    try {
      save_state(a.replay_state, ring->replay_guard().save());
    } catch (const std::exception& e) {
      error_line("open", std::string("cannot save the replay state: ") + e.what());
      return kUsage;
    }
  }
  if (!write_stdout(opened->plaintext)) {
    error_line("open", std::string("cannot write stdout: ") + std::strerror(errno));
    return kUsage;
  }
  return kOk;
}

}  // namespace

void add_payload_commands(CLI::App& app, PayloadCommands& c) {
  // ---- moat keygen
  c.keygen = app.add_subcommand("keygen", "write a new key as a JWK file (and FILE.pub for key pairs)");
  c.keygen->set_help_flag("--help", "print this help and exit");
  KeygenArgs& k = c.keygen_args;
  c.keygen->add_option("--kind", k.kind, "aes256 | chacha20 | hmac256 | ed25519 | p256 | x25519")->required();
  c.keygen->add_option("--kid", k.kid, "key id written into the key (and into every envelope)")->required();
  c.keygen->add_option("-o,--output", k.output, "file for the private key (mode 0600)")->required();
  c.keygen->add_option("--use", k.use, "p256 only: sig (ES256 signatures) or enc (ECDH-ES encryption)")
      ->capture_default_str();
  c.keygen->add_flag("--force", k.force, "replace existing files");

  // ---- moat seal
  c.seal = app.add_subcommand("seal", "read a payload on stdin, write a COSE envelope for TOPIC on stdout");
  c.seal->set_help_flag("--help", "print this help and exit");
  SealArgs& s = c.seal_args;
  c.seal->add_option("--mode", s.mode, "encrypt | encrypt-to | mac | sign | digest")->required();
  c.seal->add_option("--key", s.key, "key file (JWK); for encrypt-to the recipient's public key");
  c.seal->add_option("--keyring", s.keyring, "keyring file: the topic's first key fit for the mode seals");
  c.seal->add_option("-t,--topic", s.topic, "the MQTT topic the envelope is for (its external AAD)")
      ->required();
  c.seal->add_option("--alg", s.alg, "encrypt-to: A256GCM or ChaCha20/Poly1305")->capture_default_str();
  c.seal->add_flag("--no-replay-headers", s.no_replay_headers,
                   "write no timestamp and no sequence number (as a plain COSE library would)");

  // ---- moat open
  c.open =
      app.add_subcommand("open", "read a COSE envelope on stdin, verify or decrypt it, write the payload");
  c.open->set_help_flag("--help", "print this help and exit");
  OpenArgs& o = c.open_args;
  c.open->add_option("--key", o.key, "key file (JWK)");
  c.open->add_option("--keyring", o.keyring, "keyring file: the topic's keys, found by key id");
  c.open->add_option("-t,--topic", o.topic, "the MQTT topic the envelope arrived on")->required();
  c.open->add_flag("--require-fresh", o.require_fresh,
                   "refuse an envelope without a protected timestamp and sequence number");
  c.open->add_flag("--digest", o.digest,
                   "accept a SHA-256 digest envelope (not tamper-proof; no key needed)");
  c.open
      ->add_option("--max-age", o.max_age, "seconds an envelope stays fresh (default: the keyring's, or 300)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{31'536'000}));
  c.open->add_option("--now", o.now, "judge freshness at this time (seconds since 1970) instead of the clock")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{253'402'300'799}));
  c.open->add_option("--replay-state", o.replay_state,
                     "file that keeps the replay windows from one run to the next (created if missing)");
  c.open->add_flag("-v,--verbose", o.verbose,
                   "print the mode, algorithm, key id, sequence number and time on stderr");
}

int run_payload_command(const PayloadCommands& c) {
  if (c.keygen->parsed()) return run_keygen(c.keygen_args);
  if (c.seal->parsed()) return run_seal(c.seal_args);
  if (c.open->parsed()) return run_open(c.open_args);
  return -1;
}

std::shared_ptr<payload::Keyring> load_keyring(const std::string& path) {
  return payload::Keyring::load(path);
}

std::optional<payload::Mode> seal_mode(std::string_view name) {
  const auto m = payload::parse_mode(name);
  if (!m || *m == payload::Mode::Digest) return std::nullopt;
  return m;
}

std::optional<std::string_view> envelope_content(std::string_view bytes) {
  auto env = payload::decode(bytes);
  if (!env || (env->kind != payload::Envelope::Kind::Sign1 && env->kind != payload::Envelope::Kind::Mac0))
    return std::nullopt;
  return env->content;
}

}  // namespace moat::cli
