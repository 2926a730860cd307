// Printing: error and debug lines, received messages (text or JSON lines), and
// the topic checks made before connecting.
#include <time.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "codec/topic.hpp"

namespace moat::cli {

namespace {

void write_all(std::FILE* f, std::string_view s) {
  if (!s.empty()) std::fwrite(s.data(), 1, s.size(), f);
}

std::string one_line(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '\n' || c == '\r') {
      // Fold line breaks (CLI11 messages may contain some) into "; ".
      while (i + 1 < s.size() && (s[i + 1] == '\n' || s[i + 1] == '\r')) ++i;
      if (i + 1 < s.size()) out += "; ";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

void error_line(std::string_view command, std::string_view message) {
  std::fflush(stdout);
  const std::string line = "moat" + (command.empty() ? std::string() : " " + std::string(command)) + ": " +
                           one_line(message) + "\n";
  write_all(stderr, line);
  std::fflush(stderr);
}

void debug_line(std::string_view message) {
  const std::string line = "moat: " + one_line(message) + "\n";
  write_all(stderr, line);
  std::fflush(stderr);
}

std::optional<std::string> topic_name_problem(std::string_view topic) {
  if (topic.empty()) return "the topic is empty";
  if (topic.size() > 65535) return "the topic is longer than 65535 bytes";
  if (codec::check_utf8(topic) != codec::ProtocolError::None)
    return "the topic is not valid UTF-8 (or contains U+0000)";
  if (!codec::valid_topic_name(topic))
    return "invalid topic '" + std::string(topic) + "': wildcards (+ and #) are not allowed in a topic to publish to";
  return std::nullopt;
}

std::optional<std::string> topic_filter_problem(std::string_view filter) {
  if (filter.empty()) return "a topic filter is empty";
  if (filter.size() > 65535) return "a topic filter is longer than 65535 bytes";
  if (codec::check_utf8(filter) != codec::ProtocolError::None)
    return "a topic filter is not valid UTF-8 (or contains U+0000)";
  if (!codec::valid_topic_filter(filter))
    return "invalid topic filter '" + std::string(filter) +
           "': '+' must be a whole level and '#' a whole last level";
  return std::nullopt;
}

std::string quoted(std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out = "'";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f || c == '\\' || c == '\'') {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    } else {
      out += ch;
    }
  }
  out += "'";
  return out;
}

std::string base64(std::string_view bytes) {
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  auto byte = [&](std::size_t k) { return static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[k])); };
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t v = byte(i) << 16 | byte(i + 1) << 8 | byte(i + 2);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += alphabet[v & 63];
  }
  const std::size_t rest = bytes.size() - i;
  if (rest == 1) {
    const std::uint32_t v = byte(i) << 16;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += "==";
  } else if (rest == 2) {
    const std::uint32_t v = byte(i) << 16 | byte(i + 1) << 8;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::string rfc3339_now_utc() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
  return buf;
}

bool is_utf8_text(std::string_view s) { return codec::check_utf8(s) == codec::ProtocolError::None; }

void print_message(const SubArgs& a, const client::Message& m) {
  if (a.format == Format::Json) {
    nlohmann::ordered_json j;
    j["topic"] = m.topic;
    j["qos"] = static_cast<int>(m.qos);
    j["retain"] = m.retain;
    if (is_utf8_text(m.payload))
      j["payload"] = m.payload;
    else
      j["payload_base64"] = base64(m.payload);
    j["received_at"] = rfc3339_now_utc();
    // The topic is checked UTF-8 by the codec; `replace` only guards against surprises.
    std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    line += '\n';
    write_all(stdout, line);
  } else if (a.verbose) {
    // As mosquitto_sub -v: "topic payload", and "topic (null)" for an empty payload.
    std::string line = m.topic;
    line += ' ';
    line += m.payload.empty() ? std::string_view("(null)") : std::string_view(m.payload);
    if (!a.no_eol) line += '\n';
    write_all(stdout, line);
  } else if (!m.payload.empty()) {
    // As mosquitto_sub: an empty payload prints nothing.
    write_all(stdout, m.payload);
    if (!a.no_eol) write_all(stdout, "\n");
  }
  std::fflush(stdout);
}

}  // namespace moat::cli
