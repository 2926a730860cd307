// moat_delaylink: a point-to-point IP link with a fixed one-way delay between
// two network namespaces, for experiments on kernels without the netem qdisc
// (scripts/experiments/tls-delay).
//
// It makes one TUN device in each namespace — /dev/net/tun is opened from inside
// the namespace (setns), so the device is born there — and forwards every IP
// packet read from one device to the other once the delay has passed since it
// was read. The delay is the same for every packet, so arrival order is release
// order and each direction is a FIFO. Each direction's queue is bounded: a
// packet that finds it full is dropped and counted, like a router's tail drop.
//
//   moat_delaylink --ns-a NS --ns-b NS [--dev NAME] [--delay-ms MS] [--queue PACKETS]
//
// NS is a name made by `ip netns add` (looked up in /run/netns) or a path to a
// namespace file. The devices are left down and without addresses: the caller
// configures them (ip -n NS addr add ...; ip -n NS link set NAME up).
// Prints "ready" on stdout once both devices exist, then runs until SIGTERM or
// SIGINT and prints its counters on stderr. The devices vanish with the process.
// Exit status: 0 after a signal; 77 when namespaces or TUN devices cannot be used
// here (not permitted, no /dev/net/tun); 1 on any other error.
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kUnavailable = 77;

volatile sig_atomic_t g_stop = 0;
void on_signal(int) {
  g_stop = 1;
}

[[noreturn]] void die(int status, const std::string& what, int err) {
  std::fprintf(stderr, "moat_delaylink: %s: %s\n", what.c_str(), std::strerror(err));
  std::exit(status);
}

// Errors that mean "this machine does not let us", not "this program is wrong".
bool unavailable(int err) {
  return err == EPERM || err == EACCES || err == ENOENT || err == ENODEV || err == ENXIO || err == EOPNOTSUPP;
}

int open_netns(const std::string& ns) {
  const std::string path = ns.find('/') == std::string::npos ? "/run/netns/" + ns : ns;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    die(errno == EACCES || errno == EPERM ? kUnavailable : 1, "cannot open namespace " + path, errno);
  return fd;
}

// Creates TUN device `dev` inside the namespace `ns_fd`; returns its descriptor.
int make_tun(int ns_fd, int home_fd, const std::string& dev, const std::string& ns) {
  if (::setns(ns_fd, CLONE_NEWNET) != 0)
    die(unavailable(errno) ? kUnavailable : 1, "cannot enter network namespace " + ns, errno);
  const int fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) die(unavailable(errno) ? kUnavailable : 1, "cannot open /dev/net/tun", errno);
  ifreq ifr{};
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;  // raw IP packets, no protocol header
  std::strncpy(ifr.ifr_name, dev.c_str(), IFNAMSIZ - 1);
  if (::ioctl(fd, TUNSETIFF, &ifr) != 0)
    die(unavailable(errno) ? kUnavailable : 1, "cannot create TUN device " + dev + " in " + ns, errno);
  if (::setns(home_fd, CLONE_NEWNET) != 0) die(1, "cannot return to the original network namespace", errno);
  return fd;
}

struct Packet {
  Clock::time_point due;
  std::vector<std::uint8_t> bytes;
};

struct Direction {
  const char* name;
  int from = -1;
  int to = -1;
  std::deque<Packet> queue;
  std::uint64_t forwarded = 0;
  std::uint64_t dropped_full = 0;
  std::uint64_t dropped_write = 0;
};

