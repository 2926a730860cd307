// The MQTT protocol state machine of one event loop ("shard"), free of sockets.
//
// A Shard owns the sessions whose client identifier hashes to it, a replica of the
// subscription index, and the Clients (network connections) attached to it. net/
// feeds it bytes and events and implements Transport (per connection) and ShardBus
// (between loops). Everything here runs on the shard's own thread; other shards are
// reached only through ShardBus, in batches.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <variant>
#include <vector>

#include "broker/connections.hpp"
#include "broker/fifo.hpp"
#include "broker/inflight.hpp"
#include "broker/intrusive_table.hpp"
#include "broker/lazy_vector.hpp"
#include "broker/limits.hpp"
#include "broker/message.hpp"
#include "broker/output.hpp"
#include "broker/packet_id_set.hpp"
#include "broker/payload_policy.hpp"
#include "broker/retained.hpp"
#include "broker/stats.hpp"
#include "broker/subscription_index.hpp"
#include "codec/decoder.hpp"
#include "security/acl.hpp"
#include "security/audit.hpp"
#include "security/authn.hpp"
#include "security/clientid.hpp"
#include "security/defence.hpp"
#include "security/flapping.hpp"
#include "store/store.hpp"

namespace moat::security {
struct TlsHandshakeMetrics;
}

