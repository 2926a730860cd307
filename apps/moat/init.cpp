// moat init DIR: a complete, secure starting point for moatd in one folder: a CA,
// a server and a client certificate, an empty CRL, a password file with one
// user, an ACL file and a commented moat.toml (docs/cli.md, "moat init").
#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <stdexcept>

#include "cli.hpp"
#include "security/password_file.hpp"
#include "security/pki.hpp"

namespace moat::cli {

namespace {

namespace fs = std::filesystem;
namespace pki = security::pki;

constexpr const char* kUser = "user-1";
constexpr const char* kDevice = "device-1";
constexpr auto kCertValidity = std::chrono::hours(24 * 397);  // certificates and the CRL
constexpr auto kCaValidity = std::chrono::hours(24 * 3650);

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Writes `text` to dir/name atomically (temporary file, fsync, rename) with `mode`.
void write_file(const fs::path& dir, const std::string& name, const std::string& text, mode_t mode) {
  const fs::path file = dir / name;
  const fs::path tmp = dir / ("." + name + ".tmp");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) throw Failure("cannot write " + tmp.string() + ": " + std::strerror(errno));
  ::fchmod(fd, mode);  // whatever the umask or an earlier file said
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw Failure("cannot write " + tmp.string() + ": " + std::strerror(err));
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Failure("cannot write " + tmp.string() + ": " + std::strerror(err));
  }
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Failure("cannot write " + file.string() + ": " + std::strerror(err));
  }
}

// 18 random bytes as 24 characters of base64url: 144 bits, typeable, no quoting needed.
std::string random_password() {
  unsigned char bytes[18];
  if (RAND_bytes(bytes, sizeof bytes) != 1) throw Failure("no random bytes for the password");
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  for (std::size_t i = 0; i < sizeof bytes; i += 3) {
    const unsigned v = (unsigned{bytes[i]} << 16) | (unsigned{bytes[i + 1]} << 8) | bytes[i + 2];
    for (int shift = 18; shift >= 0; shift -= 6) out += kAlphabet[(v >> shift) & 63];
  }
  return out;
}

bool is_ip(const std::string& s) {
  unsigned char buf[16];
  return ::inet_pton(AF_INET, s.c_str(), buf) == 1 || ::inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// "ADDR:PORT" or "[V6]:PORT" -> (ADDR, PORT); empty ADDR on a malformed value.
std::pair<std::string, std::string> split_bind(const std::string& b) {
  const auto colon = b.rfind(':');
  if (colon == std::string::npos || colon + 1 == b.size()) return {};
  std::string addr = b.substr(0, colon);
  const std::string port = b.substr(colon + 1);
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
      std::stoul(port) > 65535)
    return {};
  if (addr.size() >= 2 && addr.front() == '[' && addr.back() == ']') addr = addr.substr(1, addr.size() - 2);
  if (!is_ip(addr)) return {};
  return {addr, port};
}

std::string date_text(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
  return buf;
}

std::string host_list(const std::vector<std::string>& hosts) {
  std::string s;
  for (const auto& h : hosts) s += (s.empty() ? "" : ", ") + h;
  return s;
}

std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string config_text(const InitArgs& a, std::chrono::system_clock::time_point expires) {
  return std::string("# moat.toml: written by `moat init` (moat ") + MOAT_VERSION + R"().
#
# Start the broker:        moatd -c moat.toml
# Check this file:         moatd --check-config -c moat.toml
#
# Every key is described in docs/configuration.md, the TLS and ACL rules in
# docs/security.md. Relative paths are relative to the folder of this file.
# moatd refuses to start on an unknown key or a value out of range.
#
# Files of this folder (private keys and passwd are readable by the owner only):
#   ca.crt, ca.key           the certificate authority (ECDSA P-256). ca.key signs
#                            certificates and CRLs: keep it offline once done.
#   server.crt, server.key   the broker's certificate, for: )" +
         host_list(a.hosts) + R"(
#   client.crt, client.key   a client certificate, CN=)" +
         kDevice + R"( (its MQTT user name)
#   ca.crl                   the CA's revocation list (empty)
#   passwd                   user ")" +
         kUser + R"(" (argon2id hash; the password was printed once)
#   acl                      who may publish and subscribe where
# The certificates and the CRL are valid until )" +
         date_text(expires) + R"(; moatd refuses to start with an
# expired server certificate or CRL.

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
engine = "rocksdb"       # durable sessions and retained messages in data/store
durability = "sync"      # acknowledged = on disk

[auth.password]
file = "passwd"          # moat passwd passwd USER adds or changes a user

[acl]
file = "acl"             # anything the ACL does not allow is denied

# Plain MQTT for programs on this machine only (loopback). No anonymous access:
# clients log in with a user name and password from passwd.
[[listener]]
name = "local"
bind = )" +
         toml_string(a.local_bind) +
         R"(
