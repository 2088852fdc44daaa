#!/usr/bin/env python3
"""WordNet supersense classification data from Debian's wordnet-base: each synset's gloss is the
text, its lexicographer file (one of 45, e.g. noun.animal) the label. Writes train/validation/test
JSONL ({"text": ..., "label": ...}) with a fixed, seeded split stratified by label, and prints the
class counts.

  wordnet_supersenses.py OUT_DIR [--labels noun.animal,noun.food,...] [--max-per-class N]
                                 [--split 0.8,0.1,0.1] [--seed 17]
"""
import argparse
import collections
import json
import os
import random
import sys

WORDNET = "/usr/share/wordnet"
# lexnames(5WN): file number -> name
LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute
noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group
noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession
noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time
verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption
verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession verb.social
verb.stative verb.weather adj.ppl""".split()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--labels", help="comma-separated supersenses to keep (default: all 45)")
    ap.add_argument("--max-per-class", type=int, default=0, help="subsample each class (0: all)")
    ap.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test fractions")
    ap.add_argument("--seed", type=int, default=17)
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(WORDNET, "data.noun")):
        sys.exit("WordNet not found in %s: install it with `apt-get install wordnet-base`" % WORDNET)
    fractions = [float(x) for x in a.split.split(",")]
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        sys.exit("--split must be three non-negative fractions summing to 1, got %r" % a.split)
    keep = set(a.labels.split(",")) if a.labels else set(LEXNAMES)
    unknown = keep - set(LEXNAMES)
    if unknown:
        sys.exit("unknown supersense(s) %s; known: %s" % (sorted(unknown), " ".join(LEXNAMES)))
    by_label = collections.defaultdict(list)
    for pos in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(WORDNET, "data." + pos), encoding="utf-8") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue
                label = LEXNAMES[int(line.split(" ", 2)[1])]
                if label in keep:
                    by_label[label].append(line.split(" | ", 1)[1].strip())
    rng = random.Random(a.seed)
    splits = {"train": [], "validation": [], "test": []}
    print("%-22s %7s %7s %7s" % ("label", "train", "val", "test"))
    for label in sorted(by_label):
        glosses = sorted(by_label[label])
        rng.shuffle(glosses)
        if a.max_per_class:
            glosses = glosses[:a.max_per_class]
        n = len(glosses)
        n_train = int(round(n * fractions[0]))
        n_val = int(round(n * fractions[1]))
        parts = (glosses[:n_train], glosses[n_train:n_train + n_val], glosses[n_train + n_val:])
        for name, part in zip(splits, parts):
            splits[name] += [{"text": g, "label": label} for g in part]
        print("%-22s %7d %7d %7d" % (label, *map(len, parts)))
    os.makedirs(a.out_dir, exist_ok=True)
    for name, rows in splits.items():
        rng.shuffle(rows)
        with open(os.path.join(a.out_dir, name + ".jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print("%d classes; %d / %d / %d examples in %s/{train,validation,test}.jsonl" % (
        len(by_label), len(splits["train"]), len(splits["validation"]), len(splits["test"]),
        a.out_dir))


if __name__ == "__main__":
    main()
