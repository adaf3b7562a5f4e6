//! `dockgc`: keeps Docker hosts from filling their disks, safely.
//!
//! The binary is glue: flags and config in, a snapshot from the engine (or a file), a plan
//! from the pure core, and the executor's safety protocol for deletions.

mod audit;
mod cli;
mod config;
mod daemon;
mod executor;
mod http;
mod inspect;
mod metrics;
mod notify;
mod output;
mod record;
mod schedule;
mod store;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use dockgc_core::model::{format_bytes, Snapshot, SNAPSHOT_VERSION};
use dockgc_core::plan::{Plan, TargetStatus, PLAN_VERSION};
use dockgc_core::{History, Policy, Request, Selection};
use dockgc_docker::{Engine, Environment};
use serde::Serialize;

use crate::cli::{
    Cli, Command, ConfigCommand, Format, GoalArgs, LogFormat, NotifyCommand, PruneArgs, Source,
};
use crate::executor::{Limits, Outcome, Report};

/// How a command ended; maps onto the documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// 0: done (target reached, or no target).
    Done,
    /// 1: the target cannot be reached under the policy.
    TargetNotReached,
    /// 2: an error (also for failed deletions).
    Error,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(match e {
            Exit::Done => 0,
            Exit::TargetNotReached => 1,
            Exit::Error => 2,
        })
    }
}

/// Structured logs on standard error. The governor logs at `info` by default; one-shot commands
/// print their results and only log warnings.
fn start_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_env("DOCKGC_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    start_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dockgc: error: cannot start the async runtime: {e}");
            return Exit::Error.into();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("dockgc: error: {e:#}");
            Exit::Error.into()
        }
    }
}

