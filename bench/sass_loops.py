#!/usr/bin/env python3
"""The loops of the CUDA backend's kernels in their machine code (SASS), instruction by count:
a static measure of an element-wise kernel's work per element that needs no GPU.

  bench/sass_loops.py [--cuobjdump PATH] OBJECT_OR_SASS [NAME_SUBSTRING ...]

OBJECT_OR_SASS: ops_cuda.cu.o from a build with -DSHERL_CUDA=ON (e.g.
build/release/kernels/CMakeFiles/sherl_kernels_cuda.dir/cuda/ops_cuda.cu.o), disassembled with
cuobjdump -sass, or a text file that holds that disassembly already. For each kernel whose
(mangled) name contains one of the substrings (every kernel without any), it prints the kernel's
instruction count and each loop: a backward branch and the instructions from its target to it
(a branch to itself, as cuobjdump shows after each kernel's EXIT, is not counted).
A loop over 4 elements a thread (the *_vec4 kernels) does 4 elements an iteration; a loop that
holds both half types' code (a run-time type) runs only one of them per element.

cuobjdump ships with the full CUDA toolkit; where the toolkit has only nvcc, the PyPI wheel
nvidia-cuda-cuobjdump holds it (pip download --no-deps nvidia-cuda-cuobjdump; unzip it; the
binary is under nvidia/cu13/bin/)."""
import argparse
import re
import shutil
import subprocess
import sys

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--cuobjdump", default=None, help="the cuobjdump to run (default: PATH, then /usr/local/cuda/bin)")
ap.add_argument("input")
ap.add_argument("names", nargs="*")
a = ap.parse_args()


def disassembly(path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"\x7fELF":
        return open(path, encoding="utf-8", errors="replace").read()
    tool = a.cuobjdump or shutil.which("cuobjdump") or "/usr/local/cuda/bin/cuobjdump"
    if not shutil.which(tool):
        sys.exit("sass_loops: no cuobjdump (%s); see --help for where to get one" % tool)
    r = subprocess.run([tool, "-sass", path], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("sass_loops: %s -sass %s failed: %s" % (tool, path, r.stderr.strip()))
    return r.stdout


FUNC = re.compile(r"Function : (\S+)")
INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
BRANCH = re.compile(r"\bBRA (0x[0-9a-f]+)")

kernels, cur = {}, None
for line in disassembly(a.input).splitlines():
    m = FUNC.search(line)
    if m:
        cur = m.group(1)
        kernels[cur] = []
        continue
    m = INSN.search(line)
    if cur and m:
        kernels[cur].append((int(m.group(1), 16), m.group(2)))
if not kernels:
    sys.exit("sass_loops: no kernels in %s (not a CUDA object or disassembly?)" % a.input)

shown = 0
for name in sorted(kernels):
    if a.names and not any(n in name for n in a.names):
        continue
    insns = kernels[name]
    size = insns[1][0] - insns[0][0] if len(insns) > 1 else 16  # bytes an instruction
    loops = []
    for addr, text in insns:
        m = BRANCH.search(text)
        if m and int(m.group(1), 16) < addr:
            start = int(m.group(1), 16)
            loops.append("%#x..%#x: %d" % (start, addr, (addr - start) // size + 1))
    print("%-60s %5d instructions; loops: %s" % (name, len(insns), ", ".join(loops) or "none"))
    shown += 1
if not shown:
    sys.exit("sass_loops: no kernel name contains %s" % " or ".join(a.names))
