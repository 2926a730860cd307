#include "broker/shard.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include "broker/limit_checks.hpp"
#include "codec/topic.hpp"

#include <random>
#include <utility>

#include "security/tls.hpp"

namespace moat::broker {

using codec::QoS;

namespace {
constexpr auto kDropWarningInterval = std::chrono::seconds(10);
constexpr auto kExpiryCheckInterval = std::chrono::seconds(1);
// Replay marks a loop keeps track of to erase them once of no use (about 150
// bytes each).
constexpr std::size_t kMaxSweptMarks = 100000;

// When a restored session went offline, on this process's steady clock: from
// the wall-clock time its record keeps, or now for records without one (older
// versions, or a session connected when moatd stopped).
TimePoint offline_since(const store::SessionRecord& r, TimePoint now) {
  if (r.offline_since_unix_ms == 0) return now;
  // A wall clock set back since then counts as no time offline.
  return std::min(now, store::from_unix_ms(static_cast<std::int64_t>(r.offline_since_unix_ms), now));
}
}  // namespace

std::uint32_t shard_of(std::string_view client_id, std::uint32_t shard_count) {
  if (shard_count <= 1) return 0;
  // FNV-1a: stable, cheap, and independent of the standard library's hash.
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : client_id) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return static_cast<std::uint32_t>(h % shard_count);
}

Shard::Shard(std::uint32_t index, BrokerShared& shared, ShardBus& bus)
    : index_(index),
      shared_(shared),
      bus_(bus),
      now_(Clock::now()),
      outboxes_(shared.shard_count),
      index_outboxes_(shared.shard_count),
      payload_(shared.payload ? shared.payload->load() : nullptr) {
  acls_.push_back({shared.acl ? shared.acl->load() : nullptr, next_acl_version_++, shared.authorizer});
  for (const auto& l : shared.listener_access)
    acls_.push_back({l.acl ? l.acl->load() : nullptr, next_acl_version_++, l.authorizer});
}

Shard::~Shard() {
  std::vector<Session*> all;
  all.reserve(sessions_.size());
  sessions_.for_each([&](Session& s) { all.push_back(&s); });
  for (Session* s : all) delete s;  // NOLINT(cppcoreguidelines-owning-memory): adopt_session() took it
}

Session* Shard::find_session(std::string_view client_id) {
  return sessions_.find(client_id);
}

Session& Shard::adopt_session(std::unique_ptr<Session> s) {
  Session& ref = *s.release();
  sessions_.insert(ref);
  sessions_by_id_.insert(ref);
  stats_.sessions.add();
  return ref;
}

std::string Shard::assign_client_id() {
  // Random, and chosen so that it hashes to this shard: the connection stays here.
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  for (;;) {
    std::string id = fmt::format("moat-{:016x}", rng());
    if (shard_of(id, shared_.shard_count) == index_ && !find_session(id)) return id;
  }
}

Session& Shard::open_session(const std::string& client_id, bool clean, bool& present) {
  present = false;
  if (Session* found = sessions_.find(client_id)) {
    Session& old = *found;
    // [MQTT-3.1.2-4] resume a persistent session; [MQTT-3.1.2-6] clean 1 discards it.
    if (!clean && !old.clean_session) {
      present = true;
      return old;
    }
    destroy_session(old);
  }
  // Unique across shards and restarts (the counter is restored from the store).
  const std::uint64_t id = shared_.next_session_id.fetch_add(1, std::memory_order_relaxed);
  Session& ref = adopt_session(std::make_unique<Session>(client_id, id, clean));
  if (!clean) persist(ref);
  return ref;
}

void Shard::add_client(Client* c) {
  c->prev_ = nullptr;
  c->next_ = clients_;
  if (clients_) clients_->prev_ = c;
  clients_ = c;
}

void Shard::remove_client(Client* c) {
  if (c->prev_)
    c->prev_->next_ = c->next_;
  else
    clients_ = c->next_;
  if (c->next_) c->next_->prev_ = c->prev_;
  c->prev_ = c->next_ = nullptr;
}

void Shard::destroy_session(Session& s) {
  subs_.remove_session(s.id);
  broadcast(SessionGoneEvent{s.id});
  if (s.durable() && shared_.store) writes().erase_session(s.client_id, s.id);
  sessions_by_id_.erase(s);
  sessions_.erase(s);
  drop_warnings_.erase(s.id);
  stats_.sessions.sub();
  delete &s;  // NOLINT(cppcoreguidelines-owning-memory): adopt_session() took it
}

