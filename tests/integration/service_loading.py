#!/usr/bin/env python3
"""A backbone load in progress holds nothing else up. The daemon runs with SHERL_TEST_LOAD_GATE,
a folder of FIFOs, one per model folder's name: a load of that folder waits there once its
loading entry is in the registry, until this test writes to it. So a load is held in progress
for as long as the test needs, with no guess at timing.

  1. While a LoadBackbone of MODEL is held: GetNodeStatus and ListBackbones answer, listing it
     as loading (not loaded, its planned bytes already counted, the node adding up);
     UnloadBackbone of it is FAILED_PRECONDITION "still loading"; a second LoadBackbone of it and
     a job on it wait for that load, and a second job waiting on it is CANCELLED at once; and a
     LoadBackbone of another folder starts its own load meanwhile (it reaches the gate) and
     fails on its own: its model file is not safetensors.
  2. Once released: both loads of MODEL return the one copy, the job runs on it to SUCCEEDED,
     and the registry holds one entry, loaded.
  3. A load that fails hands over to the one waiting for it (known to wait: the daemon's hook
     opens "broken.waiting"): that one takes the loading entry over and loads (it reaches the
     gate again, the entry listed all along) and reports its own error; nothing is left.
  4. Predict's memory is admitted as a job's: while its backbone load is held, GetNodeStatus
     lists "predict:<job id>" beside the backbone; under a host budget 1 MiB short of both it is
     RESOURCE_EXHAUSTED with the numbers, 1 MiB over it is served.
  5. A shutdown stops a job waiting for a load at once (QUEUED, with the reason) while the load
     itself runs on; after the restart the job runs to SUCCEEDED.

Before the loads ran outside the registry's lock, step 1 hung at its first GetNodeStatus.

  service_loading.py SHERLD SHERLCTL MODEL_DIR WORK_DIR"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

from sherld_harness import Daemon, check, failures, node_adds_up, write_sherl_job
from wordnet_data import write_split

sherld, sherlctl, model_dir, work = sys.argv[1:5]
shutil.rmtree(work, ignore_errors=True)
data = os.path.join(work, "data")
os.makedirs(data)
write_split(data, 32, 16)
gates = os.path.join(work, "load-gates")
os.makedirs(gates)
# a copy of the model's small files whose model.safetensors is not one
models = os.path.join(work, "models")
broken = os.path.join(models, "broken")
os.makedirs(broken)
for f in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(os.path.join(model_dir, f), broken)
with open(os.path.join(broken, "model.safetensors"), "wb") as f:
    f.write(b"\xff" * 64)
for folder in (model_dir, broken):  # every load of these two waits at its gate
    os.mkfifo(os.path.join(gates, os.path.basename(folder)))
os.mkfifo(os.path.join(gates, "broken.waiting"))  # and a wait for a load of broken says so

d = Daemon(sherld, sherlctl, work, os.path.join(work, "state"),
           (os.path.dirname(model_dir), data, models),
           env=dict(os.environ, SHERL_TEST_LOAD_GATE=gates), extra=("--max-concurrent-jobs", "2"))
ctl = d.ctl_json
TIMEOUT = 120


def at_gate(folder):
    """Waits (at most TIMEOUT s) for a load of folder to reach its gate: opening the FIFO's
    write end returns once the daemon opened its read end. The write end, or None."""
    gate = os.path.join(gates, os.path.basename(folder))
    box = []
    t = threading.Thread(target=lambda: box.append(os.open(gate, os.O_WRONLY)), daemon=True)
    t.start()
    t.join(TIMEOUT)
    return box[0] if box else None


def waiting(folder):
    """Waits (at most TIMEOUT s) until an acquire of folder begins to wait for another's load:
    it opens the write end of "<name>.waiting" first (the daemon's test hook)."""
    fifo = os.path.join(gates, os.path.basename(folder) + ".waiting")
    box = []
    t = threading.Thread(target=lambda: box.append(os.open(fifo, os.O_RDONLY)), daemon=True)
    t.start()
    t.join(TIMEOUT)
    if box:
        os.close(box[0])
    return bool(box)


def release(fd):
    os.write(fd, b"x")
    os.close(fd)


def load(path):
    return subprocess.Popen([sherlctl, "--json", "backbones", "load", path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=d.env)


def answered(*args):
    """sherlctl --json ARGS, or None when it does not answer within 60 s."""
    try:
        return ctl(*args, timeout=60)
    except subprocess.TimeoutExpired:
        return None


def watch_for(job_id, pred):
    """Starts reading the job's events as they come; the returned function waits (at most
    TIMEOUT s) and says whether one satisfied pred. Its `first` is set once the stream gave its
    first event (the watch is established)."""
    w = d.watch_events(job_id)
    seen = []
    first = threading.Event()

    def read():
        ok = False
        for x in w.stdout:
            first.set()
            if x.strip() and pred(json.loads(x)):
                ok = True
                break
        seen.append(ok)
        first.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()

    def result():
        t.join(TIMEOUT)
        w.kill()
        t.join(10)
        w.wait()
        return seen == [True]
    result.first = first
    return result


def wait_event(job_id, pred):
    return watch_for(job_id, pred)()


def wait_state(job_id, state):
    return wait_event(job_id, lambda e: e.get("state") == state)


def finished(p):
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


def give_up(what):
    check(False, what)
    d.kill()
    sys.exit(1)


# ---- 1. a load held in progress ----------------------------------------------------------------
a = load(model_dir)
fa = at_gate(model_dir)
if fa is None:
    give_up("the first LoadBackbone never reached the load gate")
node = answered("node")
if node is None:
    give_up("GetNodeStatus did not answer while a backbone loaded")
listed = answered("backbones", "list")
check(listed is not None and len(listed) == 1 and listed[0]["path"] == model_dir and
      not listed[0]["loaded"] and listed[0]["bytes"] > 0 and listed[0]["layers"] == 6 and
      listed[0]["hidden"] == 384 and listed[0]["device"] == "cpu",
      "ListBackbones while loading: %s" % listed)
cpu = [x for x in node["devices"] if x["name"] == "cpu"][0]
check([u["id"] for u in cpu["backbones"]] == [model_dir] and
      cpu["backbones"][0]["bytes"] == (listed or [{}])[0].get("bytes"),
      "the loading backbone in the node's cpu device: %s" % cpu["backbones"])
node_adds_up(node)
p = d.ctl("backbones", "unload", os.path.basename(model_dir), timeout=60)
check(p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr and "still loading" in p.stderr,
      "unload while loading: rc %d %r" % (p.returncode, p.stderr.strip()))
b = load(model_dir)  # waits for a's load: it must not make a second copy
job = ctl("submit", "--no-upload", write_sherl_job(work, data, model_dir, "on-loading", 1, 3),
          timeout=60)["id"]
# a job waiting for the held load is cancelled at once, not when the load ends
quit_id = ctl("submit", "--no-upload", write_sherl_job(work, data, model_dir, "cancelled", 1, 3),
              timeout=60)["id"]
saw_loading = wait_state(quit_id, "LOADING")
ctl("cancel", quit_id, timeout=60)
try:
    w = d.ctl("--json", "watch", quit_id, timeout=60)  # ends at the job's final state
    quit_states = [json.loads(x).get("state") for x in w.stdout.splitlines() if x.strip()]
except subprocess.TimeoutExpired:
    quit_states = ["(no final state within 60 s)"]
check(saw_loading and [x for x in quit_states if x][-1:] == ["CANCELLED"],
      "a job cancelled while it waited for the load: LOADING seen %s, states %s" %
      (saw_loading, quit_states))
c = load(broken)
fc = at_gate(broken)
if fc is None:
    give_up("a LoadBackbone of another folder did not start while the first one loaded")
check(len(answered("backbones", "list") or []) == 2, "two loading entries")
release(fc)
rc, out, err = finished(c)
check(rc == 1 and "model.safetensors" in err, "the broken load: rc %d %r" % (rc, err.strip()))
check(b.poll() is None and a.poll() is None, "a load of the held backbone returned early")
print("1. while a load was held: node status and the list answered (loading, %d bytes "
      "counted), unload refused, a job waiting on it cancelled at once, another folder's load "
      "ran and failed: %s" % (listed[0]["bytes"] if listed else -1, err.strip()[-120:]))

# ---- 2. released: one copy for both loads and the job ------------------------------------------
release(fa)
got = []
for p in (a, b):
    rc, out, err = finished(p)
    check(rc == 0, "a load of the held backbone: rc %d %r" % (rc, err.strip()))
    got += json.loads(out) if rc == 0 else []
check(len(got) == 2 and all(x["loaded"] and x["path"] == model_dir for x in got),
      "both loads returned the loaded copy: %s" % got)
w = d.ctl("--json", "watch", job, timeout=600)
events = [json.loads(x) for x in w.stdout.splitlines() if x.strip()]
states = [e.get("state") for e in events if e.get("state")]
check(states[-1:] == ["SUCCEEDED"], "the job on the loading backbone: %s" % states)
listed = ctl("backbones", "list")
check(len(listed) == 1 and listed[0]["loaded"] and listed[0]["path"] == model_dir,
      "one loaded copy: %s" % listed)
node_adds_up(ctl("node"))
print("2. released: both loads returned one copy; the job waiting on it %s" % states[-1:])

# ---- 3. a failed load hands over to its waiter -------------------------------------------------
first = load(broken)
f1 = at_gate(broken)
if f1 is None:
    give_up("the broken load did not reach the gate")
second = load(broken)
if not waiting(broken):  # second waits for first's load before first is let go
    give_up("the second load of the broken folder never waited for the first")
release(f1)
rc1, _, err1 = finished(first)
f2 = at_gate(broken)  # the waiter takes the entry over and loads it itself
if f2 is None:
    give_up("the load waiting on a failed one did not load it itself")
held = ctl("backbones", "list")
want = sorted([(broken, False), (model_dir, True)])
check(sorted((x["path"], x["loaded"]) for x in held) == want,
      "the taken-over load in the list: %s" % held)
release(f2)
rc2, _, err2 = finished(second)
check(rc1 == 1 and rc2 == 1 and "model.safetensors" in err1 and "model.safetensors" in err2,
      "both broken loads failed on their own: %r / %r" % (err1.strip(), err2.strip()))
listed = ctl("backbones", "list")
check([x["path"] for x in listed] == [model_dir], "registry after the failures: %s" % listed)
print("3. a failed load handed over to its waiter, which failed on its own")

# ---- 4. Predict's memory is admitted and counted as a job's -----------------------------------
check(not ctl("backbones", "unload", os.path.basename(model_dir))[0]["loaded"], "unload")
texts = ["a large cat of the jungle", "to run fast"]
pred = subprocess.Popen([sherlctl, "--json", "predict", job, *texts], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, env=d.env)
fp = at_gate(model_dir)  # Predict loads the backbone: held there, its reservation is visible
if fp is None:
    give_up("Predict's backbone load never reached the gate")
node = answered("node")
cpu = [x for x in node["devices"] if x["name"] == "cpu"][0] if node else {"jobs": []}
mine = [u for u in cpu["jobs"] if u["id"] == "predict:" + job]
check(len(mine) == 1 and mine[0]["bytes"] > 0, "Predict's use in the node: %s" % cpu["jobs"])
if node:
    node_adds_up(node)
backbone_bytes = sum(b["bytes"] for b in cpu.get("backbones", []))
predict_bytes = mine[0]["bytes"] if mine else 0
release(fp)
rc, out, err = finished(pred)
check(rc == 0 and len(json.loads(out)) == 2, "Predict: rc %d %r" % (rc, err.strip()))
check(ctl("node")["devices"][0]["jobs"] == [], "Predict's use outlived the call")
check(d.term() == 0, "sherld exit code")

# The same Predict under a host budget 1 MiB short of the backbone and its own bytes, then 1 MiB
# over: refused with the numbers, then served (no gate: the FIFOs go).
for folder in (model_dir, broken):
    os.unlink(os.path.join(gates, os.path.basename(folder)))
need = backbone_bytes + predict_bytes
for budget, ok in ((need - (1 << 20), False), (need + (1 << 20), True)):
    d = Daemon(sherld, sherlctl, work, os.path.join(work, "state"),
               (os.path.dirname(model_dir), data, models), extra=("--memory-budget", str(budget)))
    p = d.ctl("--json", "predict", job, *texts, timeout=300)
    if ok:
        check(p.returncode == 0 and len(json.loads(p.stdout)) == 2,
              "Predict within a budget of %d: rc %d %r" % (budget, p.returncode, p.stderr.strip()))
    else:
        check(p.returncode == 1 and "RESOURCE_EXHAUSTED" in p.stderr and
              "Predict needs %d MiB of cpu memory" % -(-need >> 20) in p.stderr,
              "Predict over a budget of %d: rc %d %r" % (budget, p.returncode, p.stderr.strip()))
    check(d.term() == 0, "sherld exit code")
print("4. Predict held %d bytes besides the backbone's %d while it ran; refused 1 MiB short of "
      "both, served 1 MiB over" % (predict_bytes, backbone_bytes))

# ---- 5. a shutdown stops a job waiting for a load; it runs after the restart --------------------
gate = os.path.join(gates, os.path.basename(model_dir))
os.mkfifo(gate)
d = Daemon(sherld, sherlctl, work, os.path.join(work, "state"),
           (os.path.dirname(model_dir), data, models),
           env=dict(os.environ, SHERL_TEST_LOAD_GATE=gates), extra=("--max-concurrent-jobs", "2"))
ctl = d.ctl_json
a = load(model_dir)
fa = at_gate(model_dir)
if fa is None:
    give_up("the load before the shutdown never reached the gate")
waiting = ctl("submit", "--no-upload", write_sherl_job(work, data, model_dir, "drained", 1, 3),
              timeout=60)["id"]
check(wait_state(waiting, "LOADING"), "the job on the held backbone never reached LOADING")
# the drain stops the waiting job at once (the daemon then waits for the LoadBackbone call)
stopped = watch_for(waiting, lambda e: "shutdown before training began" in
                    e.get("message", ""))
check(stopped.first.wait(TIMEOUT), "the watch of the waiting job never answered")
d.p.send_signal(signal.SIGTERM)
check(stopped(), "the drain did not stop the job waiting for the load")
release(fa)
rc = d.p.wait(timeout=300)
finished(a)
check(rc == 0, "sherld exit code after the drain: %d" % rc)
os.unlink(gate)
d = Daemon(sherld, sherlctl, work, os.path.join(work, "state"),
           (os.path.dirname(model_dir), data, models))
w = d.ctl("--json", "watch", waiting, timeout=600)
said = [json.loads(x) for x in w.stdout.splitlines() if x.strip()]
states = [e.get("state") for e in said if e.get("state")]
msgs = [e.get("message", "") for e in said]
check(any("shutdown before training began" in m for m in msgs) and
      states[-1:] == ["SUCCEEDED"] and states.count("QUEUED") >= 2,
      "the job drained while it waited: states %s, messages %s" % (states, msgs))
check(d.term() == 0, "sherld exit code")
print("5. a shutdown stopped the job waiting for a load (QUEUED, with the reason); after the "
      "restart it %s" % states[-1:])

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
