#!/usr/bin/env python3
"""PyTorch reference for the C training engine: SHERL per DESIGN.md section 2 written here on top
of Hugging Face BERT layers, and the baselines full / late / linear, on a random tiny BERT.

  sherl_reference.py OUT_DIR

Writes OUT_DIR/tiny (the backbone as a HF folder), OUT_DIR/batch.safetensors (input_ids,
token_type_ids, attention_mask, labels, targets) and for every case NAME:
  NAME_init.safetensors  the trainable tensors' initial values, under the engine's names
  NAME_ref.safetensors   logits, loss [1], grad.<name> for every trainable tensor (one forward and
                         backward of the mean loss), grad64.<name> (the same computed in float64:
                         the exact gradient; float32 PyTorch is itself up to ~2e-4 off it on
                         gradients that are small sums of cancelling terms, such as the MTSA's
                         guide bias), losses [STEPS] (the loss before each of STEPS AdamW steps on
                         the same batch)
mtsa_bf16.safetensors / mtsa_fp16.safetensors (mtsa_half_cases: the MTSA alone in half
precision against a float64 emulation of its rounding) and layer_half.safetensors (a layer trained
in a bf16 job, its products emulated in float64).
Dropout is off everywhere (the backbone runs in inference mode; MTSA dropout p = 0)."""
import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

STEPS = 20
LR, BETAS, EPS, WD = 1e-3, (0.9, 0.999), 1e-8, 0.01
torch.manual_seed(4321)
torch.set_num_threads(2)


class MTSA(nn.Module):
    """DESIGN.md section 2, steps 1-7."""

    def __init__(self, K, D, d, eps_out):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(D, d) for _ in range(K))
        self.proj_ln = nn.ModuleList(nn.LayerNorm(d) for _ in range(K))
        self.guide = nn.Linear(d, 1)
        self.up = nn.Linear(d, D)
        self.out_ln = nn.LayerNorm(D, eps=eps_out)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, taps, h_last, project=None):
        """project(i, tap): tap i's projection (default self.proj[i](tap))."""
        project = project or (lambda i, t: self.proj[i](t))
        xs = [ln(project(i, t)) for i, (ln, t) in enumerate(zip(self.proj_ln, taps))]
        X = torch.stack(xs[:-1], dim=2)            # [B,T,S,d] shallow taps
        g = xs[-1].unsqueeze(2)                    # [B,T,1,d] guide
        xh = X / (X.norm(dim=-1, keepdim=True) + 1e-8)
        rho = torch.relu(xh @ xh.transpose(-1, -2)).sum(-1, keepdim=True)
        a = torch.relu(self.guide(X * g)) / rho    # [B,T,S,1]
        alpha = a / (a.abs().sum(dim=2, keepdim=True) + 1e-8)
        z = g.squeeze(2) + (alpha * X).sum(dim=2)
        return self.out_ln(self.up(torch.relu(z))) + torch.tanh(self.gate / 0.1) * h_last


def fused_layer_tensors(layer):
    """A HF BertLayer's tensors under the engine's names (Q, K, V stacked)."""
    at, out = layer.attention, layer.output
    sa = at.self
    return {
        "qkv.weight": [sa.query.weight, sa.key.weight, sa.value.weight],
        "qkv.bias": [sa.query.bias, sa.key.bias, sa.value.bias],
        "attn_out.weight": [at.output.dense.weight], "attn_out.bias": [at.output.dense.bias],
        "ln1.weight": [at.output.LayerNorm.weight], "ln1.bias": [at.output.LayerNorm.bias],
        "ffn_in.weight": [layer.intermediate.dense.weight],
        "ffn_in.bias": [layer.intermediate.dense.bias],
        "ffn_out.weight": [out.dense.weight], "ffn_out.bias": [out.dense.bias],
        "ln2.weight": [out.LayerNorm.weight], "ln2.bias": [out.LayerNorm.bias],
    }


