//! Minimal `.npy` reading and writing (format versions 1 to 3, little-endian f2/f4/f8 and i4/i8,
//! C order), so numpy and PyTorch can feed the example (inputs, bias and document-id tables) and
//! check its output.
//!
//! ```
//! let bytes = flashcore::npy::to_bytes_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
//! let array = flashcore::npy::parse(&bytes, "in memory")?;
//! assert_eq!((array.shape, array.data[5]), (vec![2, 3], 6.0));
//! # Ok::<(), flashcore::npy::NpyError>(())
//! ```

use std::path::Path;

use half::f16;

/// Why a `.npy` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not a `.npy` array this reader handles.
    #[error("{path}: not a .npy file we can read: {why}")]
    Format {
        /// The file.
        path: String,
        /// What in it is not supported.
        why: String,
    },
}

/// An array read from a `.npy` file, converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// The array's shape (C order).
    pub shape: Vec<usize>,
    /// The elements, in C order, converted to f32.
    pub data: Vec<f32>,
}

fn header_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = &header[at + key.len() + 2..];
    let colon = rest.find(':')?;
    Some(rest[colon + 1..].trim_start())
}

/// An integer array read from a `.npy` file (`<i4`, or `<i8` whose values fit in i32).
#[derive(Clone, Debug, PartialEq)]
pub struct IntArray {
    /// The array's shape (C order).
    pub shape: Vec<usize>,
    /// The elements, in C order.
    pub data: Vec<i32>,
}

/// A parsed header: the dtype's text, the shape, and where the data starts.
struct Header {
    descr: String,
    shape: Vec<usize>,
    data_start: usize,
}

fn parse_header(bytes: &[u8], path: &str) -> Result<Header, NpyError> {
    let bad = |why: &str| NpyError::Format { path: path.to_string(), why: why.to_string() };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated or non-UTF-8 header"))?;
    let descr = header_value(header, "descr").ok_or_else(|| bad("no 'descr' in header"))?;
    let descr = descr.split(',').next().unwrap_or("").trim().to_string();
    let fortran = header_value(header, "fortran_order").ok_or_else(|| bad("no 'fortran_order'"))?;
    if !fortran.starts_with("False") {
        return Err(bad("Fortran-ordered arrays are not supported; save with np.ascontiguousarray"));
    }
    let shape_text = header_value(header, "shape").ok_or_else(|| bad("no 'shape'"))?;
    let close = shape_text.find(')').ok_or_else(|| bad("malformed shape"))?;
    let shape = shape_text[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("malformed shape")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header { descr, shape, data_start: start + header_len })
}

/// The data bytes after `h`, checked to hold `width`-byte elements of its shape.
fn body<'b>(bytes: &'b [u8], h: &Header, width: usize, path: &str) -> Result<&'b [u8], NpyError> {
    let count: usize = h.shape.iter().product();
    let body = &bytes[h.data_start..];
    if body.len() != count * width {
        return Err(NpyError::Format {
            path: path.to_string(),
            why: format!("shape {:?} needs {} data bytes, file has {}", h.shape, count * width, body.len()),
        });
    }
    Ok(body)
}

/// Parses the bytes of a `.npy` file of floats; `path` only labels errors.
pub fn parse(bytes: &[u8], path: &str) -> Result<Array, NpyError> {
    let bad = |why: &str| NpyError::Format { path: path.to_string(), why: why.to_string() };
    let h = parse_header(bytes, path)?;
    let descr = h.descr.as_str();
    let width = if descr.starts_with("'<f2'") {
        2
    } else if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else {
        return Err(bad(&format!("dtype {descr} is not little-endian f2/f4/f8")));
    };
    let data = body(bytes, &h, width, path)?
        .chunks_exact(width)
        .map(|c| match width {
            2 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
            4 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            _ => f64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32,
        })
        .collect();
    Ok(Array { shape: h.shape, data })
}

/// Parses the bytes of a `.npy` file of integers (`<i4`, or `<i8` with every value in i32's
/// range); `path` only labels errors.
pub fn parse_i32(bytes: &[u8], path: &str) -> Result<IntArray, NpyError> {
    let bad = |why: String| NpyError::Format { path: path.to_string(), why };
    let h = parse_header(bytes, path)?;
    let data = match h.descr.as_str() {
        "'<i4'" => body(bytes, &h, 4, path)?
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "'<i8'" => body(bytes, &h, 8, path)?
            .chunks_exact(8)
            .map(|c| {
                let x = i64::from_le_bytes(c.try_into().expect("8-byte chunk"));
                i32::try_from(x).map_err(|_| bad(format!("{x} is out of the range of i32")))
            })
            .collect::<Result<_, _>>()?,
        other => return Err(bad(format!("dtype {other} is not little-endian i4/i8"))),
    };
    Ok(IntArray { shape: h.shape, data })
}

/// Reads a `.npy` file of i4 or i8 elements (little-endian, C order) as i32.
pub fn read_i32(path: &Path) -> Result<IntArray, NpyError> {
    let bytes =
        std::fs::read(path).map_err(|source| NpyError::Io { path: path.display().to_string(), source })?;
    parse_i32(&bytes, &path.display().to_string())
}

