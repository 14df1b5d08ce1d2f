"""The PyTorch decode anchor of `bench decode --random-config`: transformers' LlamaForCausalLM
built at the same shapes (same presets, same fields as benches/decode.rs), random weights, bf16,
greedy, batch 1, on the device's GPU. Decode speed does not depend on the weight values.

    python3 bench/gpu/decode_anchor.py [--preset smollm2-135m,llama-3.2-1b,llama-3-8b]
        [--prompt 32] [--tokens 128] [--repeats 3] [--json FILE]

Measures what `bench decode` measures: tokens/s of the generated tokens after the prompt,
without the prompt's forward. `generate` times prefill and decode together, so each run times
`generate` twice, with `tokens` and with 1 new token, and reports
`(tokens - 1) / (t_tokens - t_1)`; the median over `--repeats`. Each preset runs with the dynamic
cache (transformers' default, eager) and the static cache (preallocated, still eager: no
torch.compile). One JSON record per (preset, cache); a failure (e.g. out of memory) is recorded
as an error, not skipped silently.
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

# The same shapes as PRESETS in benches/decode.rs.
PRESETS = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
                         tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
                         max_position_embeddings=131072, tie_word_embeddings=True,
                         rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0,
                                           original_max_position_embeddings=8192)),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192,
                       tie_word_embeddings=False),
}


def timed_generate(model, ids, new, cache):
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
    if cache != "dynamic":
        kw["cache_implementation"] = cache
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = model.generate(ids, **kw)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    assert out.shape[1] - ids.shape[1] == new, "generate stopped early"
    return dt


def config(preset):
    """The preset as transformers reads a config.json; returns (config, note). If this
    transformers refuses the legacy `rope_scaling` field (5.x moved RoPE settings into
    `rope_parameters`), the preset is built without it: RoPE scaling changes only the rotary
    frequencies, not the work of a decode step."""
    fields = dict(PRESETS[preset])
    try:
        return LlamaConfig(**fields), None
    except Exception as e:  # noqa: BLE001 - reported in the record
        if "rope_scaling" not in fields:
            raise
        fields.pop("rope_scaling")
        return LlamaConfig(**fields), f"rope_scaling dropped: {e!r}"[:200]


def run(preset, prompt, tokens, repeats, cache):
    cfg, note = config(preset)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, prompt), device="cuda")
    runs = []
    with torch.no_grad():
        timed_generate(model, ids, 8, cache)  # warm-up
        for _ in range(repeats):
            full = timed_generate(model, ids, tokens, cache)
            first = timed_generate(model, ids, 1, cache)
            runs.append((tokens - 1) / max(full - first, 1e-9))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    del model
    return {"side": "pytorch", "kind": "torch_decode", "preset": preset, "cache": cache,
            "dtype": "bf16", "prompt_tokens": prompt, "tokens": tokens,
            "tokens_per_s": statistics.median(runs), "runs": runs, "params_M": params,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(), "note": note}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="smollm2-135m,llama-3.2-1b,llama-3-8b")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.tokens < 2:
        ap.error("--tokens must be at least 2")
    recs = []
    for p in a.preset.split(","):
        if p not in PRESETS:
            ap.error(f"--preset {p}: expected one of {', '.join(PRESETS)}")
        for cache in ("dynamic", "static"):
            try:
                r = run(p, a.prompt, a.tokens, a.repeats, cache)
            except Exception as e:  # recorded, not hidden: the table shows the error
                r = {"side": "pytorch", "kind": "torch_decode", "preset": p, "cache": cache,
                     "error": repr(e)[:300]}
            recs.append(r)
            print(json.dumps(r), flush=True)
            torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(recs, f, indent=1)


if __name__ == "__main__":
    main()
