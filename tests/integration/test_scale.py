"""1,000 concurrent clients, each with its own topic (selectors, one thread)."""

import resource
import selectors
import socket
import time

import pytest

import mqttraw
from util import scaled, uniq

pytestmark = [pytest.mark.threaded]

N_CLIENTS = 1000
MAX_PENDING_CONNECTS = 200  # handshakes in flight at once (stay under listen backlogs)


def _raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft < want:
        pytest.skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, want))


class Conn:
    __slots__ = ("i", "sock", "buf", "state", "topic", "got")

    def __init__(self, i, sock, topic):
        self.i, self.sock, self.topic = i, sock, topic
        self.buf = bytearray()
        self.state = "connecting"
        self.got = None


def test_thousand_clients(start_broker):
    # The broker inherits our limit: raise it before starting the broker.
    _raise_nofile(2 * N_CLIENTS + 256)
    broker = start_broker(threads=2, log_level="info")
    deadline = time.monotonic() + scaled(60)
    base = uniq("scale")
    sel = selectors.DefaultSelector()
    conns = []

    def left():
        rem = deadline - time.monotonic()
        assert rem > 0, "out of time: states %s" % _states(conns)
        return rem

    def open_one(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect_ex((broker.host, broker.port))
        c = Conn(i, s, "%s/%d" % (base, i))
        conns.append(c)
        sel.register(s, selectors.EVENT_WRITE, c)

    def send_all(c, data):
        # Small packets on a fresh socket: the send buffer has room.
        n = c.sock.send(data)
        assert n == len(data), "short send on client %d" % c.i

    opened = 0
    try:
        # Phase 1: connect + subscribe everybody, at most MAX_PENDING_CONNECTS
        # handshakes at a time; all stay connected.
        ready = 0
        while ready < N_CLIENTS:
            pending = sum(1 for c in conns if c.state != "subscribed")
            while opened < N_CLIENTS and pending < MAX_PENDING_CONNECTS:
                open_one(opened)
                opened += 1
                pending += 1
            for key, ev in sel.select(min(left(), 1.0)):
                c = key.data
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    assert err == 0, "client %d: connect failed: %s" % (c.i, err)
                    send_all(c, mqttraw.connect("%s-%d" % (base, c.i)))
                    c.state = "connack"
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                data = c.sock.recv(65536)
                assert data, "client %d closed by broker in state %s" % (c.i, c.state)
                c.buf += data
                while True:
                    pkt, n = mqttraw.try_parse(c.buf)
                    if pkt is None:
                        break
                    del c.buf[:n]
                    if c.state == "connack":
                        assert mqttraw.decode_connack(pkt) == (False, 0), (c.i, pkt)
                        send_all(c, mqttraw.subscribe(1, [(c.topic, 1)]))
                        c.state = "suback"
                    elif c.state == "suback":
                        assert (pkt.type, pkt.body) == (mqttraw.SUBACK, b"\x00\x01\x01"), (c.i, pkt)
                        c.state = "subscribed"
                        ready += 1
                    else:
                        raise AssertionError("client %d: unexpected %r" % (c.i, pkt))

        assert broker.alive()
        # Phase 2: one publisher sends one QoS 1 message to every topic.
        pub = mqttraw.Client(broker.host, broker.port, timeout=scaled(30), name="pub")
        pub.connect(uniq("scale-pub"))
        batch = b"".join(mqttraw.publish(c.topic, b"hello %d" % c.i, qos=1, pid=c.i + 1)
                         for c in conns)
        pub.send(batch)
        received = 0
        acks = 0
        while received < N_CLIENTS or acks < N_CLIENTS:
            while acks < N_CLIENTS:
                try:
                    pkt = pub.recv_packet(0)
                except TimeoutError:
                    break
                assert pkt.type == mqttraw.PUBACK, pkt
                acks += 1
            for key, ev in sel.select(min(left(), 0.2)):
                c = key.data
                data = c.sock.recv(65536)
                assert data, "client %d closed by broker while waiting for its message" % c.i
                c.buf += data
                while True:
                    pkt, n = mqttraw.try_parse(c.buf)
                    if pkt is None:
                        break
                    del c.buf[:n]
                    p = mqttraw.decode_publish(pkt)
                    assert c.got is None, "client %d: second message %r" % (c.i, p)
                    assert (p.topic, p.payload, p.qos) == (c.topic, b"hello %d" % c.i, 1), (c.i, p)
                    c.got = p
                    received += 1
                    send_all(c, mqttraw.puback(p.pid))
        assert all(c.got is not None for c in conns)
        pub.disconnect()

        # Phase 3: everybody disconnects; the broker closes each connection.
        for c in conns:
            send_all(c, mqttraw.disconnect())
            c.sock.shutdown(socket.SHUT_WR)
            c.state = "closing"
        closed = 0
        while closed < N_CLIENTS:
            for key, ev in sel.select(min(left(), 1.0)):
                c = key.data
                try:
                    data = c.sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                assert data == b"", "client %d: unexpected data after DISCONNECT %r" % (c.i, data)
                sel.unregister(c.sock)
                c.sock.close()
                c.state = "closed"
                closed += 1
        assert broker.alive()
    finally:
        for c in conns:
            try:
                c.sock.close()
            except OSError:
                pass
        sel.close()


def _states(conns):
    out = {}
    for c in conns:
        out[c.state] = out.get(c.state, 0) + 1
    return out
