// UTF-8 validation, topic names, topic filters and matching (MQTT 3.1.1 sections 1.5.3, 4.7).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "codec/topic.hpp"

namespace moat::codec {
namespace {

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int c : b) s += static_cast<char>(c);
  return s;
}

// ---------------------------------------------------------------------------
// check_utf8, [MQTT-1.5.3-1] [MQTT-1.5.3-2] and RFC 3629 section 4

struct Utf8Case {
  const char* what;
  std::string s;
  ProtocolError expected;
};

TEST(CheckUtf8, AcceptsWellFormed) {
  const std::vector<Utf8Case> cases{
      {"empty", "", ProtocolError::None},
      {"ASCII", "hello/world", ProtocolError::None},
      {"U+0001 (a control character is allowed, SHOULD NOT only)", bytes({0x01}), ProtocolError::None},
      {"U+007F", bytes({0x7F}), ProtocolError::None},
      {"U+0080", bytes({0xC2, 0x80}), ProtocolError::None},
      {"U+07FF", bytes({0xDF, 0xBF}), ProtocolError::None},
      {"U+0800", bytes({0xE0, 0xA0, 0x80}), ProtocolError::None},
      {"U+D7FF, last before the surrogates", bytes({0xED, 0x9F, 0xBF}), ProtocolError::None},
      {"U+E000, first after the surrogates", bytes({0xEE, 0x80, 0x80}), ProtocolError::None},
      {"U+FEFF [MQTT-1.5.3-3]", bytes({0xEF, 0xBB, 0xBF}), ProtocolError::None},
      {"U+FFFF non-character", bytes({0xEF, 0xBF, 0xBF}), ProtocolError::None},
      {"U+10000", bytes({0xF0, 0x90, 0x80, 0x80}), ProtocolError::None},
      {"U+10FFFF", bytes({0xF4, 0x8F, 0xBF, 0xBF}), ProtocolError::None},
      {"section 1.5.3.1 example U+2A6D4", bytes({0xF0, 0xAA, 0x9B, 0x94}), ProtocolError::None},
      {"mixed", "a" + bytes({0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80}) + "z",
       ProtocolError::None},
  };
  for (const auto& c : cases) EXPECT_EQ(check_utf8(c.s), c.expected) << c.what;
}

