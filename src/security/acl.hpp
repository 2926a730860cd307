// Authorization by access-control list: rules per identity, action and topic,
// deny by default. The Mosquitto acl_file format is parsed into the same rule
// model a TOML rule list will produce. docs/security.md has the exact semantics.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moat::security {

enum class Action : std::uint8_t {
  Publish = 1,    // a client publishes to a topic name (will messages included)
  Subscribe = 2,  // a client subscribes with a topic filter
  Receive = 4,    // a message on a topic name is delivered to a client (retained included)
};

enum class Decision : std::uint8_t { Deny, Allow };

class OrderedRules;

// Who asks. An empty user name is an anonymous client.
struct Identity {
  std::string_view username;
  std::string_view client_id;
  // Rules the connection carries (a JWT's ACL claim), checked first; with
  // `own_only` nothing else is consulted. Null: none.
  const OrderedRules* own = nullptr;
  bool own_only = false;
  // Allowed everything (the IAM server said so at authentication).
  bool superuser = false;
};

struct AclRule {
  enum class Who : std::uint8_t {
    Anonymous,  // clients without a user name
    User,       // the client whose user name is `user`
    Any,        // every client, anonymous included
  };
  Who who = Who::Any;
  std::string user;          // Who::User only
  std::uint8_t actions = 0;  // bit set of Action
  std::string filter;        // a topic filter; %u / %c levels when `substitute`
  bool substitute = false;   // expand %u (user name) and %c (client id) levels
  bool allow = true;         // false: deny
  std::size_t line = 0;      // where it was written (0: not from a file)

  static constexpr std::uint8_t kRead =
      static_cast<std::uint8_t>(Action::Subscribe) | static_cast<std::uint8_t>(Action::Receive);
  static constexpr std::uint8_t kWrite = static_cast<std::uint8_t>(Action::Publish);
  static constexpr std::uint8_t kAll = kRead | kWrite;
};

// The immutable, thread-safe rule table. A publish or receive check walks a
// tree of the rules' topic levels (literal, '+', '#', %u, %c), so its cost
// grows with the topic's levels, not with the number of rules; a subscribe
// check visits the rules of the identity. check() never allocates for rules
// without %u/%c, nor for pattern rules whose expansion fits in 256 bytes.
class Acl {
 public:
  // From a rule list (any order: the decision does not depend on it). Throws
  // std::invalid_argument "rule N (line L): reason" for an invalid rule.
  static std::shared_ptr<const Acl> from_rules(std::vector<AclRule> rules);
  // Mosquitto acl_file text; throws std::runtime_error "SOURCE:LINE: reason".
  static std::shared_ptr<const Acl> parse_mosquitto(std::string_view text, std::string_view source);
  // Same from a file ("FILE: reason" when unreadable).
  static std::shared_ptr<const Acl> load_mosquitto(const std::filesystem::path& path);

  // Publish and Receive take a topic name, Subscribe a topic filter. A rule
  // applies when it names the identity (or everyone), includes the action and
  // its filter matches the topic (Publish/Receive) or covers the whole filter
  // (Subscribe: every topic the subscription can match is matched by the rule).
  // Any applicable deny rule denies; otherwise any applicable allow rule allows;
  // otherwise Deny.
  Decision check(const Identity& who, Action action, std::string_view topic_or_filter) const;
  // The same without the final default: nullopt when no rule applies.
  std::optional<Decision> decide(const Identity& who, Action action, std::string_view topic_or_filter) const;
  // True only when decide() allows `action` (Publish or Receive) for every
  // topic name that `filter` matches: no deny rule can match one of them and
  // an allow rule covers the whole filter. False when unsure.
  bool allows_every(const Identity& who, Action action, std::string_view filter) const;

  std::size_t size() const { return count_; }

  Acl(const Acl&) = delete;
  Acl& operator=(const Acl&) = delete;
  ~Acl();

 private:
  Acl() = default;
  struct Node;  // the topic-level tree of one group's rules (acl.cpp)
  struct Group {
    std::vector<AclRule> deny;
    std::vector<AclRule> allow;
    std::unique_ptr<Node> names;  // for Publish and Receive (topic names)
  };
  // The rules naming `who`: the anonymous group, or its user's (null: none).
  const Group* group_of(const Identity& who) const;
  // The actions any rule of `g` denies and allows for a topic name.
  static void match_name(const Group& g, const Identity& who, std::string_view topic, std::uint8_t& deny,
                         std::uint8_t& allow);
  struct Hash {
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    using is_transparent = void;
  };
  Group anonymous_;
  std::unordered_map<std::string, Group, Hash, std::equal_to<>> users_;
  Group any_;
  std::size_t count_ = 0;
};