namespace moat::broker {

class Shard;
class Session;

// One network connection, as the broker sees it. Implemented by net/.
class Transport {
 public:
  virtual ~Transport() = default;
  // Bytes queued here are written at the end of the loop turn, in one gather write.
  virtual OutputQueue& output() = 0;
  virtual void flush_soon() = 0;
  // Write what is queued, then close. The broker sends nothing more afterwards.
  virtual void close() = 0;
  // Hand the connection, with its unconsumed input, to another shard's loop.
  virtual void migrate(std::uint32_t shard) = 0;
  virtual const std::string& peer() const = 0;
  // TLS: the identity the client certificate or the PSK gave, empty otherwise.
  virtual std::string_view certificate_identity() const { return {}; }
  virtual std::string_view psk_identity() const { return {}; }
  // TLS: the client certificate's subject (RFC 2253) and SHA-256 fingerprint
  // (lowercase hex of the DER), empty without a client certificate.
  virtual std::string certificate_subject() const { return {}; }
  virtual std::string certificate_fingerprint() const { return {}; }
  // Runs `work` where it may block (a worker thread), then `then` back on this
  // connection's loop, unless the connection has gone. The default runs both now.
  virtual void run_off_loop(std::function<void()> work, std::function<void()> then) {
    work();
    then();
  }
  // Asynchronous work (an authenticator that answers through a callback):
  // `start` runs now and gets `resume`, which any thread may call once when the
  // work is done; `then` then runs on this connection's loop, unless the
  // connection has gone. The default runs `then` inside `resume`.
  virtual void run_async(std::function<void(std::function<void()> resume)> start,
                         std::function<void()> then) {
    start([then = std::move(then)] { then(); });
  }
  // Runs `then` on this connection's loop after `delay` (a held refusal),
  // unless the connection has gone. The default runs it now.
  virtual void run_after(std::chrono::milliseconds delay, std::function<void()> then) {
    (void)delay;
    then();
  }
  // Input held while authentication ran may be handled again.
  virtual void resume_input() {}
  // The output queued so far reports state written to the store in this loop
  // turn (a PUBACK for a stored message, a QoS 2 PUBLISH whose packet id was
  // stored, ...): it must reach the socket only once that state is durable.
  // Output queued without it may be written before the turn's commit completes.
  virtual void hold_until_stored() {}
};

// Per listener: what a connection accepted there is allowed to do.
struct ListenerPolicy {
  std::string name;
  security::AuthChain auth;
  // Client identifiers each identity may use; null: any.
  std::shared_ptr<security::Reloadable<security::ClientIdRules>> clientid;
  // The access policy and the remote authorizer of connections that come in
  // here: 0 is [acl] and [auth.http] (BrokerShared::acl, ::authorizer), n > 0
  // a listener with its own [listener.acl] or [listener.http]
  // (BrokerShared::listener_access[n - 1]). Resolved once, when the listener
  // is made, so that no check looks a policy up by name.
  std::uint32_t acl_slot = 0;
  // Which peers the brute-force defence (BrokerShared::defence) judges here.
  security::DefenceScope defence{};
};

// Events sent between shards, applied in the order sent.
struct DeliverEvent {
  std::uint64_t session_id;
  MessagePtr message;
  codec::QoS qos;
  std::uint64_t seq;  // store sequence number when stored for a durable session, else 0
};
struct SubscribeEvent {
  std::string filter;
  Subscriber subscriber;
  // The retained store's version when the subscriber's loop looked up the
  // filter's retained messages (RetainedStore::changed_since).
  std::uint64_t retained_seen = 0;
};
struct UnsubscribeEvent {
  std::string filter;
  std::uint64_t session_id;
};
struct SessionGoneEvent {
  std::uint64_t session_id;
};
using ShardEvent = std::variant<DeliverEvent, SubscribeEvent, UnsubscribeEvent, SessionGoneEvent>;

class ShardBus {
 public:
  virtual ~ShardBus() = default;
  // Thread-safe. Delivers the batch to shard `to`, which applies it in order with
  // Shard::apply(); batches from one sender arrive in the order sent.
  virtual void send(std::uint32_t to, std::vector<ShardEvent>&& batch) = 0;
  // Ask for Shard::end_turn() on shard `from` once the current loop turn is done,
  // and to write the connections' output only after it.
  virtual void request_flush(std::uint32_t from) = 0;
};

// State shared by every shard, fixed at start-up (the stores are thread-safe).
struct BrokerShared {
  Limits limits;
  RetainedStore retained;
  store::Store* store = nullptr;  // null: nothing is stored
  std::uint32_t shard_count = 1;
  // Broker-wide counters for stored messages and sessions (restored at start-up).
  std::atomic<std::uint64_t> next_seq{1};
  std::atomic<std::uint64_t> next_session_id{1};
  // $SYS/broker/... statistics, published retained by shard 0 (0 s = off).
  std::chrono::seconds sys_interval{10};
  std::string version;
  std::vector<const ShardStats*> all_stats;  // every shard's counters, for $SYS
  // [acl] file and [[acl.rule]]: null when none is configured (everything
  // allowed); swapped on reload.
  std::shared_ptr<security::Reloadable<security::AccessPolicy>> acl;
  // How the connections of a listener with its own [listener.acl] or
  // [listener.http] are judged: ACL slot n (ListenerPolicy::acl_slot) is
  // listener_access[n - 1].
  struct ListenerAccess {
    // [listener.acl], or [acl] (the same object as `acl`) for a listener
    // without one; null when none is configured; swapped on reload.
    std::shared_ptr<security::Reloadable<security::AccessPolicy>> acl;
    // [listener.http] with authorize = true, or [auth.http]'s (the same object
    // as `authorizer`) for a listener without [listener.http]; null: none.
    std::shared_ptr<security::RemoteAuthorizer> authorizer;
  };
  std::vector<ListenerAccess> listener_access;
  // [auth.defence]: backoff, bans and connection rates; null = off.
  std::shared_ptr<security::AuthThrottle> defence;
  // [log] audit: the security event stream; null = none.
  std::shared_ptr<security::AuditSink> audit;
  // Each TLS listener's handshake counters (name, counters), for
  // $SYS/broker/tls/<listener>/...; filled by net before the loops start.
  std::vector<std::pair<std::string, const security::TlsHandshakeMetrics*>> tls_metrics;
  // [[payload_policy]]: null when none is configured; swapped on reload.
  std::shared_ptr<security::Reloadable<PayloadPolicies>> payload;
  // [auth.http] authorize: the IAM server decides the publishes and
  // subscriptions the local rules have no rule for (ACL slot 0; listeners
  // with [listener.http] have their own, in listener_access); null = none.
  std::shared_ptr<security::RemoteAuthorizer> authorizer;
  // Limits hit (docs/limits.md), counted and reported by every loop and net.
  LimitStats limit_stats;
  // [limits] flapping_*: null = off.
  std::shared_ptr<security::FlapDetector> flapping;
  // [limits] max_connections, max_connections_per_address: slots taken by net at
  // accept; null = not counted.
  std::shared_ptr<ConnectionCounter> connections;
};

// Which shard owns a client identifier: every connection with that identifier
// is moved there after CONNECT, so takeover and session state stay loop-local.
std::uint32_t shard_of(std::string_view client_id, std::uint32_t shard_count);

class Client;

class Session {
 public:
  enum class OutState : std::uint8_t { AwaitPuback, AwaitPubrec, AwaitPubcomp };
  struct Inflight {
    std::uint16_t packet_id;
    OutState state;
    MessagePtr message;  // to resend on resume: null in a clean session, and once PUBREC came
    codec::QoS qos;
    bool retain;
    std::uint64_t seq;  // store key, 0 when not stored
    // The store holds its packet id and state in an entry apart from the
    // message (Batch::put_inflight); deleted with the message.
    bool inflight_entry = true;
  };
  struct Queued {
    MessagePtr message;
    codec::QoS qos;
    bool retain;
    std::uint64_t seq;
  };

