// Topic payload policies ([[payload_policy]] in moat.toml, docs/payload-security.md
// "Broker policies"): on a matching topic, a PUBLISH (or a will) must carry a MAC,
// a signature or an encryption envelope that verifies with the policy's keyring,
// optionally from a key bound to the publisher's identity, and is dropped
// otherwise. With `decrypt`, the broker opens envelopes sealed to its topic key
// and delivers the plaintext.
//
//   auto policies = PayloadPolicies::load(specs);        // throws PayloadPolicyError
//   auto v = policies->check(topic, payload, identity, client_id);
//   if (v.action == PayloadVerdict::Action::Reject) ...  // v.failure, v.reason
//
// check() is safe to call from every event loop at once (the keyrings' replay
// windows are behind a mutex; the cryptography runs outside it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace moat::payload {
class Keyring;
}
namespace moat::store {
struct ReplayMarkRecord;
}

namespace moat::broker {

class PayloadPolicyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class PayloadRequirement : std::uint8_t { Mac, Signature, Encrypted };
std::string_view to_string(PayloadRequirement r);  // "mac", "signature", "encrypted"

// One [[payload_policy]] table, as moat.toml states it (config/ reads it; the
// keyring is loaded by PayloadPolicies::load).
struct PayloadPolicySpec {
  std::vector<std::string> topics;  // topic filters
  PayloadRequirement require = PayloadRequirement::Signature;
  std::filesystem::path keyring;  // empty: none (require = "encrypted" only: the form is checked)
  // Key id -> identities that may publish with it. With `signers` or `bind`, a
  // MAC or signature counts only from a key bound to the publisher.
  std::map<std::string, std::vector<std::string>> signers;
  // The key id the publisher must use: %u = its identity, %c = its client id.
  std::string bind;
  bool decrypt = false;       // deliver the plaintext of encryption envelopes
  bool require_fresh = true;  // refuse envelopes without timestamp and sequence number
  // "FILE:LINE:COLUMN" of the table and of some keys, for the errors of load().
  std::string at, keyring_at, signers_at, decrypt_at;
};

// What to do with one payload.
struct PayloadVerdict {
  enum class Action : std::uint8_t {
    Pass,     // no policy, or it verified: deliver the payload as received
    Replace,  // verified and decrypted: deliver `plaintext`
    Reject,   // drop it
  };
  Action action = Action::Pass;
  bool policed = false;   // a policy matched
  std::string plaintext;  // Replace
  // Reject: a token (docs/audit.md: "not_sealed", "wrong_mode", "signer_not_bound",
  // or a payload::Errc name such as "replayed") and one line saying why.
  std::string_view failure;
  std::string reason;
  std::string kid;        // the key id the envelope names (Reject) or that verified it
  std::string_view mode;  // "mac", "sign", "encrypt", "encrypt-to" once decoded
  // Pass or Replace of an envelope whose sequence number the keyring's replay
  // window accepted: the window's scope (its keyring file; valid while the
  // policies are), the sender and the highest number its window now holds.
  // The broker stores the mark, so that a restart does not accept it again.
  std::string_view replay_scope;
  std::string replay_sender;
  std::optional<std::uint64_t> replay_mark;
  std::int64_t replay_keep_s = 0;  // how long the mark is of use: max_age + max_future
};

class PayloadPolicies {
 public:
  struct Policy;

  // Loads the keyrings (each file once) and checks each policy against its
  // keyring: a key fit for the requirement, every `signers` key id present, a
  // decryption key for `decrypt`. Throws PayloadPolicyError "FILE:LINE:COLUMN:
  // KEY: REASON". `previous` (a reload) hands its replay windows over to the
  // keyrings loaded from the same files, so a reload forgets no envelope.
  static std::shared_ptr<const PayloadPolicies> load(const std::vector<PayloadPolicySpec>& specs,
                                                     const PayloadPolicies* previous = nullptr);
  ~PayloadPolicies();
  PayloadPolicies(const PayloadPolicies&) = delete;
  PayloadPolicies& operator=(const PayloadPolicies&) = delete;

  bool empty() const { return policies_.empty(); }
  std::size_t size() const { return policies_.size(); }

  // The decision for a PUBLISH (or a will) of `identity` (empty: anonymous)
  // with `client_id` on `topic`. The first policy whose filters match decides;
  // none: Pass. `now_s` (seconds since 1970) replaces the system clock in tests.
  PayloadVerdict check(std::string_view topic, std::string_view payload, std::string_view identity,
                       std::string_view client_id, std::optional<std::int64_t> now_s = std::nullopt) const;

  // Start-up: stored replay marks become their senders' floors in the keyrings'
  // windows (everything <= the mark refused; of several loops' marks for one
  // sender, the highest counts). Marks older (by the time they were written)
  // than their keyring's max_age + max_future stop nothing a staleness check
  // would not, and marks of keyrings no longer configured stop nothing: their
  // keys (store::replay_mark_key) are returned in `useless`, for removal.
  struct RestoredMarks {
    std::size_t restored = 0;
    std::vector<std::string> useless;
  };
  RestoredMarks restore_replay_marks(const std::vector<store::ReplayMarkRecord>& marks,
                                     std::int64_t now_unix_ms) const;

 private:
  PayloadPolicies();
  std::vector<std::unique_ptr<Policy>> policies_;
  // Keyrings by file (several policies may share one, and its windows).
  std::map<std::filesystem::path, std::shared_ptr<payload::Keyring>> keyrings_;
};

}  // namespace moat::broker
