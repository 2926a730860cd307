#include "broker/payload_policy.hpp"

#include <algorithm>

#include "codec/topic.hpp"
#include "security/payload/keyring.hpp"
#include "store/store.hpp"

namespace moat::broker {

namespace payload = moat::payload;

struct PayloadPolicies::Policy {
  PayloadPolicySpec spec;
  std::shared_ptr<payload::Keyring> keyring;  // null: the form of the envelope only
};

namespace {

// The audit token of a payload error (docs/audit.md).
std::string_view token(payload::Errc e) {
  switch (e) {
    case payload::Errc::malformed:
      return "malformed";
    case payload::Errc::unsupported:
      return "unsupported";
    case payload::Errc::wrong_algorithm:
      return "wrong_algorithm";
    case payload::Errc::unknown_key:
      return "unknown_key";
    case payload::Errc::verification_failed:
      return "verification_failed";
    case payload::Errc::not_fresh:
      return "not_fresh";
    case payload::Errc::stale:
      return "stale";
    case payload::Errc::replayed:
      return "replayed";
  }
  return "malformed";
}

bool mode_meets(payload::Mode m, PayloadRequirement r) {
  switch (r) {
    case PayloadRequirement::Mac:
      return m == payload::Mode::Mac;
    case PayloadRequirement::Signature:
      return m == payload::Mode::Sign;
    case PayloadRequirement::Encrypted:
      return m == payload::Mode::Encrypt || m == payload::Mode::EncryptTo;
  }
  return false;
}

std::string_view envelope_name(PayloadRequirement r) {
  switch (r) {
    case PayloadRequirement::Mac:
      return "a MAC envelope (COSE_Mac0)";
    case PayloadRequirement::Signature:
      return "a signature envelope (COSE_Sign1)";
    case PayloadRequirement::Encrypted:
      return "an encryption envelope (COSE_Encrypt0 or COSE_Encrypt)";
  }
  return "";
}

// Can `k` verify or open envelopes that meet `r`?
bool fits(const payload::Key& k, PayloadRequirement r) {
  using namespace payload::alg;
  switch (r) {
    case PayloadRequirement::Mac:
      return k.allows(HMAC256);
    case PayloadRequirement::Signature:
      return k.allows(EdDSA) || k.allows(ES256);
    case PayloadRequirement::Encrypted:
      return (k.is_symmetric() &&
              (k.allows(A256GCM) || k.allows(A128GCM) || k.allows(A192GCM) || k.allows(ChaCha20Poly1305))) ||
             (k.allows(EcdhEsHkdf256) && k.has_private());
  }
  return false;
}

std::vector<std::shared_ptr<const payload::Key>> all_keys(const payload::Keyring& ring) {
  std::vector<std::shared_ptr<const payload::Key>> out;
  for (const auto& e : ring.entries())
    for (const auto& k : e.keys)
      if (std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
  return out;
}

// `bind` with %u (identity), %c (client id) and %% replaced; nullopt when it
// needs an identity and the client has none.
std::optional<std::string> expand(std::string_view pattern, std::string_view identity,
                                  std::string_view client_id) {
  std::string out;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '%' || i + 1 >= pattern.size()) {
      out += pattern[i];
      continue;
    }
    const char c = pattern[++i];
    if (c == 'u') {
      if (identity.empty()) return std::nullopt;
      out += identity;
    } else if (c == 'c') {
      out += client_id;
    } else {
      out += c;  // "%%": a literal %
    }
  }
  return out;
}

void check_against_keyring(const PayloadPolicySpec& s, const payload::Keyring& ring) {
  const auto keys = all_keys(ring);
  const std::string file = s.keyring.string();
  if (std::none_of(keys.begin(), keys.end(), [&](const auto& k) { return fits(*k, s.require); })) {
    std::string what = s.require == PayloadRequirement::Signature
                           ? "verifies signatures (ed25519 or p256 keys)"
                       : s.require == PayloadRequirement::Mac ? "verifies MACs (hmac256 keys)"
                                                              : "decrypts (aes256, chacha20, or the private "
                                                                "half of an x25519 or p256 --use enc key)";
    throw PayloadPolicyError(s.keyring_at + ": payload_policy.keyring: " + file + " has no key that " + what);
  }
  if (s.decrypt && std::none_of(keys.begin(), keys.end(),
                                [&](const auto& k) { return fits(*k, PayloadRequirement::Encrypted); }))
    throw PayloadPolicyError(s.decrypt_at + ": payload_policy.decrypt: " + file +
                             " has no key that decrypts");
  for (const auto& signer : s.signers) {
    const std::string& kid = signer.first;  // a named variable: clang 14 lambdas cannot capture bindings
    const bool present = std::any_of(keys.begin(), keys.end(),
                                     [&](const auto& k) { return k->kid() == kid && fits(*k, s.require); });
    if (!present)
      throw PayloadPolicyError(
          s.signers_at + ": payload_policy.signers: " + file + " has no key with key id \"" + kid +
          "\" that " + (s.require == PayloadRequirement::Mac ? "verifies MACs" : "verifies signatures"));
  }
}

}  // namespace

std::string_view to_string(PayloadRequirement r) {
  switch (r) {
    case PayloadRequirement::Mac:
      return "mac";
    case PayloadRequirement::Signature:
      return "signature";
    case PayloadRequirement::Encrypted:
      return "encrypted";
  }
  return "";
}

PayloadPolicies::PayloadPolicies() = default;
PayloadPolicies::~PayloadPolicies() = default;

