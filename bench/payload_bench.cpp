// Payload envelopes: seal and open per second for each algorithm at 64 B, 1 KiB and
// 64 KiB, and bare OpenSSL Ed25519 verification of a message of the same size next
// to Moat's Sign1 open (the goal: open costs at most 10 % more than the bare
// verification). docs/benchmarks.md, "Payload envelopes", shows a run and how to
// repeat it:
//
//   build/bench/payload_bench --benchmark_repetitions=5
//       --benchmark_enable_random_interleaving=true --table   (one command line)
//
// "open" is decode + verify/decrypt (cose.hpp: decode, open_with). The replay
// window's cost is measured separately (replay/accept), because one envelope can
// be opened only once through a window.
#include <benchmark/benchmark.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <string>
#include <vector>

#include "security/payload/cose.hpp"
#include "security/payload/crypto.hpp"
#include "security/payload/keyring.hpp"
#include "security/payload/replay.hpp"

namespace {

namespace payload = moat::payload;
namespace crypto = moat::payload::crypto;

constexpr std::string_view kTopic = "plant/7/cmd";
constexpr std::int64_t kSizes[] = {64, 1024, 65536};

struct Algorithm {
  const char* name;
  payload::KeyKind kind;
  payload::Mode mode;
  bool p256_ecdh;
  std::int64_t content_alg;
};

const Algorithm kAlgorithms[] = {
    {"A256GCM", payload::KeyKind::Aes256, payload::Mode::Encrypt, false, payload::alg::A256GCM},
    {"ChaCha20/Poly1305", payload::KeyKind::ChaCha20, payload::Mode::Encrypt, false, payload::alg::A256GCM},
    {"ECDH-ES X25519 + A256GCM", payload::KeyKind::X25519, payload::Mode::EncryptTo, false,
     payload::alg::A256GCM},
    {"ECDH-ES P-256 + A256GCM", payload::KeyKind::P256, payload::Mode::EncryptTo, true,
     payload::alg::A256GCM},
    {"HMAC 256/256", payload::KeyKind::Hmac256, payload::Mode::Mac, false, payload::alg::A256GCM},
    {"EdDSA (Ed25519)", payload::KeyKind::Ed25519, payload::Mode::Sign, false, payload::alg::A256GCM},
    {"ES256 (P-256)", payload::KeyKind::P256, payload::Mode::Sign, false, payload::alg::A256GCM},
    {"SHA-256 digest", payload::KeyKind::Hmac256, payload::Mode::Digest, false, payload::alg::A256GCM},
};

payload::SealOptions options(const Algorithm& a, std::uint64_t seq) {
  payload::SealOptions o;
  o.seq = seq;
  o.iat = 1'760'000'000;
  o.content_alg = a.content_alg;
  return o;
}

void seal(benchmark::State& state, const Algorithm& a) {
  const payload::Key key = payload::Key::generate(a.kind, "bench", a.p256_ecdh);
  const payload::Key* k = a.mode == payload::Mode::Digest ? nullptr : &key;
  const std::string plaintext = crypto::random_bytes(static_cast<std::size_t>(state.range(0)));
  std::uint64_t seq = 1;
  for (auto _ : state) {
    auto env = payload::seal(a.mode, k, kTopic, plaintext, options(a, seq++));
    if (!env) state.SkipWithError(env.error().message().c_str());
    benchmark::DoNotOptimize(env);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void open(benchmark::State& state, const Algorithm& a) {
  const payload::Key key = payload::Key::generate(a.kind, "bench", a.p256_ecdh);
  const payload::Key verifier = a.mode == payload::Mode::Sign ? key.public_only() : key;
  const std::string plaintext = crypto::random_bytes(static_cast<std::size_t>(state.range(0)));
  auto env = payload::seal(a.mode, a.mode == payload::Mode::Digest ? nullptr : &key, kTopic, plaintext,
                           options(a, 1));
  if (!env) {
    state.SkipWithError(env.error().message().c_str());
    return;
  }
  const payload::Key* k = a.mode == payload::Mode::Digest ? nullptr : &verifier;
  for (auto _ : state) {
    auto d = payload::decode(*env);
    auto opened = payload::open_with(*d, k, kTopic);
    if (!opened) state.SkipWithError(opened.error().message().c_str());
    benchmark::DoNotOptimize(opened);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

// The baseline: one EVP_DigestVerifyInit + EVP_DigestVerify on a message of the
// payload's size, as an application calling OpenSSL directly would.
void bare_ed25519_verify(benchmark::State& state) {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  const std::string msg = crypto::random_bytes(static_cast<std::size_t>(state.range(0)));
  unsigned char sig[64];
  std::size_t sig_len = sizeof sig;
  EVP_MD_CTX* sctx = EVP_MD_CTX_new();
  EVP_DigestSignInit_ex(sctx, nullptr, nullptr, nullptr, nullptr, key, nullptr);
  EVP_DigestSign(sctx, sig, &sig_len, reinterpret_cast<const unsigned char*>(msg.data()), msg.size());
  EVP_MD_CTX_free(sctx);
  for (auto _ : state) {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    const bool ok = EVP_DigestVerifyInit_ex(ctx, nullptr, nullptr, nullptr, nullptr, key, nullptr) == 1 &&
                    EVP_DigestVerify(ctx, sig, sig_len, reinterpret_cast<const unsigned char*>(msg.data()),
                                     msg.size()) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok) state.SkipWithError("verification failed");
  }
  EVP_PKEY_free(key);
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

// One accepted sequence number per iteration, in a window of 1024.
void replay_accept(benchmark::State& state) {
  payload::ReplayGuard guard;
  std::uint64_t seq = 1;
  for (auto _ : state) {
    auto r = guard.accept("bench", seq++);
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations());
}

// The goal "open costs at most 10 % more than the bare verification" measured in
// pairs, so that a shared, loaded machine slows both sides alike: each round times
// a batch of bare verifications, then a batch of Moat opens of a message of the
// same size (thread CPU time), and the median of the rounds' ratios is reported.
struct PairedRatio {
  double median = 0, low = 0, high = 0;
};

double thread_cpu_ns() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

PairedRatio paired_ed25519_ratio(std::size_t size, int rounds, int batch) {
  const payload::Key key = payload::Key::generate(payload::KeyKind::Ed25519, "bench");
  const payload::Key verifier = key.public_only();
  const std::string plaintext = crypto::random_bytes(size);
  payload::SealOptions o;
  o.seq = 1;
  o.iat = 1'760'000'000;
  const std::string env = *payload::seal(payload::Mode::Sign, &key, kTopic, plaintext, o);
  // The bare side signs and verifies the same plaintext with the same key.
  std::string sig;
  crypto::ed25519_sign(key.pkey(), plaintext, sig);
  EVP_PKEY* pub = verifier.public_pkey();
  std::vector<double> ratios;
  for (int r = 0; r < rounds; ++r) {
    double t0 = thread_cpu_ns();
    for (int i = 0; i < batch; ++i) {
      EVP_MD_CTX* ctx = EVP_MD_CTX_new();
      const bool ok =
          EVP_DigestVerifyInit_ex(ctx, nullptr, nullptr, nullptr, nullptr, pub, nullptr) == 1 &&
          EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                           reinterpret_cast<const unsigned char*>(plaintext.data()), plaintext.size()) == 1;
      EVP_MD_CTX_free(ctx);
      if (!ok) std::abort();
    }
    const double bare = thread_cpu_ns() - t0;
    t0 = thread_cpu_ns();
    for (int i = 0; i < batch; ++i) {
      auto d = payload::decode(env);
      auto opened = payload::open_with(*d, &verifier, kTopic);
      if (!opened) std::abort();
      benchmark::DoNotOptimize(opened);
    }
    const double moat = thread_cpu_ns() - t0;
    ratios.push_back(moat / bare);
  }
  std::sort(ratios.begin(), ratios.end());
  return {ratios[ratios.size() / 2], ratios.front(), ratios.back()};
}

// Collects the runs for --table: a Markdown table of medians (or means, without
// repetitions) in operations per second.
class TableReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.error_occurred) continue;
      const bool aggregate = r.run_type == Run::RT_Aggregate;
      if (aggregate && r.aggregate_name != "median") continue;
      if (!aggregate && r.repetitions > 1) continue;
      const auto it = r.counters.find("items_per_second");
      if (it != r.counters.end()) per_second_[r.run_name.str()] = it->second.value;
    }
  }
  double get(const std::string& name) const {
    const auto it = per_second_.find(name);
    return it == per_second_.end() ? 0 : it->second;
  }