async fn run(cli: Cli) -> Result<Exit> {
    match &cli.command {
        Command::Config(ConfigCommand::Default) => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(Exit::Done)
        }
        Command::Config(ConfigCommand::Check { file }) => {
            config::load(Some(file))?;
            println!("{}: ok", file.display());
            Ok(Exit::Done)
        }
        Command::Snapshot { output } => {
            let engine = connect(&cli).await?;
            let snapshot = engine.snapshot(now()).await?;
            let json = serde_json::to_string_pretty(&snapshot).context("encoding the snapshot")?;
            match output {
                Some(path) => write_atomically(path, json.as_bytes())?,
                None => println!("{json}"),
            }
            Ok(Exit::Done)
        }
        Command::Df {
            verbose,
            source,
            format,
        } => {
            let policy = config::load(cli.config.as_deref())?.0.policy;
            let snapshot = world(&cli, source).await?;
            let usage = dockgc_core::usage(&snapshot, &History::backfill(&snapshot));
            match format {
                Format::Json => println!("{}", to_json(&usage)?),
                Format::Table => print!("{}", output::usage_table(&usage, &policy, *verbose)),
            }
            Ok(Exit::Done)
        }
        Command::Plan {
            goal,
            source,
            show_skipped,
            format,
        } => {
            let policy = config::load(cli.config.as_deref())?.0.policy;
            let request = request(goal)?;
            let snapshot = world(&cli, source).await?;
            let plan = dockgc_core::plan(&snapshot, &history(&cli, &snapshot)?, &policy, &request);
            match format {
                Format::Json => println!("{}", to_json(&plan)?),
                Format::Table => print!("{}", output::plan_table(&plan, &policy, *show_skipped)),
            }
            Ok(exit_for(&plan))
        }
        Command::Explain {
            reference,
            goal,
            source,
            format,
        } => {
            let policy = config::load(cli.config.as_deref())?.0.policy;
            let request = request(goal)?;
            let snapshot = world(&cli, source).await?;
            let history = history(&cli, &snapshot)?;
            let Some(e) = dockgc_core::explain(&snapshot, &history, &policy, &request, reference)
            else {
                bail!("no image, container, volume or network matches `{reference}`");
            };
            match format {
                Format::Json => println!("{}", to_json(&e)?),
                Format::Table => print!("{}", output::explanation_text(&e)),
            }
            Ok(Exit::Done)
        }
        Command::Prune(args) => prune(&cli, args).await,
        Command::Run { parallel, listen } => {
            let listen = match listen.as_deref() {
                None => None,
                Some("off") => Some(None),
                Some(addr) => Some(Some(addr.parse().with_context(|| {
                    format!("--listen `{addr}`: expected ADDRESS:PORT such as 127.0.0.1:9714, or \"off\"")
                })?)),
            };
            let endpoint =
                dockgc_docker::endpoint::resolve(&Environment::from_process(cli.host.clone()))?;
            // Fail fast on a bad config, before anything starts.
            config::load(cli.config.as_deref())?;
            let stop = tokio_util::sync::CancellationToken::new();
            daemon::run(
                daemon::Options {
                    state_dir: state_dir(&cli),
                    config_path: cli.config.clone(),
                    endpoint,
                    timeout: Duration::from_secs(cli.timeout),
                    parallel: usize::from(*parallel),
                    listen,
                },
                stop,
            )
            .await?;
            Ok(Exit::Done)
        }
        Command::Status { format } => status(&cli, *format),
        Command::Log {
            since,
            kind,
            format,
        } => log(&cli, since.as_deref(), kind.as_deref(), *format),
        Command::Trigger => trigger(&cli),
        Command::Notify(NotifyCommand::Test { receiver }) => {
            notify_test(&cli, receiver.as_deref()).await
        }
        Command::Audit(args) => audit(&cli, args).await,
        Command::Simulate {
            trace,
            compare,
            format,
        } => simulate(&cli, trace, *compare, *format),
        Command::Trace(cli::TraceCommand::Generate {
            days,
            seed,
            repositories,
            builds_per_day,
            uses_per_day,
            skew,
            capacity,
            scale,
            output,
        }) => {
            if !(*scale > 0.0 && *scale <= 1.0) {
                anyhow::bail!("--scale {scale}: expected a factor above 0 and at most 1");
            }
            let capacity_bytes = config::parse_size(capacity).with_context(|| {
                format!("--capacity `{capacity}`: expected a size such as 2.5GB")
            })?;
            let trace = dockgc_core::trace::generate(&dockgc_core::trace::TraceParams {
                seed: *seed,
                days: *days,
                repositories: *repositories,
                builds_per_day: *builds_per_day,
                uses_per_day: *uses_per_day,
                skew: *skew,
                capacity_bytes,
                ..dockgc_core::trace::TraceParams::default()
            })
            .scaled(*scale);
            let text = trace.to_json_lines();
            match output {
                Some(path) => write_atomically(path, text.as_bytes())?,
                None => print!("{text}"),
            }
            Ok(Exit::Done)
        }
        Command::Record { output, duration } => {
            let duration = duration
                .as_deref()
                .map(|d| {
                    config::parse_duration(d).with_context(|| {
                        format!("--duration `{d}`: expected a duration such as 24h or 7d")
                    })
                })
                .transpose()?;
            let engine = connect(&cli).await?;
            let stop = tokio_util::sync::CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            #[cfg(unix)]
            {
                let on_term = stop.clone();
                if let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    tokio::spawn(async move {
                        term.recv().await;
                        on_term.cancel();
                    });
                }
            }
            let recorded = match output {
                Some(path) => {
                    let mut file = std::io::BufWriter::new(
                        std::fs::File::create(path)
                            .with_context(|| format!("cannot create {}", path.display()))?,
                    );
                    record::record(&engine, &mut file, duration, stop).await?
                }
                None => {
                    record::record(&engine, &mut std::io::stdout().lock(), duration, stop).await?
                }
            };
            eprintln!(
                "dockgc: recorded {} image arrivals and {} container starts",
                recorded.builds, recorded.uses
            );
            Ok(Exit::Done)
        }
    }
}

fn state_dir(cli: &Cli) -> std::path::PathBuf {
    cli.state_dir
        .clone()
        .unwrap_or_else(store::default_state_dir)
}

