//! Reader tests on hand-built GGUF files (and the writer other tests build them with).

use std::fs::File;
use std::path::Path;

use super::reader::MAGIC;
use super::writer::{self, GgufTensor, Meta};
use super::*;

/// A v3 file with `kv` and `tensors` `(name, dims innermost first, ggml type, data)`.
fn write_gguf(kv: &[(&str, Meta)], tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
    let tensors: Vec<GgufTensor> = tensors
        .iter()
        .map(|(name, dims, ty, data)| GgufTensor::new(name, dims.clone(), *ty, data.clone()))
        .collect();
    writer::write(3, kv, &tensors)
}

fn open_bytes(bytes: &[u8], name: &str) -> Result<GgufFile> {
    let p = std::env::temp_dir().join(format!("any4-gguf-{name}-{}.gguf", std::process::id()));
    std::fs::write(&p, bytes).expect("write temp");
    let r = GgufFile::open(&p);
    let _ = std::fs::remove_file(&p);
    r
}

fn q4_1_block(d: f32, m: f32, q: [u8; 32]) -> Vec<u8> {
    let mut b = half::f16::from_f32(d).to_le_bytes().to_vec();
    b.extend(half::f16::from_f32(m).to_le_bytes());
    b.extend((0..16).map(|i| q[i] | (q[i + 16] << 4)));
    b
}

#[test]
fn reads_metadata_and_dequantizes() {
    let q: [u8; 32] = std::array::from_fn(|i| (i % 16) as u8);
    let q41 = [q4_1_block(0.5, -1.0, q), q4_1_block(0.25, 2.0, q)].concat();
    let mut q80 = half::f16::from_f32(0.1).to_le_bytes().to_vec();
    q80.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let f32s: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let bytes = write_gguf(
        &[
            ("general.architecture", Meta::Str("llama".into())),
            ("llama.block_count", Meta::U32(30)),
        ],
        &[
            ("a", vec![32, 2], 3, q41),
            ("b", vec![32], 8, q80),
            ("c", vec![2], 0, f32s),
        ],
    );
    let g = open_bytes(&bytes, "ok").unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
    let (a, shape) = g.tensor_f32("a").unwrap();
    assert_eq!(shape, vec![2, 32]);
    assert_eq!(a[0], -1.0);
    assert_eq!(a[5], 5.0 * 0.5 - 1.0);
    assert_eq!(a[32 + 17], 1.0 * 0.25 + 2.0);
    let (b, _) = g.tensor_f32("b").unwrap();
    assert!((b[0] - -1.6).abs() < 1e-3 && (b[31] - 1.5).abs() < 1e-3);
    assert_eq!(g.tensor_f32("c").unwrap().0, vec![1.5, -2.0]);
    assert!(matches!(
        g.tensor_f32("zz"),
        Err(GgufError::MissingTensor { .. })
    ));
    assert!(matches!(
        g.get_str("llama.block_count"),
        Err(GgufError::Metadata { .. })
    ));
}

#[test]
fn hostile_and_truncated_files_are_refused() {
    assert!(matches!(
        open_bytes(b"GGUX0000", "magic"),
        Err(GgufError::Format { .. })
    ));
    // A tensor count of 2^60 must be refused before any allocation.
    let mut huge = MAGIC.to_le_bytes().to_vec();
    huge.extend(3u32.to_le_bytes());
    huge.extend((1u64 << 60).to_le_bytes());
    huge.extend(0u64.to_le_bytes());
    let err = open_bytes(&huge, "huge")
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("cannot fit"), "{err}");
    let f32s: Vec<u8> = [1.5f32; 64].iter().flat_map(|v| v.to_le_bytes()).collect();
    let good = write_gguf(&[], &[("c", vec![64], 0, f32s)]);
    let err = open_bytes(&good[..good.len() - 10], "trunc")
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("truncated"), "{err}");
}

fn err_of(bytes: &[u8], name: &str) -> String {
    open_bytes(bytes, name).err().expect("refused").to_string()
}

