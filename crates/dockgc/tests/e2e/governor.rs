//! `dockgc run` end to end: watermarks, persistence across restarts, gaps in the event
//! stream, crashes, engine restarts and config reloads.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::archive::{Image, Layer};
use crate::fixtures::load;
use crate::harness::{wait_for, PrivateEngine};

/// A running `dockgc run` against a private engine.
pub struct Governor {
    child: Option<Child>,
    /// Its state directory.
    pub state: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    host: String,
    run_args: Vec<String>,
}

impl Governor {
    /// Starts the governor with `config` (TOML text), serving metrics on a free port.
    pub fn start(engine: &PrivateEngine, config: &str) -> Self {
        Self::start_with(engine, config, None, &["--listen", "127.0.0.1:0"])
    }

    /// Starts the governor with `config`, on `host` (default: the engine's socket), with more
    /// arguments for `run`.
    pub fn start_with(
        engine: &PrivateEngine,
        config: &str,
        host: Option<String>,
        run_args: &[&str],
    ) -> Self {
        let state = engine.scratch().join("gov-state");
        let path = engine.scratch().join("gov.toml");
        std::fs::write(&path, config).unwrap();
        let mut g = Self {
            child: None,
            state,
            config: path,
            host: host.unwrap_or_else(|| engine.url()),
            run_args: run_args.iter().map(|a| a.to_string()).collect(),
        };
        g.restart();
        g
    }

