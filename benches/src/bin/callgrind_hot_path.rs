//! Runs N `tools/call`s (first argument, default 1000) through the real `/mcp` pipeline,
//! [`McpEndpoint::handle`] with a session, the rate limiter, audit log and metrics on, and an
//! in-process upstream, for instruction counts with `valgrind --tool=callgrind`: counts repeat
//! from run to run where timings on a shared machine do not. `benches/callgrind.sh` runs it at
//! two N and reports the difference per call, which cancels start-up costs (building the
//! catalog, `initialize`).
//!
//! [`McpEndpoint::handle`]: sluice_filters::mcp::McpEndpoint::handle

use sluice_benches::*;
use sluice_filters::mcp::{Body, Request};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let bench = Bench::new(500);
    bench.check();
    let method = http::Method::POST;
    // One `block_on` for the whole loop: what is counted is the pipeline, not the runtime's
    // entry and exit.
    let total = bench.runtime.block_on(async {
        let mut total = 0;
        for _ in 0..n {
            let response = bench
                .endpoint
                .handle(Request {
                    method: &method,
                    headers: &bench.headers,
                    body: std::hint::black_box(CALL),
                })
                .await;
            if let Body::Full(bytes) = &response.body {
                total += bytes.len();
            }
        }
        total
    });
    println!("{total}");
}
