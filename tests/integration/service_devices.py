#!/usr/bin/env python3
"""Jobs on the device their spec asks for, one resident backbone per (folder, device, precision),
and memory reported by device. Runs on a node without a usable GPU (the CPU-only CI); the same
code paths serve a GPU node:

  1. resources.device "cuda" is refused at EstimateJob and SubmitJob with FAILED_PRECONDITION and
     the runtime's reason ("no usable CUDA GPU"), and so is LoadBackbone on "cuda"; bad device and
     precision values are INVALID_ARGUMENT naming the field; nothing is recorded;
  2. GetNodeStatus lists the "cpu" device: total, free, budget and planned bytes;
  3. LoadBackbone of one folder at fp32 and at bf16 gives two resident copies (device cpu), the
     bf16 one smaller; the node's per-backbone bytes add up to its planned bytes;
  4. EstimateJob reports the device and the plan split into device (arena) and host bytes, and
     whether the backbone is resident for the job's key;
  5. an "auto" job and a bf16 job run at the same time on the CPU to SUCCEEDED, each on the
     resident copy of its precision (the registry shows 1 job on each); while they run, every
     GetNodeStatus sample adds up (planned = backbones + jobs) and each job's bytes are its
     plan's own bytes; Predict runs on the bf16 job;
  6. UnloadBackbone: a name that matches both copies is INVALID_ARGUMENT listing them; with
     --precision it unloads one, and then the name alone unloads the other (as before).

  service_devices.py SHERLD SHERLCTL MODEL_DIR WORK_DIR"""
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
d = Daemon(sherld, sherlctl, work, os.path.join(work, "state"),
           (os.path.dirname(model_dir), data),
           extra=("--max-concurrent-jobs", "2", "--gpu-memory-reserve", "1G"))
ctl = d.ctl_json
name = os.path.basename(model_dir)


def write_job(job_name, epochs=2, **resources):
    return write_sherl_job(work, data, model_dir, job_name, epochs, 3, **resources)


adds_up = node_adds_up


# ---- 1. cuda on a node without a GPU, bad values -----------------------------------------------
cuda_job = write_job("on-cuda", device="cuda")
for cmd in ("estimate", "submit"):
    p = d.ctl(cmd, "--no-upload", cuda_job)
    check(p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr and
          "no usable CUDA GPU" in p.stderr and "resources.device" in p.stderr,
          "%s of a cuda job: rc %d %r" % (cmd, p.returncode, p.stderr.strip()[-300:]))
# one GPU by index: FAILED_PRECONDITION naming it; an index past the last one a process uses,
# or another spelling, INVALID_ARGUMENT naming the field and what is expected
for cmd in ("estimate", "submit"):
    p = d.ctl(cmd, "--no-upload", write_job("on-cuda-1", device="cuda:1"))
    check(p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr and
          'resources.device "cuda:1"' in p.stderr and "no usable CUDA GPU" in p.stderr,
          "%s of a cuda:1 job: rc %d %r" % (cmd, p.returncode, p.stderr.strip()[-300:]))
    for bad in ("cuda:16", "cuda:01", "gpu:0"):
        p = d.ctl(cmd, "--no-upload", write_job("bad-device", device=bad))
        check(p.returncode == 1 and "INVALID_ARGUMENT" in p.stderr and
              "resources.device" in p.stderr and bad in p.stderr and '"cuda:N"' in p.stderr,
              "%s of device %s: rc %d %r" % (cmd, bad, p.returncode, p.stderr.strip()[-300:]))
for dev in ("cuda", "cuda:0"):
    p = d.ctl("backbones", "load", model_dir, "--device", dev)
    check(p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr and
          "no usable CUDA GPU" in p.stderr, "LoadBackbone on %s: %r" % (dev, p.stderr.strip()[-300:]))
