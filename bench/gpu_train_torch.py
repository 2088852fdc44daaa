#!/usr/bin/env python3
"""The PyTorch side of bench/gpu_train: one SHERL training step and one full fine-tuning step
on Hugging Face BERT layers, timed and measured the way bench_gpu_train times and measures ours.

  gpu_train_torch.py [--device cuda|cpu] [--batch 64] [--seq 128] [--layers L] [--hidden D]
                     [--steps 10] [--warmup 3] [--method sherl|full|both] [--late-layers 1]
                     [--tune-late 1] [--threads N] [--json FILE] MODEL_DIR

The step is bench_gpu_train's: random token ids (full attention masks, no padding) and labels of
3 classes; the backbone in inference mode (no dropout); forward, mean cross-entropy, backward,
clip_grad_norm_(1.0), AdamW (lr 1e-4, weight decay 0.01 on matrices only).
  sherl: embeddings and the first L-k layers under torch.no_grad, keeping the taps h_0..h_{L-k};
         the MTSA of tests/oracle/sherl_reference.py (DESIGN.md section 2, side width D/2); the
         last k layers (trained with --tune-late 1, else frozen but backpropagated through);
         mean pooling; a Linear head. Trainable: MTSA, head (and the late layers).
  full:  every parameter trainable (embeddings too), the same pooling and head.
CUDA: bf16 autocast around forward and loss (fp32 master weights), torch.cuda.synchronize()
before every clock read, peak = torch.cuda.max_memory_allocated() after
reset_peak_memory_stats() made before the model is loaded (so weights, gradients, optimizer
state and activations all count). CPU: fp32, peak = VmHWM - VmRSS before loading (/proc; the
second method of one process can read high, as the allocator keeps the first one's blocks).
--layers / --hidden are checks on the model's config. Works with torch 1.13 + transformers 4.40
and torch 2.x + transformers 4.x/5.x."""
import argparse
import gc
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "oracle"))
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from sherl_reference import MTSA  # noqa: E402  (sets a seed and 2 threads on import: reset below)
from transformers import BertConfig, BertModel  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("model_dir")
ap.add_argument("--device", choices=("cuda", "cpu"), default=None)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--seq", type=int, default=128)
ap.add_argument("--layers", type=int, default=0)
ap.add_argument("--hidden", type=int, default=0)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--method", choices=("sherl", "full", "both"), default="both")
ap.add_argument("--late-layers", type=int, default=1)
ap.add_argument("--tune-late", type=int, choices=(0, 1), default=1)
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--json", default=None)
a = ap.parse_args()
if a.batch < 1 or a.seq < 1 or a.steps < 1 or a.warmup < 0 or a.late_layers < 1:
    ap.error("--batch, --seq, --steps and --late-layers must be >= 1, --warmup >= 0")
dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
if dev == "cuda" and not torch.cuda.is_available():
    print("gpu_train_torch: no GPU (torch.cuda.is_available() is False; torch %s)" % torch.__version__)
    sys.exit(0)
torch.set_num_threads(a.threads)
cuda = dev == "cuda"
precision = "bf16-autocast" if cuda else "fp32"
N_LABELS = 3


def load_bert():
    """BertModel.from_pretrained, in inference mode; if this transformers refuses the folder's
    config (5.x's BertConfig is strict), the same model from its known fields and weights."""
    try:
        bert = BertModel.from_pretrained(a.model_dir, add_pooling_layer=False)
    except Exception as e:  # noqa: BLE001
        from safetensors.torch import load_file
        print("gpu_train_torch: from_pretrained failed (%s: %s); loading the weights directly"
              % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""), file=sys.stderr)
        cfg = json.load(open(os.path.join(a.model_dir, "config.json")))
        keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size", "hidden_act",
                "layer_norm_eps", "pad_token_id")
        bert = BertModel(BertConfig(**{k: cfg[k] for k in keep if k in cfg}), add_pooling_layer=False)
        sd = {k[5:] if k.startswith("bert.") else k: v
              for k, v in load_file(os.path.join(a.model_dir, "model.safetensors")).items()}
        missing, _ = bert.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        if missing:
            raise SystemExit("gpu_train_torch: %s lacks %s" % (a.model_dir, ", ".join(missing[:5])))
    return bert.float().eval()  # fp32 master weights whatever the file holds (autocast casts)


def run_layer(layer, x):
    """One BertLayer, no attention mask (the batch has no padding, as HF itself drops an all-ones
    mask for SDPA). A layer returns a tuple in transformers 4.x and may return the tensor."""
    out = layer(x, attention_mask=None)
    return out if torch.is_tensor(out) else out[0]


