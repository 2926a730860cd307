// A socket-free harness for the broker: fake transports record what the broker
// writes, a fake bus moves events between shards when the test says so, and the
// clock is set by the test.
#pragma once

#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "broker/shard.hpp"
#include "codec/decoder.hpp"
#include "codec/encoder.hpp"
#include "store/memory_store.hpp"

namespace moat::test {

// Owned copy of a decoded packet (the decoder's views point into a buffer).
struct Received {
  codec::PacketType type;
  codec::Connack connack;
  bool dup = false;
  codec::QoS qos = codec::QoS::AtMostOnce;
  bool retain = false;
  std::string topic;
  std::string payload;
  std::uint16_t packet_id = 0;
  std::vector<std::uint8_t> return_codes;
};

class FakeBus final : public broker::ShardBus {
 public:
  std::vector<broker::Shard*> shards;
  std::vector<std::pair<std::uint32_t, std::vector<broker::ShardEvent>>> in_flight;
  std::vector<std::uint32_t> flush_requests;
  void send(std::uint32_t to, std::vector<broker::ShardEvent>&& batch) override {
    in_flight.emplace_back(to, std::move(batch));
  }
  void request_flush(std::uint32_t from) override { flush_requests.push_back(from); }
  // Runs requested flushes and delivers batches until nothing moves.
  void settle() {
    while (!flush_requests.empty() || !in_flight.empty()) {
      auto fr = std::move(flush_requests);
      flush_requests.clear();
      for (auto i : fr) shards[i]->end_turn();
      auto batches = std::move(in_flight);
      in_flight.clear();
      for (auto& [to, b] : batches) shards[to]->apply(b);
    }
  }
};

class FakeConnection final : public broker::Transport {
 public:
  FakeConnection(broker::Shard& shard, const broker::ListenerPolicy& policy, std::string peer)
      : peer_(std::move(peer)), client_(std::make_unique<broker::Client>(shard, *this, policy)) {}

  broker::OutputQueue& output() override { return out_; }
  void flush_soon() override {}
  void close() override { closed = true; }
  void migrate(std::uint32_t shard) override { migrated_to = shard; }
  const std::string& peer() const override { return peer_; }
  void hold_until_stored() override { ++holds; }
  // A refusal held back by the brute-force defence: kept until release().
  void run_after(std::chrono::milliseconds delay, std::function<void()> then) override {
    held.emplace_back(delay, std::move(then));
  }
  void release() {
    auto h = std::move(held);
    held.clear();
    for (auto& [d, f] : h) f();
  }

  // Feeds bytes; keeps what the client did not consume.
  void feed(const codec::Bytes& bytes) {
    input.insert(input.end(), bytes.begin(), bytes.end());
    feeding_ = true;
    const auto used = client_->on_bytes({input.data(), input.size()});
    feeding_ = false;
    input.erase(input.begin(), input.begin() + static_cast<std::ptrdiff_t>(used));
  }
  // Input held during authentication is handled once it has answered.
  void resume_input() override {
    if (!feeding_) feed({});
  }
  void send(const codec::Packet& p) {
    codec::Bytes b;
    codec::encode(p, b);
    feed(b);
  }
  void drop() { client_->on_disconnected(); }

  // Decodes everything written so far.
  std::vector<Received> take() {
    codec::Bytes bytes;
    for (const auto& piece : out_.pieces()) {
      const std::uint8_t* d = out_.piece_data(piece);
      bytes.insert(bytes.end(), d, d + piece.size);
    }
    out_.clear();
    std::vector<Received> res = std::move(stash);
    stash.clear();
    codec::DecoderOptions opts;
    opts.server = false;
    std::size_t off = 0;
    while (off < bytes.size()) {
      auto r = codec::decode({bytes.data() + off, bytes.size() - off}, opts);
      EXPECT_EQ(r.status, codec::DecodeStatus::Ok);
      if (r.status != codec::DecodeStatus::Ok) break;
      Received x;
      x.type = codec::type_of(r.packet);
      if (auto* c = std::get_if<codec::Connack>(&r.packet)) x.connack = *c;
      if (auto* p = std::get_if<codec::Publish>(&r.packet)) {
        x.dup = p->dup;
        x.qos = p->qos;
        x.retain = p->retain;
        x.topic = std::string(p->topic);
        x.payload = std::string(p->payload);
        x.packet_id = p->packet_id;
      }
      if (auto* a = std::get_if<codec::Ack>(&r.packet)) x.packet_id = a->packet_id;
      if (auto* s = std::get_if<codec::Suback>(&r.packet)) {
        x.packet_id = s->packet_id;
        x.return_codes = s->return_codes;
      }
      if (auto* u = std::get_if<codec::Unsuback>(&r.packet)) x.packet_id = u->packet_id;
      res.push_back(std::move(x));
      off += r.consumed;
    }
    return res;
  }