class Model(nn.Module):
    def __init__(self, bert, method, k, d, n_out, pooling, taps=None, tune_late=False):
        super().__init__()
        self.bert, self.method, self.k, self.pooling = bert, method, k, pooling
        self.tune_late = tune_late
        cfg = bert.config
        L = cfg.num_hidden_layers
        self.L = L
        for p in bert.parameters():
            p.requires_grad_(False)
        if method == "full":
            for p in bert.parameters():
                p.requires_grad_(True)
        if method == "late" or (method == "sherl" and tune_late):
            for layer in bert.encoder.layer[L - k:]:
                for p in layer.parameters():
                    p.requires_grad_(True)
        # taps: hidden-state indices, increasing, the last L-k (default: all of h_0..h_{L-k})
        self.taps = list(taps) if taps else list(range(L - k + 1))
        if method == "sherl":
            self.mtsa = MTSA(len(self.taps), cfg.hidden_size, d, cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, n_out)

    def named_trainables(self):
        """(engine name, [torch tensors to concatenate]) for every trainable tensor."""
        out = []
        b = self.bert
        if self.method == "full":
            e = b.embeddings
            out += [("emb.word", [e.word_embeddings.weight]), ("emb.pos", [e.position_embeddings.weight]),
                    ("emb.type", [e.token_type_embeddings.weight]),
                    ("emb.ln.weight", [e.LayerNorm.weight]), ("emb.ln.bias", [e.LayerNorm.bias])]
        for i, layer in enumerate(b.encoder.layer):
            late = i >= self.L - self.k
            if self.method == "full" or (late and (self.method == "late" or
                                                   (self.method == "sherl" and self.tune_late))):
                out += [("layer.%d.%s" % (i, n), ts) for n, ts in fused_layer_tensors(layer).items()]
        if self.method == "sherl":
            out += [("mtsa." + n, [p]) for n, p in self.mtsa.named_parameters()]
        out += [("head.weight", [self.head.weight]), ("head.bias", [self.head.bias])]
        return out

    def forward(self, ids, types, mask):
        b, L, k = self.bert, self.L, self.k
        ext = b.get_extended_attention_mask(mask, ids.shape)
        with torch.set_grad_enabled(self.method == "full"):
            h = [b.embeddings(input_ids=ids, token_type_ids=types)]
        first_late = L - k if self.method in ("sherl", "late") else L
        if self.method == "full":
            first_late = 0
        with torch.no_grad():
            for layer in b.encoder.layer[:first_late]:
                h.append(layer(h[-1], attention_mask=ext)[0])
        x = h[-1]
        if self.method == "sherl":
            x = self.mtsa([h[t] for t in self.taps], h[-1])
        for layer in b.encoder.layer[first_late:]:
            x = layer(x, attention_mask=ext)[0]
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            m = mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.head(pooled)


def loss_fn(logits, labels, targets, task):
    if task == "regression":
        return F.mse_loss(logits.squeeze(-1), targets)
    return F.cross_entropy(logits, labels)


