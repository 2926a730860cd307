#include "security/audit.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <system_error>


namespace moat::security {

std::string rfc3339_utc_ms(std::chrono::system_clock::time_point t) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  long frac = static_cast<long>(ms % 1000);
  if (frac < 0) {  // before 1970: floor, not truncation
    frac += 1000;
    --secs;
  }
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
  return buf;
}

std::string format_audit_line(const AuditEvent& e, std::chrono::system_clock::time_point now) {
  // Field order is fixed (nlohmann::ordered_json) so lines read the same way
  // every time; parsers must not depend on it (docs/audit.md).
  nlohmann::ordered_json j;
  j["v"] = 1;
  j["ts"] = rfc3339_utc_ms(now);
  j["event"] = e.event;
  auto str = [&](const char* key, std::string_view v) {
    if (!v.empty()) j[key] = v;
  };
  str("listener", e.listener);
  str("peer", e.peer);
  str("address", e.address);
  str("client_id", e.client_id);
  if (e.username) j["username"] = *e.username;
  str("identity", e.identity);
  str("method", e.method);
  str("action", e.action);
  str("topic", e.topic);
  str("failure", e.failure);
  str("kid", e.kid);
  str("mode", e.mode);
  if (e.code) j["code"] = *e.code;
  if (e.delay_ms) j["delay_ms"] = *e.delay_ms;
  if (e.failures) j["failures"] = *e.failures;
  if (e.suppressed) j["suppressed"] = *e.suppressed;
  if (e.duration_s) j["duration_s"] = *e.duration_s;
  if (e.until) j["until"] = rfc3339_utc_ms(*e.until);
  str("reason", e.reason);
  // Client-supplied strings are valid UTF-8 (the codec checks them); anything
  // else is replaced rather than allowed to break the line.
  std::string line = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  line.push_back('\n');
  return line;
}

AuditLog::AuditLog(std::string path, std::size_t max_queued)
    : path_(std::move(path)), max_queued_(std::max<std::size_t>(max_queued, 1)) {
  fd_ = open_file();
  if (fd_ < 0)
    throw std::runtime_error("audit log " + path_ + ": " +
                             std::error_code(errno, std::system_category()).message());
  writer_ = std::thread([this] { run(); });
}

AuditLog::~AuditLog() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  writer_.join();
  if (fd_ >= 0 && fd_ != STDERR_FILENO) ::close(fd_);
}

int AuditLog::open_file() const {
  if (path_ == "-") return STDERR_FILENO;
  return ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

void AuditLog::emit(const AuditEvent& e) {
  std::string line = format_audit_line(e, std::chrono::system_clock::now());
  {
    std::lock_guard lock(mu_);
    if (queue_.size() >= max_queued_) {
      ++dropped_;
      ++dropped_unreported_;
      return;
    }
    queue_.push_back(std::move(line));
    ++enqueued_;
  }
  wake_.notify_one();
}

std::uint64_t AuditLog::dropped() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

std::string AuditLog::reopen() {
  if (path_ == "-") return {};
  const int fd = open_file();
  if (fd < 0) return std::error_code(errno, std::system_category()).message();
  std::lock_guard io(io_mu_);
  ::close(fd_);
  fd_ = fd;
  return {};
}

void AuditLog::flush() {
  std::unique_lock lock(mu_);
  const auto target = enqueued_;
  written_.wait(lock, [&] { return done_ >= target; });
}

void AuditLog::run() {
  std::deque<std::string> batch;
  std::string buf;
  for (;;) {
    std::uint64_t lost = 0;
    {
      std::unique_lock lock(mu_);
      wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty() && stop_) return;
      batch.swap(queue_);
      lost = dropped_unreported_;
      dropped_unreported_ = 0;
    }
    buf.clear();
    for (const auto& l : batch) buf += l;
    if (lost > 0) {
      AuditEvent e;
      e.event = "audit.dropped";
      e.suppressed = static_cast<std::int64_t>(lost);
      e.reason = "the audit writer fell behind; lines were dropped";
      buf += format_audit_line(e, std::chrono::system_clock::now());
    }
    {
      std::lock_guard io(io_mu_);
      std::size_t off = 0;
      while (off < buf.size()) {
        const ssize_t n = ::write(fd_, buf.data() + off, buf.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;  // disk full or closed: the lines are lost, moatd goes on
        off += static_cast<std::size_t>(n);
      }
    }
    {
      std::lock_guard lock(mu_);
      done_ += batch.size();
    }
    batch.clear();
    written_.notify_all();
  }
}

}  // namespace moat::security
