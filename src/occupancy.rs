//! Occupancy: how many CTAs of a kernel fit on one SM of a GPU, from its registers, shared
//! memory and threads, and which of them is the limit (the CUDA occupancy calculator's rules).
//!
//! ```
//! use flashcore::occupancy::{occupancy, Limit, L4, H100};
//!
//! // 128 threads, 128 registers a thread, 32 KB of shared memory.
//! let l4 = occupancy(&L4, 128, 128, 32 * 1024);
//! assert_eq!((l4.ctas, l4.limit), (3, Limit::SharedMemory));
//! let h100 = occupancy(&H100, 128, 128, 32 * 1024);
//! assert_eq!((h100.ctas, h100.limit), (4, Limit::Registers));
//! ```

/// One GPU architecture's per-SM resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    /// The ptxas architecture, e.g. `sm_89`.
    pub sm: &'static str,
    /// The GPU FlashCore targets with it.
    pub gpu: &'static str,
    /// 32-bit registers in an SM's register file.
    pub registers_per_sm: u32,
    /// Registers are allocated per warp in units of this many.
    pub register_unit: u32,
    /// The most registers one thread may use.
    pub max_registers_per_thread: u32,
    /// Shared memory an SM has for CTAs (the largest carveout).
    pub shared_bytes_per_sm: u32,
    /// The most shared memory one CTA may opt in to.
    pub shared_bytes_per_cta: u32,
    /// Shared memory the driver reserves for each resident CTA.
    pub reserved_shared_bytes_per_cta: u32,
    /// Shared memory is allocated in units of this many bytes.
    pub shared_unit: u32,
    /// Warps resident on one SM at most.
    pub max_warps_per_sm: u32,
    /// CTAs resident on one SM at most.
    pub max_ctas_per_sm: u32,
    /// Threads one CTA may have.
    pub max_threads_per_cta: u32,
}

/// Ada, compute capability 8.9 (the NVIDIA L4).
pub const L4: Arch = Arch {
    sm: "sm_89",
    gpu: "L4",
    registers_per_sm: 65536,
    register_unit: 256,
    max_registers_per_thread: 255,
    shared_bytes_per_sm: 100 * 1024,
    shared_bytes_per_cta: 99 * 1024,
    reserved_shared_bytes_per_cta: 1024,
    shared_unit: 128,
    max_warps_per_sm: 48,
    max_ctas_per_sm: 24,
    max_threads_per_cta: 1024,
};

/// Hopper, compute capability 9.0 (the NVIDIA H100).
pub const H100: Arch = Arch {
    sm: "sm_90",
    gpu: "H100",
    registers_per_sm: 65536,
    register_unit: 256,
    max_registers_per_thread: 255,
    shared_bytes_per_sm: 228 * 1024,
    shared_bytes_per_cta: 227 * 1024,
    reserved_shared_bytes_per_cta: 1024,
    shared_unit: 128,
    max_warps_per_sm: 64,
    max_ctas_per_sm: 32,
    max_threads_per_cta: 1024,
};

/// Hopper through its own instructions (`sm_90a` PTX: wgmma): the H100's limits.
pub const H100_SM90A: Arch = Arch { sm: "sm_90a", ..H100 };

/// The architectures a config's PTX is assembled and sized for: `sm_89` PTX (and `auto`'s,
/// without a device) runs on the L4 and (JIT-compiled) on the H100; `sm_90a` PTX on the H100.
pub fn archs_for(target: crate::Target) -> &'static [Arch] {
    match target {
        crate::Target::Sm89 | crate::Target::Auto => &[L4, H100],
        crate::Target::Sm90a => &[H100_SM90A],
    }
}

/// The model of a GPU of compute capability `(major, minor)` running `target`'s PTX: the L4's
/// for 8.9, the H100's for 9.0 (its sm_90a variant for sm_90a PTX); `None` for the others.
pub fn arch_of(compute_capability: (i32, i32), target: crate::Target) -> Option<Arch> {
    match (compute_capability, target) {
        ((8, 9), _) => Some(L4),
        ((9, 0), crate::Target::Sm90a) => Some(H100_SM90A),
        ((9, 0), _) => Some(H100),
        _ => None,
    }
}

