//! libFuzzer target: a TCP byte stream (first byte: how it is cut into reads) through record
//! marking and then every record through the same checks as the `record` target, under the
//! record decoder's memory bounds (`gateway_fuzz::check_stream`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gateway_fuzz::check_stream(data);
});
