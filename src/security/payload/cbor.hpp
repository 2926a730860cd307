// CBOR for COSE, on libcbor: a writer that appends items with libcbor's encoders
// (always definite lengths and the shortest form, RFC 8949 section 4.2.1, as RFC
// 9052 section 9 requires for the structures that are signed, MACed and
// encrypted), and a strict reader that builds a flat tree of views into the input
// with libcbor's streaming decoder (no copy of payloads or ciphertexts).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moat::payload::cbor {

// ---- writing ----

class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}

  void uint(std::uint64_t v);
  void integer(std::int64_t v);  // major type 0 or 1
  void bytes(std::string_view b);
  void bytes_head(std::size_t size);  // the head only; the caller appends the content
  void text(std::string_view t);
  void array(std::size_t size);
  void map(std::size_t size);
  void tag(std::uint64_t t);
  void null();
  void boolean(bool b);
  // Appends already encoded CBOR (a nested item built by another Writer).
  void raw(std::string_view encoded) { out_.append(encoded); }

 private:
  std::string& out_;
};

// The encoded head of a byte string of `size` bytes (for structures whose payload
// is fed to a digest or MAC in pieces instead of being copied).
std::string bytes_head(std::size_t size);

// ---- reading ----

enum class Type : std::uint8_t {
  Unsigned,
  Negative,
  Bytes,
  Text,
  Array,
  Map,
  Tag,
  Bool,
  Null,
  Undefined,
  Float
};

struct Item {
  Type type = Type::Null;
  bool boolean = false;
  std::uint64_t value = 0;   // Unsigned: the value; Negative: n of -1-n; Array/Map: count; Tag: number
  double number = 0;         // Float
  std::string_view data;     // Bytes and Text: the content (a view into the input)
  std::string_view encoded;  // the whole encoded item, children included
  std::uint32_t end = 0;     // index after the last descendant: children are [index+1, end)
};

// A decoded data item: items[0] is the root, in pre-order.
class Tree {
 public:
  const Item& operator[](std::uint32_t i) const { return items_[i]; }
  std::uint32_t size() const { return static_cast<std::uint32_t>(items_.size()); }

  // The i-th child of a container (a map's children alternate key, value).
  // Precondition: i < the number of children.
  std::uint32_t child(std::uint32_t container, std::uint32_t i) const;
  // The value stored under an integer key in a map, if present.
  std::optional<std::uint32_t> find(std::uint32_t map, std::int64_t key) const;
  // The integer value of an Unsigned or Negative item that fits in int64.
  std::optional<std::int64_t> as_int(std::uint32_t i) const;

  std::vector<Item> items_;
};

struct Limits {
  std::uint32_t max_depth = 16;
};

// Decodes exactly one data item filling all of `in`. Refuses (with the reason in
// `why`): malformed or truncated CBOR, trailing bytes, indefinite lengths, nesting
// deeper than the limit, a map with the same key twice.
std::optional<Tree> decode(std::string_view in, std::string& why, const Limits& limits = {});

}  // namespace moat::payload::cbor
