//! Scenario tests of individual planner rules on small hand-made snapshots.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::time::Duration;

use dockgc_core::model::{
    Container, ContainerState, Filesystem, Image, Layer, Network, NetworkKind, Snapshot, Volume,
    VolumeKind,
};
use dockgc_core::plan::{Goal, Kind, SkipReason};
use dockgc_core::policy::{UnderPressure, Watermark};
use dockgc_core::{plan, History, Plan, Policy, Request};

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn image(id: &str, tags: &[&str], layers: &[&str], tagged_days_ago: i64) -> Image {
    Image {
        id: id.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        created: NOW - 100 * DAY,
        arrived: NOW - 30 * DAY,
        last_tagged: Some(NOW - tagged_days_ago * DAY),
        layers: layers.iter().map(|l| l.to_string()).collect(),
        metadata_disk_bytes: Some(0),
        ..Image::default()
    }
}

fn layer(id: &str, bytes: u64) -> Layer {
    Layer {
        chain_id: id.into(),
        bytes,
        disk_bytes: Some(bytes),
        inodes: Some(1),
    }
}

fn container(id: &str, image: &str, state: ContainerState, days_ago: i64) -> Container {
    Container {
        id: id.into(),
        names: vec![id.into()],
        image_id: image.into(),
        image: image.into(),
        state,
        created: NOW - days_ago * DAY,
        started: Some(NOW - days_ago * DAY),
        finished: None,
        labels: Default::default(),
        size_rw: Some(10),
        disk_bytes: None,
        volumes: Vec::new(),
        networks: Vec::new(),
    }
}

fn world() -> Snapshot {
    Snapshot {
        taken_at: NOW,
        filesystem: Some(Filesystem {
            total_bytes: 1_000,
            used_bytes: 900,
            available_bytes: 100,
            total_inodes: 100,
            free_inodes: 90,
        }),
        layers: vec![
            layer("base", 300),
            layer("a", 100),
            layer("b", 100),
            layer("c", 100),
            layer("d", 100),
        ],
        images: vec![
            image("i-base", &["conda:py3"], &["base"], 20),
            image("i-a1", &["env:1"], &["base", "a"], 10),
            image("i-a2", &["env:2"], &["base", "b"], 5),
            image("i-c", &["tool:1"], &["base", "c"], 2),
            image("i-d", &[], &["d"], 3),
        ],
        ..Snapshot::default()
    }
}

fn why(p: &Plan, id: &str) -> SkipReason {
    p.skipped
        .iter()
        .find(|s| s.id == id)
        .map(|s| s.reason.clone())
        .unwrap_or_else(|| panic!("{id} not skipped: {p:#?}"))
}

fn deleted(p: &Plan) -> Vec<&str> {
    p.steps.iter().map(|s| s.id.as_str()).collect()
}

fn policy() -> Policy {
    let mut policy = Policy::default();
    policy.keep.min_age = Duration::ZERO;
    policy.keep.recent = Duration::ZERO;
    policy.keep.per_repository = 0;
    policy
}

fn run(s: &Snapshot, policy: &Policy) -> Plan {
    plan(s, &History::backfill(s), policy, &Request::default())
}

#[test]
fn pressure_evicts_lru_first_and_the_base_last() {
    let s = world();
    let mut policy = policy();
    policy.disk.low = dockgc_core::policy::Watermark::UsedPercent(40.0);
    let p = run(&s, &policy);
    // 900 used, low 40% of 1000: free 500. Dangling i-d first (routine), then env:1, env:2,
    // tool:1 by last use (400 so far); the base frees its 300 only once all three are gone,
    // though it was tagged longest ago.
    assert_eq!(deleted(&p), vec!["i-d", "i-a1", "i-a2", "i-c", "i-base"]);
    assert_eq!(p.reclaim_bytes, 700);
    policy.disk.low = dockgc_core::policy::Watermark::UsedPercent(55.0);
    let p = run(&s, &policy);
    assert_eq!(deleted(&p), vec!["i-d", "i-a1", "i-a2", "i-c"]);
    assert!(
        matches!(why(&p, "i-base"), SkipReason::TargetReached),
        "{p:#?}"
    );
}

