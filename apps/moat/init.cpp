// moat init DIR: writes a complete, commented moat.toml that this version of
// moatd accepts. The TLS issue extends it with a CA, certificates, a password
// file and an ACL file.
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "cli.hpp"

namespace moat::cli {

namespace {

namespace fs = std::filesystem;

std::string config_text() {
  return std::string(R"(# moat.toml: written by `moat init` (moat )") + MOAT_VERSION + R"().
#
# Start the broker:        moatd -c moat.toml
# Check this file:         moatd --check-config -c moat.toml
#
# Every key is described in docs/configuration.md. Relative paths are relative
# to the folder of this file. moatd refuses to start on an unknown key or a
# value out of range, rather than guess.
#
# This version of moatd serves MQTT 3.1.1 and 3.1 over plain TCP and admits
# anonymous clients only, so this setup listens on the loopback interface
# alone. When TLS, passwords and ACLs land, `moat init` will also write into
# this folder: a CA (ca.crt, ca.key), a server certificate (server.crt,
# server.key), a client certificate (client.crt, client.key), a password file
# (passwd) and an ACL file (acl), and add a TLS listener on port 8883 here.

[broker]
data_dir = "data"        # durable state, relative to this file; locked by one moatd
threads = 0              # event loops; 0 = one per core
sys_interval = 10        # seconds between $SYS/broker/... updates; 0 = off

[log]
level = "info"           # trace | debug | info | warn | error (logs go to stderr)

[limits]
max_packet_size = 16777216     # bytes, fixed header included (64 - 268435460)
connect_timeout = 10           # seconds a new connection may take to send CONNECT
max_inflight_messages = 20     # outbound QoS 1/2 messages per session awaiting acknowledgement
max_queued_messages = 1000     # messages per session behind the in-flight window; 0 = no queue
queue_qos0_offline = false     # also queue QoS 0 messages for offline persistent sessions

[store]
engine = "memory"        # memory (state lives as long as the process); rocksdb comes later

# Plain MQTT on the loopback interface only. Anonymous clients are admitted,
# which is why this listener must not be bound to a public address.
[[listener]]
name = "local"
bind = "127.0.0.1:1883"
transport = "tcp"        # tcp (tls, ws and wss come later)
auth = ["anonymous"]     # anonymous (password, certificate, psk, jwt and http come later)
)";
}

}  // namespace

int run_init(const std::string& dir_arg, bool force) {
  const std::string cmd = "init";
  if (dir_arg.empty()) {
    error_line(cmd, "the folder name is empty");
    return kUsage;
  }
  const fs::path dir(dir_arg);
  std::error_code ec;
  const auto st = fs::status(dir, ec);
  if (fs::exists(st)) {
    if (!fs::is_directory(st)) {
      error_line(cmd, dir_arg + " exists and is not a folder");
      return kUsage;
    }
    const bool empty = fs::is_empty(dir, ec);
    if (ec) {
      error_line(cmd, "cannot read " + dir_arg + ": " + ec.message());
      return kUsage;
    }
    if (!empty && !force) {
      error_line(cmd, dir_arg + " exists and is not empty (use --force to write into it anyway)");
      return kUsage;
    }
  } else {
    fs::create_directories(dir, ec);
    if (ec) {
      error_line(cmd, "cannot create " + dir_arg + ": " + ec.message());
      return kUsage;
    }
    // The folder will hold private keys and password hashes: owner only.
    ::chmod(dir.c_str(), 0700);
  }

  const fs::path file = dir / "moat.toml";
  const fs::path tmp = dir / ".moat.toml.tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) {
      error_line(cmd, "cannot write " + tmp.string() + ": " + std::strerror(errno));
      return kUsage;
    }
    out << config_text();
    out.close();
    if (!out) {
      error_line(cmd, "cannot write " + tmp.string() + ": " + std::strerror(errno));
      fs::remove(tmp, ec);
      return kUsage;
    }
  }
  fs::rename(tmp, file, ec);
  if (ec) {
    error_line(cmd, "cannot write " + file.string() + ": " + ec.message());
    fs::remove(tmp, ec);
    return kUsage;
  }

  std::printf("wrote %s\n", file.string().c_str());
  std::printf("next: moatd -c %s\n", file.string().c_str());
  std::fflush(stdout);
  return kOk;
}

}  // namespace moat::cli
