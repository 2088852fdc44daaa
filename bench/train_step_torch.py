#!/usr/bin/env python3
"""The PyTorch side of bench/train_step: the same training step as bench_train_step (SHERL per
DESIGN.md section 2 on Hugging Face BERT layers, from tests/oracle/sherl_reference.py; forward,
cross-entropy, backward, clip_grad_norm_, AdamW) on the same shapes and thread count.

  train_step_torch.py MODEL_DIR METHOD BATCH SEQ ITERS THREADS [LATE_LAYERS]"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "oracle"))
import torch  # noqa: E402
from sherl_reference import Model  # noqa: E402
from transformers import BertModel  # noqa: E402

model_dir, method = sys.argv[1], sys.argv[2]
B, T, iters, threads = (int(x) for x in sys.argv[3:7])
k = int(sys.argv[7]) if len(sys.argv) > 7 else 1
torch.set_num_threads(threads)
torch.manual_seed(0)
bert = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
D = bert.config.hidden_size
model = Model(bert, method, k, D // 2, 3, "mean")
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
g = torch.Generator().manual_seed(42)
ids = torch.randint(1000, bert.config.vocab_size, (B, T), generator=g)
types = torch.zeros(B, T, dtype=torch.long)
mask = torch.ones(B, T, dtype=torch.long)
labels = torch.arange(B) % 3
times = []
for it in range(iters + 1):  # the first is a warm-up
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(ids, types, mask), labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if it:
        times.append(time.perf_counter() - t0)
med = statistics.median(times)
print("pytorch train_step method=%s B=%d T=%d threads=%d: median %.4f s/step (min %.4f), "
      "%.2f samples/s, loss %.4f, %d trainable (torch %s)" %
      (method, B, T, threads, med, min(times), B / med, loss.item(),
       sum(p.numel() for p in params), torch.__version__))
