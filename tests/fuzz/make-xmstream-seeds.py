#!/usr/bin/python3
# Seed corpus for fuzz-xmstream: small valid xenmem streams (and one reply
# channel), each prefixed with the harness's flag byte (bit 0 clear: the
# harness fixes CRCs up; bit 1 set: reply channel).
#
# Written from doc/xenmem-stream.md with its own CRC-32C, not with the C
# encoder, so that the seeds are also a second opinion on the format: the
# harness aborts if the decoder accepts a record that the encoder would not
# write byte for byte.
import os
import struct
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283

ROUND, PAGES, CONTEXT, END, ACK, XENDATA = 1, 2, 3, 4, 5, 6
ZERO = 1 << 63


def header(backend, npages, version=2, flags=0):
    h = b"SXMXMEM\n" + struct.pack("<IIQI", version, backend, npages, flags)
    return h + struct.pack("<I", crc32c(h))


def record(rtype, seq, body):
    hdr = struct.pack("<III", rtype, len(body), seq)
    crc = crc32c(body, crc32c(hdr))
    pad = b"\0" * (-len(body) % 8)
    return hdr + struct.pack("<I", crc) + body + pad


def round_(seq, n, pages):
    return record(ROUND, seq, struct.pack("<IIQ", n, 0, pages))


def pages(seq, entries):
    """entries: (pfn, page bytes or None for a zero page)"""
    body = struct.pack("<II", len(entries), 0)
    body += b"".join(struct.pack("<Q", pfn | (ZERO if d is None else 0))
                     for pfn, d in entries)
    body += b"".join(d for _, d in entries if d is not None)
    return record(PAGES, seq, body)


def context(seq, backend, blob):
    return record(CONTEXT, seq, struct.pack("<II", backend, len(blob)) + blob)


def end(seq, sent, digest=b"\0" * 32):
    return record(END, seq, struct.pack("<Q", sent) + digest)


def ack(seq, status, msg):
    return record(ACK, seq, struct.pack("<iI", status, len(msg)) + msg)


def xendata(seq, kind, data):
    return record(XENDATA, seq, struct.pack("<II", kind, 0) + data)


def page(c):
    return bytes((c + i) & 0xFF for i in range(4096))


def emit(name, flag, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([flag]) + data)


# Two rounds, zero and data pages, context, END with a digest, the commit.
emit("full", 0,
     header(1, 64)
     + round_(0, 0, 4)
     + pages(1, [(0, page(1)), (5, None), (63, page(7)), (6, None)])
     + round_(2, 1, 1)
     + pages(3, [(5, page(9))])
     + context(4, 1, b"vcpu regs and such")
     + end(5, 5, bytes(range(32)))
     + ack(6, 0, b"commit"))
# The smallest complete stream: one empty round.
emit("minimal", 0,
     header(3, 1) + round_(0, 0, 0) + context(1, 3, b"") + end(2, 0))
# Zero pages only, many of them, a big guest.
emit("zeros", 0,
     header(1, 1 << 40) + round_(0, 0, 200)
     + pages(1, [((1 << 40) - 1 - i * 977, None) for i in range(200)])
     + pages(2, [(i, None) for i in range(0, 2000, 10)]))
# Backend xen: the domain's configuration, the preflight (one disk, one
# CPUID leaf, one MSR), libxl's stream in pieces, END
# with the byte count, the commit.
emit("xen", 0,
     header(2, 49152)
     + xendata(0, 1, b'{"c_info":{"type":"pvh","name":"g"}}')
     + xendata(1, 3, struct.pack("<6I", 4, 17, 1, 1, 1, 0)
               + b"xvda".ljust(32, b"\0") + bytes(range(16)) + bytes(16)
               + struct.pack("<6I", 0, 0, 0xd, 0x756e6547, 0x6c65746e, 0x49656e69)
               + struct.pack("<IIQ", 0xce, 0, 0))
     + xendata(2, 2, b"LibxlFmt\0\0\0\2\0\0\0\0" + bytes(11))
     + xendata(3, 2, page(5)[:1000])
     + end(4, 1027) + ack(5, 0, b"commit"))
emit("bad-xen-data-first", 0, header(2, 1) + xendata(0, 2, b"x"))
# Mid-stream, ending at an odd padding length.
emit("context-pad", 0,
     header(1, 16) + round_(0, 0, 1) + pages(1, [(3, None)])
     + context(2, 1, b"abc"))
# The same full stream with the checksums kept as they are (flag bit 0).
emit("full-raw", 1,
     header(1, 8) + round_(0, 0, 1) + pages(1, [(2, page(3))]))
# The reply channel: loaded, running, and a refusal.
emit("acks", 2,
     ack(0, 0, b"loaded") + ack(1, 0, b"running")
     + ack(2, -71, b"record 12 (PAGES): entry 3: pfn 70000 is beyond the "
       b"guest's 65536 pages"))
# Order violations, one each, as starting points for the order checks
# (random mutation rarely builds a whole valid prefix to violate).
short = header(1, 16) + round_(0, 0, 1) + pages(1, [(3, None)])
emit("bad-end-early", 0, short + end(2, 1))
emit("bad-two-contexts", 0,
     short + context(2, 1, b"x") + context(3, 1, b"y"))
emit("bad-pages-after-context", 0,
     short + context(2, 1, b"x") + pages(3, [(4, None)]))
emit("bad-after-commit", 0,
     short + context(2, 1, b"x") + end(3, 1) + ack(4, 0, b"commit")
     + ack(5, 0, b"again"))
emit("bad-round-after-end", 0,
     short + context(2, 1, b"x") + end(3, 1) + round_(4, 1, 0))
