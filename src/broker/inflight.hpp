// The outbound in-flight window of one session: QoS 1/2 PUBLISH (and PUBREL)
// sent and not yet acknowledged, in the order sent.
//
// Acknowledgements nearly always come in order, so the oldest entry is looked
// at first and removed in O(1) (Fifo). Picking the next free packet id needs
// to know which ids are taken [MQTT-2.3.1-2]: a scan of the window while it is
// small, a bitmap of all 65,535 ids (8 KiB) once it holds more than kIndexFrom
// entries. The bitmap is freed when the window empties, so an idle session
// pays nothing for it and a window of Mosquitto's default size (20) never
// builds one.
#pragma once

#include <bitset>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "broker/fifo.hpp"

namespace moat::broker {

template <typename Entry>  // Entry has a std::uint16_t packet_id
class InflightWindow {
 public:
  static constexpr std::size_t kIndexFrom = 32;

  bool empty() const { return items_.empty(); }
  std::size_t size() const { return items_.size(); }
  bool indexed() const { return taken_ != nullptr; }

  auto begin() { return items_.begin(); }
  auto end() { return items_.end(); }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }
  Entry& back() { return items_.back(); }

  // Whether an entry holds `packet_id`.
  bool in_use(std::uint16_t packet_id) const {
    if (taken_) return taken_->test(packet_id);
    for (const auto& e : items_)
      if (e.packet_id == packet_id) return true;
    return false;
  }

  // The entry holding `packet_id`, or null. The oldest is tried first.
  Entry* find(std::uint16_t packet_id) {
    if (items_.empty() || (taken_ && !taken_->test(packet_id))) return nullptr;
    for (auto& e : items_)
      if (e.packet_id == packet_id) return &e;
    return nullptr;
  }

  void push_back(Entry&& e) {
    if (taken_) {
      taken_->set(e.packet_id);
    } else if (items_.size() + 1 > kIndexFrom) {
      taken_ = std::make_unique<std::bitset<65536>>();
      for (const auto& old : items_) taken_->set(old.packet_id);
      taken_->set(e.packet_id);
    }
    items_.push_back(std::move(e));
  }

  // Removes the entry `find` returned.
  void erase(Entry* e) {
    if (taken_) taken_->reset(e->packet_id);
    if (e == &items_.front()) {
      items_.pop_front();
    } else {
      items_.erase(e);
    }
    if (items_.empty()) taken_.reset();
  }

 private:
  Fifo<Entry> items_;
  std::unique_ptr<std::bitset<65536>> taken_;
};

}  // namespace moat::broker
