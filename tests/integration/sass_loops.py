#!/usr/bin/env python3
"""bench/sass_loops.py on a hand-written disassembly in cuobjdump's layout: each loop's length
from its backward branch, kernels chosen by name, and clear failures.

  sass_loops.py SASS_LOOPS_SCRIPT WORKDIR"""
import os
import subprocess
import sys

script, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)


def insn(addr, text):
    return "        /*%04x*/                   %s ;    /* 0x0000000000000000 */\n" % (addr, text)


# kernel A: a loop 0x20..0x50 (4 instructions: 0x20, 0x30, 0x40, 0x50), a forward branch and
# the branch to itself that cuobjdump shows after every kernel's end (not a loop); kernel B: a
# loop 0x00..0x30 (4) around a predicated branch to itself; kernel C: only the end's branch
sass = "\tcode for sm_90\n\t\tFunction : _Z8kernel_aPfm\n"
sass += insn(0x00, "MOV R1, c[0x0][0x28]") + insn(0x10, "@P0 BRA 0x70")
sass += insn(0x20, "LDG.E R2, desc[UR4][R4.64]") + insn(0x30, "FADD R2, R2, 1")
sass += insn(0x40, "STG.E desc[UR4][R4.64], R2") + insn(0x50, "@!P0 BRA 0x20")
sass += insn(0x60, "EXIT") + insn(0x70, "BRA 0x70")
sass += "\t\tFunction : _Z8kernel_bPfm\n"
sass += insn(0x00, "IADD3 R0, R0, 1, RZ") + insn(0x10, "@P1 BRA 0x10")
sass += insn(0x20, "ISETP.GE.AND P0, PT, R0, 8, PT") + insn(0x30, "@!P0 BRA 0x0")
sass += insn(0x40, "EXIT")
sass += "\t\tFunction : _Z8kernel_cv\n" + insn(0x00, "EXIT") + insn(0x10, "BRA 0x10")
path = os.path.join(work, "k.sass")
open(path, "w").write(sass)

fails = 0


def run(*args):
    r = subprocess.run([sys.executable, script] + list(args), capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def check(what, ok, detail):
    global fails
    print(("ok   " if ok else "FAIL ") + what + ("" if ok else ": " + detail))
    fails += 0 if ok else 1


rc, out, err = run(path)
lines = {l.split()[0]: l for l in out.splitlines() if l.strip()}
check("all three kernels listed", rc == 0 and len(lines) == 3, "rc %d, out %r %r" % (rc, out, err))
a = lines.get("_Z8kernel_aPfm", "")
check("kernel A: 8 instructions, one loop of 4", "8 instructions" in a and "0x20..0x50: 4" in a
      and a.count("..") == 1, a)
b = lines.get("_Z8kernel_bPfm", "")
check("kernel B: one loop of 4", "5 instructions" in b and b.endswith("loops: 0x0..0x30: 4"), b)
c = lines.get("_Z8kernel_cv", "")
check("kernel C: a branch to itself is no loop", c.endswith("loops: none"), c)

rc, out, err = run(path, "kernel_b")
check("a name picks one kernel", rc == 0 and out.count("\n") == 1 and "kernel_b" in out, out)
rc, out, err = run(path, "no_such")
check("no match: exit 1 and says so", rc == 1 and "no kernel name contains no_such" in err, err)
bad = os.path.join(work, "notes.txt")
open(bad, "w").write("nothing here\n")
rc, out, err = run(bad)
check("not a disassembly: exit 1 and says so", rc == 1 and "no kernels in" in err, err)
sys.exit(1 if fails else 0)
