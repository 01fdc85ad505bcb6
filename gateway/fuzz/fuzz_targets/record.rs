//! libFuzzer target: one complete RPC record (as the record decoder hands it to the serving
//! loop) through call-header and credential decoding, dispatch and the argument decoding of
//! every portmap, MOUNT and NFSv3 procedure, under the allocation bounds of
//! `gateway_fuzz::check_record`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|record: &[u8]| {
    gateway_fuzz::check_record(record);
});
