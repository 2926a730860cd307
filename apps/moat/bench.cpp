// moat bench: an MQTT load generator on moat::client.
//
// Threads: one io_context per thread (--threads), many clients per thread; the
// main thread only orchestrates (phases, once-per-second report) and reads the
// workers' counters, which each have a single writer and are read with relaxed
// atomics, so the hot path takes no lock.
//
// Every payload starts with a 24-byte header: run id (u32), publisher id (u32),
// sequence number (u64) and the publish time (u64, CLOCK_MONOTONIC ns, comparable
// between processes of one machine), padded to --size. Subscribers check the
// sequence per publisher: losses, duplicates and reorderings.
//
// Includes Boost.Asio (as run.cpp does): the second translation unit of moat
// that does.
#include "bench.hpp"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cli.hpp"

namespace moat::cli {

namespace {

namespace asio = boost::asio;
using client::Error;
using client::QoS;
using Clock = std::chrono::steady_clock;
using u32 = std::uint32_t;
using u64 = std::uint64_t;

constexpr std::size_t kHeader = 24;
constexpr std::size_t kMaxMissing = 1'000'000;  // per stream; beyond it gaps are only counted

u64 now_ns() {
  return static_cast<u64>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
}

// A counter with one writing thread, read by the main thread: a relaxed load and
// store (no locked instruction).
struct Counter {
  std::atomic<u64> v{0};
  void add(u64 n = 1) { v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  u64 get() const { return v.load(std::memory_order_relaxed); }
};

// Log-linear histogram of nanoseconds: 32 buckets per power of two (~3 %).
class Histogram {
 public:
  static constexpr int kSubBits = 5;
  static constexpr int kSub = 1 << kSubBits;
  static constexpr std::size_t kBuckets = static_cast<std::size_t>((64 - kSubBits + 1) * kSub);

  static std::size_t index(u64 v) {
    if (v < kSub) return static_cast<std::size_t>(v);
    const int msb = std::bit_width(v) - 1;
    const int shift = msb - kSubBits;
    return static_cast<std::size_t>((shift + 1) * kSub) + static_cast<std::size_t>((v >> shift) - kSub);
  }
  // A representative value (middle) of bucket i.
  static double value(std::size_t i) {
    if (i < kSub) return static_cast<double>(i);
    const int shift = static_cast<int>(i / kSub) - 1;
    const double lo = std::ldexp(static_cast<double>(i % kSub + kSub), shift);
    return lo + std::ldexp(1.0, shift) / 2;
  }
  void record(u64 v) { b_[index(v)].add(); }
  void snapshot(std::vector<u64>& out) const {
    out.resize(kBuckets);
    for (std::size_t i = 0; i < kBuckets; ++i) out[i] = b_[i].get();
  }

 private:
  std::array<Counter, kBuckets> b_{};
};

struct Percentiles {
  u64 count = 0;
  double p50 = 0, p99 = 0, p999 = 0, max = 0;  // microseconds
};

Percentiles percentiles(const std::vector<u64>& counts) {
  Percentiles p;
  for (auto c : counts) p.count += c;
  if (p.count == 0) return p;
  auto at = [&](double q) {
    const auto want = static_cast<u64>(std::ceil(q * static_cast<double>(p.count)));
    u64 seen = 0;
    for (std::size_t i = 0; i < counts.size(); ++i) {
      seen += counts[i];
      if (seen >= std::max<u64>(want, 1)) return Histogram::value(i) / 1000.0;
    }
    return 0.0;
  };
  p.p50 = at(0.5);
  p.p99 = at(0.99);
  p.p999 = at(0.999);
  for (std::size_t i = counts.size(); i-- > 0;)
    if (counts[i] != 0) {
      p.max = Histogram::value(i) / 1000.0;
      break;
    }
  return p;
}

// Written by one worker thread.
struct Stats {
  Counter sent;       // publishes handed to the client (conn: connection attempts)
  Counter acked;      // publishes completed (QoS 0: written; 1: PUBACK; 2: PUBCOMP); conn: CONNACKs
  Counter delivered;  // messages received by subscribers, duplicates included
  Counter unique;     // first receptions of a (publisher, sequence)
  Counter dups;
  Counter reorders;
  Counter stale;  // messages of another run (a persistent session's leftovers) or without a header
  Histogram latency;
};

struct Snapshot {
  double t = 0;  // seconds since publishing started
  u64 sent = 0, acked = 0, delivered = 0, unique = 0, dups = 0, reorders = 0, stale = 0;
  std::vector<u64> hist;
};

// ---------------------------------------------------------------------------
// Broker CPU and memory from /proc.

struct ProcSample {
  bool ok = false;
  double cpu_s = 0;  // utime + stime
  u64 rss_kb = 0;
};

ProcSample read_proc(long pid) {
  ProcSample s;
  if (pid <= 0) return s;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return s;
  const auto paren = line.rfind(')');
  if (paren == std::string::npos) return s;
  std::istringstream rest(line.substr(paren + 1));
  std::vector<std::string> f;  // f[0] is field 3 (state)
  for (std::string x; rest >> x;) f.push_back(x);
  if (f.size() < 22) return s;
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  s.cpu_s = (std::stod(f[11]) + std::stod(f[12])) / tick;                            // fields 14, 15
  s.rss_kb = std::stoull(f[21]) * static_cast<u64>(::sysconf(_SC_PAGESIZE)) / 1024;  // field 24
  s.ok = true;
  return s;
}

// ---------------------------------------------------------------------------
// Sequence checking, per subscriber and publisher.

struct Stream {
  u64 next = 0;    // highest sequence seen + 1
  u64 unique = 0;  // distinct sequences received
  u64 dups = 0;
  u64 reorders = 0;
  u64 untracked_gaps = 0;  // gaps beyond kMaxMissing
  bool started = false;
  std::unordered_set<u64> missing;
};

struct Tracker {
  u32 run = 0;
  bool any_run = false;                     // `sub`: publishers of other processes
  std::unordered_map<u64, Stream> streams;  // key: run << 32 | publisher

