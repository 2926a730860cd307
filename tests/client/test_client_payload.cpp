// moat::client with a keyring (Options::payload): sealed on publish, opened on
// receive, against a real broker. Keys and keyring files are made in a temporary
// folder with the payload library, as `moat keygen` makes them.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>

#include "codec/decoder.hpp"
#include "codec/encoder.hpp"
#include "harness.hpp"
#include "security/payload/keyring.hpp"

namespace moat::test {
namespace {

using client::QoS;
namespace payload = moat::payload;

// A folder with key files and keyrings; removed at the end.
class KeyDir {
 public:
  KeyDir() {
    static std::atomic<int> n{0};
    dir_ = std::filesystem::temp_directory_path() /
           ("moat-client-payload-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  ~KeyDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  // Writes NAME (private or secret, 0600) and, for a key pair, NAME.pub.
  void key(payload::KeyKind kind, const std::string& kid) {
    const auto k = payload::Key::generate(kind, kid);
    payload::write_key_file(dir_ / kid, k.to_jwk(true), 0600, false);
    if (!k.is_symmetric()) payload::write_key_file(dir_ / (kid + ".pub"), k.to_jwk(false), 0644, false);
  }
  std::shared_ptr<payload::Keyring> ring(const std::string& name, const std::string& toml) {
    std::ofstream(dir_ / name) << toml;
    return payload::Keyring::load(dir_ / name);
  }

 private:
  std::filesystem::path dir_;
};

// Publishes and waits for the completion.
client::Error publish(ClientLoop& loop, client::Client& c, const std::string& topic, std::string payload,
                      QoS qos = QoS::AtLeastOnce) {
  std::promise<client::Error> done;
  loop.run([&] {
    c.publish(topic, std::move(payload), qos, false, [&](client::Error e) { done.set_value(e); });
    return 0;
  });
  return done.get_future().get();
}

std::unique_ptr<client::Client> connected_client(ClientLoop& loop, client::Options o) {
  std::promise<bool> up;
  auto c = loop.run([&] {
    auto cl = std::make_unique<client::Client>(loop.io(), std::move(o));
    cl->on_connect([&up, once = std::make_shared<bool>(false)](const client::ConnectResult& r) {
      if (*once) return;
      *once = true;
      up.set_value(r.ok());
    });
    cl->connect();
    return cl;
  });
  EXPECT_TRUE(up.get_future().get());
  return c;
}

void destroy(ClientLoop& loop, std::unique_ptr<client::Client>& c) {
  loop.run([&] {
    c.reset();
    return 0;
  });
}

const client::Message* find(const std::vector<client::Message>& v, const std::string& topic) {
  for (const auto& m : v)
    if (m.topic == topic) return &m;
  return nullptr;
}

// The publisher seals per topic (sign, encrypt, nothing); a subscriber with the
// matching keyring gets the plaintext and what was verified; one without a
// keyring gets the envelopes as they travel.
TEST(ClientPayload, SealedPublishOpensWithTheSameKeyring) {
  KeyDir keys;
  keys.key(payload::KeyKind::Ed25519, "dev-sig");
  keys.key(payload::KeyKind::Aes256, "ops-aes");
  const auto pub_ring =
      keys.ring("pub.toml",
                "[[topic]]\nfilter = \"cmd/#\"\nkeys = [\"dev-sig\"]\nseal = \"sign\"\n\n"
                "[[topic]]\nfilter = \"ops/#\"\nkeys = [\"ops-aes\"]\nseal = \"encrypt\"\n");
  const auto sub_ring = keys.ring("sub.toml",
                                  "[[topic]]\nfilter = \"cmd/#\"\nkeys = [\"dev-sig.pub\"]\n\n"
                                  "[[topic]]\nfilter = \"ops/#\"\nkeys = [\"ops-aes\"]\n");
  Broker broker;
  ClientLoop loop;
  Signal sig;
  Inbox opened, raw;
  auto so = options(broker.port(), "opener");
  so.payload.keyring = sub_ring;
  so.payload.require_fresh = true;
  auto a = subscriber(loop, sig, opened, so, "#");
  auto b = subscriber(loop, sig, raw, options(broker.port(), "bystander"), "#");
  auto po = options(broker.port(), "sealer");
  po.payload.keyring = pub_ring;
  auto p = connected_client(loop, po);

  EXPECT_EQ(publish(loop, *p, "cmd/1", "start"), client::Error::None);
  EXPECT_EQ(publish(loop, *p, "ops/1", "the secret phrase"), client::Error::None);
  EXPECT_EQ(publish(loop, *p, "plain/1", "as is"), client::Error::None);
  ASSERT_TRUE(sig.wait([&] { return opened.messages.size() == 3 && raw.messages.size() == 3; }));

  {
    std::lock_guard l(sig.mu);
    EXPECT_TRUE(opened.rejected.empty());
    const auto* cmd = find(opened.messages, "cmd/1");
    ASSERT_TRUE(cmd && cmd->sealed);
    EXPECT_EQ(cmd->payload, "start");
    EXPECT_EQ(cmd->sealed->mode, payload::Mode::Sign);
    EXPECT_EQ(cmd->sealed->alg, payload::alg::EdDSA);
    EXPECT_EQ(cmd->sealed->kid, "dev-sig");
    EXPECT_TRUE(cmd->sealed->seq && cmd->sealed->iat);
    const auto* ops = find(opened.messages, "ops/1");
    ASSERT_TRUE(ops && ops->sealed);
    EXPECT_EQ(ops->payload, "the secret phrase");
    EXPECT_EQ(ops->sealed->mode, payload::Mode::Encrypt);
    EXPECT_EQ(ops->sealed->kid, "ops-aes");
    const auto* plain = find(opened.messages, "plain/1");
    ASSERT_TRUE(plain);
    EXPECT_EQ(plain->payload, "as is");
    EXPECT_FALSE(plain->sealed);

    // Without a keyring: COSE envelopes. Encrypted: the plaintext is nowhere.
    const auto* raw_ops = find(raw.messages, "ops/1");
    ASSERT_TRUE(raw_ops);
    EXPECT_FALSE(raw_ops->sealed);
    EXPECT_EQ(raw_ops->payload.find("secret"), std::string::npos);
    auto env = payload::decode(raw_ops->payload);
    ASSERT_TRUE(env) << env.error().message();
    EXPECT_EQ(env->kind, payload::Envelope::Kind::Encrypt0);
    const auto* raw_cmd = find(raw.messages, "cmd/1");
    ASSERT_TRUE(raw_cmd);
    auto signed_env = payload::decode(raw_cmd->payload);
    ASSERT_TRUE(signed_env) << signed_env.error().message();
    EXPECT_EQ(signed_env->kind, payload::Envelope::Kind::Sign1);
    EXPECT_EQ(signed_env->content, "start");
    EXPECT_EQ(find(raw.messages, "plain/1")->payload, "as is");
  }
  destroy(loop, p);
  destroy(loop, a);
  destroy(loop, b);
}

// Tampered, moved, unknown-key, malformed and replayed messages reach on_rejected
// with their class, never on_message; and they are acknowledged: after the
// connection is cut and the session resumed, the broker resends none of them.
TEST(ClientPayload, MessagesThatDoNotOpenAreRejectedAndAcknowledged) {
  KeyDir keys;
  keys.key(payload::KeyKind::Ed25519, "dev-sig");
  keys.key(payload::KeyKind::Ed25519, "other-sig");
  const auto sealer = keys.ring("seal.toml", "[[topic]]\nfilter = \"cmd/#\"\nkeys = [\"dev-sig\"]\n");
  const auto intruder = keys.ring("other.toml", "[[topic]]\nfilter = \"cmd/#\"\nkeys = [\"other-sig\"]\n");
  const auto sub_ring = keys.ring("sub.toml", "[[topic]]\nfilter = \"cmd/#\"\nkeys = [\"dev-sig.pub\"]\n");
  Broker broker;
  Proxy proxy(broker.port());
  ClientLoop loop;
  Signal sig;
  Inbox box;
  auto so = options(proxy.port(), "strict-sub");
  so.clean_session = false;
  so.reconnect.enabled = true;
  so.reconnect.initial_delay = 20ms;
  so.reconnect.max_delay = 200ms;
  so.payload.keyring = sub_ring;
  auto sub = subscriber(loop, sig, box, so, "cmd/#");
  auto raw = connected_client(loop, options(broker.port(), "raw-pub"));

  const auto good = sealer->seal("cmd/1", "stop", payload::Mode::Sign);
  ASSERT_TRUE(good);
  std::string tampered = *good;
  tampered[tampered.find("stop")] ^= 0x20;
  const auto moved = sealer->seal("cmd/1", "moved", payload::Mode::Sign);
  const auto unknown = intruder->seal("cmd/1", "intruder", payload::Mode::Sign);
  ASSERT_TRUE(moved && unknown);
  for (auto [topic, bytes] : std::vector<std::pair<std::string, std::string>>{{"cmd/1", tampered},
                                                                              {"cmd/2", *moved},
                                                                              {"cmd/1", *unknown},
                                                                              {"cmd/1", "not an envelope"},
                                                                              {"cmd/1", *good},
                                                                              {"cmd/1", *good}})
    ASSERT_EQ(publish(loop, *raw, topic, bytes), client::Error::None);
  ASSERT_TRUE(sig.wait([&] { return box.messages.size() + box.rejected.size() == 6; }));
  {
    std::lock_guard l(sig.mu);
    ASSERT_EQ(box.messages.size(), 1u);
    EXPECT_EQ(box.messages[0].payload, "stop");
    EXPECT_TRUE(box.messages[0].sealed);
    std::multiset<payload::Errc> codes;
    for (const auto& r : box.rejected) {
      codes.insert(r.code);
      EXPECT_EQ(r.reason.rfind(std::string(payload::to_string(r.code)), 0), 0u) << r.reason;
      EXPECT_EQ(r.qos, QoS::AtLeastOnce);
      if (r.code == payload::Errc::malformed) {
        EXPECT_EQ(r.payload, "not an envelope");
      }
      if (r.code == payload::Errc::unknown_key) {
        EXPECT_EQ(r.topic, "cmd/1");
      }
      EXPECT_EQ(r.payload.find("intruder") == std::string::npos, r.code != payload::Errc::unknown_key);
    }
    EXPECT_EQ(codes, (std::multiset<payload::Errc>{
                         payload::Errc::verification_failed, payload::Errc::verification_failed,
                         payload::Errc::unknown_key, payload::Errc::malformed, payload::Errc::replayed}));
  }

  // The PUBACKs have reached the broker once a later SUBACK on the same connection is back.
  std::promise<void> resubscribed;
  loop.run([&] {
    sub->subscribe({{"cmd/#", QoS::AtLeastOnce}},
                   [&](client::Error, const std::vector<std::uint8_t>&) { resubscribed.set_value(); });
    return 0;
  });
  resubscribed.get_future().get();
  proxy.drop_all();
  ASSERT_TRUE(sig.wait([&] { return box.connects == 2; }));
  const auto marker = sealer->seal("cmd/1", "marker", payload::Mode::Sign);
  ASSERT_EQ(publish(loop, *raw, "cmd/1", *marker), client::Error::None);
  ASSERT_TRUE(sig.wait([&] { return box.messages.size() == 2; }));
  {
    std::lock_guard l(sig.mu);
    EXPECT_EQ(box.messages[1].payload, "marker");
    EXPECT_EQ(box.rejected.size(), 5u);  // none resent
  }
  destroy(loop, raw);
  destroy(loop, sub);
}

// require_sealed = false: a payload that is no envelope at all is delivered as it
// came (sealed empty); a broken envelope is still rejected.
TEST(ClientPayload, LenientDeliversWhatIsNoEnvelope) {
  KeyDir keys;
  keys.key(payload::KeyKind::Hmac256, "line-mac");
  const auto ring = keys.ring("ring.toml", "[[topic]]\nfilter = \"line/#\"\nkeys = [\"line-mac\"]\n");
  Broker broker;
  ClientLoop loop;
  Signal sig;
  Inbox box;
  auto so = options(broker.port(), "lenient");
  so.payload.keyring = ring;
  so.payload.require_sealed = false;
  auto sub = subscriber(loop, sig, box, so, "line/#");
  auto raw = connected_client(loop, options(broker.port(), "raw"));
  // Sealed with a keyring of its own: the subscriber's is used on the client thread.
  const auto sealer = keys.ring("seal.toml", "[[topic]]\nfilter = \"line/#\"\nkeys = [\"line-mac\"]\n");
  auto env = sealer->seal("line/1", "reading 42", payload::Mode::Mac);
  ASSERT_TRUE(env);
  std::string broken = *env;
  broken[broken.find("reading")] = 'R';
  ASSERT_EQ(publish(loop, *raw, "line/1", "plain text"), client::Error::None);
  ASSERT_EQ(publish(loop, *raw, "line/1", broken), client::Error::None);
  ASSERT_TRUE(sig.wait([&] { return box.messages.size() == 1 && box.rejected.size() == 1; }));
  {
    std::lock_guard l(sig.mu);
    EXPECT_EQ(box.messages[0].payload, "plain text");
    EXPECT_FALSE(box.messages[0].sealed);
    EXPECT_EQ(box.rejected[0].code, payload::Errc::verification_failed);
  }
  destroy(loop, raw);
  destroy(loop, sub);
}

// No key fit for the mode: the publish completes with SealFailed and nothing is
// sent. (A keyring file cannot name a `seal` mode its keys cannot do: the mode
// here is the client's seal_mode.) Without seal_mode, a topic whose entries name
// no mode goes out as given.
TEST(ClientPayload, SealFailureCompletesWithSealFailedAndSendsNothing) {
  KeyDir keys;
  keys.key(payload::KeyKind::Ed25519, "dev-sig");
  const auto ring = keys.ring("pub.toml", "[[topic]]\nfilter = \"cmd/#\"\nkeys = [\"dev-sig.pub\"]\n");
  Broker broker;
  ClientLoop loop;
  Signal sig;
  Inbox spy;
  auto s = subscriber(loop, sig, spy, options(broker.port(), "spy"), "#");
  auto po = options(broker.port(), "signer-without-private-key");
  po.payload.keyring = ring;
  po.payload.seal_mode = payload::Mode::Sign;
  auto p = connected_client(loop, po);
  EXPECT_EQ(publish(loop, *p, "cmd/1", "go"), client::Error::SealFailed);  // public key only
  EXPECT_EQ(publish(loop, *p, "free/1", "go", QoS::AtMostOnce), client::Error::SealFailed);  // no key
  EXPECT_EQ(loop.run([&] { return p->pending(); }), 0u);
  EXPECT_STRNE(client::to_string(client::Error::SealFailed), "unknown error");
  auto qo = options(broker.port(), "as-given");
  qo.payload.keyring = ring;
  auto q = connected_client(loop, qo);
  EXPECT_EQ(publish(loop, *q, "free/1", "marker"), client::Error::None);
  ASSERT_TRUE(sig.wait([&] { return !spy.messages.empty(); }));
  {
    std::lock_guard l(sig.mu);
    ASSERT_EQ(spy.messages.size(), 1u);
    EXPECT_EQ(spy.messages[0].topic, "free/1");
    EXPECT_EQ(spy.messages[0].payload, "marker");
  }
  destroy(loop, q);
  destroy(loop, p);
  destroy(loop, s);
}

// A stand-in broker that reads the client's packets itself: answers CONNECT and
// returns the first PUBLISH, then closes without acknowledging it.
struct SeenPublish {
  bool dup = false;
  std::string topic;
  std::string payload;
};

SeenPublish serve_once(tcp::acceptor& acceptor, bool session_present) {
  tcp::socket s(acceptor.get_executor());
  acceptor.accept(s);
  std::vector<std::uint8_t> in;
  codec::DecoderOptions dec;
  for (;;) {
    std::array<std::uint8_t, 4096> chunk{};
    const std::size_t n = s.read_some(asio::buffer(chunk));
    in.insert(in.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
    for (;;) {
      auto r = codec::decode(in, dec);
      if (r.status == codec::DecodeStatus::NeedMore) break;
      if (r.status == codec::DecodeStatus::Error) throw std::runtime_error("bad packet from the client");
      if (std::holds_alternative<codec::Connect>(r.packet)) {
        codec::Bytes out;
        codec::encode(codec::Connack{session_present, codec::ConnectReturnCode::Accepted}, out);
        asio::write(s, asio::buffer(out.data(), out.size()));
      } else if (const auto* p = std::get_if<codec::Publish>(&r.packet)) {
        return SeenPublish{p->dup, std::string(p->topic), std::string(p->payload)};
      }
      in.erase(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(r.consumed));
    }
  }
}

// Sealed before queueing: the resend after a reconnect (DUP=1) carries the very
// envelope of the first attempt, which the receiver then sees once.
TEST(ClientPayload, ResendAfterReconnectCarriesTheSameEnvelope) {
  KeyDir keys;
  keys.key(payload::KeyKind::Aes256, "ops-aes");
  const auto ring =
      keys.ring("ring.toml", "[[topic]]\nfilter = \"ops/#\"\nkeys = [\"ops-aes\"]\nseal = \"encrypt\"\n");
  const auto receiver = keys.ring("receiver.toml", "[[topic]]\nfilter = \"ops/#\"\nkeys = [\"ops-aes\"]\n");
  asio::io_context io;
  tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  const auto port = acceptor.local_endpoint().port();
  auto first = std::async(std::launch::async, [&] {
    auto a = serve_once(acceptor, false);
    auto b = serve_once(acceptor, true);
    return std::make_pair(a, b);
  });
  ClientLoop loop;
  auto o = options(port, "resender");
  o.clean_session = false;
  o.reconnect.enabled = true;
  o.reconnect.initial_delay = 20ms;
  o.payload.keyring = ring;
  std::unique_ptr<client::Client> c;
  loop.run([&] {
    c = std::make_unique<client::Client>(loop.io(), o);
    c->connect();
    c->publish("ops/1", "valve 3 open", QoS::AtLeastOnce, false, nullptr);
    return 0;
  });
  ASSERT_EQ(first.wait_for(20s), std::future_status::ready);
  const auto [a, b] = first.get();
  EXPECT_FALSE(a.dup);
  EXPECT_TRUE(b.dup);
  EXPECT_EQ(a.topic, "ops/1");
  EXPECT_EQ(a.payload, b.payload);
  EXPECT_EQ(a.payload.find("valve"), std::string::npos);
  // The receiver opens it once; the resend is a replay.
  auto ra = receiver->open("ops/1", a.payload);
  ASSERT_TRUE(ra) << ra.error().message();
  EXPECT_EQ(ra->plaintext, "valve 3 open");
  auto rb = receiver->open("ops/1", b.payload);
  ASSERT_FALSE(rb);
  EXPECT_EQ(rb.code(), payload::Errc::replayed);
  destroy(loop, c);
}

}  // namespace
}  // namespace moat::test
