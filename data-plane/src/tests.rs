//! The data plane as a whole: start and stop.

use std::time::{Duration, Instant};

use clap::Parser as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::{Config, DataPlane};

#[tokio::test]
async fn a_connection_that_never_finishes_does_not_hold_shutdown_past_the_drain_timeout() {
    let config = Config::try_parse_from([
        "data-plane",
        "--listen",
        "127.0.0.1:0",
        "--status-listen",
        "127.0.0.1:0",
        // Nothing listens there: the proxy serves no routes, which is enough here.
        "--control-plane",
        "http://127.0.0.1:9",
        "--drain-timeout",
        "1",
    ])
    .unwrap();
    let data_plane = DataPlane::bind(config).await.unwrap();
    let proxy = data_plane.proxy_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(data_plane.run(async move {
        let _ = stopped.await;
    }));
    // Half a request head: not idle, so the shutdown waits for it (the header timeout is 30 s).
    let mut client = TcpStream::connect(proxy).await.unwrap();
    client.write_all(b"GET /x HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let asked = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("run returned")
        .unwrap();
    let took = asked.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&took),
        "stopped after {took:?}"
    );
}
