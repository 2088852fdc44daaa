#!/usr/bin/env python3
"""Planner truth: for four training configurations on the real all-MiniLM-L6-v2 and WordNet
glosses (the last a sentence-pair task read from a GLUE-style TSV: do two glosses share a
supersense?), the peak resident memory measured during `sherl train` (VmHWM minus the RSS when the
run started, from metrics.json) must be within 10% of the planner's number, and `sherl plan`,
which reads only the spec, its config, tokenizer and data, must give the trainer's plan
byte for byte.

  planner_truth.py SHERL_BIN MODEL_DIR WORK_DIR --measure|--plan-only

--plan-only (sanitizer builds, whose resident memory is the sanitizer's) skips the measurement
and checks only that the plan and the trainer agree."""
import json
import os
import random
import shutil
import subprocess
import sys

from wordnet_data import write_split

sherl, model_dir, work, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
if mode not in ("--measure", "--plan-only"):
    sys.exit("planner_truth.py: mode %r: expected --measure or --plan-only" % mode)
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
write_split(work, 96, 16)
failures = []


def write_pairs(src, dst, seed):
    """Pairs of glosses from src (JSONL), labelled same/different supersense, as TSV."""
    rows = [json.loads(l) for l in open(os.path.join(work, src), encoding="utf-8")]
    rng = random.Random(seed)
    with open(os.path.join(work, dst), "w", encoding="utf-8") as f:
        f.write("sentence1\tsentence2\tlabel\n")
        for a in rows:
            b = rng.choice(rows)
            f.write("%s\t%s\t%s\n" % (a["text"].replace("\t", " "), b["text"].replace("\t", " "),
                                      "same" if a["label"] == b["label"] else "different"))


write_pairs("train.jsonl", "pairs_train.tsv", 1)
write_pairs("val.jsonl", "pairs_val.tsv", 2)

CONFIGS = [  # method, batch size, max_length, extra spec fields
    ("sherl", 32, 64, {"sherl": {"late_layers": 1, "downsample_factor": 2}}),
    ("full", 16, 48, {}),
    ("linear", 32, 64, {}),
    ("late", 16, 96, {"task": {"text_fields": ["sentence1", "sentence2"]},
                      "data": {"train": "pairs_train.tsv", "validation": "pairs_val.tsv"}}),
]
print("%-8s %6s %14s %14s %8s" % ("method", "batch", "planned MiB", "measured MiB", "ratio"))
for method, batch, max_len, extra in CONFIGS:
    spec = {"name": method, "backbone": model_dir, "method": method,
            "data": {"train": "train.jsonl", "validation": "val.jsonl", "max_length": max_len},
            "train": {"epochs": 1, "max_steps": 3, "batch_size": batch, "seed": 5},
            "resources": {"threads": 2}, "output": "out-" + method}
    for key, value in extra.items():
        spec[key] = dict(spec.get(key, {}), **value)
    path = os.path.join(work, method + ".json")
    with open(path, "w") as f:
        json.dump(spec, f)
    plan = subprocess.run([sherl, "plan", "--json", path], capture_output=True, text=True)
    if plan.returncode != 0:
        failures.append("%s: sherl plan failed: %s" % (method, plan.stderr.strip()))
        continue
    planned = json.loads(plan.stdout)
    p = subprocess.run([sherl, "train", path], capture_output=True, text=True)
    if p.returncode != 0:
        failures.append("%s: sherl train failed: %s" % (method, p.stderr[-400:]))
        continue
    mem = json.load(open(os.path.join(work, "out-" + method, "metrics.json")))["memory"]
    if mem["peak_bytes"] != planned["peak_bytes"] or mem["items"] != planned["items"]:
        failures.append("%s: sherl plan says %d bytes, the trainer planned %d" %
                        (method, planned["peak_bytes"], mem["peak_bytes"]))
    if mode == "--plan-only":
        print("%-8s %6d %14.1f %14s %8s" % (method, batch, mem["peak_bytes"] / 2**20,
                                            "(sanitizer)", "-"))
        continue
    if not mem["peak_counts_from_run_start"]:
        failures.append("%s: the kernel refused to reset VmHWM: no measurement" % method)
        continue
    ratio = mem["measured_peak_bytes"] / mem["peak_bytes"]
    print("%-8s %6d %14.1f %14.1f %8.3f" % (method, batch, mem["peak_bytes"] / 2**20,
                                            mem["measured_peak_bytes"] / 2**20, ratio))
    if not 0.9 <= ratio <= 1.1:
        failures.append("%s: measured peak %.1f MiB is not within 10%% of the planned %.1f MiB" %
                        (method, mem["measured_peak_bytes"] / 2**20, mem["peak_bytes"] / 2**20))

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
