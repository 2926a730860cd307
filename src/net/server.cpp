#include "net/server.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <span>
#include <thread>

#include "broker/limit_checks.hpp"

namespace moat::net {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

// Readiness: each loop has an epoll instance of its own, in which every
// connection's socket is registered once, edge-triggered, for input and output
// (Loop::watch). Asio waits on that one descriptor; when it is ready the loop
// takes up to kEventsPerPoll events and runs each connection's reads or
// writes. An Asio socket instead would keep 272 bytes of reactor state and
// pending wait per idle connection, and re-arm its wait with an epoll_ctl per
// read.
constexpr int kEventsPerPoll = 256;
// Reads go through one buffer per loop: an idle connection holds no read
// buffer (it waits for readability, then reads), only the bytes of a packet
// that has not fully arrived. Up to kReadsPerWake reads per readiness, then the
// connection queues behind the loop's other work. A read that returns less
// than the buffer emptied the socket: no read to see EAGAIN follows (bytes
// that arrive later make a new edge), one system call fewer per connection and
// loop turn.
constexpr std::size_t kReadChunk = std::size_t{64} * 1024;
constexpr int kReadsPerWake = 4;
// While the broker takes no input from a connection (its CONNECT awaits a
// password check or the IAM server; a packet awaits the IAM server's
// authorization), the socket is read only while less than this waits in the
// connection's input, the waiting packet included (the read that crosses it
// brings at most kReadChunk more); then it is left unread and TCP holds the
// sender back until the answer is in. Reading on would let an
// unauthenticated client fill the broker's memory.
constexpr std::size_t kMaxUntakenInput = std::size_t{64} * 1024;
constexpr auto kTickInterval = std::chrono::milliseconds(200);
constexpr auto kDrainTimeout = std::chrono::seconds(2);
// Pieces per gather write (Linux's IOV_MAX). A QoS 0 message is one piece, a
// QoS 1/2 message about three, so one system call writes hundreds of messages.
constexpr std::size_t kMaxIov = 1024;
// TLS: plaintext pieces are gathered up to one record before encryption.
constexpr std::size_t kTlsRecord = 16384;

class Loop;

// A socket descriptor, closed with its owner.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  }

 private:
  int fd_ = -1;
};

error_code from_errno(int err) {
  return {err, boost::system::system_category()};
}
error_code last_error() {
  return from_errno(errno);
}

// What a connection holds only while it has output: this turn's queue, output
// held for store commits, the queues being written with the write cursor, and
// written queues kept for their buffers. Lent by the loop (Loop::lend_writes)
// when the broker first queues output or a TLS record is to be written, and
// given back once everything is written, so that an idle connection holds none
// of it, and a busy one reuses buffers.
struct WriteState {
  broker::OutputQueue pending;
  // Output of earlier turns whose store writes are still being committed, oldest
  // first, with the commit epoch each waits for.
  broker::Fifo<std::pair<std::uint64_t, broker::OutputQueue>> held;
  std::vector<broker::OutputQueue> writing;
  std::vector<broker::OutputQueue> spare;  // written queues kept for their buffers
  // Plain connections: how far `writing` has been written (queue, piece, offset).
  // TLS connections: cursor_offset is how far `cipher` has been written.
  std::size_t cursor_queue = 0;
  std::size_t cursor_piece = 0;
  std::size_t cursor_offset = 0;
  std::vector<std::uint8_t> cipher;  // TLS: ciphertext being written
  bool idle() const { return pending.empty() && held.empty() && writing.empty() && cipher.empty(); }
};

// A listener as connections see it: the broker's policy and, for TLS, the
// context and the handshake counters.
struct ListenerRuntime {
  broker::ListenerPolicy policy;
  std::shared_ptr<security::Reloadable<security::TlsServerContext>> tls;
  std::unique_ptr<security::TlsHandshakeMetrics> tls_metrics;  // with tls
};

// A TLS handshake (or an established TLS connection) failed: the reason, for the
// log. Hook for the audit stream (event "tls_failure").
void on_tls_failure(const ListenerRuntime& listener, const std::string& peer, const security::TlsEngine& tls,
                    bool was_established, security::AuditSink* audit) {
  spdlog::info("TLS {} with {} on {} failed: {}", was_established ? "connection" : "handshake", peer,
               listener.policy.name, tls.error());
  if (!audit) return;
  security::AuditEvent e;
  e.event = "tls.failure";
  e.listener = listener.policy.name;
  e.peer = peer;
  e.failure = security::to_slug(tls.failure());
  e.reason = tls.error();
  audit->emit(e);
}

// A reload withdrew the certificate of a live connection (revoked, or its CA no
// longer trusted), which is closed now: logged and audited.
void on_tls_certificate_withdrawn(const ListenerRuntime& listener, const std::string& peer,
                                  std::string_view client_id, const security::TlsEngine& tls,
                                  security::TlsFailure failure, const std::string& why,
                                  security::AuditSink* audit) {
  spdlog::warn("listener {}: closing the connection of {} (client id '{}', certificate serial {}): {}",
               listener.policy.name, peer, client_id, tls.peer_serial(), why);
  if (!audit) return;
  security::AuditEvent e;
  e.event = "tls.withdrawn";
  e.listener = listener.policy.name;
  e.peer = peer;
  e.client_id = client_id;
  e.identity = tls.peer_identity();
  e.failure = security::to_slug(failure);
  e.reason = why;
  audit->emit(e);
}

// One TCP connection. Lives on one loop; every handler runs on that loop's thread.
class Connection final : public broker::Transport, public std::enable_shared_from_this<Connection> {
 public:
  // `tls`: an engine moved from another loop with its connection; a new TLS
  // connection starts one from the listener's current context.
  Connection(Loop& loop, Fd socket, const ListenerRuntime& listener, std::string peer,
             std::vector<std::uint8_t> pending_input, security::TlsEngine tls,
             broker::ConnectionCounter::Slot slot);

  ~Connection() override;
  void start();
  // Readiness reported by the loop's epoll instance.
  void on_events(std::uint32_t events);
  bool is_tls() const { return static_cast<bool>(tls_); }
  // Closes the connection at once if the listener's current TLS context no
  // longer accepts its client certificate (after a reload).
  void recheck_certificate();

  // broker::Transport
  broker::OutputQueue& output() override { return writes().pending; }
  void flush_soon() override;
  // Writes the output held for store commits that are now durable and, with
  // `with_pending`, what this turn queued (the loop passes it only at the end of
  // a turn whose writes are all stored).
  void flush(bool with_pending);
  // Holds this turn's output until the store commit `epoch` is durable.
  void hold(std::uint64_t epoch);
  bool has_held() const { return ws_ && !ws_->held.empty(); }
  void close() override;
  void migrate(std::uint32_t shard) override { migrate_to_ = static_cast<std::uint16_t>(shard); }
  static constexpr std::uint16_t kStay = UINT16_MAX;  // migrate_to_: no move pending (threads <= 256)
  void run_off_loop(std::function<void()> work, std::function<void()> then) override;
  void run_async(std::function<void(std::function<void()> resume)> start,
                 std::function<void()> then) override;
  void run_after(std::chrono::milliseconds delay, std::function<void()> then) override;
  void resume_input() override;
  void hold_until_stored() override { needs_commit = true; }
  const std::string& peer() const override { return peer_; }
  std::string_view certificate_identity() const override {
    return tls_ && tls_.established() && !tls_.psk_used() ? std::string_view(tls_.peer_identity())
                                                            : std::string_view();
  }
  std::string_view psk_identity() const override {
    return tls_ && tls_.established() && tls_.psk_used() ? std::string_view(tls_.psk_identity())
                                                           : std::string_view();
  }
  std::string certificate_subject() const override {
    const X509* cert = tls_ && tls_.established() ? tls_.peer_certificate() : nullptr;
    return cert ? security::certificate_identity(cert, security::IdentityFrom::Subject) : std::string();
  }
  std::string certificate_fingerprint() const override {
    return tls_ && tls_.established() ? tls_.peer_fingerprint_sha256() : std::string();
  }

