// libFuzzer target for the Mosquitto-format ACL file parser
// (Acl::parse_mosquitto) and the rule check: the input is split at its first
// NUL into the file text and a topic; a file that parses is then asked about
// the topic for a few identities and every action. A refused file must throw
// std::runtime_error "SOURCE:LINE: reason"; nothing else may escape or crash.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string_view>

#include "codec/topic.hpp"
#include "security/acl.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto nul = in.find('\0');
  const std::string_view text = nul == std::string_view::npos ? in : in.substr(0, nul);
  const std::string_view topic = nul == std::string_view::npos ? std::string_view("a/b") : in.substr(nul + 1);
  std::shared_ptr<const moat::security::Acl> acl;
  try {
    acl = moat::security::Acl::parse_mosquitto(text, "fuzz");
  } catch (const std::runtime_error& e) {
    if (std::string_view(e.what()).rfind("fuzz", 0) != 0) {
      std::fprintf(stderr, "fuzz_acl: error without its source: %s\n", e.what());
      std::abort();
    }
    return 0;
  }
  using moat::security::Action;
  const bool name = moat::codec::valid_topic_name(topic);
  const bool filter = moat::codec::valid_topic_filter(topic);
  for (const moat::security::Identity who : {moat::security::Identity{"", "c1", nullptr, false},
                                             moat::security::Identity{"alice", "dev/1", nullptr, false},
                                             moat::security::Identity{"a+b", "#", nullptr, false}}) {
    if (name) {
      (void)acl->check(who, Action::Publish, topic);
      (void)acl->check(who, Action::Receive, topic);
    }
    if (filter) (void)acl->check(who, Action::Subscribe, topic);
  }
  return 0;
}
