#!/usr/bin/env python3
"""The README's demo (tools/demo.py) at a reduced size (--tiny): every job SUCCEEDED, and the
results table and its JSON have every field, with sane values.

  demo_small.py DEMO_PY BUILD_DIR WORK_DIR"""
import json
import os
import shutil
import subprocess
import sys

demo, build, work = sys.argv[1:4]
shutil.rmtree(work, ignore_errors=True)
p = subprocess.run(["/usr/bin/python3", demo, "--tiny", "--build", build, "--out", work],
                   capture_output=True, text=True, timeout=850)
sys.stdout.write(p.stdout[-3000:])
failures = []
if p.returncode:
    failures.append("demo exit %d: %s" % (p.returncode, p.stderr[-500:]))
else:
    r = json.load(open(os.path.join(work, "results.json")))
    rows = {x["method"]: x for x in r["rows"]}
    if sorted(rows) != ["full", "late", "linear", "sherl"]:
        failures.append("methods: %s" % sorted(rows))
    for m, x in rows.items():
        if x["state"] != "SUCCEEDED":
            failures.append("%s: %s" % (m, x["state"]))
        if not (0 <= x["test_accuracy"] <= 1 and 0 <= x["test_macro_f1"] <= 1):
            failures.append("%s: metrics %s" % (m, x))
        if not (x["trainable_parameters"] > 0 and x["planned_peak_bytes"] > 0 and
                x["measured_peak_bytes"] > 0 and x["wall_s"] > 0 and x["samples_per_s"] > 0):
            failures.append("%s: fields %s" % (m, x))
    if len(rows) == 4 and not (rows["linear"]["trainable_parameters"] <
                               rows["sherl"]["trainable_parameters"] <
                               rows["late"]["trainable_parameters"] <
                               rows["full"]["trainable_parameters"]):
        failures.append("trainable parameters out of order")
    md = open(os.path.join(work, "results.md")).read()
    for h in ("test accuracy", "test macro-F1", "trainable params", "planned peak",
              "measured peak", "wall time", "samples/s"):
        if h not in md:
            failures.append("results.md lacks %r" % h)
    if not os.path.getsize(os.path.join(work, "results.png")) > 1000:
        failures.append("results.png missing")
for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