void Shard::persist(const Session& s) {
  if (!s.durable() || !shared_.store) return;
  store::SessionRecord r;
  r.client_id = s.client_id;
  r.session_id = s.id;
  for (const auto& [filter, qos] : s.subscriptions)
    r.subscriptions.emplace_back(filter, static_cast<std::uint8_t>(qos));
  if (!s.client && s.offline_since != TimePoint{}) {
    r.offline_since_unix_ms =
        static_cast<std::uint64_t>(store::to_unix_ms(std::min(s.offline_since, now_), now_));
  }
  writes().put_session(r);
}

void Shard::persist_retained(const MessagePtr& m) {
  if (!shared_.store) return;
  if (m->payload.empty())
    writes().erase_retained(m->topic);
  else
    writes().put_retained(
        {std::string(m->topic), std::string(m->payload), static_cast<std::uint8_t>(m->qos)});
}

std::optional<security::Decision> Shard::access(const security::Identity& who, std::uint32_t acl_slot,
                                                security::AccessCache* cache, security::Action action,
                                                std::string_view topic) {
  using security::Decision;
  if (who.superuser) return Decision::Allow;
  const AclSlot& slot = acls_[acl_slot];
  security::RemoteAuthorizer* remote = slot.remote.get();
  const security::AccessPolicy* acl = slot.policy.get();
  if (!acl && !who.own && !remote) return Decision::Allow;  // nothing to check
  if (cache)
    if (auto d = cache->find(action, topic, slot.version, now_)) return d;
  const security::AccessPolicy::Resolved* resolved =
      cache && acl ? cache->resolved(*acl, who, slot.version) : nullptr;
  auto d = security::decide_locally(acl, who, action, topic, resolved);
  auto expires = TimePoint::max();
  if (!d) {
    if (!remote) {
      d = acl ? Decision::Deny : Decision::Allow;
    } else if (action == security::Action::Receive) {
      d = Decision::Allow;  // the remote authorizer granted the subscription
    } else if (auto a = remote->cached(who, action, topic, now_)) {
      d = a->decision;
      expires = a->expires;
    } else {
      return std::nullopt;
    }
  }
  if (cache) cache->put(action, topic, *d, slot.version, expires);
  return d;
}

void Shard::persist_ban(const security::Ban& b) {
  if (!shared_.store) return;
  writes().put_ban({b.address, store::to_unix_ms(b.until, now_), b.reason});
}

void Shard::persist_replay_mark(std::string_view scope, std::string_view sender, std::uint64_t mark,
                                std::chrono::seconds keep) {
  if (!shared_.store) return;
  writes().put_replay_mark({std::string(scope), index_, std::string(sender), mark, store::unix_ms_now()});
  const TimePoint useless_at = now_ + keep;
  auto [it, fresh] = marks_kept_.try_emplace(store::replay_mark_key(scope, index_, sender), useless_at);
  if (!fresh)
    it->second = useless_at;
  else if (marks_kept_.size() > kMaxSweptMarks)
    marks_kept_.erase(it);  // an encrypt-to flood (a sender per envelope): left to the next start-up
  else
    marks_by_age_.emplace_back(useless_at, it->first);
}

void Shard::sweep_replay_marks() {
  while (!marks_by_age_.empty() && marks_by_age_.front().first <= now_) {
    std::string key = std::move(marks_by_age_.front().second);
    marks_by_age_.pop_front();
    const auto it = marks_kept_.find(key);
    if (it == marks_kept_.end()) continue;
    if (it->second > now_) {  // written again since: of use for longer
      marks_by_age_.emplace_back(it->second, std::move(key));
      continue;
    }
    marks_kept_.erase(it);
    writes().erase_replay_mark(key);
  }
}

void Shard::persist_failures(const security::FailureCounter& c) {
  if (!shared_.store) return;
  if (c.failures == 0) return forget_failures(c.key);
  writes().put_failures({c.key, c.failures, store::to_unix_ms(c.since, now_)});
}

void Shard::forget_failures(std::string_view key) {
  if (shared_.store) writes().erase_failures(key);
}

