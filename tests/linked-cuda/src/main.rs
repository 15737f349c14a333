//! FlashCore next to a dependency that links CUDA (see Cargo.toml): opens the device and says
//! what it found.

fn main() {
    match flashcore::runtime::Device::new(0) {
        Ok(device) => println!("{}", device.info().name),
        Err(e) => println!("{e}"),
    }
}
