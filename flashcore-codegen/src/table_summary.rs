//! The table summary kernel: the PTX that, before a kernel whose masks read an i32 table along
//! the key axis (document ids per key), writes each block of `TILE_N` elements' minimum and
//! maximum, so that deciding a K/V tile reads one pair instead of `TILE_N` elements a work item
//! (FlexAttention's block mask, made by the compiler; `Kernel::table_summaries` says which
//! tables, `TableSummary` how the summary is laid out).
//!
//! One warp a (row, block): the row is an index of the table's other axes (at most three,
//! outermost first), the block `k` covers elements `k · BLOCK .. min((k + 1) · BLOCK, LEN)` of
//! the summarised axis, lane `l` reads elements `k · BLOCK + l, + 32, ..` (all its loads in
//! flight at once: a thread walking a block of 128 alone would wait on 128 loads in turn), and
//! `redux.sync` combines the lanes. Lane 0 writes the pair at the table's element offset for
//! (row, `k`), times 8 bytes.

/// The entry's name.
pub const TABLE_SUMMARY_ENTRY: &str = "flashcore_table_summary";

/// Threads a CTA.
pub const TABLE_SUMMARY_THREADS: u32 = 256;

/// The entry's parameters, in order: two pointers (`u64`: the table, the summary), then `u32`
/// values: the (row, block) pairs' count (one warp each), blocks a row, the block's length, the summarised axis's length
/// and stride, then each other axis's length and stride (in elements, outermost first; an
/// absent axis has length 1).
pub const TABLE_SUMMARY_PARAMS: [&str; 13] = [
    "table",
    "summary",
    "pairs",
    "blocks",
    "block",
    "axis_len",
    "axis_stride",
    "len0",
    "stride0",
    "len1",
    "stride1",
    "len2",
    "stride2",
];

/// How to launch the summary kernel for one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryLaunch {
    /// The `u32` arguments, after the two pointers ([`TABLE_SUMMARY_PARAMS`]).
    pub values: [u32; 11],
    /// CTAs of [`TABLE_SUMMARY_THREADS`].
    pub ctas: u32,
    /// Bytes the summary takes (its largest offset's pair, and 8 more).
    pub bytes: u64,
}

/// The summary kernel's launch for a table of `shape` and `strides` (elements) summarised along
/// `axis` in blocks of `block`; `None` for an empty table. Errors say what does not fit.
pub fn summary_launch(
    shape: &[usize],
    strides: &[usize],
    axis: usize,
    block: u32,
) -> Result<Option<SummaryLaunch>, String> {
    if shape.len() != strides.len() || axis >= shape.len() || shape.len() > 4 || block == 0 {
        return Err(format!(
            "a table of shape {shape:?}, strides {strides:?} cannot be summarised along axis {axis} (at most 4 axes)"
        ));
    }
    if shape.contains(&0) {
        return Ok(None);
    }
    let blocks = shape[axis].div_ceil(block as usize);
    let others: Vec<(usize, usize)> =
        (0..shape.len()).filter(|&a| a != axis).map(|a| (shape[a], strides[a])).collect();
    let rows: usize = others.iter().map(|o| o.0).product();
    let pairs = rows.checked_mul(blocks).filter(|&t| t < 1 << 26);
    let Some(pairs) = pairs else {
        return Err(format!("a table of shape {shape:?} has too many blocks of {block} to summarise"));
    };
    let last: usize =
        others.iter().map(|(len, stride)| (len - 1) * stride).sum::<usize>() + (blocks - 1) * strides[axis];
    let u32_of = |x: usize| u32::try_from(x).map_err(|_| format!("{x} does not fit 32 bits"));
    let mut padded = [(1usize, 0usize); 3];
    padded[3 - others.len()..].copy_from_slice(&others);
    let values = [
        u32_of(pairs)?,
        u32_of(blocks)?,
        block,
        u32_of(shape[axis])?,
        u32_of(strides[axis])?,
        u32_of(padded[0].0)?,
        u32_of(padded[0].1)?,
        u32_of(padded[1].0)?,
        u32_of(padded[1].1)?,
        u32_of(padded[2].0)?,
        u32_of(padded[2].1)?,
    ];
    Ok(Some(SummaryLaunch {
        values,
        ctas: u32_of((pairs * 32).div_ceil(TABLE_SUMMARY_THREADS as usize))?,
        bytes: (last as u64 + 1) * 8,
    }))
}

