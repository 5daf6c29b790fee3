//! `srotax eval`: runs a pipeline over a finite input (JSON Lines or a JSON array) and
//! writes the results as JSON Lines.
//!
//! Input is streamed: JSON Lines are read one line at a time and a JSON array one element
//! at a time, so memory holds only what the pipeline's blocking stages (`$group`,
//! `$sort`, ...) keep. A malformed line or a document that fails in a stage is reported on
//! stderr and skipped; the rest of the input is still processed.

use crate::error::CliError;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use stream_core::value::{parse_document, parse_document_fields, ExtJsonMode, Str, Value};
use stream_core::{Document, Pipeline, PipelineRun, StageError};

const BUF_SIZE: usize = 64 * 1024;

/// What `eval` reads and writes.
#[derive(Debug)]
pub struct EvalOptions {
    /// Input file; `None` or `-` reads stdin.
    pub input: Option<PathBuf>,
    /// Output file; `None` or `-` writes stdout.
    pub output: Option<PathBuf>,
    /// Extended JSON flavour of the output.
    pub mode: ExtJsonMode,
}

/// Counts of a completed run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EvalStats {
    /// Input documents (or malformed lines) read.
    pub inputs: u64,
    /// Documents written.
    pub outputs: u64,
    /// Input lines/documents that failed.
    pub failed: u64,
    /// Documents that failed when blocking stages emitted at the end of the input.
    pub failed_at_end: u64,
}

/// Runs `pipeline` over the input and writes its output. Returns the counts when every
/// document succeeded, [`CliError::DocumentsFailed`] when some failed (each reported on
/// stderr), or the I/O error that stopped the run.
pub fn eval(pipeline: &Pipeline, opts: &EvalOptions) -> Result<EvalStats, CliError> {
    let started = Instant::now();
    let reader: Box<dyn Read> = match is_std(&opts.input) {
        None => Box::new(io::stdin().lock()),
        Some(path) => Box::new(File::open(path).map_err(|source| CliError::OpenInput {
            path: path.to_path_buf(),
            source,
        })?),
    };
    let writer: Box<dyn Write> = match is_std(&opts.output) {
        None => Box::new(io::stdout().lock()),
        Some(path) => Box::new(File::create(path).map_err(|source| CliError::CreateOutput {
            path: path.to_path_buf(),
            source,
        })?),
    };
    let mut runner = Runner {
        run: pipeline.start(),
        out: Vec::new(),
        errors: Vec::new(),
        writer: BufWriter::with_capacity(BUF_SIZE, writer),
        line: String::with_capacity(256),
        mode: opts.mode,
        stats: EvalStats::default(),
        write_error: None,
    };
    let mut reader = BufReader::with_capacity(BUF_SIZE, reader);
    // Projection pushdown: when the pipeline reads only some top-level fields, JSON Lines
    // input skips the others while parsing.
    let fields = pipeline.input_fields();
    tracing::debug!(?fields, "input fields the pipeline reads (None: all)");
    let result = read_input(&mut reader, fields, &mut runner).and_then(|()| runner.finish());
    match result {
        Ok(()) => {}
        // A closed pipe (`srotax eval ... | head`) is a normal way for output to end.
        Err(CliError::WriteOutput(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            tracing::debug!("output closed early");
            return Ok(runner.stats);
        }
        Err(e) => return Err(e),
    }
    let stats = runner.stats;
    for (i, (stage, s)) in runner.run.stage_stats().into_iter().enumerate() {
        tracing::debug!(
            stage_index = i,
            stage,
            documents_in = s.documents_in,
            documents_out = s.documents_out,
            errors = s.errors,
            "stage finished"
        );
    }
    tracing::info!(
        inputs = stats.inputs,
        outputs = stats.outputs,
        failed = stats.failed,
        failed_at_end = stats.failed_at_end,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "eval finished"
    );
    if stats.failed > 0 || stats.failed_at_end > 0 {
        return Err(CliError::DocumentsFailed {
            failed: stats.failed,
            total: stats.inputs,
            at_end: stats.failed_at_end,
        });
    }
    Ok(stats)
}

fn is_std(path: &Option<PathBuf>) -> Option<&Path> {
    match path {
        Some(p) if p.as_os_str() != "-" => Some(p),
        _ => None,
    }
}

/// Where an input document came from, for error messages.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// JSON Lines: document number and line number (both 1-based).
    Line { doc: u64, line: u64 },
    /// JSON array: element number (1-based).
    Element { doc: u64 },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line { doc, line } => write!(f, "input document {doc} (line {line})"),
            Origin::Element { doc } => write!(f, "input document {doc}"),
        }
    }
}

struct Runner {
    run: PipelineRun,
    out: Vec<Document>,
    errors: Vec<StageError>,
    writer: BufWriter<Box<dyn Write>>,
    line: String,
    mode: ExtJsonMode,
    stats: EvalStats,
    /// A write error raised while the JSON-array reader was in control.
    write_error: Option<io::Error>,
}

impl Runner {
    fn push(&mut self, doc: Document, origin: Origin) -> Result<(), CliError> {
        self.stats.inputs += 1;
        self.run.push(doc, &mut self.out, &mut self.errors);
        if !self.errors.is_empty() {
            // Several errors can come from one input document (e.g. after `$unwind`);
            // it counts once.
            self.stats.failed += 1;
            for e in self.errors.drain(..) {
                eprintln!("error: {origin}: {e}");
            }
        }
        self.write_out()
    }