p = d.ctl("backbones", "unload", name, "--device", "cuda:3")
check(p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr and "cuda:3" in p.stderr,
      "UnloadBackbone on cuda:3: %r" % p.stderr.strip()[-300:])
for args, field in ((["--device", "gpu"], "device"), (["--device", "cuda:99"], "device"),
                    (["--precision", "fp8"], "precision")):
    p = d.ctl("backbones", "load", model_dir, *args)
    check(p.returncode == 1 and "INVALID_ARGUMENT" in p.stderr and field + ":" in p.stderr,
          "LoadBackbone %s: %r" % (args, p.stderr.strip()[-200:]))
p = d.ctl("submit", "--no-upload", write_job("fp8", precision="fp8"))
check(p.returncode == 1 and "INVALID_ARGUMENT" in p.stderr and "resources.precision" in p.stderr,
      "precision fp8: %r" % p.stderr.strip()[-200:])
check(ctl("list") == [] and ctl("backbones", "list") == [], "refused requests left records")
print("1. resources.device cuda and cuda:1 refused at estimate and submit, LoadBackbone on cuda "
      "and cuda:0 too: FAILED_PRECONDITION, no usable CUDA GPU; bad device (cuda:16, cuda:01, "
      "gpu:0) and precision INVALID_ARGUMENT")

# ---- 2. the cpu device -------------------------------------------------------------------------
node = ctl("node")
devs = node["devices"]
check([x["name"] for x in devs][:1] == ["cpu"] and devs[0]["backend"] == "cpu",
      "devices: %s" % [x["name"] for x in devs])
cpu = devs[0]
check(cpu["total_bytes"] >= cpu["free_bytes"] > 0 and cpu["budget_bytes"] > 0 and
      cpu["budget_bytes"] == node["memory_budget_bytes"] and cpu["planned_bytes"] == 0 and
      cpu["description"].startswith("cpu"), "cpu device: %s" % cpu)
check(all(x["backend"] != "cpu" for x in devs[1:]), "a second cpu pool: %s" % devs)
p = d.ctl("node")
check(p.returncode == 0 and "device cpu:" in p.stdout, "node text: %r" % p.stdout)
print("2. node: device cpu, %.0f MiB total, %.0f MiB free, budget %.0f MiB, 0 planned" %
      (cpu["total_bytes"] / 2**20, cpu["free_bytes"] / 2**20, cpu["budget_bytes"] / 2**20))

# ---- 3. one resident copy per (folder, device, precision) --------------------------------------
fp32 = ctl("backbones", "load", model_dir)[0]
bf16 = ctl("backbones", "load", model_dir, "--precision", "bf16")[0]
again = ctl("backbones", "load", model_dir, "--device", "cpu", "--precision", "fp32")[0]
listed = ctl("backbones", "list")
check(len(listed) == 2 and {(b["path"], b["device"], b["precision"]) for b in listed} ==
      {(fp32["path"], "cpu", "fp32"), (fp32["path"], "cpu", "bf16")},
      "registry: %s" % [(b["name"], b["device"], b["precision"]) for b in listed])
check(again["bytes"] == fp32["bytes"] and fp32["path"] == bf16["path"], "load again: %s" % again)
check(fp32["bytes"] * 0.4 < bf16["bytes"] < fp32["bytes"] * 0.7,
      "bf16 copy %d bytes vs fp32 %d" % (bf16["bytes"], fp32["bytes"]))
node = ctl("node")
cpu = node["devices"][0]
check(sorted((u["precision"], u["bytes"]) for u in cpu["backbones"]) ==
      sorted([("bf16", bf16["bytes"]), ("fp32", fp32["bytes"])]) and not cpu["jobs"],
      "cpu device backbones: %s" % cpu["backbones"])
adds_up(node)
check(node["memory_used_bytes"] == cpu["planned_bytes"] == fp32["bytes"] + bf16["bytes"],
      "memory_used_bytes %d" % node["memory_used_bytes"])
