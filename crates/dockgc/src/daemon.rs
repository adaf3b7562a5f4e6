//! `dockgc run`: the governor. One task owns the state and runs one cycle at a time; the
//! watermark monitor, cron schedules, the engine's event stream, signals and `dockgc trigger`
//! all feed it through one channel, and what arrives together is coalesced into one cycle.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use dockgc_core::model::{format_bytes, Filesystem, Snapshot};
use dockgc_core::{History, Policy, Request};
use dockgc_docker::engine::EngineEvent;
use dockgc_docker::{Endpoint, Engine};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{self, Config};
use crate::executor::{self, Limits, Outcome, RunStatus, StepResult};
use crate::metrics::Metrics;
use crate::notify::{Notice, NoticeKind, Notifier};
use crate::schedule::Schedules;
use crate::store::{Cycle, DbAudit, Store};

/// What set a cycle off. When several arrive together the strongest names the cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// An image arrived (pull, load, import, build): usage is checked at once.
    Arrival,
    /// Usage crossed the high watermark.
    Watermark,
    /// A cron schedule fired (or was missed while stopped).
    Schedule,
    /// `dockgc trigger` or SIGUSR1.
    Manual,
}

/// A message to the governor.
#[derive(Debug)]
pub enum Msg {
    /// Run a cycle (or check the watermark, for arrivals).
    Trigger(Trigger),
    /// An engine event to record in the use history.
    Event(EngineEvent),
    /// The event stream (re)connected: reconcile the history with the engine.
    Connected,
    /// The engine went away.
    Disconnected(String),
    /// Reload the config (SIGHUP).
    Reload,
}

/// Waits for the next message, then takes every message already queued with it: a burst of
/// triggers becomes one cycle.
pub async fn next_batch(rx: &mut mpsc::Receiver<Msg>) -> Option<Vec<Msg>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while let Ok(more) = rx.try_recv() {
        batch.push(more);
    }
    Some(batch)
}

/// Sends `Trigger::Schedule` whenever a schedule fires, until `stop`. Reads the schedules
/// afresh from `schedules` (a reload replaces them).
pub async fn run_schedules(
    mut schedules: watch::Receiver<Schedules>,
    tx: mpsc::Sender<Msg>,
    stop: CancellationToken,
) {
    loop {
        let next = schedules.borrow().next_after(Utc::now());
        let wait = match next {
            Some(at) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
            None => Duration::from_secs(3_600),
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = schedules.changed() => continue,
            _ = tokio::time::sleep(wait) => {
                if next.is_some() && tx.send(Msg::Trigger(Trigger::Schedule)).await.is_err() {
                    return;
                }
                // The same minute must not fire twice.
                tokio::time::sleep(Duration::from_millis(1_100)).await;
            }
        }
    }
}

/// Follows the engine's event stream, reconnecting with exponential backoff, and forwards
/// events. Replays from `cursor` (Unix nanoseconds) after every (re)connect.
pub async fn follow_events(
    endpoint: Endpoint,
    timeout: Duration,
    mut cursor: Option<i64>,
    tx: mpsc::Sender<Msg>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let ended = async {
            let engine = Engine::connect(endpoint.clone(), timeout).await?;
            let mut events = engine.events(cursor).await?;
            let _ = tx.send(Msg::Connected).await;
            backoff = Duration::from_secs(1);
            while let Some(event) = events.next().await? {
                cursor = Some(event.time_nanos);
                if tx.send(Msg::Event(event)).await.is_err() {
                    break;
                }
            }
            Ok::<_, dockgc_docker::Error>(())
        };
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            r = ended => match r {
                Ok(()) => "the engine closed the event stream".to_string(),
                Err(e) => e.to_string(),
            },
        };
        if tx.send(Msg::Disconnected(why)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// What `dockgc status` shows of a running governor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// Process ID.
    pub pid: u32,
    /// Start (Unix seconds).
    pub started: i64,
    /// Last status update (Unix seconds).
    pub updated: i64,
    /// The engine endpoint.
    pub endpoint: String,
    /// `up` or `down`.
    pub engine: String,
    /// Why the engine is down.
    pub engine_error: Option<String>,
    /// The Docker filesystem at the last check.
    pub filesystem: Option<Filesystem>,
    /// The watermarks.
    pub high: String,
    /// Low watermark.
    pub low: String,
    /// The next scheduled routine cycle (Unix seconds).
    pub next_schedule: Option<i64>,
    /// The config file in force.
    pub config: Option<String>,
    /// The last reload's error, if the new config was refused.
    pub reload_error: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[serde(default)]
    pub listen: Option<String>,
    /// The engine time (Unix nanoseconds) of the newest engine event the governor has
    /// handled, with any cycle it started: how far behind the engine it is.
    #[serde(default)]
    pub events_handled: Option<i64>,
}

