//! The hot path without sockets: `tools/call` (parse, authenticate, check, pick the upstream,
//! rewrite, write the answer) and `tools/list` for a key (filter and serialize, and cached).
//! Run with `cargo bench -p sluice-benches`.

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use sluice_benches::*;
use sluice_filters::auth::KeyStore;
use sluice_filters::mcp::Request;
use std::hint::black_box;

fn tools_call(c: &mut Criterion) {
    let keys = KeyStore::from_config(&config());
    let headers = headers();
    for n in [10, 500] {
        let catalog = catalog(n);
        c.bench_function(&format!("tools_call_hot_path/{n}_tools"), |b| {
            b.iter(|| tools_call_hot_path(&keys, &catalog, &headers, black_box(CALL)))
        });
    }
}

fn tools_list(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let endpoint = endpoint(catalog(500));
    let headers = session(&runtime, &endpoint);
    // Cached: the page for (key, policy, catalog) is built once, then each request is a lookup
    // and a copy, plus the transport, key and session checks of the full pipeline.
    c.bench_function("tools_list_500_tools/cached_full_pipeline", |b| {
        b.iter(|| {
            runtime.block_on(endpoint.handle(Request {
                method: &Method::POST,
                headers: &headers,
                body: black_box(LIST),
            }))
        })
    });
    // Uncached: narrowing bypasses the cache, so the filter and serialization run every time.
    let mut narrowed = headers.clone();
    narrowed.insert("x-sluice-tools", http::HeaderValue::from_static("*"));
    c.bench_function("tools_list_500_tools/uncached_filter_and_serialize", |b| {
        b.iter(|| {
            runtime.block_on(endpoint.handle(Request {
                method: &Method::POST,
                headers: &narrowed,
                body: black_box(LIST),
            }))
        })
    });
}

criterion_group!(benches, tools_call, tools_list);
criterion_main!(benches);
