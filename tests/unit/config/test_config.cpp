// moat.toml parsing: every error names file:line:column, the key and the reason.
#include <gtest/gtest.h>

#include "config/config.hpp"
#include "config_test_util.hpp"

namespace moat::config {
namespace {

using test_util::error_of;
using test_util::kListener;

TEST(Config, DefaultIsLoopbackAnonymous) {
  const auto c = default_config();
  ASSERT_EQ(c.listeners.size(), 1u);
  EXPECT_EQ(c.listeners[0].host, "127.0.0.1");
  EXPECT_EQ(c.listeners[0].port, 1883);
  EXPECT_EQ(c.listeners[0].auth, std::vector<std::string>{"anonymous"});
  EXPECT_EQ(c.data_dir, "moat-data");
}

TEST(Config, FullFileParsesAndResolvesPathsAgainstItsFolder) {
  const auto c = parse(std::string(R"(
[broker]
data_dir = "state"
threads = 3
[log]
level = "warn"
[limits]
max_packet_size = 65536
connect_timeout = 2.5
max_inflight_messages = 50
max_queued_messages = 0
max_queued_bytes = 1048576
queue_full = "drop-oldest"
queue_qos0_offline = true
[store]
engine = "memory"
)") + std::string(kListener) +
                           R"(
[[listener]]
name = "v6"
bind = "[::1]:0"
transport = "tcp"
auth = ["anonymous"]
)",
                       "/etc/moat/moat.toml");
  EXPECT_EQ(c.data_dir, "/etc/moat/state");
  EXPECT_EQ(c.threads, 3u);
  EXPECT_EQ(c.log_level, "warn");
  EXPECT_EQ(c.limits.max_packet_size, 65536u);
  EXPECT_EQ(c.limits.connect_timeout, std::chrono::milliseconds(2500));
  EXPECT_EQ(c.limits.max_inflight_messages, 50u);
  EXPECT_EQ(c.limits.max_queued_messages, 0u);
  EXPECT_EQ(c.limits.max_queued_bytes, 1048576u);
  EXPECT_EQ(c.limits.queue_full, broker::QueueFullPolicy::DropOldest);
  EXPECT_TRUE(c.limits.queue_qos0_offline);
  ASSERT_EQ(c.listeners.size(), 2u);
  EXPECT_EQ(c.listeners[1].host, "::1");
  EXPECT_EQ(c.listeners[1].port, 0);
}

TEST(Config, UnknownKeyNamesFileLineAndKey) {
  const auto e = error_of(std::string(kListener) + "\n[broker]\nthreads = 1\nbogus = 2\n");
  EXPECT_NE(e.find("/etc/moat/moat.toml:9:"), std::string::npos) << e;
  EXPECT_NE(e.find("broker.bogus"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown key"), std::string::npos) << e;
}

TEST(Config, UnknownSectionAndListenerKey) {
  EXPECT_NE(error_of(std::string(kListener) + "[brokr]\n").find("brokr: unknown key"), std::string::npos);
  EXPECT_NE(error_of(std::string(kListener) + "port = 1\n").find("listener[0].port: unknown key"),
            std::string::npos);
}

TEST(Config, WrongTypesAndRanges) {
  auto e = error_of(std::string(kListener) + "[broker]\nthreads = \"x\"\n");
  EXPECT_NE(e.find(":7:"), std::string::npos) << e;
  EXPECT_NE(e.find("broker.threads: must be an integer"), std::string::npos) << e;
  e = error_of(std::string(kListener) + "[limits]\nmax_inflight_messages = 0\n");
  EXPECT_NE(e.find("limits.max_inflight_messages: must be between 1 and 65535"), std::string::npos) << e;
  e = error_of(std::string(kListener) + "[log]\nlevel = \"loud\"\n");
  EXPECT_NE(e.find("log.level: 'loud' is not one of"), std::string::npos) << e;
}

TEST(Config, ListenerErrors) {
  EXPECT_NE(error_of("[broker]\nthreads = 1\n").find("no [[listener]]"), std::string::npos);
  EXPECT_NE(error_of("[[listener]]\nname = \"a\"\nbind = \"localhost:1883\"\nauth = [\"anonymous\"]\n")
                .find("not a numeric IP address"),
            std::string::npos);
  EXPECT_NE(error_of("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:70000\"\nauth = [\"anonymous\"]\n")
                .find("not a port number"),
            std::string::npos);
  EXPECT_NE(error_of("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n").find("missing key 'auth'"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kListener) + std::string(kListener)).find("duplicate listener name"),
            std::string::npos);
  EXPECT_NE(error_of("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nauth = [\"magic\"]\n")
                .find("'magic' is not an authentication method"),
            std::string::npos);
}

TEST(Config, FeaturesOfLaterVersionsAreRefusedNotIgnored) {
  EXPECT_NE(error_of("[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:8883\"\ntransport = \"wss\"\nauth = "
                     "[\"anonymous\"]\n")
                .find("not available in this version"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kListener) + "[store]\nengine = \"etcd\"\n")
                .find("store.engine: 'etcd' is not one of"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kListener) + "[store]\nsync_interval = 0.5\n")
                .find("only applies with durability"),
            std::string::npos);
}