  Session(std::string cid, std::uint64_t session_id, bool clean)
      : client_id(std::move(cid)), id(session_id), clean_session(clean) {}

  // The small fields sit together: every session is allocated, so padding
  // between them is paid once per connection (docs/benchmarks.md).
  const std::string client_id;
  const std::uint64_t id;
  bool clean_session;
  bool durable() const { return !clean_session; }
  bool own_acl_only = false;
  bool superuser = false;  // the IAM server said so for the last connection
  // False for a session restored at start-up until its client is back: the
  // store keeps no identity, so what it may receive is decided then (resume).
  bool identity_known = true;
  // Every topic each subscription can match may be received (security::
  // allows_every_match), worked out under ACL version `coverage_version` (0:
  // not yet, or the subscriptions or the identity changed since).
  bool receive_covered = false;
  std::uint16_t next_packet_id = 1;
  // The access policy and remote authorizer of the last connection's listener
  // (ListenerPolicy::acl_slot).
  std::uint32_t acl_slot = 0;
  std::uint64_t coverage_version = 0;
  Client* client = nullptr;  // null while offline
  std::string username;      // authenticated identity of the last connection (ACL)
  // The last connection's own ACL rules (a JWT's ACL claim), null if none.
  std::shared_ptr<const security::OrderedRules> own_acl;
  security::Identity identity() const {
    return {username, client_id, own_acl.get(), own_acl_only, superuser};
  }
  // Recent authorization decisions of the connected client (freed while offline).
  security::AccessCache access;
  TimePoint offline_since{};  // for session expiry
  LazyMap<std::string, codec::QoS, std::less<>> subscriptions;
  InflightWindow<Inflight> inflight;  // in the order sent (at most max_inflight_messages)
  Fifo<Queued> queue;                 // waiting for the client or a window slot
  std::uint64_t queued_bytes = 0;     // topic + payload bytes in `queue`
  PacketIdSet awaiting_pubrel;        // inbound QoS 2 [MQTT-4.3.3-2]
  // The shard's tables of sessions by client identifier and by id link their
  // sessions through these (Shard::SessionsByName, Shard::SessionsById).
  Session* next_by_name = nullptr;
  Session* next_by_id = nullptr;
};

class Client {
 public:
  Client(Shard& shard, Transport& transport, const ListenerPolicy& listener);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Decodes and handles every complete packet; returns the bytes consumed. After
  // close or migrate it consumes nothing more.
  std::size_t on_bytes(std::span<const std::uint8_t> data);
  // The network connection ended without the broker closing it.
  void on_disconnected();
  // Keep-alive and CONNECT deadlines; called by Shard::tick.
  void check_deadlines(TimePoint now);

  bool connected() const { return state_ == State::Connected; }
  // on_bytes() would decode input now: not while the CONNECT awaits
  // authentication or a packet the remote authorizer's answer.
  bool takes_input() const {
    return state_ != State::Closed && state_ != State::Authenticating && !migrating_ && !held_;
  }
  Session* session() const { return session_; }
  Transport& transport() { return transport_; }

 private:
  friend class Shard;
  enum class State : std::uint8_t { AwaitConnect, Authenticating, Connected, Closed };
  struct PendingConnect {
    std::string client_id;
    bool clean_session = true;
    std::uint16_t keep_alive = 0;
    codec::ProtocolVersion version = codec::ProtocolVersion::V311;
    std::optional<std::string> username;
    std::optional<std::string> password;
    std::optional<MessagePtr> will;
    std::string certificate_identity;
    std::string psk_identity;
    std::string certificate_subject;
    std::string certificate_fingerprint;
  };
  enum class CloseKind : std::uint8_t { Normal, Abnormal };

