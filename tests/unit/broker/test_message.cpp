// A message and its wire bytes are one block, recycled by the thread that frees
// it: every size keeps its bytes intact, blocks move between threads, and a
// recycled block never carries an old message's bytes into a new one.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "broker/message.hpp"
#include "codec/decoder.hpp"

namespace moat::test {
namespace {

using codec::QoS;

std::string payload_of(std::size_t size, char seed) {
  std::string p(size, '\0');
  for (std::size_t i = 0; i < size; ++i) p[i] = static_cast<char>(seed + i % 23);
  return p;
}

void expect_intact(const broker::Message& m, const std::string& topic, const std::string& payload) {
  EXPECT_EQ(m.topic, topic);
  EXPECT_EQ(m.payload, payload);
  // The wire bytes decode to the same PUBLISH.
  const auto wire = m.publish_qos0();
  codec::DecoderOptions opt;
  auto r = codec::decode(wire, opt);
  ASSERT_EQ(r.consumed, wire.size());
  const auto* p = std::get_if<codec::Publish>(&r.packet);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->topic, topic);
  EXPECT_EQ(p->payload, payload);
}

TEST(Message, EverySizeAcrossTheRecycledClassesStaysIntact) {
  for (int pass = 0; pass < 3; ++pass) {  // later passes reuse the blocks the earlier ones freed
    std::vector<broker::MessagePtr> held;
    std::vector<std::pair<std::string, std::string>> want;
    for (std::size_t size = 0; size <= 700; size += 7) {
      const std::string topic = "t/" + std::to_string(size);
      const std::string payload = payload_of(size, static_cast<char>('a' + pass));
      held.push_back(broker::make_message(topic, payload, QoS::AtLeastOnce, pass == 1));
      want.emplace_back(topic, payload);
    }
    for (std::size_t i = 0; i < held.size(); ++i) expect_intact(*held[i], want[i].first, want[i].second);
  }
}

TEST(Message, MadeOnOneThreadFreedOnAnother) {
  std::vector<broker::MessagePtr> made;
  made.reserve(2000);
  for (int i = 0; i < 2000; ++i)
    made.push_back(broker::make_message("x/" + std::to_string(i), payload_of(64 + i % 300, 'k'), QoS::AtMostOnce,
                                        false));
  std::thread other([&] {
    made.clear();  // the blocks go to this thread's pool, then back to the allocator when it ends
    for (int i = 0; i < 2000; ++i) {
      auto m = broker::make_message("y", payload_of(100, 'q'), QoS::AtMostOnce, false);
      ASSERT_EQ(m->payload, payload_of(100, 'q'));
    }
  });
  other.join();
  auto m = broker::make_message("z", payload_of(200, 'r'), QoS::AtMostOnce, false);
  expect_intact(*m, "z", payload_of(200, 'r'));
}

}  // namespace
}  // namespace moat::test