 private:
  // false: stop reading (the TLS connection failed).
  bool on_ciphertext(std::span<const std::uint8_t> bytes);
  void on_readable();
  void on_read_error(const error_code& ec);
  // Hands bytes just read to the broker; keeps (in in_) what it did not take yet.
  void take_input(std::span<const std::uint8_t> bytes);
  void keep_input(std::span<const std::uint8_t> bytes);
  void process_input();
  void on_written(const error_code& ec);
  // Ends the write in progress with `ec` from the loop, as an asynchronous
  // write would report it (not from inside the write call's caller).
  void end_write_later(const error_code& ec);
  // Writes writing_ from the cursor with gather writes until done or the socket
  // would block (then waits for writability and goes on).
  void write_plain();
  // TLS: writes the records in cipher from cursor_offset, the same way.
  void write_cipher();
  // What a write call's result `w` means: bytes written, an interrupted call
  // to repeat, or stop (the socket is full: the write goes on once it is
  // writable; or the write failed, reported from the loop as an asynchronous
  // write would be).
  enum class WriteStep : std::uint8_t { Wrote, Retry, Stop };
  WriteStep after_write(ssize_t w);
  void advance_cursor(std::size_t n);
  void encrypt_writing();
  // drain: send FIN and read until the peer closes; otherwise close at once.
  void finish_close(bool drain);
  void hand_over(std::uint32_t shard);
  // The socket is closed or handed over: nothing more happens here.
  void set_dead();
  void on_handshake_done();
  // Moves `from` into `to`, leaving `from` an empty queue with a reused buffer.
  void take_output(broker::OutputQueue& from, broker::OutputQueue& to);
  // Keeps the written queues for their buffers; gives the write state back to
  // the loop once nothing is left to write.
  void recycle_written();
  // The write state, lent by the loop if the connection holds none.
  WriteState& writes();
  // timer_, made if need be, set to expire `after` from now.
  void arm_timer(std::chrono::steady_clock::duration after);

  friend class Loop;  // watch() and unwatch() keep the fields below

  Loop& loop_;
  Fd fd_;
  // Bits beside the descriptor, in the 4 bytes its alignment leaves (only the
  // loop's thread touches a connection).
  bool close_notify_sent_ : 1 = false;
  bool handshake_done_ : 1 = false;  // counted in the listener's TlsHandshakeMetrics
  bool dirty_ : 1 = false;           // on the loop's list of connections to write
  bool write_active_ : 1 = false;
  bool wants_writable_ : 1 = false;     // a write would block: goes on once the socket is writable
  bool closing_ : 1 = false;            // no more input is handed to the broker
  bool draining_ : 1 = false;           // FIN sent; reading until the peer closes too
  bool dead_ : 1 = false;               // socket closed
  bool reading_paused_ : 1 = false;     // kMaxUntakenInput waits for a broker that takes none
  bool waiting_for_commit : 1 = false;  // on the loop's list of connections with held output
  bool needs_commit : 1 = false;        // this turn's output waits for this turn's commit
  std::uint16_t migrate_to_ = kStay;    // the shard the client identifier belongs to
  const ListenerRuntime& listener_;
  std::string peer_;
  security::TlsEngine tls_;
  // While the socket is in the loop's epoll instance: the loop's list of its
  // connections, and the reference that keeps this connection alive.
  Connection* prev_ = nullptr;
  Connection* next_ = nullptr;
  std::shared_ptr<Connection> watched_;
  // In place rather than on the heap of its own; made in start(), gone once the
  // connection is handed over.
  std::optional<broker::Client> client_;
  // Input the broker has not taken yet: the start of a packet still arriving,
  // or packets held while an asynchronous answer (authentication) is awaited.
  // Allocated while there is some (an idle connection holds nothing here).
  std::unique_ptr<std::vector<std::uint8_t>> in_;
  std::size_t held_input() const { return in_ ? in_->size() : 0; }
  std::unique_ptr<WriteState> ws_;  // null while there is nothing to write
  // The drain timeout, or a decision the broker waits for (run_after): a
  // drain that starts ends the wait, which no longer matters.
  std::unique_ptr<asio::steady_timer> timer_;
  broker::ConnectionCounter::Slot slot_;  // [limits] max_connections*, until destroyed
};

