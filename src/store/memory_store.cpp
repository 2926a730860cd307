#include "store/memory_store.hpp"

namespace moat::store {

void MemoryStore::save_session(const SessionRecord& s) {
  std::lock_guard lock(mu_);
  sessions_.insert_or_assign(s.client_id, s);
}

void MemoryStore::erase_session(std::string_view client_id) {
  std::lock_guard lock(mu_);
  if (auto it = sessions_.find(client_id); it != sessions_.end()) sessions_.erase(it);
}

void MemoryStore::save_retained(const RetainedRecord& r) {
  std::lock_guard lock(mu_);
  retained_.insert_or_assign(r.topic, r);
}

void MemoryStore::erase_retained(std::string_view topic) {
  std::lock_guard lock(mu_);
  if (auto it = retained_.find(topic); it != retained_.end()) retained_.erase(it);
}

std::vector<SessionRecord> MemoryStore::load_sessions() {
  std::lock_guard lock(mu_);
  std::vector<SessionRecord> out;
  for (const auto& [id, s] : sessions_) out.push_back(s);
  return out;
}

std::vector<RetainedRecord> MemoryStore::load_retained() {
  std::lock_guard lock(mu_);
  std::vector<RetainedRecord> out;
  for (const auto& [t, r] : retained_) out.push_back(r);
  return out;
}

}  // namespace moat::store
