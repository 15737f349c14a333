"""Runs on the GPU machine: hand-written sm_90a PTX that checks the facts emit/wgmma.rs rests on,
against torch in float64. One CTA, one warpgroup: S = Q·Kᵀ with K as a K-major B (128-byte
swizzle descriptor), then O = 1 + P·V with V as an MN-major (transposed) B, P from registers in
the mma.m16n8k16 A-fragment layout, for several (D, TILE_N), with tiles stored in the emitter's
layout (column blocks of 64 halves, rows × 128 bytes, chunk (c % 8) ^ (r % 8)).

    python3 scripts/probe_wgmma.py OUT_DIR     (writes each probe's PTX there)

Results of 2026-12-02 on the H200: docs/measurements/2026-12-02-h200-sm90a.txt."""
import ctypes, sys, torch

def ptx(d, n):
    L = []
    a = L.append
    nk = d // 16
    a(".version 8.0\n.target sm_90a\n.address_size 64\n.extern .shared .align 1024 .b8 smem[];")
    a(".visible .entry probe(.param .u64 pq, .param .u64 pk, .param .u64 pv, .param .u64 ps, .param .u64 po)")
    a(".maxntid 128, 1, 1\n.minnctapersm 1\n{")
    a(f".reg .b32 %r<100>;\n.reg .b64 %rd<100>;\n.reg .f32 %s<{n//2}>;\n.reg .f32 %o<{d//2}>;\n.reg .pred %p<4>;\n.reg .b32 %a<{nk*4}>;\n.reg .b32 %pa<{n//4}>;\n.reg .b64 %d<4>;")
    for i, nm in enumerate(["pq", "pk", "pv", "ps", "po"]):
        a(f"ld.param.u64 %rd{i}, [{nm}];")
        a(f"cvta.to.global.u64 %rd{i}, %rd{i};")
    a("mov.u32 %r0, %tid.x;")
    a("mov.u32 %r1, smem;")
    cpr = d // 8
    tile = n * d * 2
    for (src, base) in [(1, 4096), (2, 4096 + tile)]:
        for i in range(n * cpr // 128):
            a(f"add.u32 %r2, %r0, {128*i};")
            a(f"div.u32 %r3, %r2, {cpr};")
            a(f"rem.u32 %r4, %r2, {cpr};")
            a("mul.wide.u32 %rd10, %r2, 16;")
            a(f"add.u64 %rd11, %rd{src}, %rd10;")
            a("ld.global.v4.b32 {%r10, %r11, %r12, %r13}, [%rd11];")
            a("shr.u32 %r5, %r4, 3;")
            a(f"mul.lo.u32 %r5, %r5, {n*128};")
            a("shl.b32 %r6, %r3, 7;")
            a("add.u32 %r5, %r5, %r6;")
            a("and.b32 %r6, %r4, 7;")
            a("and.b32 %r7, %r3, 7;")
            a("xor.b32 %r6, %r6, %r7;")
            a("shl.b32 %r6, %r6, 4;")
            a("add.u32 %r5, %r5, %r6;")
            a(f"add.u32 %r5, %r5, {base};")
            a("add.u32 %r5, %r5, %r1;")
            a("st.shared.v4.b32 [%r5], {%r10, %r11, %r12, %r13};")
    a("fence.proxy.async.shared::cta;")
    a("bar.sync 0;")
    a("shr.u32 %r20, %r0, 5;\nand.b32 %r21, %r0, 31;\nshr.u32 %r22, %r21, 2;\nand.b32 %r23, %r21, 3;\nshl.b32 %r24, %r20, 4;\nadd.u32 %r24, %r24, %r22;")
    for kk in range(nk):
        for i in range(4):
            ro = 8 if i in (1, 3) else 0
            co = 8 if i >= 2 else 0
            a(f"add.u32 %r30, %r24, {ro};\nshl.b32 %r31, %r23, 1;\nadd.u32 %r31, %r31, {16*kk+co};\nmad.lo.u32 %r32, %r30, {d}, %r31;\nmul.wide.u32 %rd12, %r32, 2;\nadd.u64 %rd13, %rd0, %rd12;\nld.global.b32 %a{4*kk+i}, [%rd13];")
    for i in range(n // 2):
        a(f"mov.f32 %s{i}, 0f00000000;")
    a("setp.eq.u32 %p0, %r0, %r0;")
    a("cvt.u64.u32 %rd20, %r1;")
    a("wgmma.fence.sync.aligned;")
    sl = ", ".join(f"%s{i}" for i in range(n // 2))
    for kk in range(nk):
        start = 4096 + (kk // 4) * n * 128 + (kk % 4) * 32
        const = (1 << 16) | ((1024 >> 4) << 32) | (1 << 62)
        a(f"add.u64 %rd21, %rd20, {start};\nshr.u64 %rd21, %rd21, 4;\nor.b64 %d0, %rd21, {const};")
        a(f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.f16.f16 {{{sl}}}, {{%a{4*kk}, %a{4*kk+1}, %a{4*kk+2}, %a{4*kk+3}}}, %d0, %p0, 1, 1, 0;")
    a("wgmma.commit_group.sync.aligned;\nwgmma.wait_group.sync.aligned 0;")
    def store(regs, cols, out, ntiles):
        for nt in range(ntiles):
            for e in range(4):
                a(f"add.u32 %r40, %r24, {8*(e//2)};\nshl.b32 %r41, %r23, 1;\nadd.u32 %r41, %r41, {8*nt+e%2};\nmad.lo.u32 %r42, %r40, {cols}, %r41;\nmul.wide.u32 %rd14, %r42, 4;\nadd.u64 %rd15, %rd{out}, %rd14;\nst.global.f32 [%rd15], {regs}{4*nt+e};")
    store("%s", n, 3, n // 8)
    for kk in range(n // 16):
        s = lambda nt, e: f"%s{4*nt+e}"
        a(f"cvt.rn.f16x2.f32 %pa{4*kk}, {s(2*kk,1)}, {s(2*kk,0)};")
        a(f"cvt.rn.f16x2.f32 %pa{4*kk+1}, {s(2*kk,3)}, {s(2*kk,2)};")
        a(f"cvt.rn.f16x2.f32 %pa{4*kk+2}, {s(2*kk+1,1)}, {s(2*kk+1,0)};")
        a(f"cvt.rn.f16x2.f32 %pa{4*kk+3}, {s(2*kk+1,3)}, {s(2*kk+1,2)};")
    for i in range(d // 2):
        a(f"mov.f32 %o{i}, 0f3F800000;")
    a("wgmma.fence.sync.aligned;")
    ol = ", ".join(f"%o{i}" for i in range(d // 2))
    for kk in range(n // 16):
        start = 4096 + tile + kk * 2048
        const = (((n * 128) >> 4) << 16) | ((1024 >> 4) << 32) | (1 << 62)
        a(f"add.u64 %rd21, %rd20, {start};\nshr.u64 %rd21, %rd21, 4;\nor.b64 %d1, %rd21, {const};")
        a(f"wgmma.mma_async.sync.aligned.m64n{d}k16.f32.f16.f16 {{{ol}}}, {{%pa{4*kk}, %pa{4*kk+1}, %pa{4*kk+2}, %pa{4*kk+3}}}, %d1, %p0, 1, 1, 1;")
    a("wgmma.commit_group.sync.aligned;\nwgmma.wait_group.sync.aligned 0;")
    store("%o", d, 4, d // 8)
    a("ret;\n}")
    return "\n".join(L) + "\n"

if __name__ == "__main__":
    sys.path.insert(0, "scripts")
    from bench import Driver
    drv = Driver()
    for (d, n) in [(64, 64), (128, 64), (64, 128), (128, 128), (128, 32), (64, 32)]:
        text = ptx(d, n)
        open(f"{sys.argv[1]}/probe2_d{d}_n{n}.ptx", "w").write(text)
        smem = 4096 + 2 * n * d * 2
        f = drv.load(text, "probe", smem)
        torch.manual_seed(d + n)
        q = (torch.randn(64, d, device="cuda") * 0.3).half()
        k = (torch.randn(n, d, device="cuda") * 0.3).half()
        v = torch.randn(n, d, device="cuda").half()
        s = torch.full((64, n), float("nan"), device="cuda")
        o = torch.full((64, d), float("nan"), device="cuda")
        drv.launch(f, 1, 128, smem, [ctypes.c_uint64(t.data_ptr()) for t in [q, k, v, s, o]])
        torch.cuda.synchronize()
        sref = q.double() @ k.double().T
        oref = 1.0 + s.half().double() @ v.double()
        print(f"D={d} TILE_N={n}: S err {(s.double()-sref).abs().max().item():.3e}  O err {(o.double()-oref).abs().max().item():.3e} (O max {oref.abs().max().item():.1f})")