// Commits one loop's store writes on a thread of its own when a commit waits for
// the disk (durability "sync"): the loop goes on reading and routing during the
// fsync, and the writes of every turn that ends meanwhile are committed together
// by the next one (group commit across turns). Commits complete in the order
// submitted; `on_durable(epoch)` reports the last one stored.
class Committer {
 public:
  Committer(broker::Shard& shard, std::function<void(std::uint64_t)> on_durable)
      : shard_(shard), on_durable_(std::move(on_durable)), thread_([this] { run(); }) {}
  ~Committer() {
    {
      std::lock_guard l(mu_);
      stopping_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  Committer(const Committer&) = delete;
  Committer& operator=(const Committer&) = delete;

  // Returns the epoch that on_durable will report once `writes` are stored.
  std::uint64_t submit(store::Batch&& writes) {
    std::uint64_t epoch = 0;
    {
      std::lock_guard l(mu_);
      queued_.append(std::move(writes));
      epoch = ++submitted_;
    }
    cv_.notify_one();
    return epoch;
  }

 private:
  void run() {
    std::unique_lock l(mu_);
    for (;;) {
      cv_.wait(l, [this] { return stopping_ || !queued_.empty(); });
      if (queued_.empty()) return;  // stopping, nothing left to store
      store::Batch writes = std::move(queued_);
      queued_.clear();
      const std::uint64_t epoch = submitted_;
      l.unlock();
      shard_.commit(writes);  // thread-safe: it only writes the store
      on_durable_(epoch);
      l.lock();
    }
  }

  broker::Shard& shard_;
  std::function<void(std::uint64_t)> on_durable_;
  std::mutex mu_;
  std::condition_variable cv_;
  store::Batch queued_;
  std::uint64_t submitted_ = 0;
  bool stopping_ = false;
  std::thread thread_;  // last: starts once everything above exists
};

struct Bus;

class Loop {
 public:
  Loop(std::uint32_t index, broker::BrokerShared& shared, Bus& bus);
  // Releases the connections still watched (their sockets close), before the
  // io_context and the shard go.
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;
  asio::io_context& io() { return io_; }
  broker::Shard& shard() { return shard_; }
  std::uint32_t index() const { return index_; }
  Bus& bus() { return bus_; }

  // Called from any thread: queue a batch and wake the loop if it was idle.
  void enqueue(std::vector<broker::ShardEvent>&& batch);
  void start_ticks();
  // Waits for readiness of the loop's sockets; once, before the loop runs.
  void start_polling();
  // Registers the connection's socket for input and output, edge-triggered, and
  // keeps the connection alive until unwatch(). false: the socket could not be
  // registered (errno says why).
  bool watch(Connection& c);
  // Removes the socket from the epoll instance (before it closes or moves to
  // another loop); the connection is released once the current handler is done,
  // so that events already taken for it find it, dead.
  void unwatch(Connection& c);
  // Once per loop turn, behind every handler already queued: commit the shard's
  // store writes, send its cross-shard events, then write every connection that
  // has output. Nothing reaches a socket before the writes it depends on are stored.
  void schedule_end_turn();
  // After the loop's thread has stopped: stores the writes of a turn that did
  // not end (a ban, a session change made just before the stop), behind any
  // commit still running. Its output is not sent: the connections are closing.
  void store_unfinished_turn();
  void mark_dirty(std::shared_ptr<Connection> c);
  // Makes a connection of `socket` on this loop and starts it, from this loop's
  // thread: a new one from a listener, or one handed over by another loop with
  // its unread bytes and TLS session.
  void adopt(Fd socket, const ListenerRuntime& listener, std::string peer, std::vector<std::uint8_t> unread,
             security::TlsEngine tls, broker::ConnectionCounter::Slot slot);
  // The last store commit of this loop that is durable: output held for it or an
  // earlier one may be written.
  std::uint64_t durable_epoch() const { return durable_; }
  // Where the loop's connections read into (each consumes it before the next reads).
  std::vector<std::uint8_t>& read_buffer() { return read_buffer_; }
  // Write states for connections that have output (WriteState), reused: at most
  // as many are kept as were lent at once lately (those unused for a whole
  // tick are freed), and none with large buffers.
  std::unique_ptr<WriteState> lend_writes();
  void give_back_writes(std::unique_ptr<WriteState> ws);

  // Rechecks every TLS connection's client certificate, a batch per handler so
  // that the loop keeps serving in between.
  void recheck_tls();

 private:
  void drain_inbox();
  void poll();
  void tick();
  void end_turn();
  void on_durable(std::uint64_t epoch);
  void recheck_tls_batch(std::shared_ptr<std::vector<std::weak_ptr<Connection>>> list, std::size_t from);

  const std::uint32_t index_;
  Bus& bus_;
  // The shard outlives the io_context: handlers destroyed with the io_context
  // own connections whose Client refers to the shard.
  broker::Shard shard_;
  std::vector<std::uint8_t> read_buffer_ = std::vector<std::uint8_t>(kReadChunk);
  // Outlives io_: connections destroyed with its handlers may give theirs back.
  std::vector<std::unique_ptr<WriteState>> spare_writes_;
  std::size_t spare_writes_low_ = 0;  // the fewest spare since the last tick
  asio::io_context io_{1};
  asio::steady_timer ticker_{io_};
  // The epoll instance of the loop's sockets, and the connections watched in it
  // (Connection::prev_/next_).
  asio::posix::stream_descriptor poller_{io_};
  std::array<epoll_event, kEventsPerPoll> events_{};
  Connection* watched_ = nullptr;
  std::mutex inbox_mu_;
  std::vector<std::vector<broker::ShardEvent>> inbox_;
  std::vector<std::vector<broker::ShardEvent>> draining_;
  bool end_turn_posted_ = false;
  std::vector<std::shared_ptr<Connection>> dirty_;
  std::vector<std::shared_ptr<Connection>> writing_;
  // Asynchronous commits (Committer): epochs submitted and stored, the events
  // for other shards held until their epoch is stored, and the connections
  // holding output.
  std::uint64_t submitted_ = 0;
  std::uint64_t durable_ = 0;
  std::deque<std::pair<std::uint64_t, std::vector<std::vector<broker::ShardEvent>>>> held_events_;
  std::vector<std::shared_ptr<Connection>> waiting_;
  std::vector<std::shared_ptr<Connection>> released_;
  std::unique_ptr<Committer> committer_;  // after io_: it posts there until joined
};

struct Bus final : broker::ShardBus {
  std::vector<std::unique_ptr<Loop>>* loops = nullptr;
  asio::thread_pool* workers = nullptr;  // blocking work (password hashes) runs here
  void send(std::uint32_t to, std::vector<broker::ShardEvent>&& batch) override {
    (*loops)[to]->enqueue(std::move(batch));
  }
  void request_flush(std::uint32_t from) override { (*loops)[from]->schedule_end_turn(); }
};

Loop::Loop(std::uint32_t index, broker::BrokerShared& shared, Bus& bus)
    : index_(index), bus_(bus), shard_(index, shared, bus) {
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0)
    throw std::runtime_error(fmt::format("event loop {}: epoll_create1: {}", index, last_error().message()));
  poller_.assign(ep);
  if (shared.store && shared.store->commit_waits_for_disk())
    committer_ = std::make_unique<Committer>(
        shard_, [this](std::uint64_t epoch) { asio::post(io_, [this, epoch] { on_durable(epoch); }); });
}

void Loop::enqueue(std::vector<broker::ShardEvent>&& batch) {
  bool wake = false;
  {
    std::lock_guard lock(inbox_mu_);
    wake = inbox_.empty();
    inbox_.push_back(std::move(batch));
  }
  if (wake) asio::post(io_, [this] { drain_inbox(); });
}

void Loop::drain_inbox() {
  {
    std::lock_guard lock(inbox_mu_);
    if (inbox_.empty()) return;  // taken by poll() already
    draining_.swap(inbox_);
  }
  shard_.set_now(broker::Clock::now());
  for (auto& batch : draining_) shard_.apply(batch);
  draining_.clear();
}

void Loop::schedule_end_turn() {
  if (end_turn_posted_) return;
  end_turn_posted_ = true;
  asio::post(io_, [this] { end_turn(); });
}

void Loop::store_unfinished_turn() {
  broker::Shard::Turn turn = shard_.take_turn();
  if (turn.writes.empty()) return;
  if (committer_)
    committer_->submit(std::move(turn.writes));  // stored before the committer's thread ends
  else
    shard_.commit(turn.writes);
}

void Loop::mark_dirty(std::shared_ptr<Connection> c) {
  dirty_.push_back(std::move(c));
  schedule_end_turn();
}

void Loop::end_turn() {
  end_turn_posted_ = false;
  if (!committer_) {
    shard_.end_turn();  // commits at once (or stores nothing)
    writing_.swap(dirty_);
    for (auto& c : writing_) {
      c->needs_commit = false;
      c->flush(true);
    }
    writing_.clear();
    return;
  }
  broker::Shard::Turn turn = shard_.take_turn();
  shard_.send_events(turn.index_events);  // before any output of this turn (Shard::Turn)
  if (!turn.writes.empty()) submitted_ = committer_->submit(std::move(turn.writes));
  writing_.swap(dirty_);
  if (submitted_ == durable_) {
    // Nothing of this turn or an earlier one is waiting for the disk.
    shard_.send_events(turn.events);
  } else {
    // Events for other shards carry deliveries stored in this turn: they wait for
    // its commit, and those of later turns queue behind them.
    held_events_.emplace_back(submitted_, std::move(turn.events));
  }
  for (auto& c : writing_) {
    if (c->needs_commit && submitted_ != durable_) {
      c->flush(false);  // output held for commits stored meanwhile
      c->hold(submitted_);
      if (!c->waiting_for_commit) {
        c->waiting_for_commit = true;
        waiting_.push_back(c);
      }
    } else {
      // Output that reports nothing unstored goes now, unless older output of
      // this connection is still held (then it follows that, in order).
      c->flush(true);
    }
    c->needs_commit = false;
  }
  writing_.clear();
}

void Loop::on_durable(std::uint64_t epoch) {
  durable_ = epoch;
  shard_.set_now(broker::Clock::now());
  while (!held_events_.empty() && held_events_.front().first <= durable_) {
    shard_.send_events(held_events_.front().second);
    held_events_.pop_front();
  }
  released_.swap(waiting_);
  for (auto& c : released_) {
    c->waiting_for_commit = false;
    c->flush(false);
    if (c->has_held()) {  // held for a later commit still running
      c->waiting_for_commit = true;
      waiting_.push_back(c);
    }
  }
  released_.clear();
}

void Loop::recheck_tls() {
  auto list = std::make_shared<std::vector<std::weak_ptr<Connection>>>();
  for (Connection* c = watched_; c; c = c->next_)
    if (c->is_tls()) list->push_back(c->weak_from_this());
  recheck_tls_batch(std::move(list), 0);
}

void Loop::recheck_tls_batch(std::shared_ptr<std::vector<std::weak_ptr<Connection>>> list, std::size_t from) {
  constexpr std::size_t kBatch = 256;  // a chain verification costs ~0.1 ms
  shard_.set_now(broker::Clock::now());
  const std::size_t end = std::min(list->size(), from + kBatch);
  for (std::size_t i = from; i < end; ++i)
    if (auto c = (*list)[i].lock()) c->recheck_certificate();
  if (end < list->size())
    asio::post(io_,
               [this, list = std::move(list), end]() mutable { recheck_tls_batch(std::move(list), end); });
}

void Loop::start_ticks() {
  ticker_.expires_after(kTickInterval);
  ticker_.async_wait([this](const error_code& ec) {
    if (ec) return;
    tick();
  });
}

void Loop::start_polling() {
  poller_.async_wait(asio::posix::stream_descriptor::wait_read, [this](const error_code& ec) {
    if (!ec) poll();
  });
}

void Loop::poll() {
  const int n = ::epoll_wait(poller_.native_handle(), events_.data(), kEventsPerPoll, 0);
  if (n < 0 && errno != EINTR)  // a bad descriptor: the loop could serve no connection
    throw std::runtime_error(fmt::format("epoll_wait: {}", last_error().message()));
  // Events from other loops that were queued before these bytes arrived are
  // applied first, as Asio would run their handler before a later readiness:
  // a SUBACK leaves only once the subscription is queued to every loop, and a
  // message published after it must find it in this loop's index.
  drain_inbox();
  // A connection unwatched by another's events stays alive until this handler
  // returns (unwatch), and ignores its own events then.
  for (int i = 0; i < n; ++i) static_cast<Connection*>(events_[i].data.ptr)->on_events(events_[i].events);
  // More events than were taken leave the descriptor readable: the wait ends at once.
  start_polling();
}

bool Loop::watch(Connection& c) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
  ev.data.ptr = &c;
  if (::epoll_ctl(poller_.native_handle(), EPOLL_CTL_ADD, c.fd_.get(), &ev) != 0) return false;
  c.watched_ = c.shared_from_this();
  c.prev_ = nullptr;
  c.next_ = watched_;
  if (watched_) watched_->prev_ = &c;
  watched_ = &c;
  return true;
}

