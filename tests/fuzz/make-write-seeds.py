#!/usr/bin/python3
# Seeds for fuzz-vhd-write: every fuzz-vhd-open seed image (from
# make-seeds.py's output directory) with a small program of operations in
# front: write, overlapping write, zero, fast zero, flush, a write checked
# by a read at once.  Layout (see fuzz-vhd-write.c): flag byte, operation
# count, 8 bytes per operation, then the image.
#   make-write-seeds.py OPEN_SEEDS_DIR OUT_DIR
import os
import struct
import sys

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)


def op(kind, off, length, fill):
    return struct.pack("<B", kind) + off.to_bytes(3, "little") + \
        (length - 1).to_bytes(3, "little") + bytes([fill])


program = [op(0, 0, 4096, 0x11), op(0, 1000, 70000, 0x22),
           op(1, 4096, 8192, 0), op(2, 0, 512, 0), op(3, 0, 1, 0),
           op(4, 300000, 1, 0x33), op(0, 600000, 2 * 1024 * 1024 - 1, 0x44)]
for name in sorted(os.listdir(src)):
    data = open(os.path.join(src, name), "rb").read()
    if not data:
        continue
    flag, image = data[0], data[1:]
    for variant, extra in (("start", 0), ("end", 4)):
        with open(os.path.join(out, f"{name}-{variant}"), "wb") as f:
            f.write(bytes([(flag & 3) | extra, len(program)]))
            f.write(b"".join(program) + image)