  void handle(const codec::Packet& p);
  void handle_connect(const codec::Connect& c);
  security::ConnectInfo connect_info(const PendingConnect& pc) const;
  // Asks authenticator `i` of the listener's chain and goes on from its answer.
  void auth_step(std::size_t i);
  // The chain's answer: client-id binding, throttle, audit, then CONNACK.
  void auth_done(security::AuthResult auth);
  void finish_connect(const security::AuthResult& auth);
  // The persistent session this CONNECT resumes when its subscriptions must be
  // decided again: this listener has a remote authorizer, and they were not
  // granted by it to this identity. Null otherwise.
  const Session* regranted_session(const PendingConnect& pc) const;
  security::Identity identity(const Session& s) const {
    return {identity_, s.client_id, s.own_acl.get(), own_acl_only_, superuser_};
  }
  // The decision for one request of this client. Ask: the remote authorizer
  // must be asked; the request is noted in asked_ and the packet being handled
  // must have no effect (it is handled again once the answers are in).
  enum class Access : std::uint8_t { Allow, Deny, Ask };
  Access check(const security::Identity& who, security::AccessCache* cache, security::Action action,
               std::string_view topic);
  bool has_unanswered() const;
  // Asks the remote authorizer every unanswered request in asked_ and holds
  // the input meanwhile. Returns true when every answer came at once; otherwise
  // `ready` runs on the loop once they are all in (or denied at auth_timeout).
  bool ask_remote(const security::Identity& who, std::function<void()> ready);
  // Fills listener, peer and client id, and emits (when an audit log is configured).
  void audit(security::AuditEvent& e) const;
  void handle_publish(const codec::Publish& p);
  // The topic's payload policy for a PUBLISH or will (client_payload.cpp): the
  // message to route (the plaintext when the policy decrypts), or null when the
  // policy refuses it, which is counted and audited here.
  MessagePtr admit_payload(std::string_view topic, std::string_view payload, codec::QoS qos, bool retain,
                           std::string_view action);
  void handle_ack(const codec::Ack& a);
  void handle_subscribe(const codec::Subscribe& s);
  void handle_unsubscribe(const codec::Unsubscribe& u);
  void protocol_error(codec::ProtocolError e);
  void refuse_connect(codec::ConnectReturnCode code, std::string_view why);
  // Detaches from the session, publishes the will unless `kind` is Normal, and
  // closes the transport.
  void close(CloseKind kind, const char* reason);
  void send(const codec::Packet& p);

  Shard& shard_;
  Transport& transport_;
  const ListenerPolicy& listener_;
  // The flags and the keep-alive sit beside decoder_ (every connection has a Client).
  State state_ = State::AwaitConnect;
  bool migrating_ : 1 = false;
  bool own_acl_only_ : 1 = false;
  bool superuser_ : 1 = false;
  bool auth_deferred_ : 1 = false;  // authentication left the loop turn: resume input afterwards
  bool held_ : 1 = false;           // input held until every asked_ has its answer
  bool asking_ : 1 = false;         // inside ask_remote: answers arriving now need no `ready`
  std::uint16_t keep_alive_s_ = 0;  // of the CONNECT, in seconds (0: none)
  codec::DecoderOptions decoder_;
  TimePoint last_packet_at_;  // set when accepted, then at each packet
  Session* session_ = nullptr;
  Client* prev_ = nullptr;  // the shard's list of clients (Shard::clients_)
  Client* next_ = nullptr;
  MessagePtr will_;                                        // null without a will
  std::string client_id_;                                  // for logs
  std::string identity_;  // authenticated user name (ACL identity); the rules from the
                          // authenticator (JWT) are the session's own_acl
  std::uint32_t auth_step_id_ = 0;  // the asynchronous step being awaited (its timeout checks it)
  std::uint32_t hold_id_ = 0;       // the current hold (late answers of an older one are ignored)
  // Requests of the packet being handled that the remote authorizer decides.
  struct Asked {
    security::Action action;
    std::string topic;
    std::optional<security::RemoteAuthorizer::Answer> answer;
  };
  LazyVector<Asked> asked_;  // empty unless a remote authorizer is asked
  std::shared_ptr<PendingConnect> pending_;
  std::uint64_t writes_mark_ = 0;  // Shard::writes_made() when the current packet began
  // payload.reject audit lines of this connection: at most kPayloadAuditBurst per
  // kPayloadAuditWindow, the rest counted and reported with the next line.
  // Allocated at the first refusal (every connection has a Client).
  struct PayloadAudit {
    TimePoint since{};
    std::uint32_t lines = 0;
    std::uint64_t suppressed = 0;
  };
  std::unique_ptr<PayloadAudit> payload_audit_;
};

class Shard {
 public:
  Shard(std::uint32_t index, BrokerShared& shared, ShardBus& bus);
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  std::uint32_t index() const { return index_; }
  // The loop's clock, set by net before it dispatches events (a fake clock in tests).
  void set_now(TimePoint now) { now_ = now; }
  TimePoint now() const { return now_; }

