// Open connections in total and per peer address ([limits] max_connections,
// max_connections_per_address). net takes a slot at accept, before any TLS or
// MQTT work, and a connection holds it until its socket is closed.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "security/defence.hpp"

namespace moat::broker {

class ConnectionCounter {
 public:
  // 0 = no limit. Addresses in `exempt` are counted in the total only.
  ConnectionCounter(std::uint32_t max_total, std::uint32_t max_per_address,
                    std::vector<security::Cidr> exempt);

  // A connection's place in the counts, given back when it is destroyed.
  // Move-only; moves with its connection from loop to loop.
  class Slot {
   public:
    Slot() = default;
    ~Slot() { release(); }
    Slot(Slot&& o) noexcept : owner_(o.owner_), address_(o.address_) {
      o.owner_ = nullptr;
      o.address_ = nullptr;
    }
    Slot& operator=(Slot&& o) noexcept;
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    bool held() const { return owner_ != nullptr; }
    void release();

   private:
    friend class ConnectionCounter;
    ConnectionCounter* owner_ = nullptr;
    // The address's entry in by_address_ (its node stays put while this slot
    // counts in it), or null when the address is not limited. Every connection
    // holds a slot: a pointer rather than a copy of the address.
    std::pair<const std::string, std::uint32_t>* address_ = nullptr;
  };

  enum class Admission : std::uint8_t { Admit, TotalFull, AddressFull };
  // Thread-safe. On Admit, `slot` holds the new connection's place.
  Admission acquire(std::string_view address, Slot& slot);

  std::uint32_t total() const;
  std::uint32_t of(std::string_view address) const;
  std::uint32_t max_total() const { return max_total_; }
  std::uint32_t max_per_address() const { return max_per_address_; }

 private:
  void give_back(const Slot& s);

  const std::uint32_t max_total_;
  const std::uint32_t max_per_address_;
  const std::vector<security::Cidr> exempt_;
  mutable std::mutex mu_;
  std::uint32_t total_ = 0;
  std::unordered_map<std::string, std::uint32_t> by_address_;
};

}  // namespace moat::broker
