//! GPTQ / AWQ import: hand-checked packings, the numpy fixtures (tests/fixtures/int4,
//! `make_fixtures.py`) bit for bit, whole-model import, and the refusals.

use crate::common::*;
use any4_burn::check_output_dir;
use any4_llm::import::{
    ImportFormat, PackedFormat, PackedLayer, RawTensor, import_int4, unpack_layer,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/int4")
}

fn i32_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect()
}

/// Row `n` of the dequantized weight, through any4-core's own dequantization.
fn dequantized(m: &any4_core::QuantizedMatrix) -> Vec<f32> {
    let view = m.view();
    let [rows, cols] = m.shape();
    let mut out = vec![0f32; rows * cols];
    for (n, row) in out.chunks_mut(cols).enumerate() {
        view.dequantize_row(n, row);
    }
    out
}

/// Worked by hand from the layouts (module docs of `any4_llm::import`).
#[test]
fn hand_checked_gptq_and_awq_words() {
    // GPTQ, 8 outputs × 32 inputs, one group. qweight [4, 8]: word (0, 0) = 0x76543210 holds
    // inputs 0..8 of output 0 as 0, 1, …, 7. qzeros [1, 1] = 0x00000007: output 0 stores 7,
    // so its zero point is 8 (stored + 1); the other outputs store 0 → zero point 1.
    // Scales 0.5. So w[0][0..8] = 0.5 · (0..8 − 8) and w[1][0] = 0.5 · (0 − 1).
    let mut qweight = vec![0u32; 4 * 8];
    qweight[0] = 0x7654_3210;
    let qw = i32_bytes(&qweight);
    let qz = i32_bytes(&[0x0000_0007]);
    let sc = f16_bytes(&[0.5; 8]);
    let layer = PackedLayer {
        qweight: RawTensor {
            name: "q.qweight",
            dtype: Dtype::I32,
            shape: &[4, 8],
            bytes: &qw,
        },
        qzeros: RawTensor {
            name: "q.qzeros",
            dtype: Dtype::I32,
            shape: &[1, 1],
            bytes: &qz,
        },
        scales: RawTensor {
            name: "q.scales",
            dtype: Dtype::F16,
            shape: &[1, 8],
            bytes: &sc,
        },
        g_idx: None,
    };
    let gptq = PackedFormat::Gptq { zero_offset: 1 };
    let w = dequantized(&unpack_layer(gptq, &layer, [8, 32], Some(32)).unwrap());
    assert_eq!(&w[..8], &[-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5]);
    assert_eq!(w[8], -4.0, "input 8 of output 0: code 0");
    assert_eq!(w[32], -0.5, "output 1: code 0, zero point 1");

    // AWQ, 8 outputs × 32 inputs: qweight [32, 1], word of input 0 = 0x76543210. Code i goes to
    // output [0, 2, 4, 6, 1, 3, 5, 7][i], so outputs 0..8 read 0, 4, 1, 5, 2, 6, 3, 7.
    // Zeros 0, scales 1: w[n][0] is the code itself.
    let mut qweight = vec![0u32; 32];
    qweight[0] = 0x7654_3210;
    let qw = i32_bytes(&qweight);
    let qz = i32_bytes(&[0]);
    let sc = f16_bytes(&[1.0; 8]);
    let layer = PackedLayer {
        qweight: RawTensor {
            name: "a.qweight",
            dtype: Dtype::I32,
            shape: &[32, 1],
            bytes: &qw,
        },
        qzeros: RawTensor {
            name: "a.qzeros",
            dtype: Dtype::I32,
            shape: &[1, 1],
            bytes: &qz,
        },
        scales: RawTensor {
            name: "a.scales",
            dtype: Dtype::F16,
            shape: &[1, 8],
            bytes: &sc,
        },
        g_idx: None,
    };
    let w = dequantized(&unpack_layer(PackedFormat::Awq, &layer, [8, 32], Some(32)).unwrap());
    let column0: Vec<f32> = (0..8).map(|n| w[n * 32]).collect();
    assert_eq!(column0, [0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]);
}

