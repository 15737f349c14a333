//! The IR crate's errors: invalid configurations, type errors found while lowering a program
//! (each carrying the span of the offending source), and verifier failures.

use crate::source::SpanId;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid config: {field} = {value}: {why}")]
    Invalid { field: &'static str, value: u32, why: String },
    /// A setting of [`crate::Config::with_settings`] that does not name a field or value.
    #[error("config setting `{setting}`: {why}")]
    Setting { setting: String, why: String },
}

/// A problem in the user's kernel, found while lowering it. `span` points at the source.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct LowerError {
    pub message: String,
    pub span: SpanId,
}

impl LowerError {
    pub fn new(span: SpanId, message: impl Into<String>) -> Self {
        LowerError { message: message.into(), span }
    }
}

/// An IR invariant that a pass (or the lowering) broke: always a compiler bug, never user error.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("IR verifier: {0}")]
pub struct VerifyError(pub String);

/// Everything that can go wrong turning a program and a config into verified IR.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum IrError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lower(#[from] LowerError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Protocol(#[from] crate::protocol::ProtocolError),
    #[error("no pass is named `{0}` (passes: pipeline, split_kv, split_ctas, persist, warp_specialize, overlap, tma, fold_scale)")]
    UnknownPass(String),
}
