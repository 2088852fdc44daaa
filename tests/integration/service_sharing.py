#!/usr/bin/env python3
"""Backbone sharing: two concurrent jobs on the same backbone hold one copy of its weights. The
daemon's resident memory, sampled while both run, grows by the backbone once plus the two jobs'
planned arenas, not by a second backbone; the registry shows one backbone used by 2 jobs.

  service_sharing.py SHERLD SHERLCTL MODEL_DIR WORK_DIR"""
import json
import os
import shutil
import sys

from sherld_harness import Daemon, check, failures
from wordnet_data import write_split

sherld, sherlctl, model_dir, work = sys.argv[1:5]
shutil.rmtree(work, ignore_errors=True)
data = os.path.join(work, "data")
os.makedirs(data)
write_split(data, 96, 8)
d = Daemon(sherld, sherlctl, work, os.path.join(work, "state"),
           (os.path.dirname(model_dir), data), extra=("--max-concurrent-jobs", "2"))
ctl = d.ctl_json

spec = {"name": "share", "backbone": model_dir, "method": "sherl",
        "data": {"train": os.path.join(data, "train.jsonl"), "max_length": 32},
        "train": {"epochs": 4, "batch_size": 16, "log_every": 1, "seed": 1},
        "resources": {"threads": 1}}
with open(os.path.join(work, "job.json"), "w") as f:
    json.dump(spec, f)
rss0 = ctl("node")["rss_bytes"]
ids = [ctl("submit", "--no-upload", "job.json")["id"] for _ in range(2)]
# synchronise on the event streams: both jobs RUNNING with a first progress event
watchers = [d.watch_events(i) for i in ids]
for w in watchers:
    for line in w.stdout:
        if "progress" in json.loads(line):
            break
samples = []
while True:  # sample while both run (each sample is one RPC; the jobs take seconds)
    n = ctl("node")
    if n["running"] < 2:
        break
    samples.append(n["rss_bytes"])
    bb = n["backbones"]
    if len(samples) == 1:
        check(len(bb) == 1 and bb[0]["jobs"] == 2, "registry while both run: %s" % bb)
check(len(samples) >= 3, "only %d samples while both jobs ran" % len(samples))
for w in watchers:
    w.stdout.read()
    w.wait()
jobs = [ctl("get", i) for i in ids]
check(all(j["state"] == "SUCCEEDED" for j in jobs), "states: %s" % [j["state"] for j in jobs])
backbone = jobs[0]["plan"]["backbone_bytes"]
own = sum(j["plan"]["job_bytes"] for j in jobs)
grew = max(samples) - rss0 if samples else 0
expected = backbone + own
print("resident memory grew %.1f MiB with 2 jobs running; backbone %.1f MiB + 2 jobs' planned "
      "%.1f MiB = %.1f MiB (ratio %.3f); a second backbone copy would add %.1f MiB" %
      (grew / 2**20, backbone / 2**20, own / 2**20, expected / 2**20, grew / expected,
       backbone / 2**20))
check(grew <= expected * 1.10, "grew %d bytes, more than backbone + arenas %d (+10%%)" %
      (grew, expected))
check(grew >= (backbone + own / 2) * 0.9, "grew only %d bytes: the measurement is off" % grew)
check(d.term() == 0, "sherld exit code")
sys.exit(1 if failures else 0)
