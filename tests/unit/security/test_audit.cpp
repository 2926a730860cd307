// The audit stream: the JSON line format (docs/audit.md), RFC 3339 times, the
// file writer (append, reopen after rotation, flush), and no secret fields.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "security/audit.hpp"
#include "security/tls.hpp"

namespace moat::security {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::chrono::system_clock::time_point kT{std::chrono::milliseconds(1'700'000'000'123)};

std::vector<json> lines_of(const fs::path& p) {
  std::ifstream in(p);
  std::vector<json> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));
  return out;
}

TEST(Audit, Rfc3339) {
  EXPECT_EQ(rfc3339_utc_ms(kT), "2023-11-14T22:13:20.123Z");
  EXPECT_EQ(rfc3339_utc_ms(std::chrono::system_clock::time_point{}), "1970-01-01T00:00:00.000Z");
}

TEST(Audit, LineFormat) {
  AuditEvent e;
  e.event = "auth.failure";
  e.listener = "secure";
  e.peer = "192.0.2.1:50000";
  e.client_id = "dev-1";
  e.username = "";
  e.method = "password";
  e.reason = "unknown user or wrong password";
  e.code = 4;
  e.delay_ms = 250;
  e.failures = 1;
  const std::string line = format_audit_line(e, kT);
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);  // one line
  const json j = json::parse(line);
  EXPECT_EQ(j["v"], 1);
  EXPECT_EQ(j["ts"], "2023-11-14T22:13:20.123Z");
  EXPECT_EQ(j["event"], "auth.failure");
  EXPECT_EQ(j["listener"], "secure");
  EXPECT_EQ(j["peer"], "192.0.2.1:50000");
  EXPECT_EQ(j["client_id"], "dev-1");
  EXPECT_EQ(j["username"], "");  // present (and empty) when CONNECT carried one
  EXPECT_EQ(j["method"], "password");
  EXPECT_EQ(j["code"], 4);
  EXPECT_EQ(j["delay_ms"], 250);
  EXPECT_EQ(j["failures"], 1);
  // Empty fields are left out.
  EXPECT_FALSE(j.contains("identity"));
  EXPECT_FALSE(j.contains("topic"));
  e.username.reset();
  EXPECT_FALSE(json::parse(format_audit_line(e, kT)).contains("username"));
  // The first keys are always v, ts, event.
  EXPECT_EQ(line.rfind("{\"v\":1,\"ts\":\"2023-11-14T22:13:20.123Z\",\"event\":\"auth.failure\"", 0), 0u);
}

TEST(Audit, HostileStringsStayOneValidLine) {
  AuditEvent e;
  e.event = "acl.deny";
  e.client_id = "a\"b\\c\nd";
  e.topic = "x\xff\xfe";  // not UTF-8: replaced, never a broken line
  const std::string line = format_audit_line(e, kT);
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  const json j = json::parse(line);
  EXPECT_EQ(j["client_id"], "a\"b\\c\nd");
}

class AuditFile : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string t = (fs::temp_directory_path() / "moat-audit-XXXXXX").string();
    ASSERT_TRUE(::mkdtemp(t.data()));
    dir = t;
  }
  void TearDown() override { fs::remove_all(dir); }
  fs::path dir;
};

TEST_F(AuditFile, WritesAppendsAndReopens) {
  const fs::path p = dir / "audit.jsonl";
  { std::ofstream(p) << "{\"v\":1,\"event\":\"earlier\"}\n"; }
  AuditLog log(p.string());
  AuditEvent e;
  e.event = "ban";
  e.address = "192.0.2.1";
  e.duration_s = 600;
  e.until = kT;
  log.emit(e);
  log.flush();
  auto lines = lines_of(p);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["event"], "earlier");
  EXPECT_EQ(lines[1]["event"], "ban");
  EXPECT_EQ(lines[1]["until"], "2023-11-14T22:13:20.123Z");

  // logrotate: the file is moved away, then moatd is told to reopen.
  fs::rename(p, dir / "audit.jsonl.1");
  e.event = "unban";
  log.emit(e);
  log.flush();
  EXPECT_EQ(lines_of(dir / "audit.jsonl.1").size(), 3u);  // still the old descriptor
  EXPECT_EQ(log.reopen(), "");
  log.emit(e);
  log.flush();
  ASSERT_EQ(lines_of(p).size(), 1u);
  EXPECT_EQ(lines_of(p)[0]["event"], "unban");
  // A file the log creates is readable by its owner only.
  EXPECT_EQ(fs::status(p).permissions() & (fs::perms::group_all | fs::perms::others_all), fs::perms::none);
}

TEST_F(AuditFile, ManyThreadsNoTornLines) {
  const fs::path p = dir / "audit.jsonl";
  {
    AuditLog log(p.string());
    std::vector<std::thread> th;
    for (int n = 0; n < 4; ++n)
      th.emplace_back([&log, n] {
        for (int i = 0; i < 2000; ++i) {
          AuditEvent e;
          e.event = "acl.deny";
          const std::string topic = "t/" + std::to_string(n) + "/" + std::to_string(i);
          e.topic = topic;
          log.emit(e);
        }
      });
    for (auto& t : th) t.join();
  }  // the destructor writes what is queued
  const auto lines = lines_of(p);
  EXPECT_EQ(lines.size(), 8000u);
}

TEST_F(AuditFile, AFullQueueDropsAndSaysSo) {
  const fs::path p = dir / "audit.jsonl";
  AuditLog log(p.string(), 1);
  AuditEvent e;
  e.event = "acl.deny";
  for (int i = 0; i < 2000; ++i) log.emit(e);
  log.flush();
  e.event = "unban";
  log.emit(e);  // wakes the writer, which reports the drops
  log.flush();
  const auto lines = lines_of(p);
  ASSERT_GT(log.dropped(), 0u);
  std::uint64_t reported = 0;
  std::uint64_t written = 0;
  for (const auto& l : lines) {
    if (l["event"] == "audit.dropped")
      reported += l["suppressed"].get<std::uint64_t>();
    else
      ++written;
  }
  EXPECT_EQ(reported, log.dropped());
  EXPECT_EQ(written + log.dropped(), 2001u);
}

TEST(Audit, UnwritablePathIsAnError) {
  EXPECT_THROW(AuditLog("/nonexistent-dir/audit.jsonl"), std::runtime_error);
}

}  // namespace
}  // namespace moat::security
