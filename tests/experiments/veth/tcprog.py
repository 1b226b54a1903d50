#!/usr/bin/env python3
"""Load a SCHED_CLS program `return bpf_redirect_peer(IFINDEX, 0)` with raw bpf()
syscalls and pin it. Usage: tcprog.py PIN_PATH IFINDEX"""
import ctypes, struct, sys, os
libc = ctypes.CDLL(None, use_errno=True)
ifindex = int(sys.argv[2])
ins = lambda op, regs, off, imm: struct.pack("<BBhi", op, regs, off, imm)
insns = ins(0xb7, 0x01, 0, ifindex) + ins(0xb7, 0x02, 0, 0) + ins(0x85, 0, 0, 155) + ins(0x95, 0, 0, 0)
ibuf = ctypes.create_string_buffer(insns); lic = ctypes.create_string_buffer(b"GPL")
log = ctypes.create_string_buffer(65536)
attr = struct.pack("<IIQQIIQII16s", 3, 4, ctypes.addressof(ibuf), ctypes.addressof(lic), 1, 65536,
                   ctypes.addressof(log), 0, 0, b"redir_peer")
abuf = ctypes.create_string_buffer(attr, 160)
fd = libc.syscall(321, 5, abuf, 160)
if fd < 0:
    sys.exit(f"PROG_LOAD: {os.strerror(ctypes.get_errno())}\n{log.value.decode()}")
path = ctypes.create_string_buffer(sys.argv[1].encode())
if libc.syscall(321, 6, ctypes.create_string_buffer(struct.pack("<QII", ctypes.addressof(path), fd, 0), 160), 160) < 0:
    sys.exit(f"OBJ_PIN: {os.strerror(ctypes.get_errno())}")
