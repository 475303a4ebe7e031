//! The local OTLP collector of the P13 measurement (`PROFILE=p13 benches/load/peers.sh`): it
//! accepts OTLP/gRPC trace exports (`TraceService/Export`), counts the spans in each (a walk
//! over the protobuf's framing, nothing decoded into values), and answers success. What it
//! costs is the least a collector can cost; the figures are the data plane's.
//!
//! `GET /counts` on the same port (HTTP/1.1) answers `exports=N spans=N bytes=N`.
//!
//! ```sh
//! cargo build --release -p gateway-benches --bin otlp-sink
//! taskset -c 1 target/release/otlp-sink 127.0.0.1:0    # prints otlp_url=
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf as _, Bytes};
use http::HeaderMap;
use http::header::HeaderValue;
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const USAGE: &str = "usage: otlp-sink LISTEN_ADDR";

#[derive(Default)]
struct Counts {
    exports: AtomicU64,
    spans: AtomicU64,
    bytes: AtomicU64,
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), None) = (args.next(), args.next()) else {
        return Err(USAGE.into());
    };
    let listen: SocketAddr = listen.parse().map_err(|e| format!("{listen}: {e}"))?;
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
        println!("otlp_url=http://{bound}");
        let counts = Arc::new(Counts::default());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let counts = Arc::clone(&counts);
                    async move { Ok::<_, Infallible>(answer(request, &counts).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// A response body of whole frames: data, then trailers for gRPC.
type Frames =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn frames(frames: Vec<Frame<Bytes>>) -> Frames {
    StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok).collect::<Vec<_>>(),
    ))
}

async fn answer(request: Request<Incoming>, counts: &Counts) -> Response<Frames> {
    if request.uri().path() == "/counts" {
        let text = format!(
            "exports={} spans={} bytes={}\n",
            counts.exports.load(Ordering::Relaxed),
            counts.spans.load(Ordering::Relaxed),
            counts.bytes.load(Ordering::Relaxed),
        );
        return Response::new(frames(vec![Frame::data(Bytes::from(text))]));
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    counts.exports.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    // gRPC framing: a compressed flag and a 4-byte length before each message.
    let mut messages = body;
    while messages.remaining() >= 5 {
        let _compressed = messages.get_u8();
        let length = messages.get_u32() as usize;
        let message = messages.split_to(length.min(messages.len()));
        counts
            .spans
            .fetch_add(spans_in(&message), Ordering::Relaxed);
    }
    // An empty `ExportTraceServiceResponse`, then `grpc-status: 0` in the trailers.
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = Response::new(frames(vec![
        Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])),
        Frame::trailers(trailers),
    ]));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// The spans in an `ExportTraceServiceRequest`: field 2 of each `ScopeSpans` (field 2) of each
/// `ResourceSpans` (field 1).
fn spans_in(request: &[u8]) -> u64 {
    fields(request, 1)
        .flat_map(|resource| fields(resource, 2))
        .map(|scope| fields(scope, 2).count() as u64)
        .sum()
}

/// The length-delimited fields numbered `wanted` of a protobuf message; skips the others.
fn fields(mut message: &[u8], wanted: u64) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        while !message.is_empty() {
            let key = varint(&mut message)?;
            let value: &[u8] = match key & 7 {
                0 => {
                    varint(&mut message)?;
                    &[]
                }
                1 => take(&mut message, 8)?,
                2 => {
                    let length = usize::try_from(varint(&mut message)?).ok()?;
                    take(&mut message, length)?
                }
                5 => take(&mut message, 4)?,
                _ => return None,
            };
            if key >> 3 == wanted && key & 7 == 2 {
                return Some(value);
            }
        }
        None
    })
}

fn take<'a>(message: &mut &'a [u8], length: usize) -> Option<&'a [u8]> {
    let (value, rest) = message.split_at_checked(length)?;
    *message = rest;
    Some(value)
}

fn varint(message: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = message.split_first()?;
        *message = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}