#[test]
fn per_repository_keeps_the_newest_tags() {
    let s = world();
    let mut policy = policy();
    policy.keep.per_repository = 1;
    policy.keep.under_pressure = UnderPressure::Hold;
    policy.disk.low = dockgc_core::policy::Watermark::UsedPercent(1.0);
    let p = run(&s, &policy);
    assert!(matches!(
        why(&p, "i-a2"),
        SkipReason::KeptPerRepository { .. }
    ));
    assert!(deleted(&p).contains(&"i-a1"));
}

#[test]
fn recent_use_includes_images_built_on_it() {
    let mut s = world();
    s.containers
        .push(container("job", "i-c", ContainerState::Exited, 1));
    s.containers[0].finished = Some(NOW - 3_600);
    let mut policy = policy();
    policy.keep.recent = Duration::from_secs(2 * 86_400);
    policy.containers.stopped_after = Duration::from_secs(600);
    policy.disk.low = dockgc_core::policy::Watermark::UsedPercent(1.0);
    let p = run(&s, &policy);
    // tool:1 was used an hour ago (by a container now removed): it and its base are recent.
    assert!(
        matches!(why(&p, "i-c"), SkipReason::RecentlyUsed { .. }),
        "{p:#?}"
    );
    assert!(
        matches!(why(&p, "i-base"), SkipReason::RecentlyUsed { .. }),
        "{p:#?}"
    );
    assert!(deleted(&p).contains(&"job"));
}

#[test]
fn without_pressure_tagged_images_stay() {
    let mut s = world();
    s.filesystem.as_mut().unwrap().used_bytes = 500;
    s.filesystem.as_mut().unwrap().available_bytes = 500;
    let p = run(&s, &policy());
    assert_eq!(deleted(&p), vec!["i-d"]);
    assert!(matches!(why(&p, "i-a1"), SkipReason::NoPressure));
}

#[test]
fn an_explicit_goal_without_pressure() {
    let mut s = world();
    s.filesystem.as_mut().unwrap().used_bytes = 500;
    let req = Request {
        goal: Goal::FreeBytes(150),
        ..Request::default()
    };
    let p = plan(&s, &History::backfill(&s), &policy(), &req);
    assert_eq!(deleted(&p), vec!["i-d", "i-a1"]);
}

#[test]
fn volumes_networks_and_containers() {
    let mut s = world();
    let mut running = container("web", "i-a1", ContainerState::Running, 9);
    running.volumes = vec!["data".into()];
    running.networks = vec!["front".into()];
    s.containers.push(running);
    s.containers
        .push(container("old", "i-a2", ContainerState::Exited, 9));
    s.containers
        .push(container("fresh", "i-a2", ContainerState::Exited, 0));
    let volume = |name: &str, kind| Volume {
        name: name.into(),
        kind,
        driver: "local".into(),
        labels: Default::default(),
        created: Some(NOW - 30 * DAY),
        bytes: Some(5),
        containers: Vec::new(),
    };
    s.volumes = vec![
        volume("data", VolumeKind::Named),
        volume("cache", VolumeKind::Named),
        volume(&"f".repeat(64), VolumeKind::Anonymous),
    ];
    let network = |name: &str, kind| Network {
        id: format!("n-{name}"),
        name: name.into(),
        driver: "bridge".into(),
        kind,
        created: Some(NOW - DAY),
        labels: Default::default(),
    };
    s.networks = vec![
        network("bridge", NetworkKind::Predefined),
        network("front", NetworkKind::Custom),
        network("spare", NetworkKind::Custom),
    ];
    let mut policy = policy();
    policy.containers.stopped_after = Duration::from_secs(3_600);
    policy.volumes.anonymous_after = Duration::ZERO;
    let p = run(&s, &policy);
    let steps = deleted(&p);
    assert!(steps.contains(&"old") && !steps.contains(&"fresh") && !steps.contains(&"web"));
    assert!(steps.contains(&"f".repeat(64).as_str()));
    assert!(matches!(why(&p, "data"), SkipReason::InUse { .. }));
    assert!(matches!(why(&p, "cache"), SkipReason::NamedVolume));
    assert!(
        steps.contains(&"n-spare") && !steps.contains(&"n-front") && !steps.contains(&"n-bridge")
    );
    let kinds: Vec<Kind> = p.steps.iter().map(|s| s.kind).collect();
    let first_image = kinds.iter().position(|k| *k == Kind::Image).unwrap();
    assert!(
        kinds[..first_image].iter().all(|k| *k == Kind::Container),
        "containers go first: {kinds:?}"
    );
    // Named volumes only by explicit opt-in.
    policy.volumes.named = dockgc_core::policy::Removal::Remove;
    policy.volumes.named_after = Duration::from_secs(DAY as u64);
    assert!(deleted(&run(&s, &policy)).contains(&"cache"));
}