  // Restores this shard's persistent sessions from the store (start-up).
  void restore(const store::Snapshot& snapshot);
  // Applies a batch from another shard.
  void apply(std::vector<ShardEvent>& batch);
  // The end of a loop turn: commits this turn's store writes, then sends the
  // events queued for other shards. Output that depends on the writes (acks,
  // deliveries) must be written to sockets only after this returns.
  void end_turn();
  // The same in two steps, for a loop that commits on another thread: take this
  // turn's writes and events, send the index events at once, commit the
  // writes, and only once they are stored send the deliveries (send_events)
  // and write the output of the turn.
  //
  // Index events (subscribe, unsubscribe, session gone) change the other
  // loops' replicas of the subscription index and carry nothing stored, so
  // they never wait for a commit: a SUBACK must not reach its client before
  // every loop routes to the new subscription, or a message published on
  // another loop right after the SUBACK would miss it. They are independent
  // of deliveries (a delivery names a session of its destination loop, an
  // index event one of its source loop), so overtaking held deliveries
  // reorders nothing a client can see.
  struct Turn {
    store::Batch writes;
    std::vector<std::vector<ShardEvent>> index_events;  // per destination shard
    std::vector<std::vector<ShardEvent>> events;        // deliveries, per destination shard
  };
  Turn take_turn();
  void send_events(std::vector<std::vector<ShardEvent>>& events);
  // Commits `writes` now, on the calling thread; a store that cannot be written
  // stops the broker (acknowledging what is not stored would break QoS 1/2).
  void commit(const store::Batch& writes);
  // Deadlines of every client; call a few times per second.
  void tick(TimePoint now);

  // Routes a message to every matching subscription, local or on other shards.
  void route(const MessagePtr& m) { route(m, m->topic); }
  // The same, matching `topic`: the bytes of m->topic where the caller still has
  // them in the cache. A PUBLISH just decoded has its topic in the input, while
  // the message's copy was just written to a block that may have gone cold:
  // reading it there first waits for those writes (with 1 KiB payloads and deep
  // queues, about a tenth of the broker's CPU per delivery).
  void route(const MessagePtr& m, std::string_view topic);
  // Routes to one matching subscription.
  void route_to(const Subscriber& sub, const MessagePtr& m);

  // The ACL's decision (the identity's own rules first) under the policy of
  // slot `acl_slot` (ListenerPolicy::acl_slot); true when nothing is configured.
  bool allowed(const security::Identity& who, std::uint32_t acl_slot, security::Action action,
               std::string_view topic) const {
    return security::authorize(acls_[acl_slot].policy.get(), who, action, topic) == security::Decision::Allow;
  }
  // The decision for one request: superuser, own rules, the ACL of slot
  // `acl_slot` (the listener's), then the cached answer of that slot's remote
  // authorizer. Allow or Deny, or nullopt when the slot's remote authorizer
  // must be asked (never for Receive: a subscription it granted receives what
  // it matches).
  // `cache`: the session's recent decisions, or null.
  std::optional<security::Decision> access(const security::Identity& who, std::uint32_t acl_slot,
                                           security::AccessCache* cache, security::Action action,
                                           std::string_view topic);
  // Keeps a remote answer in the session's cache (made under slot `acl_slot`).
  void remember(security::AccessCache& cache, std::uint32_t acl_slot, security::Action action,
                std::string_view topic, const security::RemoteAuthorizer::Answer& a) {
    cache.put(action, topic, a.decision, acls_[acl_slot].version, a.expires);
  }
  // The remote authorizer of slot `acl_slot` (the listener's IAM server); null: none.
  security::RemoteAuthorizer* authorizer(std::uint32_t acl_slot) const {
    return acls_[acl_slot].remote.get();
  }
  // This loop's snapshot of the topic payload policies; null when none.
  const PayloadPolicies* payload_policies() const { return payload_.get(); }
  ShardStats& stats() { return stats_; }
  const ShardStats& stats() const { return stats_; }
  // Counts a limit hit (docs/limits.md); non-zero when it is to be reported now
  // (the number of hits the report stands for).
  std::uint64_t limit_hit(Limit l) { return shared_.limit_stats.hit(l, now_, shared_.limits.log_interval); }
  // Store operations recorded so far (ever): output queued after this number
  // changed reports something written (Transport::hold_until_stored).
  std::uint64_t writes_made() const { return writes_made_; }
  const SubscriptionIndex& subscription_index() const { return subs_; }
  std::size_t session_count() const { return sessions_.size(); }
  Session* find_session(std::string_view client_id);
  BrokerShared& shared() { return shared_; }

