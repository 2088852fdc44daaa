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