/// The summary kernel's PTX (`sm_89`; the driver runs it on every later GPU).
pub fn table_summary_ptx() -> String {
    let p = crate::append::hand_written_entry(
        "the table summary kernel.\n// One warp a (row, block of the summarised axis): the block's minimum and maximum",
        TABLE_SUMMARY_ENTRY,
        (&TABLE_SUMMARY_PARAMS, 2),
        TABLE_SUMMARY_THREADS,
    );
    let body = [
        ".reg .pred %p<4>;",
        ".reg .b32 %r<32>;",
        ".reg .b64 %rd<16>;",
        "mov.u32 %r0, %tid.x;",
        "mov.u32 %r1, %ctaid.x;",
        &format!("mad.lo.u32 %r2, %r1, {TABLE_SUMMARY_THREADS}, %r0;"),
        "shr.u32 %r23, %r2, 5;           // t: this warp's (row, block)",
        "and.b32 %r24, %r2, 31;          // lane",
        "ld.param.u32 %r3, [pairs];",
        "setp.ge.u32 %p0, %r23, %r3;",
        "@%p0 bra $L_done;               // the whole warp",
        "// t = ((i0 * len1 + i1) * len2 + i2) * blocks + k",
        "ld.param.u32 %r4, [blocks];",
        "rem.u32 %r5, %r23, %r4;         // k",
        "div.u32 %r6, %r23, %r4;",
        "ld.param.u32 %r7, [len2];",
        "rem.u32 %r8, %r6, %r7;          // i2",
        "div.u32 %r6, %r6, %r7;",
        "ld.param.u32 %r9, [len1];",
        "rem.u32 %r10, %r6, %r9;         // i1",
        "div.u32 %r11, %r6, %r9;         // i0",
        "// the row's offset in elements",
        "ld.param.u32 %r12, [stride0];",
        "mul.wide.u32 %rd0, %r11, %r12;",
        "ld.param.u32 %r13, [stride1];",
        "mul.wide.u32 %rd1, %r10, %r13;",
        "add.u64 %rd0, %rd0, %rd1;",
        "ld.param.u32 %r14, [stride2];",
        "mul.wide.u32 %rd1, %r8, %r14;",
        "add.u64 %rd0, %rd0, %rd1;",
        "// this lane's elements of the block: j = k * BLOCK + lane, + 32, .. below min(k * BLOCK + BLOCK, LEN)",
        "ld.param.u32 %r15, [block];",
        "ld.param.u32 %r16, [axis_len];",
        "ld.param.u32 %r17, [axis_stride];",
        "mul.lo.u32 %r18, %r5, %r15;",
        "add.u32 %r19, %r18, %r15;",
        "min.u32 %r19, %r19, %r16;       // the block's end",
        "add.u32 %r18, %r18, %r24;       // j",
        "ld.param.u64 %rd2, [table];",
        "cvta.to.global.u64 %rd2, %rd2;",
        "mov.s32 %r20, 2147483647;       // min",
        "mov.s32 %r21, -2147483648;      // max",
        "$L_element:",
        "setp.ge.u32 %p1, %r18, %r19;",
        "@%p1 bra $L_combine;",
        "mul.wide.u32 %rd3, %r18, %r17;",
        "add.u64 %rd3, %rd3, %rd0;",
        "shl.b64 %rd3, %rd3, 2;",
        "add.u64 %rd3, %rd2, %rd3;",
        "ld.global.s32 %r22, [%rd3];",
        "min.s32 %r20, %r20, %r22;",
        "max.s32 %r21, %r21, %r22;",
        "add.u32 %r18, %r18, 32;",
        "bra $L_element;",
        "$L_combine:",
        "redux.sync.min.s32 %r20, %r20, 0xffffffff;",
        "redux.sync.max.s32 %r21, %r21, 0xffffffff;",
        "setp.ne.u32 %p2, %r24, 0;",
        "@%p2 bra $L_done;",
        "// the pair at the table's offset for (row, k), 8 bytes an element",
        "mul.wide.u32 %rd4, %r5, %r17;",
        "add.u64 %rd4, %rd4, %rd0;",
        "shl.b64 %rd4, %rd4, 3;",
        "ld.param.u64 %rd5, [summary];",
        "cvta.to.global.u64 %rd5, %rd5;",
        "add.u64 %rd4, %rd5, %rd4;",
        "st.global.v2.s32 [%rd4], {%r20, %r21};",
    ];
    crate::append::finish_hand_written(p, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launch_covers_every_row_and_block_and_sizes_the_summary_by_the_largest_offset() {
        // [B = 3, S = 100] row-major, blocks of 64: 2 blocks a row.
        let l = summary_launch(&[3, 100], &[100, 1], 1, 64).unwrap().unwrap();
        assert_eq!(l.values[..5], [6, 2, 64, 100, 1]);
        assert_eq!(l.values[5..], [1, 0, 1, 0, 3, 100]);
        assert_eq!((l.ctas, l.bytes), (1, (2 * 100 + 1 + 1) * 8));
        // One warp a pair: 300 pairs are 9600 threads, 38 CTAs of 256.
        assert_eq!(summary_launch(&[3, 6400], &[6400, 1], 1, 64).unwrap().unwrap().ctas, 38);
        // Summarised along the outer axis of a [40, 5] table with strides [1, 40].
        let l = summary_launch(&[40, 5], &[1, 40], 0, 16).unwrap().unwrap();
        assert_eq!(l.values[..5], [15, 3, 16, 40, 1]);
        assert_eq!(l.bytes, (4 * 40 + 2 + 1) * 8);
        assert_eq!(summary_launch(&[0, 100], &[100, 1], 1, 64).unwrap(), None);
        assert!(summary_launch(&[1, 2, 3, 4, 5], &[120, 60, 20, 5, 1], 4, 64).is_err());
    }

    /// The driver's JIT (CUDA 13.0) refuses PTX with a non-ASCII character anywhere, comments
    /// included; the wheel's ptxas does not.
    #[test]
    fn the_ptx_is_ascii() {
        let ptx = table_summary_ptx();
        assert!(ptx.is_ascii(), "{}", ptx.lines().find(|l| !l.is_ascii()).unwrap_or_default());
    }
}