TEST(Config, TlsListenerAndSecurityFiles) {
  const auto c = parse(R"(
[auth.password]
file = "passwd"
[acl]
file = "/etc/moat/acl"
[[listener]]
name = "secure"
bind = "0.0.0.0:8883"
transport = "tls"
auth = ["certificate", "password"]
  [listener.tls]
  cert = "server.crt"
  key = "server.key"
  ca = "ca.crt"
  client_cert = "required"
  crl = ["ca.crl"]
  min_version = "1.3"
  identity_from = "san-email"
)",
                       "/etc/moat/moat.toml");
  EXPECT_EQ(c.password_file, "/etc/moat/passwd");
  EXPECT_EQ(c.acl_file, "/etc/moat/acl");
  ASSERT_TRUE(c.listeners.at(0).tls.has_value());
  const auto& t = *c.listeners[0].tls;
  EXPECT_EQ(t.cert, "/etc/moat/server.crt");
  EXPECT_EQ(t.client_cert, security::ClientCertMode::Required);
  EXPECT_EQ(t.crl, std::vector<std::filesystem::path>{"/etc/moat/ca.crl"});
  EXPECT_EQ(t.min_version, "1.3");
  EXPECT_EQ(t.identity_from, security::IdentityFrom::SanEmail);
}

TEST(Config, SecurityMisconfigurationsAreErrors) {
  const std::string tls = "[[listener]]\nname = \"s\"\nbind = \"127.0.0.1:8883\"\ntransport = \"tls\"\n";
  EXPECT_NE(error_of(tls + "auth = [\"anonymous\"]\n").find("needs a [listener.tls] table"),
            std::string::npos);
  EXPECT_NE(error_of(tls + "auth = [\"anonymous\"]\n[listener.tls]\ncert = \"a\"\n")
                .find("cert and key go together"),
            std::string::npos);
  EXPECT_NE(
      error_of(
          tls +
          "auth = [\"anonymous\"]\n[listener.tls]\ncert = \"a\"\nkey = \"b\"\nclient_cert = \"required\"\n")
          .find("client certificates need ca"),
      std::string::npos);
  EXPECT_NE(error_of(std::string(kListener) + "[acl]\n").find("acl: needs a file"), std::string::npos);
  EXPECT_NE(error_of("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nauth = [\"password\"]\n")
                .find("needs [auth.password]"),
            std::string::npos);
  EXPECT_NE(error_of("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nauth = [\"certificate\"]\n")
                .find("needs transport = \"tls\""),
            std::string::npos);
}

TEST(Config, TlsOcspPskAndReloadKeys) {
  const std::string head =
      "[[listener]]\nname = \"s\"\nbind = \"127.0.0.1:8883\"\ntransport = \"tls\"\nauth = [\"psk\"]\n"
      "[listener.tls]\n";
  const auto c = parse(head +
                           "cert = \"s.crt\"\nkey = \"s.key\"\nocsp_response = \"s.ocsp\"\n"
                           "psk_file = \"psk.txt\"\npsk_plain_suites = true\nreload_on_change = false\n",
                       "/etc/moat/moat.toml");
  const auto& t = *c.listeners.at(0).tls;
  EXPECT_EQ(t.ocsp_response, "/etc/moat/s.ocsp");
  EXPECT_TRUE(t.psk_plain_suites);
  EXPECT_FALSE(t.reload_on_change);
  const auto d = parse(head + "psk_file = \"psk.txt\"\n", "/etc/moat/moat.toml");
  EXPECT_FALSE(d.listeners.at(0).tls->psk_plain_suites);
  EXPECT_TRUE(d.listeners.at(0).tls->reload_on_change);
  EXPECT_TRUE(d.listeners.at(0).tls->ocsp_response.empty());

  EXPECT_NE(
      error_of(head + "psk_file = \"p\"\nocsp_response = \"s.ocsp\"\n").find("ocsp_response: needs cert"),
      std::string::npos);
  EXPECT_NE(error_of(head + "cert = \"a\"\nkey = \"b\"\npsk_plain_suites = true\n")
                .find("psk_plain_suites: needs psk_file"),
            std::string::npos);
  EXPECT_NE(error_of(head + "psk_file = \"p\"\nreload_on_change = \"yes\"\n").find("must be true or false"),
            std::string::npos);
}