    fn malformed(&mut self, origin: Origin, error: impl fmt::Display) {
        self.stats.inputs += 1;
        self.stats.failed += 1;
        let Origin::Line { line, .. } = origin else {
            eprintln!("error: {origin}: {error}");
            return;
        };
        eprintln!("error: input line {line}: {error}");
    }

    fn finish(&mut self) -> Result<(), CliError> {
        self.run.finish(&mut self.out, &mut self.errors);
        for e in self.errors.drain(..) {
            self.stats.failed_at_end += 1;
            eprintln!("error: at end of input: {e}");
        }
        self.write_out()?;
        self.writer.flush().map_err(CliError::WriteOutput)
    }

    fn write_out(&mut self) -> Result<(), CliError> {
        for doc in self.out.drain(..) {
            self.line.clear();
            doc.write_json(&mut self.line, self.mode);
            self.line.push('\n');
            self.writer
                .write_all(self.line.as_bytes())
                .map_err(CliError::WriteOutput)?;
            self.stats.outputs += 1;
        }
        Ok(())
    }
}

/// Skips leading whitespace (and a UTF-8 byte-order mark), counting the newlines skipped,
/// and returns the first significant byte without consuming it.
fn peek_start(reader: &mut impl BufRead) -> io::Result<(Option<u8>, u64)> {
    let mut newlines = 0;
    let mut first = true;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((None, newlines));
        }
        let mut skip = 0;
        if first && buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
            skip = 3;
        }
        first = false;
        while skip < buf.len() && buf[skip].is_ascii_whitespace() {
            if buf[skip] == b'\n' {
                newlines += 1;
            }
            skip += 1;
        }
        let found = buf.get(skip).copied();
        reader.consume(skip);
        if found.is_some() {
            return Ok((found, newlines));
        }
    }
}

fn read_input(
    reader: &mut impl BufRead,
    fields: Option<&[Str]>,
    runner: &mut Runner,
) -> Result<(), CliError> {
    let (first, skipped_lines) = peek_start(reader).map_err(CliError::ReadInput)?;
    match first {
        None => Ok(()),
        Some(b'[') => {
            tracing::debug!("input is a JSON array");
            read_array(reader, runner)
        }
        Some(_) => {
            tracing::debug!("input is JSON Lines");
            read_lines(reader, skipped_lines, fields, runner)
        }
    }
}

fn read_lines(
    reader: &mut impl BufRead,
    skipped_lines: u64,
    fields: Option<&[Str]>,
    runner: &mut Runner,
) -> Result<(), CliError> {
    let mut buf = Vec::with_capacity(1024);
    let mut line_no = skipped_lines;
    let mut doc_no = 0;
    loop {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .map_err(CliError::ReadInput)?
            == 0
        {
            return Ok(());
        }
        line_no += 1;
        let text = match std::str::from_utf8(&buf) {
            Ok(text) => text.trim(),
            Err(e) => {
                doc_no += 1;
                runner.malformed(
                    Origin::Line {
                        doc: doc_no,
                        line: line_no,
                    },
                    format_args!("invalid UTF-8: {e}"),
                );
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        doc_no += 1;
        let origin = Origin::Line {
            doc: doc_no,
            line: line_no,
        };
        let parsed = match fields {
            Some(fields) => parse_document_fields(text, fields),
            None => parse_document(text),
        };
        match parsed {
            Ok(doc) => runner.push(doc, origin)?,
            Err(e) => runner.malformed(origin, e),
        }
    }
}

/// Streams the elements of a top-level JSON array into the pipeline.
fn read_array(reader: &mut impl BufRead, runner: &mut Runner) -> Result<(), CliError> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut visitor = ArrayVisitor { runner, count: 0 };
    let result = (&mut de)
        .deserialize_seq(&mut visitor)
        .and_then(|()| de.end());
    let count = visitor.count;
    match result {
        Ok(()) => Ok(()),
        Err(_) if runner.write_error.is_some() => Err(CliError::WriteOutput(
            runner
                .write_error
                .take()
                .unwrap_or_else(|| io::Error::other("write failed")),
        )),
        Err(e) if e.is_io() => Err(CliError::ReadInput(e.into())),
        Err(e) => {
            // The array itself is malformed: nothing after this point can be read.
            runner.stats.inputs += 1;
            runner.stats.failed += 1;
            eprintln!("error: input is not a valid JSON array (after document {count}): {e}; the rest of the input was skipped");
            Ok(())
        }
    }
}

struct ArrayVisitor<'r> {
    runner: &'r mut Runner,
    count: u64,
}

impl<'de> Visitor<'de> for &mut ArrayVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of documents")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(value) = seq.next_element::<Value>()? {
            self.count += 1;
            let origin = Origin::Element { doc: self.count };
            let pushed = match value {
                Value::Document(doc) => self.runner.push(doc, origin),
                other => {
                    let msg = format!("expected a JSON object, found {}", other.type_name());
                    self.runner.malformed(origin, msg);
                    Ok(())
                }
            };
            if let Err(e) = pushed {
                if let CliError::WriteOutput(io) = e {
                    self.runner.write_error = Some(io);
                }
                return Err(de::Error::custom("output failed"));
            }
        }
        Ok(())
    }
}
