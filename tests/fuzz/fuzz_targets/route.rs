//! Route patterns from a snapshot and a client's method, host and path, through the router.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| data_plane::runtime::router::fuzz::route(data));