void Shard::retain(const MessagePtr& m, std::string_view peer, std::string_view client_id) {
  const Limits& l = shared_.limits;
  const auto r = shared_.retained.update(m, {l.max_retained_messages, l.max_retained_bytes}, index_);
  if (r == RetainedStore::Update::Changed) return persist_retained(m);
  if (r == RetainedStore::Update::Unchanged) return;
  // Not retained; the message is still delivered to the subscribers it matches.
  const Limit which =
      r == RetainedStore::Update::OverMessages ? Limit::RetainedMessages : Limit::RetainedBytes;
  if (const auto n = limit_hit(which))
    report_limit(which, n, peer, client_id,
                 which == Limit::RetainedMessages
                     ? fmt::format("{} retained topics; '{}' not retained, delivered",
                                   l.max_retained_messages, m->topic)
                     : fmt::format("{} of {} retained bytes used; '{}' ({} bytes) not retained, delivered",
                                   shared_.retained.bytes(), l.max_retained_bytes, m->topic,
                                   m->topic.size() + m->payload.size()));
}

store::Batch& Shard::writes() {
  request_end_turn();
  ++writes_made_;
  return batch_;
}

void Shard::request_end_turn() {
  if (!flush_requested_) {
    flush_requested_ = true;
    bus_.request_flush(index_);
  }
}

void Shard::restore(const store::Snapshot& snapshot) {
  for (const auto& stored : snapshot.sessions) {
    const auto& r = stored.record;
    const std::uint32_t owner = shard_of(r.client_id, shared_.shard_count);
    if (owner != index_) {
      // Every replica of the index has every restored subscription before the
      // first connection is accepted: a message published at once must not miss
      // a subscriber whose subscription would still be on its way in an event.
      for (const auto& [filter, qos] : r.subscriptions)
        subs_.add(filter, Subscriber{r.session_id, owner, static_cast<QoS>(qos), true});
      continue;
    }
    Session& s = adopt_session(std::make_unique<Session>(r.client_id, r.session_id, false));
    s.identity_known = false;
    s.offline_since = offline_since(r, now_);
    for (const auto& [filter, qos] : r.subscriptions) {
      s.subscriptions.insert_or_assign(filter, static_cast<QoS>(qos));
      subs_.add(filter, Subscriber{s.id, index_, static_cast<QoS>(qos), true});
    }
    // Stored in seq order: messages sent before the stop come back in flight (to
    // be resent with DUP=1 on reconnect), the rest queued behind them.
    for (const auto& q : stored.queued) {
      auto m = make_message(q.topic, q.payload, static_cast<QoS>(q.qos), q.retain);
      const auto qos = static_cast<QoS>(q.qos);
      if (q.state == 0) {
        enqueue(s, Session::Queued{m, qos, q.retain, q.seq});
      } else {
        const auto st = q.state == 2              ? Session::OutState::AwaitPubcomp
                        : qos == QoS::AtLeastOnce ? Session::OutState::AwaitPuback
                                                  : Session::OutState::AwaitPubrec;
        s.inflight.push_back(Session::Inflight{q.packet_id, st, m, qos, q.retain, q.seq});
      }
    }
    s.awaiting_pubrel.insert(stored.awaiting_pubrel.begin(), stored.awaiting_pubrel.end());
  }
}

void Shard::subscribe(Session& s, std::string_view filter, QoS qos, std::uint64_t retained_seen) {
  // [MQTT-3.8.4-3] a subscription to an existing filter replaces its QoS.
  s.subscriptions.insert_or_assign(std::string(filter), qos);
  s.coverage_version = 0;
  const Subscriber sub{s.id, index_, qos, s.durable()};
  subs_.add(filter, sub);
  broadcast(SubscribeEvent{std::string(filter), sub, retained_seen});
  persist(s);
}

void Shard::unsubscribe(Session& s, std::string_view filter) {
  auto it = s.subscriptions.find(filter);
  if (it == s.subscriptions.end()) return;  // [MQTT-3.10.4-5] still acknowledged
  s.subscriptions.erase(it);
  s.coverage_version = 0;
  subs_.remove(filter, s.id);
  broadcast(UnsubscribeEvent{std::string(filter), s.id});
  persist(s);
}

void Shard::broadcast(const ShardEvent& e) {
  for (std::uint32_t i = 0; i < shared_.shard_count; ++i)
    if (i != index_) queue_event(i, ShardEvent(e));
}

