// The data directory (`[broker] data_dir`): one moatd at a time (the LOCK
// file), and only a folder that Moat created, so that a data_dir pointing at
// the wrong place never gets Moat's files mixed into someone else's.
//
// A folder is Moat's when it holds the marker file `moat-data-dir`, which moatd
// writes on first use of an empty (or new) folder. A folder without the marker
// that holds only `store/` (and LOCK) is a data directory from before the
// marker existed: it is accepted once its store has been checked read-only to
// be a Moat store, and then gets the marker. Anything else is refused.
#pragma once

#include <filesystem>
#include <string>

#include "store/store.hpp"

namespace moat::store {

class DataDir {
 public:
  static constexpr const char* kMarker = "moat-data-dir";

  enum class State {
    Missing,   // no such folder
    Empty,     // nothing in it (but possibly LOCK)
    Marked,    // holds the marker
    Unmarked,  // only store/ holding a RocksDB database: Moat's from before the marker, if its store says so
  };

  // What the folder is, changing nothing. Throws StoreError for a folder that
  // is not a Moat data directory (naming what it holds) or a damaged marker.
  static State inspect(const std::filesystem::path& dir);
  // True when a running moatd holds the folder's LOCK (changes nothing).
  static bool in_use(const std::filesystem::path& dir);

  // Creates the folder if needed, refuses a foreign one, takes the LOCK (throws
  // if another moatd holds it) and marks an empty folder as Moat's.
  explicit DataDir(std::filesystem::path dir);
  ~DataDir();
  DataDir(const DataDir&) = delete;
  DataDir& operator=(const DataDir&) = delete;

  // The state found at open (Empty has been marked since).
  State state() const { return state_; }
  const std::filesystem::path& path() const { return dir_; }
  std::filesystem::path store_path() const { return dir_ / "store"; }
  // Writes the marker (an Unmarked folder whose store was found to be Moat's).
  void mark();

 private:
  std::filesystem::path dir_;
  State state_ = State::Missing;
  int lock_fd_ = -1;
};

}  // namespace moat::store
