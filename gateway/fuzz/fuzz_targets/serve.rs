//! libFuzzer target: one RPC record through the whole serving path of a real gateway on an
//! export in a temporary directory, with markers swapped for real file handles
//! (`gateway_fuzz::serve`). Needs root, like the server.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|record: &[u8]| {
    gateway_fuzz::serve::check_served(record);
});
