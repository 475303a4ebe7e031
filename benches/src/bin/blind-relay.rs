//! The least work a proxy on tokio can do per request: no HTTP at all. Each client connection
//! gets its own upstream connection and bytes are copied both ways as they come.
//!
//! It is the floor of the P1 comparison (`PROFILE=floor benches/load/peers.sh`): whatever this
//! relay cannot beat nginx by, on the same cores and the same load, no HTTP proxy can. If it
//! reaches nginx's req/s with its own core partly idle, the load generator and the upstream,
//! not the proxy, set the rate.
//!
//! ```sh
//! cargo build --release -p gateway-benches --bin blind-relay
//! taskset -c 0 target/release/blind-relay 127.0.0.1:0 127.0.0.1:18081   # prints relay_url=
//! ```

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "usage: blind-relay LISTEN_ADDR UPSTREAM_ADDR";

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        return Err(USAGE.into());
    };
    let listen: SocketAddr = listen.parse().map_err(|e| format!("{listen}: {e}"))?;
    let upstream: SocketAddr = upstream.parse().map_err(|e| format!("{upstream}: {e}"))?;
    // One thread, as the data plane runs with `--worker-threads 1` in the same comparison.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("binding {listen}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("reading the bound address: {e}"))?;
        println!("relay_url=http://{bound}");
        loop {
            match listener.accept().await {
                Ok((client, _)) => {
                    tokio::spawn(relay(client, upstream));
                }
                Err(error) => eprintln!("blind-relay: accept: {error}"),
            }
        }
    })
}

/// Pipes `client` to a new connection to `upstream` until either side closes.
async fn relay(client: TcpStream, upstream: SocketAddr) {
    let upstream = match TcpStream::connect(upstream).await {
        Ok(stream) => stream,
        Err(error) => {
            eprintln!("blind-relay: connecting to {upstream}: {error}");
            return;
        }
    };
    // As the data plane does: small writes go out at once.
    if client.set_nodelay(true).is_err() || upstream.set_nodelay(true).is_err() {
        return;
    }
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::join!(
        pipe(client_read, upstream_write),
        pipe(upstream_read, client_write)
    );
}

/// Copies from `from` to `to` until end of stream or an error on either.
async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    // The other direction may still be sending; end this one only.
    let _ = to.shutdown().await;
}
