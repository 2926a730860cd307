// The IAM client without a network: requests and answers, caches with TTLs,
// shared exchanges and fail-closed errors, over a fake HttpExchange and clock.
#include "security/iam.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace moat::security {
namespace {

using namespace std::chrono_literals;
using Time = HttpExchange::Time;

class FakeExchange final : public HttpExchange {
 public:
  void post(std::string target, std::string body, Time, Done done) override {
    posts.push_back({std::move(target), std::move(body), std::move(done)});
  }
  void answer(std::size_t i, int status, std::string body) {
    auto done = std::move(posts.at(i).done);
    done(HttpResult{status, std::move(body), {}});
  }
  void fail(std::size_t i, std::string why) {
    auto done = std::move(posts.at(i).done);
    done(HttpResult{0, {}, std::move(why)});
  }
  struct Post {
    std::string target;
    std::string body;
    Done done;
  };
  std::vector<Post> posts;
};

class IamTest : public ::testing::Test {
 protected:
  IamConfig config() {
    IamConfig c;
    c.url = *HttpUrl::parse("http://127.0.0.1:8080/auth");
    c.authorize = true;
    c.authorize_url = HttpUrl::parse("http://127.0.0.1:8080/acl");
    c.cache_ttl = 60s;
    c.cache_negative_ttl = 10s;
    return c;
  }
  std::shared_ptr<Iam> make(IamConfig c) {
    return std::make_shared<Iam>(
        std::move(c), http, http, [this](const std::string& s) { logged.push_back(s); },
        [this] { return now; });
  }
  ConnectInfo info(std::string_view user, std::optional<std::string_view> password = "pw") {
    ConnectInfo i;
    i.listener = "plain";
    i.peer = "192.0.2.7:4000";
    i.client_id = "c1";
    i.username = user;
    i.password = password;
    return i;
  }
  std::shared_ptr<FakeExchange> http = std::make_shared<FakeExchange>();
  std::vector<std::string> logged;
  Time now = Time{} + 1000s;
};

TEST(HttpUrlTest, ParsesAndRefuses) {
  auto u = HttpUrl::parse("https://iam.example:8443/mqtt/auth?x=1");
  ASSERT_TRUE(u);
  EXPECT_TRUE(u->tls);
  EXPECT_EQ(u->host, "iam.example");
  EXPECT_EQ(u->port, 8443);
  EXPECT_EQ(u->target, "/mqtt/auth?x=1");
  auto v6 = HttpUrl::parse("http://[::1]/");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 80);
  EXPECT_EQ(v6->origin(), "http://[::1]:80");
  std::string why;
  EXPECT_FALSE(HttpUrl::parse("ftp://x/", &why));
  EXPECT_FALSE(HttpUrl::parse("http://user:pw@x/", &why));
  EXPECT_FALSE(HttpUrl::parse("http://x:70000/", &why));
  EXPECT_NE(why.find("out of range"), std::string::npos);
  EXPECT_FALSE(HttpUrl::parse("http://x/a b", &why));
}

TEST_F(IamTest, RequestCarriesPresenceNotThePassword) {
  auto iam = make(config());
  iam->authenticate(info("alice", "s3cret"), [](AuthResult) {});
  ASSERT_EQ(http->posts.size(), 1u);
  EXPECT_EQ(http->posts[0].target, "/auth");
  const auto j = nlohmann::json::parse(http->posts[0].body);
  EXPECT_EQ(j["request"], "authenticate");
  EXPECT_EQ(j["username"], "alice");
  EXPECT_EQ(j["client_id"], "c1");
  EXPECT_EQ(j["peer_address"], "192.0.2.7");
  EXPECT_EQ(j["password_present"], true);
  EXPECT_FALSE(j.contains("password"));
  EXPECT_EQ(http->posts[0].body.find("s3cret"), std::string::npos);
}

TEST_F(IamTest, AllowIsCachedForItsTtlAndConcurrentAsksShareOneExchange) {
  auto iam = make(config());
  std::vector<AuthResult> got;
  iam->authenticate(info("alice"), [&](AuthResult r) { got.push_back(r); });
  iam->authenticate(info("alice"), [&](AuthResult r) { got.push_back(r); });  // joins
  ASSERT_EQ(http->posts.size(), 1u);
  http->answer(
      0, 200,
      R"({"result":"allow","superuser":true,"acl":[{"permission":"allow","action":"all","topic":"a/#"}]})");
  ASSERT_EQ(got.size(), 2u);
  for (const auto& r : got) {
    EXPECT_EQ(r.decision, AuthDecision::Allow);
    EXPECT_EQ(r.identity, "alice");
    EXPECT_TRUE(r.superuser);
    ASSERT_TRUE(r.acl);
    EXPECT_TRUE(r.acl_only);
  }
  now += 59s;
  iam->authenticate(info("alice"), [&](AuthResult r) { got.push_back(r); });
  EXPECT_EQ(http->posts.size(), 1u);  // from the cache
  EXPECT_EQ(got.size(), 3u);
  now += 2s;
  iam->authenticate(info("alice"), [&](AuthResult r) { got.push_back(r); });
  EXPECT_EQ(http->posts.size(), 2u);  // expired
  const auto s = iam->stats();
  EXPECT_EQ(s.requests, 2u);
  EXPECT_EQ(s.joined, 1u);
  EXPECT_EQ(s.cache_hits, 1u);
}

TEST_F(IamTest, DenialsAndStatusCodes) {
  auto iam = make(config());
  std::vector<AuthResult> got;
  iam->authenticate(info("mallory"), [&](AuthResult r) { got.push_back(r); });
  iam->authenticate(info("eve"), [&](AuthResult r) { got.push_back(r); });
  iam->authenticate(info("trudy"), [&](AuthResult r) { got.push_back(r); });
  iam->authenticate(info("next"), [&](AuthResult r) { got.push_back(r); });
  http->answer(0, 200, R"({"result":"deny","reason":"no\nsuch user"})");
  http->answer(1, 401, "");
  http->answer(2, 403, "whatever");
  http->answer(3, 200, R"({"result":"next"})");
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].decision, AuthDecision::NotAuthorized);
  EXPECT_EQ(got[0].reason, "IAM: not authorized: no?such user");  // no control characters in logs
  EXPECT_EQ(got[1].decision, AuthDecision::BadCredentials);
  EXPECT_EQ(got[2].decision, AuthDecision::NotAuthorized);
  EXPECT_EQ(got[3].decision, AuthDecision::Continue);
}

