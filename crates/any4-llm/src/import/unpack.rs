//! One GPTQ or AWQ int4 layer → the any4 layout, losslessly.
//!
//! Both formats store, per weight `(n, k)` (output `n`, input `k`), a 4-bit code `q`, and per
//! group `g` of inputs and output `n` a scale `s` and a zero point `z`; they dequantize to
//! `w = s · (q − z)`. The any4 layout is `w = table[code] · scale + zero` with groups of
//! consecutive inputs, so with the int4 table `0..15`:
//! `code = q`, `scale = s`, `zero = −s·z`. This is exact in f32: `s` has at most 11 significant
//! bits (f16; 8 for bf16) and `q ≤ 15`, `z ≤ 16` at most 5, so `q·s`, `z·s` and
//! `(q − z)·s` are all representable and the kernel's `q·s + (−z·s)` rounds nothing. Stored
//! in f16 when every `−z·s` is (symmetric checkpoints, `z = 8`), else in f32.
//!
//! Layouts (little-endian int32 words, 8 codes each, code `i` of a word at bits `4i..4i+4`):
//! - **GPTQ** (AutoGPTQ / GPTQModel / transformers, `checkpoint_format` `gptq`): `qweight`
//!   `[in/8, out]`, packed along the *input*: word `(r, n)` holds `q(8r + i, n)`; `qzeros`
//!   `[groups, out/8]` packed along the output: word `(g, c)` holds the stored zero of output
//!   `8c + i`, and the zero point is `stored + 1` (`gptq_v2`: `stored`); `scales`
//!   `[groups, out]`; `g_idx` `[in]`, the group of each input (`k / G` without act-order).
//! - **AWQ** (AutoAWQ GEMM): `qweight` `[in, out/8]` and `qzeros` `[in/G, out/8]` packed along
//!   the *output* in AWQ's order — code `i` of word `(k, c)` belongs to output
//!   `8c + [0, 2, 4, 6, 1, 3, 5, 7][i]`; `scales` `[in/G, out]`; no offset on zeros.
//!
//! Act-order (GPTQ `desc_act`) assigns inputs to groups in the order of decreasing Hessian
//! diagonal, so a group is a scattered set of inputs and `g_idx` is not `k / G`. The any4
//! layout has no input permutation: a run of consecutive inputs shares one scale and zero. A
//! layer is imported exactly when some supported any4 group size `G'` has `g_idx` constant on
//! every run of `G'` inputs (no act-order, or act-order with static groups); otherwise it is
//! refused, naming the tensor and the first two inputs that break the runs.

use any4_core::{Any4Config, Format, GroupSize, ParamDtype, QuantizedMatrix};
use safetensors::Dtype;

/// A stored tensor: name (for errors), dtype, shape and little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// Name in the checkpoint.
    pub name: &'a str,
    /// Stored dtype.
    pub dtype: Dtype,
    /// Stored shape.
    pub shape: &'a [usize],
    /// Data.
    pub bytes: &'a [u8],
}

/// Which int4 layout a layer is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedFormat {
    /// GPTQ; `zero_offset` is 1 for the `gptq` checkpoint format (zeros stored minus one), 0 for
    /// `gptq_v2`.
    Gptq {
        /// Added to every stored zero.
        zero_offset: u8,
    },
    /// AutoAWQ's GEMM layout.
    Awq,
}

/// The packed tensors of one layer.
#[derive(Debug, Clone, Copy)]
pub struct PackedLayer<'a> {
    /// Packed codes.
    pub qweight: RawTensor<'a>,
    /// Packed zero points.
    pub qzeros: RawTensor<'a>,
    /// Scales.
    pub scales: RawTensor<'a>,
    /// GPTQ's group of each input, if stored.
    pub g_idx: Option<RawTensor<'a>>,
}

/// AWQ's packing order: code `i` of a word belongs to output `8c + AWQ_ORDER[i]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Why a layer cannot be imported, naming the tensor.
pub type UnpackError = String;

fn check_packed(t: &RawTensor<'_>) -> Result<(), UnpackError> {
    if !matches!(t.dtype, Dtype::I32 | Dtype::U32) {
        return Err(format!(
            "`{}` is {:?}, expected I32 (8 packed 4-bit values per word)",
            t.name, t.dtype
        ));
    }
    Ok(())
}

