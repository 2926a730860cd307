// A complete program using moat::client: subscribe to a topic, publish to it at
// QoS 1, print what arrives, disconnect. Built by the test suite
// (tests/CMakeLists.txt, target example_publish_subscribe) and run against a
// broker by tests/integration/test_client_example.py.
//
//   example_publish_subscribe HOST PORT
#include <boost/asio/io_context.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "client/client.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
    return 2;
  }
  boost::asio::io_context io;

  moat::client::Options options;
  options.host = argv[1];
  options.port = static_cast<std::uint16_t>(std::atoi(argv[2]));
  options.client_id = "example-client";
  options.keep_alive = 30;

  moat::client::Client client(io, options);
  int status = 1;

  client.on_message([&](const moat::client::Message& m) {
    std::printf("%s %s\n", m.topic.c_str(), m.payload.c_str());
    client.disconnect([&](moat::client::Error) { status = 0; });
  });

  client.on_connect([&](const moat::client::ConnectResult& r) {
    if (!r.ok()) {
      std::fprintf(stderr, "connect failed: %s\n", r.detail.c_str());
      return;
    }
    client.subscribe({{"example/greeting", moat::client::QoS::AtLeastOnce}},
                     [&](moat::client::Error e, const std::vector<std::uint8_t>& granted) {
                       if (e != moat::client::Error::None || granted.at(0) == 0x80) {
                         std::fprintf(stderr, "subscribe failed\n");
                         client.disconnect(nullptr);
                         return;
                       }
                       client.publish("example/greeting", "hello from moat::client",
                                      moat::client::QoS::AtLeastOnce, false, [](moat::client::Error pe) {
                                        if (pe != moat::client::Error::None)
                                          std::fprintf(stderr, "publish failed: %s\n",
                                                       moat::client::to_string(pe));
                                      });
                     });
  });

  client.connect();
  io.run();  // returns once the client has disconnected
  return status;
}