TEST_F(IamTest, ErrorsFailClosedAreNotCachedAndAreLoggedSparingly) {
  auto iam = make(config());
  std::vector<AuthResult> got;
  for (int i = 0; i < 3; ++i) {
    iam->authenticate(info("alice"), [&](AuthResult r) { got.push_back(r); });
    http->fail(http->posts.size() - 1, "connection refused");
  }
  iam->authenticate(info("bob"), [&](AuthResult r) { got.push_back(r); });
  http->answer(3, 500, "");
  iam->authenticate(info("bob"), [&](AuthResult r) { got.push_back(r); });
  http->answer(4, 200, "not json");
  ASSERT_EQ(got.size(), 5u);
  for (const auto& r : got) EXPECT_EQ(r.decision, AuthDecision::Unavailable) << r.reason;
  EXPECT_EQ(http->posts.size(), 5u);  // nothing cached
  EXPECT_EQ(iam->stats().errors, 5u);
  ASSERT_EQ(logged.size(), 1u);  // one line per 10 s
  now += 11s;
  iam->authenticate(info("bob"), [&](AuthResult r) { got.push_back(r); });
  http->fail(5, "timed out");
  ASSERT_EQ(logged.size(), 2u);
  EXPECT_NE(logged[1].find("4 more IAM errors"), std::string::npos) << logged[1];
}

TEST_F(IamTest, OnErrorNextPassesTheClientOn) {
  auto c = config();
  c.on_error_next = true;
  auto iam = make(c);
  AuthResult got;
  iam->authenticate(info("alice"), [&](AuthResult r) { got = r; });
  http->fail(0, "connection refused");
  EXPECT_EQ(got.decision, AuthDecision::Continue);
}

TEST_F(IamTest, AuthorizationIsCachedPerIdentityActionAndTopic) {
  auto iam = make(config());
  const Identity alice{"alice", "c1", nullptr, false, false};
  const Identity bob{"bob", "c2", nullptr, false, false};
  EXPECT_FALSE(iam->cached(alice, Action::Publish, "t/a", now));
  std::vector<RemoteAuthorizer::Answer> got;
  auto keep = [&](RemoteAuthorizer::Answer a) { got.push_back(a); };
  iam->ask(alice, Action::Publish, "t/a", keep);
  iam->ask(alice, Action::Publish, "t/a", keep);    // joins
  iam->ask(alice, Action::Subscribe, "t/a", keep);  // another action
  iam->ask(bob, Action::Publish, "t/a", keep);      // another identity
  ASSERT_EQ(http->posts.size(), 3u);
  EXPECT_EQ(http->posts[0].target, "/acl");
  const auto j = nlohmann::json::parse(http->posts[0].body);
  EXPECT_EQ(j["request"], "authorize");
  EXPECT_EQ(j["action"], "publish");
  EXPECT_EQ(j["topic"], "t/a");
  EXPECT_EQ(j["username"], "alice");
  EXPECT_EQ(j["client_id"], "c1");
  http->answer(0, 200, R"({"result":"allow"})");
  http->answer(1, 200, R"({"result":"deny"})");
  http->answer(2, 503, "");
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].decision, Decision::Allow);
  EXPECT_EQ(got[0].expires, now + 60s);
  EXPECT_EQ(got[1].decision, Decision::Allow);
  EXPECT_EQ(got[2].decision, Decision::Deny);
  EXPECT_EQ(got[2].expires, now + 10s);
  EXPECT_EQ(got[3].decision, Decision::Deny);  // an error denies
  ASSERT_TRUE(iam->cached(alice, Action::Publish, "t/a", now));
  EXPECT_FALSE(iam->cached(bob, Action::Publish, "t/a", now));  // errors are not kept
  EXPECT_FALSE(iam->cached(alice, Action::Publish, "t/a", now + 61s));
}

TEST_F(IamTest, CacheKeysHoldNoPassword) {
  auto iam = make(config());
  const auto a = iam->authentication_key(info("alice", "one"));
  const auto b = iam->authentication_key(info("alice", "two"));
  EXPECT_EQ(a, b);  // presence only: the value cannot change the answer
  auto c = config();
  c.send_password = true;
  auto with_value = make(c);
  EXPECT_NE(with_value->authentication_key(info("alice", "one")),
            with_value->authentication_key(info("alice", "two")));
}

}  // namespace
}  // namespace moat::security
