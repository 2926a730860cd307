// FileWatcher against a real file system (a temporary folder): the ways files
// get replaced in practice, and the quiet period that turns a burst into one
// report. Every wait is bounded and ends on the event, not on a sleep.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <condition_variable>
#include <fstream>
#include <mutex>

#include "security/file_watcher.hpp"

namespace moat::security {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "moat-watch-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void write(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
}

// Collects the reports of a FileWatcher.
class Reports {
 public:
  FileWatcher::Callback callback() {
    return [this](const std::vector<fs::path>& changed) {
      std::lock_guard lock(mu_);
      reports_.push_back(changed);
      cv_.notify_all();
    };
  }
  // Waits for report number `n` (0-based); empty if it does not come in time.
  std::vector<fs::path> wait(std::size_t n, std::chrono::seconds timeout = 10s) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return reports_.size() > n; })) return {};
    return reports_[n];
  }
  std::size_t count() {
    std::lock_guard lock(mu_);
    return reports_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::vector<fs::path>> reports_;
};

TEST(FileWatcher, RenameOverAFileIsReported) {
  TempDir d;
  const fs::path cert = d.path / "server.crt", key = d.path / "server.key";
  write(cert, "one");
  write(key, "key");
  Reports r;
  FileWatcher w({cert, key}, r.callback(), 50ms);
  write(d.path / ".server.crt.tmp", "two");
  fs::rename(d.path / ".server.crt.tmp", cert);  // what editors and atomic writers do
  EXPECT_EQ(r.wait(0), std::vector<fs::path>{cert});
}

TEST(FileWatcher, WriteInPlaceIsReportedAndOtherFilesAreNot) {
  TempDir d;
  const fs::path crl = d.path / "ca.crl";
  write(crl, "crl 1");
  Reports r;
  FileWatcher w({crl}, r.callback(), 50ms);
  write(d.path / "unrelated.log", "noise");  // same folder, not watched
  write(crl, "crl 2, longer");
  // The first report names the CRL only; the unrelated file never shows up.
  EXPECT_EQ(r.wait(0), std::vector<fs::path>{crl});
  write(d.path / "unrelated.log", "more noise");
  write(crl, "crl 3");
  EXPECT_EQ(r.wait(1), std::vector<fs::path>{crl});
}

TEST(FileWatcher, ABurstIsOneReport) {
  TempDir d;
  const fs::path cert = d.path / "server.crt", key = d.path / "server.key";
  write(cert, "c0");
  write(key, "k0");
  Reports r;
  FileWatcher w({cert, key}, r.callback(), 300ms);
  for (int i = 1; i <= 5; ++i) {
    write(cert, "c" + std::to_string(i));
    write(key, "k" + std::to_string(i));
  }
  auto first = r.wait(0);
  std::sort(first.begin(), first.end());
  EXPECT_EQ(first, (std::vector<fs::path>{cert, key}));
  // A later change is a second report: the burst gave exactly one.
  write(key, "k6");
  EXPECT_EQ(r.wait(1), std::vector<fs::path>{key});
  EXPECT_EQ(r.count(), 2u);
}

TEST(FileWatcher, AFolderStandsForItsFiles) {
  TempDir d;
  const fs::path cas = d.path / "cas";
  fs::create_directory(cas);
  write(cas / "a.pem", "a");
  Reports r;
  FileWatcher w({cas}, r.callback(), 50ms);
  write(cas / "b.pem", "b");
  EXPECT_EQ(r.wait(0), std::vector<fs::path>{cas});
  fs::remove(cas / "a.pem");
  EXPECT_EQ(r.wait(1), std::vector<fs::path>{cas});
}

TEST(FileWatcher, SymlinkSwapIsReported) {
  // The layout of a Kubernetes secret volume: ca.crt -> ..data/ca.crt and
  // ..data -> ..v1, replaced by renaming a new ..data link over the old one.
  TempDir d;
  fs::create_directory(d.path / "..v1");
  fs::create_directory(d.path / "..v2");
  write(d.path / "..v1" / "ca.crt", "old");
  write(d.path / "..v2" / "ca.crt", "new");
  fs::create_directory_symlink("..v1", d.path / "..data");
  fs::create_symlink("..data/ca.crt", d.path / "ca.crt");
  const fs::path ca = d.path / "ca.crt";
  Reports r;
  FileWatcher w({ca}, r.callback(), 50ms);
  fs::create_directory_symlink("..v2", d.path / "..data_tmp");
  fs::rename(d.path / "..data_tmp", d.path / "..data");
  EXPECT_EQ(r.wait(0), std::vector<fs::path>{ca});
}

TEST(FileWatcher, DeletedAndRecreatedFolderIsWatchedAgain) {
  TempDir d;
  const fs::path sub = d.path / "tls";
  fs::create_directory(sub);
  const fs::path cert = sub / "server.crt";
  write(cert, "one");
  Reports r;
  FileWatcher w({cert}, r.callback(), 50ms);
  fs::remove_all(sub);
  EXPECT_EQ(r.wait(0), std::vector<fs::path>{cert});  // gone is a change too
  fs::create_directory(sub);
  write(cert, "two");
  EXPECT_EQ(r.wait(1), std::vector<fs::path>{cert});
  write(cert, "three, in place");
  EXPECT_EQ(r.wait(2), std::vector<fs::path>{cert});
}

}  // namespace
}  // namespace moat::security