// Does every topic name matched by `filter` also match `rule`? Both are valid
// topic filters. Level by level: '#' in the rule covers the rest (the parent
// level included); '+' in the rule covers '+' or one literal level; a literal
// covers only the same literal; '#' or '+' in the filter needs '#' or '+' in
// the rule; and a first-level '+' or '#' in the rule never covers a filter whose
// first level is a literal starting with '$' [MQTT-4.7.2-1].
bool filter_covers(std::string_view rule, std::string_view filter);

// One rule of an ordered list ([[acl.rule]] in moat.toml, a JWT's ACL claim).
struct OrderedRule {
  std::uint8_t actions = 0;  // bit set of Action
  std::string topic;         // a topic filter; %u and %c whole levels are substituted
  // Glob ('*', '?'; see clientid.hpp) on the user name; nullopt = every client,
  // anonymous included; "" = anonymous clients only.
  std::optional<std::string> user;
  // Glob on the client identifier ("%u" = the user name); nullopt = any.
  std::optional<std::string> client_id;
  bool allow = true;
  std::size_t line = 0;  // where it was written (0: not from a file)
};

// Rules checked in order: the first rule that applies decides. A rule applies
// when its user and client-id patterns match the identity, it includes the
// action, and its topic matches the topic name (publish/receive) or covers the
// whole filter (subscribe), as for Acl. Immutable and thread-safe.
class OrderedRules {
 public:
  // Throws std::invalid_argument "rule N (line L): reason" for an invalid rule.
  static std::shared_ptr<const OrderedRules> make(std::vector<OrderedRule> rules);

  // The decision of the first applicable rule; nullopt when none applies.
  // Allocation-free (up to 256-byte %u/%c expansions); visits only the rules
  // naming this user literally and the rules with a pattern or no user, merged
  // in their written order.
  std::optional<Decision> check(const Identity& who, Action action, std::string_view topic) const;
  // The rules whose user and client-id patterns match `who`, in written order:
  // what check() would consider for this identity, found once.
  std::vector<std::uint32_t> resolve(const Identity& who) const;
  // check() visiting only `resolved` (from resolve() for the same identity on
  // this table): neither the user-name lookup nor the pattern matching is repeated.
  std::optional<Decision> check_resolved(std::span<const std::uint32_t> resolved, const Identity& who,
                                         Action action, std::string_view topic) const;
  std::size_t size() const { return rules_.size(); }
  // What `resolved` decides for every topic name that `filter` matches
  // (Publish or Receive): Allowed when each is allowed by the rules, Denied
  // when one may be denied (or it cannot tell), Open when the rules deny none
  // but leave some undecided (the file decides those).
  enum class Cover : std::uint8_t { Allowed, Denied, Open };
  Cover cover(std::span<const std::uint32_t> resolved, const Identity& who, Action action,
              std::string_view filter) const;

  OrderedRules(const OrderedRules&) = delete;
  OrderedRules& operator=(const OrderedRules&) = delete;

 private:
  OrderedRules() = default;
  struct Compiled {
    OrderedRule rule;
    bool substitute = false;  // topic has a %u or %c level
  };
  struct Hash {
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    using is_transparent = void;
  };
  bool applies(const Compiled& c, const Identity& who, Action action, std::string_view topic) const;
  // Calls f(index) for the rules naming who's user literally and the rules
  // without a literal user, merged in their written order, until f returns true.
  template <typename F>
  void visit(const Identity& who, F&& f) const;
  std::vector<Compiled> rules_;
  std::unordered_map<std::string, std::vector<std::uint32_t>, Hash, std::equal_to<>> by_user_;
  std::vector<std::uint32_t> generic_;  // rules without a literal user name, in order
};