void Loop::unwatch(Connection& c) {
  if (!c.watched_) return;
  ::epoll_ctl(poller_.native_handle(), EPOLL_CTL_DEL, c.fd_.get(), nullptr);
  (c.prev_ ? c.prev_->next_ : watched_) = c.next_;
  if (c.next_) c.next_->prev_ = c.prev_;
  c.prev_ = c.next_ = nullptr;
  asio::post(io_, [keep = std::move(c.watched_)] {});
}

Loop::~Loop() {
  std::vector<std::shared_ptr<Connection>> release;
  while (Connection* c = watched_) {
    watched_ = c->next_;
    c->prev_ = c->next_ = nullptr;
    release.push_back(std::move(c->watched_));
  }
  release.clear();  // their sockets close, their clients leave the shard
}

void Loop::tick() {
  shard_.tick(broker::Clock::now());
  // Spare write states that no connection needed during a whole tick go.
  spare_writes_.resize(spare_writes_.size() - spare_writes_low_);
  spare_writes_low_ = spare_writes_.size();
  start_ticks();
}

std::unique_ptr<WriteState> Loop::lend_writes() {
  if (spare_writes_.empty()) return std::make_unique<WriteState>();
  auto ws = std::move(spare_writes_.back());
  spare_writes_.pop_back();
  spare_writes_low_ = std::min(spare_writes_low_, spare_writes_.size());
  return ws;
}

void Loop::give_back_writes(std::unique_ptr<WriteState> ws) {
  // Buffers past this stay with no connection: a burst to one client does not
  // leave the loop holding its size.
  constexpr std::size_t kKeepBytes = std::size_t{64} * 1024;
  constexpr std::size_t kKeepQueues = 4;
  const auto large = [](const broker::OutputQueue& q) {
    return q.buffer().capacity() + q.pieces().capacity() * sizeof(broker::OutputQueue::Piece) > kKeepBytes;
  };
  if (large(ws->pending)) ws->pending = broker::OutputQueue{};
  for (auto& q : ws->spare)
    if (large(q)) q = broker::OutputQueue{};
  ws->held.clear();
  if (ws->writing.capacity() > kKeepQueues) std::vector<broker::OutputQueue>().swap(ws->writing);
  if (ws->cipher.capacity() > kKeepBytes) std::vector<std::uint8_t>().swap(ws->cipher);
  ws->cipher.clear();
  spare_writes_.push_back(std::move(ws));
}

std::string format_peer(const sockaddr_storage& address, socklen_t length) {
  tcp::endpoint ep;
  if (length > ep.capacity() || (address.ss_family != AF_INET && address.ss_family != AF_INET6))
    return "unknown";
  std::memcpy(ep.data(), &address, length);
  ep.resize(length);
  const auto addr = ep.address();
  return addr.is_v6() ? fmt::format("[{}]:{}", addr.to_string(), ep.port())
                      : fmt::format("{}:{}", addr.to_string(), ep.port());
}

