#!/usr/bin/env python3
"""Test fixture for burn-any4's Mixtral (sparse mixture-of-experts): a randomly initialised tiny
`MixtralForCausalLM` and the logits transformers computes for it. Not a trained model.

Writes, next to this script:
  config.json, model.safetensors   transformers' own `save_pretrained` (f32; transformers 5 saves
                                   the legacy Hub layout `block_sparse_moe.experts.E.w{1,2,3}`)
  tokenizer.json                   a byte-level BPE with no merges: <s>=0, </s>=1, then the 256
                                   bytes (so any text encodes and the vocabulary stays tiny)
  reference_logits.json            full [seq, vocab] f32 logits for a fixed input longer than the
                                   sliding window, the last row again without the window, the routing
                                   of every layer, and a greedy continuation

Deterministic (seeded, 1 CPU thread). Run with the tiny-Llama venv:
  HF_HUB_OFFLINE=1 /tmp/any4-train/venv/bin/python models/tiny-mixtral/make_fixture.py
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import MixtralConfig, MixtralForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 4242
SLIDING_WINDOW = 8  # the reference input is 3x longer
TEXT = "The king said that he would not go to sea."
GREEDY_TOKENS = 8


def make_tokenizer():
    """Byte-level BPE with an empty merge list: every byte is one token."""
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    # Byte b maps to the same printable char GPT-2's byte-level scheme uses.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    to_char = {b: chr(c) for b, c in zip(bs, cs)}
    assert set(to_char.values()) == set(byte_chars)
    vocab = {"<s>": 0, "</s>": 1}
    for b in range(256):
        vocab[to_char[b]] = 2 + b
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
    )
    return tok


def make_config(sliding_window=SLIDING_WINDOW):
    return MixtralConfig(
        vocab_size=258,
        hidden_size=128,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=sliding_window,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
    )


def init_(model):
    """Scale-preserving init (linears N(0, 1/fan_in), embeddings N(0, 1), norms near 1) so that
    activations and router logits are O(1): routing decisions then have clear margins instead of
    hinging on 1e-7 differences, as they would with HF's N(0, 0.02) init."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                # 3-D fused expert tensors are [experts, out, in]; 2-D are [out, in].
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def routing(model, x):
    """Per layer: the top-k experts of each token and the margin between the k-th and the
    (k+1)-th router probability (a tiny margin would make the fixture fragile)."""
    out, hooks = [], []

    def hook(module, inputs, output):
        _, _, idx = output
        logits = output[0]
        probs = torch.softmax(logits.float(), dim=-1)
        top = probs.sort(dim=-1, descending=True).values
        k = idx.shape[-1]
        out.append({"experts": idx.tolist(), "min_margin": float((top[:, k - 1] - top[:, k]).min())})

    for layer in model.model.layers:
        hooks.append(layer.mlp.gate.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    return out


def f32list(row):
    return [float(str(np.float32(v))) for v in row]


def main():
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    tok = make_tokenizer()
    tok.save(os.path.join(HERE, "tokenizer.json"))

    model = MixtralForCausalLM._from_config(make_config(), attn_implementation="eager")
    init_(model)
    model.eval()
    model.save_pretrained(HERE, safe_serialization=True)
    os.chmod(os.path.join(HERE, "model.safetensors"), 0o644)  # transformers writes it 0600
    gen_cfg = os.path.join(HERE, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)

    # Reload what was written (legacy names -> transformers' fused experts) and check it is the
    # same model, so the references below are the file's, not just the in-memory module's.
    reloaded = MixtralForCausalLM.from_pretrained(HERE, attn_implementation="eager", dtype=torch.float32)
    reloaded.eval()
    ids = tok.encode(TEXT).ids
    x = torch.tensor([ids])
    assert len(ids) > 2 * SLIDING_WINDOW, len(ids)
    with torch.no_grad():
        logits = reloaded(input_ids=x).logits[0]
        same = (model(input_ids=x).logits[0] - logits).abs().max().item()
        assert same == 0.0, f"reloaded model differs by {same}"
        sdpa = MixtralForCausalLM.from_pretrained(HERE, attn_implementation="sdpa", dtype=torch.float32)
        sdpa_diff = (sdpa(input_ids=x).logits[0] - logits).abs().max().item()
        nowin = MixtralForCausalLM.from_pretrained(HERE, attn_implementation="eager", dtype=torch.float32)
        nowin.config.sliding_window = None  # read by the mask builder and every attention layer
        nowin_logits = nowin(input_ids=x).logits[0]
        greedy = reloaded.generate(
            input_ids=x, max_new_tokens=GREEDY_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=1
        )[0, len(ids):].tolist()
    window_effect = (nowin_logits[-1] - logits[-1]).abs().max().item()
    early_same = (nowin_logits[:SLIDING_WINDOW] - logits[:SLIDING_WINDOW]).abs().max().item()
    assert early_same < 1e-5 and window_effect > 1e-3, (early_same, window_effect)
    routes = routing(reloaded, x)
    counts = [np.bincount(np.array(r["experts"]).ravel(), minlength=4).tolist() for r in routes]
    ref = {
        "note": (
            "Random-init MixtralForCausalLM (make_fixture.py), f32, eager attention, CPU, 1 thread, "
            f"transformers {__import__('transformers').__version__}, torch {torch.__version__}. "
            "input_ids = tokenizer.encode(text) with <s> prepended; logits: full [seq, vocab]; "
            "last_logits_without_window: the last position's logits with sliding_window=None; routing: per layer, "
            "each token's top-k experts and the smallest top-k vs next probability margin; "
            "greedy_continuation_ids: transformers generate, do_sample=False, KV cache."
        ),
        "text": TEXT,
        "input_ids": ids,
        "shape": list(logits.shape),
        "logits": [f32list(r) for r in logits.numpy()],
        "last_logits_without_window": f32list(nowin_logits[-1].numpy()),
        "greedy_continuation_ids": greedy,
        "routing": routes,
        "tokens_per_expert": counts,
        "max_abs_sdpa_vs_eager": sdpa_diff,
    }
    with open(os.path.join(HERE, "reference_logits.json"), "w") as f:
        json.dump(ref, f)
    print("ids", ids)
    print("tokens per expert", counts, "min margins", [r["min_margin"] for r in routes])
    print("greedy", greedy, "window effect", window_effect, "sdpa vs eager", sdpa_diff)
    print("logit scale", logits.abs().max().item())


if __name__ == "__main__":
    main()
