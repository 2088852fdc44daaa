#!/usr/bin/env python3
"""A random BERT with a WordPiece vocabulary and a small learnable classification task, for
gpu_train_checks (tests/gpu/train_checks.c) on machines without a pretrained model.

  make_train_task.py OUT_DIR [--layers 2] [--hidden 64] [--heads 4] [--ffn 128] [--vocab 1000]
                     [--positions 512] [--train 256] [--val 128] [--min-words 5]
                     [--max-words 28] [--signal 0.5] [--seed 1234]

Writes
  OUT_DIR/model: config.json and model.safetensors (a random-init BertModel, LayerNorm weights
                 and biases perturbed as in bert_reference_dump.py), vocab.txt ([PAD] [UNK] [CLS]
                 [SEP] [MASK], then --vocab - 5 made-up lowercase words, each one WordPiece token)
                 and tokenizer_config.json (uncased), so the engine's tokenizer loads it;
  OUT_DIR/data:  train.jsonl and validation.jsonl, rows {"text": ..., "label": "first"|"second"}.
A row's words all come from one half of the vocabulary's words: the label says which half. The
word embeddings carry the label as a direction, +/- signal x (a typical row's norm) along one
random unit vector for the words of the first / second half, so a frozen random backbone's
features separate the classes and a few dozen SHERL steps learn the task: validation accuracy
then means something. Classes are balanced and alternate in the train file.

Needs torch, transformers and safetensors (the same as bert_reference_dump.py)."""
import json
import os
import random
import time

import torch

from random_bert import bert_config, model_args, random_bert, save_bert

ap = model_args(__doc__)
ap.add_argument("--train", type=int, default=256)
ap.add_argument("--val", type=int, default=128)
ap.add_argument("--min-words", type=int, default=5)
ap.add_argument("--max-words", type=int, default=28)
ap.add_argument("--signal", type=float, default=0.5)
a = ap.parse_args()
if a.vocab < 25:
    ap.error("--vocab %d: at least 25 (5 special tokens and 10 words per class)" % a.vocab)
if not 1 <= a.min_words <= a.max_words:
    ap.error("--min-words and --max-words: 1 <= min <= max")

t0 = time.time()
torch.manual_seed(a.seed)
rng = random.Random(a.seed)

# ---- the vocabulary: made-up words of consonant-vowel syllables, all distinct ----
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
n_words = a.vocab - len(SPECIAL)
syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
words, seen = [], set()
while len(words) < n_words:
    w = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
    if w not in seen:
        seen.add(w)
        words.append(w)
half = n_words // 2
classes = {"first": words[:half], "second": words[half:]}

# ---- the model ----
cfg_dict = bert_config(a.vocab, a.hidden, a.layers, a.heads, a.ffn, a.positions)
model = random_bert(cfg_dict)
with torch.no_grad():
    emb = model.embeddings.word_embeddings.weight
    u = torch.randn(a.hidden)
    u /= u.norm()
    typical = emb[len(SPECIAL):].norm(dim=1).mean()
    lo, mid = len(SPECIAL), len(SPECIAL) + half
    emb[lo:mid] += a.signal * typical * u
    emb[mid:] -= a.signal * typical * u

model_dir = os.path.join(a.out, "model")
data_dir = os.path.join(a.out, "data")
os.makedirs(model_dir, exist_ok=True)
os.makedirs(data_dir, exist_ok=True)
save_bert(model, cfg_dict, model_dir)
with open(os.path.join(model_dir, "vocab.txt"), "w") as f:
    f.write("\n".join(SPECIAL + words) + "\n")
with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"do_lower_case": True, "model_max_length": a.positions,
               "tokenizer_class": "BertTokenizer"}, f, indent=2)


# ---- the data ----
def write_split(path, n):
    with open(path, "w") as f:
        for i in range(n):
            label = "first" if i % 2 == 0 else "second"
            text = " ".join(rng.choice(classes[label])
                            for _ in range(rng.randint(a.min_words, a.max_words)))
            f.write(json.dumps({"text": text, "label": label}) + "\n")


write_split(os.path.join(data_dir, "train.jsonl"), a.train)
write_split(os.path.join(data_dir, "validation.jsonl"), a.val)
n_params = sum(p.numel() for p in model.parameters())
print("make_train_task: %d layers, hidden %d, %d heads, ffn %d, vocab %d (%.1fM parameters); "
      "%d train / %d validation rows of %d-%d words, 2 classes; signal %.2f; %.1f s -> %s"
      % (a.layers, a.hidden, a.heads, a.ffn, a.vocab, n_params / 1e6, a.train, a.val,
         a.min_words, a.max_words, a.signal, time.time() - t0, a.out))
