"""Real labelled data for the integration tests: WordNet glosses (Debian wordnet-base) labelled
with their lexicographer file (supersense), a fixed seeded split, written as JSONL."""
import json
import os
import random

# lexicographer file number -> name (WordNet's lexnames)
LEX = {5: "noun.animal", 13: "noun.food", 38: "verb.motion"}


def glosses_by_label(lex=LEX):
    by_label = {name: [] for name in lex.values()}
    for pos in ("noun", "verb"):
        with open("/usr/share/wordnet/data." + pos, encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                fields = line.split(" ", 3)
                n = int(fields[1])
                if n in lex and " | " in line:
                    by_label[lex[n]].append(line.split(" | ", 1)[1].strip())
    return by_label


def write_split(work, n_train, n_val, lex=LEX, seed=7):
    """Writes work/train.jsonl (n_train per class, shuffled) and work/val.jsonl (n_val per
    class)."""
    rng = random.Random(seed)
    train, val = [], []
    for label, glosses in sorted(glosses_by_label(lex).items()):
        rng.shuffle(glosses)
        train += [{"text": g, "label": label} for g in glosses[:n_train]]
        val += [{"text": g, "label": label} for g in glosses[n_train:n_train + n_val]]
    rng.shuffle(train)
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        with open(os.path.join(work, name), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
