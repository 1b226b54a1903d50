#!/usr/bin/env python3
"""Load a 2-instruction XDP_PASS program (optionally with BPF_F_XDP_HAS_FRAGS, i.e. an
xdp.frags program) with raw bpf() syscalls and pin it, so `ip link set ... xdpdrv
pinned PATH` can attach it. Usage: xdpprog.py PIN_PATH [frags]"""
import ctypes, struct, sys, os
libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321
BPF_PROG_LOAD, BPF_OBJ_PIN = 5, 6
BPF_PROG_TYPE_XDP = 6
BPF_F_XDP_HAS_FRAGS = 1 << 5
insns = struct.pack("<BBhi", 0xb7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = XDP_PASS; exit
ibuf = ctypes.create_string_buffer(insns)
lic = ctypes.create_string_buffer(b"GPL")
log = ctypes.create_string_buffer(65536)
frags = len(sys.argv) > 2 and sys.argv[2] == "frags"
# union bpf_attr, PROG_LOAD part: prog_type, insn_cnt, insns, license, log_level, log_size,
# log_buf, kern_version, prog_flags, prog_name[16], prog_ifindex, expected_attach_type
attr = struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_XDP, 2, ctypes.addressof(ibuf),
                   ctypes.addressof(lic), 1, 65536, ctypes.addressof(log), 0,
                   BPF_F_XDP_HAS_FRAGS if frags else 0, b"frags" if frags else b"pass", 0, 37)
abuf = ctypes.create_string_buffer(attr, 160)
fd = libc.syscall(SYS_BPF, BPF_PROG_LOAD, abuf, 160)
if fd < 0:
    sys.exit(f"PROG_LOAD: {os.strerror(ctypes.get_errno())}\n{log.value.decode()}")
path = ctypes.create_string_buffer(sys.argv[1].encode())
pin = ctypes.create_string_buffer(struct.pack("<QII", ctypes.addressof(path), fd, 0), 160)
if libc.syscall(SYS_BPF, BPF_OBJ_PIN, pin, 160) < 0:
    sys.exit(f"OBJ_PIN: {os.strerror(ctypes.get_errno())}")
print(f"pinned {'xdp.frags' if frags else 'xdp'} program at {sys.argv[1]}")
