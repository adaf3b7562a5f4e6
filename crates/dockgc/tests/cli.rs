//! The CLI without an engine: snapshot files, config errors, and insta snapshots of
//! `plan --from-snapshot` output (table and JSON).

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A snapshot taken from Engine 20.10 with `dockgc snapshot`: 4 bases, 12 env images, 3
/// dangling rebuilds, a running and a stopped container, volumes and a custom network.
/// Kept as written by version 1, so newer builds must go on reading it.
const SNAPSHOT_V1: &str = "tests/data/snapshot-v1.json";

fn dockgc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dockgc"))
        .args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKGC_CONFIG")
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The v1 snapshot two days later on a disk at 90 %: everything is past its grace period and
/// under pressure.
fn aged_snapshot(dir: &Path) -> PathBuf {
    let mut snap: Value =
        serde_json::from_str(&std::fs::read_to_string(SNAPSHOT_V1).unwrap()).unwrap();
    snap["taken_at"] = (snap["taken_at"].as_i64().unwrap() + 2 * 86_400).into();
    let fs = &mut snap["filesystem"];
    let capacity = fs["used_bytes"].as_u64().unwrap() + fs["available_bytes"].as_u64().unwrap();
    // Layers here total ~45 MB: a 60 MB disk at 90 % makes the LRU eviction visible.
    let capacity = capacity.min(60_000_000);
    fs["used_bytes"] = (capacity * 9 / 10).into();
    fs["available_bytes"] = (capacity / 10).into();
    fs["total_bytes"] = capacity.into();
    let path = dir.join("aged.json");
    std::fs::write(&path, serde_json::to_vec(&snap).unwrap()).unwrap();
    path
}

fn config(dir: &Path, text: &str) -> String {
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const UNDER_PRESSURE: &str = "[keep]\nimages = [\"miniconda:py312\"]\nper_repository = 0\n";

#[test]
fn version_1_snapshots_still_read() {
    let out = dockgc(&["df", "--from-snapshot", SNAPSHOT_V1, "--format", "json"]);
    let df: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(df["version"], 1);
    assert_eq!(df["images"]["count"], 19);
    insta::assert_snapshot!(
        "df_v1",
        text(&dockgc(&["df", "-v", "--from-snapshot", SNAPSHOT_V1]))
    );
}

#[test]
fn plan_table_under_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let snap = aged_snapshot(dir.path());
    let c = config(dir.path(), UNDER_PRESSURE);
    let out = dockgc(&[
        "-c",
        &c,
        "plan",
        "--show-skipped",
        "--from-snapshot",
        snap.to_str().unwrap(),
    ]);
    insta::assert_snapshot!("plan_pressure_table", text(&out));
}

#[test]
fn plan_json_under_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let snap = aged_snapshot(dir.path());
    let c = config(dir.path(), UNDER_PRESSURE);
    let out = dockgc(&[
        "-c",
        &c,
        "plan",
        "--format",
        "json",
        "--from-snapshot",
        snap.to_str().unwrap(),
    ]);
    let plan: Value = serde_json::from_str(&text(&out)).unwrap();
    let steps = plan["steps"].as_array().unwrap();
    let sum: u64 = steps.iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    assert_eq!(plan["reclaim_bytes"].as_u64().unwrap(), sum);
    for s in steps {
        assert_ne!(
            s["name"], "miniconda:py312",
            "a keep-listed base is planned"
        );
    }
    insta::assert_json_snapshot!("plan_pressure_json", plan);
}

