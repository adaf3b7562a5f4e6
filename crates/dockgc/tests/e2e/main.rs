//! End-to-end tests on a private `dockerd` per test, on a small loop-mounted disk.
//! They need root and Debian's docker.io; `.ci/run` provides both.

mod fixtures;
mod harness;

use std::collections::HashSet;
use std::process::Output;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

use fixtures::{ml_population, Population};
use harness::PrivateEngine;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}\nstderr: {}", stdout(out), stderr(out))
    })
}

fn write_config(engine: &PrivateEngine, text: &str) -> String {
    let path = engine.scratch().join("dockgc.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into()
}

/// A policy with every grace period off, so the population is eligible at once.
const EAGER: &str = r#"
[keep]
min_age = "0"
recent = "0"
per_repository = 0
[containers]
stopped_after = "0"
[images]
dangling_after = "0"
[volumes]
anonymous_after = "0"
"#;

fn image_ids(engine: &PrivateEngine) -> HashSet<String> {
    engine
        .docker(&["images", "-a", "-q", "--no-trunc"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn exists(engine: &PrivateEngine, what: &str, name: &str) -> bool {
    engine.docker_output(&[what, "inspect", name]).status.success()
}

/// Everything that must survive any prune of the population.
fn assert_safe(engine: &PrivateEngine, pop: &Population, protected_refs: &[&str]) {
    for c in &pop.running {
        assert!(exists(engine, "container", c), "running container {c} is gone");
        let image = engine.docker(&["inspect", "-f", "{{.Image}}", c]);
        assert!(exists(engine, "image", &image), "image of running {c} is gone");
    }
    for r in protected_refs {
        assert!(exists(engine, "image", r), "protected image {r} is gone");
    }
    assert!(exists(engine, "image", &pop.labelled), "labelled image is gone");
    for v in [&pop.named_in_use, &pop.named_unused] {
        assert!(exists(engine, "volume", v), "named volume {v} is gone");
    }
}

fn unused_image_ids(engine: &PrivateEngine) -> Vec<String> {
    let used: HashSet<String> = engine
        .docker(&["ps", "-a", "--format", "{{.ID}}"])
        .lines()
        .map(|id| engine.docker(&["inspect", "-f", "{{.Image}}", id]))
        .collect();
    let mut ids: Vec<String> = image_ids(engine).into_iter().filter(|i| !used.contains(i)).collect();
    ids.sort();
    ids
}

fn check_subset(engine: &PrivateEngine, config: &str, subset: &[String]) {
    let mut args = vec!["-c", config, "plan", "--format", "json"];
    for id in subset {
        args.extend(["--image", id.as_str()]);
    }
    let plan = json(&engine.dockgc(&args));
    let steps = plan["steps"].as_array().unwrap();
    let exempt: Vec<&str> = plan["skipped"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps.len(), subset.len(), "every unused image is planned; skipped: {exempt:?}");
    let predicted = plan["reclaim_bytes"].as_u64().unwrap();
    let predicted_disk = plan["reclaim_disk_bytes"].as_u64().unwrap();
    let layers_before = engine.layers_size();
    let used_before = engine.used_bytes();
    args[2] = "prune";
    args.push("-f");
    let out = engine.dockgc(&args);
    assert!(out.status.success(), "prune failed: {}", stderr(&out));
    let freed = layers_before - engine.layers_size();
    let freed_disk = used_before.saturating_sub(engine.used_bytes());
    assert_eq!(freed, predicted, "LayersSize dropped by {freed}, plan predicted {predicted}");
    let error = (freed_disk as f64 - predicted_disk as f64).abs() / freed_disk.max(1) as f64;
    assert!(
        error <= 0.03,
        "disk freed {freed_disk}, predicted {predicted_disk}: {:.2}% off",
        error * 100.0
    );
    for id in subset {
        assert!(!exists(engine, "image", id), "{id} survived");
    }
}

#[test]
fn exact_bytes_for_random_subsets_and_the_whole_unused_set() {
    let engine = PrivateEngine::start(700);
    let pop = ml_population(&engine);
    let config = write_config(&engine, EAGER);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let labelled = engine.docker(&["inspect", "-f", "{{.Id}}", &pop.labelled]);
    for round in 0..5 {
        let mut unused: Vec<String> = unused_image_ids(&engine).into_iter().filter(|i| *i != labelled).collect();
        unused.shuffle(&mut rng);
        let size = 2 + round * 2;
        check_subset(&engine, &config, &unused[..size.min(unused.len())]);
        assert_safe(&engine, &pop, &[]);
    }
    let rest: Vec<String> = unused_image_ids(&engine).into_iter().filter(|i| *i != labelled).collect();
    assert!(rest.len() >= 5, "population too small: {}", rest.len());
    check_subset(&engine, &config, &rest);
    assert_safe(&engine, &pop, &[]);
}
