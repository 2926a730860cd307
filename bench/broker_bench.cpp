// Micro-benchmarks of the broker's hot paths (docs/benchmarks.md, "Hot paths"):
// packet decode/encode, subscription matching against 10k to 1M subscriptions
// (exact, '+' and '#' filters), ACL evaluation with 1,000 rules, and the
// retained lookup of a wildcard subscription among 10k to 1M retained topics.
//
//   build/bench/broker_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "broker/message.hpp"
#include "broker/retained.hpp"
#include "broker/subscription_index.hpp"
#include "codec/decoder.hpp"
#include "codec/encoder.hpp"
#include "codec/topic.hpp"
#include "security/acl.hpp"

namespace {

using namespace moat;

codec::Bytes encoded_publish(std::size_t payload_size, codec::QoS qos) {
  codec::Publish p;
  p.qos = qos;
  p.topic = "site/17/dev/4711/temperature";
  p.packet_id = qos == codec::QoS::AtMostOnce ? 0 : 42;
  const std::string payload(payload_size, 'x');
  p.payload = payload;
  codec::Bytes out;
  codec::encode(codec::Packet{p}, out);
  return out;
}

// ---------------------------------------------------------------- codec

void BM_DecodePublish(benchmark::State& state) {
  const auto bytes = encoded_publish(static_cast<std::size_t>(state.range(0)), codec::QoS::AtLeastOnce);
  const codec::DecoderOptions opts;
  for (auto _ : state) {
    auto r = codec::decode(std::span<const std::uint8_t>(bytes), opts);
    benchmark::DoNotOptimize(r);
    if (r.status != codec::DecodeStatus::Ok) state.SkipWithError("decode failed");
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes.size()));
}
BENCHMARK(BM_DecodePublish)->Arg(64)->Arg(1024);

