// libFuzzer target for the whole broker state machine: four connections on two
// shards, fed arbitrary bytes, disconnects and clock jumps. Sanitizers catch
// memory and UB errors; the checks below catch broken invariants.
//
// Input: a sequence of operations. Each starts with one byte:
//   0b00cc_cccc  feed: connection (c % 4) gets the next (byte 2) bytes
//   0b01xx_xxxx  the peer of connection (x % 4) drops; a fresh one replaces it
//   0b1xxx_xxxx  the clock advances by (x * 250) ms and every shard ticks
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <vector>

#include "broker/shard.hpp"
#include "store/memory_store.hpp"

namespace {

using namespace moat;

struct Bus final : broker::ShardBus {
  std::vector<broker::Shard*> shards;
  std::vector<std::pair<std::uint32_t, std::vector<broker::ShardEvent>>> batches;
  std::vector<std::uint32_t> flushes;
  void send(std::uint32_t to, std::vector<broker::ShardEvent>&& b) override {
    batches.emplace_back(to, std::move(b));
  }
  void request_flush(std::uint32_t from) override { flushes.push_back(from); }
  void settle() {
    while (!flushes.empty() || !batches.empty()) {
      auto f = std::move(flushes);
      flushes.clear();
      for (auto i : f) shards[i]->end_turn();
      auto b = std::move(batches);
      batches.clear();
      for (auto& [to, batch] : b) shards[to]->apply(batch);
    }
  }
};

struct Conn final : broker::Transport {
  Conn(broker::Shard& s, const broker::ListenerPolicy& p)
      : client(std::make_unique<broker::Client>(s, *this, p)) {}
  broker::OutputQueue& output() override { return out; }
  void flush_soon() override {}
  void close() override { closed = true; }
  void migrate(std::uint32_t shard) override { migrated = shard; }
  const std::string& peer() const override { return name; }
  void feed(const std::uint8_t* d, std::size_t n) {
    if (closed || migrated) return;
    input.insert(input.end(), d, d + n);
    const auto used = client->on_bytes({input.data(), input.size()});
    if (used > input.size()) std::abort();
    input.erase(input.begin(), input.begin() + static_cast<std::ptrdiff_t>(used));
    if (out.size() > 64 * 1024 * 1024) std::abort();  // output must stay bounded by the input
    out.clear();
  }
  std::string name = "fuzz:1";
  broker::OutputQueue out;
  std::vector<std::uint8_t> input;
  bool closed = false;
  std::optional<std::uint32_t> migrated;
  std::unique_ptr<broker::Client> client;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  store::MemoryStore store;
  broker::BrokerShared shared;
  shared.shard_count = 2;
  shared.store = &store;
  shared.limits.max_packet_size = 4096;
  shared.limits.max_inflight_messages = 3;
  shared.limits.max_queued_messages = 8;
  // Small limits of docs/limits.md, so inputs reach every refusal path.
  shared.limits.max_client_id_length = 23;
  shared.limits.max_topic_length = 64;
  shared.limits.max_topic_levels = 4;
  shared.limits.max_subscriptions_per_client = 4;
  shared.limits.max_retained_messages = 4;
  shared.limits.max_retained_bytes = 256;
  shared.limits.payload.push_back({"a/#", 8});
  security::FlappingConfig flapping;
  flapping.max = 4;
  flapping.delay = std::chrono::milliseconds(10);
  flapping.ban_time = std::chrono::seconds(2);
  shared.flapping = std::make_shared<security::FlapDetector>(flapping);
  shared.sys_interval = std::chrono::seconds(1);
  shared.version = "fuzz";
  broker::ListenerPolicy policy;
  policy.name = "fuzz";
  policy.auth.add(security::make_authenticator("anonymous"));
  Bus bus;
  broker::Shard a(0, shared, bus), b(1, shared, bus);
  bus.shards = {&a, &b};
  shared.all_stats = {&a.stats(), &b.stats()};
  auto now = broker::TimePoint{} + std::chrono::hours(1);
  a.set_now(now);
  b.set_now(now);
  std::vector<std::unique_ptr<Conn>> conns;
  for (int i = 0; i < 4; ++i) conns.push_back(std::make_unique<Conn>(i % 2 ? b : a, policy));

  std::size_t i = 0;
  while (i < size) {
    const std::uint8_t op = data[i++];
    if (op & 0x80) {
      now += std::chrono::milliseconds(250 * (op & 0x7F));
      a.tick(now);
      b.tick(now);
    } else if (op & 0x40) {
      auto& c = conns[op % 4];
      if (!c->closed && !c->migrated) c->client->on_disconnected();
      auto& shard = (op % 2) ? b : a;
      c = std::make_unique<Conn>(shard, policy);
    } else {
      if (i >= size) break;
      const std::size_t want = data[i++];
      const std::size_t n = std::min<std::size_t>(want, size - i);
      auto& c = conns[op % 4];
      c->feed(data + i, n);
      if (c->migrated) {
        // As net does: the connection and its unread bytes move to the owning shard.
        if (*c->migrated > 1) std::abort();
        auto moved = std::make_unique<Conn>(*bus.shards[*c->migrated], policy);
        auto rest = std::move(c->input);
        c = std::move(moved);
        c->feed(rest.data(), rest.size());
        if (c->migrated) std::abort();  // the owner never sends it on again
      }
      i += n;
    }
    bus.settle();
  }
  conns.clear();
  bus.settle();
  return 0;
}
