#!/usr/bin/env python3
"""Half precision on a small real task: the same SHERL job (the real all-MiniLM-L6-v2, its late
layer trained too, on WordNet glosses labelled with their supersense) trained with `sherl train`
in fp32 and in bf16 must end within 1 point of validation accuracy of each other (issue 7's
acceptance), and both must have learned the task (well above chance).

  half_accuracy.py SHERL_BIN MODEL_DIR WORK_DIR [--device cpu|cuda|auto] [--precisions bf16,fp16]
                   [--data DIR]

On the CPU a half job's products widen the halves to fp32, so the check runs everywhere;
tests/gpu/run.sh runs it with --device cuda on the folder scripts/pack_gpu_task makes (the model
stored as F16, and --data: this split already written, for a machine without WordNet). Prints
both runs' accuracy, loss and time."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from wordnet_data import write_split

ap = argparse.ArgumentParser(description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("sherl")
ap.add_argument("model_dir")
ap.add_argument("work")
ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
ap.add_argument("--precisions", default="bf16")
ap.add_argument("--tol", type=float, default=0.01)
ap.add_argument("--data", help="a folder with train.jsonl and val.jsonl already written "
                "(default: the split made here from WordNet)")
a = ap.parse_args()
a.sherl, a.model_dir = os.path.abspath(a.sherl), os.path.abspath(a.model_dir)
precisions = [p for p in a.precisions.split(",") if p]
for p in precisions:
    if p not in ("bf16", "fp16"):
        ap.error("--precisions: %r is not bf16 or fp16" % p)

shutil.rmtree(a.work, ignore_errors=True)
os.makedirs(a.work)
if a.data:
    for name in ("train.jsonl", "val.jsonl"):
        src = os.path.join(a.data, name)
        if not os.path.isfile(src):
            ap.error("--data %s has no %s (scripts/pack_gpu_task writes both)" % (a.data, name))
        shutil.copy(src, a.work)
else:
    write_split(a.work, 120, 300)  # 3 supersenses: 360 training and 900 validation glosses
CHANCE = 1.0 / 3


def train(precision):
    out = os.path.join(a.work, "out-" + precision)
    spec = {"name": "half-accuracy-" + precision, "backbone": a.model_dir, "method": "sherl",
            "sherl": {"late_layers": 1, "tune_late": True},
            "data": {"train": "train.jsonl", "validation": "val.jsonl", "max_length": 48},
            "optim": {"lr": 1e-3},
            "train": {"epochs": 3, "batch_size": 16, "seed": 5},
            "resources": {"device": a.device, "precision": precision, "threads": 2},
            "output": out}
    path = os.path.join(a.work, precision + ".json")
    with open(path, "w") as f:
        json.dump(spec, f)
    t0 = time.time()
    p = subprocess.run([a.sherl, "train", path], capture_output=True, text=True)
    took = time.time() - t0
    if p.returncode != 0:
        print("FAIL: %s run: sherl train exited %d: %s" % (precision, p.returncode,
                                                           p.stderr.strip()[-600:]))
        sys.exit(1)
    m = json.load(open(os.path.join(out, "metrics.json")))
    v = m["validation"]
    print("%-5s validation accuracy %.4f, loss %.4f, final train loss %.4f, %.0f s"
          % (precision, v["accuracy"], v["loss"], m["final_train_loss"], took), flush=True)
    return v["accuracy"]


print("half_accuracy: %s, sherl with its late layer trained, WordNet glosses "
      "(3 supersenses, 360 train / 900 validation%s), 3 epochs, device %s"
      % (a.model_dir, ", from " + a.data if a.data else "", a.device), flush=True)
failures = []
ref = train("fp32")
if ref < CHANCE + 0.3:
    failures.append("fp32 reached only %.4f validation accuracy: the task was not learned" % ref)
for precision in precisions:
    acc = train(precision)
    diff = abs(acc - ref)
    print("%-5s |accuracy - fp32's| = %.4f (tolerance %.4f)" % (precision, diff, a.tol))
    if diff > a.tol:
        failures.append("%s validation accuracy %.4f is %.4f from fp32's %.4f (tolerance %.4f)"
                        % (precision, acc, diff, ref, a.tol))
for f in failures:
    print("FAIL:", f)
if not failures:
    print("half_accuracy: PASS")
sys.exit(1 if failures else 0)