    /// Starts it again (after [`Governor::stop`] or [`Governor::kill9`]).
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.with_extension("log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dockgc"))
            .args(["--host", &self.host, "--state-dir"])
            .arg(&self.state)
            .arg("-c")
            .arg(&self.config)
            .args(["run", "--parallel", "2"])
            .args(&self.run_args)
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockgc run");
        let pid = child.id();
        self.child = Some(child);
        // The status of this process, not one a killed predecessor left behind.
        self.wait("the governor to report its engine up", 30, || {
            let s = self.status();
            (s["status"]["pid"] == pid && s["status"]["engine"] == "up").then_some(())
        });
    }

    /// Where it serves `/metrics` (from its status).
    pub fn metrics_addr(&self) -> String {
        self.status()["status"]["listen"]
            .as_str()
            .expect("the governor serves metrics")
            .to_string()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// `dockgc status --format json`.
    pub fn status(&self) -> Value {
        let out = self.dockgc(&["status", "--format", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Runs a dockgc command on the same state.
    pub fn dockgc(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_dockgc"))
            .args(["--host", &self.host, "--state-dir"])
            .arg(&self.state)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("DOCKER_HOST")
            .output()
            .unwrap()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`TERM`, `HUP`, `KILL`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGTERM; returns how long it took to exit, and requires exit status 0.
    pub fn stop(&mut self) -> Duration {
        let start = Instant::now();
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        let status = wait_for("the governor to exit", Duration::from_secs(20), || {
            child.try_wait().unwrap()
        });
        assert!(
            status.success(),
            "exit status {status}; log: {}",
            self.log()
        );
        start.elapsed()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The governor's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.with_extension("log")).unwrap_or_default()
    }

    /// Waits for `check`, or panics with the governor's log.
    pub fn wait<T>(&self, what: &str, seconds: u64, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {seconds}s waiting for {what}; governor log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Number of cycles recorded.
    pub fn cycles(&self) -> usize {
        self.status()["cycles"].as_array().map_or(0, Vec::len)
    }
}

impl Drop for Governor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Used and available bytes of the data root's filesystem, as `df` (statvfs) counts them.
fn df(engine: &PrivateEngine) -> (u64, u64) {
    let out = Command::new("df")
        .args(["-B1", "--output=used,avail"])
        .arg(&engine.root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let n: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    (n[0], n[1])
}

/// Percentage of the data root's filesystem in use, as `df` computes it.
fn used_percent(engine: &PrivateEngine) -> f64 {
    let (used, available) = df(engine);
    used as f64 * 100.0 / (used + available) as f64
}

pub fn env_image(base: &[Layer], n: usize, mb: usize) -> Image {
    let mut layers = base.to_vec();
    layers.push(Layer::random(
        &format!("opt/env/{n}.bin"),
        mb * 1_000_000,
        50_000 + n as u64,
    ));
    Image::new(&[&format!("ml/env-{n}:v1")], layers)
}

/// Loads `ml/env-N:v1` for every N of `range`, `per_load` images an archive, `mb` MB each.
pub fn load_envs(
    engine: &PrivateEngine,
    base: &[Layer],
    range: std::ops::Range<usize>,
    per_load: usize,
    mb: usize,
) {
    for batch in range.collect::<Vec<_>>().chunks(per_load) {
        load(
            engine,
            &batch
                .iter()
                .map(|&n| env_image(base, n, mb))
                .collect::<Vec<_>>(),
        );
    }
}

fn exists(engine: &PrivateEngine, image: &str) -> bool {
    engine
        .docker_output(&["image", "inspect", image])
        .status
        .success()
}

const WATERMARKS: &str = "[disk]\nhigh = \"80%\"\nlow = \"60%\"\n[keep]\nmin_age = \"0\"\nrecent = \"0\"\nper_repository = 0\n[schedule]\ncheck_every = \"1s\"\ncron = [\"0 3 1 1 *\"]\n";

/// A gauge's value as the governor serves it.
fn gauge(governor: &Governor, name: &str) -> Option<f64> {
    let (_, body, _) = crate::observability::get(&governor.metrics_addr(), "/metrics", None);
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_pressure_episode_ends_back_under_low() {
    let engine = PrivateEngine::start(1024);
    let base = vec![Layer::busybox()];
    load_envs(&engine, &base, 0..16, 8, 25);
    // Only arrivals start checks (no poll within the test): what a busy host sees, where the
    // next image lands before any poll. A ballast file moves usage without an event.
    let config = WATERMARKS.replace("check_every = \"1s\"", "check_every = \"1h\"");
    let governor = Governor::start(&engine, &config);
    let ballast = engine.root.join("ballast");
    grow_to(&engine, &ballast, 79.0);
    // One image takes usage past high: one cycle frees down to low. Untagged, so that its
    // load is one event (a tag event after the cycle would be a check that ends the
    // episode by itself).
    let mut untagged = env_image(&base, 16, 25);
    untagged.tags.clear();
    let before = unix_nanos();
    load(&engine, &[untagged]);
    // `status` says an event is handled only once the cycle it started has ended (what
    // bench/replay waits on): by then the cycle is on record and usage is back under low.
    governor.wait("the governor to handle the load", 30, || {
        (governor.status()["status"]["events_handled"].as_i64()? >= before).then_some(())
    });
    assert_eq!(governor.cycles(), 1, "{}", governor.log());
    assert!(
        used_percent(&engine) <= 60.0,
        "{:.1}% used",
        used_percent(&engine)
    );
    // Just above low (no event), then an arrival: it is checked at once and must not start
    // a cycle — pressure starts above high; the episode ended under low.
    grow_to(&engine, &ballast, 61.0);
    load_envs(&engine, &base, 17..18, 1, 5);
    let used = used_percent(&engine);
    assert!(used > 60.0 && used < 80.0, "{used:.1}% used");
    // The governor handles events in order: once it has measured the disk after a second
    // arrival, it has finished whatever the first one set off.
    load_envs(&engine, &base, 18..19, 1, 5);
    let bytes = df(&engine).0;
    governor.wait("the governor to measure the second arrival", 30, || {
        (gauge(&governor, "dockgc_filesystem_used_bytes")? >= bytes as f64 - 1e6).then_some(())
    });
    assert_eq!(governor.cycles(), 1, "{}", governor.log());
    assert!(exists(&engine, "ml/env-17:v1") && exists(&engine, "ml/env-18:v1"));
}

fn unix_nanos() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_nanos()).unwrap()
}

/// Appends to `file` until the data root's filesystem is `percent` used.
fn grow_to(engine: &PrivateEngine, file: &std::path::Path, percent: f64) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    let chunk = vec![7u8; 1 << 20];
    while used_percent(engine) < percent {
        f.write_all(&chunk).unwrap();
        f.sync_all().unwrap();
    }
}

#[test]
fn watermark_keeps_recently_used_images_across_a_restart() {
    let engine = PrivateEngine::start(2048);
    let base = vec![Layer::busybox()];
    // ~63 %: 48 images of 25 MB, oldest first.
    load_envs(&engine, &base, 0..48, 12, 25);
    assert!(used_percent(&engine) < 80.0);
    let mut governor = Governor::start(&engine, WATERMARKS);
    // The five oldest images run jobs now (containers removed afterwards): the governor's
    // history, not the engine, is all that remembers this.
    for n in 0..5 {
        engine.docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            &format!("ml/env-{n}:v1"),
            "/bin/busybox",
            "true",
        ]);
    }
    wait_for("the uses to be recorded", Duration::from_secs(10), || {
        let out = governor.dockgc(&["explain", "ml/env-4:v1", "--format", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let facts = v["facts"].as_array()?;
        let used = facts.iter().find(|f| f[0] == "last used")?[1]
            .as_str()?
            .to_string();
        (used.ends_with("s ago")
            && !used.contains('m')
            && !used.contains('h')
            && !used.contains('d'))
        .then_some(())
    });
    let took = governor.stop();
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");

    // Past 85 % while the governor is stopped, then it starts: down to 60 % within 15 s.
    load_envs(&engine, &base, 48..68, 5, 25);
    let before = used_percent(&engine);
    assert!(before > 85.0, "only {before:.1}% used");
    let start = Instant::now();
    governor.restart();
    governor.wait("usage to reach the low watermark", 15, || {
        (used_percent(&engine) <= 60.0).then_some(())
    });
    eprintln!("{before:.1}% -> 60% in {:?}", start.elapsed());
    for n in 0..5 {
        assert!(
            exists(&engine, &format!("ml/env-{n}:v1")),
            "recently used ml/env-{n} was evicted"
        );
    }
    for n in 5..15 {
        assert!(
            !exists(&engine, &format!("ml/env-{n}:v1")),
            "least recently used ml/env-{n} survived"
        );
    }

    // Under the running governor, loads that take the disk past high are handled at once:
    // whenever a load leaves usage above high, it is back under low within 15 s. (A cycle
    // may also run during a load, set off by the images it has loaded so far.)
    let cycles = governor.cycles();
    for batch in (68..92).collect::<Vec<_>>().chunks(6) {
        load_envs(&engine, &base, batch[0]..batch[batch.len() - 1] + 1, 6, 25);
        if used_percent(&engine) > 80.0 {
            governor.wait("usage back under low", 15, || {
                (used_percent(&engine) <= 60.0).then_some(())
            });
        }
    }
    assert!(
        governor.cycles() > cycles,
        "no cycle under the running governor: {}",
        governor.log()
    );
    assert!(
        used_percent(&engine) < 80.0,
        "left above high: {}",
        governor.log()
    );
    let took = governor.stop();
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
}

#[test]
fn a_gap_in_the_event_stream_and_a_crash_mid_cycle() {
    let engine = PrivateEngine::start(1024);
    let base = vec![Layer::busybox()];
    load(
        &engine,
        &(0..40).map(|n| env_image(&base, n, 2)).collect::<Vec<_>>(),
    );
    let config = "[keep]\nmin_age = \"0\"\nrecent = \"0\"\nper_repository = 0\n[images]\nunused = \"lru\"\n[schedule]\ncheck_every = \"1s\"\ncron = [\"0 3 1 1 *\"]\n";
    let mut governor = Governor::start(&engine, config);
    governor.stop();
    // While stopped: use an image (its container stays), then bury the use under more than
    // 256 events, the engine's replay buffer.
    let cid = engine.docker(&[
        "create",
        "--network",
        "none",
        "ml/env-3:v1",
        "/bin/busybox",
        "true",
    ]);
    engine.docker(&["start", "-a", &cid]);
    for i in 0..300 {
        engine.api_post(&format!("/images/ml%2Fenv-39:v1/tag?repo=noise&tag=t{i}"));
    }
    let reconciled = governor.log().matches("use history reconciled").count();
    governor.restart();
    governor.wait("the history to be reconciled", 20, || {
        (governor.log().matches("use history reconciled").count() > reconciled).then_some(())
    });
    // Reconciled from the container list: ml/env-3 counts as used after everything else was
    // loaded, even once its container is gone, so least-recently-used eviction takes the
    // others first.
    engine.docker(&["rm", &cid]);
    let out = governor.dockgc(&["prune", "-f", "--free", "60MB", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        exists(&engine, "ml/env-3:v1"),
        "the image used during the gap was evicted"
    );
    let left = (0..40)
        .filter(|n| exists(&engine, &format!("ml/env-{n}:v1")))
        .count();
    assert!(
        left <= 15,
        "{left} of 40 images left: the eviction did not run"
    );
    // The prune's intents and outcomes are in the state's audit trail.
    let log = governor.dockgc(&[
        "log", "--since", "1h", "--kind", "image", "--format", "json",
    ]);
    let log: Value = serde_json::from_slice(&log.stdout).unwrap();
    let records = log["records"].as_array().unwrap();
    let intents = records
        .iter()
        .filter(|r| r["event"] == "intent" && r["kind"] == "image")
        .count();
    let removed = records
        .iter()
        .filter(|r| r["event"] == "outcome" && r["outcome"] == "removed")
        .count();
    assert!(
        intents >= 25 && removed == intents,
        "{intents} intents, {removed} removed"
    );
    assert!(records
        .iter()
        .all(|r| r["kind"] == "image" || r["event"] == "outcome"));

    // Crash: kill -9 while a cycle is deleting many small images, then restart.
    let tiny = Layer::random("t.bin", 10_000, 1);
    load(
        &engine,
        &(0..150)
            .map(|n| {
                Image::new(
                    &[&format!("tiny-{n}:v1")],
                    vec![tiny.clone(), Layer::random("u.bin", 1_000, 100 + n)],
                )
            })
            .collect::<Vec<_>>(),
    );
    let crash_config = config.replace(
        "per_repository = 0",
        "per_repository = 0\nimages = [\"ml/env-3:v1\"]",
    );
    std::fs::write(
        &governor.config,
        format!("{crash_config}[disk]\nhigh = \"1%\"\nlow = \"0.5%\"\n"),
    )
    .unwrap();
    let db = governor.state.join("dockgc.db");
    let audit_rows = || -> i64 {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(
            "SELECT COUNT(*) FROM audit WHERE event = 'intent'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let intents_before = audit_rows();
    governor.signal("HUP");
    // Poll tightly: the first intents appear a moment before their deletions finish.
    let deadline = Instant::now() + Duration::from_secs(20);
    while audit_rows() <= intents_before {
        assert!(
            Instant::now() < deadline,
            "no cycle started: {}",
            governor.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    governor.kill9();
    let open_intents = |conn: &rusqlite::Connection| -> Vec<(String, i64)> {
        let mut stmt = conn
            .prepare(
                "SELECT run, seq FROM audit i WHERE i.event = 'intent' AND NOT EXISTS (
                     SELECT 1 FROM audit o WHERE o.run = i.run AND o.seq = i.seq AND o.event = 'outcome')",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let crashed = open_intents(&rusqlite::Connection::open(&db).unwrap());
    assert!(
        !crashed.is_empty(),
        "the kill came after the cycle: nothing was interrupted"
    );
    governor.restart();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let still_open = open_intents(&conn);
    for intent in &crashed {
        assert!(
            !still_open.contains(intent),
            "{intent:?} is still open after the restart"
        );
        let outcome: String = conn
            .query_row(
                "SELECT record FROM audit WHERE run = ?1 AND seq = ?2 AND event = 'outcome'",
                rusqlite::params![intent.0, intent.1],
                |r| r.get(0),
            )
            .unwrap();
        assert!(outcome.contains("interrupted"), "{outcome}");
    }
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    assert!(
        exists(&engine, "ml/env-3:v1"),
        "a keep-listed image was deleted"
    );
    governor.stop();
}

#[test]
fn engine_restart_and_config_reload() {
    let mut engine = PrivateEngine::start(1024);
    let base = vec![Layer::busybox()];
    load(
        &engine,
        &(0..10).map(|n| env_image(&base, n, 5)).collect::<Vec<_>>(),
    );
    let mut governor = Governor::start(&engine, WATERMARKS);
    assert_eq!(governor.status()["status"]["high"], "80%");

    // A valid new config is taken; an invalid one is refused and the old one kept.
    std::fs::write(&governor.config, WATERMARKS.replace("80%", "75%")).unwrap();
    governor.signal("HUP");
    wait_for("the reload", Duration::from_secs(10), || {
        (governor.status()["status"]["high"] == "75%").then_some(())
    });
    std::fs::write(&governor.config, "[disk]\nhigh = \"lots\"\n").unwrap();
    governor.signal("HUP");
    wait_for("the refusal", Duration::from_secs(10), || {
        governor.status()["status"]["reload_error"]
            .as_str()
            .filter(|e| e.contains("disk.high"))
            .map(|_| ())
    });
    assert_eq!(governor.status()["status"]["high"], "75%");
    assert!(governor.log().contains("config reload refused"));

    // `dockgc trigger` asks the running governor for a cycle.
    let cycles = governor.cycles();
    let out = governor.dockgc(&["trigger"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    governor.wait("the triggered cycle", 10, || {
        (governor.cycles() > cycles).then_some(())
    });
    assert_eq!(governor.status()["cycles"][0]["trigger"], "manual");

    // The engine goes away and comes back: the governor says so and reconnects.
    engine.stop();
    wait_for(
        "the governor to see the engine down",
        Duration::from_secs(20),
        || (governor.status()["status"]["engine"] == "down").then_some(()),
    );
    engine.start_dockerd();
    wait_for("the governor to reconnect", Duration::from_secs(40), || {
        (governor.status()["status"]["engine"] == "up").then_some(())
    });
    // The next crossing is handled: fill past 75 % until a cycle runs, then wait for 60 %.
    let cycles = governor.cycles();
    let mut n = 10;
    while governor.cycles() == cycles {
        load(
            &engine,
            &(n..n + 10)
                .map(|n| env_image(&base, n, 8))
                .collect::<Vec<_>>(),
        );
        n += 10;
        assert!(n < 200, "no cycle ran: {}", governor.log());
    }
    governor.wait("usage back under low after the engine restart", 15, || {
        (used_percent(&engine) <= 60.0).then_some(())
    });
    governor.stop();

    // A scheduled run missed while stopped is made up once at start. WATERMARKS schedules
    // 03:00 on January 1st; pretend the last scheduled run was in 2025.
    std::fs::write(&governor.config, WATERMARKS).unwrap();
    let conn = rusqlite::Connection::open(governor.state.join("dockgc.db")).unwrap();
    conn.execute(
        "UPDATE meta SET value = '1735700000' WHERE key = 'last_schedule'",
        [],
    )
    .unwrap();
    drop(conn);
    governor.restart();
    governor.wait("the made-up scheduled cycle", 15, || {
        let cycles = governor.status()["cycles"].clone();
        cycles
            .as_array()?
            .iter()
            .any(|c| c["trigger"] == "schedule")
            .then_some(())
    });
    governor.stop();
    // Once: after it, the schedule is up to date and a restart makes up nothing.
    let scheduled = |g: &Governor| {
        g.status()["cycles"].as_array().map_or(0, |c| {
            c.iter().filter(|c| c["trigger"] == "schedule").count()
        })
    };
    let before = scheduled(&governor);
    governor.restart();
    governor.wait("a status of the new process", 10, || {
        governor.status()["running"].as_bool().filter(|r| *r)
    });
    assert_eq!(scheduled(&governor), before);
    governor.stop();
}
