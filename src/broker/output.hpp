// Outgoing bytes of one connection, queued during a loop turn and written with
// gather writes. What is particular to this connection (control packets, the
// fixed header of a PUBLISH variant, packet identifiers) is copied into a
// contiguous buffer; the bytes of a message (topic and payload, and the whole
// packet of a plain QoS 0 PUBLISH) are referenced, encoded once in the Message
// and shared by every subscriber: no subscriber copies a large payload. Spans
// of at most kCopyUpTo bytes are copied too.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "broker/message.hpp"
#include "codec/encoder.hpp"

namespace moat::broker {

class OutputQueue {
 public:
  // Spans up to this size are copied: one contiguous run for many small
  // messages is cheaper to gather (here and in the kernel) than a piece and a
  // reference count each.
  static constexpr std::size_t kCopyUpTo = 256;

  // A piece to write: either a range of the copy buffer or referenced bytes.
  struct Piece {
    std::size_t offset = 0;  // into buffer() when data is null
    std::size_t size = 0;
    const std::uint8_t* data = nullptr;  // referenced bytes, kept alive by the queue
  };

  codec::Bytes& bytes() { return bytes_; }
  // Call after appending to bytes() so the new bytes are ordered before later pieces.
  void commit_bytes();
  void append(const codec::Packet& p);
  void append_publish(const MessagePtr& m, codec::QoS qos, bool dup, bool retain, std::uint16_t packet_id);

  bool empty() const { return pieces_.empty() && bytes_.size() == committed_; }
  std::size_t size() const { return total_; }
  const std::vector<Piece>& pieces() const { return pieces_; }
  const codec::Bytes& buffer() const { return bytes_; }
  const std::uint8_t* piece_data(const Piece& p) const { return p.data ? p.data : bytes_.data() + p.offset; }
  void clear();
  void swap(OutputQueue& other) noexcept;

 private:
  void reference(const MessagePtr& keep, std::span<const std::uint8_t> data);
  codec::Bytes bytes_;
  std::size_t committed_ = 0;
  std::size_t total_ = 0;
  std::vector<Piece> pieces_;
  std::vector<MessagePtr> keep_;  // the messages whose bytes are referenced
};

}  // namespace moat::broker
