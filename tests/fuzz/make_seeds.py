#!/usr/bin/env python3
"""Writes seed corpora for the codec fuzzers.

    make_seeds.py OUT_DIR            seeds for fuzz_decoder: valid packets of every type
                                     (both directions, MQTT 3.1 and 3.1.1), streams of
                                     several packets, and a few malformed packets
    make_seeds.py --topic OUT_DIR    seeds for fuzz_topic: "filter\\0topic" pairs
    make_seeds.py --cose OUT_DIR     seeds for fuzz_cose: the COSE working group's examples

The packets are encoded here, independently of the C++ encoder, from the MQTT 3.1.1
specification. File names are stable, so running it again rewrites the same files.
"""
import argparse
import os
import struct


def remaining_length(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def s(text):
    """A length-prefixed string (section 1.5.3) or binary field (bytes)."""
    data = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(data)) + data


def u16(v):
    return struct.pack(">H", v)


def packet(first, body):
    return bytes([first]) + remaining_length(len(body)) + body


def connect(client_id, v31=False, clean=True, keep_alive=60, will=None, user=None, password=None):
    flags = 0x02 if clean else 0
    payload = s(client_id)
    if will:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += s(topic) + s(message)
    if user is not None:
        flags |= 0x80
        payload += s(user)
    if password is not None:
        flags |= 0x40
        payload += s(password)
    name, level = ("MQIsdp", 3) if v31 else ("MQTT", 4)
    return packet(0x10, s(name) + bytes([level, flags]) + u16(keep_alive) + payload)


