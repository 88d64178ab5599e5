//! Runs the `tools/call` hot path N times (first argument, default 1000), for instruction
//! counts with `valgrind --tool=callgrind`: counts repeat from run to run where timings on a
//! shared machine do not. `perf/callgrind.sh` runs it at two N and reports the difference per
//! call, which cancels start-up costs.

use sluice_benches::*;
use sluice_filters::auth::KeyStore;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let keys = KeyStore::from_config(&config());
    let catalog = catalog(500);
    let headers = headers();
    let mut total = 0;
    for _ in 0..n {
        total += tools_call_hot_path(&keys, &catalog, &headers, std::hint::black_box(CALL));
    }
    println!("{total}");
}
