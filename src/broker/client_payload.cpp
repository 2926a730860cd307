// Topic payload policies on a connection's PUBLISH and will
// (docs/payload-security.md, "Broker policies").
//
// Verification runs inline on the connection's event loop (an Ed25519 check
// costs ~100 µs). Handing it to a worker would have to hold the connection's
// later packets until the answer (a publisher's messages stay in order) and
// add a cross-thread round trip per message; only the other connections of a
// loop saturated by signed traffic would gain. docs/benchmarks.md, "Payload
// envelopes", has the measurement.
#include <spdlog/spdlog.h>

#include "broker/shard.hpp"

namespace moat::broker {

namespace {

constexpr auto kPayloadAuditWindow = std::chrono::seconds(10);
constexpr std::uint32_t kPayloadAuditBurst = 20;

// Client-supplied bytes (key ids, reasons that quote them) for logs and the
// audit stream: control bytes and non-ASCII escaped as \xNN, bounded length.
std::string printable(std::string_view s, std::size_t max) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (const char ch : s) {
    if (out.size() >= max) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c >= 0x7f || c == '\\') {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    } else {
      out += ch;
    }
  }
  return out;
}

}  // namespace

MessagePtr Client::admit_payload(std::string_view topic, std::string_view payload, codec::QoS qos,
                                 bool retain, std::string_view action) {
  const PayloadPolicies* policies = shard_.payload_policies();
  if (!policies || policies->empty()) return make_message(topic, payload, qos, retain);
  PayloadVerdict v = policies->check(topic, payload, identity_, client_id_);
  // Accepted: its sequence number is stored, so that a restart does not accept
  // the same envelope again, and no copy of the message is delivered before
  // that write is durable (Message::replay_marked). The acknowledgement need
  // not wait: a crash before the commit loses the mark and the undelivered
  // message together, as it loses any message for a clean session.
  const bool marked = v.replay_mark.has_value();
  if (marked) {
    const bool unchanged = shard_.writes_made() == writes_mark_;
    shard_.persist_replay_mark(v.replay_scope, v.replay_sender, *v.replay_mark,
                               std::chrono::seconds(v.replay_keep_s));
    if (unchanged) writes_mark_ = shard_.writes_made();
  }
  if (v.action == PayloadVerdict::Action::Pass) {
    if (v.policed) shard_.stats().payload_verified.add();
    return make_message(topic, payload, qos, retain, marked);
  }
  if (v.action == PayloadVerdict::Action::Replace) {
    shard_.stats().payload_verified.add();
    return make_message(topic, v.plaintext, qos, retain, marked);
  }

  const std::string kid = printable(v.kid, 64);
  const std::string reason = printable(v.reason, 240);
  if (action == "publish") shard_.stats().dropped_payload_policy.add();
  spdlog::debug("client {} ({}): {} to '{}' refused by the payload policy: {}", client_id_,
                identity_.empty() ? "anonymous" : identity_, action, topic, reason);
  // Bounded per connection: a client sending garbage must not fill the disk.
  const TimePoint now = shard_.now();
  if (!payload_audit_) payload_audit_ = std::make_unique<PayloadAudit>();
  PayloadAudit& pa = *payload_audit_;
  if (now - pa.since >= kPayloadAuditWindow) {
    pa.since = now;
    pa.lines = 0;
  }
  if (pa.lines >= kPayloadAuditBurst) {
    ++pa.suppressed;
    return nullptr;
  }
  ++pa.lines;
  security::AuditEvent e;
  e.event = "payload.reject";
  e.identity = identity_;
  e.action = action;
  e.topic = topic;
  e.failure = v.failure;
  e.kid = kid;
  e.mode = v.mode;
  e.reason = reason;
  if (pa.suppressed > 0) e.suppressed = static_cast<std::int64_t>(pa.suppressed);
  pa.suppressed = 0;
  audit(e);
  return nullptr;
}

}  // namespace moat::broker
