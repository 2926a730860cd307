#include "broker/output.hpp"

namespace moat::broker {

void OutputQueue::commit_bytes() {
  const std::size_t n = bytes_.size() - committed_;
  if (n == 0) return;
  if (!pieces_.empty() && !pieces_.back().data && pieces_.back().offset + pieces_.back().size == committed_) {
    pieces_.back().size += n;
  } else {
    pieces_.push_back(Piece{committed_, n, nullptr, nullptr});
  }
  committed_ = bytes_.size();
  total_ += n;
}

void OutputQueue::reference(const MessagePtr& keep, std::string_view data) {
  pieces_.push_back(Piece{0, data.size(), data.data(), keep});
  total_ += data.size();
}

void OutputQueue::append(const codec::Packet& p) {
  codec::encode(p, bytes_);
  commit_bytes();
}

void OutputQueue::append_publish(const MessagePtr& m, codec::QoS qos, bool dup, bool retain,
                                 std::uint16_t packet_id) {
  codec::encode_publish_prefix(qos, dup, retain, m->topic, m->payload.size(), bytes_);
  if (qos != codec::QoS::AtMostOnce) {
    bytes_.push_back(static_cast<std::uint8_t>(packet_id >> 8));
    bytes_.push_back(static_cast<std::uint8_t>(packet_id & 0xFF));
  }
  if (m->payload.size() < kReferenceThreshold) {
    bytes_.insert(bytes_.end(), m->payload.begin(), m->payload.end());
    commit_bytes();
  } else {
    commit_bytes();
    reference(m, m->payload);
  }
}

void OutputQueue::clear() {
  bytes_.clear();
  pieces_.clear();
  committed_ = 0;
  total_ = 0;
}

void OutputQueue::swap(OutputQueue& other) noexcept {
  bytes_.swap(other.bytes_);
  pieces_.swap(other.pieces_);
  std::swap(committed_, other.committed_);
  std::swap(total_, other.total_);
}

}  // namespace moat::broker
