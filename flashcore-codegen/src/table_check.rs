//! The paged K/V cache's device-side table check: the PTX that verifies, where the block table
//! and lengths live only on the device, what `PagedCache::check` verifies on the host: each
//! sequence's length fits its table row, and each entry its length uses names a page of the
//! pool. The decode kernels never read outside the cache whatever the table says (they
//! zero-fill such rows); this check says which argument was wrong instead.
//!
//! One thread a table entry (`b`, `e`): with `len = cache_len[b]`, a length outside
//! `0 ..= MAX_PAGES · PAGE` is a violation of kind [`BAD_LENGTH`] (reported by entry 0); an
//! entry `e < ceil(len / PAGE)` outside `0 .. PAGES` is one of kind [`BAD_PAGE`]. The first
//! violation in table order wins: each writes `(b · MAX_PAGES + e) · 4 + kind` with an atomic
//! minimum into the verdict word (`u32::MAX` before the launch: no violation).

/// The entry's name.
pub const TABLE_CHECK_ENTRY: &str = "flashcore_paged_table_check";

/// Threads a CTA.
pub const TABLE_CHECK_THREADS: u32 = 256;

/// A verdict's kind: a length outside its table row's capacity (or negative).
pub const BAD_LENGTH: u32 = 1;
/// A verdict's kind: an entry in use that names no page of the pool.
pub const BAD_PAGE: u32 = 2;

/// The entry's parameters, in order: three pointers (`u64`: the table, the lengths, the
/// verdict word), then `u32` values (strides in elements).
pub const TABLE_CHECK_PARAMS: [&str; 8] =
    ["block_table", "cache_len", "verdict", "batch", "max_pages", "page_rows", "pages", "table_stride_b"];

/// The table check's PTX (`sm_89`). Launch `ceil(B · MAX_PAGES / TABLE_CHECK_THREADS)` CTAs of
/// [`TABLE_CHECK_THREADS`].
pub fn table_check_ptx() -> String {
    let p = crate::append::hand_written_entry(
        "the paged cache's table check.\n// One thread a block table entry; the first violation wins (atomic min)",
        TABLE_CHECK_ENTRY,
        (&TABLE_CHECK_PARAMS, 3),
        TABLE_CHECK_THREADS,
    );
    let body = [
        ".reg .pred %p<8>;",
        ".reg .b32 %r<24>;",
        ".reg .b64 %rd<16>;",
        "// this thread's entry: idx = b * MAX_PAGES + e",
        "mov.u32 %r0, %tid.x;",
        "mov.u32 %r1, %ctaid.x;",
        &format!("mad.lo.u32 %r2, %r1, {TABLE_CHECK_THREADS}, %r0;"),
        "ld.param.u32 %r3, [batch];",
        "ld.param.u32 %r4, [max_pages];",
        "mul.lo.u32 %r5, %r3, %r4;",
        "setp.ge.u32 %p0, %r2, %r5;",
        "@%p0 bra $L_done;",
        "div.u32 %r6, %r2, %r4;          // b",
        "rem.u32 %r7, %r2, %r4;          // e",
        "ld.param.u64 %rd0, [cache_len];",
        "cvta.to.global.u64 %rd0, %rd0;",
        "mul.wide.u32 %rd1, %r6, 4;",
        "add.u64 %rd1, %rd0, %rd1;",
        "ld.global.u32 %r8, [%rd1];      // len",
        "ld.param.u32 %r9, [page_rows];",
        "ld.param.u64 %rd2, [verdict];",
        "cvta.to.global.u64 %rd2, %rd2;",
        "shl.b32 %r10, %r2, 2;           // idx * 4: the verdict's key",
        "// a length outside 0 ..= MAX_PAGES * PAGE (entry 0 reports it)",
        "mul.wide.u32 %rd3, %r4, %r9;    // the row's capacity",
        "cvt.s64.s32 %rd4, %r8;",
        "setp.lt.s64 %p1, %rd4, 0;",
        "setp.gt.s64 %p2, %rd4, %rd3;",
        "or.pred %p1, %p1, %p2;",
        "@!%p1 bra $L_length_ok;",
        "setp.ne.u32 %p3, %r7, 0;",
        "@%p3 bra $L_done;",
        &format!("or.b32 %r11, %r10, {BAD_LENGTH};"),
        "atom.global.min.u32 %r12, [%rd2], %r11;",
        "bra $L_done;",
        "$L_length_ok:",
        "// an entry the length uses (e < ceil(len / PAGE)) must name a page of the pool",
        "add.u32 %r13, %r8, %r9;",
        "sub.u32 %r13, %r13, 1;",
        "div.u32 %r13, %r13, %r9;        // entries in use",
        "setp.ge.u32 %p4, %r7, %r13;",
        "@%p4 bra $L_done;",
        "ld.param.u64 %rd5, [block_table];",
        "cvta.to.global.u64 %rd5, %rd5;",
        "ld.param.u32 %r14, [table_stride_b];",
        "mul.wide.u32 %rd6, %r6, %r14;",
        "cvt.u64.u32 %rd7, %r7;",
        "add.u64 %rd6, %rd6, %rd7;",
        "shl.b64 %rd6, %rd6, 2;",
        "add.u64 %rd6, %rd5, %rd6;",
        "ld.global.u32 %r15, [%rd6];     // the page",
        "ld.param.u32 %r16, [pages];",
        "// unsigned: a negative entry is outside the pool too",
        "setp.lt.u32 %p5, %r15, %r16;",
        "@%p5 bra $L_done;",
        &format!("or.b32 %r17, %r10, {BAD_PAGE};"),
        "atom.global.min.u32 %r18, [%rd2], %r17;",
    ];
    crate::append::finish_hand_written(p, &body)
}
