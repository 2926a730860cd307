// The output queue: every variant of a PUBLISH it writes is the packet the codec
// encodes; a large topic or payload is referenced from the Message, never copied
// per subscriber, and small ones are copied so that many small messages make
// one contiguous run.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>

#include "broker/output.hpp"
#include "codec/decoder.hpp"
#include "codec/encoder.hpp"

namespace moat::test {
namespace {

using codec::QoS;

codec::Bytes concatenate(const broker::OutputQueue& q) {
  codec::Bytes out;
  for (const auto& p : q.pieces()) {
    const std::uint8_t* d = q.piece_data(p);
    out.insert(out.end(), d, d + p.size);
  }
  EXPECT_EQ(out.size(), q.size());
  return out;
}

codec::Bytes expected(const broker::Message& m, QoS qos, bool dup, bool retain, std::uint16_t id) {
  codec::Publish p;
  p.qos = qos;
  p.dup = dup;
  p.retain = retain;
  p.topic = m.topic;
  p.payload = m.payload;
  p.packet_id = qos == QoS::AtMostOnce ? 0 : id;
  codec::Bytes out;
  codec::encode(p, out);
  return out;
}

// Does any piece of q point into [data, data + size)?
bool references(const broker::OutputQueue& q, std::span<const std::uint8_t> bytes) {
  for (const auto& p : q.pieces())
    if (p.data && p.data <= bytes.data() && bytes.data() + bytes.size() <= p.data + p.size) return true;
  return false;
}

// Topic and payload sizes around the remaining-length boundaries (127/128 and
// 16383/16384), where the 2 bytes of a packet identifier change the header length.
// Whether q holds `bytes` as a copy (in its own buffer) rather than a reference.
bool copies(const broker::OutputQueue& q, std::span<const std::uint8_t> bytes) {
  const auto& own = q.buffer();
  return !references(q, bytes) &&
         std::search(own.begin(), own.end(), bytes.begin(), bytes.end()) != own.end();
}

TEST(OutputQueue, EveryPublishVariantIsTheCodecsPacketAndSharesTheMessageBytes) {
  const std::size_t payload_sizes[] = {0,   1,    64,    121,   122,   123,   124,   125,   126,  127,
                                       128, 1000, 16373, 16374, 16375, 16376, 16377, 16378, 70000};
  for (const std::size_t size : payload_sizes) {
    std::string payload(size, '\0');
    for (std::size_t i = 0; i < size; ++i) payload[i] = static_cast<char>('a' + i % 26);
    const auto m = broker::make_message("a/b", payload, QoS::ExactlyOnce, false);
    ASSERT_EQ(m->topic, "a/b");
    ASSERT_EQ(m->payload, payload);
    for (const QoS qos : {QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce}) {
      for (const bool dup : {false, true}) {
        for (const bool retain : {false, true}) {
          if (qos == QoS::AtMostOnce && dup) continue;
          broker::OutputQueue q;
          q.append_publish(m, qos, dup, retain, 0x1234);
          SCOPED_TRACE(testing::Message() << "payload " << size << " qos " << int(qos) << " dup " << dup
                                          << " retain " << retain);
          EXPECT_EQ(concatenate(q), expected(*m, qos, dup, retain, 0x1234));
          // Referenced above the copy limit, copied at or below it. The plain
          // QoS 0 packet is one span: the whole of it decides.
          const bool plain0 = qos == QoS::AtMostOnce && !retain;
          const std::size_t span = plain0 ? m->publish_qos0().size() : qos == QoS::AtMostOnce ? m->body().size() : size;
          if (size > 0) {
            if (span > broker::OutputQueue::kCopyUpTo)
              EXPECT_TRUE(references(q, m->payload_bytes()));
            else
              EXPECT_TRUE(copies(q, m->payload_bytes()));
          }
          if (qos != QoS::AtMostOnce) {
            EXPECT_TRUE(copies(q, m->topic_field()));
          }
        }
      }
    }
  }
}

TEST(OutputQueue, PlainQos0IsOnePieceOfTheMessage) {
  const auto m = broker::make_message("t", std::string(1000, 'p'), QoS::AtMostOnce, false);
  broker::OutputQueue q;
  q.append_publish(m, QoS::AtMostOnce, false, false, 0);
  ASSERT_EQ(q.pieces().size(), 1u);
  EXPECT_EQ(q.pieces()[0].data, m->publish_qos0().data());
}

// Small messages, and the acknowledgements between them, are one contiguous
// piece: one entry in the gather list however many there are.
TEST(OutputQueue, SmallMessagesMakeOneRun) {
  broker::OutputQueue q;
  codec::Bytes want;
  std::weak_ptr<const broker::Message> weak;
  for (std::uint16_t i = 1; i <= 20; ++i) {
    auto m = broker::make_message("bench/" + std::to_string(i), std::string(64, 'x'), QoS::AtLeastOnce, false);
    weak = m;
    q.append_publish(m, i % 2 ? QoS::AtLeastOnce : QoS::AtMostOnce, false, false, i);
    const auto e = expected(*m, i % 2 ? QoS::AtLeastOnce : QoS::AtMostOnce, false, false, i);
    want.insert(want.end(), e.begin(), e.end());
    q.append(codec::Ack{codec::PacketType::Puback, i});
    codec::encode(codec::Ack{codec::PacketType::Puback, i}, want);
  }
  EXPECT_EQ(q.pieces().size(), 1u);
  EXPECT_EQ(concatenate(q), want);
  EXPECT_TRUE(weak.expired());  // nothing referenced, nothing kept
}

// Control packets and per-subscriber bytes are copied, in order with the
// referenced pieces, and several messages interleave correctly.
TEST(OutputQueue, MixedPacketsKeepTheirOrder) {
  const auto a = broker::make_message("x/1", "first", QoS::AtLeastOnce, false);
  const auto b = broker::make_message("x/2", std::string(3000, 'z'), QoS::AtLeastOnce, true);
  broker::OutputQueue q;
  codec::Bytes want;
  q.append(codec::Ack{codec::PacketType::Puback, 7});
  codec::encode(codec::Ack{codec::PacketType::Puback, 7}, want);
  q.append_publish(a, QoS::AtLeastOnce, false, false, 1);
  const auto ea = expected(*a, QoS::AtLeastOnce, false, false, 1);
  want.insert(want.end(), ea.begin(), ea.end());
  q.append_publish(b, QoS::AtMostOnce, false, true, 0);
  const auto eb = expected(*b, QoS::AtMostOnce, false, true, 0);
  want.insert(want.end(), eb.begin(), eb.end());
  q.append(codec::Pingresp{});
  codec::encode(codec::Pingresp{}, want);
  EXPECT_EQ(concatenate(q), want);

  broker::OutputQueue other;
  other.swap(q);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(concatenate(other), want);
  other.clear();
  EXPECT_TRUE(other.empty());
  EXPECT_EQ(other.size(), 0u);
}

// The queue keeps the messages it references alive.
TEST(OutputQueue, KeepsReferencedMessagesAlive) {
  broker::OutputQueue q;
  std::weak_ptr<const broker::Message> weak;
  {
    auto m = broker::make_message("k", std::string(2000, 'k'), QoS::AtMostOnce, false);
    weak = m;
    q.append_publish(m, QoS::AtMostOnce, false, false, 0);
  }
  EXPECT_FALSE(weak.expired());
  EXPECT_EQ(concatenate(q), expected(*weak.lock(), QoS::AtMostOnce, false, false, 0));
  q.clear();
  EXPECT_TRUE(weak.expired());
}

}  // namespace
}  // namespace moat::test