void Shard::queue_event(std::uint32_t to, ShardEvent&& e) {
  auto& box = std::holds_alternative<DeliverEvent>(e) ? outboxes_ : index_outboxes_;
  box[to].push_back(std::move(e));
  request_end_turn();
}

void Shard::end_turn() {
  Turn t = take_turn();
  send_events(t.index_events);
  commit(t.writes);
  // Deliveries leave for other shards only once stored here: a shard never sends
  // a message whose storage could still be lost.
  send_events(t.events);
}

void Shard::commit(const store::Batch& writes) {
  if (writes.empty() || !shared_.store) return;
  try {
    shared_.store->commit(writes);
  } catch (const std::exception& e) {
    // Acknowledging what could not be stored would break the promise of QoS 1/2.
    spdlog::critical("cannot write the store, stopping: {}", e.what());
    std::abort();
  }
}

Shard::Turn Shard::take_turn() {
  flush_requested_ = false;
  Turn t;
  if (shared_.store) t.writes = std::move(batch_);
  batch_.clear();
  t.index_events.resize(index_outboxes_.size());
  for (std::uint32_t i = 0; i < index_outboxes_.size(); ++i) t.index_events[i].swap(index_outboxes_[i]);
  t.events.resize(outboxes_.size());
  for (std::uint32_t i = 0; i < outboxes_.size(); ++i) t.events[i].swap(outboxes_[i]);
  return t;
}

void Shard::send_events(std::vector<std::vector<ShardEvent>>& events) {
  for (std::uint32_t i = 0; i < events.size(); ++i) {
    if (events[i].empty()) continue;
    bus_.send(i, std::move(events[i]));
    events[i].clear();
  }
}

void Shard::apply(std::vector<ShardEvent>& batch) {
  for (auto& e : batch) {
    std::visit(
        [&](auto& ev) {
          using T = std::decay_t<decltype(ev)>;
          if constexpr (std::is_same_v<T, DeliverEvent>) {
            deliver_local(ev.session_id, ev.message, ev.qos, ev.seq, false);
          } else if constexpr (std::is_same_v<T, SubscribeEvent>) {
            // Retained messages this loop set and routed since the subscriber's
            // loop looked them up: the lookup missed them, and so did routing,
            // unless the subscription was here already (a QoS change).
            if (subs_.add(ev.filter, ev.subscriber))
              for (const auto& m : shared_.retained.changed_since(ev.filter, ev.retained_seen, index_))
                route_to(ev.subscriber, m);
          } else if constexpr (std::is_same_v<T, UnsubscribeEvent>) {
            subs_.remove(ev.filter, ev.session_id);
          } else {
            subs_.remove_session(ev.session_id);
          }
        },
        e);
  }
}

void Shard::route(const MessagePtr& m, std::string_view topic) {
  match_scratch_.clear();
  subs_.match(topic, match_scratch_);
  dedupe_max_qos(match_scratch_);
  for (const auto& sub : match_scratch_) route_to(sub, m);
}

void Shard::route_to(const Subscriber& sub, const MessagePtr& m) {
  const QoS q = min_qos(m->qos, sub.qos);  // [MQTT-3.8.4-6]
  // A QoS 1/2 delivery to a persistent session is stored by the shard that
  // routes it, in this turn's batch: the publisher's PUBACK/PUBREC waits for it.
  std::uint64_t seq = 0;
  if (sub.durable && q != QoS::AtMostOnce && shared_.store) {
    seq = shared_.next_seq.fetch_add(1, std::memory_order_relaxed);
    writes().put_queued(sub.session_id, {seq, std::string(m->topic), std::string(m->payload),
                                         static_cast<std::uint8_t>(q), false, 0, 0});
  }
  if (sub.shard == index_)
    deliver_local(sub.session_id, m, q, seq, true);
  else
    queue_event(sub.shard, DeliverEvent{sub.session_id, m, q, seq});
}

void Shard::deliver_local(std::uint64_t session_id, const MessagePtr& m, QoS qos, std::uint64_t seq,
                          bool matched_here) {
  Session* found = sessions_by_id_.find(session_id);
  if (!found) {
    // The session ended while this was on its way: forget what was stored for it.
    if (seq) writes().erase_queued(session_id, seq);
    return;
  }
  // [MQTT-3.3.1-9] a message matching an established subscription goes out with RETAIN 0.
  deliver(*found, m, qos, false, seq, matched_here);
}

