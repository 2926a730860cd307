// Durable broker state behind one interface: persistent sessions with their
// subscriptions, and retained messages. The broker writes through it and reads
// it back at start-up. MemoryStore serves tests and the default build; the
// RocksDB store (and a cluster-backed one) implement the same interface.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moat::store {

struct SessionRecord {
  std::string client_id;
  std::vector<std::pair<std::string, std::uint8_t>> subscriptions;  // filter, QoS
};

struct RetainedRecord {
  std::string topic;
  std::string payload;
  std::uint8_t qos = 0;
};

// Implementations are thread-safe: every event loop writes through the same store.
class Store {
 public:
  virtual ~Store() = default;
  virtual void save_session(const SessionRecord& s) = 0;  // insert or replace
  virtual void erase_session(std::string_view client_id) = 0;
  virtual void save_retained(const RetainedRecord& r) = 0;  // insert or replace
  virtual void erase_retained(std::string_view topic) = 0;
  virtual std::vector<SessionRecord> load_sessions() = 0;
  virtual std::vector<RetainedRecord> load_retained() = 0;
};

}  // namespace moat::store