fn open_store(cli: &Cli) -> Result<store::Store> {
    let dir = state_dir(cli);
    store::Store::open_existing(&dir)?.with_context(|| {
        format!(
            "no dockgc state in {} (has `dockgc run` run there? --state-dir names another)",
            dir.display()
        )
    })
}

/// The use history to plan with: the governor's, when its state exists, completed by what
/// the engine knows.
fn history(cli: &Cli, snapshot: &Snapshot) -> Result<History> {
    Ok(History::backfill_with(snapshot, &stored_history(cli)?))
}

/// The governor's persisted history, or an empty one.
fn stored_history(cli: &Cli) -> Result<History> {
    match store::Store::open_existing(&state_dir(cli))? {
        Some(store) => store.history(),
        None => Ok(History::default()),
    }
}

fn status(cli: &Cli, format: Format) -> Result<Exit> {
    let store = open_store(cli)?;
    let status: Option<daemon::Status> = store
        .meta("status")?
        .and_then(|s| serde_json::from_str(&s).ok());
    let cycles = store.cycles(10)?;
    let alive = status.as_ref().is_some_and(|s| {
        std::path::Path::new(&format!("/proc/{}", s.pid)).exists() && now() - s.updated < 600
    });
    match format {
        Format::Json => println!(
            "{}",
            to_json(
                &serde_json::json!({"version": 1, "running": alive, "status": status, "cycles": cycles})
            )?
        ),
        Format::Table => {
            use std::fmt::Write as _;
            let mut out = String::new();
            match &status {
                None => out.push_str("Governor: never ran with this state directory\n"),
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "Governor: {} (pid {}, updated {}s ago)",
                        if alive { "running" } else { "not running" },
                        s.pid,
                        now() - s.updated
                    );
                    let _ = writeln!(
                        out,
                        "Engine: {} {}{}",
                        s.endpoint,
                        s.engine,
                        s.engine_error
                            .as_ref()
                            .map_or(String::new(), |e| format!(" ({e})"))
                    );
                    match &s.filesystem {
                        Some(fs) => {
                            let _ = writeln!(
                                out,
                                "Disk: {:.1}% used, {} free; high {}, low {}",
                                fs.used_percent(),
                                format_bytes(fs.available_bytes),
                                s.high,
                                s.low
                            );
                        }
                        None => {
                            let _ = writeln!(
                                out,
                                "Disk: not measured yet; high {}, low {}",
                                s.high, s.low
                            );
                        }
                    }
                    if let Some(next) = s
                        .next_schedule
                        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                    {
                        let _ = writeln!(out, "Next scheduled cycle: {}", next.to_rfc3339());
                    }
                    if let Some(e) = &s.reload_error {
                        let _ = writeln!(out, "Last reload refused: {e}");
                    }
                    if let Some(addr) = &s.listen {
                        let _ = writeln!(out, "Metrics: http://{addr}/metrics");
                    }
                    if let Some(at) = s.events_handled.map(chrono::DateTime::from_timestamp_nanos) {
                        let _ = writeln!(
                            out,
                            "Engine events handled up to: {}",
                            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        );
                    }
                }
            }
            out.push_str("\nLast cycles:\n");
            if cycles.is_empty() {
                out.push_str("  none\n");
            }
            for c in &cycles {
                let at = chrono::DateTime::from_timestamp(c.started, 0)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  #{} {at} {} {}: {}",
                    c.id, c.trigger, c.status, c.message
                );
            }
            print!("{out}");
        }
    }
    Ok(Exit::Done)
}

