//! 4-bit code packing: eight codes per `u32`, row-major.
//!
//! Bit order: code `k` of a row lives in word `k / 8` of that row, bits `4·(k mod 8) .. +4`
//! (lowest nibble first, so on a little-endian machine the byte stream reads codes in order, two
//! per byte, low nibble first, like GGUF's Q4 types). Each row starts on a word boundary: a row
//! of `K` codes takes `ceil(K / 8)` words, and padding nibbles are 0.

/// Words per packed row of `k` codes.
#[inline]
pub fn words_per_row(k: usize) -> usize {
    k.div_ceil(8)
}

/// Pack `codes` (`rows × k`, each < 16) into `rows × words_per_row(k)` words.
///
/// # Panics
/// If `codes.len() != rows · k` or a code is ≥ 16 (caller bugs: codes come from this crate).
pub fn pack(codes: &[u8], rows: usize, k: usize) -> Vec<u32> {
    assert_eq!(codes.len(), rows * k, "pack: codes must be rows × k");
    let wpr = words_per_row(k);
    let mut out = vec![0u32; rows * wpr];
    for (row_codes, row_words) in codes.chunks(k.max(1)).zip(out.chunks_mut(wpr.max(1))) {
        pack_row(row_codes, row_words);
    }
    out
}

/// Pack one row of codes into `words` (`words.len() == words_per_row(codes.len())`).
pub fn pack_row(codes: &[u8], words: &mut [u32]) {
    assert_eq!(
        words.len(),
        words_per_row(codes.len()),
        "pack_row: word count"
    );
    for (chunk, word) in codes.chunks(8).zip(words.iter_mut()) {
        *word = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| {
            assert!(c < 16, "pack_row: code {c} does not fit in 4 bits");
            acc | (c as u32) << (4 * i)
        });
    }
}

/// Unpack `rows × k` codes from `rows × words_per_row(k)` words.
pub fn unpack(words: &[u32], rows: usize, k: usize) -> Vec<u8> {
    let wpr = words_per_row(k);
    assert_eq!(
        words.len(),
        rows * wpr,
        "unpack: words must be rows × ceil(k/8)"
    );
    let mut out = Vec::with_capacity(rows * k);
    for row in words.chunks(wpr.max(1)).take(rows) {
        out.extend((0..k).map(|j| code(row, j)));
    }
    out
}

/// Code `j` of one packed row.
#[inline]
pub fn code(row_words: &[u32], j: usize) -> u8 {
    ((row_words[j / 8] >> (4 * (j % 8))) & 0xF) as u8
}