/// Settings of `dockgc run`.
pub struct Options {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The config file, if any.
    pub config_path: Option<PathBuf>,
    /// The engine endpoint.
    pub endpoint: Endpoint,
    /// Engine request timeout.
    pub timeout: Duration,
    /// Deletions in flight at once.
    pub parallel: usize,
    /// `--listen`: overrides `metrics.listen` (`Some(None)`: serve nothing).
    pub listen: Option<Option<std::net::SocketAddr>>,
}

/// Failed deletions announced one by one per cycle; the rest are summed up in one notice.
const FAILURE_NOTICES: usize = 10;

struct Governor {
    options: Options,
    config: Config,
    config_path: Option<PathBuf>,
    store: Store,
    engine: Option<Engine>,
    status: Status,
    schedules: watch::Sender<Schedules>,
    stop: CancellationToken,
    /// After a cycle that could not reach its target: the usage then, so the monitor does not
    /// run the same futile cycle every few seconds.
    stuck_at: Option<(u64, std::time::Instant)>,
    /// Usage crossed high and is not back under low yet.
    pressure: bool,
    /// What `/metrics` shows.
    metrics: Arc<Metrics>,
    /// Where notices go.
    notifier: Notifier,
    /// An `engine_down` notice went out and no `engine_up` since.
    announced_down: bool,
}

/// A cycle's record with what it did step by step.
struct Ended {
    cycle: Cycle,
    results: Vec<StepResult>,
    /// The audit trail's run, when the cycle deleted anything.
    run: Option<String>,
}

fn now() -> i64 {
    Utc::now().timestamp()
}

fn log(message: &str) {
    tracing::info!("{message}");
}

fn warn(message: &str) {
    tracing::warn!("{message}");
}

