//! Replays a trace against a real engine, compressed in time, while a policy under test runs
//! beside it (or, for the nightly prunes, is run by the replay at each simulated 02:00).
//! Measures what `dockgc simulate` predicts: misses, bytes re-loaded, disk-full failures,
//! peak and mean usage, deletions.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dockgc_core::simulate::Outcome;
use dockgc_core::trace::{Event, Trace};
use dockgc_docker::endpoint::parse_host;
use dockgc_docker::engine::Engine;
use dockgc_docker::host::{measure_filesystem, Freshness};
use dockgc_docker::workload::NewContainer;
use serde::{Deserialize, Serialize};

use crate::settle::{PeerLog, Policy, Settle};
use crate::synth::{layer_dir, one_file_tar, Workshop};

/// Where and how to replay (the command line of `dockgc-bench replay`).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The engine (`unix:///…/d.sock`).
    #[arg(long)]
    pub host: String,
    /// The engine's data root: the capacity-limited filesystem.
    #[arg(long)]
    pub root: PathBuf,
    /// Real seconds per simulated day.
    #[arg(long, default_value_t = 60.0)]
    pub day_seconds: f64,
    /// A shell command to run at every simulated 02:00 (a cron job's prune, or
    /// `dockgc trigger`).
    #[arg(long)]
    pub nightly: Option<String>,
    /// docuum's log (at `LOG_LEVEL=trace`) when docuum is the policy under test: after each
    /// event the clock stands still until docuum has handled it, and while docuum restarts
    /// (its 5 s pause would be hours of simulated blindness).
    #[arg(long, conflicts_with = "dockgc_state")]
    pub docuum_log: Option<PathBuf>,
    /// dockgc's state directory when `dockgc run` is the policy under test: after each event
    /// the clock stands still until `dockgc status` says it has handled it.
    #[arg(long)]
    pub dockgc_state: Option<PathBuf>,
    /// The dockgc binary for `--dockgc-state` (default: beside this program).
    #[arg(long)]
    pub dockgc: Option<PathBuf>,
    /// Name of the policy under test, for the report.
    #[arg(long)]
    pub policy: String,
}

/// What a replay measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replay {
    /// The same figures `dockgc simulate` reports.
    pub outcome: Outcome,
    /// Real seconds per simulated day.
    pub day_seconds: f64,
    /// Wall time of the replay.
    pub wall_seconds: f64,
    /// Longest time an event ran behind its schedule (real seconds).
    pub max_lag_seconds: f64,
    /// Engine calls that failed for another reason than a full disk.
    pub errors: u64,
    /// The first few of them.
    pub first_errors: Vec<String>,
    /// Leftover containers not created because their image was already gone.
    pub leftovers_skipped: u64,
    /// Real seconds spent loading images (builds and re-loads).
    pub load_seconds: f64,
    /// Real seconds spent running jobs (container create and remove, misses excluded).
    pub job_seconds: f64,
    /// Times the peer restarted during the replay (its clock stood still meanwhile).
    pub peer_restarts: u64,
    /// Real seconds the clock stood still for them.
    pub paused_seconds: f64,
    /// Real seconds the clock stood still while the policy caught up with the events.
    #[serde(default)]
    pub settle_seconds: f64,
    /// Times the policy did not catch up within two minutes (the replay went on).
    #[serde(default)]
    pub settle_timeouts: u64,
}

/// The replay's clock: real time since the start, minus the time it stood still while the
/// peer under test was restarting.
#[derive(Debug)]
struct Clock {
    start: Mutex<Instant>,
    paused: std::sync::atomic::AtomicBool,
}