print("3. %s resident twice on cpu: fp32 %.1f MiB, bf16 %.1f MiB" %
      (name, fp32["bytes"] / 2**20, bf16["bytes"] / 2**20))

# ---- 4. EstimateJob by device ------------------------------------------------------------------
auto_job = write_job("auto", epochs=6, device="auto")
bf16_job = write_job("bf16", epochs=6, precision="bf16")
est = {}
for key, path in (("auto", auto_job), ("bf16", bf16_job)):
    e = ctl("estimate", "--no-upload", path)
    est[key] = e
    arenas = sum(i["bytes"] for i in e["plan"]["items"] if i["kind"] == "arena")
    check(e["device"] == "cpu" and e["backend"] == "cpu" and e["fits_ever"] and e["fits_now"] and
          e["backbone_resident"], "estimate %s: %s" % (key, {k: v for k, v in e.items()
                                                             if k != "plan"}))
    check(e["device_bytes"] == arenas and
          e["device_bytes"] + e["host_bytes"] == e["plan"]["peak_bytes"] and e["host_bytes"] > 0,
          "estimate %s: device %d + host %d vs peak %d (arenas %d)" %
          (key, e["device_bytes"], e["host_bytes"], e["plan"]["peak_bytes"], arenas))
    check(e["device_budget_bytes"] == e["budget_bytes"] and
          e["device_free_bytes"] == e["free_bytes"] ==
          e["budget_bytes"] - fp32["bytes"] - bf16["bytes"], "estimate %s budgets: %s" %
          (key, {k: v for k, v in e.items() if k != "plan"}))
check(est["auto"]["precision"] == "fp32" and est["bf16"]["precision"] == "bf16",
      "precisions: %s %s" % (est["auto"]["precision"], est["bf16"]["precision"]))
check(est["auto"]["plan"]["backbone_bytes"] == fp32["bytes"] and
      est["bf16"]["plan"]["backbone_bytes"] == bf16["bytes"],
      "the planner's backbone line vs the registry: %d/%d, %d/%d" %
      (est["auto"]["plan"]["backbone_bytes"], fp32["bytes"], est["bf16"]["plan"]["backbone_bytes"],
       bf16["bytes"]))
p = d.ctl("estimate", "--no-upload", bf16_job)
check(p.returncode == 0 and "device cpu (cpu, bf16)" in p.stdout and "host:" in p.stdout,
      "estimate text: %r" % p.stdout[-400:])
print("4. estimate: auto -> cpu, %.1f MiB device + %.1f MiB host; bf16 backbone line %.1f MiB" %
      (est["auto"]["device_bytes"] / 2**20, est["auto"]["host_bytes"] / 2**20,
       est["bf16"]["plan"]["backbone_bytes"] / 2**20))

# ---- 5. an auto job and a bf16 job at once -------------------------------------------------------
ids = {key: ctl("submit", "--no-upload", path)["id"] for key, path in (("auto", auto_job),
                                                                      ("bf16", bf16_job))}
watchers = [d.watch_events(i) for i in ids.values()]
seen = []
for w in watchers:
    seen.append([])
    for line in w.stdout:
        seen[-1].append(json.loads(line))
        if "progress" in seen[-1][-1]:
            break
own = {i: ctl("get", i)["plan"]["job_bytes"] for i in ids.values()}
samples = both = both_held = 0
while True:
    node = ctl("node")
    if node["running"] == 0:
        break
    samples += 1
    adds_up(node)
    cpu = node["devices"][0]
    for u in cpu["jobs"]:
        check(u["id"] in own and u["bytes"] == own[u["id"]],
              "job %s on cpu: %d bytes, its plan's own %s" % (u["id"], u["bytes"], own.get(u["id"])))
    if len(cpu["jobs"]) == 2:
        both += 1
        # a job holds its backbone from its load to its end, a little inside the span in which
        # it is admitted (its planned bytes): one user each at most, and both at some point
        regs = {b["precision"]: b["jobs"] for b in node["backbones"]}
        check(set(regs) == {"fp32", "bf16"} and all(v <= 1 for v in regs.values()),
              "registry while both run: %s" % regs)
        both_held += regs == {"fp32": 1, "bf16": 1}
        check(cpu["planned_bytes"] == fp32["bytes"] + bf16["bytes"] + sum(own.values()),
              "planned while both run: %d" % cpu["planned_bytes"])
    time.sleep(0.05)
