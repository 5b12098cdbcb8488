#!/usr/bin/env python3
"""Writes the seeds of the `core` fuzz target into fuzz/seeds/core/.

Each seed is a scenario, encoded in the byte layout `arbitrary` 1.x reads the target's `Input`
in: the `Config` fields one byte each (the store mode an enum), then for each operation a byte
with bit 0 set (one more element), the variant as a little-endian u32 scaled onto the variants,
and its fields (u8 and bool one byte, u16 two, Option a flag byte first). Keep VARIANTS and the
field order in step with `Op` in fuzz_targets/core.rs; check with `cargo fuzz fmt core <seed>`.
"""
import os
import struct
VARIANTS = ["Connect","Subscribe","Unsubscribe","Publish","Resend","Release","Ack","AckAll",
            "StrayAck","Ping","Disconnect","TransportClosed","Raw","Advance","Poll","PollAll","Commit",
            "Restart"]
def tag(i, n): return struct.pack("<I", (i * 2**32 + n - 1) // n)
def config(max_inflight=3, max_queued=7, qos0_offline=0, receive_maximum=3, aliases=0, v3_expiry=0, store=0, grace=1):
    return bytes([max_inflight, max_queued, qos0_offline, receive_maximum, aliases, v3_expiry]) + tag(store, 3) + bytes([grace])
def op(name, *fields):
    out = b"\x01" + tag(VARIANTS.index(name), len(VARIANTS))
    for f in fields:
        if isinstance(f, bytes): out += f
        else: out += bytes([f])
    return out
def connect(client, version, clean, expiry=3, rm=0, keep_alive=0, will=None):
    w = b"\x00" if will is None else b"\x01" + bytes(will)
    return op("Connect", client, version, clean, expiry, rm, keep_alive, w)
# Filters: 0 a, 1 a/+, 2 a/#, 3 #, 4 +, 5 b, 6 $share/g/a/+, 7 $share/g/#, 8 $share/h/a/b, 9 $share/g/b
# Topics: 0 a, 1 a/b, 2 a/c, 3 b, 4 $SYS/x
def sub(conn, filt, qos, flags=0): return op("Subscribe", conn, filt, qos, flags)
def pub(conn, topic, qos, retain=0, flags=0): return op("Publish", conn, topic, qos, retain, flags)
seeds = {
 # Two members of $share/g/b at QoS 2; the one holding the message loses its connection.
 "shared-qos2-handover": config() + connect(0,1,0) + connect(1,1,0) + sub(0,9,2) + sub(1,9,2)
    + connect(2,1,1) + pub(2,3,2) + op("PollAll") + op("TransportClosed",0) + op("PollAll")
    + op("TransportClosed",0) + op("PollAll"),
 # A 5.0 session gets 3 messages under Receive Maximum 3, resumes with Receive Maximum 1.
 "receive-maximum-resume": config(max_inflight=3) + connect(0,2,0,3,3) + sub(0,5,1) + connect(1,1,1)
    + pub(1,3,1) + pub(1,3,1) + pub(1,3,1) + op("PollAll") + op("TransportClosed",0)
    + connect(0,2,0,3,1) + op("PollAll") + op("AckAll",1) + op("PollAll") + op("AckAll",1) + op("PollAll"),
 # A lagging store: persistent subscribers at QoS 1 and 2, retained messages, a delayed will.
 "lagging-store-will": config(store=2, grace=1) + connect(0,2,0,2,2,1,[1,2,0,1]) + connect(1,1,0)
    + sub(1,3,2) + sub(0,1,1) + pub(0,1,2,1) + pub(0,3,1) + op("PollAll") + op("Advance",1)
    + op("PollAll") + op("AckAll",1) + op("PollAll") + op("Disconnect",0,1,1,2) + op("Advance",40)
    + op("PollAll") + op("AckAll",0) + op("Commit") + op("PollAll"),
 # Take-over: the same client connects twice while messages are in flight.
 "takeover": config(store=1) + connect(0,1,0) + sub(0,2,2) + connect(1,2,1) + pub(1,1,2) + pub(1,2,1)
    + op("Poll",0,0) + connect(0,2,0,3,2) + op("PollAll") + op("Ack",2,0,0) + op("PollAll")
    + op("Ack",2,0,0) + op("PollAll") + op("AckAll",2) + op("PollAll"),
 # A crash with a lagging store while QoS 2 flows are half done in both directions; the
 # clients come back and finish them.
 "restart-qos2": config(store=2) + connect(0,1,0) + sub(0,3,2) + connect(1,2,0,3) + pub(1,3,2)
    + op("Commit") + op("PollAll") + op("Commit") + op("PollAll") + op("Ack",0,0,0) + pub(1,3,2)
    + op("Restart") + connect(0,1,0) + connect(1,2,0,3) + op("Resend",1,0) + op("Resend",1,1)
    + op("Commit") + op("PollAll") + op("AckAll",0) + op("Commit") + op("PollAll") + op("AckAll",0)
    + op("Commit") + op("PollAll") + op("Release",1,0) + op("Release",1,0) + op("Commit") + op("PollAll"),
 # A take-over publishes the old connection's QoS 2 will; a restart must not publish it again.
 "takeover-will-restart": config(max_inflight=3, max_queued=1, v3_expiry=1, store=1)
    + connect(0,0,0,0,0,0,[3,2,1,0]) + connect(0,0,0,0,0,3) + sub(1,3,2) + op("PollAll")
    + op("Restart") + op("Advance",15) + connect(0,0,0,0,0,0),
 # Publisher-side QoS 2: resent before PUBREL, released, queue overflow for an offline session.
 "qos2-publisher-queue": config(max_queued=1, store=1) + connect(0,1,0) + sub(0,3,2) + op("TransportClosed",0)
    + connect(1,2,0,3) + pub(0,1,2) + op("Resend",0,0) + op("Poll",0,0) + op("Resend",0,0)
    + pub(0,1,2) + pub(0,3,1) + op("Release",0,0) + op("Release",0,0) + connect(0,1,0) + op("PollAll")
    + op("AckAll",1) + op("PollAll") + op("AckAll",1) + op("PollAll"),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "core")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
