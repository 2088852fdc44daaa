#!/usr/bin/env python3
"""sherld on a node with two GPUs, played by fake ones so that this runs in the CPU-only CI:
SHERL_TEST_FAKE_GPUS=2:2G makes the CUDA devices two copies of the CPU backend that the engine
treats as devices (every copy staged, the device's feed-forward chunks), 2 GiB each. What sits
above the backend is the daemon's own code, as on a real node:

  1. GetNodeStatus lists cpu, cuda:0 and cuda:1, each GPU's budget its size minus
     gpu-memory-reserve; a job on "cuda:2" is FAILED_PRECONDITION naming the node's 2 GPUs;
     EstimateJob of a "cuda" job names a GPU;
  2. two "cuda" jobs at once go to different GPUs (the fewest jobs first): their events say
     "running on cuda:0" and "running on cuda:1", and while both run each GPU holds one job and
     its own copy of the backbone (one per (folder, device, precision));
  3. LoadBackbone --device cuda:1 pins a bf16 copy there; LoadBackbone --device cuda then returns
     that copy rather than loading a second; a "cuda" bf16 job, both GPUs idle, is placed where
     its backbone is resident (cuda:1, not the first GPU); a "cuda:0" job runs on cuda:0;
     Predict runs on the "cuda" job;
  4. UnloadBackbone --device cuda matches the copy on whichever GPU holds it.

  service_gpus.py SHERLD SHERLCTL MODEL_DIR WORK_DIR"""
import json
import os
import shutil
import sys
import time

from sherld_harness import Daemon, check, failures, node_adds_up, write_sherl_job
from wordnet_data import write_split

sherld, sherlctl, model_dir, work = sys.argv[1:5]
shutil.rmtree(work, ignore_errors=True)
data = os.path.join(work, "data")
os.makedirs(data)
write_split(data, 32, 16)
GiB = 1 << 30
env = dict(os.environ, SHERL_TEST_FAKE_GPUS="2:2G")
d = Daemon(sherld, sherlctl, work, os.path.join(work, "state"),
           (os.path.dirname(model_dir), data), env=env,
           extra=("--max-concurrent-jobs", "3", "--gpu-memory-reserve", "512M"))
ctl = d.ctl_json
name = os.path.basename(model_dir)


def write_job(job_name, epochs=4, **resources):
    return write_sherl_job(work, data, model_dir, job_name, epochs, 5, **resources)


def ran_on(job_id):
    """The device a finished job's events say it ran on."""
    p = d.ctl("--json", "watch", job_id)
    said = [json.loads(x).get("message", "") for x in p.stdout.splitlines() if x.strip()]
    on = [m.split()[2].rstrip(",") for m in said if m.startswith("running on ")]
    return on[0] if len(on) == 1 else "events: %s" % said


def wait_done(ids):
    while any(ctl("get", i)["state"] in ("QUEUED", "LOADING", "RUNNING") for i in ids):
        time.sleep(0.1)
    return {i: ctl("get", i) for i in ids}


# ---- 1. the node's devices ---------------------------------------------------------------------
node = ctl("node")
devs = {x["name"]: x for x in node["devices"]}
check(list(devs) == ["cpu", "cuda:0", "cuda:1"], "devices: %s" % list(devs))
for g in ("cuda:0", "cuda:1"):
    x = devs.get(g, {})
    check(x.get("backend") == "cuda" and x.get("total_bytes") == 2 * GiB and
          x.get("budget_bytes") == 2 * GiB - 512 * 2**20 and x.get("planned_bytes") == 0 and
          "fake GPU" in x.get("description", ""), "%s: %s" % (g, x))
p = d.ctl("submit", "--no-upload", write_job("on-cuda-2", device="cuda:2"))
check(p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr and "cuda:2" in p.stderr and
      "no usable GPU 2" in p.stderr and "2 CUDA devices, 2 usable" in p.stderr,
      "a cuda:2 job: rc %d %r" % (p.returncode, p.stderr.strip()[-300:]))
e = ctl("estimate", "--no-upload", write_job("est", device="cuda"))
check(e["device"] in ("cuda:0", "cuda:1") and e["backend"] == "cuda" and e["fits_now"] and
      e["device_budget_bytes"] == 2 * GiB - 512 * 2**20 and not e["backbone_resident"],
      "estimate of a cuda job: %s" % {k: v for k, v in e.items() if k != "plan"})
print("1. node: cpu, cuda:0, cuda:1 (2 GiB, budget 1.5 GiB each); cuda:2 refused; a cuda job "
      "estimated on %s" % e["device"])

