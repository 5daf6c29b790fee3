//! JSON Lines helpers shared by the file and stdio connectors.

use stream_core::value::{Document, ExtJsonMode};
use tracing::warn;

/// Buffer size of line readers: large reads keep system calls (and, for files, blocking
/// tasks) rare.
pub(crate) const READ_BUFFER: usize = 1 << 20;

/// The text of one complete line (newline included in `raw`), or `None` for a blank line.
/// Invalid UTF-8 is replaced (U+FFFD) with a warning naming `origin` and `offset`, so one
/// bad line does not stop the pipeline; it then usually fails to parse and goes through
/// the error policy.
pub(crate) fn line_text(raw: &[u8], origin: &str, offset: u64) -> Option<String> {
    let mut end = raw.len();
    while end > 0 && matches!(raw[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let bytes = &raw[..end];
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(e) => {
            warn!(origin, offset, error = %e, "line is not valid UTF-8; invalid bytes replaced");
            String::from_utf8_lossy(bytes).into_owned()
        }
    })
}

/// Appends each document as one line of relaxed Extended JSON.
pub(crate) fn write_lines(out: &mut String, batch: &[Document]) {
    for doc in batch {
        doc.write_json(out, ExtJsonMode::Relaxed);
        out.push('\n');
    }
}
