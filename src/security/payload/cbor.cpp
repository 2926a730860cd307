#include "security/payload/cbor.hpp"

#include <cbor.h>

#include <algorithm>
#include <tuple>

namespace moat::payload::cbor {

// ---- writing ----

namespace {

template <typename F>
void put(std::string& out, F&& encode) {
  unsigned char buf[9];
  const std::size_t n = encode(buf, sizeof buf);
  out.append(reinterpret_cast<const char*>(buf), n);
}

}  // namespace

void Writer::uint(std::uint64_t v) {
  put(out_, [&](unsigned char* b, std::size_t n) { return cbor_encode_uint(v, b, n); });
}

void Writer::integer(std::int64_t v) {
  if (v >= 0) {
    uint(static_cast<std::uint64_t>(v));
  } else {
    // Major type 1 carries n for the value -1-n.
    const auto n = static_cast<std::uint64_t>(-(v + 1));
    put(out_, [&](unsigned char* b, std::size_t len) { return cbor_encode_negint(n, b, len); });
  }
}

void Writer::bytes_head(std::size_t size) {
  put(out_, [&](unsigned char* b, std::size_t n) { return cbor_encode_bytestring_start(size, b, n); });
}

void Writer::bytes(std::string_view b) {
  bytes_head(b.size());
  out_.append(b);
}

void Writer::text(std::string_view t) {
  put(out_, [&](unsigned char* b, std::size_t n) { return cbor_encode_string_start(t.size(), b, n); });
  out_.append(t);
}

void Writer::array(std::size_t size) {
  put(out_, [&](unsigned char* b, std::size_t n) { return cbor_encode_array_start(size, b, n); });
}

void Writer::map(std::size_t size) {
  put(out_, [&](unsigned char* b, std::size_t n) { return cbor_encode_map_start(size, b, n); });
}

void Writer::tag(std::uint64_t t) {
  put(out_, [&](unsigned char* b, std::size_t n) { return cbor_encode_tag(t, b, n); });
}

void Writer::null() {
  put(out_, [](unsigned char* b, std::size_t n) { return cbor_encode_null(b, n); });
}

void Writer::boolean(bool v) {
  put(out_, [&](unsigned char* b, std::size_t n) { return cbor_encode_bool(v, b, n); });
}

std::string bytes_head(std::size_t size) {
  std::string out;
  Writer(out).bytes_head(size);
  return out;
}

// ---- reading ----

namespace {

// Receives libcbor's callbacks, one per data item head, and builds the tree.
struct Builder {
  Builder(std::string_view input, std::vector<Item>& out, const Limits& l)
      : in(input), items(out), limits(l) {}

  std::string_view in;
  std::vector<Item>& items;
  const Limits& limits;
  std::size_t offset = 0;  // where the head being decoded starts
  std::string error;       // first problem seen by a callback
  bool root_done = false;
  std::uint32_t current = 0;   // index of the item the last callback made
  std::uint64_t children = 0;  // children still expected by that item (containers)

  struct Open {
    std::uint32_t index;
    std::uint64_t remaining;
  };
  std::vector<Open> stack;

  Item& add(Type t) {
    current = static_cast<std::uint32_t>(items.size());
    children = 0;
    items.push_back(Item{});
    Item& it = items.back();
    it.type = t;
    it.encoded = in.substr(offset, 0);
    return it;
  }
  void container(Type t, std::uint64_t count, std::uint64_t per_entry) {
    // Each child takes at least one byte: a count beyond what is left is a lie.
    if (count > in.size() - offset || count * per_entry > in.size() - offset) {
      if (error.empty()) error = "a collection claims more items than there are bytes";
    }
    Item& it = add(t);
    it.value = count;
    children = count * per_entry;
  }
  void uint_value(std::uint64_t v) { add(Type::Unsigned).value = v; }
  void neg_value(std::uint64_t v) { add(Type::Negative).value = v; }
  void indefinite() {
    if (error.empty()) error = "indefinite-length items are not accepted";
    add(Type::Null);
  }

