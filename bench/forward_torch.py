#!/usr/bin/env python3
"""PyTorch reference for bench_forward: the same encoder forward (all hidden states), same
batch shape and thread count.  forward_torch.py MODEL_DIR BATCH SEQ ITERS THREADS"""
import statistics
import sys
import time

import torch
from transformers import BertModel

model_dir, B, T, iters, threads = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(threads)
model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
g = torch.Generator().manual_seed(42)
ids = torch.randint(1000, model.config.vocab_size, (B, T), generator=g)
mask = torch.ones(B, T, dtype=torch.long)
times = []
with torch.inference_mode():
    model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    for _ in range(iters):
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        times.append(time.perf_counter() - t0)
med = statistics.median(times)
print("pytorch forward B=%d T=%d threads=%d: median %.4f s/batch (min %.4f), %.0f tokens/s"
      % (B, T, threads, med, min(times), B * T / med))
