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
        // toml's message names the key, the line and what was expected; keep it whole.
        Self::Syntax(SyntaxError {
            message: error.to_string().trim_end().to_owned(),
        })
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
