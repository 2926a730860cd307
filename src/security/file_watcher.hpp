// Reload on file change: a thread that watches the folders holding a set of
// files (inotify) and reports which of them changed, once a burst of changes
// has settled.
//
// It watches parent folders rather than the files themselves, so that every
// way of replacing a file is seen: written in place, renamed over (editors,
// `mv new old`, atomic writes), deleted and created again, or a symlink swapped
// (Kubernetes secret volumes). A folder path in the set stands for every file
// in it (a CA folder). After an event it waits until `debounce` passes without
// another, then compares each path's identity (device, inode, size, mtime,
// ctime, following symlinks; for a folder, that of every entry) with the last
// one seen and reports those that differ. A folder that does not exist (yet)
// is looked for again every second.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <vector>

namespace moat::security {

class FileWatcher {
 public:
  using Callback = std::function<void(const std::vector<std::filesystem::path>& changed)>;

  // Starts the thread. `on_change` runs on it, with the paths (as given) that
  // changed. Throws std::runtime_error if inotify is unavailable.
  FileWatcher(std::vector<std::filesystem::path> paths, Callback on_change,
              std::chrono::milliseconds debounce = std::chrono::milliseconds(200));
  // Stops and joins the thread (a callback under way finishes first).
  ~FileWatcher();
  FileWatcher(const FileWatcher&) = delete;
  FileWatcher& operator=(const FileWatcher&) = delete;

  // The folders watched (for the log).
  std::vector<std::filesystem::path> folders() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moat::security
