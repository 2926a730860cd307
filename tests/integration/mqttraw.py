"""Tiny raw-socket MQTT 3.1.1 packet builder and reader for the integration tests.

Everything here is deliberately dumb: builders return bytes exactly as asked
(including invalid combinations), and the reader only splits the byte stream
into (type, flags, body) packets so tests can assert on the exact bytes the
broker sent.
"""

import errno
import select
import socket
import ssl
import struct
import time
from collections import namedtuple

# Control packet types [MQTT-2.2.1]
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

TYPE_NAMES = {
    0: "RESERVED0", 1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK",
    5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK",
    10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
    14: "DISCONNECT", 15: "RESERVED15",
}


class Packet(namedtuple("Packet", "type flags body")):
    def __repr__(self):
        body = self.body if len(self.body) <= 64 else self.body[:64] + b"..."
        return "Packet(%s, flags=0x%x, body=%r)" % (
            TYPE_NAMES.get(self.type, self.type), self.flags, body)


Publish = namedtuple("Publish", "topic payload qos retain dup pid")


class ConnectionClosed(Exception):
    """The peer closed the connection (EOF or reset)."""


# ---------------------------------------------------------------- encoding

def encode_remaining_length(n):
    if n < 0 or n > 268435455:
        raise ValueError("remaining length out of range: %d" % n)
    out = bytearray()
    while True:
        digit = n % 128
        n //= 128
        if n > 0:
            digit |= 0x80
        out.append(digit)
        if n == 0:
            return bytes(out)


def mqtt_string(s):
    """Length-prefixed string. `s` may be str (UTF-8 encoded) or raw bytes."""
    if isinstance(s, str):
        s = s.encode("utf-8")
    return struct.pack("!H", len(s)) + s


def u16(n):
    return struct.pack("!H", n)


def packet(ptype, flags, body=b"", remaining_length=None):
    """Arbitrary packet: fixed header byte, remaining length, body.

    `remaining_length` may be given as raw bytes to encode it wrongly on
    purpose, or as an int to lie about the length."""
    if remaining_length is None:
        rl = encode_remaining_length(len(body))
    elif isinstance(remaining_length, (bytes, bytearray)):
        rl = bytes(remaining_length)
    else:
        rl = encode_remaining_length(remaining_length)
    return bytes([((ptype & 0x0F) << 4) | (flags & 0x0F)]) + rl + body


