// The network side of moatd: N event loops (one io_context and one broker::Shard
// per thread), listeners, and connections that stay on one loop.
//
// The Asio types live only in server.cpp, so including this header is cheap.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "broker/shard.hpp"
#include "security/acl.hpp"
#include "security/tls.hpp"

namespace moat::net {

struct ListenerSpec {
  std::string name;
  std::string host;  // numeric IPv4 or IPv6 address
  std::uint16_t port = 1883;
  std::vector<std::shared_ptr<security::Authenticator>> auth;  // tried in order
  // Transport "tls": the context for new handshakes, swapped on reload.
  std::shared_ptr<security::Reloadable<security::TlsServerContext>> tls;
  // Client identifiers each identity may use on this listener; null: any.
  std::shared_ptr<security::Reloadable<security::ClientIdRules>> clientid = nullptr;
  // The access policy of its connections: 0 is [acl], n > 0 its own
  // [listener.acl] (broker::ListenerPolicy::acl_slot).
  std::uint32_t acl_slot = 0;
  // Which peers the brute-force defence judges on this listener.
  security::DefenceScope defence{};
};

struct ServerOptions {
  std::uint32_t threads = 1;
  std::vector<ListenerSpec> listeners;
};

class Server {
 public:
  Server(ServerOptions options, broker::BrokerShared& shared);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Restores durable sessions into the shards that own them; before start().
  void restore(const store::Snapshot& snapshot);
  // Binds every listener (throws std::runtime_error naming the listener and the
  // address on failure) and starts the loop threads.
  void start();
  // Stops the loops and joins their threads. Safe to call from any thread, once.
  void stop();
  // The bound ports, in listener order (useful with port 0).
  std::vector<std::uint16_t> ports() const;
  // Sum of every shard's counters.
  broker::ShardStats::Snapshot totals() const;

  // Handshake counters of every TLS listener, in listener order (for a metrics
  // endpoint; the same counters feed $SYS/broker/tls/<listener>/...).
  struct TlsListenerMetrics {
    std::string listener;
    const security::TlsHandshakeMetrics* metrics;
  };
  std::vector<TlsListenerMetrics> tls_metrics() const;

  // Call after a TLS listener's context was swapped (reload): each event loop
  // checks the client certificate of each of its established TLS connections
  // against the listener's current context (TlsServerContext::recheck) and
  // closes at once, as an abnormal end (the will is published), those it no
  // longer accepts: revoked by a new CRL, or no longer issued by a trusted CA.
  // Thread-safe; returns at once, the loops do the work in small batches.
  void recheck_tls_connections();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moat::net
