//! Parses arbitrary bytes as an (Extended JSON) pipeline and compiles it. Neither step
//! may panic: bad input must come back as an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stream_core::value::parse_value;
use stream_core::Pipeline;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = parse_value(text) else {
        return;
    };
    let _ = Pipeline::compile(&value);
});
