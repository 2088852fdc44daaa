#!/usr/bin/env python3
"""Writes a Hugging Face BERT folder with random weights (config.json, model.safetensors) and
all-MiniLM-L6-v2's tokenizer files (BERT's uncased WordPiece vocabulary), for benchmarks that
need a model's shape, not its knowledge.

  make_random_bert.py OUT_DIR [--layers 12] [--hidden 768] [--heads 12] [--ffn 3072]
                      [--no-tokenizer]
Does nothing when OUT_DIR already holds a model of that shape. --no-tokenizer writes the model
alone (for benchmarks that feed token ids; needs no model package, e.g. on a GPU machine)."""
import argparse
import json
import os
import shutil
import subprocess

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--layers", type=int, default=12)
ap.add_argument("--hidden", type=int, default=768)
ap.add_argument("--heads", type=int, default=12)
ap.add_argument("--ffn", type=int, default=3072)
ap.add_argument("--no-tokenizer", action="store_true")
a = ap.parse_args()
shape = dict(num_hidden_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
             intermediate_size=a.ffn)
cfg_path = os.path.join(a.out, "config.json")
if os.path.exists(os.path.join(a.out, "model.safetensors")) and os.path.exists(cfg_path):
    have = json.load(open(cfg_path))
    if all(have.get(k) == v for k, v in shape.items()):
        raise SystemExit(0)
here = os.path.dirname(os.path.abspath(__file__))
minilm = None
if not a.no_tokenizer:
    minilm = subprocess.check_output(["/usr/bin/python3", os.path.join(here, "..", "scripts",
                                                                        "model_dir.py"), "minilm"],
                                     text=True).strip()
torch.manual_seed(0)
model = BertModel(BertConfig(**shape), add_pooling_layer=False)
os.makedirs(a.out, exist_ok=True)
# config.json and the weights written here rather than by save_pretrained, whose output differs
# between transformers 4.x and 5.x (as tests/gpu/bert_reference_dump.py does)
c = model.config
cfg = dict(architectures=["BertModel"], model_type="bert", vocab_size=c.vocab_size,
           max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
           hidden_act="gelu", layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id,
           position_embedding_type="absolute", hidden_dropout_prob=c.hidden_dropout_prob,
           attention_probs_dropout_prob=c.attention_probs_dropout_prob,
           initializer_range=c.initializer_range, **shape)
with open(cfg_path, "w") as f:
    json.dump(cfg, f, indent=2)
save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
          os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json") if minilm else ():
    shutil.copy(os.path.join(minilm, f), a.out)
print("random BERT (%s) in %s" % (", ".join("%s=%d" % kv for kv in shape.items()), a.out))