bool Shard::receive_covered(Session& s) {
  constexpr std::size_t kMaxCoveredFilters = 16;  // worked out per change: keep that cheap
  const AclSlot& slot = acls_[s.acl_slot];
  if (!slot.policy || slot.version == 0) return false;
  if (s.coverage_version != slot.version) {
    s.coverage_version = slot.version;
    const security::Identity who = s.identity();
    s.receive_covered =
        s.subscriptions.size() <= kMaxCoveredFilters &&
        std::all_of(s.subscriptions.begin(), s.subscriptions.end(), [&](const auto& sub) {
          return security::allows_every_match(slot.policy.get(), who, security::Action::Receive, sub.first);
        });
  }
  return s.receive_covered;
}

void Shard::deliver(Session& s, const MessagePtr& m, QoS qos, bool retain, std::uint64_t seq,
                    bool matched_here) {
  if (!s.client && qos == QoS::AtMostOnce && !shared_.limits.queue_qos0_offline) {
    stats_.dropped_offline_qos0.add();
    return;
  }
  // Checked at delivery: a subscriber that lost the right stops receiving. A
  // session restored at start-up is checked when its client is back: until
  // then its identity is unknown, and judging it anonymous would drop what its
  // owner may read. Where every topic the session's subscriptions can match
  // may be received, a message matched against them here needs no check.
  if (s.identity_known && !(matched_here && receive_covered(s)) &&
      access(s.identity(), s.acl_slot, s.client ? &s.access : nullptr, security::Action::Receive, m->topic) !=
          security::Decision::Allow) {
    if (seq) writes().erase_queued(s.id, seq);
    return;
  }
  if (seq == 0 && s.durable() && qos != QoS::AtMostOnce && shared_.store) {
    seq = shared_.next_seq.fetch_add(1, std::memory_order_relaxed);
    writes().put_queued(s.id, {seq, std::string(m->topic), std::string(m->payload),
                               static_cast<std::uint8_t>(qos), retain, 0, 0});
  }
  // Anything already queued goes first, whatever its QoS, so order holds [MQTT-4.6.0-6].
  if (s.client && s.queue.empty() &&
      (qos == QoS::AtMostOnce || s.inflight.size() < shared_.limits.max_inflight_messages)) {
    send_publish(s, m, qos, retain, seq);
    return;
  }
  const Limits& lim = shared_.limits;
  const std::uint64_t size = m->topic.size() + m->payload.size();
  auto full = [&] {
    return s.queue.size() >= lim.max_queued_messages ||
           (lim.max_queued_bytes > 0 && s.queued_bytes + size > lim.max_queued_bytes);
  };
  if (full() && lim.queue_full == QueueFullPolicy::DropOldest) {
    while (!s.queue.empty() && full()) {
      const Session::Queued old = dequeue(s);
      dropped_queue_full(s, old.seq);
    }
  }
  if (full()) {
    dropped_queue_full(s, seq);
    return;
  }
  enqueue(s, Session::Queued{m, qos, retain, seq});
}

void Shard::enqueue(Session& s, Session::Queued q) {
  s.queued_bytes += q.message->topic.size() + q.message->payload.size();
  s.queue.push_back(std::move(q));
}

Session::Queued Shard::dequeue(Session& s) {
  Session::Queued q = std::move(s.queue.front());
  s.queue.pop_front();
  s.queued_bytes -= q.message->topic.size() + q.message->payload.size();
  return q;
}

void Shard::dropped_queue_full(Session& s, std::uint64_t seq) {
  if (seq) writes().erase_queued(s.id, seq, false);  // never sent: no in-flight entry
  stats_.dropped_queue_full.add();
  DropWarning& w = drop_warnings_[s.id];
  ++w.drops;
  if (now_ - w.last >= kDropWarningInterval) {
    spdlog::warn(
        "queue full for client {} ({} messages, {} bytes; max_queued_messages {}, max_queued_bytes {}): {} "
        "message(s) dropped ({}) since the last warning",
        s.client_id, s.queue.size(), s.queued_bytes, shared_.limits.max_queued_messages,
        shared_.limits.max_queued_bytes, w.drops,
        shared_.limits.queue_full == QueueFullPolicy::DropOldest ? "oldest first" : "newest");
    w.last = now_;
    w.drops = 0;
  }
}