// The broker's authorization policy: the ordered TOML rules first (first match
// wins), then the Mosquitto-format file (deny first, then grants); when
// neither decides, deny. A connection's own rules (Identity::own) come before
// both. Immutable; a reload builds a new one.
class AccessPolicy {
 public:
  AccessPolicy(std::shared_ptr<const OrderedRules> rules, std::shared_ptr<const Acl> file)
      : rules_(std::move(rules)), file_(std::move(file)) {}
  Decision check(const Identity& who, Action action, std::string_view topic_or_filter) const;

  // The ordered rules that can apply to one identity (OrderedRules::resolve).
  struct Resolved {
    std::vector<std::uint32_t> rules;
  };
  Resolved resolve(const Identity& who) const;
  // check() without the final default: nullopt when neither the rules nor the
  // file has a rule for the request (a malformed topic is denied). With
  // `resolved` (from resolve() for the same identity) only those rules are visited.
  std::optional<Decision> decide(const Identity& who, Action action, std::string_view topic_or_filter,
                                 const Resolved* resolved = nullptr) const;
  // True only when decide() allows `action` (Publish or Receive) for every
  // topic name `filter` matches; false when unsure. With `resolved` as for decide().
  bool allows_every(const Identity& who, Action action, std::string_view filter,
                    const Resolved* resolved = nullptr) const;
  const OrderedRules* rules() const { return rules_.get(); }
  const Acl* file() const { return file_.get(); }

 private:
  std::shared_ptr<const OrderedRules> rules_;
  std::shared_ptr<const Acl> file_;
};

// The decision for one request: a superuser is allowed, then the identity's
// own rules, then `policy`. A null policy (no ACL configured) allows what the
// own rules do not decide (unless own_only).
Decision authorize(const AccessPolicy* policy, const Identity& who, Action action,
                   std::string_view topic_or_filter);
// authorize() without its final default: nullopt when neither the own rules
// nor `policy` has a rule for the request (then a remote authorizer may be
// asked). `resolved`: `policy`'s rules resolved for `who`, or null.
std::optional<Decision> decide_locally(const AccessPolicy* policy, const Identity& who, Action action,
                                       std::string_view topic_or_filter,
                                       const AccessPolicy::Resolved* resolved = nullptr);

// True only when decide_locally() allows `action` (Publish or Receive) for
// every topic name that `filter` matches: a subscription whose deliveries need
// no check of their own. False when unsure (a connection's own rules, no policy).
bool allows_every_match(const AccessPolicy* policy, const Identity& who, Action action,
                        std::string_view filter, const AccessPolicy::Resolved* resolved = nullptr);

// Could some topic name match both filters? Level by level, and generous: it
// does not tell '$' topics apart, which is what "may this deny rule apply?" needs.
bool filters_intersect(std::string_view a, std::string_view b);

// "publish", "subscribe", "receive"; for logs and the audit stream.
std::string_view to_string(Action a);

// A decision point outside the broker (the IAM server over HTTP), asked when
// the local rules have no answer for a publish or a subscribe. Thread-safe.
class RemoteAuthorizer {
 public:
  using Time = std::chrono::steady_clock::time_point;
  struct Answer {
    Decision decision = Decision::Deny;
    Time expires{};  // how long the answer may be reused
    // The server gave no decision (unreachable, timed out, a malformed
    // reply): `decision` is then Deny, fail closed, and nothing is cached.
    bool failed = false;
  };
  using Done = std::function<void(Answer)>;

  virtual ~RemoteAuthorizer() = default;
  // A cached answer, or nullopt: ask().
  virtual std::optional<Answer> cached(const Identity& who, Action action, std::string_view topic,
                                       Time now) = 0;
  // Asks; `done` is called once, from any thread. Errors answer Deny.
  virtual void ask(const Identity& who, Action action, std::string_view topic, Done done) = 0;
};

// One session's memory of recent decisions, so that a client publishing to the
// same topics again (the common case) costs one hash and one comparison rather
// than a walk over the rules: (action, topic) -> decision for one policy
// version, each with an expiry (a decision of the IAM server lives as long as
// its cache entry there; local ones until the policy changes). It also keeps
// the policy's rules resolved for the session's identity (AccessPolicy::
// resolve) for the misses. Bounded: kSlots entries, allocated at the first
// use; each topic has two candidate slots and a new entry replaces the older
// of them. A session that keeps replacing live entries (a client cycling over
// more topics than the slots hold) gets four times the slots, up to
// kMaxSlots. One session, one event loop: not thread-safe.
class AccessCache {
 public:
  using Time = std::chrono::steady_clock::time_point;
  static constexpr std::size_t kSlots = 8;       // at the first use
  static constexpr std::size_t kMaxSlots = 128;  // at most, after growing
  static_assert((kSlots & (kSlots - 1)) == 0 && (kMaxSlots & (kMaxSlots - 1)) == 0, "powers of two");