check(both >= 1, "never saw both jobs running (%d samples)" % samples)
check(both_held >= 1, "never saw each backbone held by its job (%d samples with both)" % both)
# each job's events say where it ran (the watchers started at its first event)
for key, w, events in zip(ids, watchers, seen):
    events += [json.loads(line) for line in w.stdout.read().splitlines() if line.strip()]
    w.wait()
    said = [e["message"] for e in events if "message" in e]
    want = "running on cpu, backbone weights in %s" % ("bf16" if key == "bf16" else "fp32")
    check(want in said, "job %s: no '%s' event (messages %s)" % (key, want, said))
jobs = {k: ctl("get", i) for k, i in ids.items()}
check(all(j["state"] == "SUCCEEDED" for j in jobs.values()),
      "states: %s" % {k: (j["state"], j.get("error")) for k, j in jobs.items()})
preds = ctl("predict", ids["bf16"], "a large cat of the jungle", "to run fast")
check(len(preds) == 2 and all(abs(sum(q["scores"]) - 1) < 1e-4 for q in preds),
      "predict on the bf16 job: %s" % preds)
node = ctl("node")
adds_up(node)
check(not node["devices"][0]["jobs"] and len(node["backbones"]) == 2 and
      all(b["jobs"] == 0 for b in node["backbones"]), "after the jobs: %s" % node["devices"][0])
val = {k: [e for e in j["evals"] if e["split"] == "validation"] for k, j in jobs.items()}
print("5. auto and bf16 jobs SUCCEEDED side by side on cpu (%d node samples, %d with both); "
      "validation accuracy auto %.3f, bf16 %.3f; predict on bf16: %s" %
      (samples, both, val["auto"][0]["accuracy"] if val["auto"] else -1,
       val["bf16"][0]["accuracy"] if val["bf16"] else -1, [q["label"] for q in preds]))

# ---- 6. unloading one copy of two ----------------------------------------------------------------
p = d.ctl("backbones", "unload", name)
check(p.returncode == 1 and "INVALID_ARGUMENT" in p.stderr and "cpu/fp32" in p.stderr and
      "cpu/bf16" in p.stderr, "ambiguous unload: %r" % p.stderr.strip())
p = d.ctl("backbones", "unload", name, "--device", "cuda")
check(p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr, "unload on cuda: %r" % p.stderr)
gone = ctl("backbones", "unload", name, "--precision", "bf16")[0]
check(not gone["loaded"] and gone["precision"] == "bf16" and gone["device"] == "cpu",
      "unload bf16: %s" % gone)
left = ctl("backbones", "list")
check([(b["device"], b["precision"]) for b in left] == [("cpu", "fp32")], "left: %s" % left)
p = d.ctl("backbones", "unload", name, "--precision", "bf16")
check(p.returncode == 1 and "NOT_FOUND" in p.stderr, "unload bf16 twice: %r" % p.stderr)
gone = ctl("backbones", "unload", fp32["path"])[0]  # by path; the only match left
check(gone["precision"] == "fp32" and ctl("backbones", "list") == [], "unload fp32: %s" % gone)
check(ctl("node")["devices"][0]["planned_bytes"] == 0, "planned bytes after unloading")
print("6. unload: both copies matched -> INVALID_ARGUMENT; --precision bf16 unloaded one, the "
      "path the other")

check(d.term() == 0, "sherld exit code")
for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
