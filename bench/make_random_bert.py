#!/usr/bin/env python3
"""Writes a Hugging Face BERT folder with random weights (config.json, model.safetensors) and
all-MiniLM-L6-v2's tokenizer files (BERT's uncased WordPiece vocabulary), for benchmarks that
need a model's shape, not its knowledge.

  make_random_bert.py OUT_DIR [--layers 12] [--hidden 768] [--heads 12] [--ffn 3072]
Does nothing when OUT_DIR already holds a model of that shape."""
import argparse
import json
import os
import shutil
import subprocess

import torch
from transformers import BertConfig, BertModel

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--layers", type=int, default=12)
ap.add_argument("--hidden", type=int, default=768)
ap.add_argument("--heads", type=int, default=12)
ap.add_argument("--ffn", type=int, default=3072)
a = ap.parse_args()
shape = dict(num_hidden_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
             intermediate_size=a.ffn)
cfg_path = os.path.join(a.out, "config.json")
if os.path.exists(os.path.join(a.out, "model.safetensors")) and os.path.exists(cfg_path):
    have = json.load(open(cfg_path))
    if all(have.get(k) == v for k, v in shape.items()):
        raise SystemExit(0)
here = os.path.dirname(os.path.abspath(__file__))
minilm = subprocess.check_output(["/usr/bin/python3", os.path.join(here, "..", "scripts",
                                                                    "model_dir.py"), "minilm"],
                                 text=True).strip()
torch.manual_seed(0)
model = BertModel(BertConfig(**shape), add_pooling_layer=False)
os.makedirs(a.out, exist_ok=True)
model.save_pretrained(a.out, safe_serialization=True)
for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(os.path.join(minilm, f), a.out)
print("random BERT (%s) in %s" % (", ".join("%s=%d" % kv for kv in shape.items()), a.out))
