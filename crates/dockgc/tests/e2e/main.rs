//! End-to-end tests on a private `dockerd` per test, on a small loop-mounted disk.
//! They need root and Debian's docker.io; `.ci/run` provides both.

#![allow(clippy::unwrap_used)] // Tests and examples fail loudly by design.

mod archive;
mod audit;
mod fixtures;
mod governor;
mod harness;
mod observability;
mod proxy;

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
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(out), stderr(out)))
}

fn write_config(engine: &PrivateEngine, text: &str) -> String {
    let path = engine.scratch().join("dockgc.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into()
}

/// A policy with every grace period off, so the population is eligible at once; `keep`
/// lines go into `[keep]`, `images` lines into `[images]`.
fn eager(keep: &str, images: &str) -> String {
    format!(
        "[keep]\nmin_age = \"0\"\nrecent = \"0\"\nper_repository = 0\n{keep}\n\
         [containers]\nstopped_after = \"0\"\n\
         [images]\ndangling_after = \"0\"\n{images}\n\
         [volumes]\nanonymous_after = \"0\"\n"
    )
}

fn image_ids(engine: &PrivateEngine) -> HashSet<String> {
    engine
        .docker(&["images", "-a", "-q", "--no-trunc"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn exists(engine: &PrivateEngine, what: &str, name: &str) -> bool {
    engine
        .docker_output(&[what, "inspect", name])
        .status
        .success()
}

/// Everything that must survive any prune of the population.
fn assert_safe(engine: &PrivateEngine, pop: &Population, protected_refs: &[&str]) {
    for c in &pop.running {
        assert!(
            exists(engine, "container", c),
            "running container {c} is gone"
        );
        let image = engine.docker(&["inspect", "-f", "{{.Image}}", c]);
        assert!(
            exists(engine, "image", &image),
            "image of running {c} is gone"
        );
    }
    for r in protected_refs {
        assert!(exists(engine, "image", r), "protected image {r} is gone");
    }
    assert!(
        exists(engine, "image", &pop.labelled),
        "labelled image is gone"
    );
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
    let mut ids: Vec<String> = image_ids(engine)
        .into_iter()
        .filter(|i| !used.contains(i))
        .collect();
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
    let exempt: Vec<&str> = plan["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps.len(),
        subset.len(),
        "every unused image is planned; skipped: {exempt:?}"
    );
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
    assert_eq!(
        freed, predicted,
        "LayersSize dropped by {freed}, plan predicted {predicted}"
    );
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
    let config = write_config(&engine, &eager("", ""));
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let labelled = engine.docker(&["inspect", "-f", "{{.Id}}", &pop.labelled]);
    for round in 0..5 {
        let mut unused: Vec<String> = unused_image_ids(&engine)
            .into_iter()
            .filter(|i| *i != labelled)
            .collect();
        unused.shuffle(&mut rng);
        let size = 2 + round * 2;
        check_subset(&engine, &config, &unused[..size.min(unused.len())]);
        assert_safe(&engine, &pop, &[]);
    }
    let rest: Vec<String> = unused_image_ids(&engine)
        .into_iter()
        .filter(|i| *i != labelled)
        .collect();
    assert!(rest.len() >= 5, "population too small: {}", rest.len());
    check_subset(&engine, &config, &rest);
    assert_safe(&engine, &pop, &[]);
}

fn inspect_layers(engine: &PrivateEngine, reference: &str) -> Vec<String> {
    serde_json::from_str(&engine.docker(&["inspect", "-f", "{{json .RootFS.Layers}}", reference]))
        .unwrap()
}

#[test]
fn pressure_reaches_low_keeps_bases_and_beats_naive_lru() {
    let engine = PrivateEngine::start(700);
    let pop = ml_population(&engine);
    let base_layers: Vec<(String, Vec<String>)> = pop
        .bases
        .iter()
        .map(|b| (b.clone(), inspect_layers(&engine, b)))
        .collect();
    let snapshot = json(&engine.dockgc(&["snapshot"]));
    // The snapshot holds the whole population, with its relations.
    assert_eq!(snapshot["version"], 1);
    let volume = |name: &str| {
        snapshot["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        volume(&pop.named_in_use)["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(volume(&pop.named_in_use)["kind"], "named");
    assert!(volume(&pop.named_unused)["containers"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(snapshot["networks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == "ml-net" && n["kind"] == "custom"));
    assert!(
        !snapshot["build_cache"].as_array().unwrap().is_empty(),
        "no BuildKit cache recorded"
    );
    assert!(snapshot["containers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["state"] == "running" && c["started"].is_i64()));
    assert!(snapshot["images"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| !i["layers"].as_array().unwrap().is_empty()));
    let fs = &snapshot["filesystem"];
    let used = fs["used_bytes"].as_u64().unwrap();
    let capacity = used + fs["available_bytes"].as_u64().unwrap();
    // Above high, and low ~40 MB below the current usage: most of the unused children must go.
    let high = (used as f64 * 100.0 / capacity as f64) - 0.5;
    let low = (used.saturating_sub(40_000_000)) as f64 * 100.0 / capacity as f64;
    let config = write_config(
        &engine,
        &format!(
            "[disk]\nhigh = \"{high:.2}%\"\nlow = \"{low:.2}%\"\n[keep]\nmin_age = \"0\"\nrecent = \"0\"\nper_repository = 0\n[containers]\nstopped = \"keep\"\n"
        ),
    );
    let plan = json(&engine.dockgc(&["-c", &config, "plan", "--format", "json"]));
    let target = plan["target"]["need_disk_bytes"]
        .as_u64()
        .expect("a target under pressure");
    let steps = plan["steps"].as_array().unwrap();
    let routine: u64 = steps
        .iter()
        .filter(|s| s["reason"] != "disk_pressure")
        .map(|s| s["disk_bytes"].as_u64().unwrap())
        .sum();
    let ours = steps
        .iter()
        .filter(|s| s["reason"] == "disk_pressure")
        .count();
    assert!(ours > 0, "pressure evicted nothing: {plan:#}");

    // A least-recently-used order that ignores shared layers (what docuum does): evict unused
    // images by their own last use until the same bytes are freed, counting what really frees.
    let naive = naive_lru_count(&snapshot, target.saturating_sub(routine));
    assert!(
        ours < naive,
        "dockgc evicts {ours} images, naive LRU {naive}"
    );

    let out = engine.dockgc(&["-c", &config, "prune", "-f"]);
    assert!(
        out.status.success(),
        "prune: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let after = engine.used_bytes();
    assert!(
        after as f64 <= low / 100.0 * capacity as f64,
        "usage {after} above low {low}% of {capacity}"
    );
    // No base is untagged while an image built on it remains.
    let remaining: Vec<Vec<String>> = image_ids(&engine)
        .iter()
        .map(|id| inspect_layers(&engine, id))
        .collect();
    for (tag, layers) in &base_layers {
        let has_children = remaining
            .iter()
            .any(|l| l.len() > layers.len() && l.starts_with(layers));
        if has_children {
            assert!(
                exists(&engine, "image", tag),
                "base {tag} untagged while its children remain"
            );
        }
    }
    assert_safe(&engine, &pop, &[]);
}

/// Deletions a naive LRU makes to free `need` disk bytes on `snapshot` (from `dockgc snapshot`).
fn naive_lru_count(snapshot: &Value, need: u64) -> usize {
    use std::collections::HashMap;
    let disk: HashMap<&str, u64> = snapshot["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["chain_id"].as_str().unwrap(),
                l["disk_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let used: HashSet<&str> = snapshot["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image_id"].as_str().unwrap())
        .collect();
    let images = snapshot["images"].as_array().unwrap();
    let mut refs: HashMap<&str, usize> = HashMap::new();
    for i in images {
        for l in i["layers"].as_array().unwrap() {
            *refs.entry(l.as_str().unwrap()).or_default() += 1;
        }
    }
    let mut order: Vec<&Value> = images
        .iter()
        .filter(|i| !used.contains(i["id"].as_str().unwrap()))
        .filter(|i| i["labels"].get("dockgc.keep").is_none())
        .collect();
    let last_use = |i: &Value| {
        i["last_tagged"]
            .as_i64()
            .unwrap_or(0)
            .max(i["arrived"].as_i64().unwrap())
    };
    order.sort_by_key(|i| (last_use(i), i["id"].as_str().unwrap().to_string()));
    let (mut freed, mut count) = (0u64, 0usize);
    for image in order {
        if freed >= need {
            break;
        }
        count += 1;
        for l in image["layers"].as_array().unwrap() {
            let r = refs.get_mut(l.as_str().unwrap()).unwrap();
            *r -= 1;
            if *r == 0 {
                freed += disk[l.as_str().unwrap()];
            }
        }
    }
    count
}

#[test]
fn a_victim_used_between_plan_and_execution_is_skipped() {
    let engine = PrivateEngine::start(700);
    let pop = ml_population(&engine);
    let config = write_config(&engine, &eager("", "unused = \"remove\""));
    let plan_out = engine.dockgc(&["-c", &config, "plan", "--format", "json"]);
    let plan = json(&plan_out);
    let plan_path = engine.scratch().join("plan.json");
    std::fs::write(&plan_path, &plan_out.stdout).unwrap();
    let victim = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "image" && s["tags"].as_array().is_some_and(|t| !t.is_empty()))
        .expect("a tagged image in the plan");
    let victim_tag = victim["tags"][0].as_str().unwrap();
    let victim_id = victim["id"].as_str().unwrap();
    engine.docker(&[
        "create",
        "--name",
        "late-job",
        "--network",
        "none",
        victim_tag,
        "/bin/busybox",
        "true",
    ]);

    let out = engine.dockgc(&[
        "-c",
        &config,
        "prune",
        "-f",
        "--plan",
        plan_path.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "prune: {}", stderr(&out));
    let report = json(&out);
    let results = report["report"]["results"].as_array().unwrap();
    let mine = results.iter().find(|r| r["id"] == victim_id).unwrap();
    assert_eq!(mine["outcome"], "skipped", "{mine:#}");
    assert!(
        mine["detail"].as_str().unwrap().contains("late-job"),
        "{mine:#}"
    );
    assert!(
        exists(&engine, "image", victim_id),
        "the victim was deleted"
    );
    let removed = results.iter().filter(|r| r["outcome"] == "removed").count();
    assert!(removed >= 20, "only {removed} removed");
    for r in results
        .iter()
        .filter(|r| r["outcome"] == "removed" && r["kind"] == "image")
    {
        assert!(!exists(&engine, "image", r["id"].as_str().unwrap()));
    }
    assert_safe(&engine, &pop, &[victim_tag]);
}

#[test]
fn routine_prune_removes_leftovers_and_keeps_what_is_protected() {
    let engine = PrivateEngine::start(700);
    let pop = ml_population(&engine);
    let config = write_config(
        &engine,
        &eager("images = [\"ml/env-1?:v1\"]", "unused = \"remove\""),
    );
    let dangling_before = engine.docker(&["images", "-q", "-f", "dangling=true"]);
    assert!(
        !dangling_before.is_empty(),
        "the population has dangling images"
    );
    // Caps: a run stops after --max-deletions and says what it did not run.
    let capped = json(&engine.dockgc(&[
        "-c",
        &config,
        "prune",
        "-f",
        "--max-deletions",
        "2",
        "--format",
        "json",
    ]));
    let results = capped["report"]["results"].as_array().unwrap();
    let removed: Vec<&Value> = results
        .iter()
        .filter(|r| r["outcome"] == "removed")
        .collect();
    assert_eq!(removed.len(), 2);
    assert!(
        removed.iter().all(|r| r["reason"] == "stopped_container"),
        "{removed:?}"
    );
    assert!(results.iter().filter(|r| r["outcome"] == "not_run").count() > 10);
    let out = engine.dockgc(&["-c", &config, "prune", "-f"]);
    assert!(
        out.status.success(),
        "prune: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("dangling image"), "{text}");
    assert!(!exists(&engine, "container", "done-1") && !exists(&engine, "container", "done-2"));
    assert_eq!(engine.docker(&["images", "-q", "-f", "dangling=true"]), "");
    assert!(
        !exists(&engine, "network", "ml-net"),
        "unused network survived"
    );
    let volumes = engine.docker(&["volume", "ls", "-q"]);
    // The anonymous volume of the removed container goes; job-a's anonymous /scratch stays.
    assert_eq!(
        volumes.lines().filter(|v| v.len() == 64).count(),
        1,
        "{volumes}"
    );
    let keep: Vec<String> = (10..20).map(|c| format!("ml/env-{c}:v1")).collect();
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    assert_safe(&engine, &pop, &keep);
    // With images.unused = "remove", unprotected unused tags go, both tags of the multi-tag one too.
    for gone in [
        "ml/env-20:v1",
        "ml/env-4:v1",
        "ml/alias:latest",
        "ml/whiteout:v1",
    ] {
        assert!(!exists(&engine, "image", gone), "{gone} survived");
    }
}

#[test]
fn an_api_error_mid_run_exits_2_and_keeps_the_audit_consistent() {
    let engine = PrivateEngine::start(700);
    let _pop = ml_population(&engine);
    let config = write_config(&engine, &eager("", "unused = \"remove\""));
    let victim = "ml/env-12:v1";
    let victim_id = engine.docker(&["inspect", "-f", "{{.Id}}", victim]);
    let proxy = proxy::Proxy::start(&engine, move |line| {
        if line.starts_with("DELETE") && line.contains(victim) {
            proxy::Verdict::Fail
        } else {
            proxy::Verdict::Forward
        }
    });
    let audit = engine.scratch().join("audit.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dockgc"))
        .args(["--host", &proxy.url(), "-c", &config, "prune", "-f"])
        .arg("--audit-file")
        .arg(&audit)
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains(victim) && err.contains("injected failure"),
        "{err}"
    );
    assert!(exists(&engine, "image", &victim_id));
    assert!(
        !exists(&engine, "image", "ml/env-13:v1"),
        "the rest of the run went on"
    );

    // Every intent has exactly one outcome, and the failure is recorded as such.
    let records: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let intents: Vec<&Value> = records.iter().filter(|r| r["event"] == "intent").collect();
    assert!(intents.len() > 10);
    for intent in &intents {
        let outcomes: Vec<&Value> = records
            .iter()
            .filter(|r| {
                r["event"] == "outcome" && r["run"] == intent["run"] && r["seq"] == intent["seq"]
            })
            .collect();
        assert_eq!(
            outcomes.len(),
            1,
            "intent {intent} has {} outcomes",
            outcomes.len()
        );
        if intent["id"] == victim_id.as_str() {
            assert_eq!(outcomes[0]["outcome"], "failed");
        }
    }
    assert_eq!(records.last().unwrap()["event"], "run_end");
}

#[test]
fn unreachable_engine_and_bad_config_exit_2_naming_the_problem() {
    let engine = PrivateEngine::start(300);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dockgc"))
        .args(["df"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unix:///nonexistent/docker.sock (from DOCKER_HOST)"),
        "{}",
        stderr(&out)
    );

    let config = write_config(&engine, "[disk]\nhigh = \"80%\"\nlow = \"90%\"\n");
    let out = engine.dockgc(&["-c", &config, "prune", "-f"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(":3: `disk.low`: low (90%) must be below high (80%)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn engine_over_tcp_and_through_a_docker_context() {
    let engine = PrivateEngine::start_with_tcp(300, 23_751, None);
    fixtures::load(
        &engine,
        &[fixtures::Image::new(
            &["tiny:1"],
            vec![fixtures::Layer::busybox()],
        )],
    );
    let run = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dockgc"))
            .args(["df", "--format", "json"])
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{env:?}: {}", stderr(&out));
        json(&out)["images"]["count"].as_u64().unwrap()
    };
    assert_eq!(run(&[("DOCKER_HOST", "tcp://127.0.0.1:23751")]), 1);
    // A docker CLI context, made by the docker CLI itself.
    let config_dir = engine.scratch().join("cli");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(harness::DOCKER)
            .args(args)
            .env("DOCKER_CONFIG", &config_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    cli(&[
        "context",
        "create",
        "private",
        "--docker",
        &format!("host={}", engine.url()),
    ]);
    let dir = config_dir.to_string_lossy().to_string();
    assert_eq!(
        run(&[("DOCKER_CONFIG", &dir), ("DOCKER_CONTEXT", "private")]),
        1
    );
    cli(&["context", "use", "private"]);
    assert_eq!(run(&[("DOCKER_CONFIG", &dir)]), 1);
}

#[test]
fn engine_over_tls_with_docker_tls_verify() {
    let certs = tempfile::tempdir().unwrap();
    harness::make_certificates(certs.path());
    let engine = PrivateEngine::start_with_tcp(300, 23_761, Some(certs.path()));
    fixtures::load(
        &engine,
        &[fixtures::Image::new(
            &["tiny:1"],
            vec![fixtures::Layer::busybox()],
        )],
    );
    let cert_path = certs.path().to_string_lossy().to_string();
    let df = |verify: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dockgc"));
        cmd.args(["df", "--format", "json"])
            .env("DOCKER_HOST", "tcp://127.0.0.1:23761")
            .env("DOCKER_CERT_PATH", &cert_path)
            .env_remove("DOCKER_CONTEXT");
        if verify {
            cmd.env("DOCKER_TLS_VERIFY", "1");
        } else {
            cmd.env_remove("DOCKER_TLS_VERIFY");
        }
        cmd.output().unwrap()
    };
    let out = df(true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["images"]["count"], 1);
    // Without TLS the engine refuses to talk: a clear error naming the endpoint, exit 2.
    let out = df(false);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("tcp://127.0.0.1:23761"),
        "{}",
        stderr(&out)
    );
}