def publish(topic, payload=b"", qos=0, dup=False, retain=False, packet_id=1):
    flags = (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    body = s(topic) + (u16(packet_id) if qos else b"") + payload
    return packet(0x30 | flags, body)


def subscribe(packet_id, *pairs):
    return packet(0x82, u16(packet_id) + b"".join(s(f) + bytes([q]) for f, q in pairs))


def unsubscribe(packet_id, *filters):
    return packet(0xA2, u16(packet_id) + b"".join(s(f) for f in filters))


def decoder_seeds():
    seeds = {
        # Client to server.
        "connect_311_min": connect("a"),
        "connect_311_empty_id": connect("", clean=True, keep_alive=0),
        "connect_311_full": connect("client-1", clean=False, keep_alive=65535,
                                    will=("clients/1/status", b"off\x00line", 1, True),
                                    user="alice", password=b"\xff\x00secret"),
        "connect_311_will_qos2": connect("c", will=("w", b"", 2, False)),
        "connect_311_user_only": connect("c", user="u"),
        "connect_31_min": connect("a", v31=True),
        "connect_31_password_only": connect("c", v31=True, password=b"pw"),
        "connect_31_full": connect("c31", v31=True, will=("a/b", b"bye", 0, True), user="u",
                                   password=b"p"),
        "publish_qos0": publish("a/b", b"hello"),
        "publish_qos0_empty": publish("t"),
        "publish_qos1_dup_retain": publish("sport/tennis/player1", b"\x00\x01\x02", qos=1,
                                           dup=True, retain=True, packet_id=10),
        "publish_qos2": publish("$SYS/broker/uptime", b"42", qos=2, packet_id=65535),
        "publish_utf8_topic": publish("\u00e9t\u00e9/\U0001F600", b"x"),
        "publish_300_bytes": publish("big", bytes(range(256)) + b"y" * 44, qos=1, packet_id=3),
        "puback": packet(0x40, u16(1)),
        "pubrec": packet(0x50, u16(2)),
        "pubrel": packet(0x62, u16(3)),
        "pubcomp": packet(0x70, u16(4)),
        "subscribe_one": subscribe(1, ("a/b", 0)),
        "subscribe_many": subscribe(7, ("#", 0), ("+", 1), ("sport/tennis/+", 2), ("$SYS/#", 0),
                                    ("/+", 1), ("a//b", 2)),
        "unsubscribe_one": unsubscribe(2, "a/b"),
        "unsubscribe_many": unsubscribe(9, "#", "a/+/c", "$SYS/#"),
        "pingreq": packet(0xC0, b""),
        "disconnect": packet(0xE0, b""),
        # Server to client (decoded by the client-side configurations).
        "connack_accepted": packet(0x20, b"\x00\x00"),
        "connack_session_present": packet(0x20, b"\x01\x00"),
        "connack_refused": packet(0x20, b"\x00\x05"),
        "suback": packet(0x90, u16(1) + b"\x00\x01\x02\x80"),
        "unsuback": packet(0xB0, u16(5)),
        "pingresp": packet(0xD0, b""),
        # Odd but valid encodings.
        "pingreq_nonminimal_length": b"\xc0\x80\x00",
        "publish_nonminimal_length": b"\x30\x87\x80\x00" + s("t") + b"abcd",
    }
    seeds["stream_client_session"] = b"".join(seeds[k] for k in (
        "connect_311_full", "subscribe_many", "publish_qos1_dup_retain", "puback", "pubrec",
        "pubrel", "pubcomp", "unsubscribe_one", "pingreq", "disconnect"))
    seeds["stream_server_session"] = b"".join(seeds[k] for k in (
        "connack_accepted", "suback", "publish_qos2", "pubrel", "unsuback", "pingresp"))
    seeds["stream_partial_tail"] = seeds["publish_qos0"] + seeds["publish_qos2"][:-3]
    # A few malformed packets, so the error paths are reached at once.
    seeds["bad_remaining_length"] = b"\x30\xff\xff\xff\xff\x01"
    seeds["bad_protocol_level"] = packet(0x10, s("MQTT") + b"\x05\x02\x00\x3c" + s("c"))
    seeds["bad_utf8_topic"] = packet(0x30, s(b"\xed\xa0\x80") + b"x")
    seeds["bad_pubrel_flags"] = packet(0x60, u16(1))
    seeds["bad_subscribe_qos"] = packet(0x82, u16(1) + s("a") + b"\x03")
    seeds["bad_subscribe_filter"] = packet(0x82, u16(1) + s("a/#/b") + b"\x01")
    return seeds


def topic_seeds():
    pairs = [
        ("#", "sport/tennis"), ("sport/tennis/player1/#", "sport/tennis/player1"),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"), ("sport/#", "sport"),
        ("+/+", "/finance"), ("/+", "/finance"), ("+", "/finance"), ("sport/+", "sport"),
        ("sport/+", "sport/"), ("#", "$SYS/monitor/Clients"), ("+/monitor/Clients", "$SYS/monitor/Clients"),
        ("$SYS/#", "$SYS/monitor/Clients"), ("$SYS/monitor/+", "$SYS/monitor/Clients"),
        ("a//b", "a//b"), ("a/#/b", "a/x/b"), ("a+", "a"), ("\u00e9/+", "\u00e9/x"),
    ]
    seeds = {"pair_%02d" % i: f.encode() + b"\x00" + t.encode() for i, (f, t) in enumerate(pairs)}
    seeds["utf8_surrogate"] = b"a/\xed\xa0\x80"
    seeds["utf8_overlong"] = b"\xc0\xaf\x00\xe0\x80\xaf"
    seeds["utf8_4byte"] = b"\xf0\x9f\x98\x80/\xf4\x8f\xbf\xbf"
    return seeds


def broker_seeds():
    """Operation streams for fuzz_broker: feed (conn, bytes), drop (conn), tick (steps)."""
    def feed(conn, data):
        out = b""
        for i in range(0, len(data), 255):
            chunk = data[i:i + 255]
            out += bytes([conn & 0x3F, len(chunk)]) + chunk
        return out

    def drop(conn):
        return bytes([0x40 | conn])

    def tick(steps):
        return bytes([0x80 | steps])

    sub = connect("sub", clean=False) + subscribe(1, ("a/#", 2), ("+/b", 1))
    pub = connect("pub", will=("a/will", b"bye", 1, True))
    seeds = {
        "fanout": feed(0, sub) + feed(1, pub + publish("a/b", b"x", 1) + publish("a/b", b"y", 2, packet_id=2)),
        "offline_queue": feed(0, sub) + drop(0) + feed(1, pub + publish("a/c", b"q", 1)) + feed(0, sub),
        "will_on_drop": feed(0, sub) + feed(1, pub) + drop(1) + tick(8),
        "keepalive": feed(0, sub) + feed(1, connect("k", keep_alive=1)) + tick(10) + tick(10),
        "retained": feed(1, pub + publish("a/r", b"keep", 1, retain=True)) + feed(0, sub),
        "takeover": feed(0, sub) + feed(2, connect("sub", clean=False)) + feed(1, pub + publish("a/x", b"1", 1)),
    }
    return seeds


def cose_seeds():
    """The COSE working group's examples (../shared/vectors beside the checkout)."""
    import json
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "vectors",
                        "cose-examples")
    seeds = {}
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith(".json"):
                with open(os.path.join(folder, name)) as f:
                    doc = json.load(f)
                seeds["%s-%s" % (os.path.basename(folder), name[:-5])] = bytes.fromhex(doc["output"]["cbor"])
    return seeds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--topic", action="store_true", help="write fuzz_topic seeds instead")
    ap.add_argument("--broker", action="store_true", help="write fuzz_broker seeds instead")
    ap.add_argument("--cose", action="store_true", help="write fuzz_cose seeds instead")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    if args.cose:
        seeds = cose_seeds()
    else:
        seeds = topic_seeds() if args.topic else broker_seeds() if args.broker else decoder_seeds()
    for name, data in sorted(seeds.items()):
        with open(os.path.join(args.out_dir, name), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(seeds), args.out_dir))


if __name__ == "__main__":
    main()
