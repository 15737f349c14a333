//! The paged K/V cache's append kernel (vLLM's reshape-and-cache): the PTX that writes a decode
//! step's new keys and values into their rows of the page pools, before the step's attention
//! reads them.
//!
//! New token `i` of sequence `b` (of `S` this step) lands at cache position `p = cache_len[b] −
//! S + i` (the lengths count the new tokens already), row `p % PAGE` of page `block_table[b, p /
//! PAGE]`, for each K/V head. One thread moves one 16-byte chunk of one row of K and the same
//! chunk of V. A position outside the sequence's table row (`p < 0`, or past `MAX_PAGES · PAGE`)
//! or a page outside the pool writes nothing: the kernel never writes outside the pools (the host
//! checks the tables it builds; the kernel has no way to report).

use std::fmt::Write as _;

/// The entry's name.
pub const APPEND_ENTRY: &str = "flashcore_paged_append";

/// Threads a CTA of the append kernel.
pub const APPEND_THREADS: u32 = 256;

/// The entry's parameters, in order: pointers (`u64`), then `u32` values. Strides are in
/// elements; the new tokens' `[B, HKV, S, D]` (K and V alike) and the pools' `[PAGES, HKV,
/// PAGE, D]` (K and V alike) have their head dim contiguous.
pub const APPEND_PARAMS: [&str; 20] = [
    "k_new",
    "v_new",
    "k_pool",
    "v_pool",
    "block_table",
    "cache_len",
    "batch",
    "kv_heads",
    "new_tokens",
    "chunks",
    "page_rows",
    "max_pages",
    "pages",
    "new_stride_b",
    "new_stride_h",
    "new_stride_s",
    "pool_stride_page",
    "pool_stride_h",
    "pool_stride_row",
    "table_stride_b",
];

/// How many of [`APPEND_PARAMS`] are pointers (the first ones).
pub const APPEND_POINTERS: usize = 6;