void Shard::send_publish(Session& s, const MessagePtr& m, QoS qos, bool retain, std::uint64_t seq) {
  std::uint16_t id = 0;
  if (qos != QoS::AtMostOnce) {
    // [MQTT-2.3.1-2] an id not in use by another unacknowledged message.
    do {
      id = s.next_packet_id++;
      if (s.next_packet_id == 0) s.next_packet_id = 1;
    } while (s.inflight.in_use(id));
    // A clean session is never resumed [MQTT-3.1.2-6], so its PUBLISH is never
    // sent again: its entry keeps the id and the state, and the message goes
    // once its bytes are written, while they are still in the cache, not a
    // window later when the acknowledgement comes back.
    s.inflight.push_back(Session::Inflight{
        id, qos == QoS::AtLeastOnce ? Session::OutState::AwaitPuback : Session::OutState::AwaitPubrec,
        s.durable() ? m : MessagePtr{}, qos, retain, seq});
    // The packet id is stored before the PUBLISH leaves (output waits for the
    // commit): after a restart the resend carries the same id, which is what
    // lets the receiver recognise a QoS 2 duplicate.
    if (seq) s.inflight.back().inflight_entry = writes().put_inflight(s.id, seq, id, 1);
  }
  Transport& t = s.client->transport();
  t.output().append_publish(m, qos, false, retain, id);
  // A QoS 2 PUBLISH leaves only with its packet id stored: resent after a crash
  // with another id, the receiver could not tell it from a new message. A QoS 1
  // PUBLISH needs no wait: at worst it is delivered again after a crash, which
  // QoS 1 allows (its stored packet id, if not yet durable, is then a new one).
  // A message whose replay mark was stored waits for a commit at least as
  // recent: the mark's own on this loop (commits complete in order), an
  // earlier one when it came from another loop (its events leave only once
  // stored there).
  if ((seq && qos == QoS::ExactlyOnce) || m->replay_marked) t.hold_until_stored();
  t.flush_soon();
  stats_.messages_sent.add();
}

void Shard::pump(Session& s) {
  while (s.client && !s.queue.empty()) {
    auto& q = s.queue.front();
    if (q.qos != QoS::AtMostOnce && s.inflight.size() >= shared_.limits.max_inflight_messages) break;
    auto item = dequeue(s);
    send_publish(s, item.message, item.qos, item.retain, item.seq);
  }
}

void Shard::acknowledged(Session& s, const Session::Inflight& f) {
  if (f.seq) writes().erase_queued(s.id, f.seq, f.inflight_entry);
}

void Shard::expire_sessions() {
  std::vector<Session*> expired;
  sessions_.for_each([&](Session& s) {
    if (!s.client && s.durable() && now_ - s.offline_since >= shared_.limits.session_expiry)
      expired.push_back(&s);
  });
  for (Session* s : expired) {
    spdlog::info("session of client {} expired after {} s offline ({} queued messages dropped)", s->client_id,
                 shared_.limits.session_expiry.count(), s->queue.size() + s->inflight.size());
    destroy_session(*s);
  }
}

void Shard::resume(Session& s) {
  // [MQTT-4.4.0-1] resend unacknowledged PUBLISH (DUP=1) and PUBREL packets, in
  // their original order, before anything new.
  if (!s.identity_known) check_restored_queue(s);
  Transport& t = s.client->transport();
  for (const auto& f : s.inflight) {
    if (f.state == Session::OutState::AwaitPubcomp) {
      t.output().append(codec::Ack{codec::PacketType::Pubrel, f.packet_id});
    } else {
      t.output().append_publish(f.message, f.qos, true, f.retain, f.packet_id);
      stats_.messages_sent.add();
    }
  }
  t.flush_soon();
  pump(s);
}

std::size_t Shard::filter_queue(Session& s, const std::function<bool(const Session::Queued&)>& keep) {
  Fifo<Session::Queued> kept;
  std::size_t dropped = 0;
  while (!s.queue.empty()) {
    Session::Queued q = dequeue(s);
    if (keep(q)) {
      kept.push_back(std::move(q));
    } else {
      if (q.seq) writes().erase_queued(s.id, q.seq, false);  // never sent: no in-flight entry
      ++dropped;
    }
  }
  while (!kept.empty()) {
    enqueue(s, std::move(kept.front()));
    kept.pop_front();
  }
  return dropped;
}