 private:
  friend class Client;

  void request_end_turn();
  void add_client(Client* c);
  void remove_client(Client* c);
  Session& open_session(const std::string& client_id, bool clean, bool& present);
  void destroy_session(Session& s);
  // `retained_seen`: the retained store's version when the caller looked up
  // the filter's retained messages, before this call (RetainedStore::match).
  void subscribe(Session& s, std::string_view filter, codec::QoS qos, std::uint64_t retained_seen);
  void unsubscribe(Session& s, std::string_view filter);
  // Removes subscriptions the session may no longer hold (decided again at
  // its reconnect) and drops the queued messages that none of the rest
  // matches; returns how many were dropped.
  std::size_t revoke_subscriptions(Session& s, std::span<const std::string> filters);
  void persist(const Session& s);
  void persist_retained(const MessagePtr& m);
  // A ban of the brute-force defence, kept across restarts (its end in wall-clock time).
  void persist_ban(const security::Ban& b);
  // A payload policy's replay mark for one sender (store::ReplayMarkRecord),
  // of use for `keep` (max_age + max_future), then erased by tick().
  void persist_replay_mark(std::string_view scope, std::string_view sender, std::uint64_t mark,
                           std::chrono::seconds keep);
  void sweep_replay_marks();
  // A failure counter of the brute-force defence (its count towards a ban or
  // its backoff) or a flapping count, kept across restarts; failures 0 forgets
  // it. They ride the turn's commit (a refusal sent after them waits for it,
  // as any reply sent after a store write does).
  void persist_failures(const security::FailureCounter& c);
  void forget_failures(std::string_view key);
  // A client's retained message (PUBLISH or will) within max_retained_messages
  // and max_retained_bytes: stored and persisted, or counted and reported.
  void retain(const MessagePtr& m, std::string_view peer, std::string_view client_id);
  // This turn's store writes; asks for end_turn() so they get committed.
  store::Batch& writes();
  void deliver_local(std::uint64_t session_id, const MessagePtr& m, codec::QoS qos, std::uint64_t seq,
                     bool matched_here);
  // Whether s's subscriptions can only match topics it may receive (then a
  // delivery matched here needs no receive check); worked out again when the
  // ACL, the subscriptions or the identity changed.
  bool receive_covered(Session& s);
  void broadcast(const ShardEvent& e);
  void queue_event(std::uint32_t to, ShardEvent&& e);
  std::string assign_client_id();
  void publish_sys();
  void publish_tls_sys();

