//! A node's response head and chunked body, as the h1 client parses them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| data_plane::transport::h1::fuzz::response(data));
