#include "security/payload/errors.hpp"

namespace moat::payload {

std::string_view to_string(Errc e) {
  switch (e) {
    case Errc::malformed:
      return "malformed";
    case Errc::unsupported:
      return "unsupported";
    case Errc::wrong_algorithm:
      return "wrong algorithm";
    case Errc::unknown_key:
      return "unknown key";
    case Errc::verification_failed:
      return "verification failed";
    case Errc::not_fresh:
      return "not fresh";
    case Errc::stale:
      return "stale";
    case Errc::replayed:
      return "replayed";
  }
  return "error";
}

std::string Error::message() const {
  std::string m(to_string(code));
  if (code == Errc::verification_failed) m += " (tampered, or sealed for another topic)";
  if (!detail.empty()) m += ": " + detail;
  return m;
}

}  // namespace moat::payload
