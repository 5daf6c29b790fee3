//! Errors of the file state store.

use std::io;
use std::path::PathBuf;
use stream_core::streaming::StateError;

/// A failure of the file state store, naming the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum FileStoreError {
    /// Another process (or another open store in this process) holds the directory.
    #[error(
        "state directory {dir} is in use by {holder}; stop that process or give this pipeline its own \
         state directory (state.options.path)"
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// Who holds it, e.g. `process 4242`, as recorded in the lock file.
        holder: String,
    },
    /// A file-system operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done, e.g. `write` or `fsync`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Stored data is unreadable.
    #[error("{path}{}: {message}", offset.map(|o| format!(" at byte offset {o}")).unwrap_or_default())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where in the file the damage starts, when known.
        offset: Option<u64>,
        /// What is wrong and what can be done.
        message: String,
    },
    /// A pipeline id that cannot be used as a file name.
    #[error("invalid pipeline id '{0}': use 1 to 200 letters, digits, '-', '_' or '.'")]
    InvalidPipelineId(String),
    /// A key or value that does not fit a log record.
    #[error("{0}")]
    TooLarge(String),
    /// An earlier write or fsync failed, so what is on disk is uncertain; the store refuses
    /// further writes until it is reopened (which replays and repairs the log).
    #[error("state store {dir} stopped accepting writes after an earlier failure: {reason}; restart the pipeline")]
    Failed {
        /// The state directory.
        dir: PathBuf,
        /// The first failure.
        reason: String,
    },
}

impl FileStoreError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        FileStoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: Option<u64>,
        message: impl Into<String>,
    ) -> Self {
        FileStoreError::Corrupt {
            path: path.into(),
            offset,
            message: message.into(),
        }
    }
}

impl From<FileStoreError> for StateError {
    fn from(e: FileStoreError) -> Self {
        match e {
            FileStoreError::Corrupt { .. } => StateError::Corrupt(e.to_string()),
            other => StateError::Unavailable(other.to_string()),
        }
    }
}
