//! Calibration windows for `any4 quantize`: the built-in prompt, or token windows spread over
//! one or more text files.

use std::path::{Path, PathBuf};

use any4_llm::Tokenizer;

use crate::AnyResult;

/// The calibration token windows.
///
/// Without files: the built-in prompt, one window (with the tokenizer's special tokens, as a
/// chat prompt would start), at most `total` tokens. With files: each file gets an equal share
/// of `total` tokens, as `share / seq` windows of `seq` tokens (one shorter window when the
/// share is below `seq`), taken at evenly spaced line starts over the whole file — a long
/// corpus then contributes text from all of it rather than only its opening pages (GPTQ
/// samples random windows for the same reason). File windows carry no special tokens.
pub fn windows(
    tokenizer: &Tokenizer,
    prompt: &str,
    files: &[PathBuf],
    total: usize,
    seq: usize,
) -> AnyResult<Vec<Vec<u32>>> {
    if seq < 2 || total < 2 {
        return Err("--calib-seq and --calib-tokens must be at least 2".into());
    }
    if files.is_empty() {
        let mut ids = tokenizer.encode(prompt, true)?;
        ids.truncate(total);
        return Ok(vec![ids]);
    }
    let share = total / files.len();
    if share < 2 {
        return Err(format!(
            "--calib-tokens {total} is too few for {} calibration files",
            files.len()
        )
        .into());
    }
    let (count, len) = if share >= seq {
        (share / seq, seq)
    } else {
        (1, share)
    };
    let mut out = Vec::new();
    for f in files {
        out.extend(file_windows(tokenizer, f, count, len)?);
    }
    Ok(out)
}

/// `count` windows of `len` tokens at evenly spaced line starts of the file at `path`.
fn file_windows(
    tokenizer: &Tokenizer,
    path: &Path,
    count: usize,
    len: usize,
) -> AnyResult<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        // The line start at or after the i-th evenly spaced offset (a char boundary).
        let at = i * bytes.len() / count;
        let start = if at == 0 {
            0
        } else {
            bytes[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |p| at + p + 1)
        };
        // Tokenize a growing slice until it holds `len` tokens.
        let mut end_guess = 8 * len;
        let ids = loop {
            let end = floor_char_boundary(&text, start.saturating_add(end_guess));
            let ids = tokenizer.encode(&text[start..end], false)?;
            if ids.len() >= len || end == text.len() {
                break ids;
            }
            end_guess *= 2;
        };
        if ids.len() < len {
            return Err(format!(
                "{}: too short for {count} calibration windows of {len} tokens (window {} has \
                 {} tokens): use fewer --calib-tokens or a longer file",
                path.display(),
                i + 1,
                ids.len()
            )
            .into());
        }
        out.push(ids[..len].to_vec());
    }
    Ok(out)
}

/// The largest char boundary of `s` at or below `i`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