// The per-message part of a delivery: the prefix (fixed header and topic),
// encoded once per (QoS, DUP, RETAIN) and shared by the subscribers.
void BM_EncodePublishPrefix(benchmark::State& state) {
  codec::Bytes out;
  out.reserve(128);
  for (auto _ : state) {
    out.clear();
    codec::encode_publish_prefix(codec::QoS::AtLeastOnce, false, false, "site/17/dev/4711/temperature", 64,
                                 out);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_EncodePublishPrefix);

void BM_ValidTopicName(benchmark::State& state) {
  const std::string topic = "site/17/dev/4711/temperature/celsius/average";
  for (auto _ : state) benchmark::DoNotOptimize(codec::valid_topic_name(topic));
}
BENCHMARK(BM_ValidTopicName);

// ---------------------------------------------------------------- subscription matching

enum class Shape : int { Exact = 0, Plus = 1, Hash = 2 };

// N subscriptions of one shape, each on its own session; the topic matched
// hits exactly one of them (plus, for Hash, nothing else).
//   Exact: site/S/dev/I/temp          topic site/S/dev/I/temp
//   Plus:  site/+/dev/I/temp          topic site/3/dev/I/temp
//   Hash:  site/S/dev/I/#             topic site/S/dev/I/temp/avg
struct IndexFixture {
  broker::SubscriptionIndex index;
  std::vector<std::string> topics;  // one per subscription, cycled through
};

std::string filter_of(Shape shape, std::size_t i) {
  const std::string site = std::to_string(i % 1000), dev = std::to_string(i);
  switch (shape) {
    case Shape::Exact:
      return "site/" + site + "/dev/" + dev + "/temp";
    case Shape::Plus:
      return "site/+/dev/" + dev + "/temp";
    case Shape::Hash:
      return "site/" + site + "/dev/" + dev + "/#";
  }
  return {};
}

std::string topic_of(Shape shape, std::size_t i) {
  const std::string site = std::to_string(i % 1000), dev = std::to_string(i);
  switch (shape) {
    case Shape::Exact:
      return "site/" + site + "/dev/" + dev + "/temp";
    case Shape::Plus:
      return "site/3/dev/" + dev + "/temp";
    case Shape::Hash:
      return "site/" + site + "/dev/" + dev + "/temp/avg";
  }
  return {};
}

IndexFixture& index_fixture(Shape shape, std::size_t n) {
  // Built once per (shape, n): a million subscriptions take seconds to add.
  static std::vector<std::pair<std::pair<int, std::size_t>, std::unique_ptr<IndexFixture>>> built;
  for (auto& [key, f] : built)
    if (key.first == static_cast<int>(shape) && key.second == n) return *f;
  auto f = std::make_unique<IndexFixture>();
  for (std::size_t i = 0; i < n; ++i) {
    broker::Subscriber s;
    s.session_id = i + 1;
    s.qos = codec::QoS::AtLeastOnce;
    f->index.add(filter_of(shape, i), s);
  }
  std::mt19937_64 rng(7);
  for (int k = 0; k < 4096; ++k) f->topics.push_back(topic_of(shape, rng() % n));
  built.emplace_back(std::make_pair(static_cast<int>(shape), n), std::move(f));
  return *built.back().second;
}

void BM_Match(benchmark::State& state) {
  const auto shape = static_cast<Shape>(state.range(0));
  auto& f = index_fixture(shape, static_cast<std::size_t>(state.range(1)));
  std::vector<broker::Subscriber> out;
  std::size_t k = 0;
  for (auto _ : state) {
    out.clear();
    f.index.match(f.topics[k++ & 4095], out);
    if (out.size() != 1) {
      state.SkipWithError("expected one match");
      break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(shape == Shape::Exact ? "exact" : shape == Shape::Plus ? "+" : "#");
}
BENCHMARK(BM_Match)
    ->ArgNames({"shape", "subs"})
    ->ArgsProduct({{0, 1, 2}, {10'000, 100'000, 1'000'000}})
    ->Unit(benchmark::kNanosecond);

// ---------------------------------------------------------------- ACL

// 1,000 [[acl.rule]]s with %u patterns, the shape an operator writes per
// tenant: "tenant-I users publish under tenant/I/%u/#". The client matches the
// last rule, so every check visits all of them (the worst case).
std::shared_ptr<const security::OrderedRules> thousand_rules() {
  std::vector<security::OrderedRule> rules;
  for (int i = 0; i < 1000; ++i) {
    security::OrderedRule r;
    r.actions = static_cast<std::uint8_t>(security::Action::Publish) |
                static_cast<std::uint8_t>(security::Action::Receive);
    r.topic = "tenant/" + std::to_string(i) + "/%u/#";
    r.user = "tenant" + std::to_string(i) + "-*";
    r.allow = true;
    rules.push_back(std::move(r));
  }
  return security::OrderedRules::make(std::move(rules));
}

void BM_AclOrderedRules1000(benchmark::State& state) {
  const security::AccessPolicy policy(thousand_rules(), nullptr);
  const security::Identity who{"tenant999-dev42", "dev42"};
  for (auto _ : state) {
    auto d = policy.check(who, security::Action::Publish, "tenant/999/tenant999-dev42/temp");
    if (d != security::Decision::Allow) state.SkipWithError("expected allow");
    benchmark::DoNotOptimize(d);
  }
}
BENCHMARK(BM_AclOrderedRules1000);

// The same check as the broker makes it when a session's decision memo
// misses: on the rules resolved once for the session's identity.
void BM_AclOrderedRules1000Resolved(benchmark::State& state) {
  const security::AccessPolicy policy(thousand_rules(), nullptr);
  const security::Identity who{"tenant999-dev42", "dev42"};
  const auto resolved = policy.resolve(who);
  for (auto _ : state) {  // NOLINT(clang-analyzer-deadcode.DeadStores): the benchmark loop's variable
    auto d = policy.decide(who, security::Action::Publish, "tenant/999/tenant999-dev42/temp", &resolved);
    if (d != security::Decision::Allow) state.SkipWithError("expected allow");
    benchmark::DoNotOptimize(d);
  }
}
BENCHMARK(BM_AclOrderedRules1000Resolved);

// The same in Mosquitto's acl_file format: 1,000 `pattern` lines.
void BM_AclFilePatterns1000(benchmark::State& state) {
  std::string text;
  for (int i = 0; i < 1000; ++i) text += "pattern write tenant/" + std::to_string(i) + "/%u/#\n";
  const security::AccessPolicy policy(nullptr, security::Acl::parse_mosquitto(text, "bench"));
  const security::Identity who{"dev42", "dev42"};
  for (auto _ : state) {
    auto d = policy.check(who, security::Action::Publish, "tenant/999/dev42/temp");
    if (d != security::Decision::Allow) state.SkipWithError("expected allow");
    benchmark::DoNotOptimize(d);
  }
}
BENCHMARK(BM_AclFilePatterns1000);

// ---------------------------------------------------------------- retained lookup

// N retained topics site/S/dev/I (S = I mod 1000); a new subscription
// site/7/dev/+ collects the N/1000 of its site.
void BM_RetainedWildcard(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  static std::vector<std::pair<std::size_t, std::unique_ptr<broker::RetainedStore>>> built;
  broker::RetainedStore* store = nullptr;
  for (auto& [k, s] : built)
    if (k == n) store = s.get();
  if (!store) {
    auto s = std::make_unique<broker::RetainedStore>();
    for (std::size_t i = 0; i < n; ++i)
      s->update(broker::make_message("site/" + std::to_string(i % 1000) + "/dev/" + std::to_string(i), "21.5",
                                     codec::QoS::AtLeastOnce, true));
    store = s.get();
    built.emplace_back(n, std::move(s));
  }
  std::size_t found = 0;
  for (auto _ : state) {
    found = store->match("site/7/dev/+").messages.size();
    benchmark::DoNotOptimize(found);
  }
  if (found != n / 1000) state.SkipWithError("wrong number of retained matches");
  state.counters["matches"] = static_cast<double>(found);
}
BENCHMARK(BM_RetainedWildcard)
    ->ArgName("retained")
    ->Arg(10'000)
    ->Arg(100'000)
    ->Arg(1'000'000)
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
