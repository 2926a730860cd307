// Checks and reports of the limits in docs/limits.md, shared by the broker and net.
#pragma once

#include <optional>
#include <string_view>

#include "broker/limits.hpp"
#include "broker/stats.hpp"
#include "codec/topic.hpp"

namespace moat::broker {

// The moat.toml key of a limit ("max_topic_length", ...).
const char* limit_key(Limit l);

// The first of max_topic_length / max_topic_levels that a topic name or filter
// breaks, if any.
std::optional<Limit> topic_over_limits(std::string_view topic, const Limits& l);

// The [[limits.payload]] entry that applies to a topic name (the first whose
// filter matches), or null.
const PayloadLimit* payload_limit(std::string_view topic, const Limits& l);

// Logs one report of a limit at warn: "limit KEY hit by PEER (CLIENT): DETAIL",
// with the number of hits it stands for (LimitStats::hit).
void report_limit(Limit l, std::uint64_t hits, std::string_view peer, std::string_view client_id,
                  std::string_view detail);

}  // namespace moat::broker
