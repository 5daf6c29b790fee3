//! Typed errors of the command-line tool and the exit code each one maps to.

use crate::run::RunCommandError;
use std::io;
use std::path::PathBuf;
use stream_core::value::ExtJsonError;
use stream_core::CompileError;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: an I/O error (unreadable file, failed write).
pub const EXIT_IO: u8 = 1;
/// Exit code: the pipeline is invalid (bad JSON or a compile error).
pub const EXIT_INVALID_PIPELINE: u8 = 2;
/// Exit code: the run completed but some input lines or documents failed.
pub const EXIT_DOCUMENTS_FAILED: u8 = 3;

/// An error that ends a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The pipeline file cannot be read.
    #[error("cannot read pipeline file '{path}': {source}")]
    ReadPipeline {
        /// The pipeline file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The pipeline file is not valid (Extended) JSON.
    #[error("invalid pipeline: '{path}' is not valid JSON: {source}")]
    PipelineJson {
        /// The pipeline file.
        path: PathBuf,
        /// The parse error.
        source: ExtJsonError,
    },
    /// The pipeline does not compile.
    #[error("invalid pipeline: {0}")]
    InvalidPipeline(#[from] CompileError),
    /// The input file cannot be opened.
    #[error("cannot open input file '{path}': {source}")]
    OpenInput {
        /// The input file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading the input failed.
    #[error("cannot read input: {0}")]
    ReadInput(#[source] io::Error),
    /// The output file cannot be created.
    #[error("cannot create output file '{path}': {source}")]
    CreateOutput {
        /// The output file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    WriteOutput(#[source] io::Error),
    /// The run completed, but some input lines or documents failed (each was reported).
    #[error("{}", documents_failed(*failed, *total, *at_end))]
    DocumentsFailed {
        /// Input lines/documents that failed.
        failed: u64,
        /// Input lines/documents read.
        total: u64,
        /// Documents that failed when blocking stages emitted at the end of the input.
        at_end: u64,
    },
    /// `srotax run` failed.
    #[error(transparent)]
    Run(#[from] RunCommandError),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::ReadPipeline { .. }
            | CliError::OpenInput { .. }
            | CliError::ReadInput(_)
            | CliError::CreateOutput { .. }
            | CliError::WriteOutput(_) => EXIT_IO,
            CliError::PipelineJson { .. } | CliError::InvalidPipeline(_) => EXIT_INVALID_PIPELINE,
            CliError::DocumentsFailed { .. } => EXIT_DOCUMENTS_FAILED,
            CliError::Run(RunCommandError::Definition { .. } | RunCommandError::DuplicateId(_)) => {
                EXIT_INVALID_PIPELINE
            }
            CliError::Run(_) => EXIT_IO,
        }
    }
}

fn documents_failed(failed: u64, total: u64, at_end: u64) -> String {
    let mut msg = format!("{failed} of {total} input document(s) failed");
    if at_end > 0 {
        msg.push_str(&format!(
            ", {at_end} document(s) failed at the end of the input"
        ));
    }
    msg.push_str(" (see the errors above); the others were processed");
    msg
}