 private:
  std::map<std::string, double> per_second_;
};

std::string fmt_rate(double v) {
  char buf[32];
  if (v >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2f M", v / 1e6);
  else if (v >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1f k", v / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

std::string name_of(const char* op, const char* alg, std::int64_t size) {
  return std::string(op) + "/" + alg + "/" + std::to_string(size);
}

void print_table(const TableReporter& t) {
  std::printf(
      "\n| algorithm | seal/s 64 B | open/s 64 B | seal/s 1 KiB | open/s 1 KiB | seal/s 64 KiB | open/s 64 "
      "KiB |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  for (const Algorithm& a : kAlgorithms) {
    std::printf("| %s |", a.name);
    for (std::int64_t size : kSizes)
      std::printf(" %s | %s |", fmt_rate(t.get(name_of("seal", a.name, size))).c_str(),
                  fmt_rate(t.get(name_of("open", a.name, size))).c_str());
    std::printf("\n");
  }
  std::printf(
      "\n| payload | bare OpenSSL Ed25519 verify/s | Moat Sign1 (EdDSA) open/s | cost ratio (rates above) "
      "| cost ratio, paired rounds: median (min-max) |\n");
  std::printf("|---|---:|---:|---:|---:|\n");
  for (std::int64_t size : kSizes) {
    const double bare = t.get("bare-ed25519-verify/" + std::to_string(size));
    const double moat = t.get(name_of("open", "EdDSA (Ed25519)", size));
    const PairedRatio p = paired_ed25519_ratio(static_cast<std::size_t>(size), 41, size > 4096 ? 20 : 100);
    std::printf("| %lld B | %s | %s | %.3f | %.3f (%.3f-%.3f) |\n", static_cast<long long>(size),
                fmt_rate(bare).c_str(), fmt_rate(moat).c_str(), moat > 0 ? bare / moat : 0.0, p.median, p.low,
                p.high);
  }
  std::printf("\nreplay window accept: %s/s\n", fmt_rate(t.get("replay/accept")).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  bool table = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--table") == 0)
      table = true;
    else
      args.push_back(argv[i]);
  }
  int n = static_cast<int>(args.size());
  for (const Algorithm& a : kAlgorithms) {
    for (std::int64_t size : kSizes) {
      // The size becomes the last part of the name: "seal/A256GCM/64".
      benchmark::RegisterBenchmark((std::string("seal/") + a.name).c_str(), [&a](benchmark::State& s) {
        seal(s, a);
      })->Arg(size);
      benchmark::RegisterBenchmark((std::string("open/") + a.name).c_str(), [&a](benchmark::State& s) {
        open(s, a);
      })->Arg(size);
    }
  }
  for (std::int64_t size : kSizes)
    benchmark::RegisterBenchmark("bare-ed25519-verify", bare_ed25519_verify)->Arg(size);
  benchmark::RegisterBenchmark("replay/accept", replay_accept);
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  TableReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  if (table) print_table(reporter);
  benchmark::Shutdown();
  return 0;
}