/// Runs the governor until `stop` is cancelled (SIGTERM, SIGINT).
pub async fn run(options: Options, stop: CancellationToken) -> Result<()> {
    let (config, config_path) = config::load(options.config_path.as_deref())?;
    let store = Store::open(&options.state_dir)?;
    let metrics = Arc::new(Metrics::new());
    let listen = options.listen.unwrap_or(config.listen);
    let (http, listen) = match listen {
        Some(addr) => {
            let (thread, bound) = crate::http::start(addr, Arc::clone(&metrics), stop.clone())?;
            tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
            (Some(thread), Some(bound.to_string()))
        }
        None => (None, None),
    };
    let notifier = Notifier::start(&config.webhooks, Arc::clone(&metrics), &stop);
    let schedules = Schedules::new(&config.schedule.cron);
    let (schedules_tx, schedules_rx) = watch::channel(schedules);
    let mut governor = Governor {
        status: Status {
            pid: std::process::id(),
            started: now(),
            endpoint: options.endpoint.to_string(),
            engine: "down".into(),
            config: config_path.as_ref().map(|p| p.display().to_string()),
            listen,
            ..Status::default()
        },
        config,
        config_path,
        options,
        store,
        engine: None,
        schedules: schedules_tx,
        stop: stop.clone(),
        stuck_at: None,
        pressure: false,
        metrics,
        notifier,
        announced_down: false,
    };
    governor
        .store
        .set_meta("pid", &std::process::id().to_string())?;
    let (tx, mut rx) = mpsc::channel::<Msg>(4_096);
    let cursor = governor
        .store
        .meta("event_cursor")?
        .and_then(|c| c.parse().ok());
    tokio::spawn(follow_events(
        governor.options.endpoint.clone(),
        governor.options.timeout,
        cursor,
        tx.clone(),
        stop.clone(),
    ));
    tokio::spawn(run_schedules(schedules_rx, tx.clone(), stop.clone()));
    tokio::spawn(forward_signals(tx.clone(), stop.clone()));

    // A scheduled run missed while stopped is made up once, now.
    let last = governor
        .store
        .meta("last_schedule")?
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(|t| DateTime::from_timestamp(t, 0));
    if let Some(last) = last {
        if governor.schedules.borrow().missed(last, Utc::now()) {
            log("making up a scheduled cycle missed while stopped");
            let _ = tx.send(Msg::Trigger(Trigger::Schedule)).await;
        }
    } else {
        governor
            .store
            .set_meta("last_schedule", &now().to_string())?;
    }
    governor.connect().await;
    governor.reconcile_intents().await;
    governor.write_status();
    notify_systemd("READY=1");
    log(&format!(
        "governing {} (state in {})",
        governor.status.endpoint,
        governor.store.path().display()
    ));

    let mut ticker = tokio::time::interval(governor.config.schedule.check_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {
                governor.check_watermark(None).await;
                notify_systemd("WATCHDOG=1");
            }
            batch = next_batch(&mut rx) => {
                let Some(batch) = batch else { break };
                let mut trigger = None;
                let mut handled = None;
                for msg in batch {
                    match msg {
                        Msg::Trigger(t) => trigger = trigger.max(Some(t)),
                        Msg::Event(e) => {
                            handled = Some(e.time_nanos);
                            if governor.record_event(&e).await {
                                trigger = trigger.max(Some(Trigger::Arrival));
                            }
                        }
                        Msg::Connected => governor.on_connected().await,
                        Msg::Disconnected(why) => governor.on_disconnected(why),
                        Msg::Reload => {
                            governor.reload();
                            ticker = tokio::time::interval(governor.config.schedule.check_every);
                            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                    }
                }
                match trigger {
                    Some(Trigger::Arrival) => governor.check_watermark(Some(Trigger::Arrival)).await,
                    Some(t) => governor.cycle(t).await,
                    None => {}
                }
                // Only now: the batch's events are handled once the cycle they started ended.
                if handled.is_some() {
                    governor.status.events_handled = handled;
                }
            }
        }
        governor.write_status();
    }
    log("stopped");
    notify_systemd("STOPPING=1");
    if let Some(thread) = http {
        // The server stops on the same token; a panic there is already logged.
        let _ = thread.join();
    }
    Ok(())
}

async fn forward_signals(tx: mpsc::Sender<Msg>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut usr1), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn("cannot install signal handlers");
        return;
    };
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup.recv() => Msg::Reload,
            _ = usr1.recv() => Msg::Trigger(Trigger::Manual),
            _ = term.recv() => { stop.cancel(); return }
            _ = int.recv() => { stop.cancel(); return }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// Tells systemd (`Type=notify`) about readiness and liveness, when it runs us.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = match path.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        }
        None => socket.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        warn(&format!("cannot notify systemd: {e}"));
    }
}

impl Governor {
    async fn connect(&mut self) -> Option<&Engine> {
        if self.engine.is_none() {
            match Engine::connect(self.options.endpoint.clone(), self.options.timeout).await {
                Ok(engine) => {
                    self.status.engine = "up".into();
                    self.status.engine_error = None;
                    self.engine = Some(engine);
                    self.metrics.set_engine_up(true);
                    if self.announced_down {
                        self.announced_down = false;
                        self.notifier.notify(&Notice {
                            kind: NoticeKind::EngineUp,
                            summary: format!(
                                "the Docker engine at {} answers again",
                                self.status.endpoint
                            ),
                            data: serde_json::json!({ "endpoint": self.status.endpoint }),
                        });
                    }
                }
                Err(e) => self.on_disconnected(e.to_string()),
            }
        }
        self.engine.as_ref()
    }

    fn on_disconnected(&mut self, why: String) {
        if self.status.engine != "down" || self.status.engine_error.as_deref() != Some(&why) {
            warn(&format!("engine down: {why}"));
        }
        self.metrics.set_engine_up(false);
        if !self.announced_down {
            self.announced_down = true;
            self.notifier.notify(&Notice {
                kind: NoticeKind::EngineDown,
                summary: format!(
                    "the Docker engine at {} does not answer: {why}",
                    self.status.endpoint
                ),
                data: serde_json::json!({ "endpoint": self.status.endpoint, "error": why }),
            });
        }
        self.status.engine = "down".into();
        self.status.engine_error = Some(why);
        self.engine = None;
    }

