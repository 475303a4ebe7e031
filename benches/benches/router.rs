//! Router match time at 10, 1,000 and 10,000 routes (target P3: median < 1 µs at 10k).
//!
//! The routes mix the path shapes (exact, named segments, prefix, several named segments),
//! exact and wildcard hosts, one or two methods, and a shared path that many tenants' hosts
//! route differently. Each iteration matches the next of 256 requests drawn from the same
//! table (a few of them misses), so the figure is a per-request median over varied paths and
//! not one hot cache line. The router is built the way a data plane builds it: a snapshot is
//! validated and compiled into a runtime.
//!
//! `cargo bench -p gateway-benches --bench router -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use data_plane::runtime::Runtime;
use data_plane::runtime::router::{RequestView, RouteMatch};
use gateway_benches::{Request, route_table};
use gateway_proto::Snapshot;
use http::{HeaderMap, Method};

fn router_of(n: usize) -> (Runtime, Vec<Request>) {
    let (response, requests) = route_table(n);
    let snapshot = Snapshot::from_wire(&response).expect("the generated config is valid");
    let runtime = Runtime::compile(&snapshot, None).expect("the generated config compiles");

    // 256 requests spread over the table, one in eight a miss.
    let step = n.div_ceil(256).max(1);
    let mut sample: Vec<Request> = requests.into_iter().step_by(step).collect();
    let len = sample.len();
    for (k, request) in sample.iter_mut().enumerate() {
        if k % 8 == 7 {
            request.path.push_str("/missing");
        }
    }
    while sample.len() < 256 {
        let k = sample.len() % len;
        let again = Request {
            host: sample[k].host.clone(),
            path: sample[k].path.clone(),
        };
        sample.push(again);
    }
    (runtime, sample)
}

fn bench_router(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut group = c.benchmark_group("router");
    for n in [10, 1_000, 10_000] {
        let (runtime, requests) = router_of(n);
        // The table must route as generated: a broken table would make a fast, useless bench.
        let found = requests
            .iter()
            .filter(|r| {
                let view = RequestView {
                    method: &Method::GET,
                    host: &r.host,
                    path: &r.path,
                    headers: &headers,
                    query: None,
                    client,
                };
                matches!(runtime.router.find(&view), RouteMatch::Found { .. })
            })
            .count();
        assert!(
            found >= requests.len() * 3 / 4,
            "{found} of {} found",
            requests.len()
        );

        let mut next = 0usize;
        group.bench_function(format!("match/{n}"), |b| {
            b.iter(|| {
                let request = &requests[next % requests.len()];
                next = next.wrapping_add(1);
                let view = RequestView {
                    method: &Method::GET,
                    host: &request.host,
                    path: &request.path,
                    headers: &headers,
                    query: None,
                    client,
                };
                black_box(runtime.router.find(black_box(&view)))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_router);
criterion_main!(benches);