#[test]
fn explain_names_rule_and_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let snap = aged_snapshot(dir.path());
    let c = config(dir.path(), UNDER_PRESSURE);
    let snap = snap.to_str().unwrap();
    let base = text(&dockgc(&[
        "-c",
        &c,
        "explain",
        "miniconda:py312",
        "--from-snapshot",
        snap,
    ]));
    assert!(
        base.contains("KEPT: protected by keep.images = \"miniconda:py312\""),
        "{base}"
    );
    let used = text(&dockgc(&[
        "-c",
        &c,
        "explain",
        "ml/env-11:latest",
        "--from-snapshot",
        snap,
    ]));
    assert!(used.contains("KEPT: in use by trainer"), "{used}");
    let out = dockgc(&["explain", "nope:1", "--from-snapshot", snap]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_unreachable_goal_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let snap = aged_snapshot(dir.path());
    let out = dockgc(&[
        "plan",
        "--free",
        "10TB",
        "--from-snapshot",
        snap.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("NOT reachable"));
}

#[test]
fn config_default_and_check() {
    let out = dockgc(&["config", "default"]);
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &String::from_utf8_lossy(&out.stdout));
    assert!(dockgc(&["config", "check", &path]).status.success());
    let cases = [
        (
            "[disk]\nhigh = \"80%\"\nlow = \"90%\"\n",
            "c.toml:3: `disk.low`: low (90%) must be below high (80%)",
        ),
        (
            "[keep]\nrecnet = \"1h\"\n",
            "c.toml:2: `keep.recnet`: unknown field `recnet`, expected one of",
        ),
        (
            "[build_cache]\nkeep = \"ten\"\n",
            "c.toml:2: `build_cache.keep`: `ten` is not valid; expected a size",
        ),
        (
            "[keep]\nmin_age = \"1 fortnight\"\n",
            "c.toml:2: `keep.min_age`: `1 fortnight` is not valid; expected a duration",
        ),
        (
            "[disk]\ninodes_high = \"95\"\n",
            "c.toml:2: `disk.inodes_high`: `95` is not valid; expected a percentage",
        ),
        (
            "[keep]\nimages = [\"[bad\"]\n",
            "c.toml:2: `keep.images`: invalid glob `[bad`",
        ),
    ];
    for (bad, message) in cases {
        let path = config(dir.path(), bad);
        let out = dockgc(&["config", "check", &path]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{bad}: {err}");
    }
}

#[test]
fn bad_flags_exit_2() {
    assert_eq!(
        dockgc(&["plan", "--free", "lots", "--from-snapshot", SNAPSHOT_V1])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(dockgc(&["prune", "--parallel", "0"]).status.code(), Some(2));
    let out = dockgc(&["--host", "ssh://me@far", "df"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ssh://"));
}

/// A one-shot HTTP receiver: answers `status` to each request and hands back what it got.
fn receiver(status: u16) -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body by Content-Length.
            loop {
                let n = stream.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len || n == 0 {
                        break;
                    }
                }
            }
            write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            tx.send(String::from_utf8_lossy(&got).into_owned()).unwrap();
        }
    });
    (addr, rx)
}

#[test]
fn notify_test_reaches_each_receiver_and_says_how_it_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (good, got) = receiver(204);
    let (bad, _) = receiver(500);
    let c = config(
        dir.path(),
        &format!(
            "[[notify.webhook]]\nname = \"ops\"\nurl = \"http://{good}/hook/secret-path\"\nsecret = \"k3y\"\n\
             [[notify.webhook]]\nname = \"broken\"\nurl = \"http://{bad}/hook/secret-path\"\n"
        ),
    );
    let out = dockgc(&["-c", &c, "notify", "test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("ops: delivered"), "{stdout}");
    assert!(
        stdout.contains("broken: failed: the receiver answered HTTP 500"),
        "{stdout}"
    );
    assert!(!stdout.contains("secret-path"), "{stdout}");
    let request = got
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    assert!(request.starts_with("POST /hook/secret-path "), "{request}");
    let lower = request.to_ascii_lowercase();
    assert!(lower.contains("x-dockgc-event: test"), "{request}");
    assert!(
        lower.contains("x-dockgc-signature-256: sha256="),
        "{request}"
    );
    assert!(request.contains("\"version\":1"), "{request}");

    let out = dockgc(&["-c", &c, "notify", "test", "--receiver", "ops"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = dockgc(&["-c", &c, "notify", "test", "--receiver", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no receiver named `nope`"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dockgc"))
        .args([
            "-H",
            "unix:///nonexistent.sock",
            "--log-format",
            "json",
            "run",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("DOCKGC_STATE_DIR", dir.path())
        .env_remove("DOCKGC_CONFIG")
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("engine down")
    {
        assert!(std::time::Instant::now() < deadline, "no engine-down event");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let down = events
        .iter()
        .find(|e| e["message"].as_str().unwrap().starts_with("engine down"))
        .unwrap();
    assert_eq!(down["level"], "WARN");
    assert!(down["timestamp"].as_str().unwrap().ends_with('Z'));
    let serving = events
        .iter()
        .find(|e| e["message"] == "serving /metrics, /healthz and /readyz")
        .unwrap();
    assert!(
        serving["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{serving}"
    );
    assert_eq!(events.last().unwrap()["message"], "stopped");
}

#[test]
fn bad_observability_config_names_key_line_and_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        "[metrics]\nlisten = \"127.0.0.1:9714\"\n\n[[notify.webhook]]\nurl = \"https://hooks.example/T/very-secret\"\nformat = \"teams\"\n",
    );
    let out = dockgc(&["config", "check", &c]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":6: `notify.webhook[0].format`: `teams` is not valid; expected \"json\""),
        "{err}"
    );
    let c = config(dir.path(), "[[notify.webhook]]\nname = \"x\"\n");
    let err = String::from_utf8_lossy(&dockgc(&["config", "check", &c]).stderr).into_owned();
    assert!(
        err.contains("`notify.webhook[0].url`: is required"),
        "{err}"
    );
}

/// A docker-save archive (legacy layout) of one image whose second layer deletes a file the
/// first wrote.
fn wasteful_archive(dir: &Path) -> PathBuf {
    fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = ::tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }
    use sha2::Digest;
    let hex = |b: &[u8]| -> String {
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    let l1 = tar(&[
        ("data/big.bin", &[7u8; 5000]),
        ("root/.cache/pip/x.whl", &[8u8; 3000]),
    ]);
    let l2 = tar(&[("data/.wh.big.bin", b"")]);
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(&l1)), format!("sha256:{}", hex(&l2))]},
        "history": [{"created_by": "COPY data /data"}, {"created_by": "/bin/sh -c rm /data/big.bin"}],
    }))
    .unwrap();
    let config_name = format!("{}.json", hex(&config));
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": ["ci/app:1"], "Layers": ["a/layer.tar", "b/layer.tar"]}
    ]))
    .unwrap();
    let archive = tar(&[
        (&config_name as &str, &config),
        ("a/layer.tar", &l1),
        ("b/layer.tar", &l2),
        ("manifest.json", &manifest),
    ]);
    let path = dir.join("app.tar");
    std::fs::write(&path, archive).unwrap();
    path
}

