//! Fronts: where agents connect. stdio for one agent that started Tollgate, streamable HTTP
//! for many.

pub mod http;
mod listen;
pub(crate) mod replay;
pub mod stdio;