impl Clock {
    fn start(&self) -> Instant {
        *self.start.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulated seconds since the start.
    fn now(&self, speed: f64) -> i64 {
        (self.start().elapsed().as_secs_f64() * speed) as i64
    }

    fn shift(&self, by: Duration) {
        *self.start.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }

    /// Runs `work` with the clock standing still; returns for how long it stood.
    async fn stand_still<T>(&self, work: impl std::future::Future<Output = T>) -> (T, Duration) {
        let began = Instant::now();
        self.paused.store(true, Ordering::Relaxed);
        let out = work.await;
        let stood = began.elapsed();
        self.shift(stood);
        self.paused.store(false, Ordering::Relaxed);
        (out, stood)
    }
}

#[derive(Default)]
struct Disk {
    peak: u64,
    area: f64,
    seconds: f64,
    series: Vec<(i64, u64)>,
}

fn is_full(e: &dockgc_docker::Error) -> bool {
    e.to_string().contains("no space left on device")
}

struct Run {
    engine: Engine,
    root: PathBuf,
    workshop: Workshop,
    /// Trace image → engine ID; tag → trace image owning it.
    ids: HashMap<String, String>,
    tags: HashMap<String, String>,
    out: Outcome,
    errors: u64,
    first_errors: Vec<String>,
    leftovers: HashSet<String>,
    leftovers_skipped: u64,
    volumes_made: u64,
    seq: u64,
    /// The reference the last job used (volume leftovers are made from it).
    last_image: Option<String>,
    created: String,
    load_seconds: f64,
    job_seconds: f64,
}

impl Run {
    fn error(&mut self, what: &str, e: &dockgc_docker::Error) {
        if is_full(e) {
            self.out.disk_full += 1;
        } else {
            self.errors += 1;
            if self.first_errors.len() < 10 {
                self.first_errors.push(format!("{what}: {e}"));
            }
        }
    }

