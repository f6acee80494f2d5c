"""Test-only VHD writer, written from Microsoft's VHD specification v1.0.

It is deliberately independent of common/vhd.c (different language, written
from the spec, not from our parser), so that tests can build images qemu-img
cannot make (differencing chains, partial sector bitmaps, odd locators,
crafted corruption) and check our plugin against the bytes they put in.

Layout of the dynamic/differencing images it writes:
  0        footer copy (512)
  512      dynamic header (1024)
  1536     BAT (max_table_entries * 4, padded to 512)
  ...      parent locator data (each padded to 512)
  ...      blocks: sector bitmap (padded to 512) + block data
  end-512  footer
"""

import os
import struct
import uuid as uuidlib

SECTOR = 512
VHD_EPOCH = 946684800  # 2000-01-01 00:00:00 UTC


def checksum(buf, skip):
    s = sum(buf[:skip]) + sum(buf[skip + 4:])
    return (~s) & 0xFFFFFFFF


def chs_geometry(size):
    """CHS algorithm from the spec's appendix."""
    total = size // SECTOR
    if total > 65535 * 16 * 255:
        total = 65535 * 16 * 255
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = (cth + 1023) // 1024
        if heads < 4:
            heads = 4
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def footer(size, disk_type, data_offset, uid, creator=b"tap\0",
           geometry=None, timestamp=0x2e000000):
    cyl, heads, spt = geometry or chs_geometry(size)
    b = bytearray(512)
    b[0:8] = b"conectix"
    struct.pack_into(">IIQI", b, 8, 2, 0x00010000, data_offset, timestamp)
    b[28:32] = creator
    struct.pack_into(">I", b, 32, 0x00010000)
    b[36:40] = b"Wi2k"
    struct.pack_into(">QQHBBI", b, 40, size, size, cyl, heads, spt, disk_type)
    b[68:84] = uid
    struct.pack_into(">I", b, 64, checksum(b, 64))
    return b


def utf16(text, big_endian=False):
    return text.encode("utf-16-be" if big_endian else "utf-16-le")