void Shard::check_restored_queue(Session& s) {
  s.identity_known = true;
  const std::size_t dropped = filter_queue(s, [&](const Session::Queued& q) {
    return access(s.identity(), s.acl_slot, &s.access, security::Action::Receive, q.message->topic) ==
           security::Decision::Allow;
  });
  if (dropped)
    spdlog::debug("client {} ({}): {} queued message(s) it may not receive dropped", s.client_id, s.username,
                  dropped);
}

std::size_t Shard::revoke_subscriptions(Session& s, std::span<const std::string> filters) {
  for (const auto& f : filters) unsubscribe(s, f);
  // In-flight messages stay: their delivery began under the old grant, and
  // [MQTT-4.4.0-1] has them resent.
  return filter_queue(s, [&](const Session::Queued& q) {
    return std::any_of(s.subscriptions.begin(), s.subscriptions.end(),
                       [&](const auto& sub) { return codec::topic_matches(sub.first, q.message->topic); });
  });
}

void Shard::tick(TimePoint now) {
  now_ = now;
  // Picks up reloaded ACLs: the decisions cached under a replaced policy are stale.
  for (std::size_t i = 0; i < acls_.size(); ++i) {
    const auto& source = i == 0 ? shared_.acl : shared_.listener_access[i - 1].acl;
    if (!source) continue;
    auto fresh = source->load();
    if (fresh != acls_[i].policy) {
      acls_[i].policy = std::move(fresh);
      acls_[i].version = next_acl_version_++;
    }
  }
  if (shared_.payload) payload_ = shared_.payload->load();
  if (started_at_ == TimePoint{}) started_at_ = now;  // the first tick starts the uptime
  if (index_ == 0 && shared_.sys_interval.count() > 0 && now >= next_sys_) {
    publish_sys();
    next_sys_ = now + shared_.sys_interval;
  }
  if (index_ == 0 && shared_.defence && now >= next_ban_check_) {
    for (const auto& key : shared_.defence->take_forgotten(now)) forget_failures(key);
    for (const auto& b : shared_.defence->expire(now)) {
      spdlog::info("ban of {} lifted", b.address);
      if (shared_.store) writes().erase_ban(b.address);
      if (shared_.audit) {
        security::AuditEvent e;
        e.event = "unban";
        e.address = b.address;
        shared_.audit->emit(e);
      }
    }
    next_ban_check_ = now + kExpiryCheckInterval;
  }
  if (index_ == 0 && shared_.flapping && now >= next_flap_check_) {
    for (const auto& id : shared_.flapping->take_forgotten(now))
      forget_failures(std::string(store::kClientIdBan) + id);
    for (const auto& b : shared_.flapping->expire(now)) {
      spdlog::info("ban of client id {} lifted", b.address);
      if (shared_.store) writes().erase_ban(std::string(store::kClientIdBan) + b.address);
    }
    next_flap_check_ = now + kExpiryCheckInterval;
  }
  if (!marks_by_age_.empty() && now >= next_mark_sweep_) {
    sweep_replay_marks();
    next_mark_sweep_ = now + kExpiryCheckInterval;
  }
  if (shared_.limits.session_expiry.count() > 0 && now >= next_expiry_check_) {
    expire_sessions();
    next_expiry_check_ = now + kExpiryCheckInterval;
  }
  // check_deadlines may close a client, which only marks it; net removes it later.
  std::vector<Client*> snapshot;
  for (Client* c = clients_; c; c = c->next_) snapshot.push_back(c);
  for (Client* c : snapshot) c->check_deadlines(now);
}

