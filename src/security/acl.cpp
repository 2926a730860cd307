#include "security/acl.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "codec/topic.hpp"
#include "security/clientid.hpp"

namespace moat::security {
namespace {

constexpr std::size_t kInlineExpansion = 256;

bool is_subst_level(std::string_view level) {
  return level == "%u" || level == "%c";
}

// Why a rule is invalid, or empty.
std::string rule_error(const AclRule& r) {
  if (r.actions == 0 || (r.actions & ~AclRule::kAll) != 0) return "no valid action";
  if (r.who == AclRule::Who::User && r.user.empty()) return "empty user name";
  if (r.filter.empty()) return "empty topic";
  if (codec::check_utf8(r.filter) != codec::ProtocolError::None)
    return "topic '" + r.filter + "' is not valid UTF-8";
  if (!codec::valid_topic_filter(r.filter))
    return "'" + r.filter + "' is not a valid topic filter ('+' and '#' take a whole level, '#' only last)";
  if (r.substitute) {
    std::string bad;
    codec::for_each_level(r.filter, [&](std::string_view level) {
      if (bad.empty() && !is_subst_level(level) &&
          (level.find("%u") != std::string_view::npos || level.find("%c") != std::string_view::npos))
        bad = std::string(level);
    });
    if (!bad.empty())
      return "'" + bad + "': %u and %c must be the whole topic level (as in 'sensor/%u/data')";
  }
  return {};
}

bool has_subst(std::string_view filter) {
  bool any = false;
  codec::for_each_level(filter, [&](std::string_view level) { any = any || is_subst_level(level); });
  return any;
}

// A value substituted for %u or %c must be exactly one ordinary level: not empty,
// no '/', '+' or '#' (which would widen the rule: CVE-2017-7650 in Mosquitto),
// and not starting with '$' in the first level (which would reach $SYS and other
// server topics).
bool safe_level(std::string_view v, bool first) {
  if (v.empty() || v.find_first_of("/+#") != std::string_view::npos) return false;
  return !(first && v.front() == '$');
}

// Expands %u/%c levels into buf (or heap when longer); false when the identity
// cannot take part in this rule.
bool expand(std::string_view filter, const Identity& who, char* buf, std::string& heap,
            std::string_view& out) {
  // First pass: check values and measure.
  std::size_t len = 0;
  bool ok = true;
  bool first = true;
  codec::for_each_level(filter, [&](std::string_view level) {
    std::string_view v = level;
    if (is_subst_level(level)) {
      v = level == "%u" ? who.username : who.client_id;
      if (!safe_level(v, first)) ok = false;
    }
    len += v.size() + 1;
    first = false;
  });
  if (!ok) return false;
  --len;  // no separator after the last level
  char* dst = buf;
  if (len > kInlineExpansion) {
    heap.assign(len, '\0');
    dst = heap.data();
  }
  std::size_t at = 0;
  codec::for_each_level(filter, [&](std::string_view level) {
    std::string_view v = level;
    if (level == "%u")
      v = who.username;
    else if (level == "%c")
      v = who.client_id;
    if (at > 0) dst[at++] = '/';
    std::memcpy(dst + at, v.data(), v.size());
    at += v.size();
  });
  out = std::string_view(dst, len);
  return true;
}

bool topic_applies(std::string_view filter, bool substitute, const Identity& who, Action action,
                   std::string_view topic) {
  std::string_view f = filter;
  char buf[kInlineExpansion];
  std::string heap;
  if (substitute && !expand(filter, who, buf, heap, f)) return false;
  return action == Action::Subscribe ? filter_covers(f, topic) : codec::topic_matches(f, topic);
}

bool applies(const AclRule& r, const Identity& who, Action action, std::string_view topic) {
  return topic_applies(r.filter, r.substitute, who, action, topic);
}

// How much of what `filter` matches a rule's filter `pattern` (expanded for
// `who` when `substitute`) matches: none, some (perhaps), or every name.
enum class Reach : std::uint8_t { None, Some, Every };
Reach reach(std::string_view pattern, bool substitute, const Identity& who, std::string_view filter) {
  std::string_view p = pattern;
  char buf[kInlineExpansion];
  std::string heap;
  if (substitute && !expand(pattern, who, buf, heap, p)) return Reach::None;
  if (filter_covers(p, filter)) return Reach::Every;
  return filters_intersect(p, filter) ? Reach::Some : Reach::None;
}

bool valid_request(Action action, std::string_view topic) {
  return action == Action::Subscribe ? codec::valid_topic_filter(topic) : codec::valid_topic_name(topic);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// Splits off the first word (up to a space or tab); returns it and leaves the
// trimmed rest in `rest`.
std::string_view first_word(std::string_view s, std::string_view& rest) {
  const auto end = s.find_first_of(" \t");
  if (end == std::string_view::npos) {
    rest = {};
    return s;
  }
  rest = trim(s.substr(end));
  return s.substr(0, end);
}

}  // namespace

bool filter_covers(std::string_view rule, std::string_view filter) {
  std::size_t r = 0;
  std::size_t f = 0;
  bool first = true;
  bool filter_done = false;  // the filter has no level left: its topics end here
  for (;;) {
    const auto rend = std::min(rule.find('/', r), rule.size());
    const auto rl = rule.substr(r, rend - r);
    if (rl == "#") {
      // Covers whatever is left, the parent level included, except that a
      // first-level '#' does not reach '$' topics [MQTT-4.7.2-1].
      return !(first && !filter_done && f < filter.size() && filter[f] == '$');
    }
    if (filter_done) return false;  // topics of the filter end where the rule needs a level
    const auto fend = std::min(filter.find('/', f), filter.size());
    const auto fl = filter.substr(f, fend - f);
    if (fl == "#") return false;  // only '#' covers '#'
    if (rl == "+") {
      if (first && !fl.empty() && fl.front() == '$') return false;  // [MQTT-4.7.2-1]
    } else if (rl != fl) {
      return false;  // a literal covers only itself ('+' in the filter included)
    }
    const bool rlast = rend == rule.size();
    const bool flast = fend == filter.size();
    if (rlast) return flast;
    if (flast)
      filter_done = true;
    else
      f = fend + 1;
    r = rend + 1;
    first = false;
  }
}

// One topic level of a group's rules. The decision does not depend on rule
// order (any deny denies, else any allow allows), so a node keeps only the
// union of the actions of the rules that end on it.
struct Acl::Node {
  std::unordered_map<std::string, std::unique_ptr<Node>, codec::StringHash, std::equal_to<>> literal;
  std::unique_ptr<Node> plus, user, client;    // '+', %u, %c
  std::uint8_t deny_end = 0, allow_end = 0;    // rules whose filter ends here
  std::uint8_t deny_rest = 0, allow_rest = 0;  // rules with a '#' after this level

