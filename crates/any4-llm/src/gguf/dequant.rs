//! Block dequantization (F32, F16, BF16, Q8_0, Q4_0, Q4_1 → f32) and llama.cpp's Q/K rotary
//! permutation undone.

use super::{GgmlType, GgufError, GgufFile, Result};

impl GgufFile {
    /// Dequantize tensor `name` to f32; returns the values and the row-major shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        let Some((start, end)) = self.byte_range(info) else {
            return Err(GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: name.to_string(),
                ty: info.ty.id(),
            });
        };
        let data = &self.mmap[start..end];
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let values: Vec<f32> = match info.ty {
            GgmlType::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            GgmlType::F16 => data.chunks_exact(2).map(f16).collect(),
            GgmlType::Bf16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            GgmlType::Q8_0 => data
                .chunks_exact(34)
                .flat_map(|b| {
                    let d = f16(&b[..2]);
                    b[2..].iter().map(move |&q| q as i8 as f32 * d)
                })
                .collect(),
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let with_min = info.ty == GgmlType::Q4_1;
                let block = if with_min { 20 } else { 18 };
                let mut out = Vec::with_capacity(data.len() / block * 32);
                for b in data.chunks_exact(block) {
                    let d = f16(&b[..2]);
                    let (m, qs, offset) = if with_min {
                        (f16(&b[2..4]), &b[4..20], 0.0)
                    } else {
                        (0.0, &b[2..18], 8.0)
                    };
                    // Low nibbles hold values 0..16 of the block, high nibbles 16..32.
                    out.extend(qs.iter().map(|&q| ((q & 0xF) as f32 - offset) * d + m));
                    out.extend(qs.iter().map(|&q| ((q >> 4) as f32 - offset) * d + m));
                }
                out
            }
            GgmlType::Other(ty) => {
                return Err(GgufError::UnsupportedType {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    ty,
                });
            }
        };
        Ok((values, info.shape()))
    }
}

/// Undo llama.cpp's rotary permutation of a Q or K projection (`[n_head · head_dim, in]`):
/// the converter reorders each head's rows from HF's "rotate half" layout to interleaved pairs.
///
/// `rows` must be `n_head` heads of an even width and `w` hold `rows × cols` values (callers
/// validate the config and the tensor's shape first); anything else is a caller bug.
pub fn unpermute_qk(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    assert!(
        n_head > 0
            && rows.is_multiple_of(n_head)
            && (rows / n_head).is_multiple_of(2)
            && rows.checked_mul(cols) == Some(w.len()),
        "unpermute_qk: {rows}×{cols} ({} values) is not {n_head} heads of an even width",
        w.len()
    );
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                // GGUF row (h, i, j) came from HF row (h, j, i).
                let src = h * head_dim + i * 2 + j;
                let dst = h * head_dim + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}