void set_nodelay(int fd) {
  const int on = 1;  // Nagle + delayed ACK would cost 40 ms per stall
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

Connection::Connection(Loop& loop, Fd socket, const ListenerRuntime& listener, std::string peer,
                       std::vector<std::uint8_t> pending_input, security::TlsEngine tls,
                       broker::ConnectionCounter::Slot slot)
    : loop_(loop),
      fd_(std::move(socket)),
      listener_(listener),
      peer_(std::move(peer)),
      tls_(std::move(tls)),
      in_(pending_input.empty() ? nullptr
                                : std::make_unique<std::vector<std::uint8_t>>(std::move(pending_input))),
      slot_(std::move(slot)) {
  if (!tls_ && listener_.tls) tls_ = security::TlsEngine(listener_.tls->load(), broker::Clock::now());
  // An engine that moved here with its connection was counted where it finished.
  handshake_done_ = tls_ && tls_.state() != security::TlsState::Handshaking;
}

Connection::~Connection() = default;

void Connection::set_dead() {
  dead_ = true;
  loop_.unwatch(*this);
  if (wants_writable_) {
    // The write that waited for room ends as an aborted one.
    wants_writable_ = false;
    end_write_later(asio::error::operation_aborted);
  }
}

void Connection::start() {
  client_.emplace(loop_.shard(), *this, listener_.policy);
  // A connection that moved here may have missed a recheck that both loops ran
  // while it was on its way.
  if (handshake_done_ && &tls_.context() != listener_.tls->load().get()) recheck_certificate();
  if (held_input() > 0 && !closing_) {
    // Bytes read on the loop that accepted the connection, CONNECT first.
    process_input();
    if (dead_) return;
  }
  // The socket is non-blocking (accept4): on_readable reads until it would block.
  if (!loop_.watch(*this)) {
    const auto ec = last_error();
    spdlog::warn("cannot watch the connection of {}: {}", peer_, ec.message());
    on_read_error(ec);
  }
}

void Connection::on_events(std::uint32_t events) {
  if (dead_) return;
  if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && wants_writable_) {
    wants_writable_ = false;
    if (tls_)
      write_cipher();
    else
      write_plain();
    if (dead_) return;
  }
  if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable();
}

void Connection::on_readable() {
  if (dead_) return;
  auto& buffer = loop_.read_buffer();
  for (int i = 0; i < kReadsPerWake; ++i) {
    if (held_input() >= kMaxUntakenInput && client_ && !client_->takes_input() && !closing_) {
      reading_paused_ = true;  // resume_input() reads on
      return;
    }
    const ssize_t r = ::recv(fd_.get(), buffer.data(), buffer.size(), 0);
    if (r < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return;  // the next edge brings more
      return on_read_error(from_errno(err));
    }
    if (r == 0) return on_read_error(asio::error::eof);
    const auto n = static_cast<std::size_t>(r);
    if (closing_) {
      in_.reset();  // discard what arrives after we decided to close
      continue;
    }
    if (tls_) {
      if (!on_ciphertext({buffer.data(), n})) return;
    } else {
      loop_.shard().set_now(broker::Clock::now());
      take_input({buffer.data(), n});
    }
    if (migrate_to_ != kStay || dead_) return;
    if (n < buffer.size()) return;
  }
  // More may be waiting: read it after the loop's other work (no edge will say so).
  asio::post(loop_.io(), [self = shared_from_this()] { self->on_readable(); });
}

void Connection::on_read_error(const error_code& ec) {
  if (!closing_) {
    if (ec != asio::error::eof && ec != asio::error::connection_reset)
      spdlog::debug("read error from {}: {}", peer_, ec.message());
    closing_ = true;
    client_->on_disconnected();  // publishes the will; its close() is a no-op now
  }
  finish_close(false);
}

void Connection::keep_input(std::span<const std::uint8_t> bytes) {
  if (bytes.empty()) return;
  if (!in_) in_ = std::make_unique<std::vector<std::uint8_t>>();
  in_->insert(in_->end(), bytes.begin(), bytes.end());
}

void Connection::take_input(std::span<const std::uint8_t> bytes) {
  if (held_input() > 0) {
    keep_input(bytes);
    return process_input();
  }
  // Nothing held: the broker reads straight from the loop's buffer.
  const std::size_t used = client_->on_bytes(bytes);
  keep_input(bytes.subspan(used));
  if (migrate_to_ != kStay) hand_over(migrate_to_);
}

// TLS: decrypt what arrived; MQTT bytes join the plaintext input.
bool Connection::on_ciphertext(std::span<const std::uint8_t> bytes) {
  const auto now = broker::Clock::now();
  const bool was_established = tls_.established();
  tls_.feed(bytes, now);
  if (!handshake_done_ && tls_.state() != security::TlsState::Handshaking) on_handshake_done();
  if (tls_.has_ciphertext()) flush_soon();  // handshake flights, alerts
  if (tls_.state() == security::TlsState::Failed) {
    on_tls_failure(listener_, peer_, tls_, was_established, loop_.shard().shared().audit.get());
    closing_ = true;
    client_->on_disconnected();
    flush_soon();  // flush() sends the alert, if any, then closes
    return false;
  }
  if (dead_ || closing_) return !dead_;  // closed by the recheck in on_handshake_done
  if (!was_established && tls_.established())
    spdlog::debug("TLS with {}: {} {}{}{}", peer_, tls_.version(), tls_.cipher(),
                  tls_.resumed() ? ", resumed" : "",
                  tls_.peer_identity().empty() ? std::string() : ", identity " + tls_.peer_identity());
  if (tls_.has_plaintext()) {
    // Copied out first: a hand-over moves the engine, and its buffer with it.
    keep_input(tls_.take_plaintext());
    loop_.shard().set_now(now);
    process_input();
    if (migrate_to_ != kStay || dead_) return false;
  }
  if (tls_.peer_closed()) {
    on_read_error(asio::error::eof);
    return false;
  }
  return true;
}

void Connection::on_handshake_done() {
  handshake_done_ = true;
  listener_.tls_metrics->record(tls_);
  // A handshake that began before a reload ran against the old context: check
  // the certificate against the current one, as the live connections were.
  if (tls_.established() && &tls_.context() != listener_.tls->load().get()) recheck_certificate();
}

void Connection::recheck_certificate() {
  if (dead_ || closing_ || !tls_ || !tls_.established() || !tls_.peer_certificate() || !client_) return;
  const auto current = listener_.tls->load();
  std::string why;
  const auto failure = current->recheck(tls_, &why);
  if (failure == security::TlsFailure::None) return;
  const broker::Session* session = client_->session();
  on_tls_certificate_withdrawn(listener_, peer_, session ? std::string_view(session->client_id) : "", tls_,
                               failure, why, loop_.shard().shared().audit.get());
  listener_.tls_metrics->record_closed_revoked();
  // Nothing more reaches this client: what is queued is dropped, the will is
  // published (an abnormal end), a close_notify and FIN follow at once.
  closing_ = true;
  if (ws_) {
    ws_->pending.clear();
    ws_->held.clear();
  }
  client_->on_disconnected();
  tls_.close_notify();
  close_notify_sent_ = true;
  flush_soon();
}

void Connection::process_input() {
  if (in_) {
    const std::size_t used = client_->on_bytes(*in_);
    in_->erase(in_->begin(), in_->begin() + static_cast<std::ptrdiff_t>(used));
    if (in_->empty()) in_.reset();  // idle: hold nothing
  }
  if (migrate_to_ != kStay) hand_over(migrate_to_);
}

