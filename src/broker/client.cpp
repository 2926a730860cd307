// Per-connection protocol handling: MQTT 3.1.1 sections 3 and 4 from the server side.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "broker/limit_checks.hpp"
#include "broker/shard.hpp"
#include "codec/topic.hpp"

namespace moat::broker {

using codec::ConnectReturnCode;
using codec::ProtocolError;
using codec::QoS;

namespace {
// Counts a limit hit and, at most once per [limits] log_interval, logs it with
// the peer; `detail` is only formatted for a report.
template <class F>
void limit_hit(Shard& shard, Limit l, std::string_view peer, std::string_view client_id, F&& detail) {
  if (const auto n = shard.limit_hit(l)) report_limit(l, n, peer, client_id, detail());
}
}  // namespace

Client::Client(Shard& shard, Transport& transport, const ListenerPolicy& listener)
    : shard_(shard), transport_(transport), listener_(listener) {
  decoder_.max_packet_size = shard.shared().limits.max_packet_size;
  last_packet_at_ = shard.now();
  shard_.add_client(this);
}

Client::~Client() {
  // Torn down without close() (broker shutdown or migration): leave the session
  // consistent but touch no transport, which may be going away too.
  if (session_) session_->client = nullptr;
  shard_.remove_client(this);
}

std::size_t Client::on_bytes(std::span<const std::uint8_t> data) {
  std::size_t used = 0;
  while (takes_input() && used < data.size()) {
    auto r = codec::decode(data.subspan(used), decoder_);
    if (r.status == codec::DecodeStatus::NeedMore) break;
    if (r.status == codec::DecodeStatus::Error) {
      if (r.error == ProtocolError::UnsupportedProtocolVersion && state_ == State::AwaitConnect) {
        // [MQTT-3.1.2-2] answer with return code 0x01, then disconnect.
        refuse_connect(ConnectReturnCode::UnacceptableProtocolVersion, codec::describe(r.error));
      } else {
        protocol_error(r.error);
      }
      break;
    }
    last_packet_at_ = shard_.now();
    handle(r.packet);
    if (migrating_) break;  // the CONNECT is decoded again on the owning shard
    if (state_ == State::Connected && has_unanswered()) {
      // The remote authorizer decides part of this packet, which had no effect
      // yet: it stays in the input and is decoded again once the answers are in.
      if (!ask_remote(identity(*session_), [this] { transport_.resume_input(); })) break;
      continue;  // answered from the remote authorizer's cache meanwhile
    }
    asked_.clear();
    used += r.consumed;
  }
  return used;
}

void Client::on_disconnected() {
  if (state_ == State::Closed) return;
  close(CloseKind::Abnormal, "connection lost");
}

void Client::check_deadlines(TimePoint now) {
  if (state_ == State::AwaitConnect) {
    // Waiting for CONNECT, no packet has been decoded yet: the last packet's
    // time is still the accept time.
    if (now - last_packet_at_ >= shard_.shared().limits.connect_timeout)
      protocol_error(ProtocolError::ConnectTimeout);
    return;
  }
  // [MQTT-3.1.2-24] one and a half times the keep-alive without a control packet.
  if (state_ == State::Connected && keep_alive_s_ > 0 &&
      now - last_packet_at_ >= std::chrono::milliseconds(std::uint32_t{keep_alive_s_} * 1500))
    protocol_error(ProtocolError::KeepAliveTimeout);
}

void Client::send(const codec::Packet& p) {
  transport_.output().append(p);
  // A reply to a packet that changed stored state (PUBACK of a stored message,
  // SUBACK of a persistent session, PUBCOMP, ...) waits until the change is durable.
  if (shard_.writes_made() != writes_mark_) transport_.hold_until_stored();
  transport_.flush_soon();
}

void Client::protocol_error(ProtocolError e) {
  shard_.stats().protocol_errors.add();
  spdlog::debug("protocol error from {} ({}): {}", transport_.peer(), client_id_.empty() ? "-" : client_id_,
                codec::describe(e));
  close(CloseKind::Abnormal, codec::describe(e));
}

void Client::refuse_connect(ConnectReturnCode code, std::string_view why) {
  spdlog::info("refused connection from {} ({}): {} (CONNACK {})", transport_.peer(),
               client_id_.empty() ? "-" : client_id_, why, static_cast<int>(code));
  send(codec::Connack{false, code});
  close(CloseKind::Normal, "CONNECT refused");
}

void Client::audit(security::AuditEvent& e) const {
  const auto& sink = shard_.shared().audit;
  if (!sink) return;
  e.listener = listener_.name;
  e.peer = transport_.peer();
  if (e.client_id.empty()) e.client_id = client_id_;
  sink->emit(e);
}

void Client::close(CloseKind kind, const char* reason) {
  if (state_ == State::Closed) return;
  const bool was_connected = state_ == State::Connected;
  state_ = State::Closed;
  if (was_connected) {
    shard_.stats().clients_connected.sub();
    spdlog::debug("client {} from {} disconnected: {}", client_id_, transport_.peer(), reason);
    // Flapping: connections that end without DISCONNECT (dropped, taken over,
    // closed for an error) count towards a ban of the client identifier.
    if (const auto& flap = shard_.shared().flapping; flap && kind == CloseKind::Abnormal) {
      security::FailureCounter count;
      auto ban =
          flap->on_disconnect(client_id_, security::peer_address(transport_.peer()), shard_.now(), &count);
      if (!count.key.empty()) {  // counted: a restart keeps the count
        count.key.insert(0, store::kClientIdBan);
        shard_.persist_failures(count);
      }
      if (ban) {
        limit_hit(shard_, Limit::FlappingBanned, transport_.peer(), client_id_, [&] {
          return fmt::format("client id banned for {} s: {}", flap->config().ban_time.count(), ban->reason);
        });
        shard_.persist_ban({std::string(store::kClientIdBan) + client_id_, ban->until, ban->reason});
      }
    }
  }
  if (session_) {
    Session& s = *session_;
    session_ = nullptr;
    s.client = nullptr;
    s.offline_since = shard_.now();
    // [MQTT-3.1.2-6] a clean session ends with its network connection.
    s.access.clear();  // decisions are kept for connected clients only
    if (s.clean_session)
      shard_.destroy_session(s);
    else
      shard_.persist(s);  // stores since when it is offline, for session expiry across restarts
  }
  // [MQTT-3.1.2-8] the will is published when the connection closes for any
  // reason but a DISCONNECT (which discarded it already). The session is detached
  // first, so a persistent session subscribed to its own will queues it.
  if (kind == CloseKind::Abnormal && will_) {
    const MessagePtr& w = will_;
    if (w->retain) shard_.retain(w, transport_.peer(), client_id_);
    shard_.route(w);
  }
  will_.reset();
  transport_.close();
}

void Client::handle(const codec::Packet& p) {
  writes_mark_ = shard_.writes_made();
  if (const auto* c = std::get_if<codec::Connect>(&p)) {
    if (state_ == State::Connected) return protocol_error(ProtocolError::SecondConnect);
    return handle_connect(*c);
  }
  if (state_ != State::Connected) return protocol_error(ProtocolError::FirstPacketNotConnect);
  std::visit(
      [&](const auto& pkt) {
        using T = std::decay_t<decltype(pkt)>;
        if constexpr (std::is_same_v<T, codec::Publish>) {
          handle_publish(pkt);
        } else if constexpr (std::is_same_v<T, codec::Ack>) {
          handle_ack(pkt);
        } else if constexpr (std::is_same_v<T, codec::Subscribe>) {
          handle_subscribe(pkt);
        } else if constexpr (std::is_same_v<T, codec::Unsubscribe>) {
          handle_unsubscribe(pkt);
        } else if constexpr (std::is_same_v<T, codec::Pingreq>) {
          send(codec::Pingresp{});  // [MQTT-3.12.4-1]
        } else if constexpr (std::is_same_v<T, codec::Disconnect>) {
          will_.reset();  // [MQTT-3.14.4-3]
          close(CloseKind::Normal, "DISCONNECT");
        }
        // The decoder refuses server-to-client packets, so nothing else arrives here.
      },
      p);
}

void Client::handle_connect(const codec::Connect& c) {
  decoder_.version = c.version;
  std::string client_id(c.client_id);
  client_id_ = client_id;
  if (c.version == codec::ProtocolVersion::V31 && (client_id.empty() || client_id.size() > 23)) {
    // MQTT 3.1 section 3.1: identifiers are 1 to 23 characters.
    return refuse_connect(ConnectReturnCode::IdentifierRejected, "MQTT 3.1 client identifier length");
  }
  if (const auto max = shard_.shared().limits.max_client_id_length; max > 0 && client_id.size() > max) {
    limit_hit(shard_, Limit::ClientIdLength, transport_.peer(), {},
              [&] { return fmt::format("client id of {} bytes (at most {})", client_id.size(), max); });
    client_id_.clear();
    return refuse_connect(ConnectReturnCode::IdentifierRejected, "client identifier too long");
  }
  if (c.will) {
    if (const auto over = topic_over_limits(c.will->topic, shard_.shared().limits)) {
      limit_hit(shard_, *over, transport_.peer(), client_id_,
                [&] { return fmt::format("will topic of {} bytes refused", c.will->topic.size()); });
      return refuse_connect(ConnectReturnCode::NotAuthorized, "will topic over the limits");
    }
  }
  if (client_id.empty()) {
    // [MQTT-3.1.3-8] an empty identifier needs clean session 1 ...
    if (!c.clean_session)
      return refuse_connect(ConnectReturnCode::IdentifierRejected,
                            codec::describe(ProtocolError::ClientIdRejected));
    // ... and then the server assigns a unique one [MQTT-3.1.3-6].
    client_id = shard_.assign_client_id();
    client_id_ = client_id;
  }
  const auto owner = shard_of(client_id, shard_.shared().shard_count);
  if (owner != shard_.index()) {
    migrating_ = true;
    transport_.migrate(owner);
    return;
  }

  // A banned address may have connected before its ban: refuse it before any
  // authentication work.
  if (const auto address = security::peer_address(transport_.peer());
      shard_.shared().defence && listener_.defence.covers(address)) {
    const auto v = shard_.shared().defence->check_ban(address, shard_.now());
    if (v.admission == security::AuthThrottle::Admission::Banned) {
      if (v.report) {
        security::AuditEvent e;
        e.event = "connection.refused";
        e.address = address;
        e.reason = "address banned";
        e.suppressed = static_cast<std::int64_t>(v.suppressed);
        audit(e);
      }
      return refuse_connect(ConnectReturnCode::NotAuthorized, "address banned");
    }
  }

  // Flapping detection: a banned client identifier is refused; one that keeps
  // dropping its connections waits for its CONNACK.
  std::chrono::milliseconds flap_delay{0};
  if (const auto& flap = shard_.shared().flapping) {
    const auto v = flap->on_connect(client_id, security::peer_address(transport_.peer()), shard_.now());
    if (v.banned) {
      limit_hit(shard_, Limit::FlappingRefused, transport_.peer(), client_id, [&] {
        const auto left = std::chrono::duration_cast<std::chrono::seconds>(v.banned_until - shard_.now());
        return fmt::format("client id banned for flapping ({} s left)", left.count());
      });
      return refuse_connect(ConnectReturnCode::NotAuthorized, "client identifier banned for flapping");
    }
    flap_delay = v.delay;
    if (flap_delay.count() > 0)
      limit_hit(shard_, Limit::FlappingDelayed, transport_.peer(), client_id, [&] {
        return fmt::format("{} disconnections in the window; CONNECT held {} ms", v.disconnections,
                           flap_delay.count());
      });
  }

  // Everything the rest of the CONNECT needs, owned: the decoder's views die with
  // the input buffer, and authentication may finish on a later loop turn.
  pending_ = std::make_shared<PendingConnect>();
  auto& pc = *pending_;
  pc.client_id = client_id;
  pc.clean_session = c.clean_session;
  pc.keep_alive = c.keep_alive;
  pc.version = c.version;
  if (c.username) pc.username = std::string(*c.username);
  if (c.password) pc.password = std::string(*c.password);
  if (c.will) pc.will = make_message(c.will->topic, c.will->payload, c.will->qos, c.will->retain);
  pc.certificate_identity = std::string(transport_.certificate_identity());
  pc.psk_identity = std::string(transport_.psk_identity());
  pc.certificate_subject = transport_.certificate_subject();
  pc.certificate_fingerprint = transport_.certificate_fingerprint();
  if (flap_delay.count() > 0) {
    // Held on a timer, input paused until the CONNECT is answered.
    state_ = State::Authenticating;
    auth_deferred_ = true;
    transport_.run_after(flap_delay, [this] {
      if (state_ != State::Authenticating) return;
      auth_step(0);
    });
    return;
  }
  auth_step(0);
}

void Client::auth_step(std::size_t i) {
  const security::AuthChain& chain = listener_.auth;
  for (; i < chain.size(); ++i) {
    security::Authenticator& a = chain.at(i);
    const auto mode = a.mode();
    if (mode == security::Authenticator::Mode::Immediate) {
      auto r = a.authenticate(connect_info(*pending_));
      if (r.decision != security::AuthDecision::Continue) return auth_done(std::move(r));
      continue;
    }
    // A password hash takes tens of milliseconds, an IAM server a round trip:
    // hold further input of this connection until the answer is in.
    state_ = State::Authenticating;
    auth_deferred_ = true;
    const std::uint32_t step = ++auth_step_id_;
    auto result = std::make_shared<security::AuthResult>();
    auto then = [this, result, i, step] {
      if (state_ != State::Authenticating || step != auth_step_id_) return;
      ++auth_step_id_;
      if (result->decision == security::AuthDecision::Continue) return auth_step(i + 1);
      auth_done(std::move(*result));
    };
    // `keep` holds the strings `info` points into, should this Client go first.
    if (mode == security::Authenticator::Mode::Blocking) {
      transport_.run_off_loop(
          [result, keep = pending_, info = connect_info(*pending_), &a] { *result = a.authenticate(info); },
          std::move(then));
    } else {
      // An answer that never comes (a server that accepts and stays silent)
      // must not hold the client forever: refused as unavailable.
      transport_.run_after(shard_.shared().limits.auth_timeout, [this, step, method = a.name()] {
        if (state_ != State::Authenticating || step != auth_step_id_) return;
        ++auth_step_id_;
        security::AuthResult r;
        r.decision = security::AuthDecision::Unavailable;
        r.method = method;
        r.reason = "authentication timed out";
        auth_done(std::move(r));
      });
      transport_.run_async(
          [result, keep = pending_, info = connect_info(*pending_), &a](std::function<void()> resume) {
            a.authenticate_async(info, [result, keep, resume = std::move(resume)](security::AuthResult r) {
              *result = std::move(r);
              resume();
            });
          },
          std::move(then));
    }
    return;
  }
  auth_done(security::AuthChain::end_of_chain());
}

security::ConnectInfo Client::connect_info(const PendingConnect& pc) const {
  security::ConnectInfo info;
  info.listener = listener_.name;
  info.peer = transport_.peer();
  info.client_id = pc.client_id;
  if (pc.username) info.username = *pc.username;
  if (pc.password) info.password = *pc.password;
  info.certificate_identity = pc.certificate_identity;
  info.psk_identity = pc.psk_identity;
  info.certificate_subject = pc.certificate_subject;
  info.certificate_fingerprint = pc.certificate_fingerprint;
  return info;
}

void Client::auth_done(security::AuthResult auth) {
  const PendingConnect& pc = *pending_;
  // Client-identifier binding: the identity, the proof (password, certificate,
  // token) and the client identifier must go together.
  if (auth.decision == security::AuthDecision::Allow && listener_.clientid) {
    const auto rules = listener_.clientid->load();
    if (rules && !rules->allowed(auth.identity, pc.client_id)) {
      auth.decision = security::AuthDecision::NotAuthorized;
      auth.reason = "client identifier not allowed for this identity";
    }
  }
  const std::string_view address = security::peer_address(transport_.peer());
  // The defence, when it is on for this listener (null: off here); `judged`:
  // it counts this peer's failures (not exempt: the audit says delay 0).
  security::AuthThrottle* const defence = listener_.defence.enabled ? shard_.shared().defence.get() : nullptr;
  const bool judged = defence && listener_.defence.covers(address);
  const std::string_view sent_user = pc.username ? std::string_view(*pc.username) : std::string_view();

  if (auth.decision == security::AuthDecision::Allow) {
    if (judged)
      if (const auto forgotten = defence->success(address, sent_user)) shard_.forget_failures(*forgotten);
    security::AuditEvent e;
    e.event = "auth.success";
    e.client_id = pc.client_id;
    if (pc.username) e.username = *pc.username;
    e.identity = auth.identity;
    e.method = auth.method;
    audit(e);
    const bool resume = auth_deferred_;
    auth_deferred_ = false;
    finish_connect(auth);
    if (resume && state_ == State::Connected) transport_.resume_input();
    return;
  }

  const bool unavailable = auth.decision == security::AuthDecision::Unavailable;
  const auto code = auth.decision == security::AuthDecision::BadCredentials
                        ? ConnectReturnCode::BadUsernameOrPassword
                    : unavailable ? ConnectReturnCode::ServerUnavailable
                                  : ConnectReturnCode::NotAuthorized;
  std::string why = auth.reason.empty() ? std::string(code == ConnectReturnCode::BadUsernameOrPassword
                                                          ? "bad user name or password"
                                                      : unavailable ? "authentication unavailable"
                                                                    : "not authorized")
                                        : auth.reason;
  // An unavailable authentication server is no guess at a password: it is not
  // counted, or an outage would ban every client that tried meanwhile.
  security::AuthThrottle::Failure f;
  if (judged && !unavailable) {
    f = defence->failure(address, sent_user, shard_.now());
    for (const auto& c : f.counters) shard_.persist_failures(c);  // a restart keeps the count
  }
  security::AuditEvent e;
  e.event = "auth.failure";
  e.client_id = pc.client_id;
  if (pc.username) e.username = *pc.username;
  e.method = auth.method;
  e.reason = why;
  e.code = static_cast<int>(code);
  if (defence && !unavailable) {
    e.delay_ms = f.delay.count();
    e.failures = f.failures;
  }
  audit(e);
  if (defence && f.banned) {
    const auto secs = std::chrono::duration_cast<std::chrono::seconds>(defence->config().ban_time).count();
    spdlog::warn("banned {} for {} s: {}", f.banned->address, secs, f.banned->reason);
    shard_.persist_ban(*f.banned);
    security::AuditEvent b;
    b.event = "ban";
    b.address = f.banned->address;
    b.reason = f.banned->reason;
    b.duration_s = secs;
    b.until = std::chrono::system_clock::now() +
              std::chrono::duration_cast<std::chrono::system_clock::duration>(f.banned->until - shard_.now());
    if (const auto& sink = shard_.shared().audit) {  // no client_id: a ban is about an address
      b.listener = listener_.name;
      b.peer = transport_.peer();
      sink->emit(b);
    }
  }
  if (f.delay.count() > 0) {
    // Held on a timer, never by blocking the loop; the client waits for its CONNACK.
    state_ = State::Authenticating;
    transport_.run_after(f.delay, [this, code, why = std::move(why)] {
      if (state_ != State::Authenticating) return;
      state_ = State::AwaitConnect;
      refuse_connect(code, why);
    });
    return;
  }
  state_ = State::AwaitConnect;
  refuse_connect(code, why);
}

void Client::finish_connect(const security::AuthResult& auth) {
  writes_mark_ = shard_.writes_made();
  identity_ = auth.identity;
  own_acl_only_ = auth.acl_only;
  superuser_ = auth.superuser;
  const security::Identity who{identity_, pending_->client_id, auth.acl.get(), own_acl_only_, superuser_};
  // [MQTT-3.1.2-9] the will is a PUBLISH like any other: the ACL must allow it.
  // A resumed session's subscriptions are decided again when the IAM server
  // that granted them is not this listener's or judged another identity.
  Access will_access = Access::Allow;
  std::vector<std::string> revoked;
  bool undecided = false;  // the IAM server gave no answer for one of them
  const auto decide = [&] {
    bool ask = false;
    if (pending_->will) {
      will_access = check(who, nullptr, security::Action::Publish, (*pending_->will)->topic);
      ask = will_access == Access::Ask;
    }
    revoked.clear();
    undecided = false;
    if (const Session* s = regranted_session(*pending_)) {
      for (const auto& sub : s->subscriptions) {
        const std::string& filter = sub.first;
        const Access a = check(who, nullptr, security::Action::Subscribe, filter);
        ask = ask || a == Access::Ask;
        if (a != Access::Deny) continue;
        revoked.push_back(filter);
        undecided = undecided || std::any_of(asked_.begin(), asked_.end(), [&](const Asked& q) {
                      return q.answer && q.answer->failed && q.action == security::Action::Subscribe &&
                             q.topic == filter;
                    });
      }
    }
    return ask;
  };
  if (decide()) {
    // The remote authorizer decides; CONNACK waits for it.
    state_ = State::Authenticating;
    auto again = [this, auth] {
      finish_connect(auth);
      if (state_ == State::Connected) transport_.resume_input();
    };
    if (!ask_remote(who, std::move(again))) return;
    decide();
  }
  asked_.clear();
  auto pc = std::move(pending_);
  state_ = State::AwaitConnect;  // until CONNACK: a refusal below closes from here
  if (will_access != Access::Allow) {
    security::AuditEvent e;
    e.event = "acl.deny";
    e.client_id = pc->client_id;
    e.identity = identity_;
    e.action = "will";
    e.topic = (*pc->will)->topic;
    audit(e);
    return refuse_connect(ConnectReturnCode::NotAuthorized, "will topic not authorized");
  }
  // Fail closed without losing the session: a server that could not be asked
  // refuses the connection rather than unsubscribing the client for good.
  if (undecided)
    return refuse_connect(ConnectReturnCode::ServerUnavailable,
                          "the IAM server did not decide the session's subscriptions");
  // A will on a policed topic must satisfy the policy now: it is published
  // later, when the publisher can no longer be asked.
  if (pc->will) {
    const MessagePtr& w = *pc->will;
    auto admitted = admit_payload(w->topic, w->payload, w->qos, w->retain, "will");
    if (!admitted)
      return refuse_connect(ConnectReturnCode::NotAuthorized, "will refused by the payload policy");
    pc->will = std::move(admitted);
  }
  const std::string& client_id = pc->client_id;

  // [MQTT-3.1.4-2] a second connection with the same identifier takes over.
  if (Session* existing = shard_.find_session(client_id); existing && existing->client) {
    Client* old = existing->client;
    shard_.stats().takeovers.add();
    spdlog::info("client {} taken over: {} replaces {}", client_id, transport_.peer(),
                 old->transport_.peer());
    old->close(CloseKind::Abnormal, "taken over by a new connection");
  }

  bool present = false;
  Session& s = shard_.open_session(client_id, pc->clean_session, present);
  session_ = &s;
  s.client = this;
  if (present) {
    // Online again: its stored expiry clock stops. The CONNACK tells the client
    // nothing about that record, so it does not wait for the record's commit.
    const bool unchanged = shard_.writes_made() == writes_mark_;
    shard_.persist(s);
    if (unchanged) writes_mark_ = shard_.writes_made();
  }
  s.username = identity_;
  s.own_acl = auth.acl;
  s.own_acl_only = own_acl_only_;
  s.superuser = superuser_;
  s.acl_slot = listener_.acl_slot;  // before resume(): a restored queue is judged by it
  s.access.clear();                 // decisions cached for an earlier connection's identity
  s.coverage_version = 0;           // ... and what its subscriptions may receive
  state_ = State::Connected;
  keep_alive_s_ = pc->keep_alive;
  last_packet_at_ = shard_.now();
  will_ = pc->will ? *pc->will : nullptr;
  shard_.stats().clients_connected.add();
  spdlog::debug("client {} connected from {} on {} (MQTT {}, clean {}, keep-alive {} s{}{}{})", client_id,
                transport_.peer(), listener_.name,
                pc->version == codec::ProtocolVersion::V31 ? "3.1" : "3.1.1", pc->clean_session,
                pc->keep_alive, present ? ", session resumed" : "", identity_.empty() ? "" : ", user ",
                identity_);
  // [MQTT-3.2.2-1..3] session present only for a resumed persistent session.
  // MQTT 3.1 has no such flag: its CONNACK's first byte is reserved, always 0.
  send(codec::Connack{present && pc->version != codec::ProtocolVersion::V31, ConnectReturnCode::Accepted});
  if (present && !revoked.empty()) {
    for (const auto& filter : revoked) {
      spdlog::info("client {} ({}): subscription to '{}' no longer authorized, removed", client_id, identity_,
                   filter);
      security::AuditEvent e;
      e.event = "acl.deny";
      e.identity = identity_;
      e.action = "subscribe";
      e.topic = filter;
      e.reason = "resumed session";
      audit(e);
    }
    if (const auto dropped = shard_.revoke_subscriptions(s, revoked))
      spdlog::debug("client {} ({}): {} queued message(s) of removed subscriptions dropped", client_id,
                    identity_, dropped);
  }
  if (present) shard_.resume(s);
}

const Session* Client::regranted_session(const PendingConnect& pc) const {
  // A superuser's requests are not asked about; without a remote authorizer
  // each delivery is checked against the listener's ACL (Shard::access).
  if (pc.clean_session || superuser_) return nullptr;
  const security::RemoteAuthorizer* remote = shard_.authorizer(listener_.acl_slot);
  if (!remote) return nullptr;
  const Session* s = shard_.find_session(pc.client_id);
  if (!s || s->subscriptions.empty()) return nullptr;
  // Granted to this identity by this server: a restored session's grants
  // (identity_known false) and a superuser's unasked ones do not count.
  const bool granted_here = s->identity_known && !s->superuser && s->username == identity_ &&
                            shard_.authorizer(s->acl_slot) == remote;
  return granted_here ? nullptr : s;
}

void Client::handle_publish(const codec::Publish& p) {
  Session& s = *session_;
  const bool duplicate_qos2 = p.qos == QoS::ExactlyOnce && s.awaiting_pubrel.contains(p.packet_id);
  // A refused PUBLISH is dropped but still acknowledged: MQTT 3.1.1 has no way to
  // refuse one but closing the connection.
  const Access access =
      duplicate_qos2 ? Access::Allow : check(identity(s), &s.access, security::Action::Publish, p.topic);
  if (access == Access::Ask) return;  // handled again once the remote authorizer answered
  shard_.stats().messages_received.add();
  const bool allowed = access == Access::Allow;
  if (!allowed) {
    shard_.stats().dropped_not_authorized.add();
    spdlog::debug("client {} ({}): PUBLISH to '{}' not authorized, dropped", client_id_, identity_, p.topic);
    security::AuditEvent e;
    e.event = "acl.deny";
    e.identity = identity_;
    e.action = "publish";
    e.topic = p.topic;
    audit(e);
  }
  bool deliver = !duplicate_qos2 && allowed;
  if (deliver) {
    if (const auto over = topic_over_limits(p.topic, shard_.shared().limits)) {
      limit_hit(shard_, *over, transport_.peer(), client_id_, [&] {
        return fmt::format("PUBLISH to a topic of {} bytes; connection closed", p.topic.size());
      });
      return close(CloseKind::Abnormal, "topic over the limits");
    }
    if (const PayloadLimit* pl = payload_limit(p.topic, shard_.shared().limits);
        pl && p.payload.size() > pl->max) {
      // Like a PUBLISH the ACL refuses: dropped, counted, and still acknowledged.
      limit_hit(shard_, Limit::Payload, transport_.peer(), client_id_, [&] {
        return fmt::format("PUBLISH of {} bytes to '{}' (at most {} on '{}'), dropped", p.payload.size(),
                           p.topic, pl->max, pl->topics);
      });
      deliver = false;
    }
  }
  if (deliver) {
    // Still acknowledged below when the topic's payload policy drops it.
    if (auto m = admit_payload(p.topic, p.payload, p.qos, p.retain, "publish")) {
      if (p.retain) shard_.retain(m, transport_.peer(), client_id_);
      shard_.route(m, p.topic);
    }
  }
  if (p.qos == QoS::AtLeastOnce) {
    send(codec::Ack{codec::PacketType::Puback, p.packet_id});  // [MQTT-4.3.2-2]
  } else if (p.qos == QoS::ExactlyOnce) {
    // [MQTT-4.3.3-2] until PUBREL arrives, a PUBLISH with this id is the same message.
    // Stored with the message, so a resend after a restart is still recognised.
    if (s.awaiting_pubrel.insert(p.packet_id) && s.durable() && shard_.shared().store)
      shard_.writes().put_pubrel(s.id, p.packet_id);
    send(codec::Ack{codec::PacketType::Pubrec, p.packet_id});
  }
}

void Client::handle_ack(const codec::Ack& a) {
  Session& s = *session_;
  if (a.type == codec::PacketType::Pubrel) {
    if (s.awaiting_pubrel.erase(a.packet_id) && s.durable() && shard_.shared().store)
      shard_.writes().erase_pubrel(s.id, a.packet_id);
    send(codec::Ack{codec::PacketType::Pubcomp, a.packet_id});  // [MQTT-4.3.3-2]
    return;
  }
  const auto want = a.type == codec::PacketType::Puback   ? Session::OutState::AwaitPuback
                    : a.type == codec::PacketType::Pubrec ? Session::OutState::AwaitPubrec
                                                          : Session::OutState::AwaitPubcomp;
  Session::Inflight* f = s.inflight.find(a.packet_id);
  if (!f || f->state != want) return;  // an unknown id, or an acknowledgement out of turn, is ignored
  if (want == Session::OutState::AwaitPubrec) {
    // [MQTT-4.3.3-1] answer PUBREC with PUBREL and keep the id until PUBCOMP.
    f->state = Session::OutState::AwaitPubcomp;
    f->message.reset();
    // Stored before PUBREL leaves: after a restart the PUBLISH is never resent.
    if (f->seq && shard_.writes().put_inflight(s.id, f->seq, f->packet_id, 2)) f->inflight_entry = true;
    send(codec::Ack{codec::PacketType::Pubrel, a.packet_id});
    return;
  }
  shard_.acknowledged(s, *f);
  s.inflight.erase(f);
  shard_.pump(s);
}

void Client::handle_subscribe(const codec::Subscribe& sub) {
  Session& s = *session_;
  codec::Suback ack;
  ack.packet_id = sub.packet_id;  // [MQTT-3.8.4-2]
  // Every filter is decided before any takes effect: when the remote
  // authorizer must be asked, the packet is handled again with its answers.
  std::vector<Access> decisions;
  decisions.reserve(sub.subscriptions.size());
  for (const auto& f : sub.subscriptions)
    decisions.push_back(check(identity(s), &s.access, security::Action::Subscribe, f.filter));
  if (has_unanswered()) return;
  const Limits& limits = shard_.shared().limits;
  // [MQTT-3.3.1-6][MQTT-3.8.4-3] the retained messages of each (re-)subscribed
  // filter, looked up before the subscription takes effect and sent after the
  // SUBACK. The other loops learn of the subscription after this lookup; what
  // they set in between, they deliver when they learn (Shard::apply).
  std::vector<std::vector<MessagePtr>> retained(sub.subscriptions.size());
  for (std::size_t i = 0; i < sub.subscriptions.size(); ++i) {
    const auto& f = sub.subscriptions[i];
    // Filters are valid here (the decoder closes on a malformed one).
    if (const auto over = topic_over_limits(f.filter, limits)) {
      limit_hit(shard_, *over, transport_.peer(), client_id_,
                [&] { return fmt::format("SUBSCRIBE to a filter of {} bytes refused", f.filter.size()); });
      ack.return_codes.push_back(codec::kSubackFailure);
      continue;
    }
    if (limits.max_subscriptions_per_client > 0 &&
        s.subscriptions.size() >= limits.max_subscriptions_per_client &&
        s.subscriptions.find(f.filter) == s.subscriptions.end()) {
      limit_hit(shard_, Limit::Subscriptions, transport_.peer(), client_id_, [&] {
        return fmt::format("{} subscriptions held; '{}' refused", s.subscriptions.size(), f.filter);
      });
      ack.return_codes.push_back(codec::kSubackFailure);
      continue;
    }
    if (decisions[i] != Access::Allow) {
      spdlog::debug("client {} ({}): subscription to '{}' not authorized", client_id_, identity_, f.filter);
      security::AuditEvent e;
      e.event = "acl.deny";
      e.identity = identity_;
      e.action = "subscribe";
      e.topic = f.filter;
      audit(e);
      ack.return_codes.push_back(codec::kSubackFailure);
      continue;
    }
    auto found = shard_.shared().retained.match(f.filter);
    retained[i] = std::move(found.messages);
    shard_.subscribe(s, f.filter, f.qos, found.version);
    ack.return_codes.push_back(static_cast<std::uint8_t>(f.qos));
  }
  // [MQTT-3.8.4-5] one return code per filter, in order.
  send(ack);
  for (std::size_t i = 0; i < sub.subscriptions.size(); ++i) {
    const auto granted = sub.subscriptions[i].qos;
    for (const auto& m : retained[i]) shard_.deliver(s, m, min_qos(granted, m->qos), true);
  }
}

void Client::handle_unsubscribe(const codec::Unsubscribe& u) {
  Session& s = *session_;
  for (const auto f : u.filters) shard_.unsubscribe(s, f);
  send(codec::Unsuback{u.packet_id});  // [MQTT-3.10.4-4][MQTT-3.10.4-5]
}

}  // namespace moat::broker

