//! `dockgc`: keeps Docker hosts from filling their disks, safely.
//!
//! The binary is glue: flags and config in, a snapshot from the engine (or a file), a plan
//! from the pure core, and the executor's safety protocol for deletions.

mod audit;
mod cli;
mod config;
mod executor;
mod output;

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

use crate::cli::{Cli, Command, ConfigCommand, Format, GoalArgs, PruneArgs, Source};
use crate::executor::{Executor, Limits, Outcome, Report};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            let (policy, _) = config::load(cli.config.as_deref())?;
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
            let (policy, _) = config::load(cli.config.as_deref())?;
            let request = request(goal)?;
            let snapshot = world(&cli, source).await?;
            let plan =
                dockgc_core::plan(&snapshot, &History::backfill(&snapshot), &policy, &request);
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
            let (policy, _) = config::load(cli.config.as_deref())?;
            let request = request(goal)?;
            let snapshot = world(&cli, source).await?;
            let history = History::backfill(&snapshot);
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
    }
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
    let (policy, _) = config::load(cli.config.as_deref())?;
    let max_bytes = match &args.max_bytes {
        Some(text) => Some(
            config::parse_size(text)
                .with_context(|| format!("--max-bytes `{text}`: expected a size such as 50GB"))?,
        ),
        None => None,
    };
    let request = request(&args.goal)?;
    let engine = connect(cli).await?;
    let snapshot = engine.snapshot(now()).await?;
    let plan = match &args.plan {
        Some(path) => read_plan(path)?,
        None => dockgc_core::plan(&snapshot, &History::backfill(&snapshot), &policy, &request),
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

    let audit_path = args.audit_file.clone().unwrap_or_else(audit::default_path);
    let run_id = format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id()
    );
    let (mut audit, closed) = audit::Audit::open(&audit_path, run_id)?;
    if closed > 0 {
        eprintln!(
            "dockgc: closed {closed} intent(s) of an interrupted run in {}",
            audit_path.display()
        );
    }
    let before = engine.filesystem();
    audit.write(
        0,
        audit::Event::RunStart {
            steps: plan.steps.len(),
            planned_bytes: plan.reclaim_bytes,
            planned_disk_bytes: plan.reclaim_disk_bytes,
        },
    )?;
    let progress = (table && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(plan.steps.len() as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}")
        {
            bar.set_style(style);
        }
        bar
    });
    let target_used = plan.target.as_ref().and_then(|t| t.used_bytes);
    let mut executor = Executor {
        engine: &engine,
        policy: &policy,
        audit: &mut audit,
        limits: Limits {
            max_deletions: args.max_deletions,
            max_bytes,
            parallel: usize::from(args.parallel),
        },
        progress: progress.clone(),
        seq: 0,
        deletions: 0,
        bytes: 0,
    };
    let mut report = Report::default();
    executor
        .run(&plan.steps, &snapshot, target_used, &mut report)
        .await?;

    // An optimistic estimate must not leave the disk above the target: plan again from
    // fresh facts, with estimates corrected by what was really freed, and go on.
    const MAX_ROUNDS: usize = 3;
    let mut round = 1;
    while let (Some(target), None, None) = (target_used, &report.aborted, &args.plan) {
        let Some(fs) = executor.measure() else { break };
        let removed_before = report.count(Outcome::Removed);
        if fs.used_bytes <= target || round >= MAX_ROUNDS || removed_before == 0 {
            break;
        }
        let correction = match (before, report.removed_disk_bytes()) {
            (Some(b), predicted) if predicted > 0 => {
                (b.used_bytes.saturating_sub(fs.used_bytes) as f64 / predicted as f64)
                    .clamp(0.25, 1.0)
            }
            _ => 1.0,
        };
        let snapshot = engine.snapshot(now()).await?;
        let again = dockgc_core::plan(
            &snapshot,
            &History::backfill(&snapshot),
            &policy,
            &Request {
                disk_correction: correction,
                ..request.clone()
            },
        );
        if again.steps.is_empty() {
            break;
        }
        if let Some(p) = &progress {
            p.inc_length(again.steps.len() as u64);
        }
        let round_target = again
            .target
            .as_ref()
            .and_then(|t| t.used_bytes)
            .or(Some(target));
        executor
            .run(&again.steps, &snapshot, round_target, &mut report)
            .await?;
        if report.count(Outcome::Removed) == removed_before {
            break;
        }
        round += 1;
    }
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    let after = engine.filesystem();
    let freed_disk = before
        .zip(after)
        .map(|(b, a)| b.used_bytes.saturating_sub(a.used_bytes));
    let failed = report.count(Outcome::Failed);
    let target_missed = match (target_used, after) {
        (Some(t), Some(a)) => a.used_bytes > t,
        _ => matches!(plan.target_status, TargetStatus::Unreachable { .. }),
    };
    let exit = if report.aborted.is_some() || failed > 0 {
        Exit::Error
    } else if target_missed {
        Exit::TargetNotReached
    } else {
        Exit::Done
    };
    audit.write(
        0,
        audit::Event::RunEnd {
            removed: report.count(Outcome::Removed),
            freed_disk_bytes: freed_disk,
            status: format!("{exit:?}").to_lowercase(),
        },
    )?;

    if table {
        print!(
            "{}",
            report_text(&report, freed_disk, after.as_ref(), &policy)
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
                report: &report,
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
