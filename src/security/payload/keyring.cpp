#include "security/payload/keyring.hpp"

#include <toml++/toml.h>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <sstream>

#include "codec/topic.hpp"

namespace moat::payload {
namespace {

class Reporter {
 public:
  explicit Reporter(std::filesystem::path source) : source_(std::move(source)) {}
  [[noreturn]] void fail(const toml::node& n, std::string_view key, std::string_view reason) const {
    const auto& b = n.source().begin;
    throw KeyringError(source_.string() + ":" + std::to_string(b.line) + ":" + std::to_string(b.column) +
                       ": " + std::string(key) + ": " + std::string(reason));
  }

 private:
  std::filesystem::path source_;
};

void only_keys(const Reporter& r, const toml::table& t, std::string_view section,
               std::initializer_list<std::string_view> allowed) {
  for (const auto& [k, v] : t) {
    if (std::find(allowed.begin(), allowed.end(), k.str()) != allowed.end()) continue;
    std::string list;
    for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
    r.fail(v, section.empty() ? std::string(k.str()) : std::string(section) + "." + std::string(k.str()),
           "unknown key (known here: " + list + ")");
  }
}

std::int64_t get_int(const Reporter& r, const toml::table& t, std::string_view key, std::int64_t fallback,
                     std::int64_t lo, std::int64_t hi) {
  const toml::node* n = t.get(key);
  if (!n) return fallback;
  const std::string name = "replay." + std::string(key);
  if (!n->is_integer()) r.fail(*n, name, "must be an integer");
  const auto v = *n->value<std::int64_t>();
  if (v < lo || v > hi)
    r.fail(*n, name, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  return v;
}

std::int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::int64_t now_micros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Can `key` seal in `mode`?
bool seals(const Key& k, Mode mode) {
  switch (mode) {
    case Mode::Encrypt:
      if (!k.is_symmetric()) return false;
      if (k.alg()) return *k.alg() != alg::HMAC256 && k.allows(*k.alg());
      return k.allows(alg::A256GCM) || k.allows(alg::A128GCM) || k.allows(alg::A192GCM);
    case Mode::EncryptTo:
      return k.allows(alg::EcdhEsHkdf256);
    case Mode::Mac:
      return k.allows(alg::HMAC256);
    case Mode::Sign:
      return k.has_private() && (k.allows(alg::EdDSA) || k.allows(alg::ES256));
    case Mode::Digest:
      return false;
  }
  return false;
}

// Can `key` open `env` (before trying the cryptography)?
bool opens(const Key& k, const Envelope& env) {
  if (env.kind != Envelope::Kind::Encrypt) return k.allows(env.alg);
  for (const auto& r : env.recipients) {
    if (r.kid && *r.kid != k.kid()) continue;
    if (r.alg == alg::Direct ? k.is_symmetric() && k.allows(env.alg)
                             : k.allows(alg::EcdhEsHkdf256) && k.has_private())
      return true;
  }
  return false;
}

}  // namespace

Keyring::Keyring(std::vector<Entry> entries, ReplayConfig replay)
    : entries_(std::move(entries)), replay_(replay), guard_(std::make_shared<ReplayGuard>(replay)) {}

void Keyring::adopt_replay_windows(std::shared_ptr<ReplayGuard> windows) {
  if (!windows) return;
  windows->reconfigure(replay_);
  guard_ = std::move(windows);
}

std::unique_ptr<Keyring> Keyring::single(Key key, ReplayConfig replay) {
  Entry e;
  e.keys.push_back(std::make_shared<const Key>(std::move(key)));
  std::vector<Entry> entries;
  entries.push_back(std::move(e));
  return std::make_unique<Keyring>(std::move(entries), replay);
}

std::unique_ptr<Keyring> Keyring::load(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw KeyringError(file.string() + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), file);
}

std::unique_ptr<Keyring> Keyring::parse(std::string_view text, const std::filesystem::path& source) {
  toml::table root;
  try {
    root = toml::parse(text, source.string());
  } catch (const toml::parse_error& e) {
    const auto& b = e.source().begin;
    throw KeyringError(source.string() + ":" + std::to_string(b.line) + ":" + std::to_string(b.column) +
                       ": " + std::string(e.description()));
  }
  const Reporter r(source);
  only_keys(r, root, "", {"replay", "topic"});

  ReplayConfig replay;
  if (const toml::node* n = root.get("replay")) {
    if (!n->is_table()) r.fail(*n, "replay", "must be a table ([replay])");
    const toml::table& t = *n->as_table();
    only_keys(r, t, "replay", {"max_age", "max_future", "window", "max_senders", "max_entries"});
    replay.max_age_s = get_int(r, t, "max_age", replay.max_age_s, 1, 31'536'000);
    replay.max_future_s = get_int(r, t, "max_future", replay.max_future_s, 0, 86'400);
    replay.window = static_cast<std::size_t>(get_int(r, t, "window", 1024, 1, 1'000'000));
    replay.max_senders = static_cast<std::size_t>(get_int(r, t, "max_senders", 100000, 1, 100'000'000));
    replay.max_entries = static_cast<std::size_t>(get_int(r, t, "max_entries", 1'000'000, 1, 1'000'000'000));
  }

  const std::filesystem::path base =
      source.has_parent_path() ? source.parent_path() : std::filesystem::path(".");
  std::map<std::filesystem::path, std::shared_ptr<const Key>> loaded;
  std::vector<Entry> entries;
  const toml::node* topics = root.get("topic");
  if (!topics)
    throw KeyringError(source.string() + ": no [[topic]] entries: a keyring maps topic filters to keys");
  if (!topics->is_array_of_tables()) r.fail(*topics, "topic", "must be an array of tables ([[topic]])");
  for (const toml::node& tn : *topics->as_array()) {
    const toml::table& t = *tn.as_table();
    only_keys(r, t, "topic", {"filter", "keys", "require_fresh", "seal"});
    Entry e;
    const toml::node* f = t.get("filter");
    if (!f) r.fail(tn, "topic.filter", "missing: the topic filter these keys are for");
    if (!f->is_string()) r.fail(*f, "topic.filter", "must be a string");
    e.filter = std::string(*f->value<std::string_view>());
    if (!codec::valid_topic_filter(e.filter) || codec::check_utf8(e.filter) != codec::ProtocolError::None)
      r.fail(*f, "topic.filter", "\"" + e.filter + "\" is not a valid MQTT topic filter");
    const toml::node* ks = t.get("keys");
    if (!ks) r.fail(tn, "topic.keys", "missing: the key files of this topic filter");
    if (!ks->is_array() || ks->as_array()->empty())
      r.fail(*ks, "topic.keys", "must be a non-empty array of key file names");
    for (const toml::node& kn : *ks->as_array()) {
      if (!kn.is_string()) r.fail(kn, "topic.keys", "must be a key file name (a string)");
      std::filesystem::path p(*kn.value<std::string>());
      if (p.is_relative()) p = base / p;
      auto it = loaded.find(p);
      if (it == loaded.end()) {
        try {
          it = loaded.emplace(p, std::make_shared<const Key>(load_key_file(p))).first;
        } catch (const KeyError& err) {
          r.fail(kn, "topic.keys", err.what());
        }
      }
      for (const auto& have : e.keys)
        if (have->kid() == it->second->kid() && have != it->second)
          r.fail(kn, "topic.keys", "two keys of this topic have the key id \"" + have->kid() + "\"");
      e.keys.push_back(it->second);
    }
    if (const toml::node* rf = t.get("require_fresh")) {
      if (!rf->is_boolean()) r.fail(*rf, "topic.require_fresh", "must be true or false");
      e.require_fresh = *rf->value<bool>();
    }
    if (const toml::node* sn = t.get("seal")) {
      if (!sn->is_string()) r.fail(*sn, "topic.seal", "must be a string (encrypt | encrypt-to | mac | sign)");
      const auto m = parse_mode(*sn->value<std::string_view>());
      if (!m || *m == Mode::Digest)
        r.fail(*sn, "topic.seal",
               "\"" + std::string(*sn->value<std::string_view>()) +
                   "\" is not one of: encrypt | encrypt-to | mac | sign");
      if (std::none_of(e.keys.begin(), e.keys.end(), [&](const auto& k) { return seals(*k, *m); }))
        r.fail(*sn, "topic.seal",
               "no key of this entry can seal in mode " + std::string(to_string(*m)) +
                   (*m == Mode::Sign ? " (signing needs a private key)" : ""));
      e.seal = *m;
    }
    entries.push_back(std::move(e));
  }
  return std::make_unique<Keyring>(std::move(entries), replay);
}

std::vector<std::shared_ptr<const Key>> Keyring::keys_for(std::string_view topic) const {
  std::vector<std::shared_ptr<const Key>> out;
  for (const Entry& e : entries_) {
    if (!e.filter.empty() && !codec::topic_matches(e.filter, topic)) continue;
    for (const auto& k : e.keys)
      if (std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
  }
  return out;
}

bool Keyring::has_keys_for(std::string_view topic) const {
  return std::any_of(entries_.begin(), entries_.end(), [topic](const Entry& e) {
    return !e.keys.empty() && (e.filter.empty() || codec::topic_matches(e.filter, topic));
  });
}

std::optional<Mode> Keyring::seal_mode_for(std::string_view topic) const {
  for (const Entry& e : entries_)
    if (e.seal && (e.filter.empty() || codec::topic_matches(e.filter, topic))) return e.seal;
  return std::nullopt;
}

bool Keyring::can_seal(std::string_view topic, Mode mode) const {
  if (mode == Mode::Digest) return true;
  const auto keys = keys_for(topic);
  return std::any_of(keys.begin(), keys.end(), [&](const auto& k) { return seals(*k, mode); });
}

Result<std::string> Keyring::seal(std::string_view topic, std::string_view plaintext, Mode mode,
                                  const SealPolicy& policy) {
  const Key* key = nullptr;
  std::shared_ptr<const Key> hold;
  if (mode != Mode::Digest) {
    for (auto& k : keys_for(topic)) {
      if (seals(*k, mode)) {
        hold = k;
        key = k.get();
        break;
      }
    }
    if (!key)
      return fail(Errc::unknown_key, "no key for topic \"" + std::string(topic) + "\" can seal in mode " +
                                         std::string(to_string(mode)));
  }
  SealOptions o;
  o.content_alg = policy.content_alg;
  if (policy.replay_headers) {
    const std::int64_t us = policy.now_us ? *policy.now_us : now_micros();
    o.iat = us / 1'000'000;
    o.seq = sequencer_.next(key ? key->kid() : std::string_view(),
                            static_cast<std::uint64_t>(std::max<std::int64_t>(us, 0)));
  }
  return payload::seal(mode, key, topic, plaintext, o);
}

Result<Opened> Keyring::open(std::string_view topic, std::string_view envelope, const OpenPolicy& policy) {
  auto env = decode(envelope);
  if (!env) return env.error();
  return open(topic, *env, policy);
}

Result<Opened> Keyring::open(std::string_view topic, const Envelope& envelope, const OpenPolicy& policy) {
  const Envelope* env = &envelope;

  bool require_fresh = policy.require_fresh;
  for (const Entry& e : entries_)
    if (e.require_fresh && (e.filter.empty() || codec::topic_matches(e.filter, topic))) require_fresh = true;

  Result<Opened> opened = fail(Errc::unknown_key, "");
  if (env->kind == Envelope::Kind::Digest) {
    if (!policy.allow_digest)
      return fail(Errc::wrong_algorithm,
                  "a SHA-256 digest envelope is not authenticated and not accepted here");
    opened = open_with(*env, nullptr, topic);
  } else {
    const auto keys = keys_for(topic);
    if (keys.empty()) return fail(Errc::unknown_key, "no key for topic \"" + std::string(topic) + "\"");
    // The kids the envelope names (the body's, or its recipients').
    std::vector<std::string_view> kids;
    if (env->kind == Envelope::Kind::Encrypt) {
      for (const auto& rc : env->recipients)
        if (rc.kid) kids.push_back(*rc.kid);
    } else if (env->kid) {
      kids.push_back(*env->kid);
    }
    std::vector<const Key*> named;
    for (const auto& k : keys)
      if (kids.empty() || std::find(kids.begin(), kids.end(), k->kid()) != kids.end())
        named.push_back(k.get());
    if (named.empty())
      return fail(Errc::unknown_key, "no key with key id \"" + std::string(kids.front()) + "\" for topic \"" +
                                         std::string(topic) + "\"");
    std::vector<const Key*> fit;
    for (const Key* k : named)
      if (opens(*k, *env)) fit.push_back(k);
    if (fit.empty())
      return fail(
          Errc::wrong_algorithm,
          std::string(kids.empty() ? "no key for this topic" : "key \"" + named.front()->kid() + "\"") +
              " is not for " + alg_name(env->alg) + " (" + std::string(to_string(mode_of(env->kind))) + ")");
    for (const Key* k : fit) {
      opened = open_with(*env, k, topic);
      if (opened || opened.code() != Errc::verification_failed) break;
    }
  }
  if (!opened) return opened;

  const Opened& o = *opened;
  if (require_fresh) {
    if (!o.iat) return fail(Errc::not_fresh, "no protected timestamp (CWT claim iat, header 15)");
    if (!o.seq)
      return fail(Errc::not_fresh, "no protected sequence number (Partial IV, header 6, or CWT claim cti)");
  }
  const ReplayConfig& rc = replay_;
  if (o.iat) {
    const std::int64_t now = policy.now_s ? *policy.now_s : now_seconds();
    const std::int64_t max_age = policy.max_age_s ? *policy.max_age_s : rc.max_age_s;
    if (*o.iat < now - max_age)
      return fail(Errc::stale, "sealed " + std::to_string(now - *o.iat) + " s ago; the limit is " +
                                   std::to_string(max_age) + " s");
    if (*o.iat > now + rc.max_future_s)
      return fail(Errc::stale, "timestamp " + std::to_string(*o.iat - now) +
                                   " s in the future; the limit is " + std::to_string(rc.max_future_s) +
                                   " s");
  }
  if (o.seq) {
    std::uint64_t mark = 0;
    if (auto ok = guard_->accept(o.sender, *o.seq, &mark); !ok) return ok.error();
    opened->replay_mark = mark;
  }
  return opened;
}

}  // namespace moat::payload
