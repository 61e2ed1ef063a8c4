//! What the benchmarks print the same way: latency percentiles and the
//! fairness table. (Not a bench target: cargo finds only `benches/*.rs`.)

use std::time::Duration;

/// The `p` quantile (0.0–1.0) of `sorted`, which must not be empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The header of a fairness table.
#[allow(dead_code)] // not every bench prints a fairness table this way
pub fn print_fairness_header() {
    println!("{:<70} {:>10} {:>10} {:>8} {:>10}", "contender", "fewest", "most", "min/max", "total");
}

/// One fairness row: acquisitions per worker, fewest and most, their ratio
/// (the fairness goal is at least 0.9) and the total.
#[allow(dead_code)]
pub fn print_fairness_row(name: &str, counts: &[u64]) {
    let (fewest, most) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
    println!(
        "{:<70} {:>10} {:>10} {:>8.2} {:>10}",
        name,
        fewest,
        most,
        fewest as f64 / most.max(1) as f64,
        counts.iter().sum::<u64>()
    );
}
