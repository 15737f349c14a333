//! Scratch: writes the PTX for `stages load_warps persistent(0/1)` to /tmp/scratch/ws.ptx.
fn main() {
    let a: Vec<u32> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let cfg = flashcore::Config {
        stages: a[0],
        load_warps: a[1],
        persistent: a[2] == 1,
        ..flashcore::kernels::attention::CONFIG
    };
    std::fs::write(format!("/tmp/scratch/ws{}.ptx", a[2]), flashcore::kernels::attention::ptx(&cfg).unwrap())
        .unwrap();
}
