//! The real `/mcp` pipeline without sockets ([`McpEndpoint::handle`] with a session, the rate
//! limiter, audit log and metrics on, and an in-process upstream): `tools/call` over a catalog
//! of 10 and 500 tools, and `tools/list` for a key (filter and serialize, and cached).
//! Run with `cargo bench -p sluice-benches --bench hot_path`.
//!
//! [`McpEndpoint::handle`]: sluice_filters::mcp::McpEndpoint::handle

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_benches::*;
use std::hint::black_box;

fn tools_call(c: &mut Criterion) {
    for n in [10, 500] {
        let bench = Bench::new(n);
        bench.check();
        c.bench_function(&format!("tools_call_full_pipeline/{n}_tools"), |b| {
            b.iter(|| bench.post(&bench.headers, black_box(CALL)))
        });
    }
}

fn tools_list(c: &mut Criterion) {
    let bench = Bench::new(500);
    bench.check();
    // Cached: the page for (key, policy, catalog) is built once, then each request is a lookup
    // and a copy, plus the transport, key, rate limit and session checks of the full pipeline.
    c.bench_function("tools_list_500_tools/cached_full_pipeline", |b| {
        b.iter(|| bench.post(&bench.headers, black_box(LIST)))
    });
    // Uncached: narrowing bypasses the cache, so the filter and serialization run every time.
    let mut narrowed = bench.headers.clone();
    narrowed.insert("x-sluice-tools", http::HeaderValue::from_static("*"));
    c.bench_function("tools_list_500_tools/uncached_filter_and_serialize", |b| {
        b.iter(|| bench.post(&narrowed, black_box(LIST)))
    });
}

criterion_group!(benches, tools_call, tools_list);
criterion_main!(benches);
