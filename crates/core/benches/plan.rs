//! Planner benchmark: synthetic ML populations of 1k, 10k and 100k images (about 10 layers
//! each, a few shared bases), under disk pressure. Reports the median time of `plan()` and the
//! peak heap it allocates, measured by a counting allocator.
//!
//! Run: `cargo bench -p dockgc-core --bench plan` (bench/plan wraps it and records the machine).

#![allow(clippy::unwrap_used)] // A benchmark fails loudly by design.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dockgc_core::plan::Goal;
use dockgc_core::synthetic::{generate, Population};
use dockgc_core::{plan, History, Policy, Request};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const NOW: i64 = 1_800_000_000;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000, 100_000]
    } else {
        sizes
    };
    let mut policy = Policy::default();
    policy.keep.min_age = Duration::ZERO;
    policy.keep.recent = Duration::from_secs(3_600);
    let request = Request {
        goal: Goal::UsedPercent(50.0),
        ..Request::default()
    };
    println!("| images | layers | steps | plan time (median of 5) | planner peak heap |");
    println!("|---:|---:|---:|---:|---:|");
    for n in sizes {
        let snapshot = generate(&Population::realistic(n, 7), NOW);
        let history = History::backfill(&snapshot);
        let mut times = Vec::new();
        let mut peak = 0;
        let mut steps = 0;
        for _ in 0..5 {
            let base = CURRENT.load(Ordering::Relaxed);
            PEAK.store(base, Ordering::Relaxed);
            let start = Instant::now();
            let p = plan(&snapshot, &history, &policy, &request);
            times.push(start.elapsed());
            peak = peak.max(PEAK.load(Ordering::Relaxed) - base);
            steps = p.steps.len();
            drop(p);
        }
        times.sort();
        println!(
            "| {n} | {} | {steps} | {:.1} ms | {:.1} MB |",
            snapshot.layers.len(),
            times[2].as_secs_f64() * 1e3,
            peak as f64 / 1e6
        );
    }
}
