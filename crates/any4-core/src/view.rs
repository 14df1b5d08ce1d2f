//! A borrowed view of the portable layout, so that buffers owned elsewhere (a Burn tensor's
//! storage, a memory-mapped checkpoint) can be dequantized and multiplied without copying.

use rayon::prelude::*;

use crate::config::GroupSize;
use crate::error::{Error, Result};
use crate::int8::{BLOCK, INT8_TABLE_WORDS, Weights};
use crate::pack::words_per_row;
use crate::quantize::TABLE_LEN;
use crate::simd::Isa;

/// `[rows, cols]` quantized weights over borrowed buffers (layout: see
/// [`QuantizedMatrix`](crate::QuantizedMatrix)). Lengths are checked once at construction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantizedView<'a> {
    rows: usize,
    cols: usize,
    group: GroupSize,
    codes: &'a [u32],
    table: &'a [f32],
    scales: &'a [f32],
    zeros: &'a [f32],
    /// Precomputed int8 tables, `[table_rows, INT8_TABLE_WORDS]` packed words.
    int8: Option<&'a [u32]>,
}

impl<'a> QuantizedView<'a> {
    /// A view over `codes [rows, ceil(cols/8)]`, `table [1 or rows, 16]`,
    /// `scales`/`zeros [rows, groups]`; errors name the buffer whose length is wrong.
    pub fn new(
        [rows, cols]: [usize; 2],
        group: GroupSize,
        codes: &'a [u32],
        table: &'a [f32],
        scales: &'a [f32],
        zeros: &'a [f32],
    ) -> Result<Self> {
        if rows == 0 {
            return Err(Error::NoRows);
        }
        if cols < 16 {
            return Err(Error::KTooSmall { k: cols });
        }
        let groups = group.groups_for(cols);
        let check = |what, expected: usize, got: usize| {
            if expected == got {
                Ok(())
            } else {
                Err(Error::ShapeMismatch {
                    what,
                    expected,
                    got,
                })
            }
        };
        check(
            "codes [rows, ceil(cols/8)]",
            rows * words_per_row(cols),
            codes.len(),
        )?;
        if table.len() != TABLE_LEN {
            check("table [table_rows, 16]", rows * TABLE_LEN, table.len())?;
        }
        check("scales [rows, groups]", rows * groups, scales.len())?;
        check("zeros [rows, groups]", rows * groups, zeros.len())?;
        Ok(QuantizedView {
            rows,
            cols,
            group,
            codes,
            table,
            scales,
            zeros,
            int8: None,
        })
    }

    /// This view with precomputed int8 tables ([`int8_tables`](crate::int8_tables) of its
    /// table, `[table_rows, INT8_TABLE_WORDS]`), which the int8 path then reads instead of
    /// converting each row's table per call. Errors if the length does not match the table.
    pub fn with_int8_tables(mut self, words: &'a [u32]) -> Result<Self> {
        let expected = self.table.len() / TABLE_LEN * INT8_TABLE_WORDS;
        if words.len() != expected {
            return Err(Error::ShapeMismatch {
                what: "int8 tables [table_rows, 6]",
                expected,
                got: words.len(),
            });
        }
        self.int8 = Some(words);
        Ok(self)
    }

    /// Whether the view carries precomputed int8 tables.
    pub(crate) fn has_int8_tables(&self) -> bool {
        self.int8.is_some()
    }

    /// The f32 tables, `[table_rows, 16]`.
    pub(crate) fn tables(&self) -> &'a [f32] {
        self.table
    }

    /// The buffers as the int8 kernels read them.
    ///
    /// # Panics
    /// If the view has no int8 tables (see [`has_int8_tables`](Self::has_int8_tables)).
    pub(crate) fn int8_weights(&self) -> Weights<'a> {
        Weights {
            rows: self.rows,
            words_per_row: words_per_row(self.cols),
            codes: self.codes,
            t8: self.int8.expect("int8_weights: a view with int8 tables"),
            shared: self.table.len() == TABLE_LEN,
            groups: self.groups(),
            group_blocks: (self.group_len() / BLOCK).max(1),
            scales: self.scales,
            zeros: self.zeros,
        }
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Length of a full group (`cols` when per row).
    pub fn group_len(&self) -> usize {
        self.group.len_for(self.cols)
    }
    /// Groups per row (the last may be short).
    pub fn groups(&self) -> usize {
        self.group.groups_for(self.cols)
    }
    /// Packed codes of one row.
    pub fn row_codes(&self, row: usize) -> &'a [u32] {
        let wpr = words_per_row(self.cols);
        &self.codes[row * wpr..(row + 1) * wpr]
    }
    /// The table used by `row` (shared tables have one row).
    pub fn row_table(&self, row: usize) -> &'a [f32; TABLE_LEN] {
        let r = if self.table.len() == TABLE_LEN {
            0
        } else {
            row
        };
        self.table[r * TABLE_LEN..(r + 1) * TABLE_LEN]
            .try_into()
            .expect("table rows have 16 entries")
    }
    /// Scales of one row.
    pub fn row_scales(&self, row: usize) -> &'a [f32] {
        let g = self.groups();
        &self.scales[row * g..(row + 1) * g]
    }
    /// Zeros of one row.
    pub fn row_zeros(&self, row: usize) -> &'a [f32] {
        let g = self.groups();
        &self.zeros[row * g..(row + 1) * g]
    }

    /// Dequantize one row into `out` (`cols` values).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        self.dequantize_row_with(Isa::detect(), row, out)
    }

    /// Per group: SIMD table lookup of the codes and `v · s + z`.
    fn dequantize_row_with(&self, isa: Isa, row: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "dequantize_row: output length");
        let (table, words) = (self.row_table(row), self.row_codes(row));
        let (s, z) = (self.row_scales(row), self.row_zeros(row));
        let group = self.group_len();
        for (g, chunk) in out.chunks_mut(group).enumerate() {
            // Supported group sizes are multiples of 8, so every group starts on a word.
            let start = g * group;
            isa.lut_decode_affine(
                &words[start / 8..(start + chunk.len()).div_ceil(8)],
                table,
                s[g],
                z[g],
                chunk,
            );
        }
    }

    /// Columns `k0 .. k0 + out.len()` of one dequantized row (`k0` a multiple of 8).
    pub(crate) fn dequantize_range_with(&self, isa: Isa, row: usize, k0: usize, out: &mut [f32]) {
        let end = k0 + out.len();
        assert!(
            k0.is_multiple_of(8) && end <= self.cols,
            "dequantize_range: columns"
        );
        let (table, words) = (self.row_table(row), self.row_codes(row));
        let (s, z) = (self.row_scales(row), self.row_zeros(row));
        let group = self.group_len();
        let mut j = k0;
        while j < end {
            // Up to the next group boundary; groups start on words (sizes are multiples of 8).
            let g = j / group;
            let stop = ((g + 1) * group).min(end);
            let chunk = &mut out[j - k0..stop - k0];
            isa.lut_decode_affine(&words[j / 8..stop.div_ceil(8)], table, s[g], z[g], chunk);
            j = stop;
        }
    }

    /// The dense row-major `[rows, cols]` matrix.
    pub fn dequantize(&self) -> Vec<f32> {
        let isa = Isa::detect();
        let mut out = vec![0.0; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, o)| self.dequantize_row_with(isa, r, o));
        out
    }
}
