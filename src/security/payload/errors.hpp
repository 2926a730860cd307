// Why an envelope was refused. Each class of failure has its own code, so a
// caller (the CLI's exit status, a broker counter, a test) can tell them apart;
// docs/payload-security.md lists them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace moat::payload {

enum class Errc : std::uint8_t {
  // The bytes are not a COSE message Moat accepts: not well-formed CBOR, an
  // indefinite length, trailing bytes, a duplicate map key, a wrong CBOR tag, a
  // wrong array size or header value type, the same label in both header buckets.
  malformed = 1,
  // Well formed, but uses something Moat does not implement: a critical header it
  // does not understand (RFC 9052 section 3.1), a Partial IV with no IV (a context
  // IV), COSE_Sign / COSE_Mac, compressed points.
  unsupported,
  // The algorithm is missing, unknown, or not the one the key is for.
  wrong_algorithm,
  // No key with the envelope's key id for this topic (or no key that fits).
  unknown_key,
  // The tag, signature or digest does not verify. The topic is the external AAD,
  // so an envelope moved to another topic fails here too: cryptography cannot tell
  // a tampered envelope from one sealed for another topic.
  verification_failed,
  // Freshness is required and the envelope has no protected timestamp, sequence
  // number (or key id).
  not_fresh,
  // The timestamp is older than the maximum age, or too far in the future.
  stale,
  // The sequence number was seen before for this sender, or is below its window.
  replayed,
};

// "malformed", "unsupported", "wrong algorithm", "unknown key",
// "verification failed", "not fresh", "stale", "replayed".
std::string_view to_string(Errc e);

struct Error {
  Errc code;
  std::string detail;  // one line, says what was wrong

  // "verification failed (tampered or wrong topic): ..." etc.
  std::string message() const;
};

// A value or an Error; what every function of this library returns at its boundary.
template <typename T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Error e) : v_(std::move(e)) {}      // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const { return std::get<1>(v_); }
  Errc code() const { return std::get<1>(v_).code; }

 private:
  std::variant<T, Error> v_;
};

inline Error fail(Errc code, std::string detail) {
  return Error{code, std::move(detail)};
}

}  // namespace moat::payload