fn log(cli: &Cli, since: Option<&str>, kind: Option<&str>, format: Format) -> Result<Exit> {
    let since = match since {
        Some(text) => {
            let d = config::parse_duration(text).with_context(|| {
                format!("--since `{text}`: expected a duration such as 24h or 7d")
            })?;
            now() - i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
        }
        None => 0,
    };
    let store = open_store(cli)?;
    let records = store.audit_records(since, kind)?;
    match format {
        Format::Json => println!(
            "{}",
            to_json(&serde_json::json!({"version": 1, "records": records}))?
        ),
        Format::Table => {
            for r in &records {
                let what = match &r.event {
                    audit::Event::Intent {
                        kind,
                        name,
                        reason,
                        rule,
                        bytes,
                        ..
                    } => format!(
                        "intent  {kind} {name}: {reason} ({rule}), {}",
                        format_bytes(*bytes)
                    ),
                    audit::Event::Outcome { outcome, detail } => format!(
                        "outcome {outcome}{}",
                        detail.as_ref().map_or(String::new(), |d| format!(": {d}"))
                    ),
                    audit::Event::RunStart {
                        steps,
                        planned_disk_bytes,
                        ..
                    } => format!(
                        "start   {steps} step(s), {} planned",
                        format_bytes(*planned_disk_bytes)
                    ),
                    audit::Event::RunEnd {
                        removed,
                        freed_disk_bytes,
                        status,
                    } => format!(
                        "end     {status}: {removed} removed, {} freed",
                        freed_disk_bytes.map_or("?".into(), format_bytes)
                    ),
                };
                println!("{} {} #{:<4} {what}", r.time, r.run, r.seq);
            }
        }
    }
    Ok(Exit::Done)
}

fn trigger(cli: &Cli) -> Result<Exit> {
    let store = open_store(cli)?;
    let pid: i32 = store
        .meta("pid")?
        .and_then(|p| p.parse().ok())
        .context("the governor has not recorded its pid")?;
    let process = rustix::process::Pid::from_raw(pid).context("a bad pid in the state")?;
    rustix::process::kill_process(process, rustix::process::Signal::USR1).with_context(|| {
        format!("cannot signal the governor (pid {pid}); is `dockgc run` running?")
    })?;
    println!("asked the governor (pid {pid}) for a cycle");
    Ok(Exit::Done)
}

/// The exit of a plan that is only shown: 1 when its target is out of reach.
fn exit_for(plan: &Plan) -> Exit {
    match plan.target_status {
        TargetStatus::Unreachable { .. } => Exit::TargetNotReached,
        _ => Exit::Done,
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).context("encoding JSON output")
}

/// Writes a file through a temporary sibling and a rename, so readers never see half of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

async fn connect(cli: &Cli) -> Result<Engine> {
    let endpoint = dockgc_docker::endpoint::resolve(&Environment::from_process(cli.host.clone()))?;
    let name = endpoint.to_string();
    match Engine::connect(endpoint, Duration::from_secs(cli.timeout)).await {
        Ok(engine) => Ok(engine),
        // That error already names the endpoint.
        Err(e @ dockgc_docker::Error::Unreachable { .. }) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("the Docker engine at {name}"))),
    }
}

async fn world(cli: &Cli, source: &Source) -> Result<Snapshot> {
    match &source.from_snapshot {
        Some(path) => read_snapshot(path),
        None => Ok(connect(cli).await?.snapshot(now()).await?),
    }
}

fn read_snapshot(path: &Path) -> Result<Snapshot> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the snapshot {}", path.display()))?;
    let snapshot: Snapshot = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a dockgc snapshot", path.display()))?;
    if snapshot.version > SNAPSHOT_VERSION {
        bail!(
            "{} is a version {} snapshot; this dockgc reads up to version {SNAPSHOT_VERSION}",
            path.display(),
            snapshot.version
        );
    }
    Ok(snapshot)
}

fn request(goal: &GoalArgs) -> Result<Request> {
    let mut request = Request::default();
    if let Some(free) = &goal.free {
        let bytes = config::parse_size(free)
            .with_context(|| format!("--free `{free}`: expected a size such as 20GB or 500MiB"))?;
        request.goal = dockgc_core::Goal::FreeBytes(bytes);
    }
    if let Some(target) = &goal.target_usage {
        let percent = config::parse_percent(target).with_context(|| {
            format!("--target-usage `{target}`: expected a percentage such as 70%")
        })?;
        request.goal = dockgc_core::Goal::UsedPercent(percent);
    }
    if !goal.images.is_empty() {
        request.selection = Selection::Images(goal.images.clone());
    }
    Ok(request)
}