  // Session delivery (the session's owner shard only).
  // seq != 0: already stored for this session (the router did it); a durable
  // session stores other QoS 1/2 deliveries (retained on subscribe) itself.
  // `matched_here`: m was matched against this shard's index, which holds the
  // session's subscriptions as they are now (not an event from another shard,
  // routed against a subscription the session may have dropped since).
  void deliver(Session& s, const MessagePtr& m, codec::QoS qos, bool retain, std::uint64_t seq = 0,
               bool matched_here = false);
  void enqueue(Session& s, Session::Queued q);
  Session::Queued dequeue(Session& s);
  // Counts and (rate-limited) logs a message dropped because the queue was full.
  void dropped_queue_full(Session& s, std::uint64_t seq);
  void send_publish(Session& s, const MessagePtr& m, codec::QoS qos, bool retain, std::uint64_t seq);
  void acknowledged(Session& s, const Session::Inflight& f);
  void expire_sessions();
  void pump(Session& s);
  void resume(Session& s);  // after reconnect: resend in-flight, then the queue
  // The first reconnect of a session restored at start-up: drops from its queue
  // what the identity now known may not receive.
  void check_restored_queue(Session& s);
  // Keeps the queued messages `keep` accepts, in order; drops the others (and
  // their stored copies). Returns how many were dropped.
  std::size_t filter_queue(Session& s, const std::function<bool(const Session::Queued&)>& keep);

  const std::uint32_t index_;
  BrokerShared& shared_;
  ShardBus& bus_;
  TimePoint now_{};
  ShardStats stats_;
  SubscriptionIndex subs_;
  struct SessionsByName {
    static std::string_view key(const Session& s) { return s.client_id; }
    static std::size_t hash(std::string_view k) { return std::hash<std::string_view>{}(k); }
    static Session*& link(Session& s) { return s.next_by_name; }
  };
  struct SessionsById {
    static std::uint64_t key(const Session& s) { return s.id; }
    static std::size_t hash(std::uint64_t k) { return k ^ (k >> 32); }  // ids are counted up
    static Session*& link(Session& s) { return s.next_by_id; }
  };
  // Every session of this shard is in both tables, owned by the shard:
  // adopt_session() takes it, destroy_session() and ~Shard delete it.
  IntrusiveTable<Session, std::string_view, SessionsByName> sessions_;
  IntrusiveTable<Session, std::uint64_t, SessionsById> sessions_by_id_;
  Session& adopt_session(std::unique_ptr<Session> s);
  // The attached clients, linked through Client::prev_/next_ (no node each).
  Client* clients_ = nullptr;
  // Sessions whose queue overflowed: when their last "queue full" warning was
  // logged and how many drops since (kept here, not in every Session, which
  // then fits a smaller allocation; erased with the session).
  struct DropWarning {
    TimePoint last{};
    std::uint64_t drops = 0;
  };
  std::unordered_map<std::uint64_t, DropWarning> drop_warnings_;
  std::vector<std::vector<ShardEvent>> outboxes_;        // deliveries
  std::vector<std::vector<ShardEvent>> index_outboxes_;  // subscription index changes
  bool flush_requested_ = false;
  store::Batch batch_;
  std::uint64_t writes_made_ = 0;
  // Replay marks this loop stored (by store::replay_mark_key) with the time
  // each stops being of use, and the same keys oldest first. At most
  // kMaxSweptMarks: marks beyond are removed at the next start-up instead.
  std::unordered_map<std::string, TimePoint> marks_kept_;
  std::deque<std::pair<TimePoint, std::string>> marks_by_age_;
  TimePoint next_mark_sweep_{};
  // This loop's snapshots of the access policies, by slot (0: [acl], n:
  // BrokerShared::listener_access[n - 1]), refreshed by tick(), with the
  // slot's remote authorizer. Each snapshot has its own version, drawn from
  // one counter of the loop, so no two slots (nor two versions of one policy)
  // ever share a version: an AccessCache entry stamped under one policy or
  // one IAM server is never served under another, even where two slots share
  // a policy, and a reload of one listener's ACL leaves the decisions cached
  // under the others.
  struct AclSlot {
    std::shared_ptr<const security::AccessPolicy> policy;  // null: nothing configured
    std::uint64_t version = 0;
    std::shared_ptr<security::RemoteAuthorizer> remote;  // null: none
  };
  std::vector<AclSlot> acls_;
  std::uint64_t next_acl_version_ = 1;
  std::shared_ptr<const PayloadPolicies> payload_;  // likewise
  std::vector<Subscriber> match_scratch_;
  TimePoint started_at_{};
  TimePoint next_sys_{};
  // Completed handshakes per TLS listener at the last $SYS publication.
  std::vector<std::uint64_t> tls_handshakes_before_;
  TimePoint tls_sys_at_{};
  TimePoint next_expiry_check_{};
  TimePoint next_ban_check_{};
  TimePoint next_flap_check_{};
};

}  // namespace moat::broker