# ---- 2. two jobs for any GPU go to different GPUs ----------------------------------------------
ids = [ctl("submit", "--no-upload", write_job("any-%d" % k, device="cuda"))["id"] for k in (1, 2)]
samples = spread = 0
while True:
    node = ctl("node")
    if node["running"] == 0 and node["queued"] == 0:
        break
    samples += 1
    devs = {x["name"]: x for x in node["devices"]}
    node_adds_up(node)
    if [len(devs[g]["jobs"]) for g in ("cuda:0", "cuda:1")] == [1, 1]:
        regs = sorted((b["device"], b["jobs"]) for b in node["backbones"])
        spread += regs == [("cuda:0", 1), ("cuda:1", 1)]
    time.sleep(0.05)
done = wait_done(ids)
check(all(j["state"] == "SUCCEEDED" for j in done.values()),
      "states: %s" % {i: (j["state"], j.get("error")) for i, j in done.items()})
where = sorted(ran_on(i) for i in ids)
check(where == ["cuda:0", "cuda:1"], "the two cuda jobs ran on %s" % where)
check(spread >= 1, "never saw one job and one backbone copy on each GPU (%d samples)" % samples)
check(ctl("backbones", "list") == [], "unpinned copies outlived their jobs")
print("2. two cuda jobs SUCCEEDED on %s; %d of %d node samples showed one job and one backbone "
      "copy on each GPU" % (" and ".join(where), spread, samples))

# ---- 3. a pinned copy draws jobs for any GPU ---------------------------------------------------
b1 = ctl("backbones", "load", model_dir, "--device", "cuda:1", "--precision", "bf16")[0]
b2 = ctl("backbones", "load", model_dir, "--device", "cuda", "--precision", "bf16")[0]
check(b1["device"] == "cuda:1" and b2["device"] == "cuda:1" and len(ctl("backbones", "list")) == 1,
      "load on cuda:1 then on cuda: %s, %s; registry %s" %
      (b1["device"], b2["device"], ctl("backbones", "list")))
e = ctl("estimate", "--no-upload", write_job("est-bf16", device="cuda", precision="bf16"))
check(e["device"] == "cuda:1" and e["backbone_resident"],
      "estimate of a cuda bf16 job: %s" % {k: v for k, v in e.items() if k != "plan"})
bf16_id = ctl("submit", "--no-upload", write_job("any-bf16", device="cuda", precision="bf16"))["id"]
wait_done([bf16_id])
cuda0_id = ctl("submit", "--no-upload", write_job("on-cuda-0", device="cuda:0"))["id"]
done = wait_done([bf16_id, cuda0_id])
check(all(j["state"] == "SUCCEEDED" for j in done.values()),
      "states: %s" % {i: (j["state"], j.get("error")) for i, j in done.items()})
check(ran_on(bf16_id) == "cuda:1", "the cuda bf16 job ran on %s, not where its backbone is" %
      ran_on(bf16_id))
check(ran_on(cuda0_id) == "cuda:0", "the cuda:0 job ran on %s" % ran_on(cuda0_id))
preds = ctl("predict", bf16_id, "a large cat of the jungle", "to run fast")
check(len(preds) == 2 and all(abs(sum(q["scores"]) - 1) < 1e-4 for q in preds),
      "predict on the cuda bf16 job: %s" % preds)
listed = ctl("backbones", "list")
check([(b["device"], b["precision"]) for b in listed] == [("cuda:1", "bf16")],
      "registry after predict: %s" % listed)
print("3. LoadBackbone cuda:1 then cuda: one copy, on cuda:1; a cuda bf16 job placed there, a "
      "cuda:0 job on cuda:0; predict %s" % [q["label"] for q in preds])

# ---- 4. unload on any GPU ----------------------------------------------------------------------
p = d.ctl("backbones", "unload", name, "--device", "cuda:0")
check(p.returncode == 1 and "NOT_FOUND" in p.stderr, "unload on cuda:0: %r" % p.stderr.strip())
gone = ctl("backbones", "unload", name, "--device", "cuda")[0]
check(not gone["loaded"] and gone["device"] == "cuda:1" and ctl("backbones", "list") == [],
      "unload on cuda: %s" % gone)
node = ctl("node")
check(all(x["planned_bytes"] == 0 for x in node["devices"]), "planned bytes left: %s" %
      [(x["name"], x["planned_bytes"]) for x in node["devices"]])
print("4. unload --device cuda found the copy on cuda:1; nothing planned is left")

check(d.term() == 0, "sherld exit code")
for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
