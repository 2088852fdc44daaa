#!/usr/bin/env python3
"""A second real task from a Debian package: quotes of `fortunes` labelled with their category
(the file they come from, e.g. computers, food, law). Categories with fewer than --min-count
quotes and the ASCII-art ones are dropped. Writes train/validation/test JSONL
({"text": ..., "label": ...}) with a fixed, seeded split stratified by label, and prints the
class counts.

  fortunes_categories.py OUT_DIR [--min-count 50] [--max-per-class N] [--split 0.8,0.1,0.1]
                                 [--seed 17] [--max-chars 600]
"""
import argparse
import json
import os
import random
import sys

FORTUNES = "/usr/share/games/fortunes"
SKIP = {"art", "ascii-art"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--min-count", type=int, default=50)
    ap.add_argument("--max-per-class", type=int, default=0)
    ap.add_argument("--split", default="0.8,0.1,0.1")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--max-chars", type=int, default=600, help="drop longer quotes")
    a = ap.parse_args()
    if not os.path.isdir(FORTUNES):
        sys.exit("fortunes not found in %s: install it with `apt-get install fortunes`" % FORTUNES)
    fr = [float(x) for x in a.split.split(",")]
    if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
        sys.exit("--split must be three non-negative fractions summing to 1, got %r" % a.split)
    by = {}
    for name in sorted(os.listdir(FORTUNES)):
        path = os.path.join(FORTUNES, name)
        if "." in name or name in SKIP or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            quotes = [" ".join(q.split()) for q in f.read().split("\n%\n")]
        quotes = [q for q in quotes if q and q != "%" and len(q) <= a.max_chars]
        if len(quotes) >= a.min_count:
            by[name] = quotes
    if len(by) < 2:
        sys.exit("fewer than 2 categories with %d quotes or more" % a.min_count)
    rng = random.Random(a.seed)
    splits = {"train": [], "validation": [], "test": []}
    print("%-14s %6s %6s %6s" % ("category", "train", "val", "test"))
    for label, quotes in sorted(by.items()):
        rng.shuffle(quotes)
        if a.max_per_class:
            quotes = quotes[:a.max_per_class]
        n = len(quotes)
        n_train, n_val = int(n * fr[0]), int(n * fr[1])
        parts = (quotes[:n_train], quotes[n_train:n_train + n_val], quotes[n_train + n_val:])
        for key, part in zip(splits, parts):
            splits[key] += [{"text": q, "label": label} for q in part]
        print("%-14s %6d %6d %6d" % (label, len(parts[0]), len(parts[1]), len(parts[2])))
    os.makedirs(a.out_dir, exist_ok=True)
    for key, rows in splits.items():
        rng.shuffle(rows)
        with open(os.path.join(a.out_dir, key + ".jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print("%d categories; %d / %d / %d examples in %s" % (
        len(by), len(splits["train"]), len(splits["validation"]), len(splits["test"]), a.out_dir))


if __name__ == "__main__":
    main()
