#!/usr/bin/env python3
"""`sherl train` end to end on the real all-MiniLM-L6-v2 and real WordNet glosses (3 supersenses),
then the stop-and-resume checks: a run stopped after 5 steps, and a run killed with SIGKILL after
its step-4 checkpoint, each resumed from its checkpoint, must end with bit-identical parameters
and optimizer state to an uninterrupted run (one thread).

  train_resume.py SHERL_BIN MODEL_DIR WORK_DIR"""
import json
import os
import shutil
import signal
import subprocess
import sys

from wordnet_data import write_split

sherl, model_dir, work = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
failures = []

write_split(work, 64, 32)


def job(name, out, **train_extra):
    spec = {
        "name": name, "backbone": model_dir, "method": "sherl",
        "sherl": {"late_layers": 1, "downsample_factor": 2, "dropout": 0.1},
        "task": {"type": "classification", "pooling": "mean", "text_fields": ["text"],
                 "label_field": "label"},
        "data": {"train": "train.jsonl", "validation": "val.jsonl", "max_length": 32},
        "optim": {"lr": 2e-3, "weight_decay": 0.01, "warmup_ratio": 0.1, "clip_norm": 1.0},
        "train": dict({"epochs": 2, "batch_size": 16, "grad_accum": 2, "seed": 3,
                       "log_every": 2}, **train_extra),
        "resources": {"threads": 1},
        "output": out,
    }
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


def run(*args):
    p = subprocess.run([sherl, "train", *args], capture_output=True, text=True)
    sys.stderr.write(p.stderr)
    return p


a = run(job("uninterrupted", "runs/a"))
if a.returncode != 0:
    failures.append("uninterrupted run failed: rc %d" % a.returncode)
else:
    m = json.load(open(os.path.join(work, "runs/a/metrics.json")))
    acc = m["validation"]["accuracy"]
    print("uninterrupted: %d steps, validation accuracy %.3f, macro-F1 %.3f" %
          (m["steps"], acc, m["validation"]["macro_f1"]))
    if m["steps"] != 12:  # 192 examples, batch 16 x accum 2 -> 6 steps/epoch, 2 epochs
        failures.append("expected 12 steps, got %d" % m["steps"])
    if not acc > 0.5:  # 3 balanced classes: chance is 1/3
        failures.append("validation accuracy %.3f is not above 0.5 after training" % acc)
    losses = [float(l.split("| loss ")[1].split(" ")[0]) for l in a.stderr.splitlines()
              if l.startswith("step ")]
    if len(losses) < 2 or not losses[-1] < losses[0]:
        failures.append("training loss did not go down: %s" % losses)

b_spec = job("resumed", "runs/b")
b1 = run("--stop-after", "5", b_spec)
if b1.returncode != 0 or "stopped after step 5" not in b1.stderr:
    failures.append("stopped run: rc %d" % b1.returncode)
b2 = run("--resume", b_spec)
if b2.returncode != 0:
    failures.append("resumed run failed: rc %d" % b2.returncode)
for f in ("params-00000012.safetensors", "optim-00000012.safetensors"):
    pa = os.path.join(work, "runs/a/checkpoint", f)
    pb = os.path.join(work, "runs/b/checkpoint", f)
    if not (os.path.exists(pa) and os.path.exists(pb)):
        failures.append("missing %s" % f)
    elif open(pa, "rb").read() != open(pb, "rb").read():
        failures.append("%s differs between the uninterrupted and the resumed run" % f)
    else:
        print("%s: bit-identical after stop at step 5 and resume" % f)

# SIGKILL mid-epoch, after a checkpoint: nothing but the checkpoint survives, and resuming from
# it gives the same final state. The kill waits until state.json names step >= 4 (each
# checkpoint is complete before state.json names it), so it lands while training goes on.
c_spec = job("killed", "runs/c", checkpoint_every=2)
state_c = os.path.join(work, "runs/c/checkpoint/state.json")
proc = subprocess.Popen([sherl, "train", c_spec], stderr=subprocess.PIPE, text=True)
killed_at = None
for line in proc.stderr:  # progress lines arrive every 2 steps: a natural polling point
    try:
        with open(state_c) as f:
            st = json.load(f)["step"]
    except (OSError, ValueError, KeyError):
        continue
    if st >= 4:
        killed_at = st
        proc.send_signal(signal.SIGKILL)
        break
proc.wait()
if killed_at is None or proc.returncode != -signal.SIGKILL:
    failures.append("the run to kill ended first (rc %s)" % proc.returncode)
else:
    c2 = run("--resume", c_spec)
    if c2.returncode != 0 or "resumed from the checkpoint at step" not in c2.stderr:
        failures.append("resume after SIGKILL failed: rc %d" % c2.returncode)
    for f in ("params-00000012.safetensors", "optim-00000012.safetensors"):
        pa = os.path.join(work, "runs/a/checkpoint", f)
        pc = os.path.join(work, "runs/c/checkpoint", f)
        if not os.path.exists(pc) or open(pa, "rb").read() != open(pc, "rb").read():
            failures.append("%s differs after SIGKILL at checkpoint step %d and resume" %
                            (f, killed_at))
        else:
            print("%s: bit-identical after SIGKILL (checkpoint step %d) and resume" %
                  (f, killed_at))

# older steps' files are removed once state.json names the new step
left = sorted(os.listdir(os.path.join(work, "runs/b/checkpoint")))
if left != ["optim-00000012.safetensors", "params-00000012.safetensors", "state.json"]:
    failures.append("checkpoint folder holds %s" % left)
state = json.load(open(os.path.join(work, "runs/b/checkpoint/state.json")))
if state.get("step") != 12 or state.get("labels") != ["noun.animal", "noun.food", "verb.motion"]:
    failures.append("state.json: step %r, labels %r" % (state.get("step"), state.get("labels")))

# bad spec: a clear error, exit code 2
bad = os.path.join(work, "bad.json")
with open(bad, "w") as f:
    json.dump({"backbone": model_dir, "data": {"train": "train.jsonl"}, "optim": {"lr": -1}}, f)
p = run(bad)
if p.returncode != 2 or "optim.lr" not in p.stderr:
    failures.append("bad optim.lr: rc %d, stderr %r" % (p.returncode, p.stderr[-300:]))

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
