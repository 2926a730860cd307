// The in-memory Store: state lives as long as the process.
#pragma once

#include <map>
#include <mutex>

#include "store/store.hpp"

namespace moat::store {

class MemoryStore final : public Store {
 public:
  void save_session(const SessionRecord& s) override;
  void erase_session(std::string_view client_id) override;
  void save_retained(const RetainedRecord& r) override;
  void erase_retained(std::string_view topic) override;
  std::vector<SessionRecord> load_sessions() override;
  std::vector<RetainedRecord> load_retained() override;

 private:
  std::mutex mu_;
  std::map<std::string, SessionRecord, std::less<>> sessions_;
  std::map<std::string, RetainedRecord, std::less<>> retained_;
};

}  // namespace moat::store