void usage() {
  std::fprintf(stderr,
               "usage: moat_delaylink --ns-a NS --ns-b NS [--dev NAME] [--delay-ms MS] [--queue PACKETS]\n");
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  std::string ns_a;
  std::string ns_b;
  std::string dev = "mdl0";
  double delay_ms = 34;
  std::size_t max_queue = 10000;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) usage();
    const std::string val = argv[++i];
    if (arg == "--ns-a") {
      ns_a = val;
    } else if (arg == "--ns-b") {
      ns_b = val;
    } else if (arg == "--dev") {
      dev = val;
    } else if (arg == "--delay-ms") {
      char* end = nullptr;
      delay_ms = std::strtod(val.c_str(), &end);
      if (*end != '\0' || !(delay_ms >= 0 && delay_ms <= 60000)) usage();
    } else if (arg == "--queue") {
      char* end = nullptr;
      max_queue = std::strtoul(val.c_str(), &end, 10);
      if (*end != '\0' || max_queue == 0) usage();
    } else {
      usage();
    }
  }
  if (ns_a.empty() || ns_b.empty() || dev.empty() || dev.size() >= IFNAMSIZ) usage();
  const auto delay =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(delay_ms));

  // Signals are delivered only inside ppoll(), so the loop sees them at once.
  sigset_t blocked;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGTERM);
  sigaddset(&blocked, SIGINT);
  sigprocmask(SIG_BLOCK, &blocked, nullptr);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigset_t during_poll;
  sigemptyset(&during_poll);

  // If the script that started us dies without cleaning up, so do we (and the devices).
  ::prctl(PR_SET_PDEATHSIG, SIGTERM, 0UL, 0UL, 0UL);

  const int home = ::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (home < 0) die(unavailable(errno) ? kUnavailable : 1, "cannot open /proc/self/ns/net", errno);
  const int nsa = open_netns(ns_a);
  const int nsb = open_netns(ns_b);
  const int tun_a = make_tun(nsa, home, dev, ns_a);
  const int tun_b = make_tun(nsb, home, dev, ns_b);
  ::close(nsa);
  ::close(nsb);
  ::close(home);

  Direction dirs[2];
  dirs[0].name = "a->b";
  dirs[0].from = tun_a;
  dirs[0].to = tun_b;
  dirs[1].name = "b->a";
  dirs[1].from = tun_b;
  dirs[1].to = tun_a;

  // Release packets on time even when the machine is busy (a build running
  // beside the experiment): a real-time priority if allowed, and no timer
  // slack. Both are best effort; the forwarder sleeps in ppoll() between packets.
  sched_param prio{};
  prio.sched_priority = 10;
  if (::sched_setscheduler(0, SCHED_FIFO, &prio) != 0)
    std::fprintf(stderr, "moat_delaylink: no real-time priority (%s); timing may suffer under load\n",
                 std::strerror(errno));
  ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);

  std::printf("ready\n");
  std::fflush(stdout);

  std::vector<std::uint8_t> buf(65536);
  while (!g_stop) {
    // Release every packet that is due.
    auto now = Clock::now();
    for (auto& d : dirs) {
      while (!d.queue.empty() && d.queue.front().due <= now) {
        const auto& p = d.queue.front();
        // A device that is still down answers EIO: the packet is lost, as on a cable.
        if (::write(d.to, p.bytes.data(), p.bytes.size()) == static_cast<ssize_t>(p.bytes.size()))
          ++d.forwarded;
        else
          ++d.dropped_write;
        d.queue.pop_front();
      }
    }

    // Sleep until the next packet is due or one arrives.
    timespec ts{};
    timespec* timeout = nullptr;
    Clock::time_point next = Clock::time_point::max();
    for (auto& d : dirs)
      if (!d.queue.empty()) next = std::min(next, d.queue.front().due);
    if (next != Clock::time_point::max()) {
      const auto ns = std::max<std::int64_t>(
          0, std::chrono::duration_cast<std::chrono::nanoseconds>(next - Clock::now()).count());
      ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
      ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
      timeout = &ts;
    }
    pollfd fds[2] = {{tun_a, POLLIN, 0}, {tun_b, POLLIN, 0}};
    const int r = ::ppoll(fds, 2, timeout, &during_poll);
    if (r < 0) {
      if (errno == EINTR) continue;
      die(1, "ppoll", errno);
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].revents & (POLLERR | POLLNVAL)) die(1, std::string("TUN device of ") + (i ? "b" : "a"), EIO);
      if (!(fds[i].revents & POLLIN)) continue;
      Direction& d = dirs[i];
      for (;;) {
        const ssize_t n = ::read(d.from, buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;  // EAGAIN: all read
        if (d.queue.size() >= max_queue) {
          ++d.dropped_full;
          continue;
        }
        d.queue.push_back({Clock::now() + delay, {buf.begin(), buf.begin() + n}});
      }
    }
  }

  for (const auto& d : dirs)
    std::fprintf(
        stderr,
        "moat_delaylink: %s: %llu packets forwarded, %llu dropped (queue full), %llu lost (device down)\n",
        d.name, static_cast<unsigned long long>(d.forwarded), static_cast<unsigned long long>(d.dropped_full),
        static_cast<unsigned long long>(d.dropped_write));
  return 0;
}
