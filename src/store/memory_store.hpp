// The in-memory Store: durable for the life of the process only. Serves tests
// and `[store] engine = "memory"`.
#pragma once

#include <map>
#include <mutex>
#include <set>

#include "store/store.hpp"

namespace moat::store {

class MemoryStore final : public Store {
 public:
  void commit(const Batch& b) override;
  Snapshot load() override;
  std::string describe() const override { return "memory (not kept across restarts)"; }
  std::uint64_t commits() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::string, std::less<>> sessions_;  // client id -> record
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::string> queued_;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::pair<std::uint16_t, std::uint8_t>> inflight_;
  std::set<std::pair<std::uint64_t, std::uint16_t>> pubrel_;
  std::map<std::string, std::string, std::less<>> retained_;
  std::map<std::string, std::string, std::less<>> bans_;  // address -> record
  // replay_mark_key() -> record
  std::map<std::string, std::string, std::less<>> replay_marks_;
  // Failure counter key -> record.
  std::map<std::string, std::string, std::less<>> failures_;
  std::uint64_t commits_ = 0;
};

}  // namespace moat::store