/// What bounds the CTAs an SM holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The register file.
    Registers,
    /// Shared memory.
    SharedMemory,
    /// Warps per SM.
    Warps,
    /// CTAs per SM.
    Ctas,
    /// The CTA cannot launch at all: `why` says which resource one CTA alone exceeds.
    DoesNotFit {
        /// The resource: `threads`, `registers` or `shared memory`.
        why: &'static str,
    },
}

/// CTAs of one kernel resident on an SM, the warps they make, and the binding limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Occupancy {
    /// CTAs resident on one SM.
    pub ctas: u32,
    /// The warps they make.
    pub warps: u32,
    /// `warps` over the SM's most.
    pub fraction: f64,
    /// What stops one more CTA.
    pub limit: Limit,
}

/// The occupancy of a kernel with `threads` threads a CTA, `registers` a thread and
/// `shared_bytes` of shared memory a CTA (dynamic plus static) on `arch`.
pub fn occupancy(arch: &Arch, threads: u32, registers: u32, shared_bytes: u32) -> Occupancy {
    let warps_per_cta = threads.div_ceil(32).max(1);
    let fits = [
        (threads > arch.max_threads_per_cta, "threads"),
        (registers > arch.max_registers_per_thread, "registers"),
        (shared_bytes > arch.shared_bytes_per_cta, "shared memory"),
    ];
    if let Some((_, why)) = fits.iter().find(|(over, _)| *over) {
        return Occupancy { ctas: 0, warps: 0, fraction: 0.0, limit: Limit::DoesNotFit { why } };
    }
    let registers_per_warp = (registers.max(1) * 32).div_ceil(arch.register_unit) * arch.register_unit;
    let by_registers = arch.registers_per_sm / registers_per_warp / warps_per_cta;
    let shared_per_cta =
        (shared_bytes + arch.reserved_shared_bytes_per_cta).div_ceil(arch.shared_unit) * arch.shared_unit;
    let by_shared = arch.shared_bytes_per_sm / shared_per_cta;
    let by_warps = arch.max_warps_per_sm / warps_per_cta;
    // The first limit reached, in the order the calculator reports ties.
    let (ctas, limit) = [
        (arch.max_ctas_per_sm, Limit::Ctas),
        (by_warps, Limit::Warps),
        (by_registers, Limit::Registers),
        (by_shared, Limit::SharedMemory),
    ]
    .into_iter()
    .min_by_key(|(n, _)| *n)
    .unwrap_or((0, Limit::Ctas));
    let warps = ctas * warps_per_cta;
    Occupancy { ctas, warps, fraction: warps as f64 / arch.max_warps_per_sm as f64, limit }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Registers => f.write_str("registers"),
            Limit::SharedMemory => f.write_str("shared memory"),
            Limit::Warps => f.write_str("warps per SM"),
            Limit::Ctas => f.write_str("CTAs per SM"),
            Limit::DoesNotFit { why } => write!(f, "one CTA needs more {why} than the SM allows"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_resource_can_be_the_limit() {
        // 4 warps at 255 registers: 8160 a warp rounds to 8192, 8 warps' worth → 2 CTAs.
        assert_eq!(occupancy(&L4, 128, 255, 0).ctas, 2);
        assert_eq!(occupancy(&L4, 128, 255, 0).limit, Limit::Registers);
        // 33 KB + 1 KB reserved: 3 fit in 100 KB.
        let smem = occupancy(&L4, 128, 32, 33 * 1024);
        assert_eq!((smem.ctas, smem.limit), (2, Limit::SharedMemory));
        // 16 warps a CTA: 3 in the L4's 48 warps, 4 in the H100's 64.
        assert_eq!(occupancy(&L4, 512, 32, 0).limit, Limit::Warps);
        assert_eq!((occupancy(&L4, 512, 32, 0).ctas, occupancy(&H100, 512, 32, 0).ctas), (3, 4));
        let tiny = occupancy(&L4, 32, 16, 0);
        assert_eq!((tiny.ctas, tiny.limit), (24, Limit::Ctas));
        assert_eq!(occupancy(&L4, 128, 64, 100 * 1024).limit, Limit::DoesNotFit { why: "shared memory" });
        assert_eq!(occupancy(&H100, 128, 64, 100 * 1024).ctas, 2);
        assert!((occupancy(&L4, 128, 128, 0).fraction - 16.0 / 48.0).abs() < 1e-12);
    }
}
