//! Tollgate's decision engine: what a tool does (the catalog), which resources a call touches
//! (bound from its arguments) and whether its arguments fit the tool's schema. Pure and
//! synchronous: no IO, no async, so that a decision can be replayed exactly.

pub mod args;
pub mod catalog;
pub mod resource;

pub use args::{ArgumentError, SchemaCache};
pub use catalog::{
    ActionClass, Catalog, CatalogError, Classification, EntryConfig, Hints, Risk, Source,
};
pub use resource::{BindError, Resource, ResourceKind, bind};