/// The append kernel's PTX (`sm_89`; 16-bit elements, any head dim that is a multiple of 8).
/// Launch `ceil(B · HKV · S · D / 8 / APPEND_THREADS)` CTAs of [`APPEND_THREADS`].
pub fn append_ptx() -> String {
    let p = hand_written_entry(
        "the paged cache's append kernel (reshape-and-cache).\n// One thread a 16-byte chunk of one new token's K row and V row",
        APPEND_ENTRY,
        (&APPEND_PARAMS, APPEND_POINTERS),
        APPEND_THREADS,
    );
    let body = [
        ".reg .pred %p<8>;",
        ".reg .b32 %r<40>;",
        ".reg .b64 %rd<32>;",
        "// this thread's chunk: idx = ((b * HKV + hk) * S + i) * chunks + chunk",
        "mov.u32 %r0, %tid.x;",
        "mov.u32 %r1, %ctaid.x;",
        &format!("mad.lo.u32 %r2, %r1, {APPEND_THREADS}, %r0;"),
        "ld.param.u32 %r3, [batch];",
        "ld.param.u32 %r4, [kv_heads];",
        "ld.param.u32 %r5, [new_tokens];",
        "ld.param.u32 %r6, [chunks];",
        "mul.lo.u32 %r7, %r3, %r4;",
        "mul.lo.u32 %r7, %r7, %r5;",
        "mul.lo.u32 %r7, %r7, %r6;",
        "setp.ge.u32 %p0, %r2, %r7;",
        "@%p0 bra $L_done;",
        "rem.u32 %r8, %r2, %r6;          // chunk",
        "div.u32 %r9, %r2, %r6;",
        "rem.u32 %r10, %r9, %r5;         // i: the token",
        "div.u32 %r9, %r9, %r5;",
        "rem.u32 %r11, %r9, %r4;         // hk: the K/V head",
        "div.u32 %r12, %r9, %r4;         // b: the sequence",
        "// its cache position p = cache_len[b] - S + i; none before the sequence's start",
        "ld.param.u64 %rd0, [cache_len];",
        "cvta.to.global.u64 %rd0, %rd0;",
        "mul.wide.u32 %rd1, %r12, 4;",
        "add.u64 %rd1, %rd0, %rd1;",
        "ld.global.nc.u32 %r13, [%rd1];",
        "sub.s32 %r14, %r13, %r5;",
        "add.s32 %r14, %r14, %r10;",
        "setp.lt.s32 %p1, %r14, 0;",
        "@%p1 bra $L_done;",
        "// its page: block_table[b, p / PAGE], row p % PAGE; none past the table's row or the pool",
        "ld.param.u32 %r15, [page_rows];",
        "div.u32 %r16, %r14, %r15;",
        "rem.u32 %r17, %r14, %r15;",
        "ld.param.u32 %r18, [max_pages];",
        "setp.ge.u32 %p2, %r16, %r18;",
        "@%p2 bra $L_done;",
        "ld.param.u64 %rd2, [block_table];",
        "cvta.to.global.u64 %rd2, %rd2;",
        "ld.param.u32 %r19, [table_stride_b];",
        "mul.wide.u32 %rd3, %r12, %r19;",
        "cvt.u64.u32 %rd4, %r16;",
        "add.u64 %rd3, %rd3, %rd4;",
        "shl.b64 %rd3, %rd3, 2;",
        "add.u64 %rd3, %rd2, %rd3;",
        "ld.global.nc.u32 %r20, [%rd3];",
        "ld.param.u32 %r21, [pages];",
        "// unsigned: a negative entry is outside the pool too",
        "setp.ge.u32 %p3, %r20, %r21;",
        "@%p3 bra $L_done;",
        "// the source: new[b, hk, i, 8 * chunk] (bytes)",
        "ld.param.u32 %r22, [new_stride_b];",
        "ld.param.u32 %r23, [new_stride_h];",
        "ld.param.u32 %r24, [new_stride_s];",
        "mul.wide.u32 %rd5, %r12, %r22;",
        "mul.wide.u32 %rd6, %r11, %r23;",
        "add.u64 %rd5, %rd5, %rd6;",
        "mul.wide.u32 %rd6, %r10, %r24;",
        "add.u64 %rd5, %rd5, %rd6;",
        "mul.wide.u32 %rd6, %r8, 8;",
        "add.u64 %rd5, %rd5, %rd6;",
        "shl.b64 %rd5, %rd5, 1;",
        "// the destination: pool[page, hk, row, 8 * chunk] (bytes)",
        "ld.param.u32 %r25, [pool_stride_page];",
        "ld.param.u32 %r26, [pool_stride_h];",
        "ld.param.u32 %r27, [pool_stride_row];",
        "mul.wide.u32 %rd7, %r20, %r25;",
        "mul.wide.u32 %rd8, %r11, %r26;",
        "add.u64 %rd7, %rd7, %rd8;",
        "mul.wide.u32 %rd8, %r17, %r27;",
        "add.u64 %rd7, %rd7, %rd8;",
        "mul.wide.u32 %rd8, %r8, 8;",
        "add.u64 %rd7, %rd7, %rd8;",
        "shl.b64 %rd7, %rd7, 1;",
        "// K, then V: 16 bytes each",
        "ld.param.u64 %rd9, [k_new];",
        "cvta.to.global.u64 %rd9, %rd9;",
        "add.u64 %rd9, %rd9, %rd5;",
        "ld.param.u64 %rd10, [k_pool];",
        "cvta.to.global.u64 %rd10, %rd10;",
        "add.u64 %rd10, %rd10, %rd7;",
        "ld.global.nc.v4.u32 {%r30, %r31, %r32, %r33}, [%rd9];",
        "st.global.v4.u32 [%rd10], {%r30, %r31, %r32, %r33};",
        "ld.param.u64 %rd11, [v_new];",
        "cvta.to.global.u64 %rd11, %rd11;",
        "add.u64 %rd11, %rd11, %rd5;",
        "ld.param.u64 %rd12, [v_pool];",
        "cvta.to.global.u64 %rd12, %rd12;",
        "add.u64 %rd12, %rd12, %rd7;",
        "ld.global.nc.v4.u32 {%r34, %r35, %r36, %r37}, [%rd11];",
        "st.global.v4.u32 [%rd12], {%r34, %r35, %r36, %r37};",
    ];
    finish_hand_written(p, &body)
}

/// Ends a hand-written kernel begun by [`hand_written_entry`]: its body's lines (labels,
/// starting with `$`, at the margin; instructions indented), then the `$L_done` exit, `ret` and
/// the closing brace.
pub(crate) fn finish_hand_written(mut p: String, body: &[&str]) -> String {
    for line in body {
        if line.starts_with('$') {
            let _ = writeln!(p, "{line}");
        } else {
            let _ = writeln!(p, "\t{line}");
        }
    }
    let _ = writeln!(p, "$L_done:\n\tret;\n}}");
    p
}

/// The text of a hand-written kernel up to its body's opening brace: a comment saying what it
/// is (`what`), the `sm_89` header, and the entry `entry` with `params` (the first `pointers` of
/// them `u64`, the rest `u32`) for CTAs of `threads`.
pub(crate) fn hand_written_entry(
    what: &str,
    entry: &str,
    (params, pointers): (&[&str], usize),
    threads: u32,
) -> String {
    let mut p = String::new();
    let _ = writeln!(p, "//\n// Generated by FlashCore: {what}.\n//\n");
    let _ = writeln!(p, ".version 7.8\n.target sm_89\n.address_size 64\n");
    let _ = writeln!(p, ".visible .entry {entry}(");
    let decls: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(i, name)| format!("\t.param .{} {name}", if i < pointers { "u64" } else { "u32" }))
        .collect();
    let _ = writeln!(p, "{}\n)\n.maxntid {threads}, 1, 1\n{{", decls.join(",\n"));
    p
}
