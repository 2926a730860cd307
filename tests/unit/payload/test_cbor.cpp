// The strict CBOR reader (on libcbor's streaming decoder) and the writer.
#include "security/payload/cbor.hpp"
#include "vectors.hpp"

namespace moat::payload::test {
namespace {

std::string why_not(const std::string& hexbytes) {
  std::string why;
  auto t = cbor::decode(unhex(hexbytes), why);
  return t ? "ok" : why;
}

TEST(Cbor, WriterUsesTheShortestForms) {
  std::string out;
  cbor::Writer w(out);
  w.uint(0);
  w.uint(23);
  w.uint(24);
  w.uint(256);
  w.integer(-1);
  w.integer(-25);
  w.integer(INT64_MIN);
  w.bytes("ab");
  w.text("MAC0");
  w.array(3);
  w.map(0);
  w.tag(18);
  w.null();
  EXPECT_EQ(hex(out),
            "00171818190100203818"
            "3b7fffffffffffffff"
            "426162"
            "644d414330"
            "83a0d2f6");
}

TEST(Cbor, ReadsATreeOfViews) {
  const std::string in = unhex("d28443a10126a10442313154546869732069732074686520636f6e74656e742e40");
  std::string why;
  auto t = cbor::decode(in, why);
  ASSERT_TRUE(t) << why;
  const auto& tree = *t;
  EXPECT_EQ(tree[0].type, cbor::Type::Tag);
  EXPECT_EQ(tree[0].value, 18u);
  EXPECT_EQ(tree[1].type, cbor::Type::Array);
  EXPECT_EQ(tree[1].value, 4u);
  const auto payload = tree.child(1, 2);
  EXPECT_EQ(tree[payload].data, "This is the content.");
  EXPECT_EQ(tree[payload].data.data(), in.data() + 12);  // not copied
  const auto unprot = tree.child(1, 1);
  ASSERT_TRUE(tree.find(unprot, 4));
  EXPECT_EQ(tree[*tree.find(unprot, 4)].data, "11");
  EXPECT_EQ(tree[0].encoded.size(), in.size());
  EXPECT_EQ(tree.as_int(tree.child(1, 3)), std::nullopt);
}

TEST(Cbor, IsStrict) {
  EXPECT_EQ(why_not(""), "empty input");
  EXPECT_EQ(why_not("82010203"), "1 trailing bytes after the CBOR item");
  EXPECT_EQ(why_not("83010203"), "ok");
  EXPECT_EQ(why_not("830102"), "truncated CBOR");
  EXPECT_EQ(why_not("8301"), "a collection claims more items than there are bytes");
  EXPECT_EQ(why_not("43aabb"), "truncated CBOR");
  EXPECT_EQ(why_not("0000"), "1 trailing bytes after the CBOR item");
  EXPECT_EQ(why_not("9f01ff"), "indefinite-length items are not accepted");
  EXPECT_EQ(why_not("5f4101ff"), "indefinite-length items are not accepted");
  EXPECT_EQ(why_not("a201020103"), "a map has the same key twice");
  EXPECT_EQ(why_not("a2626b6101626b6102"), "a map has the same key twice");  // text keys
  EXPECT_EQ(why_not("a101a201000100"), "a map has the same key twice");      // inner map
  EXPECT_EQ(why_not("9b00000000ffffffff"), "a collection claims more items than there are bytes");
  EXPECT_EQ(why_not("1c"), "not well-formed CBOR at byte 0");  // reserved
  std::string deep;
  for (int i = 0; i < 17; ++i) deep += "81";
  EXPECT_EQ(why_not(deep + "00"), "nested deeper than 16 levels");
  std::string ok_depth;
  for (int i = 0; i < 16; ++i) ok_depth += "81";
  EXPECT_EQ(why_not(ok_depth + "00"), "ok");
  EXPECT_EQ(why_not("a10102"), "ok");
  // One-byte tag heads 6..20 (libcbor 0.8 refuses them; COSE uses 16, 17, 18).
  EXPECT_EQ(why_not("d000"), "ok");
  EXPECT_EQ(why_not("d4d20001"), "1 trailing bytes after the CBOR item");
  EXPECT_EQ(why_not("d2"), "truncated CBOR");
}

}  // namespace
}  // namespace moat::payload::test
