//! Tollgate's decision engine: the tool catalog, resource binding, argument validation,
//! grants and Cedar policy packs. Pure and synchronous: no IO, no async, so that a decision is
//! a function of its inputs and can be replayed exactly.

pub mod args;
pub mod cases;
pub mod catalog;
pub mod check;
pub mod clock;
pub mod decide;
pub mod grant;
pub mod pack;
pub mod pattern;
pub mod provenance;
pub mod recorded;
pub mod resource;
pub mod session_limit;
pub mod tool;

pub use args::{ArgumentError, SchemaCache};
pub use catalog::{
    ActionClass, Catalog, CatalogError, Classification, EntryConfig, Hints, Risk, Source,
};
pub use clock::{LocalTime, UtcOffset};
pub use decide::{
    CallInput, Decision, Effect, Environment, Explanation, PolicyOutcome, PolicyVerdict,
    SessionFacts, SessionStats,
};
pub use grant::{
    Charge, Constraint, Grant, GrantDenial, Limit, LimitKind, NarrowRequest, Rule, Usage,
};
pub use pack::{DEFAULT_SCHEMA, Pack, PackError, PackSource, PolicyMeta};
pub use pattern::{ResourcePattern, glob_match};
pub use provenance::{Origin, Provenance, Trust};
pub use resource::{BindError, Bound, PathView, Resource, ResourceKind, bind, bind_seen};
pub use session_limit::{LimitUse, SessionLimit};
pub use tool::ToolFacts;
