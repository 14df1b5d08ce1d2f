//! Register-resident table lookups and small decoding helpers shared by the kernels.
//!
//! **Int8 lookup of 8 weights by byte permutes.** A row's int8 table is 16 bytes, four u32
//! registers `t0..t3`. A byte permute `prmt(a, b, sel)` builds a word whose byte `i` is byte
//! `sel.nibble(i) & 7` of the 8-byte pair `(b:a)`, so one permute looks up 4 codes at once in
//! half of the table. For a code word `w` (8 nibbles):
//! - `m = w & 0x7777_7777` (codes mod 8), `s = ((w >> 1) & 0x4444_4444) | 0x3210_3210`
//!   (nibble `i` = `i + 4` when code `i` is ≥ 8), computed as `((w & 0x8888_8888) |
//!   0x6420_6420) >> 1`;
//! - `lo = prmt(t0, t1, m)` (entries 0–7), `hi = prmt(t2, t3, m)` (8–15),
//!   `bytes = prmt(lo, hi, s)`: weights 0–3; the same on `m >> 16`, `s >> 16` for weights 4–7.
//!
//! That is 13 integer instructions per 8 weights (6 permutes, 2 logic, 3 shifts, 2 `dp4a` of
//! the caller).
//! On CUDA the whole lookup is one inline-PTX block (`prmt.b32` is one instruction); elsewhere
//! [`byte_perm()`] computes the same bytes with shifts and selects (the selectors never set a
//! nibble's bit 3, the one bit where PTX's permute differs from a plain byte select), so both
//! give bit-identical words — the kernel tests compare them on CUDA.

// `#[cube]` functions expand into undocumented helper items.
#![allow(missing_docs)]

use cubecl::prelude::*;
use half::f16;

/// `prmt.b32` in its default mode for selectors whose nibbles are all `< 8`, portably: byte `i`
/// of the result is byte `(sel >> 4i) & 7` of `(b << 32) | a`.
#[cube]
pub fn byte_perm(a: u32, b: u32, sel: u32) -> u32 {
    let mut r = 0u32;
    #[unroll]
    for i in 0..4u32 {
        let idx = (sel >> (4 * i)) & 7u32;
        let mut src = b;
        if idx < 4u32 {
            src = a;
        }
        r |= ((src >> ((idx & 3u32) * 8u32)) & 255u32) << (8 * i);
    }
    r
}

/// The three CUDA permutes of a 4-weight lookup in one inline-PTX block: `prmt(prmt(t0, t1, m),
/// prmt(t2, t3, m), s)`. One block (not three calls) because an asm output fed to another asm
/// input goes through a local in cubecl-cpp 0.11's lowering.
#[cube]
fn prmt3(t0: u32, t1: u32, t2: u32, t3: u32, m: u32, s: u32) -> u32 {
    let out: u32;
    gpu_asm!(
        "{{ .reg .b32 lo, hi; prmt.b32 lo, {t0}, {t1}, {m}; prmt.b32 hi, {t2}, {t3}, {m}; \
        prmt.b32 {o}, lo, hi, {s}; }}",
        o = out(_) out,
        t0 = in(_) t0, t1 = in(_) t1, t2 = in(_) t2, t3 = in(_) t3, m = in(_) m, s = in(_) s,
        options(pure, nomem)
    );
    out
}

/// The int8 table bytes of the 8 codes of `w` (module docs): `(weights 0–3, weights 4–7)`,
/// byte `i` of each word the entry of that weight; `prmt` selects CUDA's byte permute.
#[cube]
pub fn lookup8(
    w: u32,
    bit3: u32,
    t0: u32,
    t1: u32,
    t2: u32,
    t3: u32,
    #[comptime] prmt: bool,
) -> (u32, u32) {
    // `s = ((w >> 1) & 0x4444_4444) | 0x3210_3210` as `((w & bit3) | 0x6420_6420) >> 1` with
    // `bit3 = 0x8888_8888` a kernel argument: one immediate per operation, the other operand
    // read from the constant bank (a literal would be rematerialized into a register per use).
    let m = w & 0x7777_7777u32;
    let t = (w & bit3) | 0x6420_6420u32;
    let s = t >> 1u32;
    let m2 = m >> 16u32;
    let s2 = t >> 17u32;
    if comptime!(prmt) {
        (prmt3(t0, t1, t2, t3, m, s), prmt3(t0, t1, t2, t3, m2, s2))
    } else {
        let lo = byte_perm(t0, t1, m);
        let hi = byte_perm(t2, t3, m);
        let first = byte_perm(lo, hi, s);
        let lo2 = byte_perm(t0, t1, m2);
        let hi2 = byte_perm(t2, t3, m2);
        let second = byte_perm(lo2, hi2, s2);
        (first, second)
    }
}

/// f16 bits (low 16 of `h`) to f32, for finite values: native conversion where the runtime has
/// f16, else exact integer decoding (`(h & 0x7fff) << 13` read as f32 is the value × 2^-112,
/// subnormals included; one multiply by 2^112 restores it).
#[cube]
pub fn f16_bits_to_f32(h: u32, #[comptime] native: bool) -> f32 {
    if comptime!(native) {
        let v = Vector::<f16, Const<2>>::reinterpret(h);
        f32::cast_from(v.extract(0usize))
    } else {
        let mag = f32::reinterpret((h & 0x7fffu32) << 13u32) * 5.192_297e33f32;
        let mut v = mag;
        if (h & 0x8000u32) != 0u32 {
            v = -mag;
        }
        v
    }
}

/// An activation element as f32.
#[cube]
pub fn to_f32<F: Float>(v: F) -> f32 {
    f32::cast_from(v)
}