void Connection::resume_input() {
  if (dead_ || closing_) return;
  process_input();
  if (reading_paused_ && !dead_ && client_ && client_->takes_input()) {
    // No edge comes for bytes that waited in the socket: read them now.
    reading_paused_ = false;
    asio::post(loop_.io(), [self = shared_from_this()] { self->on_readable(); });
  }
}

void Connection::hand_over(std::uint32_t shard) {
  // The socket moves to the loop that owns the client identifier, out of this
  // loop's epoll instance and into the other's; the unread bytes travel with it.
  set_dead();
  client_.reset();
  std::vector<std::uint8_t> rest = in_ ? std::move(*in_) : std::vector<std::uint8_t>();
  in_.reset();
  // A TLS session moves with its socket: the engine is plain memory, not bound to a loop.
  (*loop_.bus().loops)[shard]->adopt(std::move(fd_), listener_, std::exchange(peer_, {}), std::move(rest),
                                     std::move(tls_), std::move(slot_));
}

void Loop::adopt(Fd socket, const ListenerRuntime& listener, std::string peer,
                 std::vector<std::uint8_t> unread, security::TlsEngine tls,
                 broker::ConnectionCounter::Slot slot) {
  asio::post(io_, [this, fd = std::move(socket), &listener, peer = std::move(peer),
                   unread = std::move(unread), tls = std::move(tls), slot = std::move(slot)]() mutable {
    shard_.set_now(broker::Clock::now());
    std::make_shared<Connection>(*this, std::move(fd), listener, std::move(peer), std::move(unread),
                                 std::move(tls), std::move(slot))
        ->start();
  });
}

// Work handed to other threads holds the connection only weakly: the last
// reference to a Connection must drop on its own loop (its Client leaves the
// shard in its destructor). While authentication runs, the loop's watch keeps
// the connection alive; once it is gone, `then` is skipped.
void Connection::run_off_loop(std::function<void()> work, std::function<void()> then) {
  asio::post(*loop_.bus().workers, [weak = weak_from_this(), io = &loop_.io(), work = std::move(work),
                                    then = std::move(then)]() mutable {
    work();
    asio::post(*io, [weak, then = std::move(then)] {
      const auto self = weak.lock();
      if (!self || self->dead_ || !self->client_) return;
      self->loop_.shard().set_now(broker::Clock::now());
      then();
    });
  });
}

void Connection::run_async(std::function<void(std::function<void()> resume)> start,
                           std::function<void()> then) {
  // `resume` may be called from any thread, once: it posts `then` back here.
  auto resume = [weak = weak_from_this(), io = &loop_.io(), then = std::move(then)]() mutable {
    asio::post(*io, [weak, then = std::move(then)] {
      const auto self = weak.lock();
      if (!self || self->dead_ || !self->client_) return;
      self->loop_.shard().set_now(broker::Clock::now());
      then();
    });
  };
  start(std::move(resume));
}

void Connection::run_after(std::chrono::milliseconds delay, std::function<void()> then) {
  if (draining_ || dead_) return;  // closing: nothing waits for a decision; keep the drain timeout
  arm_timer(delay);
  timer_->async_wait([self = shared_from_this(), then = std::move(then)](const error_code& ec) {
    if (ec || self->dead_ || !self->client_) return;
    self->loop_.shard().set_now(broker::Clock::now());
    then();
  });
}

void Connection::arm_timer(std::chrono::steady_clock::duration after) {
  if (!timer_) timer_ = std::make_unique<asio::steady_timer>(loop_.io());
  timer_->expires_after(after);  // a wait still pending ends with operation_aborted
}

void Connection::flush_soon() {
  if (dirty_ || dead_) return;
  dirty_ = true;
  loop_.mark_dirty(shared_from_this());
}

WriteState& Connection::writes() {
  if (!ws_) ws_ = loop_.lend_writes();
  return *ws_;
}

void Connection::take_output(broker::OutputQueue& from, broker::OutputQueue& to) {
  to.swap(from);
  if (!ws_->spare.empty()) {
    from.swap(ws_->spare.back());
    ws_->spare.pop_back();
  }
}

void Connection::hold(std::uint64_t epoch) {
  if (!ws_ || ws_->pending.empty() || dead_) return;
  take_output(ws_->pending, ws_->held.emplace_back(epoch, broker::OutputQueue{}).second);
}

void Connection::flush(bool with_pending) {
  dirty_ = false;
  if (write_active_ || dead_) return;
  // What may go now, oldest first: output held for commits that are stored, then
  // (only when nothing older is held) this turn's.
  const std::uint64_t durable = loop_.durable_epoch();
  bool all_out = true;
  if (ws_) {
    auto& held = ws_->held;
    while (!held.empty() && held.front().first <= durable) {
      ws_->writing.push_back(std::move(held.front().second));
      held.pop_front();
    }
    if (with_pending && held.empty() && !ws_->pending.empty())
      take_output(ws_->pending, ws_->writing.emplace_back());
    all_out = held.empty() && ws_->pending.empty();
  }
  if (tls_) {
    // Encrypt what may go, then write the records.
    encrypt_writing();
    recycle_written();
    if (closing_ && all_out && !close_notify_sent_ && tls_.established()) {
      tls_.close_notify();
      close_notify_sent_ = true;
    }
    if (!tls_.has_ciphertext()) {
      if (closing_ && all_out && !draining_) finish_close(true);
      return;
    }
    writes().cipher = tls_.take_ciphertext();  // empty since the last write (on_written)
    write_active_ = true;
    ws_->cursor_offset = 0;
    write_cipher();
    return;
  }
  if (!ws_ || ws_->writing.empty()) {
    recycle_written();
    if (closing_ && all_out && !draining_) finish_close(true);
    return;
  }
  write_active_ = true;
  ws_->cursor_queue = ws_->cursor_piece = ws_->cursor_offset = 0;
  write_plain();
}

// Each SSL write makes at least one record: small pieces (headers, packet
// identifiers, short messages) are gathered first, so a turn's output becomes
// few full records rather than one per piece.
void Connection::encrypt_writing() {
  if (!ws_) return;
  thread_local std::vector<std::uint8_t> plain;
  plain.clear();
  for (const auto& q : ws_->writing)
    for (const auto& p : q.pieces()) {
      const std::span<const std::uint8_t> bytes{q.piece_data(p), p.size};
      if (!plain.empty() && plain.size() + bytes.size() > kTlsRecord) {
        tls_.write(plain);
        plain.clear();
      }
      if (bytes.size() >= kTlsRecord) {
        tls_.write(bytes);
      } else {
        plain.insert(plain.end(), bytes.begin(), bytes.end());
      }
    }
  if (!plain.empty()) tls_.write(plain);
  if (plain.capacity() > 4 * kTlsRecord) std::vector<std::uint8_t>().swap(plain);
}

