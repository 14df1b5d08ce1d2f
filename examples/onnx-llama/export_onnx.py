#!/usr/bin/env python3
"""Export the embedded tiny Llama (models/tiny-llama) to ONNX without torch.

The graph is written node by node with the `onnx` package; weights are not copied: every
initializer is ONNX *external data* pointing at its bytes inside `model.safetensors` (raw
little-endian f32, the layout both formats share), so the committed .onnx file holds only the
graph. Linear layers are `Gemm(x, W, transB=1)` on a 2-D `[seq, hidden]` residual stream, which
reads HF's `[out, in]` weights in place (burn-import turns such a Gemm into `nn::Linear`).
Attention is ONNX's opset-23 `Attention` op (grouped-query, causal).

    pip install numpy onnx      # the committed file: onnx 1.23.2, numpy 2.4.6
    python export_onnx.py ../../models/tiny-llama model/tiny-llama.onnx

The output must sit next to a copy of `model.safetensors` (external data paths are relative
and may not leave the ONNX file's folder); build.rs places both in OUT_DIR.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 23


def safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def main(model_dir, out):
    model_dir, out = Path(model_dir), Path(out)
    cfg = json.loads((model_dir / "config.json").read_text())
    d, f, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // heads
    layers, eps = cfg["num_hidden_layers"], cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta", 10000.0)
    assert cfg.get("tie_word_embeddings", False), "this export handles the tied LM head only"
    start, header = safetensors_header(model_dir / "model.safetensors")

    inits, nodes = [], []

    def weight(name):
        """An initializer stored as external data inside model.safetensors."""
        info = header[name]
        assert info["dtype"] == "F32", name
        a, b = info["data_offsets"]
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=info["shape"])
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "model.safetensors"), ("offset", str(start + a)),
                     ("length", str(b - a))):
            e = t.external_data.add()
            e.key, e.value = k, v
        inits.append(t)
        return name

    def const(name, array):
        inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    counter = [0]

    def node(op, inputs, name=None, **attrs):
        counter[0] += 1
        out_name = name or f"{op.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out_name], name=out_name, **attrs))
        return out_name

    def linear(x, w):
        # Y = X·Wᵀ with W = [out, in] as stored by HF.
        return node("Gemm", [x, weight(w)], alpha=1.0, beta=1.0, transA=0, transB=1)

    eps_c = const("eps", np.array([eps], np.float32))
    axis_last = const("axis_last", np.array([-1], np.int64))

    def rms_norm(x, w):
        ms = node("ReduceMean", [node("Mul", [x, x]), axis_last], keepdims=1)
        rms = node("Sqrt", [node("Add", [ms, eps_c])])
        return node("Mul", [node("Div", [x, rms]), weight(w)])

    # inv_freq exactly as any4-llm / transformers compute it (f64 power, rounded to f32).
    inv_freq = np.array([1.0 / theta ** (2 * i / hd) for i in range(hd // 2)], np.float32)
    # Positions 0..seq from the input's shape; angle = p·f in f32; cos/sin [seq, 1, head_dim].
    seq = node("Squeeze", [node("Shape", ["input_ids"], start=1, end=2),
                           const("axis0", np.array([0], np.int64))])
    pos = node("Cast", [node("Range", [const("zero", np.array(0, np.int64)), seq,
                                       const("one", np.array(1, np.int64))])],
               to=TensorProto.FLOAT)
    angle = node("Mul", [node("Unsqueeze", [pos, const("axis1", np.array([1], np.int64))]),
                         const("inv_freq", inv_freq[None, :])])
    angle = node("Concat", [angle, angle], axis=1)
    cos = node("Unsqueeze", [node("Cos", [angle]), "axis1"])
    sin = node("Unsqueeze", [node("Sin", [angle]), "axis1"])
    half_lo = const("half_lo", np.array([0, hd // 2], np.int64))
    half_hi = const("half_hi", np.array([hd // 2, hd], np.int64))
    axis2 = const("axis2", np.array([2], np.int64))

    def rope(x, n):
        """HF rotate_half rotary embedding of x: [seq, n·hd] → [seq, n, hd]."""
        x = node("Reshape", [x, const(f"shape_{n}_heads", np.array([0, n, hd], np.int64))])
        x1 = node("Slice", [x, const("s0", np.array([0], np.int64)),
                            const("e0", np.array([hd // 2], np.int64)), axis2])
        x2 = node("Slice", [x, const("s1", np.array([hd // 2], np.int64)),
                            const("e1", np.array([hd], np.int64)), axis2])
        rotated = node("Concat", [node("Neg", [x2]), x1], axis=2)
        return node("Add", [node("Mul", [x, cos]), node("Mul", [rotated, sin])])

    batch_shape = lambda w: const(f"batch_shape_{w}", np.array([1, -1, w], np.int64))
    flat = const("flat", np.array([-1], np.int64))
    h = node("Gather", [weight("model.embed_tokens.weight"),
                        node("Reshape", ["input_ids", flat])], axis=0)
    for i in range(layers):
        p = f"model.layers.{i}"
        x = rms_norm(h, f"{p}.input_layernorm.weight")
        q = rope(linear(x, f"{p}.self_attn.q_proj.weight"), heads)
        k = rope(linear(x, f"{p}.self_attn.k_proj.weight"), kv_heads)
        v = linear(x, f"{p}.self_attn.v_proj.weight")
        att = node("Attention", [node("Reshape", [q, batch_shape(heads * hd)]),
                                 node("Reshape", [k, batch_shape(kv_heads * hd)]),
                                 node("Reshape", [v, batch_shape(kv_heads * hd)])],
                   q_num_heads=heads, kv_num_heads=kv_heads, is_causal=1)
        att = node("Reshape", [att, const("shape_rows", np.array([-1, heads * hd], np.int64))])
        h = node("Add", [h, linear(att, f"{p}.self_attn.o_proj.weight")])
        x = rms_norm(h, f"{p}.post_attention_layernorm.weight")
        g = linear(x, f"{p}.mlp.gate_proj.weight")
        u = linear(x, f"{p}.mlp.up_proj.weight")
        act = node("Mul", [node("Mul", [g, node("Sigmoid", [g])]), u])
        h = node("Add", [h, linear(act, f"{p}.mlp.down_proj.weight")])
    h = rms_norm(h, "model.norm.weight")
    logits = linear(h, "model.embed_tokens.weight")  # tied LM head
    node("Reshape", [logits, batch_shape(vocab)], name="logits")

    # Deduplicate the initializers that several nodes share (constants, the tied embedding).
    seen, unique = set(), []
    for t in inits:
        if t.name not in seen:
            seen.add(t.name)
            unique.append(t)
    graph = helper.make_graph(
        nodes, "tiny_llama",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seq", vocab])],
        unique)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="burn-any4 export_onnx.py")
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out)
    print(f"{out}: {len(nodes)} nodes, {len(unique)} initializers, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(*sys.argv[1:3])