transport = "tcp"
auth = ["password"]

# MQTT over TLS (1.2 and 1.3) on every interface. A client must present a
# certificate issued by ca.crt and not revoked in ca.crl (mutual TLS); the
# certificate's CN becomes its user name for the ACL. "password" applies to a
# client whose certificate carries no CN.
[[listener]]
name = "tls"
bind = )" +
         toml_string(a.tls_bind) +
         R"(
transport = "tls"
auth = ["certificate", "password"]
  [listener.tls]
  cert = "server.crt"
  key = "server.key"
  ca = "ca.crt"              # CAs trusted for client certificates
  client_cert = "required"   # none | optional | required
  crl = ["ca.crl"]
  min_version = "1.2"        # 1.2 | 1.3
  identity_from = "cn"       # cn | san-dns | san-email | san-uri | subject
)";
}

std::string acl_text() {
  return std::string(R"(# acl: written by `moat init`; Mosquitto's acl_file format (docs/security.md,
# "ACL file"). Anything not allowed here is denied, to every client.

# The client certificate client.crt (CN=)") +
         kDevice + R"() connects over TLS as user )" + kDevice + R"(.
user )" + kDevice +
         R"(
topic readwrite devices/)" +
         kDevice + R"(/#

# The password user of passwd (loopback listener, or TLS without a CN).
user )" + kUser +
         R"(
topic readwrite users/)" +
         kUser + R"(/#

# More devices with one rule each: every client under devices/<its user name>/.
# pattern readwrite devices/%u/#
)";
}

