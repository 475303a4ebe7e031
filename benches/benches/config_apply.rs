//! What one config change costs a data plane serving 10,000 routes (target P8): applying a
//! one-route delta to its model and compiling the runtime it will publish, the work done on the
//! data plane's blocking thread between receiving the delta and swapping it in.
//! `one_route_delta` compiles the whole snapshot against the previous runtime (what any delta
//! that changes more than routes costs); `one_route_delta_patched` is what a delta of routes
//! costs (`Runtime::compile_changes`: the previous router patched); `router_patch` the router's
//! share of it.
//!
//! `cargo bench -p gateway-benches --bench config_apply -- --warm-up-time 1 --measurement-time 5`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use data_plane::runtime::Runtime;
use gateway_benches::route_table;
use gateway_proto::{Kind, ResourceKey, Snapshot, pb};
use serde_json::json;

fn bench_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("config_apply");
    group.sample_size(20);
    for n in [1_000, 10_000] {
        let (response, _) = route_table(n);
        let mut snapshot = Snapshot::from_wire(&response).expect("the generated config is valid");
        let base = Runtime::compile(&snapshot, None).expect("the generated config compiles");

        group.bench_function(format!("full_compile/{n}"), |b| {
            b.iter(|| black_box(Runtime::compile(black_box(&snapshot), Some(&base))))
        });

        // One route changes its path: the delta carries that route only.
        let base_version = snapshot.version;
        let delta = pb::DiscoveryResponse {
            version_info: (base_version + 1).to_string(),
            nonce: "d".to_owned(),
            type_url: pb::SNAPSHOT_TYPE_URL.to_owned(),
            control_plane_id: "bench".to_owned(),
            base_version: base_version.to_string(),
            resources: vec![pb::Resource {
                kind: "routes".to_owned(),
                id: "r7".to_owned(),
                revision: base_version + 1,
                body: serde_json::to_vec(&json!({"paths": ["/moved"], "upstream_id": "u"}))
                    .expect("JSON serialises")
                    .into(),
            }],
            ..Default::default()
        };
        // The whole snapshot compared with the previous runtime: what a delta that changes
        // more than routes costs.
        group.bench_function(format!("one_route_delta/{n}"), |b| {
            b.iter(|| {
                let undo = snapshot.apply_delta(&delta).expect("the delta applies");
                let runtime = Runtime::compile(&snapshot, Some(&base)).expect("it compiles");
                snapshot.undo(undo);
                black_box(runtime)
            })
        });
        // What the data plane does with a delta of routes: only the changed route compiled,
        // the previous router patched. The runtime is dropped inside the timing, as the reaper
        // thread frees the replaced one.
        let changed = [ResourceKey::new(Kind::Routes, "r7")];
        group.bench_function(format!("one_route_delta_patched/{n}"), |b| {
            b.iter(|| {
                let undo = snapshot.apply_delta(&delta).expect("the delta applies");
                let runtime =
                    Runtime::compile_changes(&snapshot, &base, &changed).expect("it compiles");
                snapshot.undo(undo);
                drop(black_box(runtime));
            })
        });
        // The router's share alone: one route's path changed in a patched copy.
        let moved = Runtime::compile_changes(
            &{
                let mut next = snapshot.clone();
                let _ = next.apply_delta(&delta).expect("the delta applies");
                next
            },
            &base,
            &changed,
        )
        .expect("it compiles");
        let route = Arc::clone(moved.router.route("r7").expect("r7 is routed"));
        group.bench_function(format!("router_patch/{n}"), |b| {
            b.iter(|| {
                let mut router = base.router.clone();
                router.insert(Arc::clone(&route)).expect("it inserts");
                drop(black_box(router));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