#[test]
fn dangling_images_with_descendants_stay() {
    let mut s = world();
    s.images[0].tags.clear();
    let p = run(&s, &policy());
    assert!(
        matches!(why(&p, "i-base"), SkipReason::HasDescendants { count: 3 }),
        "{p:#?}"
    );
}

/// Every tag is the newest of its repository, so `keep.per_repository = 1` keeps them all.
fn per_repository_world(under_pressure: UnderPressure, low: f64) -> Plan {
    let mut policy = policy();
    policy.keep.per_repository = 1;
    policy.keep.under_pressure = under_pressure;
    policy.disk.low = Watermark::UsedPercent(low);
    run(&world(), &policy)
}

#[test]
fn soft_keeps_yield_only_as_far_as_the_target_needs() {
    // 900 used, low 60%: free 300. The dangling image and env:1 (not the newest env tag)
    // free 200; then the kept tags yield, least recently used first, until the target is
    // met; the rest keep their reason.
    let p = per_repository_world(UnderPressure::Yield, 60.0);
    assert_eq!(deleted(&p), vec!["i-d", "i-a1", "i-a2"]);
    assert_eq!(p.steps[1].rule, "images.unused");
    assert!(
        p.steps[2].rule.contains("keep.per_repository yielded"),
        "{p:#?}"
    );
    assert!(matches!(
        why(&p, "i-c"),
        SkipReason::KeptPerRepository { .. }
    ));
    assert!(matches!(
        why(&p, "i-base"),
        SkipReason::KeptPerRepository { .. }
    ));
}

#[test]
fn yielding_keeps_still_untag_a_base_last() {
    let p = per_repository_world(UnderPressure::Yield, 1.0);
    assert_eq!(deleted(&p), vec!["i-d", "i-a1", "i-a2", "i-c", "i-base"]);
}

#[test]
fn held_keeps_do_not_yield() {
    let p = per_repository_world(UnderPressure::Hold, 60.0);
    assert_eq!(deleted(&p), vec!["i-d", "i-a1"]);
    assert!(matches!(
        why(&p, "i-a2"),
        SkipReason::KeptPerRepository { .. }
    ));
}

#[test]
fn soft_keeps_yield_after_unprotected_images() {
    // With keep.recent = 7 days only env:1 (10 days) is not recent.
    let s = world();
    let mut policy = policy();
    policy.keep.recent = Duration::from_secs(7 * DAY as u64);
    policy.disk.low = Watermark::UsedPercent(70.0);
    let p = run(&s, &policy);
    // Free 200: i-d (100), env:1 (10 days, not recent: 100) — the recent ones stay.
    assert_eq!(deleted(&p), vec!["i-d", "i-a1"]);
    assert!(matches!(why(&p, "i-a2"), SkipReason::RecentlyUsed { .. }));
    // Free 300: the least recently used recent image yields next.
    policy.disk.low = Watermark::UsedPercent(60.0);
    let p = run(&s, &policy);
    assert_eq!(deleted(&p), vec!["i-d", "i-a1", "i-a2"]);
    assert!(p.steps[2].rule.contains("keep.recent yielded"), "{p:#?}");
}
