// FileWatcher: inotify on the parent folders, a quiet period, then a comparison
// of file identities.
#include "security/file_watcher.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

namespace moat::security {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// A burst that never settles (a busy log file beside the watched ones) still
// gets its check this long after it began.
constexpr auto kMaxDelay = std::chrono::seconds(2);
constexpr auto kRetryMissing = std::chrono::seconds(1);
constexpr std::uint32_t kFolderEvents = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE |
                                        IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;

std::string stat_identity(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return "missing " + std::to_string(errno);
  std::string s;
  for (const auto v : {static_cast<long long>(st.st_dev), static_cast<long long>(st.st_ino),
                       static_cast<long long>(st.st_size), static_cast<long long>(st.st_mtim.tv_sec),
                       static_cast<long long>(st.st_mtim.tv_nsec), static_cast<long long>(st.st_ctim.tv_sec),
                       static_cast<long long>(st.st_ctim.tv_nsec), static_cast<long long>(st.st_mode)}) {
    s += std::to_string(v);
    s += ' ';
  }
  return s;
}

// A file's identity, or for a folder the names and identities of its entries.
std::string identity(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_directory(p, ec)) return stat_identity(p);
  std::vector<std::string> entries;
  for (const auto& e : fs::directory_iterator(p, ec))
    entries.push_back(e.path().filename().string() + "=" + stat_identity(e.path()));
  std::sort(entries.begin(), entries.end());
  std::string s = "dir ";
  for (const auto& e : entries) s += e + "\n";
  return s;
}

}  // namespace

struct FileWatcher::Impl {
  struct Folder {
    fs::path path;
    int wd = -1;
  };

  std::vector<fs::path> paths;
  std::vector<std::string> identities;  // per path, as last reported
  Callback on_change;
  std::chrono::milliseconds debounce;
  int inotify_fd = -1;
  int stop_fd = -1;
  mutable std::mutex mu;  // folders (read by folders() from other threads)
  std::vector<Folder> folders;
  bool missing = false;  // a folder has no watch (thread only)
  std::thread thread;

  ~Impl() {
    if (inotify_fd >= 0) ::close(inotify_fd);
    if (stop_fd >= 0) ::close(stop_fd);
  }

  // Adds the watches still missing (folders that did not exist, or went away).
  void add_watches() {
    std::lock_guard lock(mu);
    missing = false;
    for (Folder& f : folders) {
      if (f.wd < 0) f.wd = inotify_add_watch(inotify_fd, f.path.c_str(), kFolderEvents);
      if (f.wd < 0) missing = true;
    }
  }

  // Reads the queued events; true if there was one.
  bool read_events() {
    alignas(inotify_event) char buf[16 * 1024];
    bool any = false;
    for (;;) {
      const ssize_t n = ::read(inotify_fd, buf, sizeof buf);
      if (n <= 0) break;
      any = true;
      for (char* p = buf; p < buf + n;) {
        const auto* ev = reinterpret_cast<const inotify_event*>(p);
        if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) {
          // The folder went away or moved: watch its path again once it is back.
          std::lock_guard lock(mu);
          for (Folder& f : folders) {
            if (f.wd != ev->wd) continue;
            if (!(ev->mask & IN_IGNORED)) inotify_rm_watch(inotify_fd, f.wd);
            f.wd = -1;
            missing = true;
          }
        }
        p += sizeof(inotify_event) + ev->len;
      }
    }
    return any;
  }

  void check() {
    std::vector<fs::path> changed;
    for (std::size_t i = 0; i < paths.size(); ++i) {
      std::string now = identity(paths[i]);
      if (now != identities[i]) {
        identities[i] = std::move(now);
        changed.push_back(paths[i]);
      }
    }
    if (!changed.empty()) on_change(changed);
  }

  void run() {
    bool burst = false;  // events seen and not yet checked
    Clock::time_point burst_start{}, quiet_until{};
    auto next_retry = Clock::now() + kRetryMissing;
    for (;;) {
      auto wake = Clock::time_point::max();
      if (burst) wake = std::min(quiet_until, burst_start + kMaxDelay);
      if (missing) wake = std::min(wake, next_retry);
      int timeout = -1;
      if (wake != Clock::time_point::max())
        timeout = static_cast<int>(std::max<long long>(
            0, std::chrono::duration_cast<std::chrono::milliseconds>(wake - Clock::now()).count() + 1));
      pollfd fds[2] = {{inotify_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
      const int r = ::poll(fds, 2, timeout);
      if (r < 0 && errno != EINTR) return;
      if (r > 0 && fds[1].revents) return;
      const auto now = Clock::now();
      if (r > 0 && (fds[0].revents & POLLIN) && read_events()) {
        if (!burst) burst_start = now;
        burst = true;
        quiet_until = now + debounce;
      }
      if (burst && (now >= quiet_until || now >= burst_start + kMaxDelay)) {
        burst = false;
        if (missing) add_watches();
        check();
      } else if (missing && now >= next_retry) {
        next_retry = now + kRetryMissing;
        add_watches();
        if (!missing) check();  // a folder came back, maybe with new files
      }
    }
  }
};

FileWatcher::FileWatcher(std::vector<fs::path> paths, Callback on_change, std::chrono::milliseconds debounce)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.paths = std::move(paths);
  m.on_change = std::move(on_change);
  m.debounce = debounce;
  m.inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (m.inotify_fd < 0) throw std::runtime_error(std::string("inotify: ") + std::strerror(errno));
  m.stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (m.stop_fd < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
  auto add_folder = [&m](const fs::path& f) {
    if (std::none_of(m.folders.begin(), m.folders.end(), [&](const Impl::Folder& x) { return x.path == f; }))
      m.folders.push_back({f, -1});
  };
  for (const fs::path& p : m.paths) {
    const fs::path abs = fs::absolute(p).lexically_normal();
    std::error_code ec;
    if (fs::is_directory(abs, ec)) add_folder(abs);
    add_folder(abs.parent_path().empty() ? fs::path("/") : abs.parent_path());
  }
  // Watches first, identities second: a change in between is an event.
  m.add_watches();  // before returning: a change made right after is seen
  for (const fs::path& p : m.paths) m.identities.push_back(identity(p));
  m.thread = std::thread([&m] { m.run(); });
}

FileWatcher::~FileWatcher() {
  const std::uint64_t one = 1;
  if (::write(impl_->stop_fd, &one, sizeof one) < 0) {
    // the eventfd cannot be full; nothing better to do than join
  }
  impl_->thread.join();
}

std::vector<fs::path> FileWatcher::folders() const {
  std::lock_guard lock(impl_->mu);
  std::vector<fs::path> out;
  for (const auto& f : impl_->folders) out.push_back(f.path);
  return out;
}

}  // namespace moat::security