    /// Loads trace image `image` (only the layers the engine lacks). Returns the trace bytes
    /// carried, or `None` if the load failed.
    async fn load(
        &mut self,
        image: &str,
        tag: &str,
        layers: &[dockgc_core::trace::TraceLayer],
    ) -> Option<u64> {
        let made = self.workshop.image(image, layers, &self.created);
        let owns_tag = !tag.is_empty() && self.tags.get(tag).map(String::as_str) == Some(image);
        let root = self.root.clone();
        let (tar, carried) = self
            .workshop
            .archive(&made, owns_tag.then_some(tag), |chain| {
                layer_dir(&root, chain).exists()
            });
        let started = Instant::now();
        let mut result = self.engine.load_archive(tar).await;
        if result.is_err() && carried < layers.iter().map(|l| l.bytes).sum::<u64>() {
            // A layer vanished between the check and the load: carry every layer.
            let (tar, _) = self
                .workshop
                .archive(&made, owns_tag.then_some(tag), |_| false);
            result = self.engine.load_archive(tar).await;
        }
        self.load_seconds += started.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                self.ids.insert(image.to_string(), made.id);
                Some(carried)
            }
            Err(e) => {
                self.error(&format!("load {image}"), &e);
                None
            }
        }
    }

    async fn apply(&mut self, event: &Event) {
        self.created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match event {
            Event::Build {
                image, tag, layers, ..
            } => {
                if !tag.is_empty() {
                    self.tags.insert(tag.clone(), image.clone());
                }
                self.load(image, tag, layers).await;
            }
            Event::Use { image, tag, .. } => self.use_image(image, tag).await,
            Event::Container {
                id, image, bytes, ..
            } => self.leftover(id, image, *bytes).await,
            Event::Volume { id, bytes, .. } => self.volume(id, *bytes).await,
        }
    }

    /// How a job names trace image `image`: its tag while it holds one (what CI jobs do, and
    /// what keeps a peer that resolves references later from chasing a deleted ID), else its ID.
    fn reference(&self, image: &str) -> Option<String> {
        let id = self.ids.get(image)?;
        Some(
            self.tags
                .iter()
                .find(|(_, owner)| owner.as_str() == image)
                .map_or_else(|| id.clone(), |(tag, _)| tag.clone()),
        )
    }

    async fn present(&self, image: &str) -> bool {
        match self.ids.get(image) {
            Some(id) => matches!(self.engine.inspect_image(id).await, Ok(Some(_))),
            None => false,
        }
    }

    async fn use_image(&mut self, image: &str, tag: &str) {
        for attempt in 0..2 {
            if !self.present(image).await {
                self.out.misses += 1;
                // Made at its build (even one that failed for lack of space).
                let Some(layers) = self.workshop.made(image).map(|m| m.layers.clone()) else {
                    return;
                };
                match self.load(image, tag, &layers).await {
                    Some(carried) => self.out.bytes_reloaded += carried,
                    None => return,
                }
            }
            let Some(reference) = self.reference(image) else {
                return;
            };
            self.seq += 1;
            let name = format!("job-{}", self.seq);
            let new = NewContainer {
                name: &name,
                image: &reference,
                volume: None,
                label: None,
            };
            let started = Instant::now();
            match self.engine.create_container(&new).await {
                Ok(cid) => {
                    self.last_image = Some(reference.clone());
                    if let Err(e) = self.engine.remove_container(&cid).await {
                        self.error("remove job container", &e);
                    }
                    self.job_seconds += started.elapsed().as_secs_f64();
                    return;
                }
                // Deleted between the check and the create: a miss after all.
                Err(dockgc_docker::Error::NotFound(_)) if attempt == 0 => continue,
                Err(e) => {
                    self.error("create job container", &e);
                    return;
                }
            }
        }
    }

    /// Creates a container for a leftover; its image may be gone already (then the leftover
    /// is skipped and counted).
    async fn create_leftover(&mut self, new: &NewContainer<'_>, what: &str) -> Option<String> {
        match self.engine.create_container(new).await {
            Ok(cid) => Some(cid),
            Err(dockgc_docker::Error::NotFound(_)) => {
                self.leftovers_skipped += 1;
                None
            }
            Err(e) => {
                self.error(what, &e);
                None
            }
        }
    }

    async fn leftover(&mut self, id: &str, image: &str, bytes: u64) {
        let Some(reference) = self.reference(image) else {
            self.leftovers_skipped += 1;
            return;
        };
        let name = format!("left-{id}");
        let new = NewContainer {
            name: &name,
            image: &reference,
            volume: None,
            label: None,
        };
        let Some(cid) = self
            .create_leftover(&new, "create leftover container")
            .await
        else {
            return;
        };
        self.leftovers.insert(cid.clone());
        let tar = one_file_tar("left", id, bytes);
        if let Err(e) = self.engine.put_archive(&cid, "/", tar).await {
            self.error("write leftover container", &e);
        }
    }

    async fn volume(&mut self, id: &str, bytes: u64) {
        let Some(image) = self.last_image.clone() else {
            self.leftovers_skipped += 1;
            return;
        };
        let name = format!("vol-{id}");
        let new = NewContainer {
            name: &name,
            image: &image,
            volume: Some("/data"),
            label: None,
        };
        let Some(cid) = self.create_leftover(&new, "create volume container").await else {
            return;
        };
        self.volumes_made += 1;
        let tar = one_file_tar("v", id, bytes);
        if let Err(e) = self.engine.put_archive(&cid, "/data", tar).await {
            self.error("write volume", &e);
        }
        if let Err(e) = self.engine.remove_container(&cid).await {
            self.error("remove volume container", &e);
        }
    }
}

/// How many events happen at the trace's first instant.
fn trace_start_events(trace: &Trace) -> usize {
    trace.events.iter().take_while(|e| e.time() == 0).count()
}

/// Writes the trace's "other" bytes as a file on the engine's filesystem, so usage starts
/// where the trace says.
fn write_ballast(root: &Path, other_bytes: u64) -> Result<()> {
    let used = measure_filesystem(root, Freshness::Synced)?.used_bytes;
    let ballast = other_bytes.saturating_sub(used);
    let path = root.join("dockgc-bench-ballast");
    let chunk = vec![0x5au8; 1 << 20];
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let mut left = ballast;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut file, &chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(())
}