std::string shell_quote(const std::string& s) {
  if (!s.empty() &&
      s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:,@") ==
          std::string::npos)
    return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

int run_init(const InitArgs& args) {
  const std::string cmd = "init";
  InitArgs a = args;
  if (a.dir.empty()) {
    error_line(cmd, "the folder name is empty");
    return kUsage;
  }
  if (a.hosts.empty()) a.hosts = {"localhost", "127.0.0.1"};
  for (const auto& h : a.hosts) {
    const bool ok = !h.empty() && h.size() <= 253 &&
                    (is_ip(h) || h.find_first_not_of(
                                     "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*") ==
                                     std::string::npos);
    if (!ok) {
      error_line(cmd, "--host '" + h + "': not a host name or IP address");
      return kUsage;
    }
  }
  const auto tls_addr = split_bind(a.tls_bind);
  const auto local_addr = split_bind(a.local_bind);
  if (tls_addr.first.empty()) {
    error_line(cmd, "--tls-bind '" + a.tls_bind + "': expected ADDRESS:PORT, e.g. 0.0.0.0:8883");
    return kUsage;
  }
  if (local_addr.first.empty()) {
    error_line(cmd, "--local-bind '" + a.local_bind + "': expected ADDRESS:PORT, e.g. 127.0.0.1:1883");
    return kUsage;
  }

  const fs::path dir(a.dir);
  std::error_code ec;
  const auto st = fs::status(dir, ec);
  if (fs::exists(st)) {
    if (!fs::is_directory(st)) {
      error_line(cmd, a.dir + " exists and is not a folder");
      return kUsage;
    }
    const bool empty = fs::is_empty(dir, ec);
    if (ec) {
      error_line(cmd, "cannot read " + a.dir + ": " + ec.message());
      return kUsage;
    }
    if (!empty && !a.force) {
      error_line(cmd, a.dir + " exists and is not empty (use --force to write into it anyway)");
      return kUsage;
    }
  } else {
    fs::create_directories(dir, ec);
    if (ec) {
      error_line(cmd, "cannot create " + a.dir + ": " + ec.message());
      return kUsage;
    }
    // The folder holds private keys and password hashes: owner only.
    ::chmod(dir.c_str(), 0700);
  }

  const auto now = std::chrono::system_clock::now();
  const auto start = now - std::chrono::minutes(5);  // clocks of other machines may be a little behind
  const auto expires = start + kCertValidity;
  std::string password;
  try {
    // Everything is made in memory first: a failure leaves no half setup.
    pki::CertSpec ca_spec;
    ca_spec.kind = pki::CertKind::Ca;
    ca_spec.common_name = "Moat CA " + date_text(now);
    ca_spec.organization = "Moat";
    ca_spec.not_before = start;
    ca_spec.validity = kCaValidity;
    const auto ca = pki::make_ca(ca_spec);

    const std::string& first = a.hosts.front();
    const std::string crl_host = first.find(':') != std::string::npos ? "[" + first + "]" : first;
    pki::CertSpec server_spec;
    server_spec.kind = pki::CertKind::Server;
    server_spec.common_name = first;
    server_spec.hosts = a.hosts;
    server_spec.not_before = start;
    server_spec.validity = kCertValidity;
    // Where the CRL would be published; certificate scanners expect a distribution point.
    server_spec.crl_url = "http://" + crl_host + "/ca.crl";
    const auto server = pki::issue(server_spec, ca);

    pki::CertSpec client_spec;
    client_spec.kind = pki::CertKind::Client;
    client_spec.common_name = kDevice;
    client_spec.not_before = start;
    client_spec.validity = kCertValidity;
    client_spec.crl_url = server_spec.crl_url;
    const auto client_cert = pki::issue(client_spec, ca);

    pki::CrlSpec crl_spec;
    crl_spec.this_update = start;
    crl_spec.validity = kCertValidity;
    const std::string crl = pki::make_crl(crl_spec, ca);

    password = random_password();

    write_file(dir, "ca.key", ca.key_pem, 0600);
    write_file(dir, "ca.crt", ca.cert_pem, 0644);
    write_file(dir, "server.key", server.key_pem, 0600);
    write_file(dir, "server.crt", server.cert_pem, 0644);
    write_file(dir, "client.key", client_cert.key_pem, 0600);
    write_file(dir, "client.crt", client_cert.cert_pem, 0644);
    write_file(dir, "ca.crl", crl, 0644);
    // A fresh password file (with --force an old one is replaced, not merged).
    const fs::path passwd = dir / "passwd";
    fs::remove(passwd, ec);
    security::set_password(passwd, kUser, password);
    write_file(dir, "acl", acl_text(), 0644);
    write_file(dir, "moat.toml", config_text(a, expires), 0644);
  } catch (const std::exception& e) {
    error_line(cmd, e.what());
    return kUsage;
  }

  const std::string d = shell_quote(dir.string());
  // Connect by the certificate's first name; a listener bound to an address the
  // certificate does not name is reached by address and verified by name.
  const bool wildcard = tls_addr.first == "0.0.0.0" || tls_addr.first == "::";
  const bool named = std::find(a.hosts.begin(), a.hosts.end(), tls_addr.first) != a.hosts.end();
  const std::string host = wildcard || named ? a.hosts.front() : tls_addr.first;
  const std::string local_host = local_addr.first;
  std::string tls_args = "--cafile " + d + "/ca.crt --cert " + d + "/client.crt --key " + d + "/client.key";
  if (!wildcard && !named) tls_args += " --sni " + shell_quote(a.hosts.front());
  std::printf(
      "wrote %s/moat.toml, ca.crt, ca.key, server.crt, server.key, client.crt, client.key, ca.crl, passwd, "
      "acl\n",
      dir.string().c_str());
  std::printf("password of user %s (shown only now; passwd keeps an argon2id hash of it):\n  %s\n", kUser,
              password.c_str());
  std::printf("next steps:\n");
  std::printf("  moatd -c %s/moat.toml\n", d.c_str());
  std::printf("  moat sub -h %s -p %s %s -t 'devices/%s/#' -v\n", host.c_str(), tls_addr.second.c_str(),
              tls_args.c_str(), kDevice);
  std::printf("  moat pub -h %s -p %s %s -t devices/%s/hello -m 'hello over mutual TLS'\n", host.c_str(),
              tls_addr.second.c_str(), tls_args.c_str(), kDevice);
  std::printf("  moat pub -h %s -p %s -u %s -P %s -t users/%s/hello -m 'hello from this machine'\n",
              local_host.c_str(), local_addr.second.c_str(), kUser, password.c_str(), kUser);
  std::fflush(stdout);
  return kOk;
}

}  // namespace moat::cli
