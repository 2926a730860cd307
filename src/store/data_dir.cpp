#include "store/data_dir.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <set>
#include <system_error>

namespace moat::store {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kMarkerFirstLine = "Moat data directory, format 1";
constexpr const char* kMarkerText =
    "Moat data directory, format 1\n"
    "moatd keeps its durable state here (see docs/durability.md); keep other files out of this folder.\n";
constexpr const char* kLock = "LOCK";
constexpr const char* kMarkerTemp = "moat-data-dir.new";  // left by a crash while marking

std::string errno_text(int e) {
  return std::error_code(e, std::system_category()).message();
}

[[noreturn]] void refuse(const fs::path& dir, const std::string& why) {
  throw StoreError("data_dir " + dir.string() + ": " + why);
}

void write_all(int fd, const fs::path& path, std::string_view text) {
  while (!text.empty()) {
    const ssize_t n = ::write(fd, text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw StoreError(path.string() + ": " + errno_text(errno));
    text.remove_prefix(static_cast<std::size_t>(n));
  }
}

void fsync_path(const fs::path& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) throw StoreError(path.string() + ": " + errno_text(errno));
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (rc != 0) throw StoreError(path.string() + ": fsync: " + errno_text(e));
}

}  // namespace

DataDir::State DataDir::inspect(const fs::path& dir) {
  std::error_code ec;
  const auto status = fs::status(dir, ec);
  if (!fs::exists(status)) return State::Missing;
  if (!fs::is_directory(status)) refuse(dir, "is not a directory");
  std::set<std::string> names;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (name != kLock && name != kMarkerTemp) names.insert(name);
  }
  if (ec) refuse(dir, ec.message());
  if (names.count(kMarker)) {
    std::ifstream in(dir / kMarker);
    std::string first;
    std::getline(in, first);
    if (first != kMarkerFirstLine)
      refuse(dir, std::string("the marker file ") + kMarker +
                      " is damaged or of another version (its first line is not '" +
                      std::string(kMarkerFirstLine) + "'); refusing to use it");
    return State::Marked;
  }
  if (names.empty()) return State::Empty;
  if (names == std::set<std::string>{"store"} && fs::is_directory(dir / "store", ec) &&
      fs::exists(dir / "store" / "CURRENT", ec))
    return State::Unmarked;
  std::string listing;
  int shown = 0;
  for (const auto& n : names) {
    if (shown++ == 5) {
      listing += ", ...";
      break;
    }
    listing += (listing.empty() ? "" : ", ") + n;
  }
  refuse(dir, "is not a Moat data directory: it holds " + std::to_string(names.size()) + " entr" +
                  (names.size() == 1 ? "y" : "ies") + " (" + listing + ") and no " + kMarker +
                  " marker; refusing to use it (set data_dir to a new or empty folder)");
}

bool DataDir::in_use(const fs::path& dir) {
  const auto lock = dir / kLock;
  const int fd = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;  // no LOCK: no moatd has run here since it was made
  const bool busy = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  return busy;
}

DataDir::DataDir(fs::path dir) : dir_(std::move(dir)) {
  // Refuse a foreign folder before anything (the LOCK file) is added to it.
  (void)inspect(dir_);
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) refuse(dir_, ec.message());
  const auto lock = dir_ / kLock;
  lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) throw StoreError(lock.string() + ": " + errno_text(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
    throw StoreError("data_dir " + dir_.string() + " is in use by another moatd (lock " + lock.string() +
                     ")");
  }
  try {
    state_ = inspect(dir_);  // again, now that no other moatd can change it
    if (state_ == State::Empty) mark();
  } catch (...) {
    ::close(lock_fd_);
    lock_fd_ = -1;
    throw;
  }
}

DataDir::~DataDir() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void DataDir::mark() {
  // Written aside and renamed, so the marker is either absent or whole.
  const auto temp = dir_ / kMarkerTemp;
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw StoreError(temp.string() + ": " + errno_text(errno));
  try {
    write_all(fd, temp, kMarkerText);
    if (::fsync(fd) != 0) throw StoreError(temp.string() + ": fsync: " + errno_text(errno));
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  std::error_code ec;
  fs::rename(temp, dir_ / kMarker, ec);
  if (ec) throw StoreError((dir_ / kMarker).string() + ": " + ec.message());
  fsync_path(dir_, O_RDONLY | O_DIRECTORY);
}

}  // namespace moat::store