    async fn on_connected(&mut self) {
        if self.connect().await.is_none() {
            return;
        }
        log("engine up; reconciling the use history");
        match self.reconcile_history().await {
            Ok(s) => log(&format!(
                "use history reconciled ({} images)",
                s.images.len()
            )),
            Err(e) => warn(&format!(
                "reconciling the use history failed (will retry): {e:#}"
            )),
        }
        self.check_watermark(None).await;
    }

    /// Merges what the engine knows (containers' times, image arrivals) into the history, so
    /// a gap in the event stream never makes a used image look unused.
    async fn reconcile_history(&mut self) -> Result<Snapshot> {
        let engine = self.engine.as_ref().context("engine down")?;
        let snapshot = engine.snapshot(now()).await?;
        let existing: Vec<String> = snapshot.images.iter().map(|i| i.id.clone()).collect();
        let backfilled = History::backfill(&snapshot);
        self.store.merge_history(&backfilled, &existing)?;
        self.metrics
            .observe_usage(&dockgc_core::usage(&snapshot, &backfilled));
        Ok(snapshot)
    }

    /// Records one event in the history. Returns whether an image arrived.
    async fn record_event(&mut self, event: &EngineEvent) -> bool {
        let Some(engine) = self.engine.as_ref() else {
            return false;
        };
        let at = event.time_nanos / 1_000_000_000;
        let (image, arrival) = match (event.kind.as_str(), event.action.as_str()) {
            ("container", "create" | "start" | "exec_start" | "die" | "restart") => {
                let id = match engine.container_image(&event.id).await {
                    Ok(Some(id)) => Some(id),
                    // Gone already (a short job): the image reference it named.
                    _ => match &event.image {
                        Some(r) => engine.inspect_image(r).await.ok().flatten().map(|i| i.id),
                        None => None,
                    },
                };
                (id, false)
            }
            ("image", "pull" | "load" | "import" | "tag" | "push") => {
                let id = engine
                    .inspect_image(&event.id)
                    .await
                    .ok()
                    .flatten()
                    .map(|i| i.id);
                (id, event.action != "push")
            }
            _ => (None, false),
        };
        if let Some(id) = image {
            if let Err(e) = self.store.record_use(&id, at, Some(at)) {
                warn(&format!(
                    "cannot record the use of {id} (will reconcile later): {e:#}"
                ));
            }
        }
        if let Err(e) = self
            .store
            .set_meta("event_cursor", &event.time_nanos.to_string())
        {
            warn(&format!("cannot save the event cursor: {e:#}"));
        }
        arrival
    }

    /// Closes intents a crashed run left open: each is checked against the engine.
    async fn reconcile_intents(&mut self) {
        let open = match self.store.open_intents() {
            Ok(open) => open,
            Err(e) => return warn(&format!("cannot read the audit trail: {e:#}")),
        };
        for (run, seq, record) in open {
            let detail = match (&record.event, self.engine.as_ref()) {
                (crate::audit::Event::Intent { kind, id, .. }, Some(engine)) if kind == "image" => {
                    match engine.inspect_image(id).await {
                        Ok(None) => "interrupted; the image is gone".to_string(),
                        Ok(Some(_)) => "interrupted; the image is still there".to_string(),
                        Err(e) => format!("interrupted; cannot check: {e}"),
                    }
                }
                _ => crate::audit::NO_OUTCOME.to_string(),
            };
            let outcome = crate::audit::Record::interrupted(run, seq, &detail);
            if let Err(e) = self.store.append(&outcome) {
                warn(&format!("cannot close an interrupted intent: {e:#}"));
            }
        }
    }

    fn reload(&mut self) {
        match config::load(
            self.config_path
                .as_deref()
                .or(self.options.config_path.as_deref()),
        ) {
            Ok((config, path)) => {
                log("config reloaded");
                self.metrics.set_config_reload_ok(true);
                if config.listen != self.config.listen {
                    warn("`metrics.listen` changed: it takes effect at the next start");
                }
                if config.webhooks != self.config.webhooks {
                    self.notifier =
                        Notifier::start(&config.webhooks, Arc::clone(&self.metrics), &self.stop);
                }
                let _ = self.schedules.send(Schedules::new(&config.schedule.cron));
                self.config = config;
                self.config_path = path;
                self.status.reload_error = None;
            }
            Err(e) => {
                self.metrics.set_config_reload_ok(false);
                warn(&format!("config reload refused, keeping the old one: {e}"));
                self.status.reload_error = Some(e.to_string());
            }
        }
    }

