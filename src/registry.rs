//! The kernel registry: every `#[flash_kernel]` linked into a program registers itself here, so
//! tools (the `flashcore` command) can find kernels by name.
//!
//! ```
//! // `flashcore::kernels::attention` is linked into every program that uses the crate.
//! let attention = flashcore::registry::find("attention").expect("registered by the macro");
//! assert_eq!(attention.config, flashcore::kernels::attention::CONFIG);
//! assert!(flashcore::registry::kernels().iter().any(|k| k.name == "attention"));
//! ```

use crate::{ir, Config};

/// What the registry knows of one kernel: enough to compile it for any config.
#[derive(Debug)]
pub struct KernelEntry {
    /// The kernel's name (its function name, and the PTX `.entry`).
    pub name: &'static str,
    /// The first line of its doc comment (empty if it has none).
    pub summary: &'static str,
    /// The module path that declares it, e.g. `flashcore::kernels`.
    pub module: &'static str,
    /// The configuration declared in `#[flash_kernel(..)]`.
    pub config: Config,
    /// The kernel as written, for lowering with any config.
    pub program: fn() -> ir::source::Program,
}

inventory::collect!(KernelEntry);

/// Every kernel linked into this program, by name (kernels of the same name in different
/// modules in module order).
pub fn kernels() -> Vec<&'static KernelEntry> {
    let mut all: Vec<&'static KernelEntry> = inventory::iter::<KernelEntry>.into_iter().collect();
    all.sort_by_key(|k| (k.name, k.module));
    all
}

/// The kernel called `name` (or `module::name`, which tells apart two modules' kernels of the
/// same name); `None` if there is none, or more than one, of that name.
pub fn find(name: &str) -> Option<&'static KernelEntry> {
    let all = kernels();
    if let Some(k) = all.iter().find(|k| format!("{}::{}", k.module, k.name) == name) {
        return Some(k);
    }
    match all.iter().filter(|k| k.name == name).collect::<Vec<_>>()[..] {
        [k] => Some(k),
        _ => None,
    }
}
