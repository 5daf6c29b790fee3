//! JSON Lines helpers shared by the file and stdio connectors.

use stream_core::value::{Document, ExtJsonMode};
use tracing::warn;

/// Buffer size of line readers: large reads keep system calls (and, for files, blocking
/// tasks) rare.
pub(crate) const READ_BUFFER: usize = 1 << 20;

/// The text of one complete line (newline included in `raw`, whose buffer becomes the
/// text: no copy), or `None` for a blank line. Invalid UTF-8 is replaced (U+FFFD) with a
/// warning naming `origin` and `offset`, so one bad line does not stop the pipeline; it
/// then usually fails to parse and goes through the error policy.
pub(crate) fn line_text(mut raw: Vec<u8>, origin: &str, offset: u64) -> Option<String> {
    while let Some(b'\n' | b'\r') = raw.last() {
        raw.pop();
    }
    if raw.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(match String::from_utf8(raw) {
        Ok(s) => s,
        Err(e) => {
            warn!(origin, offset, error = %e.utf8_error(), "line is not valid UTF-8; invalid bytes replaced");
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    })
}

#[cfg(feature = "file")]
/// Appends the bytes up to and including the next newline (or to the end of the input)
/// to `line`, returning how many were read: `BufRead::read_until` with a vectorised
/// newline search, which matters when a source does little else.
pub(crate) fn read_line(
    reader: &mut impl std::io::BufRead,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut read = 0;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(read);
        }
        let (taken, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..taken]);
        reader.consume(taken);
        read += taken;
        if done {
            return Ok(read);
        }
    }
}

/// Appends each document as one line of relaxed Extended JSON.
pub(crate) fn write_lines(out: &mut String, batch: &[Document]) {
    for doc in batch {
        doc.write_json(out, ExtJsonMode::Relaxed);
        out.push('\n');
    }
}

#[cfg(all(test, feature = "file"))]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn read_line_splits_at_newlines_across_buffer_refills() {
        let input = b"first line\nsecond, longer than the buffer\n\nlast without newline";
        // A 4-byte buffer makes lines span several refills.
        let mut reader = BufReader::with_capacity(4, &input[..]);
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = read_line(&mut reader, &mut line).expect("reading a slice");
            assert_eq!(n, line.len());
            if n == 0 {
                break;
            }
            lines.push(String::from_utf8(line).expect("ASCII"));
        }
        assert_eq!(
            lines,
            [
                "first line\n",
                "second, longer than the buffer\n",
                "\n",
                "last without newline"
            ]
        );
    }

    #[test]
    fn line_text_strips_the_line_end_and_skips_blank_lines() {
        assert_eq!(line_text(b"{}\r\n".to_vec(), "t", 0).as_deref(), Some("{}"));
        assert_eq!(line_text(b"  \t\n".to_vec(), "t", 0), None);
        assert_eq!(
            line_text(b"{\"a\":\"\xff\"}\n".to_vec(), "t", 0).as_deref(),
            Some("{\"a\":\"\u{fffd}\"}")
        );
    }
}
