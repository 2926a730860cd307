#include "tls_flags.hpp"

#include <CLI/CLI.hpp>

#include "cli.hpp"

namespace moat::cli {

void add_tls_flags(CLI::App* app, TlsFlags& f) {
  const char* group = "TLS (any of --cafile, --capath, --tls-use-os-certs, --psk turns TLS on)";
  app->add_option("--cafile", f.cafile, "trust the CAs in this PEM file to verify the broker's certificate")
      ->group(group);
  app->add_option("--capath", f.capath, "trust the CAs in this folder (c_rehash layout)")->group(group);
  app->add_flag("--tls-use-os-certs", f.os_certs, "trust the system's CA store (also with --cafile/--capath)")
      ->group(group);
  app->add_option("--cert", f.cert, "client certificate (PEM) for mutual TLS; needs --key")->group(group);
  app->add_option("--key", f.key, "private key of --cert (PEM)")->group(group);
  app->add_option("--key-password", f.key_password, "password of an encrypted --key")->group(group);
  app->add_flag("--insecure", f.insecure,
                "do not check that the broker's certificate is for the host name (-h or --sni); the chain is "
                "still verified")
      ->group(group);
  app->add_option("--tls-version", f.version, "minimum TLS version: tlsv1.2 (default) or tlsv1.3")
      ->group(group);
  app->add_option("--tls-max-version", f.max_version, "maximum TLS version: tlsv1.2 or tlsv1.3 (default)")
      ->group(group);
  app->add_option("--ciphers", f.ciphers, "TLS 1.2 cipher list (OpenSSL syntax)")->group(group);
  app->add_option("--tls-ciphersuites", f.ciphersuites, "TLS 1.3 cipher suites (OpenSSL syntax)")
      ->group(group);
  app->add_option("--psk", f.psk, "TLS pre-shared key in hexadecimal; needs --psk-identity")->group(group);
  app->add_option("--psk-identity", f.psk_identity, "identity of --psk")->group(group);
  app->add_option("--alpn,--tls-alpn", f.alpn, "offer this ALPN protocol, e.g. mqtt (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->group(group);
  app->add_option("--sni", f.sni, "server name sent in SNI and checked against the certificate instead of -h")
      ->group(group);
}

bool tls_requested(const TlsFlags& f) {
  return !f.cafile.empty() || !f.capath.empty() || f.os_certs || !f.psk.empty();
}

namespace {

bool version_flag(const std::string& cmd, const char* flag, const std::string& v, std::string& out) {
  if (v.empty()) return true;
  if (v == "tlsv1.2" || v == "1.2") {
    out = "1.2";
    return true;
  }
  if (v == "tlsv1.3" || v == "1.3") {
    out = "1.3";
    return true;
  }
  if (v == "tlsv1.1" || v == "tlsv1" || v == "1.1" || v == "1.0")
    error_line(cmd,
               std::string(flag) + " " + v + ": TLS 1.1 and older are not supported (tlsv1.2 or tlsv1.3)");
  else
    error_line(cmd, std::string(flag) + ": unknown version '" + v + "' (tlsv1.2 or tlsv1.3)");
  return false;
}

}  // namespace

bool apply_tls_flags(const std::string& cmd, const TlsFlags& f, client::Options& o) {
  if (!tls_requested(f)) {
    const bool other = !f.cert.empty() || !f.key.empty() || !f.key_password.empty() || f.insecure ||
                       !f.version.empty() || !f.max_version.empty() || !f.ciphers.empty() ||
                       !f.ciphersuites.empty() || !f.psk_identity.empty() || !f.alpn.empty() ||
                       !f.sni.empty();
    if (other) {
      error_line(cmd, "TLS options need TLS: give --cafile, --capath, --tls-use-os-certs or --psk");
      return false;
    }
    return true;
  }
  if (!o.unix_socket.empty()) {
    error_line(cmd, "TLS over a Unix socket (--unix) is not supported");
    return false;
  }
  const bool psk = !f.psk.empty();
  if (psk && (!f.cafile.empty() || !f.capath.empty() || f.os_certs || !f.cert.empty())) {
    error_line(cmd, "--psk excludes --cafile, --capath, --tls-use-os-certs and --cert");
    return false;
  }
  if (psk && f.psk_identity.empty()) {
    error_line(cmd, "--psk needs --psk-identity");
    return false;
  }
  if (!psk && !f.psk_identity.empty()) {
    error_line(cmd, "--psk-identity needs --psk");
    return false;
  }
  if (f.cert.empty() != f.key.empty()) {
    error_line(cmd, "--cert and --key go together");
    return false;
  }
  if (!f.key_password.empty() && f.key.empty()) {
    error_line(cmd, "--key-password needs --key");
    return false;
  }
  if (psk && f.insecure) {
    error_line(cmd, "--insecure does not apply to --psk (the key authenticates the broker)");
    return false;
  }

  client::TlsOptions t;
  t.ca_file = f.cafile;
  t.ca_dir = f.capath;
  t.system_trust = f.os_certs;
  t.cert_file = f.cert;
  t.key_file = f.key;
  t.key_password = f.key_password;
  t.verify = f.insecure ? client::TlsVerify::ChainOnly : client::TlsVerify::Full;
  t.server_name = f.sni;
  if (!version_flag(cmd, "--tls-version", f.version, t.min_version)) return false;
  if (!version_flag(cmd, "--tls-max-version", f.max_version, t.max_version)) return false;
  t.ciphers = f.ciphers;
  t.ciphersuites = f.ciphersuites;
  t.alpn = f.alpn;
  t.psk_identity = f.psk_identity;
  t.psk_key_hex = f.psk;
  t.resume_sessions = f.resume;
  try {
    o.tls = client::TlsContext::create(t);
  } catch (const client::TlsSetupError& e) {
    error_line(cmd, std::string("TLS: ") + e.what());
    return false;
  }
  if (f.insecure)
    error_line(cmd, "warning: --insecure: the broker's certificate is not checked against the host name '" +
                        (f.sni.empty() ? o.host : f.sni) + "'; any certificate of a trusted CA is accepted");
  return true;
}

}  // namespace moat::cli