#[test]
fn audit_an_archive_file_and_gate_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let archive = wasteful_archive(dir.path());
    let archive = archive.to_str().unwrap();
    let out = dockgc(&["audit", "--archive", archive, "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["source"], "archive");
    let image = &report["images"][0];
    assert_eq!(image["tags"][0], "ci/app:1");
    assert_eq!(image["bytes"], 8000);
    assert_eq!(image["wasted_bytes"], 8000);
    assert_eq!(image["efficiency"], 0.0);
    let causes: Vec<&str> = image["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["cause"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["deleted", "pip_cache"]);

    // Gating, and the archive from standard input.
    let out = dockgc(&["audit", "--archive", archive, "--max-waste", "7kB"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("ci/app:1: 8kB wasted, more than --max-waste 7kB"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rm /data/big.bin") || text.contains("COPY data /data"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_dockgc"))
        .args(["audit", "--archive", "-", "--max-waste", "9kB"])
        .stdin(std::fs::File::open(archive).unwrap())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Broken archives: a clear error, exit 2.
    let whole = std::fs::read(archive).unwrap();
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let out = dockgc(&["audit", "--archive", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cut.tar") && (err.contains("unreadable") || err.contains("missing")),
        "{err}"
    );
    let out = dockgc(&["audit", "--archive", archive, "--max-waste", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-waste `lots`"));
}

#[test]
fn generate_a_trace_and_simulate_it_against_the_peers() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let out = dockgc(&[
        "trace",
        "generate",
        "--days",
        "3",
        "-o",
        trace.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = config(
        dir.path(),
        "[keep]\nmin_age = \"0\"\nrecent = \"0\"\nper_repository = 0\n[disk]\nhigh = \"70%\"\nlow = \"60%\"\n",
    );
    let out = dockgc(&[
        "-c",
        &c,
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--compare",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 6);
    let by = |prefix: &str| {
        outcomes
            .iter()
            .find(|o| o["policy"].as_str().unwrap().starts_with(prefix))
            .unwrap()
    };
    assert_eq!(by("dockgc")["disk_full"], 0);
    let budget = report["budget_bytes"].as_u64().unwrap();
    for reference in ["ideal LRU", "offline"] {
        assert!(by(reference)["peak_bytes"].as_u64().unwrap() <= budget);
    }
    assert!(
        by("offline")["bytes_reloaded"].as_u64().unwrap()
            <= by("ideal LRU")["bytes_reloaded"].as_u64().unwrap()
    );
    assert!(!by("dockgc")["usage"].as_array().unwrap().is_empty());

    // A broken trace names the line.
    let bad = dir.path().join("bad.jsonl");
    let mut text = std::fs::read_to_string(&trace).unwrap();
    text.push_str("{\"event\":\"use\",\"t\":1}\n");
    std::fs::write(&bad, text).unwrap();
    let out = dockgc(&["simulate", "--trace", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
