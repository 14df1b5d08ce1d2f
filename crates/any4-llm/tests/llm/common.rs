//! Helpers and imports shared by every module of this test binary.

pub use std::path::{Path, PathBuf};

pub use any4_burn::{
    CALIBRATION_PROMPT, QuantizeConfig, qlinear_paths, quantize_model, quantize_model_sequential,
};
pub use any4_core::rng::SplitMix64;
pub use any4_llm::*;
pub use burn::tensor::{Device, Tensor};
pub use safetensors::tensor::{Dtype, TensorView};

pub fn device() -> Device {
    Device::flex()
}

pub fn tiny_llama_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama")
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// f32 sums of a few hundred products in different orders (cache vs full forward, batched vs
/// not), relative to the logit scale.
pub const F32_REORDER_TOL: f32 = 1e-5;

/// Our f32 forward against transformers' eager f32 forward: different kernels and summation
/// orders, relative to the largest logit.
pub const HF_LOGIT_TOL: f32 = 1e-5;

pub fn random_config(sliding_window: Option<usize>, layers: usize) -> LlamaConfig {
    let json = serde_json::json!({
        "architectures": [if sliding_window.is_some() { "MistralForCausalLM" } else { "LlamaForCausalLM" }],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 128,
        "vocab_size": 97,
        "tie_word_embeddings": false,
        "sliding_window": sliding_window,
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    LlamaConfig::from_json(&json.to_string()).expect("valid test config")
}

/// [`random_config`] as a Mixtral: 4 experts, top 2, each expert as wide as the dense MLP.
pub fn random_mixtral_config(sliding_window: Option<usize>, layers: usize) -> LlamaConfig {
    let mut json = serde_json::to_value(random_config(sliding_window, layers)).unwrap();
    json["architectures"] = serde_json::json!(["MixtralForCausalLM"]);
    json["num_local_experts"] = 4.into();
    json["num_experts_per_tok"] = 2.into();
    LlamaConfig::from_json(&json.to_string()).expect("valid test config")
}

pub fn random_ids(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| (r.next_u64() % vocab as u64) as u32)
        .collect()
}

pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("any4-llm-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write `config` and random weights (in `dtype`) as an HF folder; `edit` may drop or reshape.
pub fn write_checkpoint(
    dir: &Path,
    config: &LlamaConfig,
    dtype: Dtype,
    edit: impl Fn(&str, Vec<usize>) -> Option<Vec<usize>>,
) -> Vec<(String, Vec<f32>)> {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(config).unwrap(),
    )
    .unwrap();
    let mut tensors = Vec::new();
    for (i, (name, shape)) in hf_tensor_shapes(config).into_iter().enumerate() {
        let Some(shape) = edit(&name, shape) else {
            continue;
        };
        let n: usize = shape.iter().product();
        let mut r = SplitMix64::new(i as u64);
        let values: Vec<f32> = (0..n).map(|_| r.next_gaussian() as f32 * 0.1).collect();
        let bytes: Vec<u8> = match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => values
                .iter()
                .flat_map(|v| (*v as f64).to_le_bytes())
                .collect(),
        };
        tensors.push((name, shape, bytes, values));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b, _)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::tensor::serialize(views, None).unwrap(),
    )
    .unwrap();
    tensors.into_iter().map(|(n, _, _, v)| (n, v)).collect()
}

pub fn load_dir(dir: &Path) -> Result<Llama> {
    let config = LlamaConfig::from_file(dir.join("config.json"))?;
    load_model(config, &SafetensorsSource::open_dir(dir)?, &device())
}
