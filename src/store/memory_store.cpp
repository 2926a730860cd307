#include "store/memory_store.hpp"

namespace moat::store {

void MemoryStore::commit(const Batch& b) {
  std::lock_guard lock(mu_);
  ++commits_;
  for (const auto& e : b.entries()) {
    switch (e.op) {
      case Batch::Op::PutSession:
        sessions_.insert_or_assign(e.key, e.value);
        break;
      case Batch::Op::EraseSession: {
        if (auto it = sessions_.find(e.key); it != sessions_.end()) sessions_.erase(it);
        const auto lo = std::make_pair(e.session_id, std::uint64_t{0});
        const auto hi = std::make_pair(e.session_id + 1, std::uint64_t{0});
        queued_.erase(queued_.lower_bound(lo), queued_.lower_bound(hi));
        inflight_.erase(inflight_.lower_bound(lo), inflight_.lower_bound(hi));
        pubrel_.erase(pubrel_.lower_bound({e.session_id, 0}), pubrel_.lower_bound({e.session_id + 1, 0}));
        break;
      }
      case Batch::Op::PutQueued:
        queued_.insert_or_assign({e.session_id, e.seq}, e.value);
        break;
      case Batch::Op::PutInflight:
        inflight_.insert_or_assign({e.session_id, e.seq}, std::make_pair(e.packet_id, e.state));
        break;
      case Batch::Op::EraseQueued:
        queued_.erase({e.session_id, e.seq});
        inflight_.erase({e.session_id, e.seq});
        break;
      case Batch::Op::PutPubrel:
        pubrel_.insert({e.session_id, static_cast<std::uint16_t>(e.seq)});
        break;
      case Batch::Op::ErasePubrel:
        pubrel_.erase({e.session_id, static_cast<std::uint16_t>(e.seq)});
        break;
      case Batch::Op::PutRetained:
        retained_.insert_or_assign(e.key, e.value);
        break;
      case Batch::Op::EraseRetained:
        if (auto it = retained_.find(e.key); it != retained_.end()) retained_.erase(it);
        break;
      case Batch::Op::PutBan:
        bans_.insert_or_assign(e.key, e.value);
        break;
      case Batch::Op::EraseBan:
        if (auto it = bans_.find(e.key); it != bans_.end()) bans_.erase(it);
        break;
      case Batch::Op::PutReplayMark:
        replay_marks_.insert_or_assign(e.key, e.value);
        break;
      case Batch::Op::EraseReplayMark:
        if (auto it = replay_marks_.find(e.key); it != replay_marks_.end()) replay_marks_.erase(it);
        break;
      case Batch::Op::PutFailures:
        failures_.insert_or_assign(e.key, e.value);
        break;
      case Batch::Op::EraseFailures:
        if (auto it = failures_.find(e.key); it != failures_.end()) failures_.erase(it);
        break;
    }
  }
}

Snapshot MemoryStore::load() {
  std::lock_guard lock(mu_);
  Snapshot snap;
  std::map<std::uint64_t, std::size_t> by_id;
  for (const auto& [id, bytes] : sessions_) {
    Snapshot::Session s;
    s.record = decode_session(bytes);
    snap.next_session_id = std::max(snap.next_session_id, s.record.session_id + 1);
    by_id[s.record.session_id] = snap.sessions.size();
    snap.sessions.push_back(std::move(s));
  }
  for (const auto& [key, bytes] : queued_) {
    auto q = decode_queued(bytes);
    if (auto f = inflight_.find(key); f != inflight_.end()) {
      q.packet_id = f->second.first;
      q.state = f->second.second;
    }
    snap.next_seq = std::max(snap.next_seq, q.seq + 1);
    if (auto it = by_id.find(key.first); it != by_id.end())
      snap.sessions[it->second].queued.push_back(std::move(q));
    else
      ++snap.orphans_removed;
  }
  for (const auto& [sid, pid] : pubrel_)
    if (auto it = by_id.find(sid); it != by_id.end())
      snap.sessions[it->second].awaiting_pubrel.push_back(pid);
  for (const auto& [topic, bytes] : retained_) snap.retained.push_back(decode_retained(bytes));
  const std::int64_t now = unix_ms_now();
  for (auto it = bans_.begin(); it != bans_.end();) {
    auto b = decode_ban(it->second);
    if (b.until_unix_ms <= now) {
      it = bans_.erase(it);  // ended while the broker was stopped
      continue;
    }
    snap.bans.push_back(std::move(b));
    ++it;
  }
  for (const auto& [key, bytes] : replay_marks_) snap.replay_marks.push_back(decode_replay_mark(bytes));
  for (const auto& [key, bytes] : failures_) {
    auto f = decode_failures(bytes);
    f.key = key;
    snap.failures.push_back(std::move(f));
  }
  for (auto it = queued_.begin(); it != queued_.end();) {
    if (!by_id.count(it->first.first)) {
      inflight_.erase(it->first);
      it = queued_.erase(it);
    } else {
      ++it;
    }
  }
  return snap;
}

std::uint64_t MemoryStore::commits() const {
  std::lock_guard lock(mu_);
  return commits_;
}

}  // namespace moat::store
