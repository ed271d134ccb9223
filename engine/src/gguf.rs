//! A GGUF reader over a memory map: metadata is parsed into owned values,
//! tensor data stays in the map.
//!
//! Every count and offset read from the file is checked against the file's
//! size before it is used to allocate or slice, so a truncated or hostile
//! file gives an error naming the offset, never a panic or a huge
//! allocation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::tensor::{MappedFile, TensorRef, TensorSource, TensorType};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(v) => v as u64,
            Value::U16(v) => v as u64,
            Value::U32(v) => v as u64,
            Value::U64(v) => v,
            Value::I8(v) if v >= 0 => v as u64,
            Value::I16(v) if v >= 0 => v as u64,
            Value::I32(v) if v >= 0 => v as u64,
            Value::I64(v) if v >= 0 => v as u64,
            _ => return None,
        })
    }

    /// The value as a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// A parsed GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    file: Arc<MappedFile>,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorRef>,
    order: Vec<String>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(EngineError::format(
                self.path,
                format!(
                    "truncated: needed {n} bytes at offset {} for {what}, the file has {}",
                    self.pos,
                    self.buf.len()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    /// A count that must fit in the rest of the file at `min_size` bytes per item.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let rest = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > rest {
            return Err(EngineError::format(
                self.path,
                format!(
                    "{what} at offset {at} claims {n} items, more than the remaining {rest} bytes can hold: truncated or corrupt"
                ),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let at = self.pos;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| {
            EngineError::format(
                self.path,
                format!("{what} at offset {at} is not valid UTF-8"),
            )
        })
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        let b = |r: &mut Self, n| r.take(n, key);
        Ok(match ty {
            0 => Value::U8(b(self, 1)?[0]),
            1 => Value::I8(b(self, 1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(b(self, 2)?.try_into().expect("2"))),
            3 => Value::I16(i16::from_le_bytes(b(self, 2)?.try_into().expect("2"))),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(key)?)),
            7 => Value::Bool(b(self, 1)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(EngineError::format(
                        self.path,
                        format!("metadata `{key}`: arrays nested too deeply"),
                    ));
                }
                let item_ty = self.u32(key)?;
                let min = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    _ => 8,
                };
                let n = self.count(key, min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            t => {
                return Err(EngineError::format(
                    self.path,
                    format!("metadata `{key}` has unknown value type {t}"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = MappedFile::open(path)?;
        Self::parse(file)
    }

    /// Parses an already mapped file.
    pub fn parse(file: Arc<MappedFile>) -> Result<Self> {
        let path: PathBuf = file.path.clone();
        let buf = file.bytes();
        let mut r = Reader {
            buf,
            pos: 0,
            path: &path,
        };
        let magic = r.take(4, "the magic number")?;
        if magic != b"GGUF" {
            return Err(EngineError::format(
                &path,
                format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\""),
            ));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(EngineError::format(
                &path,
                format!("GGUF version {version} is not supported (2 and 3 are)"),
            ));
        }
        let n_tensors = r.count("the tensor count", 24)?;
        let n_kv = r.count("the metadata count", 12)?;
        let mut metadata = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = r.string("a metadata key")?;
            let ty = r.u32(&key)?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32(&name)? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(EngineError::format(
                    &path,
                    format!("tensor `{name}` has {n_dims} dimensions (1 to 4 expected)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64(&name)? as usize);
            }
            let ty_id = r.u32(&name)?;
            let offset = r.u64(&name)? as usize;
            infos.push((name, dims, ty_id, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32) as usize;
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(EngineError::format(
                &path,
                format!("general.alignment {alignment} is not a power of two"),
            ));
        }
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let mut tensors = HashMap::with_capacity(infos.len());
        let mut order = Vec::with_capacity(infos.len());
        for (name, dims, ty_id, offset) in infos {
            let Some(ty) = TensorType::from_ggml(ty_id) else {
                return Err(EngineError::UnsupportedTensorType {
                    path,
                    tensor: name,
                    ty: TensorType::ggml_name(ty_id),
                });
            };
            let elems = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let Some(elems) = elems.filter(|&e| e > 0) else {
                return Err(EngineError::format(
                    &path,
                    format!("tensor `{name}` has an invalid shape {dims:?}"),
                ));
            };
            if elems % ty.block().0 != 0 {
                return Err(EngineError::format(
                    &path,
                    format!(
                        "tensor `{name}` of type {ty:?} has {elems} elements, not a whole number of {} element blocks",
                        ty.block().0
                    ),
                ));
            }
            let Some(len) = ty.bytes_for(elems) else {
                return Err(EngineError::format(
                    &path,
                    format!("tensor `{name}`: {elems} elements of {ty:?} do not fit in memory"),
                ));
            };
            if dims[0] % ty.block().0 != 0 {
                return Err(EngineError::format(
                    &path,
                    format!(
                        "tensor `{name}`: rows of {} elements are not a whole number of {ty:?} blocks",
                        dims[0]
                    ),
                ));
            }
            let shape: Vec<usize> = dims.iter().rev().copied().collect();
            let start = data_start.checked_add(offset).ok_or_else(|| {
                EngineError::format(&path, format!("tensor `{name}`: offset overflows"))
            })?;
            let t = TensorRef::new(name.clone(), ty, shape, file.clone(), start, len)?;
            order.push(name.clone());
            if tensors.insert(name.clone(), t).is_some() {
                return Err(EngineError::format(
                    &path,
                    format!("tensor `{name}` appears twice"),
                ));
            }
        }
        Ok(GgufFile {
            file,
            version,
            metadata,
            tensors,
            order,
        })
    }

    /// Metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.missing(key, "a string"))
    }

    /// A required unsigned integer value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.missing(key, "an unsigned integer"))
    }

    /// An optional float value.
    pub fn get_f64_opt(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// A required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| self.missing(key, "an array of strings"))
                })
                .collect(),
            _ => Err(self.missing(key, "an array of strings")),
        }
    }

    fn missing(&self, key: &str, what: &str) -> EngineError {
        EngineError::Config {
            path: self.file.path.clone(),
            key: key.to_string(),
            message: format!("missing or not {what}"),
        }
    }

    /// Tensor names in file order.
    pub fn tensor_names(&self) -> &[String] {
        &self.order
    }
}

impl TensorSource for GgufFile {
    fn tensor(&self, name: &str) -> Option<TensorRef> {
        self.tensors.get(name).cloned()
    }
    fn origin(&self) -> &Path {
        &self.file.path
    }
}

/// Writes GGUF files (version 3). Used by tests to build tiny random
/// models and by tools; not a general converter.
#[derive(Debug, Default)]
pub struct GgufWriter {
    kv: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<usize>, u32, Vec<u8>)>,
}

impl GgufWriter {
    /// Adds a metadata entry.
    pub fn meta(&mut self, key: &str, v: Value) -> &mut Self {
        self.kv.push((key.to_string(), v));
        self
    }

    /// Adds a tensor: `shape` outermost first, `ggml_type` id, raw bytes.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ggml_type: u32,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors
            .push((name.to_string(), shape.to_vec(), ggml_type, data));
        self
    }

    /// Serializes the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        fn put_str(o: &mut Vec<u8>, s: &str) {
            o.extend((s.len() as u64).to_le_bytes());
            o.extend(s.as_bytes());
        }
        fn type_id(v: &Value) -> u32 {
            match v {
                Value::U8(_) => 0,
                Value::I8(_) => 1,
                Value::U16(_) => 2,
                Value::I16(_) => 3,
                Value::U32(_) => 4,
                Value::I32(_) => 5,
                Value::F32(_) => 6,
                Value::Bool(_) => 7,
                Value::String(_) => 8,
                Value::Array(_) => 9,
                Value::U64(_) => 10,
                Value::I64(_) => 11,
                Value::F64(_) => 12,
            }
        }
        fn put_val(o: &mut Vec<u8>, v: &Value) {
            match v {
                Value::U8(x) => o.push(*x),
                Value::I8(x) => o.push(*x as u8),
                Value::U16(x) => o.extend(x.to_le_bytes()),
                Value::I16(x) => o.extend(x.to_le_bytes()),
                Value::U32(x) => o.extend(x.to_le_bytes()),
                Value::I32(x) => o.extend(x.to_le_bytes()),
                Value::F32(x) => o.extend(x.to_le_bytes()),
                Value::Bool(x) => o.push(*x as u8),
                Value::String(s) => put_str(o, s),
                Value::Array(items) => {
                    o.extend(items.first().map(type_id).unwrap_or(4).to_le_bytes());
                    o.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|i| put_val(o, i));
                }
                Value::U64(x) => o.extend(x.to_le_bytes()),
                Value::I64(x) => o.extend(x.to_le_bytes()),
                Value::F64(x) => o.extend(x.to_le_bytes()),
            }
        }
        let mut o = Vec::new();
        o.extend(b"GGUF");
        o.extend(3u32.to_le_bytes());
        o.extend((self.tensors.len() as u64).to_le_bytes());
        o.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut o, k);
            o.extend(type_id(v).to_le_bytes());
            put_val(&mut o, v);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, shape, ty, data) in &self.tensors {
            put_str(&mut o, name);
            o.extend((shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                o.extend((*d as u64).to_le_bytes());
            }
            o.extend(ty.to_le_bytes());
            o.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).div_ceil(32) * 32;
        }
        let start = o.len().div_ceil(32) * 32;
        o.resize(start, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            o.resize(start + off, 0);
            o.extend(data);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, bytes).unwrap();
        (dir, p)
    }

    fn sample() -> Vec<u8> {
        let mut w = GgufWriter::default();
        w.meta("general.architecture", Value::String("llama".into()));
        w.meta(
            "a.list",
            Value::Array(vec![Value::String("x".into()), Value::String("y".into())]),
        );
        w.tensor("t", &[2, 32], 0, vec![0u8; 2 * 32 * 4]);
        w.to_bytes()
    }

    #[test]
    fn roundtrip() {
        let (_d, p) = write(&sample());
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_str_array("a.list").unwrap(), vec!["x", "y"]);
        let t = g.require("t").unwrap();
        assert_eq!(t.shape, vec![2, 32]);
        assert_eq!(t.bytes().len(), 256);
    }

    #[test]
    fn wrong_magic_is_named() {
        let mut b = sample();
        b[0] = b'X';
        let (_d, p) = write(&b);
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("not a GGUF file") && e.contains("m.gguf"), "{e}");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let b = sample();
        for cut in 0..b.len() {
            let (_d, p) = write(&b[..cut]);
            let r = GgufFile::open(&p);
            assert!(r.is_err(), "truncated at {cut} was accepted");
        }
    }

    #[test]
    fn unknown_tensor_type_names_the_tensor() {
        let mut w = GgufWriter::default();
        w.tensor("blk.0.weird", &[32], 16, vec![0u8; 64]);
        let (_d, p) = write(&w.to_bytes());
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("blk.0.weird") && e.contains("IQ2_XXS"), "{e}");
    }

    /// Found by libFuzzer (gguf_header): an element count that fits in
    /// `usize` while its byte size does not overflowed the size computation.
    #[test]
    fn a_tensor_too_large_to_address_is_an_error() {
        let mut w = GgufWriter::default();
        w.tensor("huge", &[1 << 62], 0, vec![0u8; 32]);
        let (_d, p) = write(&w.to_bytes());
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("huge") && e.contains("do not fit"), "{e}");
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut b = sample();
        // Tensor count at offset 8: claim 2^60 tensors.
        b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let (_d, p) = write(&b);
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("claims"), "{e}");
    }
}
