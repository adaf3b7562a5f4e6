//! Property tests of the planner on synthetic populations.

#![allow(clippy::unwrap_used)] // Tests and examples fail loudly by design.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dockgc_core::model::{ContainerState, Snapshot};
use dockgc_core::plan::{Goal, Kind, Reason, TargetStatus};
use dockgc_core::policy::{LabelPattern, RefPattern};
use dockgc_core::synthetic::{generate, Population};
use dockgc_core::{plan, History, Policy, Request, Selection};
use proptest::prelude::*;

const NOW: i64 = 1_800_000_000;

fn arb_case() -> impl Strategy<Value = (Snapshot, Policy, Request)> {
    (
        10usize..120,
        any::<u64>(),
        0u64..5 * 86_400,
        0u64..5 * 86_400,
        0u32..3,
        prop::bool::ANY,
        prop_oneof![
            Just(Goal::Watermarks),
            (1u64..200_000_000_000).prop_map(Goal::FreeBytes),
            (5.0f64..95.0).prop_map(Goal::UsedPercent),
        ],
        (20.0f64..95.0),
    )
        .prop_map(
            |(images, seed, min_age, recent, per_repo, keep_base, goal, high)| {
                let mut snapshot = generate(&Population::realistic(images, seed), NOW);
                // Label a few images as protected.
                for (i, image) in snapshot.images.iter_mut().enumerate() {
                    if i % 13 == 5 {
                        image.labels.insert("keep".into(), "yes".into());
                    }
                }
                let mut policy = Policy::default();
                policy.keep.min_age = Duration::from_secs(min_age);
                policy.keep.recent = Duration::from_secs(recent);
                policy.keep.per_repository = per_repo;
                policy.keep.labels = vec![LabelPattern::new("keep=yes").unwrap()];
                if keep_base {
                    policy.keep.images = vec![RefPattern::new("miniconda:py30").unwrap()];
                }
                policy.disk.high = dockgc_core::policy::Watermark::UsedPercent(high);
                policy.disk.low = dockgc_core::policy::Watermark::UsedPercent(high / 2.0);
                let request = Request {
                    goal,
                    ..Request::default()
                };
                (snapshot, policy, request)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn no_plan_deletes_what_is_in_use_protected_or_young((snapshot, policy, request) in arb_case()) {
        let history = History::backfill(&snapshot);
        let plan = plan(&snapshot, &history, &policy, &request);
        let running: HashSet<&str> = snapshot
            .containers
            .iter()
            .filter(|c| !c.state.is_stopped())
            .map(|c| c.image_id.as_str())
            .collect();
        for step in plan.steps.iter().filter(|s| s.kind == Kind::Image) {
            let image = snapshot.images.iter().find(|i| i.id == step.id).unwrap();
            prop_assert!(!running.contains(image.id.as_str()), "in use: {}", step.id);
            prop_assert!(!policy.keep.images.iter().any(|p| p.matches_image(image)), "kept: {}", step.id);
            prop_assert!(!policy.keep.labels.iter().any(|p| p.matches(&image.labels)), "labelled: {}", step.id);
            let first_seen = history.use_of(&image.id, NOW).first_seen;
            prop_assert!(NOW - first_seen >= policy.keep.min_age.as_secs() as i64, "too young: {}", step.id);
        }
    }

    #[test]
    fn same_inputs_give_the_same_plan((snapshot, policy, request) in arb_case()) {
        let history = History::backfill(&snapshot);
        let a = plan(&snapshot, &history, &policy, &request);
        let b = plan(&snapshot.clone(), &history.clone(), &policy.clone(), &request.clone());
        prop_assert_eq!(a, b);
    }

    #[test]
    fn pressure_stops_at_the_target((snapshot, policy, request) in arb_case()) {
        let history = History::backfill(&snapshot);
        let plan = plan(&snapshot, &history, &policy, &request);
        let pressure: Vec<_> = plan.steps.iter().filter(|s| s.reason == Reason::DiskPressure).collect();
        if let (Some(target), Some(last)) = (&plan.target, pressure.last()) {
            // Without its last eviction the plan would not have reached the target.
            prop_assert!(plan.reclaim_disk_bytes - last.disk_bytes < target.need_disk_bytes);
        }
        match plan.target_status {
            TargetStatus::Reached => {
                let t = plan.target.as_ref().unwrap();
                prop_assert!(plan.reclaim_disk_bytes >= t.need_disk_bytes);
            }
            TargetStatus::Unreachable { short_disk_bytes } => {
                let t = plan.target.as_ref().unwrap();
                prop_assert_eq!(plan.reclaim_disk_bytes + short_disk_bytes, t.need_disk_bytes);
            }
            TargetStatus::NoTarget => prop_assert!(pressure.is_empty()),
        }
    }

    #[test]
    fn soft_keeps_yield_only_after_every_other_eviction((snapshot, policy, request) in arb_case()) {
        let history = History::backfill(&snapshot);
        let plan = plan(&snapshot, &history, &policy, &request);
        let yielded = |s: &&dockgc_core::plan::Step| s.rule.contains("yielded");
        if let Some(first) = plan.steps.iter().position(|s| yielded(&s)) {
            prop_assert!(plan.target.is_some(), "a keep yielded without a target");
            prop_assert!(plan.steps[first..].iter().all(|s| yielded(&s) || s.reason == Reason::DiskPressure));
            // Without the yielded images the target was out of reach.
            let others: u64 = plan.steps[..first].iter().map(|s| s.disk_bytes).sum();
            prop_assert!(others < plan.target.as_ref().unwrap().need_disk_bytes);
        }
    }

    #[test]
    fn every_eviction_frees_something_and_bytes_add_up((snapshot, policy, request) in arb_case()) {
        let history = History::backfill(&snapshot);
        let plan = plan(&snapshot, &history, &policy, &request);
        let sizes: HashMap<&str, u64> = snapshot.layers.iter().map(|l| (l.chain_id.as_str(), l.bytes)).collect();
        let deleted: HashSet<&str> = plan.steps.iter().filter(|s| s.kind == Kind::Image).map(|s| s.id.as_str()).collect();
        // Layers referenced only by deleted images are exactly the freed ones.
        let mut kept_layers = HashSet::new();
        let mut all_layers = HashSet::new();
        for image in &snapshot.images {
            for l in &image.layers {
                all_layers.insert(l.as_str());
                if !deleted.contains(image.id.as_str()) {
                    kept_layers.insert(l.as_str());
                }
            }
        }
        let expected: u64 = all_layers.difference(&kept_layers).map(|l| sizes[l]).sum();
        let planned: u64 = plan.steps.iter().filter(|s| s.kind == Kind::Image).map(|s| s.bytes).sum();
        prop_assert_eq!(planned, expected);
        for step in plan.steps.iter().filter(|s| s.reason == Reason::DiskPressure) {
            prop_assert!(step.bytes > 0, "eviction freeing nothing: {}", step.name);
        }
    }
}

#[test]
fn a_base_is_never_untagged_while_its_children_remain() {
    let mut snapshot = generate(&Population::realistic(60, 7), NOW);
    for c in &mut snapshot.containers {
        c.state = ContainerState::Exited;
    }
    snapshot.containers.clear();
    let mut policy = Policy::default();
    policy.keep.min_age = Duration::ZERO;
    policy.keep.recent = Duration::ZERO;
    policy.keep.per_repository = 0;
    let request = Request {
        goal: Goal::FreeBytes(u64::MAX / 2),
        selection: Selection::Policy,
        disk_correction: 1.0,
    };
    let history = History::backfill(&snapshot);
    let plan = plan(&snapshot, &history, &policy, &request);
    // Everything unused goes, and each base goes only after every child built on it.
    let order: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| s.kind == Kind::Image)
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(order.len(), snapshot.images.len());
    for (bi, base) in snapshot
        .images
        .iter()
        .enumerate()
        .filter(|(_, i)| i.tags.iter().any(|t| t.starts_with("miniconda")))
    {
        let base_pos = order.iter().position(|id| *id == base.id).unwrap();
        for child in snapshot
            .images
            .iter()
            .filter(|c| c.layers.len() > base.layers.len() && c.layers.starts_with(&base.layers))
        {
            let child_pos = order.iter().position(|id| *id == child.id).unwrap();
            assert!(child_pos < base_pos, "base {bi} before child {}", child.id);
        }
    }
}