def connect(client_id="", clean_session=True, keepalive=60,
            will_topic=None, will_payload=b"", will_qos=0, will_retain=False,
            username=None, password=None,
            protocol_name="MQTT", protocol_level=4,
            reserved=False, flags=None, fixed_flags=0):
    """CONNECT packet.

    The connect-flags byte is computed from the arguments (will flag set iff
    will_topic is not None; will QoS/retain bits are set from will_qos /
    will_retain even without a will, so invalid combinations can be built);
    `flags` overrides the computed byte entirely. The payload always contains
    the fields that were given (client id, will topic/message, user, pass)."""
    cf = 0
    if reserved:
        cf |= 0x01
    if clean_session:
        cf |= 0x02
    if will_topic is not None:
        cf |= 0x04
    cf |= (will_qos & 0x03) << 3
    if will_retain:
        cf |= 0x20
    if password is not None:
        cf |= 0x40
    if username is not None:
        cf |= 0x80
    if flags is not None:
        cf = flags
    var = mqtt_string(protocol_name) + bytes([protocol_level, cf]) + u16(keepalive)
    payload = mqtt_string(client_id)
    if will_topic is not None:
        wp = will_payload.encode() if isinstance(will_payload, str) else will_payload
        payload += mqtt_string(will_topic) + mqtt_string(wp)
    if username is not None:
        payload += mqtt_string(username)
    if password is not None:
        pw = password.encode() if isinstance(password, str) else password
        payload += mqtt_string(pw)
    return packet(CONNECT, fixed_flags, var + payload)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=None, flags=None):
    """PUBLISH packet. `pid` is included iff qos > 0 (or if given explicitly).
    `flags` overrides the fixed-header flags nibble."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    f = (0x08 if dup else 0) | ((qos & 0x03) << 1) | (0x01 if retain else 0)
    if flags is not None:
        f = flags
    body = mqtt_string(topic)
    if pid is not None or qos > 0:
        body += u16(pid if pid is not None else 1)
    body += payload
    return packet(PUBLISH, f, body)


def puback(pid):
    return packet(PUBACK, 0, u16(pid))


def pubrec(pid):
    return packet(PUBREC, 0, u16(pid))


def pubrel(pid, flags=0x02):
    return packet(PUBREL, flags, u16(pid))


def pubcomp(pid):
    return packet(PUBCOMP, 0, u16(pid))


def subscribe(pid, filters, flags=0x02):
    """filters: list of (filter, requested_qos); filter may be str or bytes."""
    body = u16(pid)
    for f, q in filters:
        body += mqtt_string(f) + bytes([q])
    return packet(SUBSCRIBE, flags, body)


def unsubscribe(pid, filters, flags=0x02):
    body = u16(pid)
    for f in filters:
        body += mqtt_string(f)
    return packet(UNSUBSCRIBE, flags, body)


def pingreq():
    return packet(PINGREQ, 0)


def disconnect():
    return packet(DISCONNECT, 0)


# ---------------------------------------------------------------- decoding

def decode_publish(pkt):
    assert pkt.type == PUBLISH, "expected PUBLISH, got %r" % (pkt,)
    qos = (pkt.flags >> 1) & 0x03
    body = pkt.body
    (tlen,) = struct.unpack("!H", body[:2])
    topic = body[2:2 + tlen].decode("utf-8")
    pos = 2 + tlen
    pid = None
    if qos > 0:
        (pid,) = struct.unpack("!H", body[pos:pos + 2])
        pos += 2
    return Publish(topic, bytes(body[pos:]), qos, bool(pkt.flags & 0x01),
                   bool(pkt.flags & 0x08), pid)


def decode_connack(pkt):
    """Returns (session_present, return_code) after checking the packet shape."""
    assert pkt.type == CONNACK, "expected CONNACK, got %r" % (pkt,)
    assert pkt.flags == 0, "CONNACK fixed-header flags must be 0: %r" % (pkt,)
    assert len(pkt.body) == 2, "CONNACK remaining length must be 2: %r" % (pkt,)
    assert pkt.body[0] & 0xFE == 0, "CONNACK ack flags bits 7-1 reserved: %r" % (pkt,)
    return bool(pkt.body[0] & 1), pkt.body[1]


def packet_id(pkt):
    assert len(pkt.body) == 2, "expected a 2-byte packet id body: %r" % (pkt,)
    return struct.unpack("!H", pkt.body)[0]


def try_parse(buf):
    """Parse one packet from the front of `buf` (bytearray).

    Returns (Packet, consumed) or (None, 0) if more bytes are needed.
    Raises ValueError on a remaining length longer than 4 bytes."""
    if len(buf) < 2:
        return None, 0
    mult = 1
    value = 0
    i = 1
    while True:
        if i >= len(buf):
            return None, 0
        b = buf[i]
        value += (b & 0x7F) * mult
        i += 1
        if not b & 0x80:
            break
        mult *= 128
        if i > 4:
            raise ValueError("remaining length longer than 4 bytes")
    if len(buf) < i + value:
        return None, 0
    first = buf[0]
    return Packet(first >> 4, first & 0x0F, bytes(buf[i:i + value])), i + value


def _recv_some(sock, timeout):
    """recv with a deadline. Returns bytes, b'' on EOF/reset, None on timeout."""
    if timeout is not None and timeout <= 0:
        timeout = 0
    # A TLS socket (ssl.SSLSocket) may hold decrypted bytes the descriptor does not show.
    pending = getattr(sock, "pending", None)
    if pending is None or pending() == 0:
        # poll(), not select(): the scale test has more than 1024 descriptors open.
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        if not poller.poll(None if timeout is None else int(timeout * 1000 + 0.999)):
            return None
    try:
        return sock.recv(65536)
    except (ConnectionResetError, ConnectionAbortedError):
        return b""
    except ssl.SSLWantReadError:
        return None  # a TLS record not complete yet (or a post-handshake message)
    except ssl.SSLError:
        return b""  # TLS: an alert or a close without close_notify ends the connection
    except OSError as e:
        if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
            return b""
        raise


def expect_closed(sock, timeout, buf=None):
    """Assert that the peer closes `sock` (recv returns b'' or ECONNRESET)
    within `timeout` seconds. Data received before the close is drained and
    returned (including anything already in `buf`) so callers may assert on it."""
    deadline = time.monotonic() + timeout
    got = bytearray(buf or b"")
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                "broker did not close the connection within %.1fs (received %r)"
                % (timeout, bytes(got[:200])))
        data = _recv_some(sock, left)
        if data is None:
            continue
        if data == b"":
            return bytes(got)
        got += data


def parse_all(data):
    """Split a byte string into packets (trailing partial bytes ignored)."""
    buf = bytearray(data)
    out = []
    while True:
        try:
            pkt, n = try_parse(buf)
        except ValueError:
            break
        if pkt is None:
            break
        out.append(pkt)
        del buf[:n]
    return out


# ---------------------------------------------------------------- client

class Client:
    """A blocking raw MQTT connection with deadline-bounded reads."""

    def __init__(self, host, port, timeout=10.0, name="raw"):
        self.host = host
        self.port = port
        self.default_timeout = timeout
        self.name = name
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.next_pid = 1
        self.awaiting_rel = set()
        self.pending = []  # PUBLISH packets that arrived while waiting for a SUBACK

    # -- plumbing
    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data, ignore_errors=False):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            if not ignore_errors:
                raise

    def alloc_pid(self):
        pid = self.next_pid
        self.next_pid = self.next_pid % 65535 + 1
        return pid

    def recv_packet(self, timeout=None):
        """Next packet. Raises TimeoutError / ConnectionClosed."""
        if timeout is None:
            timeout = self.default_timeout
        if self.pending:
            return self.pending.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            pkt, n = try_parse(self.buf)
            if pkt is not None:
                del self.buf[:n]
                return pkt
            left = deadline - time.monotonic()
            data = _recv_some(self.sock, max(left, 0))  # polls once even if left <= 0
            if data is None:
                if left <= 0:
                    raise TimeoutError("%s: no packet within %.1fs (buffered %r)"
                                       % (self.name, timeout, bytes(self.buf[:100])))
                continue
            if data == b"":
                raise ConnectionClosed("%s: connection closed by peer (buffered %r)"
                                       % (self.name, bytes(self.buf[:100])))
            self.buf += data

    def expect(self, ptype, timeout=None, flags=None):
        pkt = self.recv_packet(timeout)
        assert pkt.type == ptype, "%s: expected %s, got %r" % (
            self.name, TYPE_NAMES[ptype], pkt)
        if flags is not None:
            assert pkt.flags == flags, "%s: expected flags 0x%x in %r" % (
                self.name, flags, pkt)
        return pkt

    def expect_stashing(self, ptype, timeout=None, flags=None):
        """Like expect(), but PUBLISH packets arriving first (deliveries racing
        with the awaited ack) are kept for later recv_packet/recv_publish calls."""
        if timeout is None:
            timeout = self.default_timeout
        deadline = time.monotonic() + timeout
        held = []
        try:
            while True:
                pkt = self.recv_packet(max(deadline - time.monotonic(), 0.001))
                if pkt.type == PUBLISH and ptype != PUBLISH:
                    held.append(pkt)
                    continue
                break
        finally:
            self.pending.extend(held)
        assert pkt.type == ptype, "%s: expected %s, got %r" % (self.name, TYPE_NAMES[ptype], pkt)
        if flags is not None:
            assert pkt.flags == flags, "%s: expected flags 0x%x in %r" % (self.name, flags, pkt)
        return pkt

    def expect_no_packet(self, timeout):
        """Assert nothing arrives for `timeout` seconds (use only for absence checks)."""
        try:
            pkt = self.recv_packet(timeout)
        except TimeoutError:
            return
        raise AssertionError("%s: unexpected packet %r" % (self.name, pkt))

    def expect_closed(self, timeout=None):
        if timeout is None:
            timeout = self.default_timeout
        data = expect_closed(self.sock, timeout, self.buf)
        self.buf = bytearray()
        return data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Close with a TCP RST (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    # -- protocol helpers
    def connect(self, client_id="", expect_rc=0, timeout=None, **kw):
        """Send CONNECT, read CONNACK, assert its return code. Returns session_present."""
        self.send(connect(client_id, **kw))
        pkt = self.expect(CONNACK, timeout)
        sp, rc = decode_connack(pkt)
        assert rc == expect_rc, "%s: CONNACK return code %d, expected %d" % (
            self.name, rc, expect_rc)
        if rc == 0 and kw.get("clean_session", True):
            assert not sp, "[MQTT-3.2.2-1] clean session 1 must get session-present 0"
        return sp

    def subscribe(self, filters, pid=None, timeout=None):
        """filters: list of (filter, qos) or a single filter str (QoS 0). Returns granted list."""
        if isinstance(filters, str):
            filters = [(filters, 0)]
        if pid is None:
            pid = self.alloc_pid()
        self.send(subscribe(pid, filters))
        # Retained messages may legitimately be sent before the SUBACK.
        pkt = self.expect_stashing(SUBACK, timeout, flags=0)
        assert pkt.body[:2] == u16(pid), "[MQTT-3.8.4-2] SUBACK packet id mismatch: %r" % (pkt,)
        granted = list(pkt.body[2:])
        assert len(granted) == len(filters), "[MQTT-3.8.4-5] SUBACK count mismatch: %r" % (pkt,)
        return granted

    def unsubscribe(self, filters, pid=None, timeout=None):
        if isinstance(filters, str):
            filters = [filters]
        if pid is None:
            pid = self.alloc_pid()
        self.send(unsubscribe(pid, filters))
        pkt = self.expect_stashing(UNSUBACK, timeout, flags=0)
        assert pkt.body == u16(pid), "[MQTT-3.10.4-4] UNSUBACK packet id mismatch: %r" % (pkt,)

    def publish(self, topic, payload=b"", qos=0, retain=False, pid=None, timeout=None):
        """Publish and complete the QoS flow (waits for PUBACK / PUBREC+PUBCOMP)."""
        if qos > 0 and pid is None:
            pid = self.alloc_pid()
        self.send(publish(topic, payload, qos=qos, retain=retain, pid=pid))
        if qos == 1:
            pkt = self.expect_stashing(PUBACK, timeout, flags=0)
            assert packet_id(pkt) == pid, "PUBACK for wrong packet id: %r" % (pkt,)
        elif qos == 2:
            pkt = self.expect_stashing(PUBREC, timeout, flags=0)
            assert packet_id(pkt) == pid, "PUBREC for wrong packet id: %r" % (pkt,)
            self.send(pubrel(pid))
            pkt = self.expect_stashing(PUBCOMP, timeout, flags=0)
            assert packet_id(pkt) == pid, "PUBCOMP for wrong packet id: %r" % (pkt,)
        return pid

    def recv_publish(self, timeout=None, ack=True):
        """Receive the next PUBLISH, decode it and (by default) acknowledge it:
        PUBACK for QoS 1, PUBREC for QoS 2 (the PUBREL that follows is answered
        with PUBCOMP by later recv_publish/finish_qos2 calls, so several QoS 2
        messages may be in flight). Any packet other than PUBLISH or an
        expected PUBREL fails the test."""
        if timeout is None:
            timeout = self.default_timeout
        deadline = time.monotonic() + timeout
        while True:
            pkt = self.recv_packet(max(deadline - time.monotonic(), 0.001))
            if pkt.type == PUBREL and self._handle_pubrel(pkt):
                continue
            assert pkt.type == PUBLISH, "%s: expected PUBLISH, got %r" % (self.name, pkt)
            pub = decode_publish(pkt)
            if ack:
                self.ack(pub)
            return pub

    def _handle_pubrel(self, pkt):
        assert pkt.flags == 0x02, "[MQTT-3.6.1-1] PUBREL flags must be 0010: %r" % (pkt,)
        pid = packet_id(pkt)
        assert pid in self.awaiting_rel, "%s: PUBREL for unknown packet id %d (awaiting %r)" % (
            self.name, pid, sorted(self.awaiting_rel))
        self.awaiting_rel.discard(pid)
        self.send(pubcomp(pid))
        return True

    def ack(self, pub, timeout=None):
        if pub.qos == 1:
            self.send(puback(pub.pid))
        elif pub.qos == 2:
            self.send(pubrec(pub.pid))
            self.awaiting_rel.add(pub.pid)

    def finish_qos2(self, timeout=None):
        """Answer outstanding PUBRELs with PUBCOMP until none is awaited."""
        if timeout is None:
            timeout = self.default_timeout
        deadline = time.monotonic() + timeout
        while self.awaiting_rel:
            pkt = self.recv_packet(max(deadline - time.monotonic(), 0.001))
            assert pkt.type == PUBREL, "%s: expected PUBREL, got %r" % (self.name, pkt)
            self._handle_pubrel(pkt)

    def ping(self, timeout=None):
        self.send(pingreq())
        pkt = self.expect_stashing(PINGRESP, timeout)
        assert pkt.flags == 0 and pkt.body == b"", "bad PINGRESP %r" % (pkt,)

    def disconnect(self, timeout=None):
        """Send DISCONNECT, half-close, and wait for the broker to close."""
        self.send(disconnect())
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            self.expect_closed(timeout)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