void Shard::publish_sys() {
  ShardStats::Snapshot t{};
  for (const ShardStats* st : shared_.all_stats) t += st->snapshot();
  const auto uptime = std::chrono::duration_cast<std::chrono::seconds>(now_ - started_at_).count();
  auto put = [&](std::string_view topic, const std::string& value) {
    auto m = make_message(topic, value, QoS::AtMostOnce, true);
    shared_.retained.update(m);
    route(m);
  };
  // Names follow Mosquitto's $SYS tree where one exists, so dashboards carry over.
  put("$SYS/broker/version", shared_.version);
  put("$SYS/broker/uptime", fmt::format("{} seconds", uptime));
  put("$SYS/broker/clients/connected", std::to_string(t.clients_connected));
  put("$SYS/broker/clients/total", std::to_string(t.sessions));
  put("$SYS/broker/messages/received", std::to_string(t.messages_received));
  put("$SYS/broker/messages/sent", std::to_string(t.messages_sent));
  put("$SYS/broker/messages/dropped/queue_full", std::to_string(t.dropped_queue_full));
  put("$SYS/broker/messages/dropped/offline_qos0", std::to_string(t.dropped_offline_qos0));
  put("$SYS/broker/retained messages/count", std::to_string(shared_.retained.size()));
  put("$SYS/broker/subscriptions/count", std::to_string(subs_.size()));
  put("$SYS/broker/connections/protocol_errors", std::to_string(t.protocol_errors));
  put("$SYS/broker/connections/takeovers", std::to_string(t.takeovers));
  put("$SYS/broker/messages/dropped/not_authorized", std::to_string(t.dropped_not_authorized));
  put("$SYS/broker/messages/dropped/payload_policy", std::to_string(t.dropped_payload_policy));
  put("$SYS/broker/messages/payload_verified", std::to_string(t.payload_verified));
  if (shared_.connections) put("$SYS/broker/connections/open", std::to_string(shared_.connections->total()));
  put("$SYS/broker/retained messages/bytes", std::to_string(shared_.retained.bytes()));
  for (std::size_t i = 0; i < kLimitCount; ++i) {
    const auto l = static_cast<Limit>(i);
    put(fmt::format("$SYS/broker/limits/{}", limit_name(l)), std::to_string(shared_.limit_stats.count(l)));
  }
  publish_tls_sys();
}

// $SYS/broker/tls/<listener>/...: handshake counters (docs/mqtt.md, "$SYS topics").
void Shard::publish_tls_sys() {
  if (shared_.tls_metrics.empty()) return;
  auto put = [&](const std::string& topic, const std::string& value) {
    auto m = make_message(topic, value, QoS::AtMostOnce, true);
    shared_.retained.update(m);
    route(m);
  };
  const double elapsed =
      tls_sys_at_ == TimePoint{} ? 0.0 : std::chrono::duration<double>(now_ - tls_sys_at_).count();
  tls_sys_at_ = now_;
  tls_handshakes_before_.resize(shared_.tls_metrics.size(), 0);
  for (std::size_t i = 0; i < shared_.tls_metrics.size(); ++i) {
    // A topic level must not hold wildcards or separators [MQTT-4.7.1-1].
    std::string name = shared_.tls_metrics[i].first;
    std::replace_if(
        name.begin(), name.end(), [](char c) { return c == '/' || c == '+' || c == '#'; }, '_');
    const std::string base = "$SYS/broker/tls/" + name + "/";
    const auto s = shared_.tls_metrics[i].second->snapshot();
    const std::uint64_t before = std::exchange(tls_handshakes_before_[i], s.completed);
    put(base + "handshakes", std::to_string(s.completed));
    put(base + "handshakes/per_second",
        fmt::format("{:.1f}", elapsed > 0 ? static_cast<double>(s.completed - before) / elapsed : 0.0));
    put(base + "handshakes/tls1.2", std::to_string(s.tls12));
    put(base + "handshakes/tls1.3", std::to_string(s.tls13));
    put(base + "handshakes/resumed", std::to_string(s.resumed));
    put(base + "handshakes/resumed_percent",
        fmt::format("{:.1f}", s.completed
                                  ? 100.0 * static_cast<double>(s.resumed) / static_cast<double>(s.completed)
                                  : 0.0));
    put(base + "handshakes/psk", std::to_string(s.psk));
    put(base + "failures", std::to_string(s.failed()));
    for (std::size_t f = 1; f < security::kTlsFailureCount; ++f)
      put(base + "failures/" + std::string(security::to_slug(static_cast<security::TlsFailure>(f))),
          std::to_string(s.failures[f]));
    put(base + "duration/p50", fmt::format("{:.3f}", s.duration_quantile_micros(0.50) / 1000.0));
    put(base + "duration/p99", fmt::format("{:.3f}", s.duration_quantile_micros(0.99) / 1000.0));
    put(base + "connections/closed_revoked", std::to_string(s.closed_revoked));
  }
}

}  // namespace moat::broker
