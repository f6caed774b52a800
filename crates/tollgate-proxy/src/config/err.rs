use std::path::{Path, PathBuf};

/// A configuration the operator must fix; Tollgate does not start with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Read(ReadError),
    #[error(transparent)]
    Syntax(SyntaxError),
    #[error(transparent)]
    Invalid(InvalidError),
    #[error("in `{}`: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ConfigError>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read config `{}`: {source}", path.display())]
pub struct ReadError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    message: String,
}

#[derive(Debug, thiserror::Error)]
#[error("`{key}`: expected {expected}")]
pub struct InvalidError {
    key: String,
    expected: String,
}

impl ConfigError {
    pub(crate) fn read(path: &Path, source: std::io::Error) -> Self {
        Self::Read(ReadError {
            path: path.to_owned(),
            source,
        })
    }

    pub(crate) fn syntax(error: toml::de::Error) -> Self {
        // toml's message shows the offending line with its key and what was expected; only
        // Rust's names for number types are put in words an operator reads.
        let mut message = error.to_string().trim_end().to_owned();
        for (rust, words) in [
            ("expected usize", "expected a whole number"),
            ("expected u64", "expected a whole number"),
            ("expected u32", "expected a whole number"),
            ("expected u16", "expected a whole number"),
            ("expected i64", "expected a whole number"),
        ] {
            message = message.replace(rust, words);
        }
        Self::Syntax(SyntaxError { message })
    }

    pub(crate) fn invalid(key: impl Into<String>, expected: impl Into<String>) -> Self {
        Self::Invalid(InvalidError {
            key: key.into(),
            expected: expected.into(),
        })
    }

    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Read(_) => self,
            other => Self::InFile {
                path: path.to_owned(),
                source: Box::new(other),
            },
        }
    }
}