fn words(t: &RawTensor<'_>) -> Result<Vec<u32>, UnpackError> {
    check_packed(t)?;
    Ok(t.bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn floats(t: &RawTensor<'_>) -> Result<Vec<f32>, UnpackError> {
    let v = any4_burn::bytes_to_f32(t.dtype, t.bytes)
        .ok_or_else(|| format!("`{}` is {:?}, expected F16, BF16 or F32", t.name, t.dtype))?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(format!(
            "`{}` has a non-finite value {} at index {i}",
            t.name, v[i]
        ));
    }
    Ok(v)
}

fn indices(t: &RawTensor<'_>) -> Result<Vec<i64>, UnpackError> {
    match t.dtype {
        Dtype::I32 => Ok(t
            .bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect()),
        Dtype::I64 => Ok(t
            .bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()),
        other => Err(format!("`{}` is {other:?}, expected I32 or I64", t.name)),
    }
}

fn expect_shape(t: &RawTensor<'_>, shape: &[usize], what: &str) -> Result<(), UnpackError> {
    if t.shape != shape {
        return Err(format!(
            "`{}` has shape {:?}, expected {shape:?} ({what})",
            t.name, t.shape
        ));
    }
    Ok(())
}

/// 4-bit value `i` (0..8) of `word`.
fn nibble(word: u32, i: usize) -> u8 {
    ((word >> (4 * i)) & 0xF) as u8
}

/// The layer `[out, in]` in the any4 layout (int4 table `0..15`, scale `s`, zero `−s·z`),
/// dequantizing to exactly `s · (q − z)` (see the module docs). `group` is the checkpoint's
/// group size (`None`: one group per row); `shape` the dense weight's `[out, in]`.
pub fn unpack_layer(
    format: PackedFormat,
    layer: &PackedLayer<'_>,
    shape: [usize; 2],
    group: Option<usize>,
) -> Result<QuantizedMatrix, UnpackError> {
    let [out, inp] = shape;
    let params = layer_params(format, layer, shape, group)?;
    let mut q = vec![0u8; out * inp];
    let qw = words(&layer.qweight)?;
    match format {
        PackedFormat::Gptq { .. } => {
            for (r, row) in qw.chunks_exact(out).enumerate() {
                for (n, &word) in row.iter().enumerate() {
                    for i in 0..8 {
                        q[n * inp + 8 * r + i] = nibble(word, i);
                    }
                }
            }
        }
        PackedFormat::Awq => {
            for (k, row) in qw.chunks_exact(out / 8).enumerate() {
                for (c, &word) in row.iter().enumerate() {
                    for (i, o) in AWQ_ORDER.iter().enumerate() {
                        q[(8 * c + o) * inp + k] = nibble(word, i);
                    }
                }
            }
        }
    }
    let codes = any4_core::pack::pack(&q, out, inp);
    let table: Vec<f32> = (0..16).map(|v| v as f32).collect();
    QuantizedMatrix::from_parts(
        params.config,
        shape,
        codes,
        table,
        params.scales,
        params.zeros,
    )
    .map_err(|e| format!("`{}`: {e}", layer.qweight.name))
}

/// A layer's any4 parameters, computed from its zeros, scales and group index alone.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerParams {
    /// int4, the any4 group size, f16 or f32 parameters.
    pub config: Any4Config,
    /// `[out, groups']`.
    pub scales: Vec<f32>,
    /// `[out, groups']`, `−s·z`.
    pub zeros: Vec<f32>,
}

