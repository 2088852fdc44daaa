#!/usr/bin/env python3
"""Reference hidden states from Hugging Face transformers for the C BERT encoder.

  bert_reference.py tiny   OUT_DIR  -> OUT_DIR/tiny (random-init BertModel, saved as a HF folder),
                                       OUT_DIR/tiny_prefixed (same weights as a task model with
                                       'bert.' names), OUT_DIR/tiny_ref.safetensors
  bert_reference.py minilm OUT_DIR MODEL_DIR -> OUT_DIR/minilm_ref.safetensors

Each *_ref.safetensors holds input_ids, token_type_ids, attention_mask (I32, [B,T]),
hidden_<i> (F32, [B,T,D]) and hidden64_<i> (F64: the same model run in float64) for i = 0..L, and for minilm also sentence_embedding (F32, [B,D]):
mean pooling over the attention mask then L2 normalisation, as sentence-transformers defines it,
and sentence_embedding_cls (the first token's state, L2-normalised).
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

torch.manual_seed(1234)
torch.set_num_threads(2)


def dump(model, ids, types, mask, path, extra=None):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, token_type_ids=types, attention_mask=mask,
                    output_hidden_states=True)
        # The same model in float64: the exact answer, to tell our float32 rounding apart
        # from the float32 reference's own (which reaches ~1e-4 on MiniLM's deeper layers).
        out64 = model.double()(input_ids=ids, token_type_ids=types, attention_mask=mask,
                               output_hidden_states=True)
        model.float()
    tensors = {
        "input_ids": ids.to(torch.int32).contiguous(),
        "token_type_ids": types.to(torch.int32).contiguous(),
        "attention_mask": mask.to(torch.int32).contiguous(),
    }
    for i, h in enumerate(out.hidden_states):
        tensors["hidden_%d" % i] = h.contiguous()
    for i, h in enumerate(out64.hidden_states):
        tensors["hidden64_%d" % i] = h.contiguous()  # stays F64 in the file
    if extra:
        tensors.update(extra(out))
    save_file(tensors, path)
    return out


def tiny(out_dir):
    cfg = BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=40, type_vocab_size=2,
                     hidden_act="gelu", layer_norm_eps=1e-12)
    model = BertModel(cfg, add_pooling_layer=False)
    # Random init gives LayerNorm weight 1, bias 0: perturb them so they are tested too.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(os.path.join(out_dir, "tiny"), safe_serialization=True)
    task = BertForSequenceClassification(cfg)
    task.bert.load_state_dict(model.state_dict(), strict=False)
    task.save_pretrained(os.path.join(out_dir, "tiny_prefixed"), safe_serialization=True)

    B, T = 4, 11
    ids = torch.randint(1, cfg.vocab_size, (B, T))
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 6:] = 1
    lens = [11, 7, 3, 9]
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lens):
        mask[b, :n] = 1
        ids[b, n:] = 0
    dump(model, ids, types, mask, os.path.join(out_dir, "tiny_ref.safetensors"))


SENTENCES = [
    "A dog is running through the snow.",
    "the act of drawing spatially apart; \"the separation of the twins\"",
    "Café au lait, naïve résumé — über-cool!",
    "short",
    "Sentence embeddings map text to a vector space where similar meanings lie close together, "
    "which makes them useful for search, clustering and classification.",
    "(botany) a plant having flowers with petals; \"rosaceous plants\"",
    "2024年 東京 and numbers 3.14159 and e-mail@example.com",
    "a",
]


def minilm(out_dir, model_dir):
    tok = BertTokenizer.from_pretrained(model_dir)
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    model = BertModel.from_pretrained(model_dir, add_pooling_layer=False)

    def sentence_embedding(out):
        m = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (out.last_hidden_state * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
        cls = out.last_hidden_state[:, 0]
        return {"sentence_embedding": torch.nn.functional.normalize(pooled, p=2, dim=1).contiguous(),
                "sentence_embedding_cls": torch.nn.functional.normalize(cls, p=2, dim=1).contiguous()}

    dump(model, enc["input_ids"], enc["token_type_ids"], enc["attention_mask"],
         os.path.join(out_dir, "minilm_ref.safetensors"), sentence_embedding)
    with open(os.path.join(out_dir, "minilm_sentences.txt"), "w", encoding="utf-8") as f:
        for s in SENTENCES:
            f.write(s + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("tiny", "minilm"):
        sys.exit(__doc__)
    os.makedirs(sys.argv[2], exist_ok=True)
    if sys.argv[1] == "tiny":
        tiny(sys.argv[2])
    else:
        if len(sys.argv) != 4:
            sys.exit(__doc__)
        minilm(sys.argv[2], sys.argv[3])