    /// Measures the disk; runs a cycle when it is above `high` (or `trigger` says so).
    async fn check_watermark(&mut self, trigger: Option<Trigger>) {
        let Some(engine) = self.connect().await else {
            return;
        };
        let Some(fs) = engine.filesystem_as_is() else {
            return;
        };
        self.status.filesystem = Some(fs);
        self.metrics
            .observe_filesystem(&fs, &self.config.policy, now());
        let disk = &self.config.policy.disk;
        let over_high = fs.used_bytes > disk.high.used_bytes_on(&fs)
            || fs.used_inodes_percent() > disk.inodes_high;
        let over_low = fs.used_bytes > disk.low.used_bytes_on(&fs)
            || fs.used_inodes_percent() > disk.inodes_low;
        // Hysteresis: pressure starts above high and lasts until usage is back under low, so
        // data arriving during a cycle does not leave the disk between the two.
        self.pressure = (self.pressure || over_high) && over_low;
        self.metrics.set_pressure(self.pressure);
        if !self.pressure {
            self.stuck_at = None;
            return;
        }
        if let Some((used, since)) = self.stuck_at {
            // Nothing changed since a cycle that could not reach the target: wait.
            let changed = used.abs_diff(fs.used_bytes) > fs.capacity_bytes() / 100;
            if !changed && since.elapsed() < Duration::from_secs(300) {
                return;
            }
        }
        self.cycle(
            trigger
                .unwrap_or(Trigger::Watermark)
                .max(Trigger::Watermark),
        )
        .await;
    }

    async fn cycle(&mut self, trigger: Trigger) {
        let started = now();
        let clock = std::time::Instant::now();
        self.metrics.set_cycle_in_progress(true);
        // `dockgc status` shows the engine and disk as this cycle found them.
        self.write_status();
        let result = self.run_cycle(trigger).await;
        self.metrics.set_cycle_in_progress(false);
        let ended = match result {
            Ok(ended) => ended,
            Err(e) => {
                warn(&format!("cycle failed: {e:#}"));
                if e.downcast_ref::<dockgc_docker::Error>()
                    .is_some_and(|e| matches!(e, dockgc_docker::Error::Unreachable { .. }))
                {
                    self.on_disconnected(e.to_string());
                }
                Ended {
                    cycle: Cycle {
                        id: 0,
                        started,
                        finished: now(),
                        trigger: trigger_name(trigger),
                        status: "error".into(),
                        planned_disk_bytes: 0,
                        freed_disk_bytes: None,
                        removed: 0,
                        failed: 0,
                        message: format!("{e:#}"),
                    },
                    results: Vec::new(),
                    run: None,
                }
            }
        };
        if trigger == Trigger::Schedule {
            if let Err(e) = self.store.set_meta("last_schedule", &now().to_string()) {
                warn(&format!("cannot record the schedule: {e:#}"));
            }
        }
        let seconds = clock.elapsed().as_secs_f64();
        self.observe(&ended, seconds);
        if let Err(e) = self.store.record_cycle(&ended.cycle) {
            self.metrics.set_store_writable(false);
            warn(&format!("cannot record the cycle: {e:#}"));
        }
        if ended.cycle.removed > 0 {
            // The classes' figures changed: one more snapshot, so /metrics shows them.
            if let Err(e) = self.reconcile_history().await {
                warn(&format!(
                    "cannot refresh the figures after the cycle: {e:#}"
                ));
            }
        }
    }

