"""Shared by the service tests: a real sherld on a free loopback port, sherlctl against it, and
failure bookkeeping."""
import json
import os
import signal
import subprocess

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)
    return cond


class Daemon:
    """sherld with a state dir, the model's folder and `data` as data roots, on 127.0.0.1:0.
    Waits for its "listening on" line; addr is what it bound."""

    def __init__(self, sherld, sherlctl, work, state, roots, port=0, extra=(), env=None):
        self.sherlctl, self.work = sherlctl, work
        args = [sherld, "--listen", "127.0.0.1:%d" % port, "--state-dir", state,
                "--data-roots", ":".join(roots), "--drain-timeout", "20", *extra]
        self.log = open(os.path.join(work, "sherld-%d.log" % len(os.listdir(work))), "w")
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                  env=env)
        line = self.p.stdout.readline()  # "sherld: listening on 127.0.0.1:PORT", or EOF
        if not line.startswith("sherld: listening on "):
            raise RuntimeError("sherld did not start: %r (see %s)" % (line, self.log.name))
        self.addr = line.split()[-1]
        self.env = dict(os.environ, SHERL_ADDR=self.addr)
        self.env.pop("SHERL_TOKEN", None)

    def ctl(self, *args, token=None, timeout=180):
        env = dict(self.env, SHERL_TOKEN=token) if token else self.env
        return subprocess.run([self.sherlctl, *args], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=self.work)

    def ctl_json(self, *args, **kw):
        p = self.ctl("--json", *args, **kw)
        if p.returncode != 0:
            raise RuntimeError("sherlctl %s: rc %d: %s" % (" ".join(args), p.returncode, p.stderr))
        return json.loads(p.stdout) if p.stdout.strip() else None

    def watch_events(self, job_id):
        """A `sherlctl --json watch` process whose stdout yields one event (JSON) per line."""
        return subprocess.Popen([self.sherlctl, "--json", "watch", job_id], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=self.env)

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def term(self):
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=60)


def write_sherl_job(work, data, model_dir, job_name, epochs, seed, **resources):
    """A small SHERL job's spec file in work (the split in data, 32 tokens, batch 8, one thread
    unless resources say otherwise); its path."""
    spec = {"name": job_name, "backbone": model_dir, "method": "sherl",
            "data": {"train": os.path.join(data, "train.jsonl"),
                     "validation": os.path.join(data, "val.jsonl"), "max_length": 32},
            "train": {"epochs": epochs, "batch_size": 8, "log_every": 1, "seed": seed},
            "resources": dict({"threads": 1}, **resources)}
    path = os.path.join(work, job_name + ".json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


def node_adds_up(node):
    """Every device's planned bytes in a GetNodeStatus are the sum of its backbones' and jobs'."""
    ok = True
    for dev in node["devices"]:
        total = sum(u["bytes"] for u in dev["backbones"] + dev["jobs"])
        ok &= check(dev["planned_bytes"] == total,
                    "%s: planned %d != backbones + jobs %d" % (dev["name"], dev["planned_bytes"],
                                                               total))
    return ok