def fix_checksum(path, offset, length, csum_field):
    """Recompute the checksum of the structure at OFFSET (after a test has
    corrupted some other field on purpose)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = bytearray(f.read(length))
        struct.pack_into(">I", b, csum_field, 0)
        struct.pack_into(">I", b, csum_field, checksum(b, csum_field))
        f.seek(offset)
        f.write(b)


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def write_fixed(path, size, writes=(), creator=b"tap\0", geometry=None,
                uid=None, sparse=True):
    """A fixed VHD: SIZE data bytes then the footer.  Returns the UUID."""
    uid = uid or uuidlib.uuid4().bytes
    with open(path, "w+b") as f:
        f.truncate(size)
        for off, data in writes:
            f.seek(off)
            f.write(data)
        if not sparse:
            f.seek(0)
            # materialise holes as written zeros
            pos = 0
            while pos < size:
                n = min(1 << 20, size - pos)
                f.seek(pos)
                chunk = f.read(n)
                f.seek(pos)
                f.write(chunk)
                pos += n
        f.seek(size)
        f.write(footer(size, 2, 0xFFFFFFFFFFFFFFFF, uid, creator, geometry))
    return uid


def write_dynamic(path, size, writes=(), block_size=2 << 20, parent=None,
                  locators=None, creator=b"tap\0", geometry=None, uid=None,
                  alloc_only=(), full_bitmaps=False, block_order=None,
                  max_table_entries=None):
    """A dynamic VHD, or a differencing one if PARENT=(path, uuid) is given.

    WRITES: (offset, bytes), sector aligned; only the written sectors get
    their bitmap bit set (unless FULL_BITMAPS, as qemu and Hyper-V do for
    whole blocks).  ALLOC_ONLY: block numbers allocated with all bits set but
    no data written (a file hole, reads as zeros).  LOCATORS: list of
    (code, bytes) for differencing disks; the default is W2ru (relative),
    W2ku (absolute) and MacX (file:// URL).  BLOCK_ORDER: a function that
    orders allocated block numbers in the file (default: ascending).
    Returns the UUID."""
    uid = uid or uuidlib.uuid4().bytes
    nblocks = (size + block_size - 1) // block_size
    max_entries = max_table_entries if max_table_entries is not None else nblocks
    spb = block_size // SECTOR
    bitmap_bytes = ((spb + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR

    # Per-block bitmaps and data.
    blocks = {}
    for off, data in writes:
        assert off % SECTOR == 0 and len(data) % SECTOR == 0, "sector aligned"
        pos = 0
        while pos < len(data):
            vo = off + pos
            blk, inblk = divmod(vo, block_size)
            n = min(block_size - inblk, len(data) - pos)
            bm, chunks = blocks.setdefault(blk, (bytearray(bitmap_bytes), []))
            for s in range(inblk // SECTOR, (inblk + n) // SECTOR):
                bm[s // 8] |= 0x80 >> (s % 8)
            chunks.append((inblk, data[pos:pos + n]))
            pos += n
    for blk in alloc_only:
        blocks.setdefault(blk, (bytearray(bitmap_bytes), []))
    for blk, (bm, _) in blocks.items():
        if full_bitmaps or blk in alloc_only:
            for s in range(spb):
                bm[s // 8] |= 0x80 >> (s % 8)

    hdr_off = 512
    bat_off = hdr_off + 1024
    bat_bytes = (max_entries * 4 + SECTOR - 1) // SECTOR * SECTOR
    pos = bat_off + bat_bytes

    disk_type = 3
    loc_entries = []
    if parent is not None:
        disk_type = 4
        ppath, puuid = parent
        if locators is None:
            rel = os.path.relpath(os.path.abspath(ppath),
                                  os.path.dirname(os.path.abspath(path)))
            locators = [
                (b"W2ru", utf16(".\\" + rel.replace("/", "\\"))),
                (b"W2ku", utf16(os.path.abspath(ppath))),
                (b"MacX", ("file://" + os.path.abspath(ppath)).encode()),
            ]
        for code, data in locators:
            space = (len(data) + SECTOR - 1) // SECTOR * SECTOR or SECTOR
            loc_entries.append((code, space, len(data), pos, data))
            pos += space

    order = sorted(blocks)
    if block_order:
        order = block_order(order)
    bat = [0xFFFFFFFF] * max_entries
    placed = []
    for blk in order:
        bat[blk] = pos // SECTOR
        placed.append((blk, pos))
        pos += bitmap_bytes + block_size
    end = pos

    ftr = footer(size, disk_type, hdr_off, uid, creator, geometry)
    h = bytearray(1024)
    h[0:8] = b"cxsparse"
    struct.pack_into(">QQIII", h, 8, 0xFFFFFFFFFFFFFFFF, bat_off, 0x00010000,
                     max_entries, block_size)
    if parent is not None:
        h[40:56] = parent[1]
        struct.pack_into(">I", h, 56, 0x2e000000)
        name = utf16(os.path.basename(parent[0]), big_endian=True)[:512]
        h[64:64 + len(name)] = name
        for i, (code, space, length, off, _) in enumerate(loc_entries):
            struct.pack_into(">4sIIIQ", h, 576 + 24 * i, code, space, length,
                             0, off)
    struct.pack_into(">I", h, 36, checksum(h, 36))

    with open(path, "wb") as f:
        f.truncate(end + 512)
        f.seek(0)
        f.write(ftr)
        f.write(h)
        f.seek(bat_off)
        f.write(b"".join(struct.pack(">I", e) for e in bat))
        for _, _, _, off, data in loc_entries:
            f.seek(off)
            f.write(data)
        for blk, boff in placed:
            bm, chunks = blocks[blk]
            f.seek(boff)
            f.write(bm)
            for inblk, data in chunks:
                f.seek(boff + bitmap_bytes + inblk)
                f.write(data)
        f.seek(end)
        f.write(ftr)
    return uid


def expected_raw(path, size, layers):
    """Write the raw image a chain must read as.  LAYERS: bottom first, each a
    list of (offset, bytes) writes (sector granular, later layers win)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for writes in layers:
            for off, data in writes:
                if off >= size:
                    continue
                f.seek(off)
                f.write(data[:size - off])
