//! The persist pass: with `Config::persistent`, the `tiles(..)` work loop becomes a persistent
//! loop. The code it runs is the same grid-stride loop either way (CTA `c` takes work items
//! c, c + gridDim.x, ...); what changes is the grid the runtime launches: one CTA per work item,
//! or as many CTAs as the device can hold at once (SM count × CTAs per SM, both read from the
//! device and the kernel's resource use at launch), each looping until the work runs out.

use crate::error::IrError;
use crate::kernel::{Kernel, Op, TileSchedule};

pub fn run(mut kernel: Kernel) -> Result<Kernel, IrError> {
    let schedule = if kernel.config.persistent { TileSchedule::Persistent } else { TileSchedule::OnePerCta };
    for inst in &mut kernel.body.insts {
        if let Op::Tiles { schedule: s, .. } = &mut inst.op {
            *s = schedule;
        }
    }
    Ok(kernel)
}

/// The schedule of the kernel's work loop.
pub fn schedule(kernel: &Kernel) -> TileSchedule {
    let mut found = TileSchedule::OnePerCta;
    kernel.walk(&mut |i| {
        if let Op::Tiles { schedule, .. } = &i.op {
            found = *schedule;
        }
    });
    found
}