TEST(CheckUtf8, RejectsIllFormed) {
  const std::vector<Utf8Case> cases{
      {"U+0000", bytes({0x00}), ProtocolError::NullCharacter},
      {"U+0000 inside", "ab" + bytes({0x00}) + "cd", ProtocolError::NullCharacter},
      {"U+0000 at the end", "ab" + bytes({0x00}), ProtocolError::NullCharacter},
      {"overlong NUL C0 80 (modified UTF-8)", bytes({0xC0, 0x80}), ProtocolError::InvalidUtf8},
      {"overlong C0 AF", bytes({0xC0, 0xAF}), ProtocolError::InvalidUtf8},
      {"overlong C1 BF", bytes({0xC1, 0xBF}), ProtocolError::InvalidUtf8},
      {"overlong E0 80 80", bytes({0xE0, 0x80, 0x80}), ProtocolError::InvalidUtf8},
      {"overlong E0 9F BF", bytes({0xE0, 0x9F, 0xBF}), ProtocolError::InvalidUtf8},
      {"overlong F0 80 80 80", bytes({0xF0, 0x80, 0x80, 0x80}), ProtocolError::InvalidUtf8},
      {"overlong F0 8F BF BF", bytes({0xF0, 0x8F, 0xBF, 0xBF}), ProtocolError::InvalidUtf8},
      {"surrogate U+D800", bytes({0xED, 0xA0, 0x80}), ProtocolError::InvalidUtf8},
      {"surrogate U+DBFF", bytes({0xED, 0xAF, 0xBF}), ProtocolError::InvalidUtf8},
      {"surrogate U+DC00", bytes({0xED, 0xB0, 0x80}), ProtocolError::InvalidUtf8},
      {"surrogate U+DFFF", bytes({0xED, 0xBF, 0xBF}), ProtocolError::InvalidUtf8},
      {"surrogate pair (CESU-8)", bytes({0xED, 0xA0, 0xBD, 0xED, 0xB8, 0x80}), ProtocolError::InvalidUtf8},
      {"lone continuation 80", bytes({0x80}), ProtocolError::InvalidUtf8},
      {"lone continuation BF after ASCII", "a" + bytes({0xBF}), ProtocolError::InvalidUtf8},
      {"two-byte lead then ASCII", bytes({0xC3, 0x41}), ProtocolError::InvalidUtf8},
      {"truncated 2-byte at the end", "a" + bytes({0xC3}), ProtocolError::InvalidUtf8},
      {"truncated 3-byte at the end", bytes({0xE2, 0x82}), ProtocolError::InvalidUtf8},
      {"truncated 4-byte at the end", bytes({0xF0, 0x9F, 0x98}), ProtocolError::InvalidUtf8},
      {"3-byte with a bad third byte", bytes({0xE2, 0x82, 0xC0}), ProtocolError::InvalidUtf8},
      {"4-byte with a bad last byte", bytes({0xF0, 0x9F, 0x98, 0x41}), ProtocolError::InvalidUtf8},
      {"F5 lead", bytes({0xF5, 0x80, 0x80, 0x80}), ProtocolError::InvalidUtf8},
      {"F8 lead (5-byte form)", bytes({0xF8, 0x88, 0x80, 0x80, 0x80}), ProtocolError::InvalidUtf8},
      {"FE", bytes({0xFE}), ProtocolError::InvalidUtf8},
      {"FF", bytes({0xFF}), ProtocolError::InvalidUtf8},
      {"above U+10FFFF: F4 90 80 80", bytes({0xF4, 0x90, 0x80, 0x80}), ProtocolError::InvalidUtf8},
      {"above U+10FFFF: F4 BF BF BF", bytes({0xF4, 0xBF, 0xBF, 0xBF}), ProtocolError::InvalidUtf8},
      {"valid then invalid", bytes({0xC3, 0xA9, 0xFF}), ProtocolError::InvalidUtf8},
  };
  for (const auto& c : cases) EXPECT_EQ(check_utf8(c.s), c.expected) << c.what;
}

// Every code point, encoded by the textbook algorithm, is accepted unless it is U+0000 or
// a surrogate; this cross-checks the decoder's range boundaries exhaustively.
TEST(CheckUtf8, EveryCodePoint) {
  int rejected = 0;
  for (std::uint32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    const ProtocolError expected = cp == 0                          ? ProtocolError::NullCharacter
                                   : (cp >= 0xD800 && cp <= 0xDFFF) ? ProtocolError::InvalidUtf8
                                                                    : ProtocolError::None;
    const ProtocolError actual = check_utf8(s);
    if (actual != expected) {
      ADD_FAILURE() << "U+" << std::hex << cp;
      if (++rejected > 10) return;
    }
  }
}

