// Password files: argon2id written by Moat, Mosquitto's $7$ (PBKDF2-SHA512) and
// $6$ (SHA-512) read, errors with FILE:LINE, unknown users cost a hash, atomic
// rewrites with mode 0600.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "security/password_file.hpp"

namespace moat::security {
namespace {

namespace fs = std::filesystem;

// Cheap parameters so the suite stays fast; the defaults are exercised once.
const Argon2Params kFast{256, 1, 1};

class TempDir {
 public:
  TempDir() {
    std::string t = (fs::temp_directory_path() / "moat-pw-XXXXXX").string();
    if (!::mkdtemp(t.data())) throw std::runtime_error("mkdtemp");
    path_ = t;
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const fs::path& p, std::string_view text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

std::string error_of(std::string_view text) {
  try {
    PasswordFile::parse(text, "/etc/moat/passwd");
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "no error";
}

TEST(PasswordFile, Argon2idRightAndWrongPassword) {
  const std::string h = hash_argon2id("s3cret", kFast);
  EXPECT_TRUE(h.starts_with("$argon2id$v=19$m=256,t=1,p=1$")) << h;
  const auto f = PasswordFile::parse("alice:" + h + "\n", "mem");
  EXPECT_EQ(f->size(), 1u);
  EXPECT_TRUE(f->verify("alice", "s3cret"));
  EXPECT_FALSE(f->verify("alice", "s3cret "));
  EXPECT_FALSE(f->verify("alice", "S3cret"));
  EXPECT_FALSE(f->verify("alice", ""));
  EXPECT_FALSE(f->verify("Alice", "s3cret"));
}

TEST(PasswordFile, Argon2idSaltIsRandom) {
  EXPECT_NE(hash_argon2id("x", kFast), hash_argon2id("x", kFast));
}

TEST(PasswordFile, Argon2idDefaultParameters) {
  const Argon2Params def;
  EXPECT_EQ(def.memory_kib, 32768u);
  EXPECT_EQ(def.iterations, 2u);
  EXPECT_EQ(def.parallelism, 1u);
  const std::string h = hash_argon2id("pw", def);
  EXPECT_TRUE(h.starts_with("$argon2id$v=19$m=32768,t=2,p=1$")) << h;
  const auto f = PasswordFile::parse("u:" + h, "mem");  // no final newline
  EXPECT_TRUE(f->verify("u", "pw"));
  EXPECT_FALSE(f->verify("u", "pW"));
}

TEST(PasswordFile, Argon2ParamsValidated) {
  EXPECT_THROW(hash_argon2id("x", Argon2Params{4, 1, 1}), std::invalid_argument);
  EXPECT_THROW(hash_argon2id("x", Argon2Params{256, 0, 1}), std::invalid_argument);
  EXPECT_THROW(hash_argon2id("x", Argon2Params{256, 1, 0}), std::invalid_argument);
  EXPECT_THROW(hash_argon2id("x", Argon2Params{256, 1, 65}), std::invalid_argument);
}

// A known-answer vector of the argon2 reference implementation's test suite
// (src/test.c: argon2id, v=19, t=2, m=2^16, p=1, "password", "somesalt"), so the
// check does not depend on hash_argon2id.
TEST(PasswordFile, Argon2idReferenceVector) {
  const auto f = PasswordFile::parse(
      "ref:$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc\n", "mem");
  EXPECT_TRUE(f->verify("ref", "password"));
  EXPECT_FALSE(f->verify("ref", "passwore"));
}

TEST(PasswordFile, MosquittoPasswdPbkdf2File) {
  if (::access("/usr/bin/mosquitto_passwd", X_OK) != 0) GTEST_SKIP() << "/usr/bin/mosquitto_passwd missing";
  TempDir dir;
  const fs::path file = dir.path() / "passwd";
  const std::string cmd = "/usr/bin/mosquitto_passwd -c -b '" + file.string() +
                          "' alice 'correct horse' && " + "/usr/bin/mosquitto_passwd -b '" + file.string() +
                          "' bob 'b0b:pw'";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  const std::string text = slurp(file);
  ASSERT_NE(text.find("alice:$7$"), std::string::npos) << text;
  const auto f = PasswordFile::load(file);
  EXPECT_EQ(f->size(), 2u);
  EXPECT_TRUE(f->verify("alice", "correct horse"));
  EXPECT_FALSE(f->verify("alice", "correct horse "));
  EXPECT_FALSE(f->verify("alice", "b0b:pw"));
  EXPECT_TRUE(f->verify("bob", "b0b:pw"));
  EXPECT_FALSE(f->verify("carol", "correct horse"));
  EXPECT_TRUE(f->dummy_params().starts_with("$7$")) << f->dummy_params();
}

// mosquitto_passwd -H sha512 writes the $6$ form of Mosquitto 1.6 and older.
TEST(PasswordFile, MosquittoPasswdSha512File) {
  if (::access("/usr/bin/mosquitto_passwd", X_OK) != 0) GTEST_SKIP() << "/usr/bin/mosquitto_passwd missing";
  TempDir dir;
  const fs::path file = dir.path() / "passwd";
  const std::string cmd =
      "/usr/bin/mosquitto_passwd -H sha512 -c -b '" + file.string() + "' old 'legacy pw' >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  ASSERT_NE(slurp(file).find("old:$6$"), std::string::npos) << slurp(file);
  const auto f = PasswordFile::load(file);
  EXPECT_TRUE(f->verify("old", "legacy pw"));
  EXPECT_FALSE(f->verify("old", "legacy pW"));
}

// Fixed vectors, so the formats stay covered without mosquitto_passwd. The $6$
// line was written by `mosquitto_passwd -H sha512` (2.0.11) and checked against
// the documented algorithm: base64(SHA-512(password || salt bytes)).
TEST(PasswordFile, FixedMosquittoVectors) {
  const auto f = PasswordFile::parse(
      "alice:$7$101$ewo7A0yz/58Z9QOT$x1mNX2ysGRti4cJB7HCAa/FqzjqXBCV/oiFNQeT12MOaThhUhmRWzole+OK2VAajWyjuE/"
      "erhBoTjac5RJpT2A==\n"
      "bob:$6$gzwPXi08UsB5T3mP$sUzeznYEFKqd3dvyM1NS5IOaWe4yzALdUnlMiVHLMOOHHBENBJwzqr7o33XpQzWO/"
      "WCRQJfE+dnXrc3FswQ+gA==\n",
      "mem");
  EXPECT_TRUE(f->verify("alice", "secret"));
  EXPECT_FALSE(f->verify("alice", "hunter2"));
  EXPECT_TRUE(f->verify("bob", "hunter2"));
  EXPECT_FALSE(f->verify("bob", "secret"));
}

TEST(PasswordFile, CommentsBlankLinesAndCrlf) {
  const std::string h = hash_argon2id("pw", kFast);
  const auto f = PasswordFile::parse("# users\r\n\r\n  \nalice:" + h + "\r\n", "mem");
  EXPECT_EQ(f->size(), 1u);
  EXPECT_TRUE(f->verify("alice", "pw"));
}

TEST(PasswordFile, MalformedLinesNameFileAndLine) {
  const std::string good = "alice:" + hash_argon2id("pw", kFast) + "\n";
  EXPECT_EQ(error_of("# c\n" + good + "bob\n"), "/etc/moat/passwd:3: expected USER:HASH");
  EXPECT_EQ(
      error_of(good + "bob:plaintext\n").rfind("/etc/moat/passwd:2: user 'bob': unknown hash format", 0), 0u)
      << error_of(good + "bob:plaintext\n");
  EXPECT_EQ(error_of(":$6$abcd$xyz\n").rfind("/etc/moat/passwd:1: empty user name", 0), 0u);
  EXPECT_EQ(error_of(good + good), "/etc/moat/passwd:2: user 'alice' is defined twice (first on line 1)");
  EXPECT_NE(error_of("x:$argon2i$v=19$m=256,t=1,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc")
                .find(":1: user 'x': only the argon2id variant"),
            std::string::npos);
  EXPECT_NE(error_of("x:$argon2id$v=16$m=256,t=1,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc")
                .find(":1: user 'x': only argon2 version 19"),
            std::string::npos);
  EXPECT_NE(error_of("x:$argon2id$v=19$m=256,t=0,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc")
                .find(":1: user 'x': argon2 iterations"),
            std::string::npos);
  EXPECT_NE(
      error_of("x:$argon2id$v=19$m=256,t=1,p=1$c29tZXNhbHQ$not*base64").find(":1: user 'x': argon2id salt"),
      std::string::npos);
  EXPECT_NE(error_of("\n\nx:$7$0$ewo7A0yz/58Z9QOT$x1mNX2ysGRti4cJB7HCAa/FqzjqXBCV/"
                     "oiFNQeT12MOaThhUhmRWzole+OK2VAajWyjuE/erhBoTjac5RJpT2A==")
                .find(":3: user 'x': PBKDF2 iterations"),
            std::string::npos);
  EXPECT_NE(error_of("x:$7$101$ewo7A0yz/58Z9QOT\n").find(":1: user 'x': PBKDF2 hash must be"),
            std::string::npos);
  EXPECT_NE(error_of("x:$6$gzwPXi08UsB5T3mP$c2hvcnQ=\n").find(":1: user 'x': SHA-512 hash must be 64 bytes"),
            std::string::npos);
}

TEST(PasswordFile, UnreadableFileNamesIt) {
  try {
    PasswordFile::load("/nonexistent/moat/passwd");
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("/nonexistent/moat/passwd: cannot open", 0), 0u) << e.what();
  }
}

// An unknown user must cost the same work as a known one: verify() computes a
// hash with the dummy entry, of the kind and cost of the file's entries.
TEST(PasswordFile, UnknownUserComputesDummyHash) {
  const auto f = PasswordFile::parse(
      "alice:" + hash_argon2id("pw", kFast) + "\nbob:" + hash_argon2id("pw2", kFast) + "\n", "mem");
  EXPECT_EQ(f->dummy_params(), "$argon2id$v=19$m=256,t=1,p=1");
  const auto before = f->hashes_computed();
  EXPECT_FALSE(f->verify("mallory", "pw"));
  EXPECT_FALSE(f->verify("", "pw"));
  EXPECT_EQ(f->hashes_computed(), before + 2);
  EXPECT_TRUE(f->verify("alice", "pw"));
  EXPECT_EQ(f->hashes_computed(), before + 3);
}

// Fixed Mosquitto entries (passwords "hunter2" and "secret"); the $7$ one with
// another iteration count is well-formed, which is all the dummy's choice reads.
const std::string kSix =  // NOLINT(cert-err58-cpp): a test constant; allocation failure ends the run anyway
    "$6$gzwPXi08UsB5T3mP$sUzeznYEFKqd3dvyM1NS5IOaWe4yzALdUnlMiVHLMOOHHBENBJwzqr7o33XpQzWO/"
    "WCRQJfE+dnXrc3FswQ+gA==";
std::string seven(std::string_view iterations) {
  return "$7$" + std::string(iterations) +
         "$ewo7A0yz/58Z9QOT$x1mNX2ysGRti4cJB7HCAa/FqzjqXBCV/oiFNQeT12MOaThhUhmRWzole+OK2VAajWyjuE/"
         "erhBoTjac5RJpT2A==";
}

// The dummy is the costliest entry, not the most common one: an unknown user
// must cost at least what any known user costs.
TEST(PasswordFile, DummyTakesTheCostliestScheme) {
  const auto f = PasswordFile::parse("a:" + kSix + "\nb:" + kSix + "\nc:" + kSix +
                                         "\nd:" + hash_argon2id("x", Argon2Params{512, 2, 1}) + "\n",
                                     "mem");
  EXPECT_EQ(f->dummy_params(), "$argon2id$v=19$m=512,t=2,p=1");
  const auto g = PasswordFile::parse("a:" + hash_argon2id("x", kFast) + "\nb:" + hash_argon2id("y", kFast) +
                                         "\nc:" + hash_argon2id("z", Argon2Params{1024, 2, 1}) + "\n",
                                     "mem");
  EXPECT_EQ(g->dummy_params(), "$argon2id$v=19$m=1024,t=2,p=1");
  // Passes count as much as memory: m=256,t=8 is more work than m=1024,t=1.
  const auto passes = PasswordFile::parse("a:" + hash_argon2id("x", Argon2Params{1024, 1, 1}) +
                                              "\nb:" + hash_argon2id("y", Argon2Params{256, 8, 1}) + "\n",
                                          "mem");
  EXPECT_EQ(passes->dummy_params(), "$argon2id$v=19$m=256,t=8,p=1");
  // A Mosquitto file ($7$101, ~0.1 ms) with one argon2id user: argon2id. A
  // PBKDF2 entry with a million rounds outweighs a cheap argon2id one.
  const auto migrated = PasswordFile::parse(
      "a:" + seven("101") + "\nb:" + seven("101") + "\nc:" + hash_argon2id("x", kFast), "mem");
  EXPECT_EQ(migrated->dummy_params(), "$argon2id$v=19$m=256,t=1,p=1");
  const auto rounds =
      PasswordFile::parse("a:" + seven("1000000") + "\nc:" + hash_argon2id("x", kFast), "mem");
  EXPECT_EQ(rounds->dummy_params(), "$7$1000000");
  PasswordFile::Entry pbkdf2;
  pbkdf2.scheme = PasswordFile::Scheme::Pbkdf2Sha512;
  pbkdf2.iterations = 101;
  PasswordFile::Entry argon2;
  argon2.memory_kib = 32768;
  argon2.iterations = 2;
  argon2.parallelism = 1;
  PasswordFile::Entry sha512;
  sha512.scheme = PasswordFile::Scheme::Sha512;
  EXPECT_LT(PasswordFile::work(sha512), PasswordFile::work(pbkdf2));
  EXPECT_LT(PasswordFile::work(pbkdf2), PasswordFile::work(argon2));
  const auto six = PasswordFile::parse("a:" + kSix + "\n", "mem");
  EXPECT_EQ(six->dummy_params(), "$6$");
  EXPECT_FALSE(six->verify("zed", "hunter2"));
  const auto empty = PasswordFile::parse("# nobody\n", "mem");
  EXPECT_EQ(empty->size(), 0u);
  EXPECT_FALSE(empty->verify("alice", "pw"));
  EXPECT_EQ(empty->hashes_computed(), 1u);
}

// A mixed file (argon2id users and one $6$ user): a wrong password for the $6$
// user, whose own hash takes microseconds, is held as long as a dummy hash, so
// it cannot be told from an unknown user. Unknown users and users of the
// dummy's cost are measured, never held; a right password is not held.
TEST(PasswordFile, CheaperEntriesAreHeldAsLongAsTheDummy) {
  const Argon2Params cost{4096, 2, 1};  // a few milliseconds
  const auto f =
      PasswordFile::parse("a:" + hash_argon2id("a-pw", cost) + "\nb:" + hash_argon2id("b-pw", cost) +
                              "\nc:" + hash_argon2id("c-pw", cost) + "\nold:" + kSix + "\n",
                          "mem");
  EXPECT_EQ(f->dummy_params(), "$argon2id$v=19$m=4096,t=2,p=1");
  EXPECT_TRUE(f->dummy_durations().empty());
  // Nothing measured yet: the first held answer pays a real dummy hash.
  auto hashes = f->hashes_computed();
  EXPECT_FALSE(f->verify("old", "wrong"));
  EXPECT_EQ(f->hashes_computed(), hashes + 2);
  EXPECT_EQ(f->padded_answers(), 1u);
  EXPECT_EQ(f->dummy_durations().size(), 1u);
  // The right password is answered at once.
  EXPECT_TRUE(f->verify("old", "hunter2"));
  EXPECT_EQ(f->padded_answers(), 1u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_FALSE(f->verify("ghost-" + std::to_string(i), "x"));
    EXPECT_FALSE(f->verify("a", "wrong"));
  }
  EXPECT_TRUE(f->verify("b", "b-pw"));
  EXPECT_EQ(f->padded_answers(), 1u);
  const auto measured = f->dummy_durations();
  ASSERT_EQ(measured.size(), 10u);
  // Now a held answer sleeps to a measured duration (no second hash), so it
  // lasts at least as long as the shortest dummy hash seen.
  const auto shortest = *std::min_element(measured.begin(), measured.end());
  for (int i = 0; i < 3; ++i) {
    hashes = f->hashes_computed();
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_FALSE(f->verify("old", "wrong " + std::to_string(i)));
    const auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(f->hashes_computed(), hashes + 1);
    EXPECT_GE(took, shortest);
  }
  EXPECT_EQ(f->padded_answers(), 4u);
  EXPECT_EQ(f->dummy_durations(), measured);  // held answers are not measured

  // A file whose entries all have the dummy's cost holds nothing.
  const auto same = PasswordFile::parse("a:" + kSix + "\nb:" + kSix + "\n", "mem");
  EXPECT_FALSE(same->verify("a", "wrong"));
  EXPECT_FALSE(same->verify("nobody", "wrong"));
  EXPECT_EQ(same->padded_answers(), 0u);
  EXPECT_EQ(same->dummy_durations().size(), 2u);
}

TEST(PasswordFile, SetPasswordAndDeleteUserRoundTrip) {
  TempDir dir;
  const fs::path file = dir.path() / "passwd";
  EXPECT_TRUE(set_password(file, "alice", "a-pw", kFast));
  EXPECT_EQ(fs::status(file).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  // Other lines (comments, Mosquitto entries) survive a rewrite unchanged.
  const std::string mosq =
      "bob:$6$gzwPXi08UsB5T3mP$sUzeznYEFKqd3dvyM1NS5IOaWe4yzALdUnlMiVHLMOOHHBENBJwzqr7o33XpQzWO/"
      "WCRQJfE+dnXrc3FswQ+gA==";
  spit(file, "# team\n" + slurp(file) + mosq + "\n");
  ::chmod(file.c_str(), 0644);
  EXPECT_TRUE(set_password(file, "carol", "c-pw", kFast));
  EXPECT_FALSE(set_password(file, "alice", "a-pw2", kFast));  // replaced in place
  EXPECT_EQ(fs::status(file).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  const std::string text = slurp(file);
  EXPECT_TRUE(text.starts_with("# team\nalice:$argon2id$")) << text;
  EXPECT_NE(text.find("\n" + mosq + "\ncarol:$argon2id$"), std::string::npos) << text;
  auto f = PasswordFile::load(file);
  EXPECT_EQ(f->size(), 3u);
  EXPECT_FALSE(f->verify("alice", "a-pw"));
  EXPECT_TRUE(f->verify("alice", "a-pw2"));
  EXPECT_TRUE(f->verify("bob", "hunter2"));
  EXPECT_TRUE(f->verify("carol", "c-pw"));

  EXPECT_TRUE(delete_user(file, "alice"));
  EXPECT_FALSE(delete_user(file, "alice"));
  f = PasswordFile::load(file);
  EXPECT_EQ(f->size(), 2u);
  EXPECT_FALSE(f->contains("alice"));
  EXPECT_TRUE(f->verify("bob", "hunter2"));
  EXPECT_TRUE(f->verify("carol", "c-pw"));
  EXPECT_TRUE(slurp(file).starts_with("# team\n" + mosq + "\n"));
  // No temporary file left behind.
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) ++n;
  EXPECT_EQ(n, 1u);
}

TEST(PasswordFile, SetPasswordRefusesBadInput) {
  TempDir dir;
  const fs::path file = dir.path() / "passwd";
  EXPECT_THROW(set_password(file, "a:b", "pw", kFast), std::invalid_argument);
  EXPECT_THROW(set_password(file, "", "pw", kFast), std::invalid_argument);
  EXPECT_THROW(set_password(file, "a\nb", "pw", kFast), std::invalid_argument);
  EXPECT_THROW(set_password(file, "#x", "pw", kFast), std::invalid_argument);
  EXPECT_THROW(set_password(file, "a", "", kFast), std::invalid_argument);
  EXPECT_FALSE(fs::exists(file));
  // A file that does not parse is not rewritten.
  spit(file, "garbage\n");
  EXPECT_THROW(set_password(file, "a", "pw", kFast), std::runtime_error);
  EXPECT_EQ(slurp(file), "garbage\n");
  EXPECT_THROW(delete_user(dir.path() / "missing", "a"), std::runtime_error);
}

ConnectInfo connect(std::optional<std::string_view> user, std::optional<std::string_view> pw) {
  return ConnectInfo{"l", "127.0.0.1:1", "cid", user, pw, {}, {}, {}, {}};
}

TEST(PasswordAuthenticator, Decisions) {
  PasswordAuthenticator a(PasswordFile::parse("alice:" + hash_argon2id("pw", kFast) + "\n", "mem"));
  EXPECT_EQ(a.name(), "password");
  auto r = a.authenticate(connect("alice", "pw"));
  EXPECT_EQ(r.decision, AuthDecision::Allow);
  EXPECT_EQ(r.identity, "alice");
  EXPECT_EQ(r.method, "password");
  EXPECT_EQ(a.authenticate(connect("alice", "bad")).decision, AuthDecision::BadCredentials);
  EXPECT_EQ(a.authenticate(connect("bob", "pw")).decision, AuthDecision::BadCredentials);
  EXPECT_EQ(a.authenticate(connect("alice", std::nullopt)).decision, AuthDecision::BadCredentials);
  EXPECT_EQ(a.authenticate(connect(std::nullopt, std::nullopt)).decision, AuthDecision::Continue);
  EXPECT_EQ(a.authenticate(connect(std::nullopt, "pw")).decision, AuthDecision::Continue);

  // Reload swaps the table: alice's new password works, the old one does not.
  a.reload(PasswordFile::parse("alice:" + hash_argon2id("new", kFast) + "\n", "mem"));
  EXPECT_EQ(a.authenticate(connect("alice", "pw")).decision, AuthDecision::BadCredentials);
  EXPECT_EQ(a.authenticate(connect("alice", "new")).decision, AuthDecision::Allow);
}

// Several threads verify while another reloads (run under TSan in CI).
TEST(PasswordAuthenticator, ConcurrentVerifyAndReload) {
  const std::string line = "alice:" + hash_argon2id("pw", kFast) + "\n";
  PasswordAuthenticator a(PasswordFile::parse(line, "mem"));
  std::atomic<int> wrong{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 3; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < 30; ++i)
        if (a.authenticate(connect("alice", "pw")).decision != AuthDecision::Allow) ++wrong;
    });
  for (int i = 0; i < 10; ++i) a.reload(PasswordFile::parse(line, "mem"));
  for (auto& t : ts) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

}  // namespace
}  // namespace moat::security
