// moatd: the Moat MQTT broker. Parses the command line and the configuration,
// wires the layers together, and waits for signals. Nothing else lives here.
#include <fcntl.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstring>
#include <filesystem>
#include <thread>

#include "config/config.hpp"
#include "net/server.hpp"
#include "store/memory_store.hpp"

namespace {

// One moatd per data directory: a second one would corrupt durable state.
int lock_data_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw std::runtime_error(fmt::format("data_dir {}: {}", dir.string(), ec.message()));
  const auto lock = dir / "LOCK";
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    throw std::runtime_error(
        fmt::format("{}: {}", lock.string(), std::error_code(errno, std::system_category()).message()));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0)
    throw std::runtime_error(
        fmt::format("{} is in use by another moatd (lock {})", dir.string(), lock.string()));
  return fd;
}

void reload(const std::filesystem::path& file, moat::config::Config& current) {
  try {
    auto next = moat::config::load_file(file);
    spdlog::set_level(spdlog::level::from_str(next.log_level));
    if (next.listeners.size() != current.listeners.size() || next.threads != current.threads ||
        next.data_dir != current.data_dir)
      spdlog::warn("reload: listener, thread and data_dir changes take effect after a restart");
    current.log_level = next.log_level;
    spdlog::info("configuration reloaded from {}", file.string());
  } catch (const std::exception& e) {
    spdlog::error("reload failed, keeping the running configuration: {}", e.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moatd - the Moat MQTT broker"};
  std::string config_file;
  bool check_only = false;
  app.add_option("-c,--config", config_file, "configuration file (moat.toml)")->check(CLI::ExistingFile);
  app.add_flag("--check-config", check_only, "validate the configuration and exit");
  app.set_version_flag("-V,--version", std::string("moatd ") + MOAT_VERSION);
  CLI11_PARSE(app, argc, argv);

  auto logger = spdlog::stderr_color_mt("moatd");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  moat::config::Config cfg;
  try {
    cfg = config_file.empty() ? moat::config::default_config() : moat::config::load_file(config_file);
  } catch (const std::exception& e) {
    fmt::print(stderr, "moatd: configuration error: {}\n", e.what());
    return 2;
  }
  if (check_only) {
    fmt::print("{}: configuration is valid\n", config_file.empty() ? "built-in default" : config_file);
    return 0;
  }
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  if (cfg.threads == 0) cfg.threads = std::max(1u, std::thread::hardware_concurrency());

  // Signals are taken by this thread alone (sigwait below); the loops inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  int lock_fd = -1;
  try {
    lock_fd = lock_data_dir(cfg.data_dir);
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }

  moat::store::MemoryStore store;
  moat::broker::BrokerShared shared;
  shared.limits = cfg.limits;
  shared.store = &store;
  shared.shard_count = cfg.threads;
  shared.sys_interval = cfg.sys_interval;
  shared.version = std::string("moat ") + MOAT_VERSION;

  moat::net::ServerOptions opts;
  opts.threads = cfg.threads;
  for (const auto& l : cfg.listeners) {
    opts.listeners.push_back({l.name, l.host, l.port, l.auth});
    if (l.host != "127.0.0.1" && l.host != "::1" &&
        std::find(l.auth.begin(), l.auth.end(), "anonymous") != l.auth.end())
      spdlog::warn("listener {} admits anonymous clients on {}, which is not loopback-only", l.name, l.host);
  }
  moat::net::Server server(std::move(opts), shared);
  try {
    server.start();
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
  spdlog::info("moatd {} started: {} event loop(s), data in {}{}", MOAT_VERSION, cfg.threads,
               cfg.data_dir.string(), config_file.empty() ? " (built-in default configuration)" : "");

  for (;;) {
    int sig = 0;
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig == SIGHUP) {
      if (config_file.empty())
        spdlog::info("SIGHUP: running on the built-in default; nothing to reload");
      else
        reload(config_file, cfg);
      continue;
    }
    spdlog::info("{}: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    break;
  }
  server.stop();
  const auto t = server.totals();
  spdlog::info("stopped: {} messages received, {} sent, {} dropped (queue full), {} protocol errors",
               t.messages_received, t.messages_sent, t.dropped_queue_full, t.protocol_errors);
  ::close(lock_fd);
  return 0;
}
