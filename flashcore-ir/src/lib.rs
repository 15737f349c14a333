//! FlashCore's tile-level IR: the [`source`] program the macro builds, its [`lower`](fn@lower)ing into a
//! typed, arena-based [`Kernel`] for one [`Config`], the [`verify`]er, and the text form
//! (`Display`) that snapshots pin.
//!
//! Invariant: this crate depends on neither `syn` nor `cudarc`; it is plain data and checks.

pub mod abi;
pub mod config;
mod display;
pub mod error;
pub mod kernel;
pub mod lower;
pub mod parse;
pub mod passes;
pub mod protocol;
pub mod registers;
pub mod source;
pub mod timeline;
pub mod verify;

pub use config::{Config, Target};
pub use error::{ConfigError, IrError, LowerError, VerifyError};
pub use kernel::{Kernel, Op, Type, Value};
pub use lower::lower;
pub use parse::{parse_kernel, ParseError};
