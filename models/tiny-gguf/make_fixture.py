#!/usr/bin/env python3
"""Test fixture for burn-any4's GGUF reader: one randomly initialised tiny `LlamaForCausalLM`
(SmolLM2-shaped: tied embeddings, byte-level BPE with SmolLM2's digit-splitting pre-tokenizer)
saved both as an HF folder and as GGUF "twins" of the same weights. Not a trained model.

Writes, next to this script:
  config.json, model.safetensors   transformers' own `save_pretrained` (f32, no `lm_head.weight`:
                                   tied to the embeddings, as in SmolLM2)
  tokenizer.json                   byte-level BPE: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2
                                   (special), the 256 bytes at 3..259 in GPT-2's byte order, then
                                   the tokens of 60 merges learned on CORPUS; pre-tokenizer
                                   Digits(individual) + ByteLevel, as SmolLM2's
  tiny-gguf-{f32,f16,q8_0,q4_0}.gguf
                                   the same weights written with the `gguf` package as llama.cpp's
                                   convert_hf_to_gguf.py writes a Llama: arch `llama`, its metadata
                                   keys, `blk.N.*` tensor names (gguf's own HF->GGUF name map), Q/K
                                   rows permuted by `LlamaModel.permute`, 1-D norms kept F32, every
                                   2-D tensor in the twin's type. convert_hf_to_gguf has no Q4_0
                                   output; that twin is what `llama-quantize --pure ... Q4_0` makes
                                   (every 2-D tensor Q4_0, no Q6_K for the tied embedding).
  reference_logits.json            transformers' f32 logits for `text` (full [seq, vocab]); for each
                                   rounded twin, transformers' logits of its weights read back from
                                   the file (gguf.GGUFReader, gguf.quants.dequantize, permutation
                                   undone) and how far they are from the f32 logits; the ids of
                                   `tokenizer_text`.

The f32 twin is checked here to read back bit-identical (so its logits are the f32 ones).
Deterministic (seeded, 1 CPU thread). Run with the tiny-Llama venv plus `pip install gguf`:
  HF_HUB_OFFLINE=1 /tmp/any4-train/venv/bin/python models/tiny-gguf/make_fixture.py
"""
import collections
import importlib.metadata
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 2025
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
N_MERGES = 60  # vocab = 3 specials + 256 bytes + 60 merge tokens = 319
CORPUS = (
    "The king said that he would not go to sea. The queen said that she would go. "
    "Then the king and the queen went to the sea in a ship, and the ship went on and on. "
    "They said the sea was wide and the wind was strong, but the king would not turn back."
)
# Logits input: plain text the merges compress. Tokenizer check: special tokens matched inside
# text, digits split one by one (SmolLM2's pre-tokenizer), a multi-byte character, an apostrophe.
TEXT = "The king said that the queen would go to the sea in a ship, and the wind was strong."
TOKENIZER_TEXT = "<|im_start|>user\nThe 3 kings paid 1024 coins in Zürich, didn't they?<|im_end|>\n"
TWINS = [  # file suffix, type of every 2-D tensor, general.file_type
    ("f32", gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    ("f16", gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    ("q8_0", gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    ("q4_0", gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
]


def byte_to_char():
    """GPT-2's byte -> printable character map (what the ByteLevel pre-tokenizer emits)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def learn_merges(n):
    """Plain BPE on CORPUS, deterministic: the most frequent pair, ties to the smallest pair."""
    words = collections.Counter(w for w, _ in pre_tokenizer().pre_tokenize_str(CORPUS))
    words = {tuple(w): c for w, c in words.items()}
    merges, seen = [], set()
    while len(merges) < n:
        pairs = collections.Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + c
        words = merged
        if best[0] + best[1] not in seen:
            seen.add(best[0] + best[1])
            merges.append(best)
    assert len(merges) == n, len(merges)
    return merges


def make_tokenizer():
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for b, ch in sorted(byte_to_char().items()):
        vocab[ch] = len(vocab)
    merges = learn_merges(N_MERGES)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # adds no tokens (SmolLM2)
    tok.add_special_tokens(SPECIALS)
    return tok


def make_config(vocab_size):
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,  # 3 blocks of 32: ffn_down rows quantize too
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,  # SmolLM2-135M's, not the 10000 default, so a dropped key shows
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )


def init_(model):
    """Scale-preserving init (linears N(0, 1/fan_in), embeddings N(0, 1), norms near 1): O(1)
    activations and O(10) logits, so rounding shows in the logits instead of vanishing in HF's
    N(0, 0.02) init."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py's `LlamaModel.permute` (HF rotate-half rows -> interleaved pairs)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tokenizer(tok):
    """`get_vocab_base` + `_set_vocab_gpt2` of convert_hf_to_gguf: tokens by id, added special
    tokens CONTROL, others NORMAL; merges and bos/eos ids through gguf.SpecialVocab."""
    vocab = tok.get_vocab(with_added_tokens=True)
    reverse = {i: t for t, i in vocab.items()}
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    tokens, types = [], []
    for i in range(len(reverse)):
        tokens.append(reverse[i])
        types.append(gguf.TokenType.CONTROL if reverse[i] in special else gguf.TokenType.NORMAL)
    return tokens, types, gguf.SpecialVocab(HERE, load_merges=True, n_vocab=len(tokens))


def write_twin(path, hf, state, tok, qtype, ftype):
    n_head, n_kv = hf.num_attention_heads, hf.num_key_value_heads
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name("tiny-gguf")
    # TextModel.set_gguf_parameters + LlamaModel.set_gguf_parameters
    w.add_context_length(hf.max_position_embeddings)
    w.add_embedding_length(hf.hidden_size)
    w.add_block_count(hf.num_hidden_layers)
    w.add_feed_forward_length(hf.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(hf.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(hf.rms_norm_eps)
    w.add_file_type(ftype)
    w.add_vocab_size(hf.vocab_size)
    w.add_rope_dimension_count(hf.hidden_size // n_head)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, types, special = gguf_tokenizer(tok)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    special.add_to_gguf(w, quiet=True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hf.num_hidden_layers)
    for name, t in state.items():
        data = t.numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            data = permute(data, n_head, n_head)
        elif name.endswith("k_proj.weight"):
            data = permute(data, n_head, n_kv)
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname is not None, name
        if data.ndim <= 1 or gname.endswith("_norm.weight"):
            w.add_tensor(gname, data)  # llama.cpp keeps norms F32
        elif qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(gname, gguf.quants.quantize(data, qtype))
        else:
            w.add_tensor(gname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.chmod(path, 0o644)


def read_twin(path, hf):
    """The HF state dict a reader should recover: dequantized, permutation undone."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hf.num_hidden_layers)
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    state, types = {}, collections.Counter()
    for name in LlamaForCausalLM(hf).state_dict():
        if name == "lm_head.weight":
            continue  # tied
        t = by_name[names.get_name(name, try_suffixes=(".weight", ".bias"))]
        types[t.tensor_type.name] += 1
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape)]
        data = data.reshape(shape)
        if name.endswith("q_proj.weight"):
            data = unpermute(data, hf.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = unpermute(data, hf.num_key_value_heads)
        state[name] = torch.from_numpy(np.ascontiguousarray(data))
    return state, dict(types)


def logits_of(hf, state, x):
    model = LlamaForCausalLM._from_config(hf, attn_implementation="eager", dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    model.tie_weights()
    model.eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        return model(input_ids=x).logits[0]


def f32list(row):
    return [float(str(np.float32(v))) for v in row]


def main():
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    tok = make_tokenizer()
    tok.save(os.path.join(HERE, "tokenizer.json"))
    hf = make_config(tok.get_vocab_size(with_added_tokens=True))

    model = LlamaForCausalLM._from_config(hf, attn_implementation="eager")
    init_(model)
    model.eval()
    model.save_pretrained(HERE, safe_serialization=True)
    os.chmod(os.path.join(HERE, "model.safetensors"), 0o644)  # transformers writes it 0600
    gen_cfg = os.path.join(HERE, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)

    reloaded = LlamaForCausalLM.from_pretrained(HERE, attn_implementation="eager", dtype=torch.float32)
    reloaded.eval()
    state = {k: v for k, v in reloaded.state_dict().items() if k != "lm_head.weight"}
    ids = tok.encode(TEXT).ids
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = reloaded(input_ids=x).logits[0]
        same = (model(input_ids=x).logits[0] - logits).abs().max().item()
    assert same == 0.0, f"reloaded model differs by {same}"
    scale = logits.abs().max().item()

    twins = {}
    for suffix, qtype, ftype in TWINS:
        path = os.path.join(HERE, f"tiny-gguf-{suffix}.gguf")
        write_twin(path, hf, state, tok, qtype, ftype)
        back, types = read_twin(path, hf)
        werr = max((back[k] - state[k]).abs().max().item() for k in state)
        norms = [k for k in state if k.endswith("norm.weight")]
        assert all(torch.equal(back[k], state[k]) for k in norms), "norms stay F32"
        twin_logits = logits_of(hf, back, x)
        diff = (twin_logits - logits).abs().max().item()
        entry = {
            "file": os.path.basename(path),
            "tensor_types": types,
            "max_abs_weight_diff": werr,
            "max_abs_logit_diff_vs_f32": diff,
        }
        if qtype == gguf.GGMLQuantizationType.F32:
            assert werr == 0.0 and diff == 0.0, (werr, diff)
        else:
            entry["logits"] = [f32list(r) for r in twin_logits.numpy()]
        twins[suffix] = entry
        print(f"{suffix}: {types} max |dw| {werr:.3g}, max |dlogit| {diff:.4g} ({diff / scale:.3g} of scale)")

    ref = {
        "note": (
            "Random-init LlamaForCausalLM (make_fixture.py), f32, eager attention, CPU, 1 thread, "
            f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, "
            f"gguf {importlib.metadata.version('gguf')}. "
            "input_ids = tokenizer.encode(text) (no bos: the tokenizer adds none, as SmolLM2's); "
            "logits: full [seq, vocab]; twins.<type>.logits: transformers' logits of the weights read "
            "back from that GGUF file (dequantized, Q/K permutation undone); "
            "tokenizer_ids = tokenizer.encode(tokenizer_text)."
        ),
        "text": TEXT,
        "input_ids": ids,
        "shape": list(logits.shape),
        "logits": [f32list(r) for r in logits.numpy()],
        "twins": twins,
        "tokenizer_text": TOKENIZER_TEXT,
        "tokenizer_ids": tok.encode(TOKENIZER_TEXT).ids,
    }
    with open(os.path.join(HERE, "reference_logits.json"), "w") as f:
        json.dump(ref, f)
    print("ids", ids, "tokenizer ids", ref["tokenizer_ids"])
    print("logit scale", scale)


if __name__ == "__main__":
    main()
