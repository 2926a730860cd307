// TlsEngine against the real `openssl s_client` over a loopback socket: a tiny
// blocking accept loop drives the engine. Skipped if openssl is not installed.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <future>

#include "security/tls.hpp"
#include "tls_test_pki.hpp"

namespace moat::security {
namespace {

namespace fs = std::filesystem;
using namespace testpki;

struct Result {
  TlsState state = TlsState::Handshaking;
  std::string version, identity, error, plaintext;
};

class Listener {
 public:
  Listener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 1), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~Listener() { ::close(fd_); }
  int port() const { return port_; }

  // Serves one connection: handshake, read until `expect` arrived, answer, close_notify.
  Result serve(std::shared_ptr<const TlsServerContext> ctx, const std::string& expect) {
    Result r;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) return r;
    const int s = ::accept(fd_, nullptr, nullptr);
    TlsEngine e(std::move(ctx));
    std::uint8_t buf[16384];
    bool answered = false;
    for (;;) {
      pollfd q{s, POLLIN, 0};
      if (::poll(&q, 1, 10000) != 1) break;
      const ssize_t n = ::read(s, buf, sizeof buf);
      if (n <= 0) break;
      e.feed(std::span(buf, static_cast<std::size_t>(n)));
      r.plaintext.append(e.plaintext().begin(), e.plaintext().end());
      e.plaintext().clear();
      if (e.established() && !answered && r.plaintext.find(expect) != std::string::npos) {
        answered = true;
        r.state = e.state();
        const std::string reply = "pong\n";
        e.write(std::span(reinterpret_cast<const std::uint8_t*>(reply.data()), reply.size()));
        e.close_notify();
      }
      auto& out = e.ciphertext();
      if (!out.empty() && ::write(s, out.data(), out.size()) != static_cast<ssize_t>(out.size())) break;
      out.clear();
      if (e.state() == TlsState::Failed || answered) break;
    }
    if (!answered) r.state = e.state();
    r.version = std::string(e.version());
    r.identity = e.peer_identity();
    r.error = e.error();
    ::close(s);
    return r;
  }

 private:
  int fd_ = -1;
  int port_ = 0;
};

bool have_openssl() {
  return std::system("openssl version >/dev/null 2>&1") == 0;
}

std::string run(const std::string& cmd) {
  std::string out;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  ::pclose(f);
  return out;
}

struct Files {
  fs::path dir = make_temp_dir();
  Files() {
    Key ca_key = ec_key(), key = ec_key();
    CertSpec ca_spec;
    ca_spec.cn = "Interop CA";
    ca_spec.ca = true;
    Cert ca = make_cert(ca_spec, ca_key.get(), nullptr, nullptr);
    CertSpec srv;
    srv.cn = "localhost";
    srv.serial = 2;
    srv.san = "DNS:localhost,IP:127.0.0.1";
    srv.eku = "serverAuth";
    Cert server = make_cert(srv, key.get(), ca.get(), ca_key.get());
    write_certs(dir / "ca.crt", {ca.get()});
    write_certs(dir / "server.crt", {server.get()});
    write_key(dir / "server.key", key.get());
    std::ofstream(dir / "psk.txt") << "sensor-7:00112233445566778899aabbccddeeff\n";
  }
  ~Files() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

Result with_s_client(std::shared_ptr<const TlsServerContext> ctx, const std::string& args,
                     std::string& output) {
  Listener l;
  auto served = std::async(std::launch::async, [&] { return l.serve(ctx, "ping"); });
  // `sleep` keeps stdin open until the reply has arrived.
  output = run("(printf 'ping\\n'; sleep 1) | timeout 10 openssl s_client -connect 127.0.0.1:" +
               std::to_string(l.port()) + " " + args + " 2>&1");
  return served.get();
}

TEST(TlsInterop, OpensslSClientTls13WithCertificate) {
  if (!have_openssl()) GTEST_SKIP() << "openssl not installed";
  Files f;
  TlsServerConfig c;
  c.cert = f.dir / "server.crt";
  c.key = f.dir / "server.key";
  std::string out;
  const Result r =
      with_s_client(TlsServerContext::load(c),
                    "-tls1_3 -brief -alpn mqtt -servername localhost -verify_return_error -CAfile " +
                        (f.dir / "ca.crt").string(),
                    out);
  EXPECT_EQ(r.state, TlsState::Established) << r.error << "\n" << out;
  EXPECT_EQ(r.version, "TLSv1.3");
  EXPECT_NE(r.plaintext.find("ping"), std::string::npos);
  EXPECT_NE(out.find("TLSv1.3"), std::string::npos) << out;
  EXPECT_NE(out.find("pong"), std::string::npos) << out;
}

TEST(TlsInterop, OpensslSClientPsk) {
  if (!have_openssl()) GTEST_SKIP() << "openssl not installed";
  Files f;
  TlsServerConfig c;
  c.psk_file = f.dir / "psk.txt";
  auto ctx = TlsServerContext::load(c);
  for (const std::string version : {"-tls1_3", "-tls1_2 -cipher ECDHE-PSK-CHACHA20-POLY1305"}) {
    std::string out;
    const Result r = with_s_client(
        ctx, version + " -brief -psk_identity sensor-7 -psk 00112233445566778899aabbccddeeff", out);
    EXPECT_EQ(r.state, TlsState::Established) << version << ": " << r.error << "\n" << out;
    EXPECT_EQ(r.identity, "sensor-7");
    EXPECT_NE(out.find("pong"), std::string::npos) << out;
  }
}

}  // namespace
}  // namespace moat::security
