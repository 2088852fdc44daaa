#!/usr/bin/env python3
"""A random BERT and Hugging Face transformers' hidden states for it, for gpu_bert_oracle.

  bert_reference_dump.py OUT_DIR [--layers 2] [--hidden 64] [--heads 4] [--ffn 128]
                         [--vocab 1000] [--positions 512] [--batch 8] [--seq 128] [--float64]

Writes OUT_DIR/model (config.json + model.safetensors: a random-init BertModel whose LayerNorm
weights and every bias are perturbed, so they are tested too) and OUT_DIR/reference.safetensors
in the format of tests/oracle/bert_reference.py: input_ids, token_type_ids, attention_mask
(I32, [B,T]; rows padded to lengths T, ..., 3 with id 0 and mask 0, two segments per row) and
hidden_<i> (F32, [B,T,D], i = 0..L: the embeddings' LayerNorm output, then every layer's). With
--float64 also hidden64_<i>: the same model run in float64 (the exact answer, for reporting).

The reference runs on the CPU in float32 whatever GPU is present: it is the oracle for the GPU.
Works with transformers 4.x and 5.x (it writes config.json and the weights itself)."""
import json
import os
import time

import torch
from safetensors.torch import save_file

from random_bert import bert_config, model_args, random_bert, save_bert

ap = model_args(__doc__)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--seq", type=int, default=128)
ap.add_argument("--float64", action="store_true")
ap.add_argument("--init-range", type=float, default=0.02,
                help="std of the random weights (larger: the products weigh more against the residuals)")
a = ap.parse_args()
if a.seq > a.positions:
    ap.error("--seq %d is over --positions %d" % (a.seq, a.positions))

t0 = time.time()
torch.manual_seed(a.seed)
cfg_dict = bert_config(a.vocab, a.hidden, a.layers, a.heads, a.ffn, a.positions, a.init_range)
model = random_bert(cfg_dict)
model_dir = os.path.join(a.out, "model")
save_bert(model, cfg_dict, model_dir)

B, T = a.batch, a.seq
ids = torch.randint(1, a.vocab, (B, T))
types = torch.zeros(B, T, dtype=torch.long)
mask = torch.zeros(B, T, dtype=torch.long)
lens = [max(1, T - b * T // B) for b in range(B)]
if B > 1:
    lens[-1] = min(lens[-1], 3)
for b, n in enumerate(lens):
    mask[b, :n] = 1
    types[b, n // 2:n] = 1
    ids[b, n:] = 0


def hidden_states(m):
    with torch.no_grad():
        out = m(input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
    hs = out.hidden_states
    if len(hs) != a.layers + 1:
        raise SystemExit("transformers returned %d hidden states, expected %d" % (len(hs), a.layers + 1))
    if not torch.equal(hs[-1], out.last_hidden_state):
        raise SystemExit("transformers' last hidden state is not last_hidden_state")
    return hs


tensors = {
    "input_ids": ids.to(torch.int32).contiguous(),
    "token_type_ids": types.to(torch.int32).contiguous(),
    "attention_mask": mask.to(torch.int32).contiguous(),
}
for i, h in enumerate(hidden_states(model)):
    tensors["hidden_%d" % i] = h.float().contiguous()
# The half-precision semantics of our engine, emulated in float32 PyTorch: the three embedding
# tables are rounded to bf16 (or fp16; nearest even), every encoder Linear takes its input and
# its weight rounded the same way and accumulates in fp32, and the query, key and value outputs
# are rounded too (as autocast's Linear returns them: attention reads them so); everything else
# (biases, LayerNorms, softmax, GELU, residuals, the sums) stays fp32. The oracle for
# `gpu_bert_oracle --precision`.
def emulate(half):
    def rounded(t):
        return t.to(half).float()

    with torch.no_grad():
        tables = [model.embeddings.word_embeddings, model.embeddings.position_embeddings,
                  model.embeddings.token_type_embeddings]
        kept = [t.weight.detach().clone() for t in tables]
        for t in tables:
            t.weight.copy_(rounded(t.weight))
        saved = {}
        for name, mod in model.encoder.named_modules():
            if isinstance(mod, torch.nn.Linear):
                saved[name] = mod.forward
                out = rounded if name.rsplit(".", 1)[-1] in ("query", "key", "value") \
                    else (lambda t: t)
                mod.forward = (lambda m_, o_: (lambda x: o_(torch.nn.functional.linear(
                    rounded(x), rounded(m_.weight), m_.bias))))(mod, out)
        try:
            return hidden_states(model)
        finally:
            for name, mod in model.encoder.named_modules():
                if name in saved:
                    mod.forward = saved[name]
            for t, w in zip(tables, kept):
                t.weight.copy_(w)


for tag, half in (("bf16", torch.bfloat16), ("f16", torch.float16)):
    for i, h in enumerate(emulate(half)):
        tensors["hidden_%s_%d" % (tag, i)] = h.float().contiguous()
if a.float64:
    for i, h in enumerate(hidden_states(model.double())):
        tensors["hidden64_%d" % i] = h.contiguous()
save_file(tensors, os.path.join(a.out, "reference.safetensors"))
n_params = sum(p.numel() for p in model.parameters())
print("bert_reference_dump: %d layers, hidden %d, %d heads, ffn %d, vocab %d (%.1fM parameters); "
      "batch %dx%d, lengths %s; transformers %s, torch %s; %.1f s -> %s"
      % (a.layers, a.hidden, a.heads, a.ffn, a.vocab, n_params / 1e6, B, T, lens,
         __import__("transformers").__version__, torch.__version__, time.time() - t0, a.out))