/// Everything of [`unpack_layer`] but the codes (checks every tensor's dtype and shape; reads
/// all but `qweight`'s data): what the checkpoint header needs before any code is unpacked.
pub fn layer_params(
    format: PackedFormat,
    layer: &PackedLayer<'_>,
    shape: [usize; 2],
    group: Option<usize>,
) -> Result<LayerParams, UnpackError> {
    let [out, inp] = shape;
    let g = group.unwrap_or(inp);
    if g == 0 || !inp.is_multiple_of(8) || !out.is_multiple_of(8) || !inp.is_multiple_of(g) {
        return Err(format!(
            "`{}`: layer [{out}, {inp}] with group {g}: dimensions must be multiples of 8 and of \
             the group size",
            layer.qweight.name
        ));
    }
    let groups = inp / g;
    // z[g][n], s[g][n], group of each input.
    let mut z = vec![0u8; groups * out];
    let s = floats(&layer.scales)?;
    expect_shape(&layer.scales, &[groups, out], "[groups, out]")?;
    let qz = words(&layer.qzeros)?;
    check_packed(&layer.qweight)?;
    let group_of: Vec<usize>;
    match format {
        PackedFormat::Gptq { zero_offset } => {
            expect_shape(
                &layer.qweight,
                &[inp / 8, out],
                "[in/8, out], packed along inputs",
            )?;
            expect_shape(&layer.qzeros, &[groups, out / 8], "[groups, out/8]")?;
            for (gi, row) in qz.chunks_exact(out / 8).enumerate() {
                for (c, &word) in row.iter().enumerate() {
                    for i in 0..8 {
                        z[gi * out + 8 * c + i] = nibble(word, i) + zero_offset;
                    }
                }
            }
            group_of = match &layer.g_idx {
                Some(t) => {
                    expect_shape(t, &[inp], "[in]")?;
                    let idx = indices(t)?;
                    if let Some((k, v)) = idx
                        .iter()
                        .enumerate()
                        .find(|(_, v)| !(0..groups as i64).contains(v))
                    {
                        return Err(format!(
                            "`{}`: input {k} is in group {v}, outside 0..{groups}",
                            t.name
                        ));
                    }
                    idx.into_iter().map(|v| v as usize).collect()
                }
                None => (0..inp).map(|k| k / g).collect(),
            };
        }
        PackedFormat::Awq => {
            expect_shape(
                &layer.qweight,
                &[inp, out / 8],
                "[in, out/8], packed along outputs",
            )?;
            expect_shape(&layer.qzeros, &[groups, out / 8], "[in/group, out/8]")?;
            for (gi, row) in qz.chunks_exact(out / 8).enumerate() {
                for (c, &word) in row.iter().enumerate() {
                    for (i, o) in AWQ_ORDER.iter().enumerate() {
                        z[gi * out + 8 * c + o] = nibble(word, i);
                    }
                }
            }
            group_of = (0..inp).map(|k| k / g).collect();
        }
    }
    let run = any4_group(&group_of, layer)?;
    let any4_groups = inp / run;
    // The products are exact in f32 (module docs); f32 scales with more bits are checked.
    let mut scales = vec![0f32; out * any4_groups];
    let mut zeros = vec![0f32; out * any4_groups];
    for n in 0..out {
        for b in 0..any4_groups {
            let gi = group_of[b * run];
            let (sv, zv) = (s[gi * out + n], z[gi * out + n]);
            if !exact_products(sv, zv) {
                return Err(format!(
                    "`{}`: scale {sv:e} (group {gi}, output {n}) has too many significant bits \
                     for an exact any4 zero (−scale·zero); only f16/bf16-precision scales \
                     import losslessly",
                    layer.scales.name
                ));
            }
            scales[n * any4_groups + b] = sv;
            zeros[n * any4_groups + b] = -(sv * zv as f32);
        }
    }
    let dtype = if zeros.iter().chain(&scales).all(|v| f16_exact(*v)) {
        ParamDtype::F16
    } else {
        ParamDtype::F32
    };
    let group_size = if run == inp {
        GroupSize::PER_ROW
    } else {
        GroupSize::new(run).map_err(|e| e.to_string())?
    };
    let config = Any4Config::new(Format::Int4)
        .with_group_size(group_size)
        .with_param_dtype(dtype);
    Ok(LayerParams {
        config,
        scales,
        zeros,
    })
}

/// The any4 group length: the largest supported size (or the whole row) on whose runs of
/// consecutive inputs the checkpoint's group index is constant.
fn any4_group(group_of: &[usize], layer: &PackedLayer<'_>) -> Result<usize, UnpackError> {
    let inp = group_of.len();
    let constant_runs = |len: usize| {
        group_of
            .chunks(len)
            .all(|run| run.iter().all(|&g| g == run[0]))
    };
    if constant_runs(inp) {
        return Ok(inp);
    }
    if let Some(&len) = GroupSize::SUPPORTED
        .iter()
        .rev()
        .find(|&&len| len < inp && inp.is_multiple_of(len) && constant_runs(len))
    {
        return Ok(len);
    }
    let name = layer.g_idx.map_or(layer.qweight.name, |t| t.name);
    let smallest = GroupSize::SUPPORTED[0];
    let k = (0..inp)
        .find(|&k| group_of[k] != group_of[k - k % smallest])
        .unwrap_or(0);
    let first = k - k % smallest;
    Err(format!(
        "`{name}`: inputs {first} and {k} share an any4 group of {smallest} but are in GPTQ \
         groups {} and {} (act-order / desc_act): the any4 layout groups consecutive inputs \
         and has no input permutation, so this layer cannot be imported exactly; dequantize \
         the checkpoint and run `any4 quantize`, or use one made without act-order (or with \
         static groups)",
        group_of[first], group_of[k]
    ))
}

/// Whether `q·s` (q ≤ 15) and `z·s` (z ≤ 16) are exact in f32: `s` needs at most 19
/// significant bits (24 − 5).
fn exact_products(s: f32, z: u8) -> bool {
    let exact = |m: f32| (m as f64 * s as f64) == (m * s) as f64;
    exact(15.0) && exact(z as f32) && s.is_finite()
}

fn f16_exact(v: f32) -> bool {
    half::f16::from_f32(v).to_f32() == v
}