/// The JSON document `prune --format json` prints.
#[derive(Serialize)]
struct PruneOutput<'a> {
    version: u32,
    plan: &'a Plan,
    report: &'a Report,
    freed_disk_bytes: Option<u64>,
    filesystem_after: Option<dockgc_core::model::Filesystem>,
    exit_code: u8,
}

async fn prune(cli: &Cli, args: &PruneArgs) -> Result<Exit> {
    let policy = config::load(cli.config.as_deref())?.0.policy;
    let max_bytes = match &args.max_bytes {
        Some(text) => Some(
            config::parse_size(text)
                .with_context(|| format!("--max-bytes `{text}`: expected a size such as 50GB"))?,
        ),
        None => None,
    };
    let request = request(&args.goal)?;
    let stored = stored_history(cli)?;
    let engine = connect(cli).await?;
    let snapshot = engine.snapshot(now()).await?;
    let plan = match &args.plan {
        Some(path) => read_plan(path)?,
        None => dockgc_core::plan(
            &snapshot,
            &History::backfill_with(&snapshot, &stored),
            &policy,
            &request,
        ),
    };
    let table = args.format == Format::Table;
    if table {
        print!("{}", output::plan_table(&plan, &policy, args.show_skipped));
    }
    if plan.steps.is_empty() {
        if !table {
            let report = Report::default();
            println!(
                "{}",
                to_json(&PruneOutput {
                    version: 1,
                    plan: &plan,
                    report: &report,
                    freed_disk_bytes: Some(0),
                    filesystem_after: engine.filesystem(),
                    exit_code: 0
                })?
            );
        }
        return Ok(exit_for(&plan));
    }
    if !args.force && !confirm(&plan)? {
        eprintln!("dockgc: nothing deleted");
        return Ok(Exit::Done);
    }

    let run_id = format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id()
    );
    // The audit trail: a JSON-lines file when asked for, else the state database.
    let mut file_audit;
    let mut store;
    let mut db_audit;
    let audit: &mut dyn audit::AuditSink = match &args.audit_file {
        Some(path) => {
            let closed;
            (file_audit, closed) = audit::Audit::open(path, run_id)?;
            if closed > 0 {
                eprintln!(
                    "dockgc: closed {closed} intent(s) of an interrupted run in {}",
                    path.display()
                );
            }
            &mut file_audit
        }
        None => {
            store = store::Store::open(&state_dir(cli))?;
            let closed = store.close_open_intents()?;
            if closed > 0 {
                eprintln!(
                    "dockgc: closed {closed} intent(s) of an interrupted run in {}",
                    store.path().display()
                );
            }
            db_audit = store::DbAudit::new(&mut store, run_id);
            &mut db_audit
        }
    };
    let progress = (table && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(plan.steps.len() as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}")
        {
            bar.set_style(style);
        }
        bar
    });
    let limits = Limits {
        max_deletions: args.max_deletions,
        max_bytes,
        parallel: usize::from(args.parallel),
    };
    let done = executor::execute(
        executor::Job {
            engine: &engine,
            policy: &policy,
            plan: &plan,
            snapshot: &snapshot,
            request: &request,
            replan: args.plan.is_none(),
            history: &|s: &Snapshot| History::backfill_with(s, &stored),
        },
        audit,
        limits,
        progress,
        None,
    )
    .await?;
    let (report, after, freed_disk) = (&done.report, done.after, done.freed_disk_bytes);
    let exit = match done.status {
        executor::RunStatus::Done => Exit::Done,
        executor::RunStatus::TargetNotReached => Exit::TargetNotReached,
        executor::RunStatus::Error => Exit::Error,
    };

    if table {
        print!(
            "{}",
            report_text(report, freed_disk, after.as_ref(), &policy)
        );
    } else {
        let code = match exit {
            Exit::Done => 0,
            Exit::TargetNotReached => 1,
            Exit::Error => 2,
        };
        println!(
            "{}",
            to_json(&PruneOutput {
                version: 1,
                plan: &plan,
                report,
                freed_disk_bytes: freed_disk,
                filesystem_after: after,
                exit_code: code
            })?
        );
    }
    if let Some(why) = &report.aborted {
        eprintln!("dockgc: error: run aborted: {why}");
    }
    for r in report
        .results
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
    {
        eprintln!(
            "dockgc: error: deleting {} {} failed: {}",
            r.step.kind,
            r.step.name,
            r.detail.as_deref().unwrap_or("unknown error")
        );
    }
    if exit == Exit::TargetNotReached {
        eprintln!("dockgc: the target could not be reached under the policy (dockgc plan --show-skipped says what is kept and why)");
    }
    Ok(exit)
}