  // Returns the publisher of a first reception of this run, else -1.
  long on(const std::string& payload, Stats& st, Clock::time_point received) {
    const u64 now = static_cast<u64>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(received.time_since_epoch()).count());
    st.delivered.add();
    if (payload.size() < kHeader) {
      st.stale.add();
      return -1;
    }
    u32 r = 0, pub = 0;
    u64 seq = 0, ts = 0;
    std::memcpy(&r, payload.data(), 4);
    std::memcpy(&pub, payload.data() + 4, 4);
    std::memcpy(&seq, payload.data() + 8, 8);
    std::memcpy(&ts, payload.data() + 16, 8);
    if (!any_run && r != run) {
      st.stale.add();
      return -1;
    }
    st.latency.record(now > ts ? now - ts : 0);
    auto& s = streams[(static_cast<u64>(r) << 32) | pub];
    if (!s.started) {
      s.started = true;
      if (any_run) s.next = seq;  // joined a running publisher
    }
    if (seq == s.next) {
      ++s.next;
    } else if (seq > s.next) {
      for (u64 k = s.next; k < seq; ++k) {
        if (s.missing.size() >= kMaxMissing) {
          s.untracked_gaps += seq - k;
          break;
        }
        s.missing.insert(k);
      }
      s.next = seq + 1;
    } else if (s.missing.erase(seq) != 0) {
      ++s.reorders;
      st.reorders.add();
    } else {
      ++s.dups;
      st.dups.add();
      return -1;
    }
    ++s.unique;
    st.unique.add();
    return r == run ? static_cast<long>(pub) : -1;
  }
};

// ---------------------------------------------------------------------------

struct Worker;
struct Publisher;

// What all threads share. Written once before the workers start, except the atomics.
struct Run {
  BenchArgs a;
  QoS qos = QoS::AtMostOnce;
  client::Options base;
  u32 run_id = 0;
  std::shared_ptr<payload::Keyring> ring;  // --seal: seals every message (thread-safe)
  std::optional<payload::Mode> seal;
  unsigned npubs = 0, nsubs = 0;
  std::vector<Publisher*> pubs;  // by publisher id
  std::atomic<unsigned> subs_ready{0};
  std::atomic<unsigned> pubs_ready{0};
  std::atomic<bool> stop{false};     // publishers: no new messages
  std::atomic<bool> closing{false};  // disconnects from now on are ours
  std::atomic<bool> failed{false};
  std::atomic<u64> tls_handshakes{0};
  std::atomic<u64> tls_resumed{0};
  std::mutex mutex;
  std::string tls_summary;  // version and cipher of the first TLS connection (under mutex)
  int fail_code = kOk;
  std::string fail_message;

  void fail(int code, const std::string& message) {
    std::lock_guard lock(mutex);
    if (failed.load()) return;
    fail_code = code;
    fail_message = message;
    failed.store(true);
  }
};

std::pair<int, std::string> connect_problem(const client::ConnectResult& r, const BenchArgs& a) {
  const std::string where = a.host + ":" + std::to_string(a.port);
  switch (r.error) {
    case Error::Unreachable:
      return {kUnreachable, r.detail.empty() ? "cannot connect to " + where : r.detail};
    case Error::Refused:
      if (r.code == client::ConnectReturnCode::BadUsernameOrPassword ||
          r.code == client::ConnectReturnCode::NotAuthorized)
        return {kAuthFailed, std::string("authentication failed: ") + client::to_string(r.code)};
      return {kRefused, std::string("connection refused: ") + client::to_string(r.code)};
    case Error::Timeout:
      return {kTimeout, "timed out connecting to " + where};
    case Error::TlsFailed:
      return {kTlsFailed, r.detail};
    default:
      return {kLost,
              "connection to " + where + " lost before CONNACK" + (r.detail.empty() ? "" : ": " + r.detail)};
  }
}

struct Publisher {
  Worker& w;
  Run& r;
  u32 id;
  std::vector<std::string> topics;  // published to in turn
  std::unique_ptr<client::Client> c;
  u64 seq = 0;
  unsigned outstanding = 0;
  bool running = false;
  bool blocked = false;          // by the backlog limit
  u64 fan = 0;                   // subscribers that receive this publisher's messages
  std::atomic<u64> received{0};  // first receptions by those subscribers (any thread)
  u64 start_ns = 0;
  double per_ns = 0;  // rate per nanosecond; 0 = flat out
  Counter issued;     // read by the main thread after the workers stopped too

  Publisher(Worker& worker, Run& run, u32 i, std::vector<std::string> t)
      : w(worker), r(run), id(i), topics(std::move(t)) {}
  void connect(asio::io_context& io);
  void begin(u64 t0);
  void pump();
};

struct Subscriber {
  Worker& w;
  Run& r;
  u32 index;
  std::vector<std::string> filters;
  std::unique_ptr<client::Client> c;
  Tracker tracker;
  bool subscribed = false;

  Subscriber(Worker& worker, Run& run, u32 i) : w(worker), r(run), index(i) {}
  void connect(asio::io_context& io);
};

struct Connector {
  Worker& w;
  Run& r;
  u32 index;
  u64 n = 0;
  u64 t0 = 0;
  std::unique_ptr<client::Client> c;
  bool done = false;

