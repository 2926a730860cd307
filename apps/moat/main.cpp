// moat: the Moat command-line client. `moat pub` and `moat sub` take the flags of
// mosquitto_pub and mosquitto_sub; `moat init DIR` writes a broker setup.
// This file parses and validates the command line; run.cpp does the MQTT work.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "bench.hpp"
#include "cli.hpp"
#include "payload.hpp"
#include "probe.hpp"
#include "security/payload/keyring.hpp"
#include "tls_flags.hpp"

namespace {

using moat::cli::error_line;
namespace client = moat::client;

// Largest payload that fits in one PUBLISH with `topic` (remaining length 268435455).
constexpr std::size_t kMaxRemaining = 268'435'455;

// The flags pub and sub share, as parsed (validated in to_common).
struct CommonFlags {
  std::string host = "localhost";
  int port = 1883;
  std::string unix_path;
  std::string id;
  std::string id_prefix;
  std::string username;
  std::string password;
  int keepalive = 60;
  bool no_clean = false;
  bool debug = false;
  std::string version = "mqttv311";
  int qos = 0;
  std::string will_topic;
  std::string will_payload;
  int will_qos = 0;
  bool will_retain = false;
  bool reconnect = false;
  moat::cli::TlsFlags tls;
  // Options whose presence matters (an empty value is still "given").
  CLI::Option* port_opt = nullptr;
  CLI::Option* id_opt = nullptr;
  CLI::Option* prefix_opt = nullptr;
  CLI::Option* user_opt = nullptr;
  CLI::Option* pass_opt = nullptr;
  CLI::Option* will_topic_opt = nullptr;
  CLI::Option* will_payload_opt = nullptr;
  CLI::Option* will_qos_opt = nullptr;
  CLI::Option* will_retain_opt = nullptr;
};

void add_common(CLI::App* app, CommonFlags& f, const char* qos_help) {
  app->add_option("-h,--host", f.host, "broker host name or address")->capture_default_str();
  f.port_opt = app->add_option("-p,--port", f.port, "broker port (default 1883, with TLS 8883)")
                   ->check(CLI::Range(1, 65535));
  app->add_option("--unix", f.unix_path, "connect through this Unix socket instead of TCP");
  f.id_opt = app->add_option("-i,--id", f.id, "client identifier (default: assigned by the broker)");
  f.prefix_opt = app->add_option("-I,--id-prefix", f.id_prefix,
                                 "client identifier: this prefix followed by the process id");
  f.id_opt->excludes(f.prefix_opt);
  f.user_opt = app->add_option("-u,--username", f.username, "user name");
  f.pass_opt = app->add_option("-P,--pw", f.password, "password (needs -u)");
  app->add_option("-k,--keepalive", f.keepalive, "keep-alive in seconds; 0 = off")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app->add_flag("-c,--disable-clean-session", f.no_clean,
                "persistent session (clean session off; needs -i or -I)");
  app->add_flag("-d,--debug", f.debug, "print what is sent and received on stderr");
  app->add_option("-V,--protocol-version", f.version, "mqttv311 (or 311) | mqttv31 (or 31)")
      ->capture_default_str();
  app->add_option("-q,--qos", f.qos, qos_help)->capture_default_str()->check(CLI::Range(0, 2));
  f.will_topic_opt = app->add_option("--will-topic", f.will_topic, "topic of the will message");
  f.will_payload_opt =
      app->add_option("--will-payload", f.will_payload, "payload of the will (default: empty)");
  f.will_qos_opt =
      app->add_option("--will-qos", f.will_qos, "QoS of the will (default 0)")->check(CLI::Range(0, 2));
  f.will_retain_opt = app->add_flag("--will-retain", f.will_retain, "the will is retained");
  app->add_flag("--reconnect", f.reconnect, "reconnect after a lost connection (off by default)");
  moat::cli::add_tls_flags(app, f.tls);
}

// Builds the client options from the flags, or prints why not and returns false.
bool to_common(const std::string& cmd, const CommonFlags& f, moat::cli::Common& c) {
  c.command = cmd;
  c.debug = f.debug;
  auto& o = c.options;
  o.host = f.host;
  o.port = static_cast<std::uint16_t>(f.port);
  o.unix_socket = f.unix_path;
  o.keep_alive = static_cast<std::uint16_t>(f.keepalive);
  o.clean_session = !f.no_clean;
  o.reconnect.enabled = f.reconnect;

  if (f.version == "mqttv311" || f.version == "311") {
    o.version = client::ProtocolVersion::V311;
  } else if (f.version == "mqttv31" || f.version == "31") {
    o.version = client::ProtocolVersion::V31;
  } else if (f.version == "mqttv5" || f.version == "5") {
    error_line(cmd, "MQTT 5 is not supported yet (use -V mqttv311 or -V mqttv31)");
    return false;
  } else {
    error_line(cmd, "unknown protocol version '" + f.version + "' (mqttv311, 311, mqttv31 or 31)");
    return false;
  }

  if (f.id_opt->count() > 0) {
    if (f.id.empty() && f.no_clean) {
      error_line(cmd, "-c needs a non-empty client identifier (-i or -I)");
      return false;
    }
    o.client_id = f.id;
  } else if (f.prefix_opt->count() > 0) {
    o.client_id = f.id_prefix + std::to_string(::getpid());
  } else if (f.no_clean) {
    error_line(cmd, "-c (persistent session) needs a client identifier: give -i ID or -I PREFIX");
    return false;
  } else if (o.version == client::ProtocolVersion::V31) {
    // MQTT 3.1 has no identifiers assigned by the broker.
    o.client_id = "moat-" + cmd + "-" + std::to_string(::getpid());
  }
  if (!moat::cli::is_utf8_text(o.client_id) || o.client_id.size() > 65535) {
    error_line(cmd, "the client identifier is not valid UTF-8 (or contains U+0000)");
    return false;
  }

  if (f.pass_opt->count() > 0 && f.user_opt->count() == 0) {
    error_line(cmd, "a password (-P) needs a user name (-u)");
    return false;
  }
  if (f.user_opt->count() > 0) {
    if (!moat::cli::is_utf8_text(f.username) || f.username.size() > 65535) {
      error_line(cmd, "the user name is not valid UTF-8 (or contains U+0000)");
      return false;
    }
    o.username = f.username;
  }
  if (f.pass_opt->count() > 0) {
    if (f.password.size() > 65535) {
      error_line(cmd, "the password is longer than 65535 bytes");
      return false;
    }
    o.password = f.password;
  }

  const bool will_parts =
      f.will_payload_opt->count() > 0 || f.will_qos_opt->count() > 0 || f.will_retain_opt->count() > 0;
  if (f.will_topic_opt->count() > 0) {
    if (auto problem = moat::cli::topic_name_problem(f.will_topic)) {
      error_line(cmd, "--will-topic: " + *problem);
      return false;
    }
    if (f.will_payload.size() > 65535) {
      error_line(cmd, "--will-payload is longer than 65535 bytes");
      return false;
    }
    o.will = client::Will{f.will_topic, f.will_payload, static_cast<client::QoS>(f.will_qos), f.will_retain};
  } else if (will_parts) {
    error_line(cmd, "--will-payload, --will-qos and --will-retain need --will-topic");
    return false;
  }

  // As mosquitto_pub: TLS defaults to port 8883, and port 8883 without any TLS
  // flag means TLS with the system's trust store.
  auto tls = f.tls;
  const bool port_given = f.port_opt->count() > 0;
  if (port_given && f.port == 8883 && !moat::cli::tls_requested(tls) && f.unix_path.empty())
    tls.os_certs = true;
  if (!moat::cli::apply_tls_flags(cmd, tls, o)) return false;
  if (o.tls && !port_given) o.port = 8883;
  return true;
}

bool read_fd_all(int fd, std::string& out) {
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() > kMaxRemaining) return true;  // too large: reported by the caller
  }
}