def run_case(out_dir, name, bert_dir, batch, method, task, pooling, k=1, taps=None,
             tune_late=False, d=16, n_labels=3):
    bert = BertModel.from_pretrained(bert_dir, add_pooling_layer=False).eval()
    model = Model(bert, method, k, d, n_labels if task == "classification" else 1, pooling,
                  taps, tune_late)
    trainables = model.named_trainables()
    save_file({n: torch.cat([t.detach() for t in ts]).contiguous() for n, ts in trainables},
              os.path.join(out_dir, name + "_init.safetensors"))
    ids, types, mask = batch["input_ids"].long(), batch["token_type_ids"].long(), batch["attention_mask"].long()
    params = [t for _, ts in trainables for t in ts]
    logits = model(ids, types, mask)
    loss = loss_fn(logits, batch["labels"].long(), batch["targets"], task)
    loss.backward()
    ref = {"logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
    for n, ts in trainables:
        ref["grad." + n] = torch.cat([t.grad for t in ts]).contiguous()
    m64 = copy.deepcopy(model).double()
    for p in m64.parameters():
        p.grad = None
    loss_fn(m64(ids, types, mask), batch["labels"].long(), batch["targets"].double(), task).backward()
    for n, ts in m64.named_trainables():
        ref["grad64." + n] = torch.cat([t.grad for t in ts]).contiguous()
    # AdamW with no decay on biases, LayerNorm and the gate (the 1-D tensors)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=BETAS, eps=EPS)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_fn(model(ids, types, mask), batch["labels"].long(), batch["targets"], task)
        losses.append(loss.item())
        loss.backward()
        opt.step()
    ref["losses"] = torch.tensor(losses, dtype=torch.float64)
    save_file(ref, os.path.join(out_dir, name + "_ref.safetensors"))


def to_half(t, dt):
    """t rounded to the half type dt (round to nearest even, from its float32 value) and back."""
    return t.float().to(dt).to(t.dtype)


class HalfProjection(torch.autograd.Function):
    """A half-precision job's tap projection (engine/mtsa.c), as autocast runs a Linear:
    forward half(tap16 . half(W)^T + b) with fp32 sums; backward dW = half(g)^T . tap16 and
    db = sum g in fp32; the tap is frozen (no gradient)."""

    @staticmethod
    def forward(ctx, tap16, w, b, dt):
        ctx.save_for_backward(tap16)
        ctx.dt = dt
        return to_half(tap16 @ to_half(w, dt).t() + b, dt)

    @staticmethod
    def backward(ctx, g):
        (tap16,) = ctx.saved_tensors
        g, tap16 = g.reshape(-1, g.shape[-1]), tap16.reshape(-1, tap16.shape[-1])
        return None, to_half(g, ctx.dt).t() @ tap16, g.sum(0), None


def mtsa_half_cases(out_dir, N=45, D=32, d=16, K=4):
    """mtsa_bf16.safetensors and mtsa_fp16.safetensors: the MTSA alone in half precision against
    a float64 emulation of what a half job rounds (the taps, the projection weights, the
    projection outputs, their gradients), and the same MTSA unrounded ("plain"). The taps are
    multiples of 1/8 and the projection weights and biases of 1/1024 and 1/8192, all small: every
    projection sum is exact in fp32 and float64 alike (and needs more bits than fp16 has), so the
    emulation rounds the very values the engine rounds. Tensors: tap.<i>, h_last, dy, the parameters (engine names), y.half,
    y.plain, grad.half.<name>, grad.plain.<name>."""
    g = torch.Generator().manual_seed(99)
    taps = [torch.randint(-12, 13, (N, D), generator=g).float() / 8 for _ in range(K)]
    h_last = torch.randn(N, D, generator=g)
    dy = torch.randn(N, D, generator=g)
    mtsa = MTSA(K, D, d, 1e-12)
    with torch.no_grad():
        for i in range(K):
            mtsa.proj[i].weight.copy_(torch.randint(-64, 65, (d, D), generator=g).float() / 1024)
            mtsa.proj[i].bias.copy_(torch.randint(-512, 513, (d,), generator=g).float() / 8192)
            mtsa.proj_ln[i].weight.add_(0.1 * torch.randn(d, generator=g))
            mtsa.proj_ln[i].bias.add_(0.1 * torch.randn(d, generator=g))
        mtsa.out_ln.weight.add_(0.1 * torch.randn(D, generator=g))
        mtsa.gate.fill_(0.03)  # tanh(0.3): the gate and h_last matter
    params = {"mtsa." + n: p.detach().clone().contiguous() for n, p in mtsa.named_parameters()}
    for tag, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        out = dict(params)
        out.update({"tap.%d" % i: t for i, t in enumerate(taps)})
        out["h_last"], out["dy"] = h_last, dy
        for kind in ("half", "plain"):
            m64 = copy.deepcopy(mtsa).double()
            # one sequence of N tokens; the grid makes the rounded taps exact anyway
            t64 = [to_half(t.double(), dt).unsqueeze(0) for t in taps]
            project = None
            if kind == "half":
                project = lambda i, t, m=m64: HalfProjection.apply(t, m.proj[i].weight,  # noqa: E731
                                                                   m.proj[i].bias, dt)
            y = m64(t64, h_last.double().unsqueeze(0), project)
            y.backward(dy.double().unsqueeze(0))
            out["y." + kind] = y.detach().squeeze(0).float().contiguous()
            for n, p in m64.named_parameters():
                out["grad.%s.mtsa.%s" % (kind, n)] = p.grad.float().contiguous()
        save_file(out, os.path.join(out_dir, "mtsa_%s.safetensors" % tag))


class HalfLinear(torch.autograd.Function):
    """A trained layer's product in a half-precision job (engine/bert.c linear_forward and
    linear_backward with its matrix's half copy): forward half(x) . half(W)^T + b with the output
    not rounded; backward dx = half(g) . half(W), dW = half(g)^T . half(x), db = sum g."""

    @staticmethod
    def forward(ctx, x, w, b, dt):
        xh, wh = to_half(x, dt), to_half(w, dt)
        ctx.save_for_backward(xh, wh)
        ctx.dt = dt
        return xh @ wh.t() + b

    @staticmethod
    def backward(ctx, g):
        xh, wh = ctx.saved_tensors
        gh = to_half(g, ctx.dt)
        dx = gh @ wh
        g2, x2 = gh.reshape(-1, gh.shape[-1]), xh.reshape(-1, xh.shape[-1])
        return dx, g2.t() @ x2, g.reshape(-1, g.shape[-1]).sum(0), None


class RoundOutput(torch.autograd.Function):
    """A half layer's Q, K or V: rounded to the half type in forward (as autocast's Linear returns
    them; attention reads them so), the gradient passed through unchanged."""

    @staticmethod
    def forward(ctx, t, dt):
        return to_half(t, dt)

    @staticmethod
    def backward(ctx, g):
        return g, None


class HalfSoftmax(torch.autograd.Function):
    """A half layer's attention probabilities (attention_half_forward): softmax, then rounded to
    the half type before they multiply V. The backward passes the gradient through the rounding
    and through the softmax with the rounded probabilities, as the engine's attention_backward
    receives them: ds = ph * (g - sum(g * ph))."""

    @staticmethod
    def forward(ctx, s, dt):
        ph = to_half(torch.softmax(s, dim=-1), dt)
        ctx.save_for_backward(ph)
        return ph

    @staticmethod
    def backward(ctx, g):
        (ph,) = ctx.saved_tensors
        return ph * (g - (g * ph).sum(-1, keepdim=True)), None


def layer_half_case(out_dir, bert_dir, batch, layer_index=3):
    """layer_half.safetensors: one BERT layer trained in a bf16 job (its four products as
    HalfLinear, Q, K and V rounded, the attention probabilities rounded (HalfSoftmax),
    everything else unrounded) computed in float64, and the same layer unrounded
    ("plain"), on the batch's mask: x, dout, out.<kind>, dx.<kind>, grad.<kind>.<engine name>.
    The engine's products sum in fp32, its other ops run in fp32: the two sides round the same
    values except where fp32 and float64 land on either side of a bf16 rounding boundary, which
    is rare (a relative 2^-16 of the values) and moves a result by a fraction of one half ulp."""
    g = torch.Generator().manual_seed(7)
    mask = batch["attention_mask"].long()
    B, T = mask.shape
    bert = BertModel.from_pretrained(bert_dir, add_pooling_layer=False).eval()
    D = bert.config.hidden_size
    x = torch.randn(B, T, D, generator=g)
    dout = torch.randn(B, T, D, generator=g)
    out = {"x": x, "dout": dout}
    for kind in ("half", "plain"):
        layer = copy.deepcopy(bert.encoder.layer[layer_index]).double()
        if kind == "half":
            sa = layer.attention.self
            for lin in (sa.query, sa.key, sa.value):
                lin.forward = lambda t, m=lin: RoundOutput.apply(  # noqa: E731
                    HalfLinear.apply(t, m.weight, m.bias, torch.bfloat16), torch.bfloat16)
            for lin in (layer.attention.output.dense, layer.intermediate.dense, layer.output.dense):
                lin.forward = lambda t, m=lin: HalfLinear.apply(t, m.weight, m.bias,  # noqa: E731
                                                                torch.bfloat16)
        ext = bert.get_extended_attention_mask(mask, (B, T)).double()
        x64 = x.double().requires_grad_(True)
        # the eager BertSelfAttention calls nn.functional.softmax once, on the scores
        softmax, calls = torch.nn.functional.softmax, []
        if kind == "half":
            torch.nn.functional.softmax = lambda t, dim=-1, **kw: (  # noqa: E731
                calls.append(dim) or HalfSoftmax.apply(t, torch.bfloat16))
        try:
            y = layer(x64, attention_mask=ext)[0]
        finally:
            torch.nn.functional.softmax = softmax
        if kind == "half" and calls != [-1]:
            sys.exit("layer_half_case: the layer called softmax %r times (dims %r), expected "
                     "once over the keys: this transformers' BertSelfAttention is not the eager "
                     "one the emulation patches" % (len(calls), calls))
        y.backward(dout.double())
        out["out." + kind] = y.detach().float().contiguous()
        out["dx." + kind] = x64.grad.float().contiguous()
        for n, ts in fused_layer_tensors(layer).items():
            out["grad.%s.%s" % (kind, n)] = torch.cat([t.grad for t in ts]).float().contiguous()
    save_file(out, os.path.join(out_dir, "layer_half.safetensors"))


CASES = [  # name, method, task, pooling, options (late layers k, taps, tune_late)
    ("sherl", "sherl", "classification", "mean", {}),
    ("sherl_cls_regression", "sherl", "regression", "cls", {}),
    ("sherl_tap_subset", "sherl", "classification", "mean", {"taps": [0, 1, 3]}),
    ("sherl_k2_tune_late", "sherl", "classification", "cls", {"k": 2, "tune_late": True}),
    ("full", "full", "classification", "mean", {}),
    ("late", "late", "classification", "cls", {}),
    ("linear", "linear", "classification", "mean", {}),
]


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    cfg = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=24, type_vocab_size=2,
                     hidden_act="gelu", layer_norm_eps=1e-12)
    bert = BertModel(cfg, add_pooling_layer=False)
    with torch.no_grad():
        for n, p in bert.named_parameters():
            if "LayerNorm" in n:
                p.add_(0.1 * torch.randn_like(p))
    bert_dir = os.path.join(out_dir, "tiny")
    bert.save_pretrained(bert_dir, safe_serialization=True)
    B, T = 5, 9
    lens = [9, 6, 3, 8, 5]
    ids = torch.randint(1, cfg.vocab_size, (B, T))
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 5:] = 1
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lens):
        mask[b, :n] = 1
        ids[b, n:] = 0
        types[b, n:] = 0
    batch = {"input_ids": ids.int(), "token_type_ids": types.int(), "attention_mask": mask.int(),
             "labels": torch.tensor([0, 2, 1, 2, 0], dtype=torch.int32),
             "targets": torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5])}
    save_file(batch, os.path.join(out_dir, "batch.safetensors"))
    for name, method, task, pooling, options in CASES:
        run_case(out_dir, name, bert_dir, batch, method, task, pooling, **options)
    mtsa_half_cases(out_dir)
    layer_half_case(out_dir, bert_dir, batch)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