fn read_plan(path: &Path) -> Result<Plan> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the plan {}", path.display()))?;
    let plan: Plan = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a dockgc plan (from `dockgc plan --format json`)",
            path.display()
        )
    })?;
    if plan.version != PLAN_VERSION {
        bail!(
            "{} is a version {} plan; this dockgc executes version {PLAN_VERSION}",
            path.display(),
            plan.version
        );
    }
    Ok(plan)
}

fn confirm(plan: &Plan) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to delete without confirmation: standard input is not a terminal (pass -f/--force)");
    }
    eprint!(
        "Delete {} object(s), freeing about {}? [y/N] ",
        plan.steps.len(),
        format_bytes(plan.reclaim_disk_bytes)
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the confirmation")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}

fn report_text(
    report: &Report,
    freed_disk: Option<u64>,
    after: Option<&dockgc_core::model::Filesystem>,
    policy: &Policy,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("\n");
    let counts: Vec<String> = [
        Outcome::Removed,
        Outcome::AlreadyGone,
        Outcome::Skipped,
        Outcome::Failed,
        Outcome::NotNeeded,
        Outcome::NotRun,
    ]
    .into_iter()
    .filter_map(|o| {
        let n = report.count(o.clone());
        (n > 0).then(|| {
            format!(
                "{n} {}",
                serde_json::to_value(&o)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )
        })
    })
    .collect();
    let _ = writeln!(out, "Done: {}", counts.join(", "));
    for r in report
        .results
        .iter()
        .filter(|r| r.outcome == Outcome::Skipped)
    {
        let _ = writeln!(
            out,
            "  skipped {} {}: {}",
            r.step.kind,
            r.step.name,
            r.detail.as_deref().unwrap_or("")
        );
    }
    let _ = write!(
        out,
        "Planned for what was removed: {} ({} on disk)",
        format_bytes(report.removed_bytes()),
        format_bytes(report.removed_disk_bytes())
    );
    match freed_disk {
        Some(f) => {
            let _ = writeln!(out, "; freed on disk (statvfs): {}", format_bytes(f));
        }
        None => out.push('\n'),
    }
    let _ = writeln!(out, "{}", output::disk_line(after, policy));
    out
}

/// `dockgc notify test`.
async fn notify_test(cli: &Cli, receiver: Option<&str>) -> Result<Exit> {
    let (config, path) = config::load(cli.config.as_deref())?;
    let from = path.map_or("the built-in defaults".to_string(), |p| {
        p.display().to_string()
    });
    let hooks: Vec<config::Webhook> = config
        .webhooks
        .into_iter()
        .filter(|h| receiver.is_none_or(|r| h.name == r))
        .collect();
    if hooks.is_empty() {
        match receiver {
            Some(r) => bail!("no receiver named `{r}` in [[notify.webhook]] of {from}"),
            None => bail!("no [[notify.webhook]] receivers in {from}; see docs/notifications.md"),
        }
    }
    let mut failed = 0;
    for (name, result) in notify::send_test(&hooks).await {
        match result {
            Ok(()) => println!("{name}: delivered"),
            Err(e) => {
                failed += 1;
                println!("{name}: failed: {e}");
            }
        }
    }
    Ok(if failed == 0 { Exit::Done } else { Exit::Error })
}

/// `dockgc audit`.
async fn audit(cli: &Cli, args: &cli::AuditArgs) -> Result<Exit> {
    let max_waste = args
        .max_waste
        .as_deref()
        .map(|s| {
            config::parse_size(s).with_context(|| {
                format!("--max-waste `{s}`: expected a size such as 200MB, 1.5GB or 0")
            })
        })
        .transpose()?;
    let min_efficiency = args
        .min_efficiency
        .as_deref()
        .map(|s| {
            config::parse_percent(s).with_context(|| {
                format!("--min-efficiency `{s}`: expected a percentage such as 90%")
            })
        })
        .transpose()?;
    let report = match &args.archive {
        Some(path) => inspect::audit_archive(path, &args.images)?,
        None => {
            let policy = config::load(cli.config.as_deref())?.0.policy;
            let engine = connect(cli).await?;
            // The cache is a convenience: without a writable state directory, read everything.
            let store = match store::Store::open(&state_dir(cli)) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("auditing without the layer cache: {e:#}");
                    None
                }
            };
            inspect::audit_engine(
                &engine,
                store.as_ref(),
                inspect::Job {
                    images: &args.images,
                    source: args.source,
                    defer_above: Some(policy.disk.high),
                },
            )
            .await?
        }
    };
    match args.format {
        Format::Json => println!("{}", to_json(&report)?),
        Format::Table => print!("{}", inspect::report_text(&report, args.top)),
    }
    let violations = inspect::violations(&report, max_waste, min_efficiency);
    if violations.is_empty() {
        return Ok(Exit::Done);
    }
    for v in &violations {
        eprintln!("dockgc: {v}");
    }
    Ok(Exit::TargetNotReached)
}