class Net(nn.Module):
    def __init__(self, bert, method, k, tune_late):
        super().__init__()
        cfg = bert.config
        self.bert, self.method, self.L, self.k = bert, method, cfg.num_hidden_layers, k
        for p in bert.parameters():
            p.requires_grad_(method == "full")
        if method == "sherl":
            if tune_late:
                for layer in bert.encoder.layer[self.L - k:]:
                    for p in layer.parameters():
                        p.requires_grad_(True)
            self.taps = list(range(self.L - k + 1))  # h_0 .. h_{L-k}: every one, as ours by default
            self.mtsa = MTSA(len(self.taps), cfg.hidden_size, cfg.hidden_size // 2, cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, N_LABELS)

    def forward(self, ids, types, mask):
        b = self.bert
        if self.method == "full":
            x = b.embeddings(input_ids=ids, token_type_ids=types)
            for layer in b.encoder.layer:
                x = run_layer(layer, x)
        else:
            first_late = self.L - self.k
            with torch.no_grad():
                h = [b.embeddings(input_ids=ids, token_type_ids=types)]
                for layer in b.encoder.layer[:first_late]:
                    h.append(run_layer(layer, h[-1]))
            x = self.mtsa([h[t] for t in self.taps], h[-1])
            del h
            for layer in b.encoder.layer[first_late:]:
                x = run_layer(layer, x)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)  # mean pooling, as ours
        return self.head(pooled)


def proc_status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_rss_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def sync():
    if cuda:
        torch.cuda.synchronize()


def run(method):
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_rss_peak()
        base = proc_status()["VmRSS"]
    torch.manual_seed(0)
    bert = load_bert()
    cfg = bert.config
    if (a.layers and cfg.num_hidden_layers != a.layers) or (a.hidden and cfg.hidden_size != a.hidden):
        raise SystemExit("gpu_train_torch: %s has %d layers of width %d, not %s x %s" % (
            a.model_dir, cfg.num_hidden_layers, cfg.hidden_size, a.layers or "-", a.hidden or "-"))
    if a.seq > cfg.max_position_embeddings:
        raise SystemExit("gpu_train_torch: --seq %d is over the model's %d positions"
                         % (a.seq, cfg.max_position_embeddings))
    if method == "sherl" and not 1 <= a.late_layers < cfg.num_hidden_layers:
        raise SystemExit("gpu_train_torch: --late-layers must be in 1..%d" % (cfg.num_hidden_layers - 1))
    net = Net(bert, method, a.late_layers, bool(a.tune_late)).to(dev)
    params = [p for p in net.parameters() if p.requires_grad]
    # the model's own bytes (weights; gradients and AdamW state come with the first step), so the
    # peak can be read as model + the rest (activations, gradients, optimizer, transients)
    model_bytes = torch.cuda.memory_allocated() - base if cuda else None
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    g = torch.Generator().manual_seed(42)
    lo = 1000 if cfg.vocab_size > 2000 else 1
    ids = torch.randint(lo, cfg.vocab_size, (a.batch, a.seq), generator=g).to(dev)
    types = torch.zeros(a.batch, a.seq, dtype=torch.long, device=dev)
    mask = torch.ones(a.batch, a.seq, dtype=torch.long, device=dev)
    labels = (torch.arange(a.batch) % N_LABELS).to(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        if cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(net(ids, types, mask), labels)
        else:
            loss = F.cross_entropy(net(ids, types, mask), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    loss = loss.item()
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
        reserved = torch.cuda.max_memory_reserved()
    else:
        peak = proc_status()["VmHWM"] - base
        reserved = None
    med = statistics.median(times)
    r = {"median_s": med, "min_s": min(times), "samples_per_s": a.batch / med, "peak_bytes": peak,
         "reserved_bytes": reserved, "model_bytes": model_bytes, "loss": loss,
         "trainable": sum(p.numel() for p in params)}
    print("pytorch %-5s %s %s B=%d T=%d: median %.4f s/step (min %.4f), %.2f samples/s, peak "
          "%.1f MiB (%s), loss %.4f, %d trainable" % (
              method, precision, dev, a.batch, a.seq, med, min(times), a.batch / med, peak / 2**20,
              "max_memory_allocated, of which the model %.1f MiB; reserved %.1f MiB"
              % (model_bytes / 2**20, reserved / 2**20) if cuda else "VmHWM",
              loss, r["trainable"]), flush=True)
    return r, cfg  # the model, optimizer and batch go with this frame (run() frees them first)


methods = ("sherl", "full") if a.method == "both" else (a.method,)
res, cfg = {}, None
for m in methods:
    res[m], cfg = run(m)
gpu_name = torch.cuda.get_device_name(0) if cuda else None
print("pytorch: torch %s, transformers %s, %s, %s; attention %s" % (
    torch.__version__, transformers.__version__, gpu_name or "cpu", precision,
    getattr(cfg, "_attn_implementation", None) or "eager"))
if a.json:
    with open(a.json, "w") as f:
        json.dump({"impl": "pytorch", "device": dev, "gpu": gpu_name, "precision": precision,
                   "torch": torch.__version__, "transformers": transformers.__version__,
                   "attention": getattr(cfg, "_attn_implementation", None),
                   "batch": a.batch, "seq": a.seq, "layers": cfg.num_hidden_layers,
                   "hidden": cfg.hidden_size, "late_layers": a.late_layers,
                   "tune_late": bool(a.tune_late), "steps": a.steps, "warmup": a.warmup,
                   "peak_source": "torch.cuda.max_memory_allocated" if cuda else "VmHWM - VmRSS",
                   "methods": res}, f, indent=2)