  Connector(Worker& worker, Run& run, u32 i) : w(worker), r(run), index(i) {}
  void next();
};

struct Worker {
  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> guard = asio::make_work_guard(io);
  asio::steady_timer ticker{io};
  asio::steady_timer grace{io};
  std::thread thread;
  Stats stats;
  std::vector<std::unique_ptr<Publisher>> pubs;
  std::vector<std::unique_ptr<Subscriber>> subs;
  std::vector<std::unique_ptr<Connector>> conns;
  unsigned closing_left = 0;

  void tick(Run& r) {
    ticker.expires_after(std::chrono::milliseconds(1));
    ticker.async_wait([this, &r](const boost::system::error_code& ec) {
      if (ec || r.stop.load(std::memory_order_relaxed)) return;
      for (auto& p : pubs) p->pump();
      tick(r);
    });
  }

  // Disconnects every client (bounded), then stops the loop.
  void shut_down() {
    ticker.cancel();
    std::vector<client::Client*> all;
    for (auto& p : pubs)
      if (p->c) all.push_back(p->c.get());
    for (auto& s : subs)
      if (s->c) all.push_back(s->c.get());
    for (auto& k : conns)
      if (k->c) all.push_back(k->c.get());
    closing_left = static_cast<unsigned>(all.size());
    auto finish = [this] {
      grace.cancel();
      for (auto& p : pubs) p->c.reset();
      for (auto& s : subs) s->c.reset();
      for (auto& k : conns) k->c.reset();
      guard.reset();
      io.stop();
    };
    if (closing_left == 0) return finish();
    grace.expires_after(std::chrono::seconds(2));
    grace.async_wait([finish](const boost::system::error_code& ec) {
      if (!ec) finish();
    });
    for (auto* c : all) {
      if (!c->connected()) {
        c->disconnect(nullptr);
        if (--closing_left == 0) return finish();
        continue;
      }
      c->disconnect([this, finish](Error) {
        if (closing_left > 0 && --closing_left == 0) asio::post(io, finish);
      });
    }
  }
};

void Publisher::connect(asio::io_context& io) {
  auto o = r.base;
  o.client_id = r.a.id_prefix + "p" + std::to_string(id);
  o.clean_session = true;
  if (r.ring) {  // --seal: the client library seals each message
    o.payload.keyring = r.ring;
    o.payload.seal_mode = r.seal;
    o.payload.open = false;
  }
  c = std::make_unique<client::Client>(io, o);
  auto counted = std::make_shared<bool>(false);
  c->on_connect([this, counted](const client::ConnectResult& res) {
    if (!res.ok()) {
      auto [code, msg] = connect_problem(res, r.a);
      r.fail(code, "publisher " + std::to_string(id) + ": " + msg);
      return;
    }
    if (*counted) return;
    *counted = true;
    r.pubs_ready.fetch_add(1);
  });
  c->on_disconnect([this](Error e, const std::string& detail) {
    if (r.closing.load()) return;
    r.fail(kLost, "publisher " + std::to_string(id) + ": connection lost (" + client::to_string(e) +
                      (detail.empty() ? "" : ": " + detail) + ")");
  });
  c->connect();
}

void Publisher::begin(u64 t0) {
  running = true;
  start_ns = t0;
  pump();
}

void Publisher::pump() {
  if (!running) return;
  const std::size_t window = r.a.inflight;
  const u64 now = now_ns();  // one clock read per burst: they leave in one write anyway
  while (outstanding < window && !r.stop.load(std::memory_order_relaxed)) {
    if (fan > 0 && r.a.backlog > 0 &&
        seq * fan - std::min(seq * fan, received.load(std::memory_order_relaxed)) >= r.a.backlog * fan) {
      blocked = true;
      return;
    }
    if (per_ns > 0) {
      const auto due = static_cast<u64>(static_cast<double>(now - start_ns) * per_ns) + 1;
      if (seq >= due) return;
    }
    std::string payload(r.a.size, '\0');
    std::memcpy(payload.data(), &r.run_id, 4);
    std::memcpy(payload.data() + 4, &id, 4);
    std::memcpy(payload.data() + 8, &seq, 8);
    std::memcpy(payload.data() + 16, &now, 8);
    const std::string& topic = topics[seq % topics.size()];
    ++seq;
    ++outstanding;
    issued.add();
    w.stats.sent.add();
    c->publish(topic, std::move(payload), r.qos, false, [this](Error e) {
      --outstanding;
      if (e != Error::None) {
        if (!r.closing.load())
          r.fail(e == Error::SealFailed ? kUsage : kLost,
                 "publisher " + std::to_string(id) + ": publish failed: " + client::to_string(e));
        return;
      }
      w.stats.acked.add();
      pump();
    });
  }
}

void Subscriber::connect(asio::io_context& io) {
  auto o = r.base;
  o.client_id = r.a.id_prefix + "s" + std::to_string(index);
  o.clean_session = !r.a.persistent;
  c = std::make_unique<client::Client>(io, o);
  c->on_message([this](const client::Message& m) {
    long from = -1;
    if (r.ring) {
      // Sealed: the header is at the start of the envelope's payload (not verified here).
      const auto content = envelope_content(m.payload);
      from = tracker.on(content ? std::string(*content) : std::string(), w.stats, m.received);
    } else {
      from = tracker.on(m.payload, w.stats, m.received);
    }
    if (from < 0 || static_cast<std::size_t>(from) >= r.pubs.size()) return;
    Publisher* p = r.pubs[static_cast<std::size_t>(from)];
    p->received.fetch_add(1, std::memory_order_relaxed);
    // On the same loop the publisher resumes at once; on another, its 1 ms tick resumes it.
    if (&p->w == &w && p->blocked) {
      p->blocked = false;
      p->pump();
    }
  });
  c->on_connect([this](const client::ConnectResult& res) {
    if (!res.ok()) {
      auto [code, msg] = connect_problem(res, r.a);
      r.fail(code, "subscriber " + std::to_string(index) + ": " + msg);
      return;
    }
    if (subscribed) return;
    subscribed = true;
    std::vector<client::Subscription> want;
    for (const auto& f : filters) want.push_back({f, r.qos});
    c->subscribe(std::move(want), [this](Error e, const std::vector<std::uint8_t>& granted) {
      if (e != Error::None)
        return r.fail(kLost,
                      "subscriber " + std::to_string(index) + ": subscribe failed: " + client::to_string(e));
      for (auto g : granted)
        if (g > 2) return r.fail(kRefused, "subscriber " + std::to_string(index) + ": subscription refused");
      r.subs_ready.fetch_add(1);
    });
  });
  c->on_disconnect([this](Error e, const std::string& detail) {
    if (r.closing.load()) return;
    r.fail(kLost, "subscriber " + std::to_string(index) + ": connection lost (" + client::to_string(e) +
                      (detail.empty() ? "" : ": " + detail) + ")");
  });
  c->connect();
}

void Connector::next() {
  if (r.stop.load(std::memory_order_relaxed) || r.failed.load(std::memory_order_relaxed)) {
    done = true;
    return;
  }
  auto o = r.base;
  o.client_id = r.a.id_prefix + "c" + std::to_string(index) + "-" + std::to_string(n++);
  o.clean_session = true;
  c = std::make_unique<client::Client>(w.io, o);
  c->on_connect([this](const client::ConnectResult& res) {
    if (!res.ok()) {
      auto [code, msg] = connect_problem(res, r.a);
      r.fail(code, "connection " + std::to_string(index) + ": " + msg);
      return;
    }
    const u64 now = now_ns();
    w.stats.latency.record(now - t0);
    w.stats.acked.add();
    if (!res.tls.version.empty()) {
      r.tls_handshakes.fetch_add(1, std::memory_order_relaxed);
      if (res.tls.resumed) r.tls_resumed.fetch_add(1, std::memory_order_relaxed);
      std::lock_guard lock(r.mutex);
      if (r.tls_summary.empty()) r.tls_summary = res.tls.version + " " + res.tls.cipher;
    }
    c->disconnect([this](Error) {
      asio::post(w.io, [this] {
        c.reset();
        next();
      });
    });
  });
  t0 = now_ns();
  w.stats.sent.add();
  c->connect();
}

// ---------------------------------------------------------------------------
// Printing.

std::string fmt_rate(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

std::string fmt_us(double us) {
  char buf[64];
  if (us >= 1000.0)
    std::snprintf(buf, sizeof buf, "%.2f ms", us / 1000.0);
  else
    std::snprintf(buf, sizeof buf, "%.0f µs", us);
  return buf;
}

std::string qos_name(int q) {
  return "QoS " + std::to_string(q);
}

}  // namespace

CLI::App* add_bench_command(CLI::App& app, BenchArgs& a) {
  CLI::App* b =
      app.add_subcommand("bench", "load generator: throughput, latency, losses (see docs/benchmarks.md)");
  b->set_help_flag("--help", "print this help and exit");
  b->add_option("SCENARIO", a.scenario,
                "pub (N publishers), sub (N subscribers to TOPIC/#), fanin (N publishers -> 1 subscriber), "
                "fanout (1 publisher -> N subscribers), pairs (N publisher->subscriber pairs), "
                "conn (connections per second, N concurrent)")
      ->required()
      ->check(CLI::IsMember({"pub", "sub", "fanin", "fanout", "pairs", "conn"}));
  b->add_option("-h,--host", a.host, "broker host name or address")->capture_default_str();
  b->add_option("-p,--port", a.port, "broker port (default 1883, with TLS 8883)")
      ->check(CLI::Range(1, 65535));
  b->add_option("-u,--username", a.username, "user name");
  b->add_option("-P,--pw", a.password, "password (needs -u)");
  b->add_option("-n,--clients", a.clients, "N of the scenario")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100000u));
  b->add_option("-q,--qos", a.qos, "QoS of publishing and subscribing")
      ->capture_default_str()
      ->check(CLI::Range(0, 2));
  b->add_option("-s,--size", a.size, "payload size in bytes (at least 24: the header)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{kHeader}, std::size_t{268'000'000}));
  b->add_option("--seal", a.seal,
                "publishers seal each message with the topic's key from --keyring (COSE_Sign1 or COSE_Mac0; "
                "subscribers read the header without verifying)")
      ->check(CLI::IsMember({"sign", "mac"}));
  b->add_option("--keyring", a.keyring, "keyring file for --seal (docs/payload-security.md)");
  b->add_option("-r,--rate", a.rate, "messages per second over all publishers; 0 = flat out")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e9));
  b->add_option("-d,--duration", a.duration, "seconds measured (after the warm-up)")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  b->add_option("-w,--warmup", a.warmup, "seconds of load before measuring")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 600.0));
  b->add_option("--drain", a.drain,
                "at most this many seconds for the tail of deliveries after publishing stops")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 600.0));
  b->add_option("--threads", a.threads, "event loops (one thread each); clients are spread over them")
      ->capture_default_str()
      ->check(CLI::Range(1u, 256u));
  b->add_option(
       "--inflight", a.inflight,
       "messages a publisher keeps outstanding (QoS 0: not yet written; QoS 1/2: the in-flight window)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 65535u));
  b->add_option("--backlog", a.backlog,
                "messages a publisher may be ahead of its slowest subscribers (per subscriber, on average); "
                "0 = unlimited (the broker queues what the subscribers cannot take)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 100000000u));
  b->add_option("-k,--keepalive", a.keepalive, "keep-alive in seconds")
      ->capture_default_str()
      ->check(CLI::Range(0u, 65535u));
  b->add_option("--topic", a.topic, "base topic")->capture_default_str();
  b->add_option("--spread", a.spread,
                "each publisher cycles over N topics below its own (TOPIC/0 .. TOPIC/N-1), and subscribers "
                "subscribe to its topic/#: a load of many distinct topics per client")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1000000u));
  b->add_option("-I,--id-prefix", a.id_prefix,
                "client identifier prefix (default mb<pid>-, or moat-bench- with --persistent)");
  auto* pers =
      b->add_flag("--persistent", a.persistent, "subscribers use clean session 0 (durable-subscriber runs)");
  b->add_flag("--clean-session", a.clean_session, "subscribers use clean session 1 (the default)")
      ->excludes(pers);
  b->add_flag("--json", a.json, "print one JSON line at the end on stdout (the report goes to stderr)");
  b->add_flag("--quiet", a.quiet, "no once-per-second lines");
  b->add_option("--broker-pid", a.broker_pid,
                "read this process's CPU time and RSS (/proc) to report broker cost");
  add_tls_flags(b, a.tls);
  a.tls.resume = false;
  b->add_flag("--tls-resume", a.tls.resume,
              "resume the TLS session of an earlier connection (default: every handshake is a full one)");
  return b;
}

