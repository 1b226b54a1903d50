#!/usr/bin/env python3
"""Maps JIT offsets of a loaded BPF program (as `perf report` prints them:
`bpf_prog_<tag>_tc_lb+0x12fb`) to the source lines of the instructions there.

Usage (root, while the program is loaded, e.g. during `cargo xtask bench e2e`):

    perf record -a -g -e cpu-clock -o perf.data -- <load>
    perf script -i perf.data -F ip,sym,symoff | ...   # hot offsets into the program
    python3 jitmap.py PROG_ID 0x12fb 0x1470 ...      # PROG_ID: `bpftool prog show name tc_lb`

For when bpftool has no disassembler (no libbfd): the kernel still gives each
line-info record's JIT address (`jited_line_info`, BPF_OBJ_GET_INFO_BY_FD), and
`bpftool prog dump xlated ... linum` gives each instruction's source line. The JIT
layout depends only on the program, so offsets from one load map onto another load
of the same object. Samples without a PMU (software clock, as in a VM) land on the
instruction after a stall: read the lines just before the one printed too.
"""
import bisect
import ctypes
import ctypes.util
import os
import re
import struct
import subprocess
import sys

SYS_BPF = 321  # x86_64
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
INFO_LEN = 232  # struct bpf_prog_info up to attach_btf_id

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    r = libc.syscall(SYS_BPF, cmd, buf, len(attr))
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return r


def prog_info(fd, info):
    ibuf = ctypes.create_string_buffer(bytes(info), len(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, len(info), ctypes.addressof(ibuf)) + bytes(48))
    return ibuf.raw


def jited_lines(prog_id):
    """[(JIT offset from the main function's start, xlated instruction index)]"""
    fd = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("III", prog_id, 0, 0) + bytes(52))
    info = prog_info(fd, bytes(INFO_LEN))
    nr_ksyms = struct.unpack_from("I", info, 104)[0]
    nr_line = struct.unpack_from("I", info, 148)[0]
    nr_jline = struct.unpack_from("I", info, 168)[0]
    if nr_jline == 0:
        sys.exit("the program has no line info (loaded without BTF?)")
    ksyms = ctypes.create_string_buffer(8 * nr_ksyms)
    lines = ctypes.create_string_buffer(16 * nr_line)
    jlines = ctypes.create_string_buffer(8 * nr_jline)
    ask = bytearray(INFO_LEN)
    struct.pack_into("IIQ", ask, 104, nr_ksyms, 0, ctypes.addressof(ksyms))
    struct.pack_into("II", ask, 144, 0, nr_line)
    struct.pack_into("QQI", ask, 152, ctypes.addressof(lines), ctypes.addressof(jlines), nr_jline)
    struct.pack_into("II", ask, 172, 16, 8)
    prog_info(fd, ask)
    os.close(fd)
    base = struct.unpack_from("Q", ksyms.raw, 0)[0]
    out = []
    for i in range(nr_jline):
        addr = struct.unpack_from("Q", jlines.raw, 8 * i)[0]
        insn = struct.unpack_from("I", lines.raw, 16 * i)[0]
        out.append((addr - base, insn))
    out.sort()
    return out


def xlated_source(prog_id):
    """{instruction index: (source line, instruction text)}"""
    text = subprocess.run(
        ["bpftool", "prog", "dump", "xlated", "id", str(prog_id), "linum"],
        check=True, capture_output=True, text=True,
    ).stdout
    src, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^; (.*)", line)
        if m:
            cur = m.group(1)
            continue
        m = re.match(r"^\s*(\d+): (.*)", line)
        if m:
            src[int(m.group(1))] = (cur, m.group(2))
    return src


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    prog_id = int(sys.argv[1])
    table = jited_lines(prog_id)
    offsets = [o for o, _ in table]
    src = xlated_source(prog_id)
    for arg in sys.argv[2:]:
        off = int(arg, 16)
        i = max(bisect.bisect_right(offsets, off) - 1, 0)
        insn = table[i][1]
        line = src.get(insn, ("?", ""))[0]
        print(f"+{off:#x} -> insn {insn}: {line}")
        for k in range(insn, insn + 4):
            if k in src:
                print(f"      {k}: {src[k][1]}")


if __name__ == "__main__":
    main()
