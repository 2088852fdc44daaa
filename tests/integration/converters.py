#!/usr/bin/env python3
"""The data converters in tools/: fortunes (Debian package) -> categories, and a GLUE-format
TSV -> JSONL (single sentences, pairs, regression, bad lines reported with file:line).

  converters.py TOOLS_DIR WORK_DIR"""
import json
import os
import shutil
import subprocess
import sys

tools, work = sys.argv[1:3]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
failures = []


def run(*args):
    return subprocess.run(["/usr/bin/python3", *args], capture_output=True, text=True)


def load(path):
    return [json.loads(l) for l in open(path, encoding="utf-8")]


p = run(os.path.join(tools, "fortunes_categories.py"), os.path.join(work, "fortunes"),
        "--min-count", "50", "--max-per-class", "40")
if p.returncode:
    failures.append("fortunes: %s" % p.stderr)
else:
    splits = {k: load(os.path.join(work, "fortunes", k + ".jsonl"))
              for k in ("train", "validation", "test")}
    labels = {r["label"] for r in splits["train"]}
    if len(labels) < 10 or labels & {"art", "ascii-art"}:
        failures.append("fortunes labels: %s" % sorted(labels))
    per = {l: sum(r["label"] == l for r in splits["train"]) for l in labels}
    if set(per.values()) != {32}:  # 40 per class, 80% to train: stratified
        failures.append("fortunes split not stratified: %s" % per)
    texts = [r["text"] for k in splits for r in splits[k]]
    if len(texts) != len(set(texts)) or any(not t for t in texts):
        failures.append("fortunes: empty or repeated quotes across splits")

tsv = os.path.join(work, "in.tsv")
with open(tsv, "w") as f:
    f.write("id\tsentence1\tsentence2\tscore\n1\tA man plays.\tA man is playing.\t4.5\n"
            "2\tA cat.\tStocks fell.\t0.2\n3\tbroken line\n4\tA dog.\tA puppy.\tmany\n")
p = run(os.path.join(tools, "glue_tsv.py"), tsv, os.path.join(work, "pairs.jsonl"),
        "--text", "sentence1", "--text-b", "sentence2", "--label", "score", "--regression")
rows = load(os.path.join(work, "pairs.jsonl")) if p.returncode == 0 else []
if rows != [{"text_a": "A man plays.", "label": 4.5, "text_b": "A man is playing."},
            {"text_a": "A cat.", "label": 0.2, "text_b": "Stocks fell."}]:
    failures.append("glue pairs: %s / %s" % (rows, p.stderr))
if "in.tsv:4: 2 fields" not in p.stderr or "in.tsv:5: label 'many' is not a number" not in p.stderr:
    failures.append("glue bad lines not reported: %r" % p.stderr)
p = run(os.path.join(tools, "glue_tsv.py"), tsv, os.path.join(work, "x.jsonl"), "--text",
        "sentence", "--label", "score")
if p.returncode == 0 or "no column 'sentence'" not in p.stderr:
    failures.append("glue missing column: %r" % p.stderr)
for f in failures:
    print("FAIL:", f)
print("fortunes and GLUE TSV converters: %s" % ("ok" if not failures else "%d failures" % len(failures)))
sys.exit(1 if failures else 0)
