#!/usr/bin/env python3
"""End to end through the `sherl` CLI on the real all-MiniLM-L6-v2: `sherl tokenize` must give
HF BertTokenizer's exact encodings and `sherl embed` sentence-transformers' embeddings
(mean pooling + L2 normalisation over HF BertModel), cosine >= 0.99999 each.

  check_cli.py SHERL_BIN MODEL_DIR"""
import json
import subprocess
import sys

import torch
from transformers import BertModel, BertTokenizer

sherl, model_dir = sys.argv[1], sys.argv[2]
texts = [
    "A man is eating food.",
    "the quality of being kind and gentle; \"he showed great tenderness\"",
    "Über naïve café résumés — 東京 emoji 🙂 and tabs\tinside",
    "x",
    " ".join(["word%d" % i for i in range(300)]),  # longer than max_seq_length 256: truncated
]
failures = []

# tokenize: one JSON object per line, stdin input path
out = subprocess.run([sherl, "tokenize", model_dir], input="\n".join(texts) + "\n",
                     capture_output=True, text=True, check=True).stdout.splitlines()
tok = BertTokenizer.from_pretrained(model_dir)
if len(out) != len(texts):
    failures.append("tokenize printed %d lines for %d texts" % (len(out), len(texts)))
for text, line in zip(texts, out):
    got = json.loads(line)
    want = tok(text, truncation=True)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        if got[key] != want[key]:
            failures.append("tokenize %r: %s differ" % (text[:40], key))

# embed: arguments input path, the sentence-transformers max_seq_length (256) applies
got = json.loads(subprocess.run([sherl, "embed", model_dir, *texts], capture_output=True,
                                text=True, check=True).stdout)
model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
with torch.no_grad():
    h = model(**enc).last_hidden_state
m = enc["attention_mask"].unsqueeze(-1).float()
want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)
got = torch.tensor(got)
if got.shape != want.shape:
    failures.append("embed shape %s, expected %s" % (tuple(got.shape), tuple(want.shape)))
else:
    cos = torch.nn.functional.cosine_similarity(got.double(), want.double(), dim=1)
    for text, c in zip(texts, cos.tolist()):
        print("embed cosine %.9f  %r" % (c, text[:40]))
        if not c >= 0.99999:
            failures.append("embed %r: cosine %.9f < 0.99999" % (text[:40], c))

# --pooling cls: the first token's state, normalised
got_cls = json.loads(subprocess.run([sherl, "embed", "--pooling", "cls", model_dir, *texts],
                                    capture_output=True, text=True, check=True).stdout)
want_cls = torch.nn.functional.normalize(h[:, 0], dim=1)
cos = torch.nn.functional.cosine_similarity(torch.tensor(got_cls).double(), want_cls.double(), dim=1)
if not bool((cos >= 0.99999).all()):
    failures.append("embed --pooling cls: cosines %s" % cos.tolist())

# --pair: sentence pairs with token types, truncated longest-first at --max-length
pairs = ["How old are you?", "What is your age, if I may ask?", texts[1], texts[4]]
out = subprocess.run([sherl, "tokenize", "--pair", "--max-length", "24", model_dir, *pairs],
                     capture_output=True, text=True, check=True).stdout.splitlines()
for k, line in enumerate(out):
    want = tok(pairs[2 * k], pairs[2 * k + 1], truncation=True, max_length=24)
    if json.loads(line) != {key: want[key] for key in ("input_ids", "token_type_ids", "attention_mask")}:
        failures.append("tokenize --pair %d differs" % k)
if len(out) != 2:
    failures.append("tokenize --pair printed %d lines for 2 pairs" % len(out))

# bad usage is reported, not crashed on
bad = subprocess.run([sherl, "embed", "--pooling", "max", model_dir, "x"], capture_output=True, text=True)
if bad.returncode != 2 or "max" not in bad.stderr:
    failures.append("bad --pooling: rc %d, stderr %r" % (bad.returncode, bad.stderr))
bad = subprocess.run([sherl, "tokenize", "--pair", model_dir, "a", "b", "c"], capture_output=True, text=True)
if bad.returncode != 2 or "even" not in bad.stderr:
    failures.append("odd --pair: rc %d, stderr %r" % (bad.returncode, bad.stderr))
bad = subprocess.run([sherl, "embed", "/nonexistent/model", "x"], capture_output=True, text=True)
if bad.returncode == 0 or "/nonexistent/model" not in bad.stderr:
    failures.append("missing model folder: rc %d, stderr %r" % (bad.returncode, bad.stderr))
bad = subprocess.run([sherl, "tokenize", model_dir, "--max-length", "zero", "x"],
                     capture_output=True, text=True)
if bad.returncode != 2 or "zero" not in bad.stderr:
    failures.append("bad --max-length: rc %d, stderr %r" % (bad.returncode, bad.stderr))

# inspect --devices: one line per CUDA device or the reason there is none, the CPU, and what
# "auto" picks; the GPU lines are checked against torch's own view of the machine
dev = subprocess.run([sherl, "inspect", "--devices"], capture_output=True, text=True)
lines = dev.stdout.splitlines()
if dev.returncode != 0:
    failures.append("inspect --devices: rc %d, stderr %r" % (dev.returncode, dev.stderr))
elif not any(l.startswith("cpu ") for l in lines) or not any(l.startswith("auto ") for l in lines):
    failures.append("inspect --devices lacks the cpu or auto line: %r" % dev.stdout)
elif torch.cuda.is_available():
    gpus = [l for l in lines if l.startswith("cuda:")]
    if len(gpus) != torch.cuda.device_count():
        failures.append("inspect --devices lists %d GPUs, torch sees %d" % (len(gpus), torch.cuda.device_count()))
else:
    if not any(l.startswith("cuda   none usable: ") and len(l) > 20 for l in lines):
        failures.append("inspect --devices without a GPU must give the reason: %r" % dev.stdout)
    if "auto   cpu" not in lines:
        failures.append("inspect --devices without a GPU: auto must be cpu: %r" % dev.stdout)
bad = subprocess.run([sherl, "inspect", "--devices", model_dir], capture_output=True, text=True)
if bad.returncode != 2 or "--devices" not in bad.stderr:
    failures.append("inspect --devices MODEL_DIR: rc %d, stderr %r" % (bad.returncode, bad.stderr))

for f in failures:
    print("FAIL:", f)
print("cli oracle: %d problems" % len(failures))
sys.exit(1 if failures else 0)
