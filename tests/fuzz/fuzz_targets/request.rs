//! A client's request head, as the proxy listener parses it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| data_plane::proxy::downstream::fuzz::request(data));
