//! The audit trail: one JSON line per record, each carrying the hash of the line before it, so
//! that an edited, deleted or reordered record breaks the chain; with checkpoints signed by
//! Tollgate's key at intervals and when a file is closed, so that a rewritten chain or a cut
//! tail shows too.
//!
//! Records are written by one thread with group commit: every record queued while the previous
//! batch was being synced goes out in the next write and shares one `fdatasync`. A caller that
//! needs its record durable (a decision, before the call it allows is forwarded) waits for the
//! batch's acknowledgement. Files rotate by size and age; a new file continues the chain from
//! the last hash of the one before. A Tollgate that starts again opens a new file that
//! continues from the last complete record it finds.

mod chain;
pub mod histogram;
mod verify;
mod writer;

pub use chain::{CheckpointSigner, CheckpointVerifier, GENESIS, checkpoint_message, line_hash};
pub use verify::{Problem, Report, records_of, trail_paths, verify_files};
pub use writer::{
    Audit, AuditError, Copy, DEFAULT_SYNC_WITHIN, Define, Definition, Durability, LAZY_SYNC,
    MAX_GATHER, Settings, Ticket, WriterStats,
};