  // Called after each head: attaches the item just made to its parent.
  void settle(std::size_t head_end) {
    if (children > 0) {
      if (stack.size() >= limits.max_depth) {
        if (error.empty()) error = "nested deeper than " + std::to_string(limits.max_depth) + " levels";
        return;
      }
      stack.push_back(Open{current, children});
      return;
    }
    complete(current, head_end);
  }

  void complete(std::uint32_t index, std::size_t end_offset) {
    for (;;) {
      Item& it = items[index];
      const auto begin = static_cast<std::size_t>(it.encoded.data() - in.data());
      it.encoded = in.substr(begin, end_offset - begin);
      it.end = static_cast<std::uint32_t>(items.size());
      if (stack.empty()) {
        root_done = true;
        return;
      }
      if (--stack.back().remaining > 0) return;
      index = stack.back().index;
      stack.pop_back();
    }
  }
};

Builder& B(void* ctx) {
  return *static_cast<Builder*>(ctx);
}

cbor_callbacks make_callbacks() {
  cbor_callbacks cb = cbor_empty_callbacks;
  cb.uint8 = [](void* c, uint8_t v) { B(c).uint_value(v); };
  cb.uint16 = [](void* c, uint16_t v) { B(c).uint_value(v); };
  cb.uint32 = [](void* c, uint32_t v) { B(c).uint_value(v); };
  cb.uint64 = [](void* c, uint64_t v) { B(c).uint_value(v); };
  cb.negint8 = [](void* c, uint8_t v) { B(c).neg_value(v); };
  cb.negint16 = [](void* c, uint16_t v) { B(c).neg_value(v); };
  cb.negint32 = [](void* c, uint32_t v) { B(c).neg_value(v); };
  cb.negint64 = [](void* c, uint64_t v) { B(c).neg_value(v); };
  // libcbor names: byte_string / string are the definite forms (data and length),
  // byte_string_start / string_start the indefinite ones.
  cb.byte_string = [](void* c, cbor_data d, std::size_t n) {
    B(c).add(Type::Bytes).data = std::string_view(reinterpret_cast<const char*>(d), n);
  };
  cb.string = [](void* c, cbor_data d, std::size_t n) {
    B(c).add(Type::Text).data = std::string_view(reinterpret_cast<const char*>(d), n);
  };
  cb.byte_string_start = [](void* c) { B(c).indefinite(); };
  cb.string_start = [](void* c) { B(c).indefinite(); };
  cb.indef_array_start = [](void* c) { B(c).indefinite(); };
  cb.indef_map_start = [](void* c) { B(c).indefinite(); };
  cb.indef_break = [](void* c) { B(c).indefinite(); };
  cb.array_start = [](void* c, std::size_t n) { B(c).container(Type::Array, n, 1); };
  cb.map_start = [](void* c, std::size_t n) { B(c).container(Type::Map, n, 2); };
  cb.tag = [](void* c, uint64_t t) {
    B(c).container(Type::Tag, 1, 1);
    B(c).items.back().value = t;
  };
  cb.float2 = [](void* c, float f) { B(c).add(Type::Float).number = f; };
  cb.float4 = [](void* c, float f) { B(c).add(Type::Float).number = f; };
  cb.float8 = [](void* c, double f) { B(c).add(Type::Float).number = f; };
  cb.undefined = [](void* c) { B(c).add(Type::Undefined); };
  cb.null = [](void* c) { B(c).add(Type::Null); };
  cb.boolean = [](void* c, bool v) { B(c).add(Type::Bool).boolean = v; };
  return cb;
}

// A key of a map, comparable: integers by value, strings by content, anything
// else by its encoding.
using KeyId = std::tuple<int, std::uint64_t, std::string_view>;

KeyId key_id(const Item& k) {
  switch (k.type) {
    case Type::Unsigned:
      return {0, k.value, {}};
    case Type::Negative:
      return {1, k.value, {}};
    case Type::Bytes:
      return {2, 0, k.data};
    case Type::Text:
      return {3, 0, k.data};
    default:
      return {4, 0, k.encoded};
  }
}

bool has_duplicate_keys(const Tree& t, std::uint32_t map) {
  std::vector<KeyId> keys;
  keys.reserve(t[map].value);
  for (std::uint32_t i = map + 1; i < t[map].end;) {
    keys.push_back(key_id(t[i]));
    i = t[i].end;  // skip the key
    i = t[i].end;  // skip the value
  }
  std::sort(keys.begin(), keys.end());
  return std::adjacent_find(keys.begin(), keys.end()) != keys.end();
}

}  // namespace

std::uint32_t Tree::child(std::uint32_t container, std::uint32_t i) const {
  std::uint32_t at = container + 1;
  while (i-- > 0) at = items_[at].end;
  return at;
}

std::optional<std::uint32_t> Tree::find(std::uint32_t map, std::int64_t key) const {
  for (std::uint32_t i = map + 1; i < items_[map].end;) {
    const std::uint32_t value = items_[i].end;
    if (auto k = as_int(i); k && *k == key) return value;
    i = items_[value].end;
  }
  return std::nullopt;
}

std::optional<std::int64_t> Tree::as_int(std::uint32_t i) const {
  const Item& it = items_[i];
  constexpr auto kMax = static_cast<std::uint64_t>(INT64_MAX);
  if (it.type == Type::Unsigned && it.value <= kMax) return static_cast<std::int64_t>(it.value);
  if (it.type == Type::Negative && it.value <= kMax) return -1 - static_cast<std::int64_t>(it.value);
  return std::nullopt;
}

std::optional<Tree> decode(std::string_view in, std::string& why, const Limits& limits) {
  static const cbor_callbacks callbacks = make_callbacks();
  Tree tree;
  Builder b(in, tree.items_, limits);
  if (in.empty()) {
    why = "empty input";
    return std::nullopt;
  }
  while (!b.root_done) {
    if (b.offset >= in.size()) {
      why = "truncated CBOR";
      return std::nullopt;
    }
    const auto* p = reinterpret_cast<cbor_data>(in.data() + b.offset);
    cbor_decoder_result r{};
    if (*p >= 0xc6 && *p <= 0xd4) {
      // libcbor 0.8 (Debian 12) refuses the one-byte heads of tags 6 to 20 (RFC 7049
      // had them "reserved"; RFC 8949 does not), and COSE needs tags 16, 17 and 18.
      // Such a head is the whole item head: the tag number is its low five bits.
      b.container(Type::Tag, 1, 1);
      b.items.back().value = *p & 0x1fu;
      r.read = 1;
      r.status = CBOR_DECODER_FINISHED;
    } else {
      r = cbor_stream_decode(p, in.size() - b.offset, &callbacks, &b);
    }
    if (r.status == CBOR_DECODER_NEDATA) {
      why = "truncated CBOR";
      return std::nullopt;
    }
    if (r.status != CBOR_DECODER_FINISHED || r.read == 0) {
      why = "not well-formed CBOR at byte " + std::to_string(b.offset);
      return std::nullopt;
    }
    if (!b.error.empty()) {
      why = b.error;
      return std::nullopt;
    }
    b.offset += r.read;
    b.settle(b.offset);
    if (!b.error.empty()) {
      why = b.error;
      return std::nullopt;
    }
  }
  if (b.offset != in.size()) {
    why = std::to_string(in.size() - b.offset) + " trailing bytes after the CBOR item";
    return std::nullopt;
  }
  for (std::uint32_t i = 0; i < tree.size(); ++i) {
    if (tree[i].type == Type::Map && has_duplicate_keys(tree, i)) {
      why = "a map has the same key twice";
      return std::nullopt;
    }
  }
  return tree;
}

}  // namespace moat::payload::cbor