  bool closed = false;
  int holds = 0;  // hold_until_stored() calls: output that waits for the turn's commit
  std::optional<std::uint32_t> migrated_to;
  std::vector<std::pair<std::chrono::milliseconds, std::function<void()>>> held;
  std::vector<Received> stash;  // packets taken by connect() after the CONNACK
  codec::Bytes input;

 private:
  std::string peer_;
  bool feeding_ = false;
  broker::OutputQueue out_;
  std::unique_ptr<broker::Client> client_;
};

// N shards with a fake bus and one anonymous listener.
class BrokerFixture : public ::testing::Test {
 protected:
  void make(std::uint32_t shards = 1) {
    shared.shard_count = shards;
    shared.store = &store;
    shared.sys_interval = std::chrono::seconds(0);  // tests that want $SYS turn it on
    policy.name = "test";
    policy.auth.add(security::make_authenticator("anonymous"));
    for (std::uint32_t i = 0; i < shards; ++i) {
      shard_list.push_back(std::make_unique<broker::Shard>(i, shared, bus));
      bus.shards.push_back(shard_list.back().get());
      shared.all_stats.push_back(&shard_list.back()->stats());
      shard_list.back()->set_now(now);
    }
  }
  void advance(std::chrono::milliseconds d) {
    now += d;
    for (auto& s : shard_list) s->tick(now);
    bus.settle();
  }
  // A connection on the shard that owns `client_id`, CONNECTed and CONNACKed.
  FakeConnection& connect(const std::string& client_id, bool clean = true, std::uint16_t keep_alive = 0,
                          std::optional<codec::Will> will = std::nullopt, bool* present = nullptr) {
    const auto owner = broker::shard_of(client_id, shared.shard_count);
    conns.push_back(std::make_unique<FakeConnection>(*shard_list[owner], policy,
                                                     "127.0.0.1:" + std::to_string(10000 + conns.size())));
    auto& c = *conns.back();
    codec::Connect p;
    p.client_id = client_id;
    p.clean_session = clean;
    p.keep_alive = keep_alive;
    p.will = will;
    c.send(p);
    bus.settle();
    auto got = c.take();
    EXPECT_GE(got.size(), 1u);
    if (!got.empty()) {
      c.stash.assign(got.begin() + 1, got.end());
      EXPECT_EQ(got[0].type, codec::PacketType::Connack);
      EXPECT_EQ(got[0].connack.code, codec::ConnectReturnCode::Accepted);
      if (present) *present = got[0].connack.session_present;
    }
    return c;
  }
  FakeConnection& raw(std::uint32_t shard = 0) {
    conns.push_back(std::make_unique<FakeConnection>(*shard_list[shard], policy, "127.0.0.1:9"));
    return *conns.back();
  }
  void subscribe(FakeConnection& c, const std::string& filter, codec::QoS qos, std::uint16_t id = 1) {
    codec::Subscribe s;
    s.packet_id = id;
    s.subscriptions.push_back({filter, qos});
    c.send(s);
    bus.settle();
  }
  void publish(FakeConnection& c, const std::string& topic, const std::string& payload, codec::QoS qos,
               std::uint16_t id = 0, bool retain = false, bool dup = false) {
    codec::Publish p;
    p.topic = topic;
    p.payload = payload;
    p.qos = qos;
    p.packet_id = id;
    p.retain = retain;
    p.dup = dup;
    c.send(p);
    bus.settle();
  }

  broker::TimePoint now{std::chrono::seconds(1000)};
  store::MemoryStore store;
  broker::BrokerShared shared;
  FakeBus bus;
  broker::ListenerPolicy policy;
  std::vector<std::unique_ptr<broker::Shard>> shard_list;
  std::vector<std::unique_ptr<FakeConnection>> conns;
};

}  // namespace moat::test