// Every two-byte sequence: accepted exactly when it is one well-formed character or two
// ASCII characters (RFC 3629 table of well-formed sequences).
TEST(CheckUtf8, EveryTwoByteString) {
  for (int a = 0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) {
      const std::string s = bytes({a, b});
      ProtocolError expected = ProtocolError::InvalidUtf8;
      if (a < 0x80 && b < 0x80)
        expected = (a == 0 || b == 0) ? ProtocolError::NullCharacter : ProtocolError::None;
      else if (a >= 0xC2 && a <= 0xDF && b >= 0x80 && b <= 0xBF)
        expected = ProtocolError::None;
      else if (a == 0)
        expected = ProtocolError::NullCharacter;  // the first error found is the NUL
      const auto actual = check_utf8(s);
      if (actual != expected) {
        ADD_FAILURE() << std::hex << a << " " << b << ": " << describe(actual);
        return;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Topic names: [MQTT-4.7.3-1] at least one character, [MQTT-4.7.1-1] no wildcards.

TEST(ValidTopicName, Table) {
  for (std::string_view t : {"a", "/", "//", "a/b", "/finance", "sport/tennis/player1", "$SYS/x", "$", " ",
                             "a b", "a//b", "sport/", "\xC3\xA9"})
    EXPECT_TRUE(valid_topic_name(t)) << t;
  for (std::string_view t : {"", "#", "+", "a/#", "a/+", "+/a", "a+", "a#", "sport/tennis#", "#/a", "a/+/b"})
    EXPECT_FALSE(valid_topic_name(t)) << t;
}

// ---------------------------------------------------------------------------
// Topic filters: [MQTT-4.7.1-2] '#' alone and last, [MQTT-4.7.1-3] '+' a whole level.

// The checks read eight bytes at a time: a rejected byte is found at every
// position of strings longer than one word, and the last partial word counts.
TEST(ValidTopicName, WildcardAtEveryPosition) {
  for (std::size_t len = 1; len <= 40; ++len) {
    const std::string clean(len, 'a');
    EXPECT_TRUE(valid_topic_name(clean)) << len;
    for (std::size_t at = 0; at < len; ++at)
      for (char w : {'+', '#'}) {
        std::string t = clean;
        t[at] = w;
        EXPECT_FALSE(valid_topic_name(t)) << len << " " << at << " " << w;
      }
  }
  // Neighbours of the wildcards in the byte table are fine.
  EXPECT_TRUE(valid_topic_name("abcdefgh*,\"$%'ijklmnop"));
}

TEST(CheckUtf8, RejectedByteAtEveryPositionOfLongStrings) {
  for (std::size_t len = 1; len <= 40; ++len) {
    const std::string clean(len, 'x');
    EXPECT_EQ(check_utf8(clean), ProtocolError::None) << len;
    for (std::size_t at = 0; at < len; ++at) {
      std::string nul = clean;
      nul[at] = '\0';
      EXPECT_EQ(check_utf8(nul), ProtocolError::NullCharacter) << len << " " << at;
      std::string lone = clean;
      lone[at] = static_cast<char>(0x80);  // a continuation byte without a lead
      EXPECT_EQ(check_utf8(lone), ProtocolError::InvalidUtf8) << len << " " << at;
      if (at + 2 <= len) {
        std::string ok = clean;
        ok[at] = static_cast<char>(0xC3);  // U+00E9
        ok[at + 1] = static_cast<char>(0xA9);
        EXPECT_EQ(check_utf8(ok), ProtocolError::None) << len << " " << at;
      }
    }
  }
}

TEST(ValidTopicFilter, Valid) {
  for (std::string_view f : {"#",
                             "+",
                             "a/#",
                             "+/+",
                             "/+",
                             "a//b",
                             "$SYS/#",
                             "sport/tennis/player1/#",
                             "sport/#",
                             "sport/tennis/+",
                             "+/tennis/#",
                             "/",
                             "+/",
                             "/#",
                             "+/+/+",
                             "a/+/b/+/#",
                             "$SYS/monitor/+",
                             "a",
                             "a/b/c",
                             "//",
                             "sport/+/player1"})
    EXPECT_TRUE(valid_topic_filter(f)) << f;
}

TEST(ValidTopicFilter, Invalid) {
  for (std::string_view f : {"", "a/#/b", "a#", "a+", "+a/b", "##", "#/", "#/a", "sport/tennis#", "sport+",
                             "++", "+#", "#+", "a/b#", "a/#/#", "a/++/b", "a/+b"})
    EXPECT_FALSE(valid_topic_filter(f)) << f;
}

// ---------------------------------------------------------------------------
// topic_matches, section 4.7

struct MatchCase {
  std::string_view filter;
  std::string_view topic;
  bool matches;
};

void check(const std::vector<MatchCase>& cases) {
  for (const auto& c : cases)
    EXPECT_EQ(topic_matches(c.filter, c.topic), c.matches)
        << "filter \"" << c.filter << "\" topic \"" << c.topic << "\"";
}

// Section 4.7.1.2, the multi-level wildcard examples.
TEST(TopicMatches, SpecMultiLevelExamples_4_7_1_2) {
  check({
      {"sport/tennis/player1/#", "sport/tennis/player1", true},
      {"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
      {"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
      {"sport/#", "sport", true},  // "#" also matches the parent level
      {"sport/tennis/player1/#", "sport/tennis/player2", false},
      {"sport/tennis/player1/#", "sport/tennis", false},
      {"sport/tennis/player1/#", "sport/tennis/player10", false},
      {"#", "sport/tennis/player1", true},
  });
}

// Section 4.7.1.3, the single-level wildcard examples.
TEST(TopicMatches, SpecSingleLevelExamples_4_7_1_3) {
  check({
      {"sport/tennis/+", "sport/tennis/player1", true},
      {"sport/tennis/+", "sport/tennis/player2", true},
      {"sport/tennis/+", "sport/tennis/player1/ranking", false},
      {"sport/+", "sport", false},
      {"sport/+", "sport/", true},
      {"+/+", "/finance", true},
      {"/+", "/finance", true},
      {"+", "/finance", false},
      {"+/tennis/#", "sport/tennis/player1", true},
      {"sport/+/player1", "sport/tennis/player1", true},
  });
}

// [MQTT-4.7.2-1] filters starting with a wildcard do not match topics starting with '$'.
TEST(TopicMatches, DollarTopics_4_7_2_1) {
  check({
      {"#", "$SYS/monitor/Clients", false},
      {"+/monitor/Clients", "$SYS/monitor/Clients", false},
      {"$SYS/#", "$SYS/monitor/Clients", true},
      {"$SYS/monitor/+", "$SYS/monitor/Clients", true},
      {"$SYS/#", "$SYS", true},
      {"+", "$SYS", false},
      {"#", "$", false},
      {"+/#", "$SYS/x", false},
      {"$", "$", true},
      // '$' in a later level is an ordinary character.
      {"#", "a/$SYS", true},
      {"a/+", "a/$SYS", true},
      {"+/$x", "a/$x", true},
  });
}

TEST(TopicMatches, EmptyLevels) {
  check({
      {"a//b", "a//b", true}, {"a/+/b", "a//b", true}, {"a//b", "a/b", false}, {"a/b", "a//b", false},
      {"+", "/", false},      {"+/+", "/", true},      {"/", "/", true},       {"#", "/", true},
      {"/#", "/", true},      {"/#", "/a/b", true},    {"/#", "a", false},     {"+/#", "/", true},
      {"a/#", "a/", true},    {"a/+", "a/", true},     {"a/+/+", "a/", false}, {"a/+/+", "a//", true},
      {"//", "//", true},     {"+/+/+", "//", true},   {"+/+", "//", false},   {"a/", "a", false},
      {"a", "a/", false},
  });
}

TEST(TopicMatches, ExactAndPrefixes) {
  check({
      {"a", "a", true},         {"a/b/c", "a/b/c", true},
      {"a/b", "a/b/c", false},  {"a/b/c", "a/b", false},
      {"a/b", "a/bc", false},   {"a/bc", "a/b", false},
      {"ab", "a", false},       {"a", "ab", false},
      {"A", "a", false},  // case sensitive
      {"a/b/#", "a", false},    {"a/+/#", "a", false},
      {"a/+/#", "a/b", true},   {"+/#", "a", true},
      {"+", "a", true},         {"+", "a/b", false},
      {"+/+", "a", false},      {"#", "a", true},
      {"#", "a/b/c/d/e", true}, {"a/#", "b", false},
      {"a/#", "ab", false},     {"+/b", "a/b", true},
      {"+/b", "a/c", false},    {"\xC3\xA9/+", "\xC3\xA9/x", true},
  });
}

// for_each_level gives every level, empty ones included.
TEST(ForEachLevel, SplitsOnSlashes) {
  auto levels = [](std::string_view s) {
    std::vector<std::string> out;
    for_each_level(s, [&](std::string_view l) { out.emplace_back(l); });
    return out;
  };
  EXPECT_EQ(levels("a/b/c"), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(levels(""), (std::vector<std::string>{""}));
  EXPECT_EQ(levels("/"), (std::vector<std::string>{"", ""}));
  EXPECT_EQ(levels("/a//"), (std::vector<std::string>{"", "a", "", ""}));
}

}  // namespace
}  // namespace moat::codec
