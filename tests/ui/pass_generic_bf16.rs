use flashcore::flash_kernel;

#[flash_kernel(tile_m = 64, tile_n = 64, head_dim = 64, stages = 1, warps = 4, dtype = bf16)]
fn attention<T>(
    q: Tensor<T, B, H, S, D>,
    k: Tensor<T, B, H, S, D>,
    v: Tensor<T, B, H, S, D>,
    o: TensorMut<T, B, H, S, D>,
    scale: f32,
) {
    for (b, h, qt) in tiles(B, H, S / TILE_M) {
        #[role(compute)]
        let qf = load(q.tile(b, h, qt));
        let mut m = fill([TILE_M], NEG_INF);
        let mut l = fill([TILE_M], 0.0);
        let mut acc = zeros([TILE_M, D]);
        for kt in pipeline(0..S / TILE_N) {
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
                acc = acc * alpha;
                m = m_new;
            }
            #[role(compute)]
            acc = mma(p.to::<T>(), vs, acc);
        }
        store(o.tile(b, h, qt), acc / l);
    }
}

fn main() {
    // The declared config is bf16; the same kernel compiles for f16 at run time.
    let bf16 = attention::ptx(&attention::CONFIG).expect("the declared config compiles");
    assert!(bf16.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"));
    assert!(bf16.contains("cvt.rn.bf16x2.f32"));
    let f16 = attention::ptx(&flashcore::Config { dtype: flashcore::DType::F16, ..attention::CONFIG }).unwrap();
    assert!(f16.contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"));
    // The typed launcher takes tensors of any element type, checked against the config at launch.
    fn _typed(device: &flashcore::runtime::Device, q: &flashcore::runtime::DeviceTensor<flashcore::bf16>, o: &mut flashcore::runtime::DeviceTensor<flashcore::bf16>) {
        let _ = attention::launch(device, &attention::CONFIG, q, q, q, o, 0.125);
    }
}
