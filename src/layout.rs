//! Memory layouts of `[B, H, S, D]` attention tensors: the strides a launch is given, and the
//! permutations between a layout's storage order and the logical BHSD order (for tests, the
//! example and `.npy` files).
//!
//! ```
//! use flashcore::Layout;
//!
//! // [B, H, S, D] = [1, 2, 3, 4] stored as BSHD: a position's heads are adjacent.
//! assert_eq!(Layout::Bshd.strides([1, 2, 3, 4]), [24, 4, 8, 1]);
//! let logical: Vec<u32> = (0..24).collect();
//! let stored = Layout::Bshd.store(&logical, [1, 2, 3, 4]);
//! assert_eq!(Layout::Bshd.load(&stored, [1, 2, 3, 4]), logical);
//! ```

use std::fmt;
use std::str::FromStr;

/// Where each element of a logical `[B, H, S, D]` tensor lives in its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// Row-major `[B, H, S, D]`: each head's rows are contiguous.
    #[default]
    Bhsd,
    /// Row-major `[B, S, H, D]`: a sequence position's heads are contiguous (PyTorch's
    /// `(B, S, H, D)` tensors, viewed as BHSD by `q.transpose(1, 2)`; FlashAttention's own layout).
    Bshd,
}

impl Layout {
    /// Every layout, for tests and sweeps.
    pub const ALL: [Layout; 2] = [Layout::Bhsd, Layout::Bshd];

    /// Strides in elements of the logical axes `[B, H, S, D]` of a tensor of logical `shape`.
    pub fn strides(self, [_, h, s, d]: [usize; 4]) -> [usize; 4] {
        match self {
            Layout::Bhsd => [h * s * d, s * d, d, 1],
            Layout::Bshd => [s * h * d, d, h * d, 1],
        }
    }

    /// The buffer's shape in storage order.
    pub fn storage_shape(self, [b, h, s, d]: [usize; 4]) -> [usize; 4] {
        match self {
            Layout::Bhsd => [b, h, s, d],
            Layout::Bshd => [b, s, h, d],
        }
    }

    /// `logical` (row-major BHSD) rearranged into this layout's buffer.
    pub fn store<T: Copy>(self, logical: &[T], shape: [usize; 4]) -> Vec<T> {
        let mut out = logical.to_vec();
        self.for_each(shape, |logical_at, stored_at| out[stored_at] = logical[logical_at]);
        out
    }

    /// This layout's buffer `stored` read back into row-major BHSD order.
    pub fn load<T: Copy>(self, stored: &[T], shape: [usize; 4]) -> Vec<T> {
        let mut out = stored.to_vec();
        self.for_each(shape, |logical_at, stored_at| out[logical_at] = stored[stored_at]);
        out
    }

    /// Calls `f(logical index, storage index)` for every element.
    fn for_each(self, shape: [usize; 4], mut f: impl FnMut(usize, usize)) {
        let [b, h, s, d] = shape;
        let st = self.strides(shape);
        let mut logical = 0;
        for bi in 0..b {
            for hi in 0..h {
                for si in 0..s {
                    let row = bi * st[0] + hi * st[1] + si * st[2];
                    for di in 0..d {
                        f(logical, row + di);
                        logical += 1;
                    }
                }
            }
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Bhsd => "bhsd",
            Layout::Bshd => "bshd",
        })
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Layout, String> {
        match s.to_ascii_lowercase().as_str() {
            "bhsd" => Ok(Layout::Bhsd),
            "bshd" => Ok(Layout::Bshd),
            other => Err(format!("unknown layout `{other}`: expected bhsd or bshd")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bshd_store_then_load_is_the_identity_and_matches_its_strides() {
        let shape = [2, 3, 5, 8];
        let logical: Vec<usize> = (0..2 * 3 * 5 * 8).collect();
        let stored = Layout::Bshd.store(&logical, shape);
        assert_eq!(Layout::Bshd.load(&stored, shape), logical);
        // Element (b=1, h=2, s=4, d=7) sits at its strided offset in the BSHD buffer.
        let st = Layout::Bshd.strides(shape);
        let logical_at = ((1 * 3 + 2) * 5 + 4) * 8 + 7;
        assert_eq!(stored[st[0] + 2 * st[1] + 4 * st[2] + 7], logical_at);
        // ... which is row-major [B, S, H, D].
        assert_eq!(st[0] + 2 * st[1] + 4 * st[2] + 7, ((1 * 5 + 4) * 3 + 2) * 8 + 7);
        assert_eq!(Layout::Bhsd.store(&logical, shape), logical);
    }
}