  // `version` 0 is never cached.
  std::optional<Decision> find(Action action, std::string_view topic, std::uint64_t version, Time now) const;
  void put(Action action, std::string_view topic, Decision d, std::uint64_t version, Time expires);
  // `policy`'s rules for `who`, resolved again when `version` changed; null
  // at the first call for a version (resolving costs about one check, which
  // a session that asks once never wins back).
  const AccessPolicy::Resolved* resolved(const AccessPolicy& policy, const Identity& who,
                                         std::uint64_t version);
  // Forgets everything and frees the memory (a new identity, a disconnect).
  void clear();
  // Slots allocated: 0 before the first put, then kSlots, growing up to kMaxSlots.
  std::size_t capacity() const { return size_; }

 private:
  // One cache line: a probe that hits reads one line, the topic included
  // when it is short (kInline bytes; a longer one is on the heap).
  class alignas(64) Slot {
   public:
    static constexpr std::size_t kInline = 28;
    Slot() = default;
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    Slot& operator=(Slot&& o) noexcept;
    ~Slot() { free_topic(); }
    std::string_view topic() const { return {length_ <= kInline ? bytes_ : heap(), length_}; }
    void set_topic(std::string_view t);

    std::size_t hash = 0;
    std::uint64_t version = 0;  // 0: empty
    std::uint64_t stamp = 0;    // insertion order
    Time expires{};
    Action action = Action::Publish;
    Decision decision = Decision::Deny;

   private:
    // A longer topic's heap copy: its address is kept in bytes_ (copied in
    // and out, as bytes_ has no pointer alignment).
    char* heap() const {
      char* p = nullptr;
      std::memcpy(&p, bytes_, sizeof p);
      return p;
    }
    void free_topic() {
      if (length_ > kInline) delete[] heap();
      length_ = 0;
    }
    std::uint16_t length_ = 0;  // topics are at most 65,535 bytes (MQTT)
    char bytes_[kInline] = {};  // the topic, or the address of its heap copy
  };
  static_assert(sizeof(Slot) == 64);
  // The two candidate slots of a hash (size_ is a power of two).
  std::size_t first(std::size_t hash) const { return hash & (size_ - 1); }
  std::size_t second(std::size_t hash) const { return (hash >> 32) & (size_ - 1); }
  Slot* slot_for(std::size_t hash, std::uint64_t version, Action action, std::string_view topic);
  void grow();
  // Every session holds a cache: what only some need (the resolved rules) is
  // allocated apart, and the counters are no wider than they need to be.
  std::unique_ptr<Slot[]> slots_;
  std::uint32_t size_ = 0;  // at most kMaxSlots
  // Live entries (of the current version) replaced by another topic since the
  // last growth: when they reach twice the slots, the slots are too few.
  std::uint32_t evictions_ = 0;
  std::uint64_t stamp_ = 0;
  std::uint64_t seen_version_ = 0;  // resolved() was asked once for this version
  struct ResolvedFor {
    std::uint64_t version = 0;
    AccessPolicy::Resolved rules;
  };
  std::unique_ptr<ResolvedFor> resolved_;  // from the second ask of a version
};

// A table that event loops read while a reload replaces it. load() copies a
// shared_ptr under a mutex (uncontended: ~20 ns): take one snapshot per batch of
// work, not one per check. (A mutex rather than std::atomic<std::shared_ptr>:
// libstdc++ 12's lock-bit implementation shows up as a data race under TSan.)
template <typename T>
class Reloadable {
 public:
  explicit Reloadable(std::shared_ptr<const T> t) : t_(std::move(t)) {}
  std::shared_ptr<const T> load() const {
    std::lock_guard lock(mu_);
    return t_;
  }
  void store(std::shared_ptr<const T> t) {
    std::lock_guard lock(mu_);
    t_.swap(t);  // the old table is released outside the lock, at `t`'s end
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const T> t_;
};

}  // namespace moat::security