// Which subcommand argv names, to prefix a parse error ("moat pub: ...").
// "pub, sub, ..." in the order the commands were added.
std::string command_names(const CLI::App& app) {
  std::string names;
  for (const CLI::App* c : app.get_subcommands([](const CLI::App*) { return true; }))
    names += (names.empty() ? "" : ", ") + c->get_name();
  return names;
}

// The first argument that names one of the app's commands, or "".
std::string subcommand_in(const CLI::App& app, int argc, char** argv) {
  const auto commands = app.get_subcommands([](const CLI::App*) { return true; });
  for (int i = 1; i < argc; ++i)
    for (const CLI::App* c : commands)
      if (c->get_name() == argv[i]) return c->get_name();
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moat - the Moat MQTT command-line client"};
  app.set_help_flag("--help", "print this help and exit");
  app.set_version_flag("--version", std::string("moat ") + MOAT_VERSION, "print the version and exit");
  app.require_subcommand(1);

  // ---- moat pub
  CLI::App* pub = app.add_subcommand("pub", "publish a message (as mosquitto_pub)");
  pub->set_help_flag("--help", "print this help and exit");
  CommonFlags pf;
  add_common(pub, pf, "QoS of the message: 0, 1 or 2");
  std::string pub_topic;
  std::string message;
  std::string file;
  bool lines = false;
  bool null_msg = false;
  bool whole_stdin = false;
  bool retain = false;
  auto* pub_topic_opt = pub->add_option("-t,--topic", pub_topic, "topic to publish to (required)");
  auto* msg_opt = pub->add_option("-m,--message", message, "the message payload");
  auto* file_opt = pub->add_option("-f,--file", file, "send the contents of FILE as the message");
  pub->add_flag("-l,--stdin-line", lines, "send each line read from stdin as a message");
  pub->add_flag("-n,--null-message", null_msg, "send an empty (zero length) message");
  pub->add_flag("-s,--stdin-file", whole_stdin, "send all of stdin as one message");
  pub->add_flag("-r,--retain", retain, "the message is retained");
  std::string pub_seal;
  std::string pub_keyring;
  pub->add_option("--seal", pub_seal,
                  "seal each message: encrypt | encrypt-to | mac | sign (needs --keyring)")
      ->check(CLI::IsMember({"encrypt", "encrypt-to", "mac", "sign"}));
  pub->add_option(
      "--keyring", pub_keyring,
      "keyring file (docs/payload-security.md) whose key for the topic seals; without --seal, the "
      "entry's seal mode");

  // ---- moat sub
  CLI::App* sub = app.add_subcommand("sub", "subscribe and print messages (as mosquitto_sub)");
  sub->set_help_flag("--help", "print this help and exit");
  CommonFlags sf;
  add_common(sub, sf, "QoS requested for every filter: 0, 1 or 2");
  moat::cli::SubArgs sa;
  std::string format = "text";
  sub->add_option("-t,--topic", sa.filters, "topic filter to subscribe to (required, repeatable)");
  sub->add_option("-T,--filter-out", sa.filter_out, "do not print topics matching this filter (repeatable)");
  sub->add_flag("-v,--verbose", sa.verbose, "print \"topic payload\" (text format)");
  sub->add_flag("-N", sa.no_eol, "no newline after each payload (text format)");
  sub->add_flag("-R", sa.no_retained, "do not print stale retained messages (RETAIN=1)");
  sub->add_option("-C,--count", sa.count, "disconnect and exit after COUNT messages")
      ->check(CLI::Range(std::size_t{1}, std::size_t{4294967295}));
  sub->add_option("-W,--timeout", sa.timeout_s, "exit with status 5 after SECONDS")
      ->check(CLI::Range(1u, 31'536'000u));
  sub->add_option("--format", format, "text | json (one JSON object per line)")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  bool sub_open = false;
  std::string sub_keyring;
  sub->add_flag(
      "--open", sub_open,
      "verify or decrypt each message with --keyring; failures are reported on stderr, not printed");
  sub->add_option("--keyring", sub_keyring, "keyring file for --open (docs/payload-security.md)");
  sub->add_flag("--require-fresh", sa.require_fresh, "with --open: refuse envelopes without replay headers");

  // ---- moat init
  CLI::App* init = app.add_subcommand(
      "init",
      "write a secure broker setup (CA, certificates, CRL, passwd, acl, moat.toml) into a new folder");
  init->set_help_flag("--help", "print this help and exit");
  moat::cli::InitArgs init_args;
  init->add_option("DIR", init_args.dir, "folder to create (must be new or empty)")->required();
  init->add_option("--host", init_args.hosts,
                   "name or IP address of the broker in its certificate (repeatable; default: localhost and "
                   "127.0.0.1)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  init->add_option("--tls-bind", init_args.tls_bind, "address:port of the TLS listener")
      ->capture_default_str();
  init->add_option("--local-bind", init_args.local_bind, "address:port of the plain loopback listener")
      ->capture_default_str();
  init->add_flag("--force", init_args.force,
                 "write into DIR even if it is not empty (every file moat init writes is replaced)");

  // ---- moat passwd (passwd.cpp)
  CLI::App* passwd = app.add_subcommand("passwd", "create or update a password file (as mosquitto_passwd)");
  passwd->set_help_flag("--help", "print this help and exit");
  moat::cli::PasswdArgs passwd_args;
  std::string passwd_password;
  passwd->add_flag("-c", passwd_args.create, "create a new file (replaces an existing one)");
  passwd->add_flag("-b", passwd_args.batch, "take the password from the command line");
  passwd->add_flag("-D", passwd_args.remove, "delete the user");
  passwd->add_option("FILE", passwd_args.file, "password file")->required();
  passwd->add_option("USER", passwd_args.user, "user name")->required();
  passwd->add_option("PASSWORD", passwd_password, "password (with -b)");
  std::uint64_t passwd_memory = 0, passwd_iterations = 0, passwd_parallelism = 0;
  CLI::Option* passwd_memory_opt =
      passwd->add_option("--argon2-memory", passwd_memory,
                         "argon2id memory cost in KiB (default 32768; 8 x parallelism..4194304)");
  CLI::Option* passwd_iterations_opt =
      passwd->add_option("--argon2-iterations", passwd_iterations, "argon2id passes (default 2; 1..1000)");
  CLI::Option* passwd_parallelism_opt =
      passwd->add_option("--argon2-parallelism", passwd_parallelism, "argon2id lanes (default 1; 1..64)");

  // ---- moat bench (bench.cpp)
  moat::cli::BenchArgs bench_args;
  CLI::App* bench = moat::cli::add_bench_command(app, bench_args);

  // ---- moat probe (probe.cpp)
  moat::cli::ProbeArgs probe_args;
  CLI::App* probe = moat::cli::add_probe_command(app, probe_args);
  // ---- moat keygen, seal, open (payload.cpp)
  moat::cli::PayloadCommands payload_commands;
  moat::cli::add_payload_commands(app, payload_commands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    const std::string which = subcommand_in(app, argc, argv);
    std::string what = e.what();
    if (dynamic_cast<const CLI::RequiredError*>(&e) && which.empty())
      what = "a command is required: " + command_names(app);
    error_line(which, what + " (see moat " + (which.empty() ? "" : which + " ") + "--help)");
    return moat::cli::kUsage;
  }

  try {
    if (init->parsed()) return moat::cli::run_init(init_args);
    if (passwd->parsed()) {
      if (passwd_args.batch != !passwd_password.empty() && !passwd_args.remove) {
        error_line("passwd",
                   passwd_args.batch ? "-b needs the password after USER" : "a PASSWORD argument needs -b");
        return moat::cli::kUsage;
      }
      if (passwd_args.batch) passwd_args.password = passwd_password;
      if (passwd_memory_opt->count()) passwd_args.argon2_memory_kib = passwd_memory;
      if (passwd_iterations_opt->count()) passwd_args.argon2_iterations = passwd_iterations;
      if (passwd_parallelism_opt->count()) passwd_args.argon2_parallelism = passwd_parallelism;
      return moat::cli::run_passwd(passwd_args);
    }
    if (bench->parsed()) return moat::cli::run_bench(bench_args);
    if (probe->parsed()) return moat::cli::run_probe(probe_args);
    if (const int rc = moat::cli::run_payload_command(payload_commands); rc >= 0) return rc;

    if (pub->parsed()) {
      moat::cli::PubArgs pa;
      if (pub_topic_opt->count() == 0) {
        error_line("pub", "no topic given: use -t TOPIC");
        return moat::cli::kUsage;
      }
      if (!to_common("pub", pf, pa.common)) return moat::cli::kUsage;
      const int sources = static_cast<int>(msg_opt->count() > 0) + static_cast<int>(file_opt->count() > 0) +
                          static_cast<int>(lines) + static_cast<int>(null_msg) +
                          static_cast<int>(whole_stdin);
      if (sources != 1) {
        error_line("pub", sources == 0 ? "no message given: use one of -m, -f, -l, -n or -s"
                                       : "give only one of -m, -f, -l, -n and -s");
        return moat::cli::kUsage;
      }
      if (auto problem = moat::cli::topic_name_problem(pub_topic)) {
        error_line("pub", *problem);
        return moat::cli::kUsage;
      }
      pa.topic = pub_topic;
      if (!pub_seal.empty() && pub_keyring.empty()) {
        error_line("pub", "--seal needs --keyring FILE");
        return moat::cli::kUsage;
      }
      if (!pub_keyring.empty()) {
        // The client library seals each message (client::PayloadSecurity); checked here
        // first, so that a missing key is a usage error before anything is sent.
        auto& ps = pa.common.options.payload;
        try {
          ps.keyring = moat::payload::Keyring::load(pub_keyring);
        } catch (const std::exception& e) {
          error_line("pub", e.what());
          return moat::cli::kUsage;
        }
        ps.seal_mode =
            pub_seal.empty() ? ps.keyring->seal_mode_for(pa.topic) : moat::payload::parse_mode(pub_seal);
        ps.open = false;
        if (!ps.seal_mode) {
          error_line("pub", "--keyring " + pub_keyring + " names no seal mode for " +
                                moat::cli::quoted(pa.topic) +
                                ": give --seal encrypt | encrypt-to | mac | sign");
          return moat::cli::kUsage;
        }
        if (!ps.keyring->can_seal(pa.topic, *ps.seal_mode)) {
          error_line(
              "pub",
              pub_keyring + " has no key for " + moat::cli::quoted(pa.topic) + " that seals in mode " +
                  std::string(moat::payload::to_string(*ps.seal_mode)) +
                  (*ps.seal_mode == moat::payload::Mode::Sign ? " (signing needs a private key)" : ""));
          return moat::cli::kUsage;
        }
      }
      pa.qos = static_cast<client::QoS>(pf.qos);
      pa.retain = retain;
      if (msg_opt->count() > 0) {
        pa.source = moat::cli::Source::Message;
        pa.payload = message;
      } else if (file_opt->count() > 0) {
        pa.source = moat::cli::Source::File;
        std::ifstream in(file, std::ios::binary);
        if (!in) {
          error_line("pub", "cannot open " + file + ": " + std::strerror(errno));
          return moat::cli::kUsage;
        }
        std::ostringstream ss;
        ss << in.rdbuf();
        if (in.bad()) {
          error_line("pub", "cannot read " + file);
          return moat::cli::kUsage;
        }
        pa.payload = std::move(ss).str();
      } else if (lines) {
        pa.source = moat::cli::Source::Lines;
      } else if (null_msg) {
        pa.source = moat::cli::Source::Null;
      } else {
        pa.source = moat::cli::Source::Stdin;
        if (!read_fd_all(STDIN_FILENO, pa.payload)) {
          error_line("pub", std::string("cannot read stdin: ") + std::strerror(errno));
          return moat::cli::kUsage;
        }
      }
      if (pa.payload.size() + pa.topic.size() + 4 > kMaxRemaining) {
        error_line("pub", "the message is too large for one MQTT packet (256 MiB)");
        return moat::cli::kUsage;
      }
      return moat::cli::run_pub(pa);
    }

    if (sub->parsed()) {
      if (sa.filters.empty()) {
        error_line("sub", "no topic filter given: use -t FILTER (repeatable)");
        return moat::cli::kUsage;
      }
      if (!to_common("sub", sf, sa.common)) return moat::cli::kUsage;
      for (const auto& f : sa.filters) {
        if (auto problem = moat::cli::topic_filter_problem(f)) {
          error_line("sub", *problem);
          return moat::cli::kUsage;
        }
      }
      for (const auto& f : sa.filter_out) {
        if (auto problem = moat::cli::topic_filter_problem(f)) {
          error_line("sub", "-T: " + *problem);
          return moat::cli::kUsage;
        }
      }
      if (sub_open != !sub_keyring.empty()) {
        error_line("sub", sub_open ? "--open needs --keyring FILE" : "--keyring is for --open");
        return moat::cli::kUsage;
      }
      if (sa.require_fresh && !sub_open) {
        error_line("sub", "--require-fresh is for --open");
        return moat::cli::kUsage;
      }
      if (sub_open) {
        // The client library opens each message (client::PayloadSecurity); as strict as
        // `moat open`: anything that does not open is reported, not printed.
        auto& ps = sa.common.options.payload;
        try {
          ps.keyring = moat::payload::Keyring::load(sub_keyring);
        } catch (const std::exception& e) {
          error_line("sub", e.what());
          return moat::cli::kUsage;
        }
        ps.seal = false;
        ps.require_fresh = sa.require_fresh;
        ps.require_sealed = true;
        ps.reject_unkeyed = true;
      }
      sa.qos = static_cast<client::QoS>(sf.qos);
      sa.format = format == "json" ? moat::cli::Format::Json : moat::cli::Format::Text;
      return moat::cli::run_sub(sa);
    }
  } catch (const std::exception& e) {
    error_line(subcommand_in(app, argc, argv), std::string("unexpected error: ") + e.what());
    return moat::cli::kLost;
  }
  error_line("", "a command is required: pub, sub or init (see moat --help)");
  return moat::cli::kUsage;
}