  void add(const AclRule& r) {
    Node* n = this;
    std::string_view rest = r.filter;
    bool more = true;
    while (more) {
      const std::string_view level = codec::next_level(rest, more);
      if (level == "#") {
        (r.allow ? n->allow_rest : n->deny_rest) |= r.actions;
        return;
      }
      std::unique_ptr<Node>* next = nullptr;
      if (level == "+")
        next = &n->plus;
      else if (r.substitute && level == "%u")
        next = &n->user;
      else if (r.substitute && level == "%c")
        next = &n->client;
      else
        next = &n->literal.try_emplace(std::string(level)).first->second;
      if (!*next) *next = std::make_unique<Node>();
      n = next->get();
    }
    (r.allow ? n->allow_end : n->deny_end) |= r.actions;
  }

  // `rest`: the levels of the topic name after those that led here; `done`:
  // none is left. What '+', '#', %u and %c match follows topic_matches() and
  // expand(): no '$' level first for '+' or '#' [MQTT-4.7.2-1], and a
  // substituted value must be a safe level (safe_level).
  void match(std::string_view rest, bool done, bool first, const Identity& who, std::uint8_t& deny,
             std::uint8_t& allow) const {
    const bool dollar = first && !rest.empty() && rest.front() == '$';
    if (!dollar) {  // '#' covers the rest, this level's parent included
      deny |= deny_rest;
      allow |= allow_rest;
    }
    if (done) {
      deny |= deny_end;
      allow |= allow_end;
      return;
    }
    bool more = true;
    const std::string_view level = codec::next_level(rest, more);
    if (auto it = literal.find(level); it != literal.end())
      it->second->match(rest, !more, false, who, deny, allow);
    if (plus && !dollar) plus->match(rest, !more, false, who, deny, allow);
    if (user && level == who.username && safe_level(level, first))
      user->match(rest, !more, false, who, deny, allow);
    if (client && level == who.client_id && safe_level(level, first))
      client->match(rest, !more, false, who, deny, allow);
  }
};

Acl::~Acl() = default;

void Acl::match_name(const Group& g, const Identity& who, std::string_view topic, std::uint8_t& deny,
                     std::uint8_t& allow) {
  if (g.names) g.names->match(topic, false, true, who, deny, allow);
}

std::shared_ptr<const Acl> Acl::from_rules(std::vector<AclRule> rules) {
  std::shared_ptr<Acl> acl(new Acl());
  for (std::size_t i = 0; i < rules.size(); ++i) {
    AclRule& r = rules[i];
    if (auto why = rule_error(r); !why.empty())
      throw std::invalid_argument("rule " + std::to_string(i + 1) +
                                  (r.line ? " (line " + std::to_string(r.line) + ")" : std::string()) + ": " +
                                  why);
    if (r.substitute && !has_subst(r.filter)) r.substitute = false;  // nothing to expand
    Group* g = &acl->any_;
    if (r.who == AclRule::Who::Anonymous)
      g = &acl->anonymous_;
    else if (r.who == AclRule::Who::User)
      g = &acl->users_[r.user];
    if (!g->names) g->names = std::make_unique<Node>();
    g->names->add(r);
    (r.allow ? g->allow : g->deny).push_back(std::move(r));
  }
  acl->count_ = rules.size();
  return acl;
}

std::shared_ptr<const Acl> Acl::parse_mosquitto(std::string_view text, std::string_view source) {
  std::vector<AclRule> rules;
  std::string user;  // current `user` section; empty before the first one
  bool in_user = false;
  std::size_t lineno = 0;
  std::size_t start = 0;
  while (start < text.size()) {
    auto nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    const std::string_view line = trim(text.substr(start, nl - start));
    start = nl + 1;
    ++lineno;
    auto fail = [&](const std::string& why) -> void {
      throw std::runtime_error(std::string(source) + ":" + std::to_string(lineno) + ": " + why);
    };
    if (line.empty() || line.front() == '#') continue;
    std::string_view rest;
    const std::string_view keyword = first_word(line, rest);
    if (keyword == "user") {
      if (rest.empty()) fail("'user' needs a user name");
      user = std::string(rest);
      in_user = true;
      continue;
    }
    if (keyword != "topic" && keyword != "pattern")
      fail("unknown keyword '" + std::string(keyword) + "' (expected user, topic or pattern)");
    if (rest.empty()) fail("'" + std::string(keyword) + "' needs a topic");
    AclRule r;
    r.line = lineno;
    std::string_view after;
    const std::string_view access = first_word(rest, after);
    std::string_view topic = rest;
    r.actions = AclRule::kAll;
    if (access == "read" || access == "write" || access == "readwrite" || access == "deny") {
      if (after.empty())
        fail("missing topic after '" + std::string(access) + "' (a topic named '" + std::string(access) +
             "' is written '" + std::string(keyword) + " readwrite " + std::string(access) + "')");
      topic = after;
      if (access == "read") r.actions = AclRule::kRead;
      if (access == "write") r.actions = AclRule::kWrite;
      if (access == "deny") r.allow = false;
    }
    r.filter = std::string(topic);
    if (keyword == "pattern") {
      r.who = AclRule::Who::Any;  // patterns apply to every client, wherever written
      r.substitute = true;
    } else if (in_user) {
      r.who = AclRule::Who::User;
      r.user = user;
    } else {
      r.who = AclRule::Who::Anonymous;
    }
    if (auto why = rule_error(r); !why.empty()) fail(why);
    rules.push_back(std::move(r));
  }
  return from_rules(std::move(rules));
}

std::shared_ptr<const Acl> Acl::load_mosquitto(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot open: " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_mosquitto(ss.str(), path.string());
}

Decision Acl::check(const Identity& who, Action action, std::string_view topic) const {
  // The broker validates names and filters first; a malformed one is refused here too.
  if (!valid_request(action, topic)) return Decision::Deny;
  return decide(who, action, topic).value_or(Decision::Deny);
}

const Acl::Group* Acl::group_of(const Identity& who) const {
  if (who.username.empty()) return &anonymous_;
  const auto it = users_.find(who.username);
  return it == users_.end() ? nullptr : &it->second;
}

std::optional<Decision> Acl::decide(const Identity& who, Action action, std::string_view topic) const {
  const auto bit = static_cast<std::uint8_t>(action);
  const Group* own = group_of(who);
  if (action != Action::Subscribe) {
    std::uint8_t deny = 0;
    std::uint8_t allow = 0;
    if (own) match_name(*own, who, topic, deny, allow);
    match_name(any_, who, topic, deny, allow);
    if ((deny & bit) != 0) return Decision::Deny;
    if ((allow & bit) != 0) return Decision::Allow;
    return std::nullopt;
  }
  auto any_match = [&](const std::vector<AclRule>& rules) {
    for (const auto& r : rules)
      if ((r.actions & bit) != 0 && applies(r, who, action, topic)) return true;
    return false;
  };
  if ((own && any_match(own->deny)) || any_match(any_.deny)) return Decision::Deny;
  if ((own && any_match(own->allow)) || any_match(any_.allow)) return Decision::Allow;
  return std::nullopt;
}

bool Acl::allows_every(const Identity& who, Action action, std::string_view filter) const {
  const auto bit = static_cast<std::uint8_t>(action);
  const Group* own = group_of(who);
  // Any deny denies: none may reach a name of the filter.
  for (const Group* g : {own, &any_}) {
    if (!g) continue;
    for (const auto& r : g->deny)
      if ((r.actions & bit) != 0 && reach(r.filter, r.substitute, who, filter) != Reach::None) return false;
  }
  for (const Group* g : {own, &any_}) {
    if (!g) continue;
    for (const auto& r : g->allow)
      if ((r.actions & bit) != 0 && reach(r.filter, r.substitute, who, filter) == Reach::Every) return true;
  }
  return false;
}

// ---- ordered rules ----

std::shared_ptr<const OrderedRules> OrderedRules::make(std::vector<OrderedRule> rules) {
  std::shared_ptr<OrderedRules> out(new OrderedRules());
  out->rules_.reserve(rules.size());
  for (std::size_t i = 0; i < rules.size(); ++i) {
    OrderedRule& r = rules[i];
    // The same checks as for a file rule, through the file rule's model.
    AclRule probe;
    probe.actions = r.actions;
    probe.filter = r.topic;
    probe.substitute = true;
    std::string why = rule_error(probe);
    if (why.empty() && r.user && codec::check_utf8(*r.user) != codec::ProtocolError::None)
      why = "user pattern is not valid UTF-8";
    if (why.empty() && r.client_id && codec::check_utf8(*r.client_id) != codec::ProtocolError::None)
      why = "client id pattern is not valid UTF-8";
    if (why.empty() && r.client_id && r.client_id->empty()) why = "empty client id pattern";
    if (!why.empty())
      throw std::invalid_argument("rule " + std::to_string(i + 1) +
                                  (r.line ? " (line " + std::to_string(r.line) + ")" : std::string()) + ": " +
                                  why);
    const auto index = static_cast<std::uint32_t>(i);
    if (r.user && !is_glob(*r.user))
      out->by_user_[*r.user].push_back(index);
    else
      out->generic_.push_back(index);
    const bool subst = has_subst(r.topic);
    out->rules_.push_back(Compiled{std::move(r), subst});
  }
  return out;
}

bool OrderedRules::applies(const Compiled& c, const Identity& who, Action action,
                           std::string_view topic) const {
  const OrderedRule& r = c.rule;
  if ((r.actions & static_cast<std::uint8_t>(action)) == 0) return false;
  // A non-empty user pattern ("*" included) never names an anonymous client.
  if (r.user && (who.username.empty() ? !r.user->empty() : !glob_match(*r.user, who.username, who.username)))
    return false;
  if (r.client_id && !glob_match(*r.client_id, who.client_id, who.username)) return false;
  return topic_applies(r.topic, c.substitute, who, action, topic);
}

template <typename F>
void OrderedRules::visit(const Identity& who, F&& f) const {
  static const std::vector<std::uint32_t> kNone;
  const std::vector<std::uint32_t>* own = &kNone;
  if (auto it = by_user_.find(who.username); it != by_user_.end()) own = &it->second;
  // Merge the user's rules and the generic ones by their written position.
  std::size_t i = 0;
  std::size_t j = 0;
  while (i < own->size() || j < generic_.size()) {
    std::uint32_t next;
    if (j == generic_.size() || (i < own->size() && (*own)[i] < generic_[j]))
      next = (*own)[i++];
    else
      next = generic_[j++];
    if (f(next)) return;
  }
}

std::optional<Decision> OrderedRules::check(const Identity& who, Action action,
                                            std::string_view topic) const {
  std::optional<Decision> d;
  visit(who, [&](std::uint32_t next) {
    const Compiled& c = rules_[next];
    if (!applies(c, who, action, topic)) return false;
    d = c.rule.allow ? Decision::Allow : Decision::Deny;
    return true;
  });
  return d;
}

std::vector<std::uint32_t> OrderedRules::resolve(const Identity& who) const {
  std::vector<std::uint32_t> out;
  // The rules check() would visit, keeping those whose patterns name `who`.
  visit(who, [&](std::uint32_t next) {
    const OrderedRule& r = rules_[next].rule;
    if (r.user &&
        (who.username.empty() ? !r.user->empty() : !glob_match(*r.user, who.username, who.username)))
      return false;
    if (r.client_id && !glob_match(*r.client_id, who.client_id, who.username)) return false;
    out.push_back(next);
    return false;
  });
  return out;
}

std::optional<Decision> OrderedRules::check_resolved(std::span<const std::uint32_t> resolved,
                                                     const Identity& who, Action action,
                                                     std::string_view topic) const {
  const auto bit = static_cast<std::uint8_t>(action);
  for (const std::uint32_t i : resolved) {
    const Compiled& c = rules_[i];
    if ((c.rule.actions & bit) == 0) continue;
    if (topic_applies(c.rule.topic, c.substitute, who, action, topic))
      return c.rule.allow ? Decision::Allow : Decision::Deny;
  }
  return std::nullopt;
}

OrderedRules::Cover OrderedRules::cover(std::span<const std::uint32_t> resolved, const Identity& who,
                                        Action action, std::string_view filter) const {
  const auto bit = static_cast<std::uint8_t>(action);
  // The first applicable rule decides a name: a rule reaching some names of
  // the filter decides those (a deny: not every name is allowed); one reaching
  // them all decides the rest.
  for (const std::uint32_t i : resolved) {
    const Compiled& c = rules_[i];
    if ((c.rule.actions & bit) == 0) continue;
    switch (reach(c.rule.topic, c.substitute, who, filter)) {
      case Reach::None:
        break;
      case Reach::Some:
        if (!c.rule.allow) return Cover::Denied;
        break;
      case Reach::Every:
        return c.rule.allow ? Cover::Allowed : Cover::Denied;
    }
  }
  return Cover::Open;
}

bool AccessPolicy::allows_every(const Identity& who, Action action, std::string_view filter,
                                const Resolved* resolved) const {
  if (action == Action::Subscribe || !codec::valid_topic_filter(filter)) return false;
  if (rules_) {
    const auto c = resolved ? rules_->cover(resolved->rules, who, action, filter)
                            : rules_->cover(rules_->resolve(who), who, action, filter);
    if (c != OrderedRules::Cover::Open) return c == OrderedRules::Cover::Allowed;
  }
  // The names the rules left open (none of them denied) are the file's.
  return file_ && file_->allows_every(who, action, filter);
}

Decision AccessPolicy::check(const Identity& who, Action action, std::string_view topic) const {
  return decide(who, action, topic).value_or(Decision::Deny);
}

AccessPolicy::Resolved AccessPolicy::resolve(const Identity& who) const {
  Resolved r;
  if (rules_) r.rules = rules_->resolve(who);
  return r;
}

std::optional<Decision> AccessPolicy::decide(const Identity& who, Action action, std::string_view topic,
                                             const Resolved* resolved) const {
  if (!valid_request(action, topic)) return Decision::Deny;
  if (rules_) {
    auto d = resolved ? rules_->check_resolved(resolved->rules, who, action, topic)
                      : rules_->check(who, action, topic);
    if (d) return d;
  }
  if (file_) return file_->decide(who, action, topic);
  return std::nullopt;
}

Decision authorize(const AccessPolicy* policy, const Identity& who, Action action, std::string_view topic) {
  return decide_locally(policy, who, action, topic).value_or(policy ? Decision::Deny : Decision::Allow);
}

std::optional<Decision> decide_locally(const AccessPolicy* policy, const Identity& who, Action action,
                                       std::string_view topic, const AccessPolicy::Resolved* resolved) {
  if (who.superuser) return Decision::Allow;
  if (who.own) {
    if (!valid_request(action, topic)) return Decision::Deny;
    if (auto d = who.own->check(who, action, topic)) return d;
    if (who.own_only) return Decision::Deny;
  }
  if (policy) return policy->decide(who, action, topic, resolved);
  return std::nullopt;
}

bool allows_every_match(const AccessPolicy* policy, const Identity& who, Action action, std::string_view filter,
                        const AccessPolicy::Resolved* resolved) {
  if (who.superuser) return true;
  if (who.own || !policy) return false;  // not worked out: each name is checked
  return policy->allows_every(who, action, filter, resolved);
}

bool filters_intersect(std::string_view a, std::string_view b) {
  while (true) {
    const auto ea = a.find('/');
    const auto eb = b.find('/');
    const std::string_view la = a.substr(0, ea);
    const std::string_view lb = b.substr(0, eb);
    if (la == "#" || lb == "#") return true;
    if (la != "+" && lb != "+" && la != lb) return false;
    const bool more_a = ea != std::string_view::npos;
    const bool more_b = eb != std::string_view::npos;
    if (!more_a && !more_b) return true;
    // One ends here: the other still matches if all it has left is '#'
    // ("a/#" matches "a").
    if (!more_a) return b.substr(eb + 1) == "#";
    if (!more_b) return a.substr(ea + 1) == "#";
    a.remove_prefix(ea + 1);
    b.remove_prefix(eb + 1);
  }
}

std::string_view to_string(Action a) {
  switch (a) {
    case Action::Publish:
      return "publish";
    case Action::Subscribe:
      return "subscribe";
    case Action::Receive:
      return "receive";
  }
  return "?";
}

// ---- per-session decision cache ----

namespace {
std::size_t slot_hash(Action action, std::string_view topic) {
  return std::hash<std::string_view>{}(topic)*31 + static_cast<std::size_t>(action);
}
}  // namespace

AccessCache::Slot& AccessCache::Slot::operator=(Slot&& o) noexcept {
  if (this == &o) return *this;
  free_topic();
  hash = o.hash;
  version = o.version;
  stamp = o.stamp;
  expires = o.expires;
  action = o.action;
  decision = o.decision;
  length_ = o.length_;
  // The heap copy's address, or the topic itself: either way the bytes.
  std::memcpy(bytes_, o.bytes_, length_ > kInline ? sizeof(char*) : length_);
  o.length_ = 0;  // the heap copy, if any, is this slot's now
  o.version = 0;
  return *this;
}

void AccessCache::Slot::set_topic(std::string_view t) {
  free_topic();
  // Longer topics cannot reach a cache (MQTT limits a topic to 65,535 bytes).
  const auto n = static_cast<std::uint16_t>(std::min<std::size_t>(t.size(), 0xffff));
  if (n > kInline) {
    char* p = new char[n];
    std::memcpy(p, t.data(), n);
    std::memcpy(bytes_, &p, sizeof p);
  } else {
    std::memcpy(bytes_, t.data(), n);
  }
  length_ = n;
}

std::optional<Decision> AccessCache::find(Action action, std::string_view topic, std::uint64_t version,
                                          Time now) const {
  if (!slots_ || version == 0) return std::nullopt;
  const std::size_t h = slot_hash(action, topic);
  for (const std::size_t i : {first(h), second(h)}) {
    const Slot& s = slots_[i];
    if (s.hash == h && s.version == version && s.action == action && s.expires > now && s.topic() == topic)
      return s.decision;
  }
  return std::nullopt;
}

// The slot an entry for (hash, action, topic) goes to: its own, else the
// older of its two candidates.
AccessCache::Slot* AccessCache::slot_for(std::size_t h, std::uint64_t version, Action action,
                                         std::string_view topic) {
  Slot& a = slots_[first(h)];
  Slot& b = slots_[second(h)];
  auto same = [&](const Slot& s) { return s.hash == h && s.action == action && s.topic() == topic; };
  if (same(a)) return &a;
  if (same(b)) return &b;
  Slot& s = a.stamp <= b.stamp ? a : b;
  if (s.version == version) ++evictions_;  // a live entry goes
  return &s;
}

void AccessCache::grow() {
  auto old = std::move(slots_);
  const std::size_t old_size = size_;
  size_ = static_cast<std::uint32_t>(std::min<std::size_t>(std::size_t{size_} * 4, kMaxSlots));
  slots_ = std::make_unique<Slot[]>(size_);
  evictions_ = 0;
  // The entries move to their places among the new slots (oldest first, so
  // that where two meet the newer stays).
  std::vector<Slot*> live;
  for (std::size_t i = 0; i < old_size; ++i)
    if (old[i].version != 0) live.push_back(&old[i]);
  std::sort(live.begin(), live.end(), [](const Slot* x, const Slot* y) { return x->stamp < y->stamp; });
  for (Slot* e : live) {
    Slot& a = slots_[first(e->hash)];
    Slot& b = slots_[second(e->hash)];
    Slot& s = a.version == 0 ? a : b.version == 0 ? b : a.stamp <= b.stamp ? a : b;
    s = std::move(*e);
  }
}

void AccessCache::put(Action action, std::string_view topic, Decision d, std::uint64_t version,
                      Time expires) {
  if (version == 0) return;
  if (!slots_) {
    size_ = kSlots;
    slots_ = std::make_unique<Slot[]>(size_);
  }
  const std::size_t h = slot_hash(action, topic);
  Slot* s = slot_for(h, version, action, topic);
  if (evictions_ >= 2 * size_ && size_ < kMaxSlots) {
    grow();
    s = slot_for(h, version, action, topic);
  }
  s->hash = h;
  s->version = version;
  s->stamp = ++stamp_;
  s->expires = expires;
  if (s->topic() != topic) s->set_topic(topic);
  s->action = action;
  s->decision = d;
}

const AccessPolicy::Resolved* AccessCache::resolved(const AccessPolicy& policy, const Identity& who,
                                                    std::uint64_t version) {
  if (resolved_ && resolved_->version == version && version != 0) return &resolved_->rules;
  if (seen_version_ != version) {
    seen_version_ = version;
    return nullptr;
  }
  if (!resolved_) resolved_ = std::make_unique<ResolvedFor>();
  resolved_->rules = policy.resolve(who);
  resolved_->version = version;
  return &resolved_->rules;
}

void AccessCache::clear() {
  slots_.reset();
  size_ = 0;
  evictions_ = 0;
  stamp_ = 0;
  seen_version_ = 0;
  resolved_.reset();
}

}  // namespace moat::security