namespace moat::broker {

Client::Access Client::check(const security::Identity& who, security::AccessCache* cache,
                             security::Action action, std::string_view topic) {
  for (const auto& q : asked_)
    if (q.answer && q.action == action && q.topic == topic)
      return q.answer->decision == security::Decision::Allow ? Access::Allow : Access::Deny;
  if (const auto d = shard_.access(who, listener_.acl_slot, cache, action, topic))
    return *d == security::Decision::Allow ? Access::Allow : Access::Deny;
  const bool noted = std::any_of(asked_.begin(), asked_.end(),
                                 [&](const Asked& q) { return q.action == action && q.topic == topic; });
  if (!noted) asked_.push_back(Asked{action, std::string(topic), std::nullopt});
  return Access::Ask;
}

bool Client::has_unanswered() const {
  return std::any_of(asked_.begin(), asked_.end(), [](const Asked& q) { return !q.answer; });
}

bool Client::ask_remote(const security::Identity& who, std::function<void()> ready) {
  security::RemoteAuthorizer& remote = *shard_.authorizer(listener_.acl_slot);  // the listener's IAM server
  const std::uint32_t hold = ++hold_id_;
  held_ = true;
  asking_ = true;
  auto answered = [this, hold, ready](std::size_t k, security::RemoteAuthorizer::Answer a) {
    if (hold != hold_id_ || state_ == State::Closed || k >= asked_.size()) return;
    asked_[k].answer = a;
    if (session_) shard_.remember(session_->access, listener_.acl_slot, asked_[k].action, asked_[k].topic, a);
    if (has_unanswered()) return;
    held_ = false;
    ++hold_id_;  // the timeout below has nothing left to do
    if (!asking_) ready();
  };
  for (std::size_t k = 0; k < asked_.size(); ++k) {
    if (asked_[k].answer) continue;
    auto slot = std::make_shared<security::RemoteAuthorizer::Answer>();
    const Asked& q = asked_[k];
    transport_.run_async(
        [&remote, &who, &q, slot](std::function<void()> resume) {
          remote.ask(who, q.action, q.topic,
                     [slot, resume = std::move(resume)](security::RemoteAuthorizer::Answer a) {
                       *slot = a;
                       resume();
                     });
        },
        [answered, k, slot] { answered(k, *slot); });
    if (!held_) break;  // answered at once, all of them
  }
  asking_ = false;
  if (!held_) return true;
  // The remote authorizer times out on its own; this is the broker's bound,
  // should an answer never come: what is still unanswered is denied.
  transport_.run_after(shard_.shared().limits.auth_timeout, [this, hold, ready] {
    if (hold != hold_id_ || !held_ || state_ == State::Closed) return;
    spdlog::warn("client {} ({}): no authorization answer within {} ms, denied", client_id_, identity_,
                 shard_.shared().limits.auth_timeout.count());
    for (auto& q : asked_)
      if (!q.answer) q.answer = security::RemoteAuthorizer::Answer{security::Decision::Deny, {}, true};
    held_ = false;
    ++hold_id_;
    ready();
  });
  return false;
}

}  // namespace moat::broker
