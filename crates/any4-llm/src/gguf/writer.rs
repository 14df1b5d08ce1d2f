//! A small GGUF writer (llama.cpp's layout: dims innermost first, data aligned to 32 bytes unless
//! `general.alignment` says otherwise), for tests and fuzz seeds: the reader's tests and the
//! fuzz targets build their files with it. Feature `gguf-writer` (always on in this crate's own
//! tests); not a model exporter — it writes exactly the values and blocks it is given.

use super::reader::MAGIC;

/// A metadata value as written (the GGUF value type ids in the variant docs).
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    /// type 0.
    U8(u8),
    /// type 1.
    I8(i8),
    /// type 2.
    U16(u16),
    /// type 3.
    I16(i16),
    /// type 4.
    U32(u32),
    /// type 5.
    I32(i32),
    /// type 6.
    F32(f32),
    /// type 7.
    Bool(bool),
    /// type 8.
    Str(String),
    /// type 9: item type and items.
    Array(u32, Vec<Meta>),
    /// type 10.
    U64(u64),
    /// type 11.
    I64(i64),
    /// type 12.
    F64(f64),
}

impl Meta {
    fn ty(&self) -> u32 {
        match self {
            Meta::U8(_) => 0,
            Meta::I8(_) => 1,
            Meta::U16(_) => 2,
            Meta::I16(_) => 3,
            Meta::U32(_) => 4,
            Meta::I32(_) => 5,
            Meta::F32(_) => 6,
            Meta::Bool(_) => 7,
            Meta::Str(_) => 8,
            Meta::Array(..) => 9,
            Meta::U64(_) => 10,
            Meta::I64(_) => 11,
            Meta::F64(_) => 12,
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Meta::U8(v) => out.push(*v),
            Meta::I8(v) => out.push(*v as u8),
            Meta::U16(v) => out.extend(v.to_le_bytes()),
            Meta::I16(v) => out.extend(v.to_le_bytes()),
            Meta::U32(v) => out.extend(v.to_le_bytes()),
            Meta::I32(v) => out.extend(v.to_le_bytes()),
            Meta::F32(v) => out.extend(v.to_le_bytes()),
            Meta::Bool(v) => out.push(u8::from(*v)),
            Meta::Str(s) => string(out, s),
            Meta::Array(ty, items) => {
                out.extend(ty.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(out);
                }
            }
            Meta::U64(v) => out.extend(v.to_le_bytes()),
            Meta::I64(v) => out.extend(v.to_le_bytes()),
            Meta::F64(v) => out.extend(v.to_le_bytes()),
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A tensor: name, GGUF dims (innermost first), ggml type id and raw data.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    /// llama.cpp name.
    pub name: String,
    /// Dims, innermost first.
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ty: u32,
    /// Encoded data.
    pub data: Vec<u8>,
}

impl GgufTensor {
    /// A tensor of ggml type `ty` holding `data` (already encoded, see [`encode`]).
    pub fn new(name: &str, dims: Vec<u64>, ty: u32, data: Vec<u8>) -> Self {
        GgufTensor {
            name: name.to_string(),
            dims,
            ty,
            data,
        }
    }
}

/// Serialize a GGUF file (`version` 2 or 3; alignment 32 unless `general.alignment` says).
pub fn write(version: u32, kv: &[(&str, Meta)], tensors: &[GgufTensor]) -> Vec<u8> {
    let align = kv
        .iter()
        .find_map(|(k, v)| match (k, v) {
            (&"general.alignment", Meta::U32(a)) => Some(*a as usize),
            _ => None,
        })
        .unwrap_or(32);
    let mut out = Vec::new();
    out.extend(MAGIC.to_le_bytes());
    out.extend(version.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        string(&mut out, k);
        out.extend(v.ty().to_le_bytes());
        v.write(&mut out);
    }
    let mut offset = 0u64;
    for t in tensors {
        string(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += t.data.len().div_ceil(align) as u64 * align as u64;
    }
    while out.len() % align != 0 {
        out.push(0);
    }
    for t in tensors {
        out.extend(&t.data);
        while out.len() % align != 0 {
            out.push(0);
        }
    }
    out
}

fn f16(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Encode `values` as ggml type `ty`: F32 (0), F16 (1), BF16 (30), Q8_0 (8), Q4_0 (2) or Q4_1
/// (3); the block types take a multiple of 32 values (round to nearest, as llama.cpp does).
///
/// # Panics
/// On any other type id (a test bug).
pub fn encode(values: &[f32], ty: u32) -> Vec<u8> {
    match ty {
        0 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        1 => values.iter().flat_map(|v| f16(*v)).collect(),
        30 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        8 => values
            .chunks(32)
            .flat_map(|b| {
                let d = b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                let mut out = f16(d).to_vec();
                out.extend(b.iter().map(|v| {
                    let q = if d > 0.0 { (v / d).round() } else { 0.0 };
                    q as i8 as u8
                }));
                out
            })
            .collect(),
        2 | 3 => values
            .chunks(32)
            .flat_map(|b| {
                let (mn, mx) = b
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, c), v| (a.min(*v), c.max(*v)));
                let (d, m, offset) = if ty == 3 {
                    ((mx - mn) / 15.0, mn, 0.0)
                } else {
                    (mx.abs().max(mn.abs()) / 8.0, 0.0, 8.0)
                };
                let q = |v: f32| {
                    let x = if d > 0.0 {
                        (v - m) / d + offset
                    } else {
                        offset
                    };
                    x.round().clamp(0.0, 15.0) as u8
                };
                let mut out = f16(d).to_vec();
                if ty == 3 {
                    out.extend(f16(m));
                }
                out.extend((0..16).map(|i| q(b[i]) | (q(b[i + 16]) << 4)));
                out
            })
            .collect(),
        other => panic!("no encoder for ggml type {other}"),
    }
}
