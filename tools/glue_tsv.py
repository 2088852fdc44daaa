#!/usr/bin/env python3
"""Bring your own data: a GLUE-format TSV (a header line, then one example per line) checked and
rewritten as the JSONL that sherl jobs read, with the columns renamed to what a job spec names
(text or text_a/text_b, label). Reports the label counts and every bad line (file:line: reason).

  glue_tsv.py IN.tsv OUT.jsonl --text COL [--text-b COL] --label COL [--regression]

Example (GLUE SST-2): glue_tsv.py SST-2/train.tsv train.jsonl --text sentence --label label
"""
import argparse
import collections
import csv
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--text", required=True, help="column of the (first) sentence")
    ap.add_argument("--text-b", help="column of the second sentence (pair tasks)")
    ap.add_argument("--label", required=True, help="label column")
    ap.add_argument("--regression", action="store_true", help="labels are numbers")
    a = ap.parse_args()
    csv.field_size_limit(1 << 24)
    bad, counts, rows = 0, collections.Counter(), []
    with open(a.inp, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if not header:
            sys.exit("%s: empty file" % a.inp)
        cols = [a.text, a.label] + ([a.text_b] if a.text_b else [])
        for c in cols:
            if c not in header:
                sys.exit("%s:1: no column %r (header: %s)" % (a.inp, c, ", ".join(header)))
        idx = {c: header.index(c) for c in cols}
        for n, rec in enumerate(reader, start=2):
            if len(rec) != len(header):
                print("%s:%d: %d fields, the header has %d" % (a.inp, n, len(rec), len(header)),
                      file=sys.stderr)
                bad += 1
                continue
            label = rec[idx[a.label]]
            if a.regression:
                try:
                    label = float(label)
                except ValueError:
                    print("%s:%d: label %r is not a number" % (a.inp, n, label), file=sys.stderr)
                    bad += 1
                    continue
            row = {"text_a" if a.text_b else "text": rec[idx[a.text]], "label": label}
            if a.text_b:
                row["text_b"] = rec[idx[a.text_b]]
            rows.append(row)
            counts[label if not a.regression else "value"] += 1
    with open(a.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    for label, c in sorted(counts.items(), key=lambda kv: str(kv[0])):
        print("%-20s %d" % (label, c))
    print("%d examples written to %s, %d bad lines skipped" % (len(rows), a.out, bad))


if __name__ == "__main__":
    main()
