//! Generates the tonic/prost code for the config stream. `protoc` comes from the
//! `protoc-bin-vendored` crate so a fresh machine needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment yet.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Resource bodies are shared between every stream a version goes to: `Bytes` clones
        // are reference counts, not copies.
        .bytes(".gateway.config.v1.Resource.body")
        .compile_protos(&["proto/gateway/config/v1/config.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
