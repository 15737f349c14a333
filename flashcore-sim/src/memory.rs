//! Global memory (host-visible allocations with bounds) and the shared-memory shadow that the
//! race and async-copy checks keep per 4-byte word.

/// One device allocation.
#[derive(Debug)]
pub struct Allocation {
    pub base: u64,
    pub bytes: Vec<u8>,
}

/// Global memory: separate allocations with unmapped gaps between them, so an access past the
/// end of one is reported instead of landing in the next.
#[derive(Debug, Default)]
pub struct GlobalMemory {
    allocations: Vec<Allocation>,
}

/// Where the first allocation starts; 1 MiB of unmapped space separates allocations.
const FIRST_BASE: u64 = 0x7000_0000_0000;
const GAP: u64 = 1 << 20;

impl GlobalMemory {
    pub fn alloc(&mut self, bytes: Vec<u8>) -> u64 {
        let base = match self.allocations.last() {
            Some(a) => (a.base + a.bytes.len() as u64 + GAP).next_multiple_of(4096),
            None => FIRST_BASE,
        };
        self.allocations.push(Allocation { base, bytes });
        base
    }

    /// The allocation holding `[addr, addr + len)`, and the offset of `addr` in it.
    pub fn find(&self, addr: u64, len: u64) -> Result<(usize, usize), String> {
        for (k, a) in self.allocations.iter().enumerate() {
            if addr >= a.base && addr < a.base + a.bytes.len() as u64 {
                let offset = addr - a.base;
                if offset + len > a.bytes.len() as u64 {
                    return Err(format!(
                        "global access of {len} bytes at {addr:#x} runs past the end of the {}-byte allocation at {:#x}",
                        a.bytes.len(),
                        a.base
                    ));
                }
                return Ok((k, offset as usize));
            }
        }
        Err(format!("global access of {len} bytes at {addr:#x} is outside every allocation"))
    }

    pub fn read(&self, addr: u64, len: usize) -> Result<&[u8], String> {
        let (k, off) = self.find(addr, len as u64)?;
        Ok(&self.allocations[k].bytes[off..off + len])
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), String> {
        let (k, off) = self.find(addr, data.len() as u64)?;
        self.allocations[k].bytes[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// One access recorded in the shadow: which agent (a warp, or a lane's asynchronous copies),
/// at which of its clocks, from which PTX line.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    pub agent: u32,
    pub clock: u32,
    pub line: u32,
}

/// Per 4-byte word of shared memory: the last write, the reads since, and the cp.async (if any)
/// still in flight into it.
#[derive(Clone, Debug, Default)]
pub struct Shadow {
    pub write: Option<Access>,
    pub reads: Vec<Access>,
    /// 1 + the index of the copy in flight into this word; 0 when none.
    pub pending_copy: u32,
}
