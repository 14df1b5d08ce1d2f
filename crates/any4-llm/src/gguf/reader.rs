//! The GGUF header: magic, version, metadata key/values and the tensor directory, with every
//! length checked against the bytes that remain before anything is allocated.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use super::{GgmlType, GgufError, GgufFile, Result, TensorInfo, Value};

/// `GGUF` in little-endian.
pub(super) const MAGIC: u32 = 0x4655_4747;

/// Most metadata values (array items included) a file may hold. Each costs ~32 bytes in memory
/// however small it is on disk (a `u8` array item is 1 byte), so without a cap a hostile file
/// could make the reader allocate 32× its size. Real files hold well under a million (the
/// largest vocabularies: ~256k tokens, ~500k merges).
pub(super) const MAX_METADATA_VALUES: usize = 1 << 24;

/// Cursor over the header with bounds-checked reads.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Metadata values still allowed (see [`MAX_METADATA_VALUES`]).
    values_left: usize,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T> {
        Err(GgufError::Format {
            path: self.path.to_path_buf(),
            reason: format!("{} (at byte {})", reason.into(), self.pos),
        })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => self.fail(format!("truncated: needs {n} more bytes")),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// A count of items each at least `min_item` bytes long, refused if it cannot fit.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize> {
        let n = self.u64()?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > remaining {
            return self.fail(format!(
                "{what} count {n} cannot fit in the {remaining} bytes left"
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count("string length", 1)?;
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => self.fail("string is not UTF-8"),
        }
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        if self.values_left == 0 {
            return self.fail("metadata holds too many values (array items included)");
        }
        self.values_left -= 1;
        Ok(match ty {
            0 => Value::UInt(self.u8()? as u64),
            1 => Value::Int(self.u8()? as i8 as i64),
            2 => Value::UInt(self.u16()? as u64),
            3 => Value::Int(self.u16()? as i16 as i64),
            4 => Value::UInt(self.u32()? as u64),
            5 => Value::Int(self.u32()? as i32 as i64),
            6 => Value::Float(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 4 {
                    return self.fail("arrays nested too deeply");
                }
                let item_ty = self.u32()?;
                let min = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return self.fail(format!("unknown array item type {other}")),
                };
                let n = self.count("array", min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::UInt(self.u64()?),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_bits(self.u64()?)),
            other => return self.fail(format!("unknown metadata value type {other}")),
        })
    }
}

impl GgufFile {
    /// Map and parse `path` (header, metadata, tensor directory; data is read lazily).
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // Mapping a folder fails with an obscure "No such device"; say what is expected.
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(GgufError::Format {
                path: path.to_path_buf(),
                reason: "is a folder, not a GGUF file".into(),
            });
        }
        // SAFETY: read-only mapping of a file we do not modify; model files are not rewritten
        // in place by this project.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, mmap, MAX_METADATA_VALUES)
    }

    pub(super) fn parse(path: &Path, mmap: memmap2::Mmap, max_values: usize) -> Result<Self> {
        let mut r = Reader {
            buf: &mmap,
            pos: 0,
            path,
            values_left: max_values,
        };
        if r.u32().ok() != Some(MAGIC) {
            return Err(GgufError::Format {
                path: path.to_path_buf(),
                reason: "not a GGUF file (bad magic)".into(),
            });
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return r.fail(format!(
                "unsupported GGUF version {version} (2 and 3 are supported)"
            ));
        }
        let n_tensors = r.count("tensor", 24)?;
        let n_kv = r.count("metadata", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            // llama.cpp refuses duplicates too: which value would win is not specified.
            if metadata.insert(key.clone(), v).is_some() {
                return r.fail(format!("duplicate metadata key `{key}`"));
            }
        }
        let mut tensors = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > 4 {
                return r.fail(format!("tensor `{name}` has {n_dims} dimensions"));
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
            let ty = GgmlType::from_id(r.u32()?);
            let offset = r.u64()?;
            let info = TensorInfo { dims, ty, offset };
            if let Some((per_block, _)) = ty.block() {
                match info.elements() {
                    None => return r.fail(format!("tensor `{name}`: dimensions overflow")),
                    Some(n) if !n.is_multiple_of(per_block as u64) => {
                        return r.fail(format!(
                            "tensor `{name}`: {n} values is not a whole number of {per_block}-value blocks"
                        ));
                    }
                    Some(_) => {}
                }
            }
            if tensors.insert(name.clone(), info).is_some() {
                return r.fail(format!("duplicate tensor `{name}`"));
            }
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = r.pos.div_ceil(align) * align;
        let gguf = GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            mmap,
        };
        for (name, info) in &gguf.tensors {
            // Known types have a byte range (sizes were checked above) unless it overflows.
            let past_end = match gguf.byte_range(info) {
                Some((_, end)) => end > gguf.mmap.len(),
                None => info.ty.block().is_some(),
            };
            if past_end {
                return Err(GgufError::Format {
                    path: path.to_path_buf(),
                    reason: format!(
                        "tensor `{name}` extends past the end of the file (truncated?)"
                    ),
                });
            }
        }
        Ok(gguf)
    }

    /// `(start, end)` byte range of a tensor's data, if its type and sizes are known.
    pub(super) fn byte_range(&self, info: &TensorInfo) -> Option<(usize, usize)> {
        let (per_block, bytes) = info.ty.block()?;
        let n = info.elements()?;
        if n % per_block as u64 != 0 {
            return None;
        }
        let len = (n / per_block as u64).checked_mul(bytes as u64)?;
        let start = (self.data_start as u64).checked_add(info.offset)?;
        let end = start.checked_add(len)?;
        Some((usize::try_from(start).ok()?, usize::try_from(end).ok()?))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Metadata value `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Metadata `key` as an unsigned integer, or a typed error naming it.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.meta_err(key, "an integer"))
    }

    /// Metadata `key` as a float.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| self.meta_err(key, "a number"))
    }

    /// Metadata `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.meta_err(key, "a string"))
    }

    pub(super) fn meta_err(&self, key: &str, expected: &'static str) -> GgufError {
        GgufError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
        }
    }
}