/// Reads a `.npy` file of f2, f4 or f8 elements (little-endian, C order) as f32.
pub fn read(path: &Path) -> Result<Array, NpyError> {
    let bytes =
        std::fs::read(path).map_err(|source| NpyError::Io { path: path.display().to_string(), source })?;
    parse(&bytes, &path.display().to_string())
}

/// Serializes f16 values as a version-1 `.npy` file with dtype `<f2`.
pub fn to_bytes_f16(data: &[f16], shape: &[usize]) -> Vec<u8> {
    to_bytes("<f2", data.iter().flat_map(|x| x.to_le_bytes()), shape)
}

/// Serializes i32 values as a version-1 `.npy` file with dtype `<i4`.
pub fn to_bytes_i32(data: &[i32], shape: &[usize]) -> Vec<u8> {
    to_bytes("<i4", data.iter().flat_map(|x| x.to_le_bytes()), shape)
}

/// Serializes f32 values as a version-1 `.npy` file with dtype `<f4` (how bf16 results are
/// written: numpy has no bf16, and every bf16 value is exact in f32).
pub fn to_bytes_f32(data: &[f32], shape: &[usize]) -> Vec<u8> {
    to_bytes("<f4", data.iter().flat_map(|x| x.to_le_bytes()), shape)
}

fn to_bytes(descr: &str, data: impl Iterator<Item = u8>, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text =
        if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts on a 64-byte boundary, header ending in '\n'.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.div_ceil(64) * 64 - unpadded));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    out
}

/// Writes `data` (C order) as an f2 `.npy` file of `shape`.
pub fn write_f16(path: &Path, data: &[f16], shape: &[usize]) -> Result<(), NpyError> {
    std::fs::write(path, to_bytes_f16(data, shape))
        .map_err(|source| NpyError::Io { path: path.display().to_string(), source })
}

/// Writes `data` (C order) as an f4 `.npy` file of `shape`.
pub fn write_f32(path: &Path, data: &[f32], shape: &[usize]) -> Result<(), NpyError> {
    std::fs::write(path, to_bytes_f32(data, shape))
        .map_err(|source| NpyError::Io { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trip() {
        let data: Vec<f16> = (0..24).map(|i| f16::from_f32(i as f32 * 0.5 - 3.0)).collect();
        let bytes = to_bytes_f16(&data, &[2, 3, 4]);
        assert_eq!((10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64, 0);
        let a = parse(&bytes, "mem").unwrap();
        assert_eq!(a.shape, vec![2, 3, 4]);
        assert_eq!(a.data, data.iter().map(|x| x.to_f32()).collect::<Vec<_>>());
    }

    #[test]
    fn i32_round_trip_and_i8_range() {
        let data = vec![0, -7, 1 << 30, 3, 4, 5];
        let a = parse_i32(&to_bytes_i32(&data, &[3, 2]), "mem").unwrap();
        assert_eq!(a, IntArray { shape: vec![3, 2], data });
        let wide = to_bytes("<i8", [5i64, 1 << 40].iter().flat_map(|x| x.to_le_bytes()), &[2]);
        assert!(parse_i32(&wide, "w").unwrap_err().to_string().contains("out of the range of i32"));
        let narrow = to_bytes("<i8", [5i64, -2].iter().flat_map(|x| x.to_le_bytes()), &[2]);
        assert_eq!(parse_i32(&narrow, "n").unwrap().data, vec![5, -2]);
        assert!(parse_i32(&to_bytes_f32(&[1.0], &[1]), "f")
            .unwrap_err()
            .to_string()
            .contains("not little-endian i4/i8"));
        assert!(parse(&to_bytes_i32(&[1], &[1]), "i")
            .unwrap_err()
            .to_string()
            .contains("not little-endian f2/f4/f8"));
    }

    #[test]
    fn f32_round_trip() {
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.25 - 1.0).collect();
        let a = parse(&to_bytes_f32(&data, &[2, 3]), "mem").unwrap();
        assert_eq!(a, Array { shape: vec![2, 3], data });
    }

    #[test]
    fn reads_numpy_f4_header() {
        // What numpy 1.x writes for np.array([[1, 2]], dtype='<f4').
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }";
        let mut h = header.to_string();
        let pad = 64 - (10 + h.len() + 1) % 64;
        h.push_str(&" ".repeat(pad));
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(&1.0f32.to_le_bytes());
        bytes.extend_from_slice(&2.0f32.to_le_bytes());
        let a = parse(&bytes, "mem").unwrap();
        assert_eq!(a, Array { shape: vec![1, 2], data: vec![1.0, 2.0] });
    }

    #[test]
    fn rejects_bad_files_with_reasons() {
        assert!(parse(b"hello", "x").unwrap_err().to_string().contains("magic"));
        let mut bytes = to_bytes_f16(&[f16::ONE; 4], &[4]);
        bytes.pop();
        assert!(parse(&bytes, "x").unwrap_err().to_string().contains("data bytes"));
    }
}