void Connection::write_cipher() {
  auto& cipher = ws_->cipher;
  while (ws_->cursor_offset < cipher.size()) {
    const ssize_t w = ::send(fd_.get(), cipher.data() + ws_->cursor_offset,
                             cipher.size() - ws_->cursor_offset, MSG_NOSIGNAL);
    if (const auto step = after_write(w); step != WriteStep::Wrote) {
      if (step == WriteStep::Retry) continue;
      return;
    }
    ws_->cursor_offset += static_cast<std::size_t>(w);
  }
  on_written({});
}

Connection::WriteStep Connection::after_write(ssize_t w) {
  if (w >= 0) return WriteStep::Wrote;
  const int err = errno;
  if (err == EINTR) return WriteStep::Retry;
  if (err == EAGAIN || err == EWOULDBLOCK) {
    wants_writable_ = true;
  } else {
    end_write_later(from_errno(err));
  }
  return WriteStep::Stop;
}

void Connection::end_write_later(const error_code& ec) {
  asio::post(loop_.io(), [self = shared_from_this(), ec] { self->on_written(ec); });
}

void Connection::write_plain() {
  thread_local std::array<iovec, kMaxIov> iov;
  const int fd = fd_.get();
  const auto& writing = ws_->writing;
  for (;;) {
    std::size_t n = 0;
    std::size_t qi = ws_->cursor_queue;
    std::size_t pi = ws_->cursor_piece;
    std::size_t off = ws_->cursor_offset;
    while (qi < writing.size() && n < iov.size()) {
      const auto& q = writing[qi];
      if (pi == q.pieces().size()) {
        ++qi;
        pi = 0;
        continue;
      }
      const auto& p = q.pieces()[pi];
      // writev takes non-const bases; the kernel only reads them.
      iov[n].iov_base =
          const_cast<std::uint8_t*>(q.piece_data(p)) + off;  // NOLINT(cppcoreguidelines-pro-type-const-cast)
      iov[n].iov_len = p.size - off;
      ++n;
      ++pi;
      off = 0;
    }
    if (n == 0) break;
    msghdr msg{};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = n;
    const ssize_t w = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (const auto step = after_write(w); step != WriteStep::Wrote) {
      if (step == WriteStep::Retry) continue;
      return;
    }
    advance_cursor(static_cast<std::size_t>(w));
  }
  on_written({});
}

void Connection::advance_cursor(std::size_t n) {
  WriteState& w = *ws_;
  while (n > 0 && w.cursor_queue < w.writing.size()) {
    const auto& pieces = w.writing[w.cursor_queue].pieces();
    if (w.cursor_piece == pieces.size()) {
      ++w.cursor_queue;
      w.cursor_piece = 0;
      continue;
    }
    const std::size_t left = pieces[w.cursor_piece].size - w.cursor_offset;
    if (n < left) {
      w.cursor_offset += n;
      return;
    }
    n -= left;
    ++w.cursor_piece;
    w.cursor_offset = 0;
  }
}

void Connection::recycle_written() {
  if (!ws_) return;
  for (auto& q : ws_->writing) {
    q.clear();
    if (ws_->spare.size() < 2) ws_->spare.push_back(std::move(q));
  }
  ws_->writing.clear();
  if (!write_active_ && ws_->idle()) loop_.give_back_writes(std::move(ws_));
}

void Connection::on_written(const error_code& ec) {
  write_active_ = false;
  // Not kept: an idle TLS connection holds no write buffer.
  if (ws_ && tls_) std::vector<std::uint8_t>().swap(ws_->cipher);
  recycle_written();
  if (dead_) return;
  if (ec) {
    if (!closing_) {
      closing_ = true;
      client_->on_disconnected();
    }
    return finish_close(false);
  }
  // More output may have been queued meanwhile; it goes out with the next end of
  // turn (after its store commit), never straight from here.
  if (ws_ || closing_) flush_soon();
}

void Connection::close() {
  if (closing_) return;
  closing_ = true;
  flush_soon();  // flush() finishes the close once output is out
}

void Connection::finish_close(bool drain) {
  if (dead_) return;
  if (drain && !draining_) {
    // Send FIN, then read until the peer closes (or a short timeout), so that bytes
    // it sent meanwhile do not turn our close into a reset that loses the last
    // packet we wrote (a CONNACK with an error code, for instance).
    draining_ = true;
    if (::shutdown(fd_.get(), SHUT_WR) == 0) {
      arm_timer(kDrainTimeout);
      timer_->async_wait([self = shared_from_this()](const error_code& tec) {
        if (!tec) self->finish_close(false);
      });
      return;
    }
  }
  set_dead();
  if (timer_) timer_->cancel();
  fd_.reset();
}

}  // namespace

struct Server::Impl {
  ServerOptions options;
  broker::BrokerShared& shared;
  Bus bus;
  std::vector<std::unique_ptr<Loop>> loops;
  std::vector<std::unique_ptr<ListenerRuntime>> policies;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  std::vector<std::unique_ptr<asio::steady_timer>> retry_timers;
  std::vector<std::thread> threads;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  std::atomic<std::uint32_t> next_loop{0};
  asio::thread_pool workers{2};
  std::once_flag stopped;

  Impl(ServerOptions o, broker::BrokerShared& s) : options(std::move(o)), shared(s) {}
  ~Impl();
  void accept(std::size_t i);
  // [auth.defence]: false (and the socket closed) for a banned address or one
  // over its connection rate.
  // [limits] max_connections*: on admission `slot` holds the connection's place.
  bool admit(std::size_t i, Fd& s, const std::string& peer, broker::ConnectionCounter::Slot& slot);
};

bool Server::Impl::admit(std::size_t i, Fd& s, const std::string& peer,
                         broker::ConnectionCounter::Slot& slot) {
  if (shared.connections) {
    const auto a = shared.connections->acquire(security::peer_address(peer), slot);
    if (a != broker::ConnectionCounter::Admission::Admit) {
      const bool total = a == broker::ConnectionCounter::Admission::TotalFull;
      const auto l = total ? broker::Limit::Connections : broker::Limit::ConnectionsPerAddress;
      if (const auto n = shared.limit_stats.hit(l, broker::Clock::now(), shared.limits.log_interval))
        broker::report_limit(
            l, n, peer, {},
            total ? fmt::format("{} connections open; refused at accept on listener {}",
                                shared.connections->max_total(), policies[i]->policy.name)
                  : fmt::format("{} connections open from this address; refused at accept on "
                                "listener {}",
                                shared.connections->max_per_address(), policies[i]->policy.name));
      s.reset();
      return false;
    }
  }
  const auto address = security::peer_address(peer);
  if (!shared.defence || !policies[i]->policy.defence.covers(address)) return true;
  const auto v = shared.defence->admit_connection(address, broker::Clock::now());
  if (v.admission == security::AuthThrottle::Admission::Admit) return true;
  const char* why = v.admission == security::AuthThrottle::Admission::Banned ? "address banned"
                                                                             : "connection rate exceeded";
  if (v.report) {
    spdlog::info("listener {}: refusing connections from {}: {}{}", policies[i]->policy.name, address, why,
                 v.suppressed ? fmt::format(" ({} more refused since the last report)", v.suppressed) : "");
    if (shared.audit) {
      security::AuditEvent e;
      e.event = "connection.refused";
      e.listener = policies[i]->policy.name;
      e.peer = peer;
      e.address = address;
      e.reason = why;
      e.suppressed = static_cast<std::int64_t>(v.suppressed);
      shared.audit->emit(e);
    }
  }
  // Closed at once: no TLS handshake, no MQTT, nothing to spend on this peer.
  s.reset();
  return false;
}

