#include "broker/output.hpp"

namespace moat::broker {

void OutputQueue::commit_bytes() {
  const std::size_t n = bytes_.size() - committed_;
  if (n == 0) return;
  if (!pieces_.empty() && !pieces_.back().data && pieces_.back().offset + pieces_.back().size == committed_) {
    pieces_.back().size += n;
  } else {
    pieces_.push_back(Piece{committed_, n, nullptr});
  }
  committed_ = bytes_.size();
  total_ += n;
}

void OutputQueue::reference(const MessagePtr& keep, std::span<const std::uint8_t> data) {
  if (data.empty()) return;
  if (data.size() <= kCopyUpTo) {
    bytes_.insert(bytes_.end(), data.begin(), data.end());
    commit_bytes();
    return;
  }
  if (keep_.empty() || keep_.back() != keep) keep_.push_back(keep);
  pieces_.push_back(Piece{0, data.size(), data.data()});
  total_ += data.size();
}

void OutputQueue::append(const codec::Packet& p) {
  codec::encode(p, bytes_);
  commit_bytes();
}

void OutputQueue::append_publish(const MessagePtr& m, codec::QoS qos, bool dup, bool retain,
                                 std::uint16_t packet_id) {
  if (qos == codec::QoS::AtMostOnce && !dup && !retain) {
    commit_bytes();
    reference(m, m->publish_qos0());
    return;
  }
  std::uint8_t header[codec::kPublishHeaderMax];
  const std::size_t n = codec::encode_publish_header(qos, dup, retain, m->body().size(), header);
  bytes_.insert(bytes_.end(), header, header + n);
  commit_bytes();
  if (qos == codec::QoS::AtMostOnce) {
    reference(m, m->body());
    return;
  }
  reference(m, m->topic_field());
  bytes_.push_back(static_cast<std::uint8_t>(packet_id >> 8));
  bytes_.push_back(static_cast<std::uint8_t>(packet_id & 0xFF));
  commit_bytes();
  reference(m, m->payload_bytes());
}

void OutputQueue::clear() {
  bytes_.clear();
  pieces_.clear();
  keep_.clear();
  committed_ = 0;
  total_ = 0;
}

void OutputQueue::swap(OutputQueue& other) noexcept {
  bytes_.swap(other.bytes_);
  pieces_.swap(other.pieces_);
  keep_.swap(other.keep_);
  std::swap(committed_, other.committed_);
  std::swap(total_, other.total_);
}

}  // namespace moat::broker
