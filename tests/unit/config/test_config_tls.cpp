// moat.toml [listener.tls] keys: [[listener.tls.sni]], session_tickets and
// ticket_key_rotation.
#include <gtest/gtest.h>

#include <chrono>

#include "config/config.hpp"
#include "config_test_util.hpp"

namespace moat::config {
namespace {

using test_util::error_of;

const std::string
    kTlsHead =  // NOLINT(cert-err58-cpp): a test constant; allocation failure ends the run anyway
    "[[listener]]\nname = \"s\"\nbind = \"127.0.0.1:8883\"\ntransport = \"tls\"\nauth = [\"anonymous\"]\n"
    "[listener.tls]\ncert = \"s.crt\"\nkey = \"s.key\"\n";

TEST(ConfigTls, SniEntries) {
  const auto c = parse(kTlsHead +
                           "[[listener.tls.sni]]\nhostname = \"broker.example\"\n"
                           "cert = \"b.crt\"\nkey = \"b.key\"\n"
                           "[[listener.tls.sni]]\nhostname = \"*.devices.example\"\n"
                           "cert = \"/pki/d.crt\"\nkey = \"d.key\"\nkey_password = \"pw\"\n",
                       "/etc/moat/moat.toml");
  const auto& sni = c.listeners.at(0).tls->sni;
  ASSERT_EQ(sni.size(), 2u);
  EXPECT_EQ(sni[0].hostname, "broker.example");
  EXPECT_EQ(sni[0].cert, "/etc/moat/b.crt");
  EXPECT_EQ(sni[0].key, "/etc/moat/b.key");
  EXPECT_EQ(sni[0].key_password, "");
  EXPECT_EQ(sni[1].hostname, "*.devices.example");
  EXPECT_EQ(sni[1].cert, "/pki/d.crt");
  EXPECT_EQ(sni[1].key_password, "pw");
  EXPECT_TRUE(parse(kTlsHead, "/etc/moat/moat.toml").listeners.at(0).tls->sni.empty());
}

TEST(ConfigTls, SniErrorsNamePositionKeyAndReason) {
  const std::string entry = "[[listener.tls.sni]]\n";  // line 9
  EXPECT_EQ(
      error_of(kTlsHead + entry + "hostname = \"a.example\"\ncert = \"a.crt\"\nkey = \"a.key\"\nport = 1\n"),
      "/etc/moat/moat.toml:13:8: listener[0].tls.sni[0].port: unknown key (known here: hostname, cert, "
      "key, key_password)");
  EXPECT_NE(error_of(kTlsHead + entry + "cert = \"a.crt\"\nkey = \"a.key\"\n")
                .find("/etc/moat/moat.toml:9:1: listener[0].tls.sni[0]: needs hostname"),
            std::string::npos)
      << error_of(kTlsHead + entry + "cert = \"a.crt\"\nkey = \"a.key\"\n");
  EXPECT_NE(
      error_of(kTlsHead + entry + "hostname = \"a.example\"\ncert = \"a.crt\"\n").find("needs cert and key"),
      std::string::npos);
  for (const char* bad :
       {"", "*", "*.com", "a.*.example", "a..example", "exa mple.com", "x*.example.com", "example.com."}) {
    const std::string e =
        error_of(kTlsHead + entry + "hostname = \"" + bad + "\"\ncert = \"a.crt\"\nkey = \"a.key\"\n");
    EXPECT_NE(e.find("/etc/moat/moat.toml:10:12: listener[0].tls.sni[0].hostname: '"), std::string::npos)
        << bad << " -> " << e;
  }
  EXPECT_NE(error_of(kTlsHead + entry + "hostname = \"A.example\"\ncert = \"a.crt\"\nkey = \"a.key\"\n" +
                     entry + "hostname = \"a.EXAMPLE\"\ncert = \"b.crt\"\nkey = \"b.key\"\n")
                .find("sni[1].hostname: 'a.EXAMPLE' is already the hostname of an earlier sni entry"),
            std::string::npos);
  EXPECT_NE(
      error_of(kTlsHead + "sni = \"a\"\n").find("listener[0].tls.sni: must be [[listener.tls.sni]] tables"),
      std::string::npos);
  const std::string psk_only =
      "[[listener]]\nname = \"s\"\nbind = \"127.0.0.1:8883\"\ntransport = \"tls\"\nauth = [\"psk\"]\n"
      "[listener.tls]\npsk_file = \"p\"\n";
  EXPECT_NE(error_of(psk_only + entry + "hostname = \"a.example\"\ncert = \"a.crt\"\nkey = \"a.key\"\n")
                .find("sni: needs cert (the default certificate)"),
            std::string::npos);
}

TEST(ConfigTls, SessionTicketKeys) {
  const auto d = parse(kTlsHead, "/etc/moat/moat.toml");
  EXPECT_TRUE(d.listeners.at(0).tls->session_tickets);
  EXPECT_EQ(d.listeners.at(0).tls->ticket_key_rotation, std::chrono::hours(12));
  const auto c = parse(kTlsHead + "ticket_key_rotation = 3600\n", "/etc/moat/moat.toml");
  EXPECT_TRUE(c.listeners.at(0).tls->session_tickets);
  EXPECT_EQ(c.listeners.at(0).tls->ticket_key_rotation, std::chrono::seconds(3600));
  const auto off = parse(kTlsHead + "session_tickets = false\n", "/etc/moat/moat.toml");
  EXPECT_FALSE(off.listeners.at(0).tls->session_tickets);

  EXPECT_EQ(error_of(kTlsHead + "ticket_key_rotation = 59\n"),
            "/etc/moat/moat.toml:9:23: listener[0].tls.ticket_key_rotation: must be between 60 and 604800");
  EXPECT_NE(error_of(kTlsHead + "ticket_key_rotation = \"12h\"\n").find("must be an integer"),
            std::string::npos);
  EXPECT_NE(error_of(kTlsHead + "session_tickets = 1\n").find("session_tickets: must be true or false"),
            std::string::npos);
  EXPECT_NE(error_of(kTlsHead + "session_tickets = false\nticket_key_rotation = 600\n")
                .find(":10:23: listener[0].tls.ticket_key_rotation: needs session_tickets = true"),
            std::string::npos);
}

}  // namespace
}  // namespace moat::config