int run_bench(const BenchArgs& args) {
  Run r;
  r.a = args;
  auto& a = r.a;
  const std::string cmd = "bench";
  if (!a.password.empty() && a.username.empty()) {
    error_line(cmd, "a password (-P) needs a user name (-u)");
    return kUsage;
  }
  if (auto problem = topic_name_problem(a.topic + "/0")) {
    error_line(cmd, "--topic: " + *problem);
    return kUsage;
  }
  if (a.id_prefix.empty())
    a.id_prefix = a.persistent ? "moat-bench-" : "mb" + std::to_string(::getpid()) + "-";
  r.qos = static_cast<QoS>(a.qos);
  r.run_id = static_cast<u32>(std::random_device{}());
  r.base.host = a.host;
  if (!apply_tls_flags(cmd, a.tls, r.base)) return kUsage;
  if (a.port == 0) a.port = r.base.tls ? 8883 : 1883;
  r.base.port = static_cast<std::uint16_t>(a.port);
  r.base.keep_alive = static_cast<std::uint16_t>(a.keepalive);
  r.base.max_inflight = static_cast<std::uint16_t>(a.inflight);
  if (!a.username.empty()) r.base.username = a.username;
  if (!a.password.empty()) r.base.password = a.password;
  if (a.seal.empty() != a.keyring.empty()) {
    error_line(cmd, "--seal and --keyring go together");
    return kUsage;
  }
  if (!a.seal.empty()) {
    r.seal = seal_mode(a.seal);
    try {
      r.ring = load_keyring(a.keyring);
    } catch (const std::exception& e) {
      error_line(cmd, e.what());
      return kUsage;
    }
  }

  const std::string& sc = a.scenario;
  const unsigned n = a.clients;
  unsigned npubs = 0, nsubs = 0, nconns = 0;
  if (sc == "pub") npubs = n;
  if (sc == "sub") nsubs = n;
  if (sc == "fanin") npubs = n, nsubs = 1;
  if (sc == "fanout") npubs = 1, nsubs = n;
  if (sc == "pairs") npubs = n, nsubs = n;
  if (sc == "conn") nconns = n;
  r.npubs = npubs;
  r.nsubs = nsubs;

  std::FILE* out = a.json ? stderr : stdout;
  std::vector<std::unique_ptr<Worker>> workers;
  for (unsigned i = 0; i < a.threads; ++i) workers.push_back(std::make_unique<Worker>());
  auto worker_of = [&](unsigned i) -> Worker& { return *workers[i % workers.size()]; };

  // Topics and streams.
  auto pub_topic = [&](unsigned i) {
    return (sc == "pairs" || sc == "pub") ? a.topic + "/" + std::to_string(i) : a.topic;
  };
  for (unsigned i = 0; i < nsubs; ++i) {
    auto& w = worker_of(i);
    auto s = std::make_unique<Subscriber>(w, r, i);
    s->tracker.run = r.run_id;
    s->tracker.any_run = sc == "sub";
    const std::string below = a.spread > 1 ? "/#" : "";
    if (sc == "sub")
      s->filters = {a.topic + "/#"};
    else if (sc == "pairs")
      s->filters = {pub_topic(i) + below};
    else
      s->filters = {a.topic + below};
    w.subs.push_back(std::move(s));
  }
  for (unsigned i = 0; i < npubs; ++i) {
    auto& w = worker_of(i + nsubs);
    std::vector<std::string> topics;
    if (a.spread == 1) topics.push_back(pub_topic(i));
    for (unsigned k = 0; a.spread > 1 && k < a.spread; ++k)
      topics.push_back(pub_topic(i) + "/" + std::to_string(k));
    auto p = std::make_unique<Publisher>(w, r, i, std::move(topics));
    if (a.rate > 0) p->per_ns = a.rate / npubs / 1e9;
    p->fan = sc == "fanout" ? nsubs : (sc == "fanin" || sc == "pairs") ? 1 : 0;
    r.pubs.push_back(p.get());
    w.pubs.push_back(std::move(p));
  }
  for (unsigned i = 0; i < nconns; ++i) {
    auto& w = worker_of(i);
    w.conns.push_back(std::make_unique<Connector>(w, r, i));
  }

  for (auto& w : workers) {
    Worker* wp = w.get();
    wp->thread = std::thread([wp] { wp->io.run(); });
  }

  auto snapshot = [&](double t) {
    Snapshot s;
    s.t = t;
    std::vector<u64> h;
    s.hist.assign(Histogram::kBuckets, 0);
    for (auto& w : workers) {
      s.sent += w->stats.sent.get();
      s.acked += w->stats.acked.get();
      s.delivered += w->stats.delivered.get();
      s.unique += w->stats.unique.get();
      s.dups += w->stats.dups.get();
      s.reorders += w->stats.reorders.get();
      s.stale += w->stats.stale.get();
      w->stats.latency.snapshot(h);
      for (std::size_t i = 0; i < h.size(); ++i) s.hist[i] += h[i];
    }
    return s;
  };
  auto wait_until = [&](auto pred, double seconds) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    while (!pred()) {
      if (r.failed.load() || Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  };
  auto stop_workers = [&] {
    r.closing.store(true);
    r.stop.store(true);
    for (auto& w : workers) {
      Worker* wp = w.get();
      asio::post(wp->io, [wp] { wp->shut_down(); });
    }
    for (auto& w : workers) w->thread.join();
  };
  auto abort_run = [&](const std::string& fallback) {
    stop_workers();
    std::lock_guard lock(r.mutex);
    if (r.failed.load()) {
      error_line(cmd, r.fail_message);
      return r.fail_code;
    }
    error_line(cmd, fallback);
    return static_cast<int>(kTimeout);
  };

  // 1. Subscribers, 2. publishers: connected (and subscribed) before any message.
  for (auto& w : workers) {
    Worker* wp = w.get();
    asio::post(wp->io, [wp] {
      for (auto& s : wp->subs) s->connect(wp->io);
    });
  }
  if (!wait_until([&] { return r.subs_ready.load() == nsubs; }, 30))
    return abort_run("subscribers not ready within 30 s (" + std::to_string(r.subs_ready.load()) + " of " +
                     std::to_string(nsubs) + ")");
  for (auto& w : workers) {
    Worker* wp = w.get();
    asio::post(wp->io, [wp] {
      for (auto& p : wp->pubs) p->connect(wp->io);
    });
  }
  if (!wait_until([&] { return r.pubs_ready.load() == npubs; }, 30))
    return abort_run("publishers not connected within 30 s (" + std::to_string(r.pubs_ready.load()) + " of " +
                     std::to_string(npubs) + ")");

  // Describe the run.
  {
    std::string what;
    if (sc == "pub") what = std::to_string(npubs) + " publishers";
    if (sc == "sub") what = std::to_string(nsubs) + " subscribers to " + a.topic + "/#";
    if (sc == "fanin") what = std::to_string(npubs) + " publishers -> 1 subscriber";
    if (sc == "fanout") what = "1 publisher -> " + std::to_string(nsubs) + " subscribers";
    if (sc == "pairs") what = std::to_string(npubs) + " publisher->subscriber pairs";
    if (sc == "conn") what = std::to_string(nconns) + " concurrent connect/disconnect loops";
    if (sc != "conn") {
      what += ", " + qos_name(a.qos) + ", " + std::to_string(a.size) + " B, ";
      what += a.rate > 0 ? fmt_rate(a.rate) + " msg/s" : "flat out";
      what += " (window " + std::to_string(a.inflight) + ", backlog " +
              (a.backlog > 0 ? std::to_string(a.backlog) : std::string("unlimited")) + ")";
      if (a.persistent) what += ", persistent subscribers";
      if (a.spread > 1) what += ", " + std::to_string(a.spread) + " topics per publisher";
    }
    char tail[160];
    std::snprintf(tail, sizeof tail, ", %g s after %g s warm-up, %u thread%s", a.duration, a.warmup,
                  a.threads, a.threads == 1 ? "" : "s");
    std::fprintf(out, "moat bench %s: %s%s\n", sc.c_str(), what.c_str(), tail);
    std::fflush(out);
  }

  // 3. Load.
  const auto t_start = Clock::now();
  const u64 t0 = now_ns();
  for (auto& w : workers) {
    Worker* wp = w.get();
    Run* rp = &r;
    asio::post(wp->io, [wp, rp, t0] {
      for (auto& p : wp->pubs) p->begin(t0);
      for (auto& k : wp->conns) k->next();
      if ((rp->a.rate > 0 || (rp->a.backlog > 0 && rp->a.threads > 1)) && !wp->pubs.empty()) wp->tick(*rp);
    });
  }
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - t_start).count(); };

  Snapshot prev = snapshot(0), m0 = prev, m1;
  ProcSample cpu0, cpu1;
  bool measuring = a.warmup <= 0;
  if (measuring) cpu0 = read_proc(a.broker_pid);
  const double end_t = a.warmup + a.duration;
  const bool conn = sc == "conn";
  for (int sec = 1;; ++sec) {
    double next_t = std::min<double>(sec, end_t);
    if (!measuring && a.warmup < next_t) next_t = a.warmup;
    while (elapsed() < next_t && !r.failed.load())
      std::this_thread::sleep_for(std::chrono::duration<double>(std::min(0.05, next_t - elapsed())));
    if (r.failed.load()) break;
    Snapshot now = snapshot(elapsed());
    if (!measuring && now.t >= a.warmup) {
      measuring = true;
      m0 = now;
      cpu0 = read_proc(a.broker_pid);
      if (next_t < std::min<double>(sec, end_t)) {
        --sec;  // the warm-up ended inside this second: finish it
        continue;
      }
    }
    if (!a.quiet && now.t > prev.t) {
      const double dt = now.t - prev.t;
      std::vector<u64> h(Histogram::kBuckets);
      for (std::size_t i = 0; i < h.size(); ++i) h[i] = now.hist[i] - prev.hist[i];
      const auto p = percentiles(h);
      if (conn)
        std::fprintf(out, "%6.1f s  %9s conn/s  connect p50 %s  p99 %s%s\n", now.t,
                     fmt_rate(static_cast<double>(now.acked - prev.acked) / dt).c_str(),
                     fmt_us(p.p50).c_str(), fmt_us(p.p99).c_str(),
                     next_t <= a.warmup + 1e-9 ? "  (warm-up)" : "");
      else
        std::fprintf(out, "%6.1f s  sent %9s/s  delivered %9s/s  p50 %s  p99 %s  p99.9 %s%s%s\n", now.t,
                     fmt_rate(static_cast<double>(now.sent - prev.sent) / dt).c_str(),
                     fmt_rate(static_cast<double>(now.delivered - prev.delivered) / dt).c_str(),
                     fmt_us(p.p50).c_str(), fmt_us(p.p99).c_str(), fmt_us(p.p999).c_str(),
                     (now.dups != prev.dups || now.reorders != prev.reorders)
                         ? ("  dup " + std::to_string(now.dups - prev.dups) + " reorder " +
                            std::to_string(now.reorders - prev.reorders))
                               .c_str()
                         : "",
                     next_t <= a.warmup + 1e-9 ? "  (warm-up)" : "");
      std::fflush(out);
    }
    prev = now;
    if (now.t >= end_t - 1e-9) break;
  }
  if (r.failed.load()) return abort_run("failed");
  m1 = snapshot(elapsed());
  cpu1 = read_proc(a.broker_pid);
  r.stop.store(true);

  // 4. Tail: outstanding publishes complete, then deliveries arrive (bounded).
  const auto drain_deadline = Clock::now() + std::chrono::duration<double>(a.drain);
  auto left = [&] { return std::chrono::duration<double>(drain_deadline - Clock::now()).count(); };
  wait_until(
      [&] {
        auto s = snapshot(0);
        return s.acked >= s.sent;
      },
      std::max(0.0, left()));
  u64 expected = 0;
  {
    // Expected unique deliveries: every message issued, once per subscriber that wants it.
    u64 issued_total = 0;
    for (auto& w : workers)
      for (auto& p : w->pubs) issued_total += p->issued.get();
    if (sc == "fanin") expected = issued_total;
    if (sc == "fanout") expected = issued_total * nsubs;
    if (sc == "pairs") expected = issued_total;
  }
  if (expected > 0) {
    u64 last = snapshot(0).unique;
    auto last_change = Clock::now();
    while (!r.failed.load() && left() > 0) {
      const u64 u = snapshot(0).unique;
      if (u >= expected) break;
      if (u != last) {
        last = u;
        last_change = Clock::now();
      } else if (Clock::now() - last_change > std::chrono::seconds(2)) {
        break;  // nothing arrives any more
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  const bool failed_mid = r.failed.load();
  stop_workers();

  // 5. Integrity, per subscriber and publisher stream.
  std::vector<u64> issued_by(npubs, 0);
  for (auto& w : workers)
    for (auto& p : w->pubs) issued_by[p->id] = p->issued.get();
  u64 lost = 0, dups = 0, reorders = 0, streams = 0, checked = 0, stale = 0;
  std::vector<std::string> bad;
  for (auto& w : workers) {
    stale += w->stats.stale.get();
    for (auto& s : w->subs) {
      std::vector<u32> want;
      if (sc == "fanin")
        for (u32 i = 0; i < npubs; ++i) want.push_back(i);
      if (sc == "fanout") want.push_back(0);
      if (sc == "pairs") want.push_back(s->index);
      auto report = [&](u64 key_pub, const Stream& st, u64 missing) {
        lost += missing;
        dups += st.dups;
        reorders += st.reorders;
        checked += st.unique;
        ++streams;
        if ((missing != 0 || st.dups != 0 || st.reorders != 0) && bad.size() < 20)
          bad.push_back("subscriber " + std::to_string(s->index) + " from publisher " +
                        std::to_string(key_pub) + ": lost " + std::to_string(missing) + ", duplicates " +
                        std::to_string(st.dups) + ", reordered " + std::to_string(st.reorders));
      };
      if (sc == "sub") {
        for (auto& [key, st] : s->tracker.streams)
          report(key & 0xffffffffu, st, st.missing.size() + st.untracked_gaps);
        continue;
      }
      for (u32 p : want) {
        const u64 key = (static_cast<u64>(r.run_id) << 32) | p;
        auto it = s->tracker.streams.find(key);
        Stream empty;
        const Stream& st = it == s->tracker.streams.end() ? empty : it->second;
        const u64 sent = issued_by[p];
        report(p, st, sent > st.unique ? sent - st.unique : 0);
      }
    }
  }

  // 6. Report.
  const double window = std::max(1e-9, m1.t - m0.t);
  std::vector<u64> h(Histogram::kBuckets);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = m1.hist[i] - m0.hist[i];
  const auto lat = percentiles(h);
  const double sent_rate = static_cast<double>(m1.sent - m0.sent) / window;
  const double acked_rate = static_cast<double>(m1.acked - m0.acked) / window;
  const double deliv_rate = static_cast<double>(m1.delivered - m0.delivered) / window;
  const u64 deliveries = m1.delivered - m0.delivered;
  const u64 work = conn ? m1.acked - m0.acked : (nsubs > 0 ? deliveries : m1.acked - m0.acked);
  const bool have_cpu = cpu0.ok && cpu1.ok;
  const double cpu_s = have_cpu ? cpu1.cpu_s - cpu0.cpu_s : 0;
  const double cpu_us_per = have_cpu && work > 0 ? cpu_s * 1e6 / static_cast<double>(work) : 0;

  if (conn) {
    std::fprintf(out, "connections  %s/s (%" PRIu64 " in %.2f s)\n", fmt_rate(acked_rate).c_str(),
                 m1.acked - m0.acked, window);
    std::fprintf(out, "connect      p50 %s  p99 %s  p99.9 %s  max %s (TCP connect to CONNACK)\n",
                 fmt_us(lat.p50).c_str(), fmt_us(lat.p99).c_str(), fmt_us(lat.p999).c_str(),
                 fmt_us(lat.max).c_str());
    if (r.base.tls) {
      std::lock_guard lock(r.mutex);
      std::fprintf(out, "tls          %s, %" PRIu64 " of %" PRIu64 " handshakes resumed (whole run)\n",
                   r.tls_summary.c_str(), r.tls_resumed.load(), r.tls_handshakes.load());
    }
  } else {
    std::fprintf(out, "sent         %s msg/s (%" PRIu64 " in %.2f s; completed %s/s)\n",
                 fmt_rate(sent_rate).c_str(), m1.sent - m0.sent, window, fmt_rate(acked_rate).c_str());
    if (nsubs > 0) {
      std::fprintf(out, "delivered    %s msg/s (%" PRIu64 ")\n", fmt_rate(deliv_rate).c_str(), deliveries);
      std::fprintf(out, "latency      p50 %s  p99 %s  p99.9 %s  max %s\n", fmt_us(lat.p50).c_str(),
                   fmt_us(lat.p99).c_str(), fmt_us(lat.p999).c_str(), fmt_us(lat.max).c_str());
      std::fprintf(out,
                   "integrity    lost %" PRIu64 ", duplicates %" PRIu64 ", reordered %" PRIu64 " (%" PRIu64
                   " messages checked in %" PRIu64 " publisher streams%s)\n",
                   lost, dups, reorders, checked, streams,
                   stale > 0 ? (", " + std::to_string(stale) + " from other runs ignored").c_str() : "");
    }
  }
  if (have_cpu)
    std::fprintf(out, "broker       CPU %.2f s (%.0f %% of one core), %.2f µs per %s, RSS %.1f -> %.1f MiB\n",
                 cpu_s, cpu_s / window * 100, cpu_us_per,
                 conn ? "connection" : (nsubs > 0 ? "delivery" : "publish"),
                 static_cast<double>(cpu0.rss_kb) / 1024, static_cast<double>(cpu1.rss_kb) / 1024);
  else if (a.broker_pid > 0)
    std::fprintf(out, "broker       cannot read /proc/%ld/stat\n", a.broker_pid);
  std::fflush(out);

  int code = kOk;
  const bool strict = a.qos > 0;
  const bool integrity_bad = strict && (lost > 0 || reorders > 0 || (a.qos == 2 && dups > 0));
  if (integrity_bad) {
    std::fprintf(stderr,
                 "moat bench: !!! %s INTEGRITY FAILURE: %" PRIu64 " lost, %" PRIu64 " reordered, %" PRIu64
                 " duplicated !!!\n",
                 qos_name(a.qos).c_str(), lost, reorders, dups);
    for (const auto& line : bad) std::fprintf(stderr, "moat bench: !!!   %s\n", line.c_str());
    code = kIntegrity;
  } else if (!bad.empty() && !a.quiet) {
    for (const auto& line : bad) std::fprintf(out, "note         %s\n", line.c_str());
  }
  if (failed_mid) {
    std::lock_guard lock(r.mutex);
    error_line(cmd, r.fail_message);
    if (code == kOk) code = r.fail_code;
  }

  if (a.json) {
    nlohmann::json j;
    j["scenario"] = sc;
    j["qos"] = a.qos;
    j["size"] = a.size;
    j["publishers"] = npubs;
    j["subscribers"] = nsubs;
    j["connections"] = nconns;
    j["rate"] = a.rate;
    j["inflight"] = a.inflight;
    j["backlog"] = a.backlog;
    j["threads"] = a.threads;
    j["persistent"] = a.persistent;
    j["window_s"] = window;
    j["sent"] = m1.sent - m0.sent;
    j["sent_per_s"] = sent_rate;
    j["completed_per_s"] = acked_rate;
    j["delivered"] = deliveries;
    j["delivered_per_s"] = deliv_rate;
    if (conn) j["connections_per_s"] = acked_rate;
    if (conn && r.base.tls) {
      std::lock_guard lock(r.mutex);
      j["tls"] = {{"negotiated", r.tls_summary},
                  {"handshakes", r.tls_handshakes.load()},
                  {"resumed", r.tls_resumed.load()}};
    }
    j["latency_us"] = {
        {"p50", lat.p50}, {"p99", lat.p99}, {"p999", lat.p999}, {"max", lat.max}, {"count", lat.count}};
    j["lost"] = lost;
    j["duplicates"] = dups;
    j["reordered"] = reorders;
    j["checked"] = checked;
    j["streams"] = streams;
    j["stale"] = stale;
    if (have_cpu) {
      j["broker"] = {{"pid", a.broker_pid},
                     {"cpu_s", cpu_s},
                     {"cpu_percent", cpu_s / window * 100},
                     {"cpu_us_per_op", cpu_us_per},
                     {"rss_kb_start", cpu0.rss_kb},
                     {"rss_kb_end", cpu1.rss_kb}};
    }
    j["ok"] = code == kOk;
    j["exit"] = code;
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
  }
  return code;
}

}  // namespace moat::cli
