use std::path::PathBuf;

/// Why key material or the revocation list could not be used. Operator-side faults: the state
/// folder, its files or the OS random source.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("state folder `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is not a key Tollgate wrote ({reason})", path.display())]
    BadKey { path: PathBuf, reason: &'static str },
    #[error(
        "no grant key in `{}`: issue a grant first (`tollgate grant issue`), or point `state_dir` at the folder that has one",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("`{}` is readable by other users; it holds a private key (chmod 600 it)", path.display())]
    Exposed { path: PathBuf },
    #[error("the OS random source failed: {0}")]
    Random(String),
    #[error("`{id}` is not a grant id (`g-` and hex digits)")]
    BadId { id: String },
}

impl MintError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
