//! The tutorial's kernel (docs/tutorial.md): attention whose softmax warps keep only the row
//! statistics, with the compute warps rescaling the accumulator inside the P·V step; and the
//! `flashcore` command over it (`cargo run --example tutorial -- check stats_softmax_attention`).

use flashcore::flash_kernel;

/// Attention whose softmax warps compute only the row statistics and probabilities.
///
/// The compute warps rescale the O accumulator as part of the P·V step, so the accumulator
/// never leaves them: only the scores go out to the softmax warps and only `p` and `alpha`
/// come back.
#[flash_kernel(
    tile_m = 64,
    tile_n = 64,
    head_dim = 64,
    stages = 2,
    warps(compute = 4, load = 1, softmax = 4)
)]
pub fn stats_softmax_attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, H, SK, D>,
    v: Tensor<T, B, H, SK, D>,
    o: TensorMut<T, B, H, S, D>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..SK / TILE_N) {
            #[role(load)]
            {
                let ks = stage(k.tile(b, h, kt));
                let vs = stage(v.tile(b, h, kt));
            }
            #[role(compute)]
            let s = mma(qf, ks.t()) * (scale * LOG2_E);
            #[role(softmax)]
            {
                let m_new = max(m, row_max(s));
                let p = exp2(s - m_new);
                let alpha = exp2(m - m_new);
                l = l * alpha + row_sum(p);
                m = m_new;
            }
            #[role(compute)]
            acc = mma(p.to::<T>(), vs, acc * alpha);
        }
        store(o.tile(b, h, qt), acc / l);
    }
}

fn main() -> std::process::ExitCode {
    flashcore::cli::main()
}