    /// Logs, counts and announces what a cycle did.
    fn observe(&mut self, ended: &Ended, seconds: f64) {
        let cycle = &ended.cycle;
        tracing::info!(
            run = ended.run.as_deref().unwrap_or(""),
            trigger = %cycle.trigger,
            status = %cycle.status,
            removed = cycle.removed,
            failed = cycle.failed,
            planned_disk_bytes = cycle.planned_disk_bytes,
            freed_disk_bytes = cycle.freed_disk_bytes,
            duration_seconds = seconds,
            "cycle ({}): {}",
            cycle.trigger,
            cycle.message
        );
        self.metrics.observe_cycle(cycle, seconds);
        for result in &ended.results {
            self.metrics.observe_step(result);
        }
        let data = serde_json::json!({
            "run": ended.run,
            "trigger": cycle.trigger,
            "status": cycle.status,
            "removed": cycle.removed,
            "failed": cycle.failed,
            "planned_disk_bytes": cycle.planned_disk_bytes,
            "freed_disk_bytes": cycle.freed_disk_bytes,
            "duration_seconds": seconds,
            "filesystem": self.status.filesystem,
            "message": cycle.message,
        });
        if cycle.removed > 0 {
            self.notifier.notify(&Notice {
                kind: NoticeKind::CycleCompleted,
                summary: format!("cycle ({}): {}", cycle.trigger, cycle.message),
                data: data.clone(),
            });
        }
        if cycle.status == "target_not_reached" {
            self.notifier.notify(&Notice {
                kind: NoticeKind::TargetUnreachable,
                summary: format!(
                    "cannot bring the disk under the target within the policy: {}",
                    cycle.message
                ),
                data,
            });
        }
        let failed: Vec<&StepResult> = ended
            .results
            .iter()
            .filter(|r| r.outcome == Outcome::Failed)
            .collect();
        for result in failed.iter().take(FAILURE_NOTICES) {
            self.notifier.notify(&Notice {
                kind: NoticeKind::DeletionFailed,
                summary: format!(
                    "cannot delete {} {}: {}",
                    result.step.kind,
                    result.step.name,
                    result.detail.as_deref().unwrap_or("unknown error")
                ),
                data: serde_json::json!({
                    "run": ended.run,
                    "kind": result.step.kind.to_string(),
                    "id": result.step.id,
                    "name": result.step.name,
                    "reason": result.step.reason,
                    "cause": result.cause,
                    "detail": result.detail,
                }),
            });
        }
        if failed.len() > FAILURE_NOTICES {
            self.notifier.notify(&Notice {
                kind: NoticeKind::DeletionFailed,
                summary: format!(
                    "{} more deletions failed in this cycle (see `dockgc log`)",
                    failed.len() - FAILURE_NOTICES
                ),
                data: serde_json::json!({ "run": ended.run, "more": failed.len() - FAILURE_NOTICES }),
            });
        }
    }

