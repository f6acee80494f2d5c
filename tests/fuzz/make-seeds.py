#!/usr/bin/python3
# Seed corpus for fuzz-vhd-open: small valid images of every kind, each
# prefixed with the harness's flag byte (0: fix checksums).
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vhdgen  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
tmp = os.path.join(out, "tmp.vhd")


def emit(name):
    with open(tmp, "rb") as f:
        data = f.read()
    with open(os.path.join(out, name), "wb") as f:
        f.write(b"\0" + data)
    os.unlink(tmp)


vhdgen.write_dynamic(tmp, 64 * 1024, [(0, b"a" * 1024), (40960, b"b" * 512)],
                     block_size=4096)
emit("dynamic-partial")
vhdgen.write_dynamic(tmp, 128 * 1024, [(0, b"c" * 8192)], block_size=8192,
                     full_bitmaps=True)
emit("dynamic-full")
vhdgen.write_fixed(tmp, 8192, [(0, b"d" * 512)])
emit("fixed")
parent = os.path.join(out, "image.vhd")
vhdgen.write_dynamic(tmp, 64 * 1024, [(512, b"e" * 512)], block_size=4096,
                     parent=(parent, b"\1" * 16),
                     locators=[(b"W2ru", vhdgen.utf16(".\\image.vhd")),
                               (b"MacX", b"file://./image.vhd")])
emit("differencing-self")