// Accepts up to kAcceptsPerWake connections each time the listening socket is
// readable, and deals them to the loops in turn.
void Server::Impl::accept(std::size_t i) {
  constexpr int kAcceptsPerWake = 64;
  acceptors[i]->async_wait(tcp::acceptor::wait_read, [this, i](const error_code& ec) {
    if (ec == asio::error::operation_aborted) return;
    // Out of descriptors or memory: back off rather than spin on the error.
    const auto back_off = [this, i](const error_code& why) {
      spdlog::warn("listener {}: accept failed: {}", policies[i]->policy.name, why.message());
      retry_timers[i]->expires_after(std::chrono::milliseconds(100));
      retry_timers[i]->async_wait([this, i](const error_code& tec) {
        if (!tec) accept(i);
      });
    };
    if (ec) return back_off(ec);
    for (int k = 0; k < kAcceptsPerWake; ++k) {
      sockaddr_storage address{};
      socklen_t length = sizeof address;
      Fd s(::accept4(
          acceptors[i]->native_handle(),
          reinterpret_cast<sockaddr*>(&address),  // NOLINT(cppcoreguidelines-pro-type-reinterpret-cast)
          &length, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!s) {
        const int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK) break;
        // The peer gave up before the accept, or its network failed: next one.
        if (err == EINTR || err == ECONNABORTED || err == EPROTO || err == ENETDOWN || err == ENETUNREACH ||
            err == EHOSTDOWN || err == EHOSTUNREACH || err == ENONET || err == ENOPROTOOPT ||
            err == EOPNOTSUPP)
          continue;
        return back_off(from_errno(err));
      }
      auto peer = format_peer(address, length);
      broker::ConnectionCounter::Slot slot;
      if (!admit(i, s, peer, slot)) continue;
      set_nodelay(s.get());
      loops[next_loop++ % loops.size()]->adopt(std::move(s), *policies[i], std::move(peer), {}, {},
                                               std::move(slot));
    }
    accept(i);
  });
}

Server::Server(ServerOptions options, broker::BrokerShared& shared)
    : impl_(std::make_unique<Impl>(std::move(options), shared)) {
  auto& m = *impl_;
  m.bus.loops = &m.loops;
  m.bus.workers = &m.workers;
  for (std::uint32_t i = 0; i < m.options.threads; ++i) {
    m.loops.push_back(std::make_unique<Loop>(i, shared, m.bus));
    shared.all_stats.push_back(&m.loops.back()->shard().stats());
  }
  for (const auto& l : m.options.listeners) {
    auto p = std::make_unique<ListenerRuntime>();
    p->policy.name = l.name;
    for (const auto& a : l.auth) p->policy.auth.add(a);
    p->policy.clientid = l.clientid;
    p->policy.acl_slot = l.acl_slot;
    p->policy.defence = l.defence;
    p->tls = l.tls;
    if (p->tls) {
      p->tls_metrics = std::make_unique<security::TlsHandshakeMetrics>();
      shared.tls_metrics.emplace_back(l.name, p->tls_metrics.get());
    }
    m.policies.push_back(std::move(p));
  }
}

Server::~Server() {
  stop();
}

void Server::start() {
  auto& m = *impl_;
  asio::io_context& accept_io = m.loops[0]->io();
  for (std::size_t i = 0; i < m.options.listeners.size(); ++i) {
    const auto& spec = m.options.listeners[i];
    error_code ec;
    const auto addr = asio::ip::make_address(spec.host, ec);
    if (ec) throw std::runtime_error(fmt::format("listener {}: bad address '{}'", spec.name, spec.host));
    tcp::endpoint ep(addr, spec.port);
    auto acc = std::make_unique<tcp::acceptor>(accept_io);
    acc->open(ep.protocol(), ec);
    if (!ec) acc->set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec && addr.is_v6()) acc->set_option(asio::ip::v6_only(true), ec);
    if (!ec) acc->bind(ep, ec);
    if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
    if (!ec) acc->non_blocking(true, ec);  // accept() takes connections until none is left
    if (ec)
      throw std::runtime_error(fmt::format("listener {}: cannot listen on {}:{}: {}", spec.name, spec.host,
                                           spec.port, ec.message()));
    const auto bound = acc->local_endpoint();
    spdlog::info("listening on {}:{} (listener \"{}\", {})",
                 addr.is_v6() ? "[" + addr.to_string() + "]" : addr.to_string(), bound.port(), spec.name,
                 spec.tls ? "tls" : "tcp");
    m.acceptors.push_back(std::move(acc));
    m.retry_timers.push_back(std::make_unique<asio::steady_timer>(accept_io));
  }
  for (std::size_t i = 0; i < m.acceptors.size(); ++i) m.accept(i);
  for (auto& l : m.loops) {
    m.guards.emplace_back(l->io().get_executor());
    l->start_ticks();
    l->start_polling();
  }
  for (auto& l : m.loops) {
    Loop* lp = l.get();
    m.threads.emplace_back([lp] {
      try {
        lp->io().run();
      } catch (const std::exception& e) {
        spdlog::critical("event loop {} stopped: {}", lp->index(), e.what());
        std::abort();
      }
    });
  }
}

void Server::stop() {
  auto& m = *impl_;
  std::call_once(m.stopped, [&m] {
    for (auto& l : m.loops) l->io().stop();
    for (auto& t : m.threads)
      if (t.joinable()) t.join();
    for (auto& l : m.loops) l->store_unfinished_turn();
    m.workers.stop();
    m.workers.join();
  });
}

Server::Impl::~Impl() {
  // Acceptors and timers belong to loop 0's io_context: release them first. Then
  // each loop destroys its pending handlers (and their connections), then its shard.
  acceptors.clear();
  retry_timers.clear();
  guards.clear();
  loops.clear();
}

void Server::restore(const store::Snapshot& snapshot) {
  for (auto& l : impl_->loops) {
    l->shard().set_now(broker::Clock::now());
    l->shard().restore(snapshot);
  }
}

std::vector<std::uint16_t> Server::ports() const {
  std::vector<std::uint16_t> out;
  for (const auto& a : impl_->acceptors) out.push_back(a->local_endpoint().port());
  return out;
}

std::vector<Server::TlsListenerMetrics> Server::tls_metrics() const {
  std::vector<TlsListenerMetrics> out;
  for (const auto& p : impl_->policies)
    if (p->tls_metrics) out.push_back({p->policy.name, p->tls_metrics.get()});
  return out;
}

void Server::recheck_tls_connections() {
  for (auto& l : impl_->loops) {
    Loop* lp = l.get();
    asio::post(lp->io(), [lp] { lp->recheck_tls(); });
  }
}

broker::ShardStats::Snapshot Server::totals() const {
  broker::ShardStats::Snapshot t{};
  for (const auto& l : impl_->loops) t += l->shard().stats().snapshot();
  return t;
}

}  // namespace moat::net