    async fn run_cycle(&mut self, trigger: Trigger) -> Result<Ended> {
        let started = now();
        if self.connect().await.is_none() {
            anyhow::bail!("engine down");
        }
        let snapshot = self.reconcile_history().await?;
        // Read once: this cycle's plan and any re-plan of it complete the same stored history.
        let stored = self.store.history().unwrap_or_else(|e| {
            warn(&format!("cannot read the use history: {e:#}"));
            History::default()
        });
        let history = History::backfill_with(&snapshot, &stored);
        let policy: Policy = self.config.policy.clone();
        // Under pressure between the watermarks, the plan still frees down to low.
        let request = match (self.pressure, snapshot.filesystem) {
            (true, Some(fs)) => Request {
                goal: dockgc_core::Goal::FreeBytes(
                    fs.used_bytes
                        .saturating_sub(policy.disk.low.used_bytes_on(&fs)),
                ),
                ..Request::default()
            },
            _ => Request::default(),
        };
        let plan = dockgc_core::plan(&snapshot, &history, &policy, &request);
        let planned = plan.reclaim_disk_bytes;
        if plan.steps.is_empty() {
            let cycle = Cycle {
                id: 0,
                started,
                finished: now(),
                trigger: trigger_name(trigger),
                status: match plan.target_status {
                    dockgc_core::plan::TargetStatus::Unreachable { .. } => {
                        "target_not_reached".into()
                    }
                    _ => "done".into(),
                },
                planned_disk_bytes: 0,
                freed_disk_bytes: Some(0),
                removed: 0,
                failed: 0,
                message: "nothing to delete".into(),
            };
            return Ok(Ended {
                cycle,
                results: Vec::new(),
                run: None,
            });
        }
        let run = format!(
            "{}-{}",
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
            std::process::id()
        );
        let engine = self.engine.as_ref().context("engine down")?;
        let history_of = move |s: &Snapshot| History::backfill_with(s, &stored);
        let span = tracing::info_span!("run", run = %run);
        let mut audit = DbAudit::new(&mut self.store, run.clone());
        let done = executor::execute(
            executor::Job {
                engine,
                policy: &policy,
                plan: &plan,
                snapshot: &snapshot,
                request: &request,
                replan: true,
                history: &history_of,
            },
            &mut audit,
            Limits {
                max_deletions: None,
                max_bytes: None,
                parallel: self.options.parallel,
            },
            None,
            Some(self.stop.clone()),
        )
        .instrument(span)
        .await?;
        drop(audit);
        let failed = done.report.count(Outcome::Failed) as u64;
        let removed = done.report.count(Outcome::Removed) as u64;
        // Short of the target, or a deletion failed: the same cycle is not repeated every few
        // seconds (with the same failing deletion and notice each time) until usage moves.
        if done.status != RunStatus::Done && self.pressure {
            if let Some(after) = done.after {
                self.stuck_at = Some((after.used_bytes, std::time::Instant::now()));
            }
        }
        // Back under low: the pressure episode is over. Without this, the next arrival would
        // find usage a little above low and start another cycle, holding the disk at low
        // instead of letting it rise to high again.
        if done.status == RunStatus::Done {
            if let Some(after) = done.after {
                if after.used_bytes <= policy.disk.low.used_bytes_on(&after) {
                    self.pressure = false;
                    self.metrics.set_pressure(false);
                }
            }
        }
        if let Some(why) = &done.report.aborted {
            self.on_disconnected(why.clone());
        }
        let cycle = Cycle {
            id: 0,
            started,
            finished: now(),
            trigger: trigger_name(trigger),
            status: serde_json::to_value(done.status)?
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            planned_disk_bytes: planned,
            freed_disk_bytes: done.freed_disk_bytes,
            removed,
            failed,
            message: format!(
                "removed {removed}, failed {failed}, freed {} (planned {}){}",
                done.freed_disk_bytes.map_or("?".into(), format_bytes),
                format_bytes(planned),
                done.after.map_or(String::new(), |a| format!(
                    ", disk now {:.1}% used",
                    a.used_percent()
                ))
            ),
        };
        Ok(Ended {
            cycle,
            results: done.report.results,
            run: Some(run),
        })
    }

    fn write_status(&mut self) {
        let disk = &self.config.policy.disk;
        self.status.high = disk.high.to_string();
        self.status.low = disk.low.to_string();
        self.status.updated = now();
        self.status.next_schedule = self
            .schedules
            .borrow()
            .next_after(Utc::now())
            .map(|t| t.timestamp());
        let result = serde_json::to_string(&self.status)
            .map_err(anyhow::Error::from)
            .and_then(|s| self.store.set_meta("status", &s));
        self.metrics.set_store_writable(result.is_ok());
        if let Err(e) = result {
            warn(&format!("cannot write the status (will retry): {e:#}"));
        }
    }
}

fn trigger_name(t: Trigger) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_triggers_is_one_batch() {
        let (tx, mut rx) = mpsc::channel(64);
        for _ in 0..20 {
            tx.send(Msg::Trigger(Trigger::Arrival)).await.unwrap();
        }
        tx.send(Msg::Trigger(Trigger::Manual)).await.unwrap();
        let batch = next_batch(&mut rx).await.unwrap();
        assert_eq!(batch.len(), 21);
        let strongest = batch
            .iter()
            .filter_map(|m| match m {
                Msg::Trigger(t) => Some(*t),
                _ => None,
            })
            .max();
        assert_eq!(strongest, Some(Trigger::Manual));
        // Nothing left: the next batch waits for a new message.
        let waited = tokio::time::timeout(Duration::from_secs(3600), next_batch(&mut rx)).await;
        assert!(waited.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn schedules_fire_on_time_and_stop_on_cancel() {
        // Every minute: within two simulated minutes at least one fire, each after a sleep.
        let (tx, mut rx) = mpsc::channel(64);
        let (_sched_tx, sched_rx) = watch::channel(Schedules::new(&["* * * * *".into()]));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_schedules(sched_rx, tx, stop.clone()));
        let fired = tokio::time::timeout(Duration::from_secs(61), rx.recv()).await;
        assert!(matches!(fired, Ok(Some(Msg::Trigger(Trigger::Schedule)))));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