std::shared_ptr<const PayloadPolicies> PayloadPolicies::load(const std::vector<PayloadPolicySpec>& specs,
                                                             const PayloadPolicies* previous) {
  std::shared_ptr<PayloadPolicies> out(new PayloadPolicies());
  for (const auto& spec : specs) {
    auto p = std::make_unique<Policy>();
    p->spec = spec;
    if (!spec.keyring.empty()) {
      auto it = out->keyrings_.find(spec.keyring);
      if (it == out->keyrings_.end()) {
        std::shared_ptr<payload::Keyring> ring;
        try {
          ring = payload::Keyring::load(spec.keyring);
        } catch (const std::exception& e) {
          throw PayloadPolicyError(spec.keyring_at + ": payload_policy.keyring: " + e.what());
        }
        if (previous) {
          if (auto old = previous->keyrings_.find(spec.keyring); old != previous->keyrings_.end())
            ring->adopt_replay_windows(old->second->replay_windows());
        }
        it = out->keyrings_.emplace(spec.keyring, std::move(ring)).first;
      }
      p->keyring = it->second;
      check_against_keyring(spec, *p->keyring);
    }
    out->policies_.push_back(std::move(p));
  }
  return out;
}

PayloadVerdict PayloadPolicies::check(std::string_view topic, std::string_view bytes,
                                      std::string_view identity, std::string_view client_id,
                                      std::optional<std::int64_t> now_s) const {
  PayloadVerdict v;
  const Policy* p = nullptr;
  for (const auto& candidate : policies_) {
    for (const auto& f : candidate->spec.topics) {
      if (codec::topic_matches(f, topic)) {
        p = candidate.get();
        break;
      }
    }
    if (p) break;
  }
  if (!p) return v;
  v.policed = true;
  const PayloadPolicySpec& s = p->spec;
  auto reject = [&](std::string_view failure, std::string reason) {
    v.action = PayloadVerdict::Action::Reject;
    v.failure = failure;
    v.reason = std::move(reason);
    return v;
  };

  if (bytes.empty())
    return reject("not_sealed",
                  "empty payload where the policy requires " + std::string(envelope_name(s.require)));
  auto env = payload::decode(bytes);
  if (!env) {
    // A plain payload is not CBOR, or not a COSE message: say so first.
    if (env.code() == payload::Errc::malformed)
      return reject("not_sealed", "not a COSE envelope (" + env.error().detail +
                                      ") where the policy requires " + std::string(envelope_name(s.require)));
    return reject(token(env.code()), env.error().message());
  }
  const payload::Mode mode = payload::mode_of(env->kind);
  v.mode = payload::to_string(mode);
  if (const auto kid = payload::wanted_kid(*env)) v.kid = std::string(*kid);
  if (!mode_meets(mode, s.require))
    return reject("wrong_mode", "a " + std::string(v.mode) + " envelope where the policy requires " +
                                    std::string(envelope_name(s.require)));

  // The binding is checked before the cryptography and the replay window: an
  // envelope from someone else's key never uses up a sequence number.
  if (!s.signers.empty() || !s.bind.empty()) {
    if (!env->kid)
      return reject("signer_not_bound",
                    "the envelope names no key id; the policy binds key ids to publishers");
    const std::string_view kid = *env->kid;
    bool bound = false;
    if (!s.signers.empty()) {
      const auto it = s.signers.find(std::string(kid));
      bound = it != s.signers.end() && !identity.empty() &&
              std::find(it->second.begin(), it->second.end(), identity) != it->second.end();
    } else {
      const auto want = expand(s.bind, identity, client_id);
      bound = want && *want == kid;
    }
    if (!bound)
      return reject("signer_not_bound",
                    "key \"" + std::string(kid) + "\" is not bound to " +
                        (identity.empty() ? std::string("an anonymous client")
                                          : "identity \"" + std::string(identity) + "\""));
  }

  if (!p->keyring) return v;  // `encrypted` without a keyring: the form is what is checked

  payload::OpenPolicy op;
  op.require_fresh = s.require_fresh;
  op.now_s = now_s;
  auto opened = p->keyring->open(topic, *env, op);
  if (!opened) return reject(token(opened.code()), opened.error().message());
  v.kid = opened->kid;
  if (opened->replay_mark) {
    v.replay_scope = s.keyring.native();
    v.replay_sender = std::move(opened->sender);
    v.replay_mark = opened->replay_mark;
    const payload::ReplayConfig& rc = p->keyring->replay_config();
    v.replay_keep_s = rc.max_age_s + rc.max_future_s;
  }
  if (s.decrypt && (mode == payload::Mode::Encrypt || mode == payload::Mode::EncryptTo)) {
    v.action = PayloadVerdict::Action::Replace;
    v.plaintext = std::move(opened->plaintext);
  }
  return v;
}

PayloadPolicies::RestoredMarks PayloadPolicies::restore_replay_marks(
    const std::vector<store::ReplayMarkRecord>& marks, std::int64_t now_unix_ms) const {
  RestoredMarks out;
  for (const auto& m : marks) {
    const auto it = keyrings_.find(std::filesystem::path(m.scope));
    bool useful = it != keyrings_.end();
    if (useful) {
      const payload::ReplayConfig& rc = it->second->replay_config();
      useful = now_unix_ms - m.written_unix_ms <= (rc.max_age_s + rc.max_future_s) * 1000;
    }
    if (!useful) {
      out.useless.push_back(store::replay_mark_key(m.scope, m.loop, m.sender));
      continue;
    }
    it->second->replay_guard().raise_floor(m.sender, m.seq);
    ++out.restored;
  }
  return out;
}

}  // namespace moat::broker