/// Replays `trace`; the policy under test must already be running.
pub async fn replay(trace: Trace, setup: Options) -> Result<Replay> {
    let endpoint = parse_host(&setup.host, None, "--host")?;
    let engine = Engine::connect(endpoint.clone(), Duration::from_secs(600)).await?;
    let watcher = Engine::connect(endpoint, Duration::from_secs(600)).await?;
    if setup.day_seconds <= 0.0 {
        bail!("--day-seconds must be positive");
    }
    write_ballast(&setup.root, trace.header.other_bytes)?;
    let speed = 86_400.0 / setup.day_seconds; // simulated seconds per real second

    let deleted = Arc::new(AtomicU64::new(0));
    let mut events = watcher.events(None).await?;
    let counter = deleted.clone();
    let watch = tokio::spawn(async move {
        while let Ok(Some(e)) = events.next().await {
            if e.kind == "image" && e.action == "delete" {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let mut run = Run {
        engine,
        root: setup.root.clone(),
        workshop: Workshop::default(),
        ids: HashMap::new(),
        tags: HashMap::new(),
        out: Outcome {
            policy: setup.policy.clone(),
            ..Outcome::default()
        },
        errors: 0,
        first_errors: Vec::new(),
        leftovers: HashSet::new(),
        leftovers_skipped: 0,
        volumes_made: 0,
        seq: 0,
        last_image: None,
        load_seconds: 0.0,
        job_seconds: 0.0,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    // The trace's first instant (every base and repository arriving at once) is set up
    // before the clock starts, with the policy already watching: replayed on the clock, it
    // would put the replay hours of simulated time behind at once.
    let first = trace_start_events(&trace);
    for event in &trace.events[..first] {
        run.apply(event).await;
    }
    let policy = match (&setup.docuum_log, &setup.dockgc_state) {
        (Some(log), _) => Some(Policy::Docuum(PeerLog::new(log.clone()))),
        (None, Some(state)) => Some(Policy::Dockgc {
            bin: match &setup.dockgc {
                Some(bin) => bin.clone(),
                None => std::env::current_exe()
                    .context("find this program")?
                    .with_file_name("dockgc"),
            },
            state: state.clone(),
        }),
        (None, None) => None,
    };
    let mut settle = match policy {
        Some(policy) => {
            let mut settle = Settle::prepare(&run.engine, &mut run.workshop, policy).await?;
            settle.wait(&run.engine).await?;
            Some(settle)
        }
        None => None,
    };
    let clock = Arc::new(Clock {
        start: Mutex::new(Instant::now()),
        paused: std::sync::atomic::AtomicBool::new(false),
    });
    let wall = Instant::now();
    let disk = Arc::new(Mutex::new(Disk::default()));
    let sampler_clock = clock.clone();
    let sampler_disk = disk.clone();
    let root = setup.root.clone();
    let sampler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last = Instant::now();
        let mut next_sample = 0i64;
        loop {
            tick.tick().await;
            let Ok(fs) = measure_filesystem(&root, Freshness::AsIs) else {
                continue;
            };
            let now = Instant::now();
            let sim = sampler_clock.now(speed);
            let mut d = sampler_disk.lock().unwrap_or_else(|p| p.into_inner());
            let dt = now.duration_since(last).as_secs_f64();
            last = now;
            if sampler_clock.paused.load(Ordering::Relaxed) {
                continue; // the simulated clock stands still
            }
            d.peak = d.peak.max(fs.used_bytes);
            d.area += fs.used_bytes as f64 * dt;
            d.seconds += dt;
            while next_sample <= sim {
                d.series.push((next_sample, fs.used_bytes));
                next_sample += 3_600;
            }
        }
    });

    let mut max_lag: f64 = 0.0;
    let mut paused = Duration::ZERO;
    let mut settled = Duration::ZERO;
    let mut next_nightly: i64 = 2 * 3_600;
    let total = trace.events.len();
    for (n, event) in trace.events.iter().enumerate().skip(first) {
        let t = event.time();
        if let Some(nightly) = &setup.nightly {
            while next_nightly <= t {
                wait_until(&clock, next_nightly, speed).await;
                // A cron job's prune takes seconds of a host's day: the clock stands still.
                let (result, stood) = clock
                    .stand_still(async {
                        run_nightly(nightly).await?;
                        match settle.as_mut() {
                            Some(settle) => settle.wait(&run.engine).await,
                            None => Ok(()),
                        }
                    })
                    .await;
                result?;
                settled += stood;
                next_nightly += 86_400;
            }
        }
        if let Some(peer) = settle.as_mut().and_then(Settle::peer_log) {
            paused += stand_still_while_restarting(&clock, peer).await;
        }
        let lag = wait_until(&clock, t, speed).await;
        max_lag = max_lag.max(lag);
        run.apply(event).await;
        if let Some(settle) = settle.as_mut() {
            let (result, stood) = clock.stand_still(settle.wait(&run.engine)).await;
            result?;
            settled += stood;
        }
        if n % 500 == 0 {
            eprintln!(
                "{}: event {n}/{total}, simulated day {:.1}, misses {}, disk full {}",
                setup.policy,
                t as f64 / 86_400.0,
                run.out.misses,
                run.out.disk_full
            );
        }
    }
    wait_until(&clock, trace.duration(), speed).await;
    // Let the watcher see the last deletions.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sampler.abort();
    watch.abort();
    let now = chrono::Utc::now().timestamp();
    // The policy under test may still be deleting: a snapshot can race with it; try again.
    let mut attempt = 0;
    let snapshot = loop {
        match run.engine.snapshot(now).await {
            Ok(s) => break s,
            Err(e) if attempt < 10 => {
                attempt += 1;
                eprintln!("final snapshot: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let containers_left = snapshot
        .containers
        .iter()
        .filter(|c| run.leftovers.contains(&c.id))
        .count() as u64;
    let volumes_left = snapshot.volumes.len() as u64;
    run.out.others_deleted = (run.leftovers.len() as u64
        - containers_left.min(run.leftovers.len() as u64))
        + run.volumes_made.saturating_sub(volumes_left);
    run.out.images_deleted = deleted.load(Ordering::Relaxed);
    let d = disk.lock().unwrap_or_else(|p| p.into_inner());
    run.out.peak_bytes = d.peak;
    run.out.mean_bytes = if d.seconds > 0.0 {
        (d.area / d.seconds) as u64
    } else {
        0
    };
    run.out.usage = d.series.clone();
    Ok(Replay {
        outcome: run.out,
        day_seconds: setup.day_seconds,
        wall_seconds: wall.elapsed().as_secs_f64(),
        max_lag_seconds: max_lag,
        errors: run.errors,
        first_errors: run.first_errors,
        leftovers_skipped: run.leftovers_skipped,
        load_seconds: run.load_seconds,
        job_seconds: run.job_seconds,
        // The first "Listening" is the start, not a restart.
        peer_restarts: settle
            .as_mut()
            .and_then(Settle::peer_log)
            .map_or(0, |p| p.retries),
        paused_seconds: paused.as_secs_f64(),
        settle_seconds: settled.as_secs_f64(),
        settle_timeouts: settle.as_ref().map_or(0, |s| s.timeouts),
    })
}

/// While the peer restarts, the clock stands still (at most a minute); returns for how long.
async fn stand_still_while_restarting(clock: &Clock, peer: &mut PeerLog) -> Duration {
    if !peer.restarting() {
        return Duration::ZERO;
    }
    let began = Instant::now();
    clock
        .stand_still(async {
            while peer.restarting() && began.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .1
}

/// Sleeps until simulated second `t`; returns how far behind it already was (real seconds).
async fn wait_until(clock: &Clock, t: i64, speed: f64) -> f64 {
    let due = clock.start() + Duration::from_secs_f64(t as f64 / speed);
    let now = Instant::now();
    if due > now {
        tokio::time::sleep_until(due.into()).await;
        0.0
    } else {
        now.duration_since(due).as_secs_f64()
    }
}

async fn run_nightly(command: &str) -> Result<()> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("run `{command}`"))?;
    if !status.success() {
        eprintln!("nightly `{command}` failed: {status}");
    }
    Ok(())
}