#[test]
fn malformed_directories_are_refused_with_the_reason() {
    let f32s = |n: usize| -> Vec<u8> { vec![0u8; 4 * n] };
    let dup = write_gguf(
        &[],
        &[("a", vec![4], 0, f32s(4)), ("a", vec![4], 0, f32s(4))],
    );
    assert!(err_of(&dup, "dup").contains("duplicate tensor `a`"));
    let kv = ("k", Meta::U32(1));
    let dup_kv = write_gguf(&[kv.clone(), kv], &[]);
    assert!(err_of(&dup_kv, "dupkv").contains("duplicate metadata key `k`"));
    // 40 values cannot be Q8_0 blocks of 32; the reader used to call this "unsupported".
    let partial = write_gguf(&[], &[("q", vec![40], 8, vec![0u8; 68])]);
    assert!(err_of(&partial, "partial").contains("not a whole number of 32-value blocks"));
    // 2^62 × 8 elements overflow u64.
    let overflow = write_gguf(&[], &[("o", vec![1 << 62, 8], 0, vec![])]);
    assert!(err_of(&overflow, "overflow").contains("dimensions overflow"));
    let far = write_gguf(&[], &[("f", vec![1 << 40], 0, vec![])]);
    assert!(err_of(&far, "far").contains("extends past the end"));
    let dir = std::env::temp_dir();
    let err = GgufFile::open(&dir).err().expect("refused").to_string();
    assert!(err.contains("is a folder"), "{err}");
}

/// Metadata memory is bounded by a value count, not only by the file size: each in-memory
/// value is ~32 bytes even when its encoding is 1 byte.
#[test]
fn metadata_value_count_is_capped() {
    let bytes = write_gguf(&[("big", Meta::Array(0, vec![Meta::U8(7); 100]))], &[]);
    let path = std::env::temp_dir().join(format!("any4-gguf-cap-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).expect("write temp");
    let map = |p: &Path| {
        let f = File::open(p).expect("open");
        // SAFETY: a private temporary file nobody else writes.
        unsafe { memmap2::Mmap::map(&f) }.expect("map")
    };
    // The array itself and its 100 items: 101 values.
    assert!(GgufFile::parse(&path, map(&path), 101).is_ok());
    let err = GgufFile::parse(&path, map(&path), 100)
        .err()
        .expect("refused")
        .to_string();
    let _ = std::fs::remove_file(&path);
    assert!(err.contains("too many values"), "{err}");
}

/// Fuzz finding F2 (docs/RELIABILITY.md): a 6 KB GGUF whose `llama.block_count` is 2^24
/// makes `load_gguf` run out of memory (model construction allocates per declared block:
/// `hf_tensor_shapes` in auto.rs's debug assertion, `Vec::with_capacity` in model.rs); the
/// size bounds of `LlamaConfig::validate` now refuse it before any allocation.
#[test]
fn block_count_beyond_the_file_is_refused() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/gguf-block-count-oom.gguf");
    let g = GgufFile::open(&path).expect("the file itself parses");
    assert_eq!(g.get_u64("llama.block_count").expect("present"), 1 << 24);
    let Err(err) = crate::load_gguf(&path, &burn::tensor::Device::flex()) else {
        panic!("a GGUF declaring 2^24 blocks it does not hold was accepted");
    };
    assert!(err.to_string().contains("block"), "{err}");
}

/// Fuzz findings F3, F5 and review finding F4 (docs/RELIABILITY.md), same root cause as
/// F2: `LlamaConfig::validate` bounds no size. The `llama_config` target's inputs declare
/// 531566 Mixtral layers (the tensor list alone exceeds 2 GB) and a `hidden_size` of
/// 644294967296 (`inv_freq` allocates 322 GB for the implied head width); the third
/// declares `head_dim` 2^62, so `heads × head_dim` overflows (a panic in debug builds,
/// model.rs). Refused by the size bounds of `LlamaConfig::validate`.
#[test]
fn configs_declaring_absurd_sizes_are_refused() {
    for name in [
        "config-layers-oom.json",
        "config-head-dim-overflow.json",
        "config-hidden-size-oom.json",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz")
            .join(name);
        let text = std::fs::read_to_string(&path).expect("fixture");
        assert!(
            crate::LlamaConfig::from_json(&text).is_err(),
            "{name} accepted"
        );
    }
}

#[test]
fn unpermute_inverts_the_rotary_permutation() {
    // Forward permutation as the converter applies it: HF row (h, j, i) -> GGUF row (h, i, j).
    let (n_head, head_dim, cols) = (2, 8, 3);
    let rows = n_head * head_dim;
    let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
    let mut gguf = vec![0.0; hf.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..head_dim / 2 {
                let src = h * head_dim + j * head_dim / 2 + i;
                let dst = h * head_dim + i * 2 + j;
                gguf[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
            }
        }
    }
    assert_eq!(unpermute_qk(&gguf, rows, cols, n_head), hf);
}
