//! Variable-length batches: cumulative sequence offsets (FlashAttention's `cu_seqlens`), checked
//! once on the host so that a launch can trust them, and their device copy.
//!
//! ```
//! use flashcore::SeqOffsets;
//!
//! let offsets = SeqOffsets::from_lengths(&[3, 0, 5])?;
//! assert_eq!(offsets.as_slice(), &[0, 3, 3, 8]);
//! assert_eq!((offsets.batch(), offsets.total(), offsets.max_len()), (3, 8, 5));
//! assert_eq!(offsets.range(2), 3..8);
//! assert!(SeqOffsets::new(vec![0, 4, 2]).is_err());
//! # Ok::<(), flashcore::Error>(())
//! ```

use crate::runtime::{Device, DeviceTensor, ForeignTensor, TensorArg};
use crate::Error;

/// Cumulative offsets of a batch of sequences packed one after another: sequence `b` is rows
/// `offsets[b] .. offsets[b + 1]` of a packed tensor (`[TOTAL, H, D]`, or `[H, TOTAL]` per
/// row). Construction checks that they start at 0 and never decrease, so a kernel reading them
/// stays inside a tensor of `total()` rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqOffsets {
    offsets: Vec<u32>,
    max_len: u32,
}

impl SeqOffsets {
    /// `offsets` has one entry per sequence plus the end: `[0, len0, len0 + len1, ..]`.
    pub fn new(offsets: Vec<u32>) -> Result<SeqOffsets, Error> {
        let bad = |message: String| Err(Error::Offsets(message));
        match offsets.first() {
            None => {
                return bad("no offsets: a batch of B sequences needs B + 1 of them, starting at 0".into())
            }
            Some(&first) if first != 0 => return bad(format!("the first offset is {first}, not 0")),
            Some(_) => {}
        }
        let mut max_len = 0;
        for (b, pair) in offsets.windows(2).enumerate() {
            if pair[1] < pair[0] {
                return bad(format!(
                    "offsets decrease at sequence {b}: {} then {} (they are cumulative lengths)",
                    pair[0], pair[1]
                ));
            }
            max_len = max_len.max(pair[1] - pair[0]);
        }
        Ok(SeqOffsets { offsets, max_len })
    }

    /// The offsets of sequences of `lengths`.
    pub fn from_lengths(lengths: &[usize]) -> Result<SeqOffsets, Error> {
        let mut offsets = Vec::with_capacity(lengths.len() + 1);
        let mut total = 0u64;
        offsets.push(0);
        for len in lengths {
            total += *len as u64;
            let Ok(end) = u32::try_from(total) else {
                return Err(Error::Offsets(format!("{total} rows in all do not fit in 32 bits")));
            };
            offsets.push(end);
        }
        SeqOffsets::new(offsets)
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Rows of the packed tensors.
    pub fn total(&self) -> usize {
        *self.offsets.last().expect("at least one offset") as usize
    }

    /// The longest sequence (the kernel's sequence dim: it sizes the work loop).
    pub fn max_len(&self) -> usize {
        self.max_len as usize
    }

    /// The packed rows of sequence `b`.
    pub fn range(&self, b: usize) -> std::ops::Range<usize> {
        self.offsets[b] as usize..self.offsets[b + 1] as usize
    }

    /// The offsets: `batch() + 1` cumulative lengths from 0.
    pub fn as_slice(&self) -> &[u32] {
        &self.offsets
    }

    /// Copies the offsets to `device`.
    pub fn upload(&self, device: &Device) -> Result<DeviceSeqOffsets, Error> {
        let buffer = device.upload(&self.offsets, &[self.offsets.len()])?;
        Ok(DeviceSeqOffsets { host: self.clone(), buffer: OffsetsBuffer::Owned(buffer) })
    }
}

/// Checked sequence offsets on the device, with the host copy the launcher binds shapes from
/// (no device-to-host copy at launch).
pub struct DeviceSeqOffsets {
    host: SeqOffsets,
    buffer: OffsetsBuffer,
}

/// Where the device copy of the offsets lives.
enum OffsetsBuffer {
    /// Uploaded by [`SeqOffsets::upload`].
    Owned(DeviceTensor<u32>),
    /// Another library's tensor ([`DeviceSeqOffsets::foreign`]).
    Foreign(ForeignTensor),
}

impl DeviceSeqOffsets {
    /// Offsets another library already holds on the device (PyTorch's `cu_seqlens`, `int32`):
    /// `buffer` must hold exactly `host`'s values, `host.batch() + 1` 32-bit integers, which the
    /// launcher trusts for the bounds of every read and write (`host` was checked when it was
    /// made). A buffer of another length or element type is an error.
    pub fn foreign(host: SeqOffsets, buffer: ForeignTensor) -> Result<DeviceSeqOffsets, Error> {
        let want = host.as_slice().len();
        if !matches!(buffer.dtype(), "i32" | "u32") || buffer.shape() != [want] || buffer.strides() != [1] {
            return Err(Error::Offsets(format!(
                "the device offsets are {} {:?} with strides {:?}; {want} contiguous 32-bit integers are needed",
                buffer.dtype(),
                buffer.shape(),
                buffer.strides()
            )));
        }
        Ok(DeviceSeqOffsets { host, buffer: OffsetsBuffer::Foreign(buffer) })
    }

    /// The host copy the launcher binds shapes from.
    pub fn host(&self) -> &SeqOffsets {
        &self.host
    }

    /// The device buffer the kernel reads.
    pub fn buffer(&self) -> &dyn TensorArg {
        match &self.buffer {
            OffsetsBuffer::Owned(t) => t,
            OffsetsBuffer::Foreign(t) => t,
        }
    }
}