/// Every case of `layers.safetensors` against numpy's `s · (q − z)`, bit for bit.
#[test]
fn numpy_fixture_layers_round_trip_bit_exactly() {
    let bytes = std::fs::read(fixtures().join("layers.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let cases = [
        (
            "gptq_sym_g128",
            PackedFormat::Gptq { zero_offset: 1 },
            128,
            "128",
            "F16",
        ),
        (
            "gptq_asym_g32",
            PackedFormat::Gptq { zero_offset: 1 },
            32,
            "32",
            "F32",
        ),
        (
            "gptq_v2_asym_g64",
            PackedFormat::Gptq { zero_offset: 0 },
            64,
            "64",
            "F32",
        ),
        (
            "gptq_perrow",
            PackedFormat::Gptq { zero_offset: 1 },
            256,
            "per-row",
            "F32",
        ),
        // Act-order whose groups are runs of 32 inputs: exact at any4 group 32.
        (
            "gptq_actorder_runs32",
            PackedFormat::Gptq { zero_offset: 1 },
            128,
            "32",
            "F32",
        ),
        ("awq_g128", PackedFormat::Awq, 128, "128", "F32"),
        ("awq_g32", PackedFormat::Awq, 32, "32", "F32"),
    ];
    for (case, format, group, any4_group, dtype) in cases {
        let t = |name: &str| {
            st.tensor(&format!("{case}.{name}"))
                .unwrap_or_else(|_| panic!("{case}.{name}"))
        };
        let (qw, qz, sc) = (t("qweight"), t("qzeros"), t("scales"));
        let names = [
            format!("{case}.qweight"),
            format!("{case}.qzeros"),
            format!("{case}.scales"),
            format!("{case}.g_idx"),
        ];
        let g = st.tensor(&names[3]).ok();
        let layer = PackedLayer {
            qweight: raw(&names[0], &qw),
            qzeros: raw(&names[1], &qz),
            scales: raw(&names[2], &sc),
            g_idx: g.as_ref().map(|v| raw(&names[3], v)),
        };
        let reference = t("reference");
        let shape = [reference.shape()[0], reference.shape()[1]];
        let m = unpack_layer(format, &layer, shape, Some(group))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(m.config().group_size().to_string(), any4_group, "{case}");
        assert_eq!(format!("{:?}", m.config().param_dtype()), dtype, "{case}");
        let expected: Vec<u32> = reference
            .data()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let got: Vec<u32> = dequantized(&m).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, expected, "{case}: dequantized weight differs");
    }

    // Act-order as desc_act makes it (scattered inputs): refused, naming g_idx.
    let case = "gptq_actorder_scattered";
    let names = ["qweight", "qzeros", "scales", "g_idx"].map(|n| format!("{case}.{n}"));
    let views: Vec<_> = names.iter().map(|n| st.tensor(n).unwrap()).collect();
    let layer = PackedLayer {
        qweight: raw(&names[0], &views[0]),
        qzeros: raw(&names[1], &views[1]),
        scales: raw(&names[2], &views[2]),
        g_idx: Some(raw(&names[3], &views[3])),
    };
    let err = unpack_layer(
        PackedFormat::Gptq { zero_offset: 1 },
        &layer,
        [8, 256],
        Some(128),
    )
    .unwrap_err();
    assert!(
        err.contains("gptq_actorder_scattered.g_idx") && err.contains("act-order"),
        "{err}"
    );
}

fn raw<'a>(name: &'a str, v: &'a safetensors::tensor::TensorView<'_>) -> RawTensor<'a> {
    RawTensor {
        name,
        dtype: v.dtype(),
        shape: v.shape(),
        bytes: v.data(),
    }
}

fn reference_weights(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let bits = v
                .data()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, bits)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn whole_gptq_and_awq_models_import_and_run() {
    for (name, format) in [
        ("gptq-tiny", ImportFormat::Gptq),
        ("awq-tiny", ImportFormat::Awq),
    ] {
        let src = fixtures().join(name);
        let out = TempDir::new(&format!("import-{name}"));
        let target = out.0.join("any4");
        let report = import_int4(
            &src,
            &check_output_dir(&target, &[&src], false).unwrap(),
            format,
        )
        .unwrap();
        assert_eq!(report.layers.len(), 7, "{name}");
        assert_eq!(report.dense, vec!["lm_head".to_string()], "{name}");
        let (mut model, _) = load_auto(&target, &device()).unwrap();
        let refs = reference_weights(&src);
        let mut checked = 0;
        any4_burn::QLinearContainer::visit_qlinears(&mut model, "", &mut |p, layer| {
            let Some((_, bits)) = refs.iter().find(|(n, _)| *n == format!("model.{p}.weight"))
            else {
                return;
            };
            assert!(layer.is_quantized(), "{name}: {p}");
            let w: Vec<u32> = to_vec(layer.weight_hf())
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(&w, bits, "{name}: {p} differs from numpy's s·(q − z)");
            checked += 1;
        });
        assert_eq!(checked, 7, "{name}");
        // Dense tensors are the f16 source values, and the model runs.
        let source = SafetensorsSource::open_dir(&src).unwrap();
        let head = source.read("lm_head.weight", &[64, 32]).unwrap();
        assert_eq!(to_vec(model.lm_head.weight_hf()), head, "{name}");
        let logits = to_vec(model.forward_all(token_tensor(&[0, 5, 9, 33], &device())));
        assert!(logits.iter().all(|v| v.is_finite()), "{name}");
        // Importing again over the first output replaces it.
        import_int4(
            &src,
            &check_output_dir(&target, &[&src], false).unwrap(),
            format,
        )
        .unwrap();
    }
}

#[test]
fn unsupported_checkpoints_are_refused_naming_what() {
    let src = fixtures().join("gptq-tiny");
    let out = TempDir::new("import-refused");
    let copy = |name: &str| {
        let d = out.0.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(f), d.join(f)).unwrap();
        }
        d
    };
    let err = |dir: &Path, format| {
        let never = check_output_dir(&out.0.join("never"), &[dir], false).unwrap();
        import_int4(dir, &never, format).unwrap_err().to_string()
    };
    // The wrong --from.
    let e = err(&src, ImportFormat::Awq);
    assert!(e.contains("quant_method is `gptq`"), "{e}");
    // 8-bit.
    let d = copy("bits8");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"bits\": 4", "\"bits\": 8"),
    )
    .unwrap();
    let e = err(&d, ImportFormat::Gptq);
    assert!(e.contains("bits is 8"), "{e}");
    // A dense model.
    let e = err(&tiny_llama_dir(), ImportFormat::Gptq);
    assert!(e.contains("no `quantization_config`"), "{e}");
    // A group size the file's shapes contradict: the scales tensor is named.
    let d = copy("group");
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"group_size\": 32", "\"group_size\": 16"),
    )
    .unwrap();
    let e = err(&d, ImportFormat::Gptq);
    assert!(e.contains("model.layers.0.self_attn.q_proj.scales"), "{e}");
    assert!(!out.0.join("never").exists());
}
