#include "broker/connections.hpp"

namespace moat::broker {

ConnectionCounter::ConnectionCounter(std::uint32_t max_total, std::uint32_t max_per_address,
                                     std::vector<security::Cidr> exempt)
    : max_total_(max_total), max_per_address_(max_per_address), exempt_(std::move(exempt)) {}

ConnectionCounter::Admission ConnectionCounter::acquire(std::string_view address, Slot& slot) {
  slot.release();
  const bool per_address = max_per_address_ > 0 && !security::in_any(exempt_, address);
  std::lock_guard lock(mu_);
  if (max_total_ > 0 && total_ >= max_total_) return Admission::TotalFull;
  std::pair<const std::string, std::uint32_t>* entry = nullptr;
  if (per_address) {
    auto it = by_address_.find(std::string(address));
    if (it != by_address_.end() && it->second >= max_per_address_) return Admission::AddressFull;
    if (it == by_address_.end()) it = by_address_.emplace(std::string(address), 0).first;
    ++it->second;
    entry = &*it;
  }
  ++total_;
  slot.owner_ = this;
  slot.address_ = entry;
  return Admission::Admit;
}

void ConnectionCounter::give_back(const Slot& s) {
  std::lock_guard lock(mu_);
  --total_;
  if (!s.address_ || --s.address_->second > 0) return;
  by_address_.erase(by_address_.find(s.address_->first));
}

std::uint32_t ConnectionCounter::total() const {
  std::lock_guard lock(mu_);
  return total_;
}

std::uint32_t ConnectionCounter::of(std::string_view address) const {
  std::lock_guard lock(mu_);
  auto it = by_address_.find(std::string(address));
  return it == by_address_.end() ? 0 : it->second;
}

void ConnectionCounter::Slot::release() {
  if (!owner_) return;
  owner_->give_back(*this);
  owner_ = nullptr;
  address_ = nullptr;
}

ConnectionCounter::Slot& ConnectionCounter::Slot::operator=(Slot&& o) noexcept {
  if (this != &o) {
    release();
    owner_ = o.owner_;
    address_ = o.address_;
    o.owner_ = nullptr;
    o.address_ = nullptr;
  }
  return *this;
}

}  // namespace moat::broker
