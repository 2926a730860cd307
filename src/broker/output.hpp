// Outgoing bytes of one connection, queued during a loop turn and written with
// one gather write. Small pieces are copied into a contiguous buffer; large
// payloads are referenced (the Message keeps them alive), so a payload is never
// copied per subscriber.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "broker/message.hpp"
#include "codec/encoder.hpp"

namespace moat::broker {

class OutputQueue {
 public:
  // A piece to write: either a range of the copy buffer or a referenced buffer.
  struct Piece {
    std::size_t offset = 0;  // into bytes() when ref is null
    std::size_t size = 0;
    const char* data = nullptr;  // referenced bytes, kept alive by keep
    MessagePtr keep;
  };

  // Payloads at least this large are referenced rather than copied.
  static constexpr std::size_t kReferenceThreshold = 1024;

  codec::Bytes& bytes() { return bytes_; }
  // Call after appending to bytes() so the new bytes are ordered before later pieces.
  void commit_bytes();
  void append(const codec::Packet& p);
  void append_publish(const MessagePtr& m, codec::QoS qos, bool dup, bool retain, std::uint16_t packet_id);

  bool empty() const { return pieces_.empty() && bytes_.size() == committed_; }
  std::size_t size() const { return total_; }
  const std::vector<Piece>& pieces() const { return pieces_; }
  const codec::Bytes& buffer() const { return bytes_; }
  void clear();
  void swap(OutputQueue& other) noexcept;

 private:
  void reference(const MessagePtr& keep, std::string_view data);
  codec::Bytes bytes_;
  std::size_t committed_ = 0;
  std::size_t total_ = 0;
  std::vector<Piece> pieces_;
};

}  // namespace moat::broker