/// `dockgc simulate`.
fn simulate(cli: &Cli, path: &Path, compare: bool, format: Format) -> Result<Exit> {
    use dockgc_core::simulate::{simulate, Contender};
    let policy = config::load(cli.config.as_deref())?.0.policy;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the trace {}", path.display()))?;
    let trace =
        dockgc_core::trace::Trace::parse(&text).with_context(|| format!("{}", path.display()))?;
    let capacity = trace.header.capacity_bytes;
    let fs = dockgc_core::model::Filesystem {
        total_bytes: capacity,
        used_bytes: 0,
        available_bytes: capacity,
        total_inodes: 1,
        free_inodes: 1,
    };
    let budget = policy.disk.low.used_bytes_on(&fs);
    let mut contenders = vec![Contender::Dockgc(Box::new(policy))];
    if compare {
        contenders.extend([
            Contender::Docuum {
                threshold_bytes: budget.saturating_sub(trace.header.other_bytes),
            },
            Contender::NightlyPruneAll,
            Contender::NightlyDangling,
            Contender::Lru {
                budget_bytes: budget,
            },
            Contender::Offline {
                budget_bytes: budget,
            },
        ]);
    }
    let outcomes: Vec<_> = contenders
        .iter()
        .map(|c| {
            let mut o = simulate(&trace, c);
            if format == Format::Table {
                o.usage.clear();
            }
            o
        })
        .collect();
    match format {
        Format::Json => println!(
            "{}",
            to_json(
                &serde_json::json!({"version": 1, "trace": path.display().to_string(), "capacity_bytes": capacity, "budget_bytes": budget, "outcomes": outcomes})
            )?
        ),
        Format::Table => {
            println!(
                "Trace {}: {:.1} days, {} events, disk {}; budget (disk.low) {}",
                path.display(),
                trace.duration() as f64 / 86_400.0,
                trace.events.len(),
                format_bytes(capacity),
                format_bytes(budget)
            );
            let mut t = output::table(&[
                "POLICY",
                "MISSES",
                "RE-LOADED",
                "DISK FULL",
                "PEAK",
                "MEAN",
                "IMAGES DELETED",
            ]);
            for o in &outcomes {
                t.add_row(vec![
                    o.policy.clone(),
                    o.misses.to_string(),
                    format_bytes(o.bytes_reloaded),
                    o.disk_full.to_string(),
                    format_bytes(o.peak_bytes),
                    format_bytes(o.mean_bytes),
                    o.images_deleted.to_string(),
                ]);
            }
            output::right(&mut t, &[1, 2, 3, 4, 5, 6]);
            println!("{}", output::trimmed(&t));
        }
    }
    Ok(Exit::Done)
}