TEST(Config, SyntaxErrorHasPosition) {
  const auto e = error_of("[broker\nthreads = 1\n");
  EXPECT_NE(e.find("/etc/moat/moat.toml:1:"), std::string::npos) << e;
}

TEST(Config, AbuseLimits) {
  const auto c = parse(std::string(kListener) + R"(
[limits]
max_connections = 10
max_connections_per_address = 2
max_client_id_length = 64
max_topic_length = 100
max_topic_levels = 8
max_subscriptions_per_client = 5
max_retained_messages = 7
max_retained_bytes = 4096
flapping_max = 6
flapping_window = 30
flapping_delay = 0.5
flapping_ban_time = 120
log_interval = 5

[[limits.payload]]
topics = "sensors/#"
max = 16
)",
                       "/etc/moat/moat.toml");
  const auto& l = c.limits;
  EXPECT_EQ(l.max_connections, 10u);
  EXPECT_EQ(l.max_connections_per_address, 2u);
  EXPECT_EQ(l.max_client_id_length, 64u);
  EXPECT_EQ(l.max_topic_length, 100u);
  EXPECT_EQ(l.max_topic_levels, 8u);
  EXPECT_EQ(l.max_subscriptions_per_client, 5u);
  EXPECT_EQ(l.max_retained_messages, 7u);
  EXPECT_EQ(l.max_retained_bytes, 4096u);
  EXPECT_EQ(l.flapping_max, 6u);
  EXPECT_EQ(l.flapping_window, std::chrono::seconds(30));
  EXPECT_EQ(l.flapping_delay, std::chrono::milliseconds(500));
  EXPECT_EQ(l.flapping_ban_time, std::chrono::seconds(120));
  EXPECT_EQ(l.log_interval, std::chrono::seconds(5));
  ASSERT_EQ(l.payload.size(), 1u);
  EXPECT_EQ(l.payload[0].topics, "sensors/#");
  EXPECT_EQ(l.payload[0].max, 16u);

  auto e = error_of(std::string(kListener) + "[[limits.payload]]\ntopics = \"a/#/b\"\nmax = 1\n");
  EXPECT_NE(e.find("limits.payload[0].topics: not a valid topic filter"), std::string::npos) << e;
  e = error_of(std::string(kListener) + "[[limits.payload]]\ntopics = \"a\"\n");
  EXPECT_NE(e.find("limits.payload[0]: missing key 'max'"), std::string::npos) << e;
  e = error_of(std::string(kListener) + "[limits]\nmax_client_id_length = 5\n");
  EXPECT_NE(e.find("limits.max_client_id_length: must be between 23 and 65535"), std::string::npos) << e;
  e = error_of(std::string(kListener) + "[limits]\nflaping_max = 5\n");
  EXPECT_NE(e.find("limits.flaping_max: unknown key"), std::string::npos) << e;
}

TEST(Config, ParseBind) {
  std::string h;
  std::uint16_t p = 0;
  parse_bind("0.0.0.0:8883", h, p);
  EXPECT_EQ(h, "0.0.0.0");
  EXPECT_EQ(p, 8883);
  parse_bind("[::]:1883", h, p);
  EXPECT_EQ(h, "::");
  EXPECT_THROW(parse_bind("::1:1883", h, p), std::invalid_argument);
  EXPECT_THROW(parse_bind("127.0.0.1", h, p), std::invalid_argument);
  EXPECT_THROW(parse_bind(":1883", h, p), std::invalid_argument);
}

}  // namespace
}  // namespace moat::config
