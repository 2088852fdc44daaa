#!/usr/bin/env python3
"""sherld and sherlctl end to end on loopback, with the real all-MiniLM-L6-v2 and WordNet glosses:

  1. a real daemon on a free port with a temp state dir; sherlctl submits a small job (data
     uploaded), watches it to SUCCEEDED, downloads the artifact, runs predict; metrics sane;
  2. bad input: every kind of invalid request gets the right status code and a message naming
     the field, and the daemon keeps serving;
  3. a second daemon on the same port fails to start;
  4. crash safety: SIGKILL the daemon while a job runs (at 5 different points), restart it: the
     job resumes from its checkpoint and ends with the same final metrics and parameters as an
     uninterrupted run; no acknowledged event is lost;
  5. auth: with a tokens file, no token -> UNAUTHENTICATED; tenant B cannot see tenant A's job;
  6. SIGTERM drains and exits 0; a restart keeps the finished jobs;
  7. TLS: with tls-cert/tls-key, a client given the CA is served, a plaintext one is not;
  8. memory admission (a job that fits later waits in QUEUED; one that never fits is refused),
     SIGHUP reopens the log file, the systemd notify handshake.

  service_e2e.py SHERLD SHERLCTL MODEL_DIR WORK_DIR"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import sherld_harness
from sherld_harness import check, failures
from wordnet_data import write_split

sherld, sherlctl, model_dir, work = sys.argv[1:5]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
data = os.path.join(work, "data")
os.makedirs(data)
write_split(data, 32, 16)
ROOTS = (os.path.dirname(model_dir), data)


def Daemon(state, port=0, extra=(), env=None):
    return sherld_harness.Daemon(sherld, sherlctl, work, state, ROOTS, port, extra, env)


def write_job(name, **train):
    spec = {"name": name, "backbone": model_dir, "method": "sherl",
            "data": {"train": "data/train.jsonl", "validation": "data/val.jsonl",
                     "max_length": 32},
            "train": dict({"epochs": 2, "batch_size": 8, "log_every": 1, "seed": 3}, **train),
            "resources": {"threads": 1}}
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


# ---- 1. submit, watch, artifact, predict ----------------------------------------------------
d = Daemon(os.path.join(work, "state"))
p = d.ctl("health")
check(p.returncode == 0 and p.stdout.strip() == "SERVING", "health: %r" % p.stdout)
job = write_job("smoke")
p = d.ctl("submit", job, "--watch")
check(p.returncode == 0, "submit --watch: rc %d: %s" % (p.returncode, p.stderr[-500:]))
check("SUCCEEDED" in p.stderr and "uploaded" in p.stderr, "watch output: %s" % p.stderr[-300:])
jobs = d.ctl_json("list")
check(len(jobs) == 1 and jobs[0]["state"] == "SUCCEEDED", "list: %s" % jobs)
jid = jobs[0]["id"]
g = d.ctl_json("get", jid)
val = [e for e in g["evals"] if e["split"] == "validation"]
check(val and 0.33 < val[0]["accuracy"] <= 1.0, "validation metrics: %s" % g["evals"])
check(g["progress"]["step"] == g["progress"]["total_steps"] == 24, "progress: %s" % g["progress"])
check(g["plan"]["peak_bytes"] > g["plan"]["backbone_bytes"] > 80 << 20, "plan: %s" % g["plan"])
art = d.ctl_json("artifact", "get", jid, "-o", os.path.join(work, "adapter.safetensors"))
with open(art["path"] if os.path.isabs(art["path"]) else os.path.join(work, art["path"]), "rb") as f:
    header_len = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(header_len))
check("head.weight" in header and any(k.startswith("mtsa.") for k in header),
      "artifact tensors: %s" % sorted(header)[:5])
cfg = d.ctl_json("artifact", "get", jid, "--file", "adapter_config.json", "-o",
                 os.path.join(work, "adapter_config.json"))
with open(os.path.join(work, "adapter_config.json")) as f:
    ac = json.load(f)
check(ac["labels"] == ["noun.animal", "noun.food", "verb.motion"] and ac["method"] == "sherl",
      "adapter_config: %s" % ac)
preds = d.ctl_json("predict", jid, "a large cat of the jungle", "to run fast")
check(len(preds) == 2 and all(q["label"] in ac["labels"] for q in preds) and
      all(abs(sum(q["scores"]) - 1) < 1e-4 for q in preds), "predict: %s" % preds)
p = d.ctl("watch", jid)
check(p.returncode == 0 and "validation" in p.stdout and "SUCCEEDED" in p.stdout,
      "watch of a finished job ends with its metrics: %r" % p.stdout)
bbs = d.ctl_json("backbones", "load", model_dir)
check(len(bbs) == 1 and bbs[0]["loaded"] and bbs[0]["jobs"] == 0 and bbs[0]["bytes"] > 80 << 20,
      "backbones load: %s" % bbs)
listed = d.ctl_json("backbones", "list")
check([b["name"] for b in listed] == [os.path.basename(model_dir)], "backbones list: %s" % listed)
p = d.ctl("backbones", "unload", "no-such-backbone")
check(p.returncode == 1 and "NOT_FOUND" in p.stderr, "unload unknown: %r" % p.stderr)
p = d.ctl("backbones", "unload", os.path.basename(model_dir))
check(p.returncode == 0 and d.ctl_json("backbones", "list") == [], "unload: %r" % p.stderr)
print("1. submitted %s, SUCCEEDED, validation accuracy %.3f; artifact %d bytes; predict %s" %
      (jid, val[0]["accuracy"] if val else -1, art["bytes"], [q["label"] for q in preds]))

# ---- 2. bad input ---------------------------------------------------------------------------
def bad_job(name, mutate):
    spec = json.load(open(job))
    mutate(spec)
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f:
        f.write(spec if isinstance(spec, str) else json.dumps(spec))
    return path


def set_in(spec, keys, value):
    for k in keys[:-1]:
        spec = spec.setdefault(k, {})
    spec[keys[-1]] = value


outside = os.path.join(work, "outside.jsonl")
shutil.copy(os.path.join(data, "train.jsonl"), outside)
os.symlink(outside, os.path.join(data, "escape.jsonl"))
with open(os.path.join(data, "nolabel.jsonl"), "w") as f:
    f.write('{"text": "a gloss without a label"}\n')
CASES = [  # name, mutation, expected code, expected text
    ("negative_lr", lambda s: set_in(s, ["optim", "lr"], -1), "INVALID_ARGUMENT", "optim.lr"),
    ("zero_batch", lambda s: set_in(s, ["train", "batch_size"], 0), "INVALID_ARGUMENT",
     "train.batch_size"),
    ("unknown_method", lambda s: s.update(method="lora"), "INVALID_ARGUMENT", "method"),
    ("missing_backbone", lambda s: s.pop("backbone"), "INVALID_ARGUMENT", "backbone"),
    ("backbone_outside", lambda s: s.update(backbone="/usr/share"), "INVALID_ARGUMENT",
     "outside every data root"),
    ("data_symlink_escape", lambda s: set_in(s, ["data", "train"], "data/escape.jsonl"),
     "INVALID_ARGUMENT", "outside every data root"),
    ("data_dotdot_escape", lambda s: set_in(s, ["data", "train"], "data/../outside.jsonl"),
     "INVALID_ARGUMENT", "outside every data root"),
    ("label_missing", lambda s: set_in(s, ["data", "train"], os.path.join(data, "nolabel.jsonl")),
     "INVALID_ARGUMENT", "label"),
]
for name, mutate, code, text in CASES:
    # --no-upload: the daemon itself must resolve (and confine) the paths
    p = d.ctl("submit", "--no-upload", bad_job(name, mutate))
    check(p.returncode == 1 and code in p.stderr and text in p.stderr,
          "bad input %s: rc %d, %r" % (name, p.returncode, p.stderr.strip()[-300:]))
with open(os.path.join(work, "malformed.json"), "w") as f:
    f.write('{"name": "x", "backbone": ')
p = d.ctl("submit", os.path.join(work, "malformed.json"))
check(p.returncode == 2 and "malformed.json" in p.stderr, "malformed JSON: %r" % p.stderr)
p = d.ctl("get", "j-0000000000000000")
check(p.returncode == 1 and "NOT_FOUND" in p.stderr, "unknown id: %r" % p.stderr)
p = d.ctl("cancel", jid)
check(p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr, "cancel finished: %r" % p.stderr)
big = os.path.join(data, "big.jsonl")
with open(big, "w") as f:
    f.write(('{"text": "%s", "label": "a"}\n' % ("x" * 1000)) * 3000)  # ~3 MB
bad_job("oversized", lambda s: set_in(s, ["data", "train"], "data/big.jsonl"))
# submitted below, to a daemon started with a small upload limit
check(d.ctl("health").returncode == 0, "the daemon stopped serving after bad input")
print("2. bad-input matrix: %d cases answered with their codes; daemon still serving" %
      (len(CASES) + 3))

# ---- 3. a second daemon on the same port ----------------------------------------------------
port = int(d.addr.rsplit(":", 1)[1])
p2 = subprocess.run([sherld, "--listen", "127.0.0.1:%d" % port, "--state-dir",
                     os.path.join(work, "state2")], capture_output=True, text=True, timeout=60)
check(p2.returncode == 1 and "listen" in p2.stderr, "second daemon: rc %d %r" %
      (p2.returncode, p2.stderr[-200:]))
print("3. a second sherld on port %d exits %d: %s" % (port, p2.returncode,
                                                       p2.stderr.strip().splitlines()[-1][-80:]))

# ---- 6 (part). SIGTERM drains, restart keeps jobs ---------------------------------------------
rc = d.term()
check(rc == 0, "SIGTERM: exit %d" % rc)
d = Daemon(os.path.join(work, "state"), extra=("--max-upload-bytes", "1M"))
jobs = d.ctl_json("list")
check(len(jobs) == 1 and jobs[0]["id"] == jid and jobs[0]["state"] == "SUCCEEDED",
      "after restart: %s" % jobs)
p = d.ctl("submit", os.path.join(work, "oversized.json"))
check(p.returncode == 1 and "RESOURCE_EXHAUSTED" in p.stderr and "max-upload-bytes" in p.stderr,
      "oversized upload: %r" % p.stderr.strip()[-200:])
d.term()
print("6. SIGTERM: exit 0; after a restart the job is still SUCCEEDED; an upload over "
      "max-upload-bytes gets RESOURCE_EXHAUSTED")

# ---- 4. crash safety ------------------------------------------------------------------------
def final_state(dm, job_id):
    g = dm.ctl_json("get", job_id)
    dm.ctl_json("artifact", "get", job_id, "--file", "metrics.json", "-o",
                    os.path.join(work, job_id + "-metrics.json"))
    with open(os.path.join(work, job_id + "-metrics.json")) as f:
        metrics = json.load(f)
    dm.ctl_json("artifact", "get", job_id, "-o", os.path.join(work, job_id + ".safetensors"))
    with open(os.path.join(work, job_id + ".safetensors"), "rb") as f:
        params = f.read()
    return g, metrics, params


ref_state = os.path.join(work, "state-ref")
d = Daemon(ref_state)
ref_job = write_job("crash", checkpoint_every=3, epochs=3)
p = d.ctl("submit", ref_job, "--watch")
check(p.returncode == 0, "reference run: %s" % p.stderr[-300:])
rid = d.ctl_json("list")[0]["id"]
ref_g, ref_metrics, ref_params = final_state(d, rid)
d.term()
total = ref_g["progress"]["total_steps"]
for k, kill_at in enumerate([2, 5, 9, 14, 20]):  # progress events seen before the kill
    state = os.path.join(work, "state-kill-%d" % k)
    d = Daemon(state)
    sub = d.ctl_json("submit", ref_job)
    kid = sub["id"]
    watcher = d.watch_events(kid)
    acked = []
    for line in watcher.stdout:
        ev = json.loads(line)
        acked.append(ev["seq"])
        if "progress" in ev and ev["progress"]["step"] >= kill_at:
            d.kill()
            break
    watcher.wait()
    d = Daemon(state)
    p = d.ctl("watch", kid)
    check(p.returncode == 0, "kill %d: after restart the job did not succeed: %s" %
          (k, p.stderr[-300:]))
    g, metrics, params = final_state(d, kid)
    events = [json.loads(l) for l in d.ctl("--json", "watch", kid).stdout.splitlines()]
    seqs = [e["seq"] for e in events]
    check(seqs == list(range(1, len(seqs) + 1)) and set(acked) <= set(seqs),
          "kill %d: events lost or out of order: acked %s, now %s" % (k, acked[-3:], seqs[-3:]))
    check(g["resumes"] >= 1, "kill %d: resumes = %d" % (k, g["resumes"]))
    check(params == ref_params, "kill %d at step %d: final parameters differ from the "
          "uninterrupted run" % (k, kill_at))
    check(metrics["validation"] == ref_metrics["validation"],
          "kill %d: metrics %s vs %s" % (k, metrics.get("validation"), ref_metrics["validation"]))
    d.term()
print("4. SIGKILL at steps 2, 5, 9, 14, 20 of %d, restart: each job resumed and ended with "
      "bit-identical parameters and the same validation metrics (accuracy %.4f)" %
      (total, ref_metrics["validation"]["accuracy"]))

# ---- 5. auth --------------------------------------------------------------------------------
tokens = os.path.join(work, "tokens")
with open(tokens, "w") as f:
    f.write("tenant-a-token-0123456789 alice\ntenant-b-token-0123456789 bob\n")
os.chmod(tokens, 0o600)
d = Daemon(os.path.join(work, "state-auth"), extra=("--tokens-file", tokens))
p = d.ctl("list")
check(p.returncode == 1 and "UNAUTHENTICATED" in p.stderr, "no token: %r" % p.stderr)
p = d.ctl("list", token="wrong-token-0123456789")
check(p.returncode == 1 and "UNAUTHENTICATED" in p.stderr, "bad token: %r" % p.stderr)
sub = d.ctl_json("submit", job, token="tenant-a-token-0123456789")
aid = sub["id"]
for cmd in (["get", aid], ["watch", aid], ["cancel", aid], ["artifact", "get", aid, "-o",
                                                            os.path.join(work, "stolen")]):
    p = d.ctl(*cmd, token="tenant-b-token-0123456789")
    check(p.returncode == 1 and "NOT_FOUND" in p.stderr,
          "tenant b %s: rc %d %r" % (cmd[0], p.returncode, p.stderr.strip()))
check(d.ctl_json("list", token="tenant-b-token-0123456789") == [], "tenant b lists a's job")
check(len(d.ctl_json("list", token="tenant-a-token-0123456789")) == 1, "tenant a's list")
p = d.ctl("watch", aid, token="tenant-a-token-0123456789")
check(p.returncode == 0, "tenant a's job: %s" % p.stderr[-200:])
d.term()
print("5. auth: no or bad token UNAUTHENTICATED; tenant b gets NOT_FOUND for tenant a's job")

# ---- 8. admission, log reopening, systemd notify ------------------------------------------------
import socket  # noqa: E402
peak, own_bytes = g["plan"]["peak_bytes"], g["plan"]["job_bytes"]
notify = os.path.join(work, "notify.sock")
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(notify)
sock.settimeout(60)
logfile = os.path.join(work, "sherld-file.log")
# room for one job (backbone + its arenas) and half of a second one's arenas (the backbone is
# shared): the second waits in QUEUED though two may run at a time
d = Daemon(os.path.join(work, "state-budget"),
           extra=("--memory-budget", str(int(peak + own_bytes / 2)), "--max-concurrent-jobs", "2",
                  "--log-file", logfile),
           env=dict(os.environ, NOTIFY_SOCKET=notify))
check(sock.recv(4096).decode().startswith("READY=1"), "sd_notify READY=1")
long_job = write_job("long", epochs=6)
first = d.ctl_json("submit", long_job)["id"]
w = d.watch_events(first)
for line in w.stdout:  # the first job is running once it reports progress
    if "progress" in json.loads(line):
        break
second = d.ctl_json("submit", long_job)["id"]
st2 = d.ctl_json("get", second)["state"]
check(st2 == "QUEUED", "second job admitted beyond the memory budget: %s" % st2)
w.stdout.read()
w.wait()
p = d.ctl("watch", second)
check(p.returncode == 0, "the queued job did not run after the first: %s" % p.stderr[-200:])
os.rename(logfile, logfile + ".1")
d.p.send_signal(signal.SIGHUP)
# the reopened file is the effect to wait for (signals reach the loop asynchronously; a SIGTERM
# sent right behind could overtake this one)
reopened = False
for _ in range(600):
    if os.path.exists(logfile) and "SIGHUP: log reopened" in open(logfile).read():
        reopened = True
        break
    time.sleep(0.05)
check(reopened, "SIGHUP did not reopen the log file within 30 s")
d.term()
check("STOPPING=1" in sock.recv(4096).decode(), "sd_notify STOPPING=1")
d = Daemon(os.path.join(work, "state-small"), extra=("--memory-budget", str(int(peak * 0.5))))
p = d.ctl("submit", job)
check(p.returncode == 1 and "RESOURCE_EXHAUSTED" in p.stderr and "memory budget" in p.stderr,
      "a job over the budget: %r" % p.stderr.strip()[-200:])
d.term()
print("8. admission: with room for one plan the second job waited in QUEUED, then ran; a job "
      "over the budget gets RESOURCE_EXHAUSTED; SIGHUP reopened the log; sd_notify READY and "
      "STOPPING")

# ---- 7. TLS ---------------------------------------------------------------------------------
cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"], capture_output=True, text=True)
if check(p.returncode == 0, "openssl: %s" % p.stderr[-200:]):
    d = Daemon(os.path.join(work, "state-tls"), extra=("--tls-cert", cert, "--tls-key", key))
    p = d.ctl("--ca", cert, "health")
    check(p.returncode == 0 and p.stdout.strip() == "SERVING", "TLS health: %r" % p.stderr)
    p = d.ctl("--timeout", "5", "health")
    check(p.returncode != 0, "a plaintext client reached the TLS daemon")
    d.term()
    print("7. TLS: a client with the CA gets SERVING; a plaintext client is refused")

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
