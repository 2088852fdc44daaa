"""A random BERT in Hugging Face's layout, shared by the GPU-check scripts.

random_bert(...) builds a BertModel (no pooler) with random weights whose LayerNorm weights and
every bias are perturbed (random init leaves them 1 and 0, which would test nothing), and
save_bert(model, cfg_dict, folder) writes config.json and model.safetensors itself, so it works
with transformers 4.x and 5.x alike."""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel


def model_args(description):
    """An argument parser with OUT_DIR and the model shape options both scripts take."""
    import argparse
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    for name, default in (("layers", 2), ("hidden", 64), ("heads", 4), ("ffn", 128),
                          ("vocab", 1000), ("positions", 512)):
        ap.add_argument("--" + name, type=int, default=default)
    ap.add_argument("--seed", type=int, default=1234)
    return ap


def bert_config(vocab, hidden, layers, heads, ffn, positions=512, init_range=0.02):
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "max_position_embeddings": positions,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": init_range,
    }


def random_bert(cfg_dict):
    # only fields every BertConfig has (transformers 5's is a strict dataclass without
    # position_embedding_type: absolute positions are its only kind, and 4.x's default)
    cfg = BertConfig(**{k: v for k, v in cfg_dict.items()
                        if k not in ("architectures", "model_type", "position_embedding_type")})
    model = BertModel(cfg, add_pooling_layer=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def save_bert(model, cfg_dict, model_dir):
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
