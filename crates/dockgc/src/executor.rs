//! The executor: a safety protocol, not a loop that deletes.
//!
//! For each chunk of steps: record every intent in the audit trail; re-check each step against
//! fresh engine data (still unused, still unprotected, still old enough); delete without force
//! (404 = already gone, 409 = now in use: skipped); record every outcome; re-measure the
//! filesystem and stop once the target is reached.

use std::collections::{HashSet, VecDeque};

use anyhow::Result;
use dockgc_core::model::{Container, Filesystem, Snapshot};
use dockgc_core::plan::{recheck_image, Kind, Reason, SkipReason, Step};
use dockgc_core::Policy;
use dockgc_docker::engine::Removal;
use dockgc_docker::{Engine, Error};
use futures::future::join_all;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::audit::{AuditSink, Event};

/// Caps on one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Stop after this many deletions.
    pub max_deletions: Option<usize>,
    /// Stop before deleting more than this many bytes.
    pub max_bytes: Option<u64>,
    /// Deletions in flight at once.
    pub parallel: usize,
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Deleted.
    Removed,
    /// Gone before dockgc got to it.
    AlreadyGone,
    /// Left alone: the re-check or the engine (409) said it is in use or protected now.
    Skipped,
    /// The engine failed the deletion.
    Failed,
    /// Not attempted: the target was reached before it.
    NotNeeded,
    /// Not attempted: `--max-deletions` or `--max-bytes` reached, or the run was aborted.
    NotRun,
}

impl Outcome {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Removed => "removed",
            Self::AlreadyGone => "already_gone",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::NotNeeded => "not_needed",
            Self::NotRun => "not_run",
        }
    }
}

/// One step's result.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// The step.
    #[serde(flatten)]
    pub step: Step,
    /// What came of it.
    pub outcome: Outcome,
    /// Why, for skipped, failed and not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The cause's category, for skipped and failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Each attempted or left step, in order.
    pub results: Vec<StepResult>,
    /// The run was aborted (engine unreachable): why.
    pub aborted: Option<String>,
}

impl Report {
    /// Steps with this outcome.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.results.iter().filter(|r| r.outcome == outcome).count()
    }

    /// Planned bytes of removed steps.
    pub fn removed_bytes(&self) -> u64 {
        self.results
            .iter()
            .filter(|r| r.outcome == Outcome::Removed)
            .map(|r| r.step.bytes)
            .sum()
    }

    /// Planned disk bytes of removed steps.
    pub fn removed_disk_bytes(&self) -> u64 {
        self.results
            .iter()
            .filter(|r| r.outcome == Outcome::Removed)
            .map(|r| r.step.disk_bytes)
            .sum()
    }
}

/// Runs plans against an engine.
pub struct Executor<'a> {
    /// The engine.
    pub engine: &'a Engine,
    /// The policy steps are re-checked against.
    pub policy: &'a Policy,
    /// The audit trail.
    pub audit: &'a mut dyn AuditSink,
    /// Caps.
    pub limits: Limits,
    /// Progress bar, on a terminal.
    pub progress: Option<ProgressBar>,
    /// Next audit sequence number.
    pub seq: u64,
    /// Deletions done so far in this run (across rounds).
    pub deletions: usize,
    /// Bytes deleted so far in this run (across rounds).
    pub bytes: u64,
    /// Cancelled on shutdown: the chunk in flight finishes, nothing new starts.
    pub stop: Option<tokio_util::sync::CancellationToken>,
}

/// Whether image `a` is an ancestor of image `b` (its layers are a proper prefix of b's).
fn is_ancestor(snapshot: &Snapshot, a: &str, b: &str) -> bool {
    let find = |id: &str| snapshot.images.iter().find(|i| i.id == id);
    match (find(a), find(b)) {
        (Some(a), Some(b)) => {
            (a.layers.len() < b.layers.len() && b.layers.starts_with(&a.layers))
                || b.parent.as_deref() == Some(a.id.as_str())
        }
        _ => false,
    }
}

impl Executor<'_> {
    /// Executes `steps` (planned from `snapshot`). With `target_used`, stops evicting under
    /// disk pressure once the measured used bytes are at or below it; routine steps still run.
    pub async fn run(
        &mut self,
        steps: &[Step],
        snapshot: &Snapshot,
        mut target_used: Option<u64>,
        report: &mut Report,
    ) -> Result<()> {
        let mut pending: VecDeque<Step> = steps.iter().cloned().collect();
        while !pending.is_empty() {
            if report.aborted.is_some() {
                self.leave(
                    pending.make_contiguous(),
                    Outcome::NotRun,
                    "run aborted",
                    report,
                );
                break;
            }
            if let (Some(target), Some(fs)) = (target_used, self.measure()) {
                if fs.used_bytes <= target {
                    let (optional, rest): (Vec<Step>, Vec<Step>) = pending
                        .into_iter()
                        .partition(|s| s.reason == Reason::DiskPressure);
                    self.leave(&optional, Outcome::NotNeeded, "target reached", report);
                    pending = rest.into();
                    target_used = None;
                    continue;
                }
            }
            let size = self.chunk_len(pending.make_contiguous(), snapshot);
            if size == 0 {
                let why = "limit reached (--max-deletions / --max-bytes)";
                self.leave(pending.make_contiguous(), Outcome::NotRun, why, report);
                break;
            }
            let chunk: Vec<Step> = pending.drain(..size).collect();
            self.run_chunk(&chunk, report).await?;
        }
        Ok(())
    }

    fn leave(&self, steps: &[Step], outcome: Outcome, why: &str, report: &mut Report) {
        for s in steps {
            push(report, s, outcome.clone(), Some(why.into()));
        }
        if let Some(p) = &self.progress {
            p.inc(steps.len() as u64);
        }
    }

    /// Whether shutdown was asked for.
    pub fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.is_cancelled())
    }

    /// The filesystem now, when measurable.
    pub fn measure(&self) -> Option<Filesystem> {
        self.engine.filesystem()
    }

    /// How many of the next steps run together: same kind, within the caps, and no image
    /// together with one of its ancestors (a parent goes only after its children).
    fn chunk_len(&self, pending: &[Step], snapshot: &Snapshot) -> usize {
        let mut n = 0;
        let mut bytes = self.bytes;
        for s in pending.iter().take(self.limits.parallel) {
            if s.kind != pending[0].kind {
                break;
            }
            if self
                .limits
                .max_deletions
                .is_some_and(|m| self.deletions + n >= m)
            {
                break;
            }
            if self.limits.max_bytes.is_some_and(|m| bytes + s.bytes > m) {
                break;
            }
            if s.kind == Kind::Image
                && pending[..n].iter().any(|p| {
                    is_ancestor(snapshot, &s.id, &p.id) || is_ancestor(snapshot, &p.id, &s.id)
                })
            {
                break;
            }
            bytes += s.bytes;
            n += 1;
        }
        n
    }

    async fn run_chunk(&mut self, chunk: &[Step], report: &mut Report) -> Result<()> {
        let first_seq = self.seq;
        for step in chunk {
            self.seq += 1;
            self.audit.write(
                self.seq,
                Event::Intent {
                    kind: step.kind.to_string(),
                    id: step.id.clone(),
                    name: step.name.clone(),
                    reason: step.reason.as_str().to_string(),
                    rule: step.rule.clone(),
                    bytes: step.bytes,
                    disk_bytes: step.disk_bytes,
                },
            )?;
        }
        self.audit.sync()?;
        // Container steps compare activity times; the others only need who uses what.
        let fresh = if chunk.iter().any(|s| s.kind == Kind::Container) {
            self.engine.containers(false).await
        } else {
            self.engine.containers_brief().await
        };
        let containers = match fresh {
            Ok(c) => c,
            Err(e) => {
                // Without fresh facts nothing in this chunk may be deleted.
                let failed = Attempt::engine_failure(&e);
                for (i, step) in chunk.iter().enumerate() {
                    self.finish(first_seq + 1 + i as u64, step, failed.clone(), report)?;
                }
                report.aborted = Some(e.to_string());
                return self.audit.sync();
            }
        };
        let results = join_all(chunk.iter().map(|s| self.attempt(s, &containers))).await;
        for (i, (step, attempt)) in chunk.iter().zip(results).enumerate() {
            if attempt.outcome == Outcome::Removed {
                self.deletions += 1;
                self.bytes += step.bytes;
            }
            if let Some(why) = &attempt.fatal {
                report.aborted.get_or_insert(why.clone());
            }
            self.finish(first_seq + 1 + i as u64, step, attempt, report)?;
        }
        self.audit.sync()
    }

    fn finish(
        &mut self,
        seq: u64,
        step: &Step,
        attempt: Attempt,
        report: &mut Report,
    ) -> Result<()> {
        self.audit.write(
            seq,
            Event::Outcome {
                outcome: attempt.outcome.as_str().into(),
                detail: attempt.detail.clone(),
            },
        )?;
        // One structured log event per deletion, with the audit trail's run (from the span)
        // and sequence number.
        let outcome = attempt.outcome.as_str();
        let detail = attempt.detail.as_deref().unwrap_or("");
        match attempt.outcome {
            Outcome::Failed => tracing::warn!(
                seq, kind = %step.kind, id = %step.id, name = %step.name,
                reason = step.reason.as_str(), disk_bytes = step.disk_bytes, outcome, detail,
                "deletion failed"
            ),
            _ => tracing::info!(
                seq, kind = %step.kind, id = %step.id, name = %step.name,
                reason = step.reason.as_str(), disk_bytes = step.disk_bytes, outcome, detail,
                "deletion"
            ),
        }
        if let Some(p) = &self.progress {
            p.inc(1);
            p.set_message(format!("{} {}", step.kind, step.name));
        }
        report.results.push(StepResult {
            step: step.clone(),
            outcome: attempt.outcome,
            detail: attempt.detail,
            cause: attempt.cause,
        });
        Ok(())
    }

    /// Re-checks and deletes one step.
    async fn attempt(&self, step: &Step, containers: &[Container]) -> Attempt {
        if let Err(why) = self.recheck(step, containers).await {
            return why;
        }
        let result = match step.kind {
            Kind::Container => self.engine.remove_container(&step.id).await,
            Kind::Image => self.engine.remove_image(&step.id, &step.tags).await,
            Kind::Volume => self.engine.remove_volume(&step.id).await,
            Kind::Network => self.engine.remove_network(&step.id).await,
            Kind::BuildCache => self
                .engine
                .prune_build_cache(
                    self.policy.build_cache.keep_bytes,
                    self.policy.build_cache.max_age,
                )
                .await
                .map(|_| Removal::Removed),
        };
        match result {
            Ok(Removal::Removed) => Attempt::done(Outcome::Removed),
            Ok(Removal::AlreadyGone) => Attempt::done(Outcome::AlreadyGone),
            Err(Error::Conflict(m)) => {
                Attempt::skipped(Cause::InUse, format!("engine refused (in use): {m}"))
            }
            Err(e) => Attempt::engine_failure(&e),
        }
    }

    async fn recheck(&self, step: &Step, containers: &[Container]) -> Result<(), Attempt> {
        let skip = |cause, why: String| Err(Attempt::skipped(cause, why));
        let now = chrono::Utc::now().timestamp();
        match step.kind {
            Kind::Container => match containers.iter().find(|c| c.id == step.id) {
                None => Err(Attempt::done(Outcome::AlreadyGone)),
                Some(c) if !c.state.is_stopped() => {
                    skip(Cause::InUse, "running again since the plan".into())
                }
                Some(c) if step.last_used.is_some_and(|t| c.last_activity() > t) => {
                    skip(Cause::Changed, "used since the plan".into())
                }
                Some(_) => Ok(()),
            },
            Kind::Image => {
                let fresh = match self.engine.inspect_image(&step.id).await {
                    Ok(Some(i)) => i,
                    Ok(None) => return Err(Attempt::done(Outcome::AlreadyGone)),
                    Err(e) => return Err(Attempt::engine_failure(&e)),
                };
                let planned: HashSet<&String> = step.tags.iter().collect();
                if let Some(t) = fresh.tags.iter().find(|t| !planned.contains(t)) {
                    return skip(Cause::Changed, format!("tagged {t} since the plan"));
                }
                recheck_image(&fresh, containers, self.policy, fresh.arrived, now).or_else(|why| {
                    let cause = match why {
                        SkipReason::InUse { .. } => Cause::InUse,
                        _ => Cause::Protected,
                    };
                    skip(cause, format!("re-check: {why}"))
                })
            }
            Kind::Volume => in_use(containers, |c| c.volumes.contains(&step.id))
                .map_or(Ok(()), |why| skip(Cause::InUse, why)),
            Kind::Network => in_use(containers, |c| c.networks.contains(&step.name))
                .map_or(Ok(()), |why| skip(Cause::InUse, why)),
            Kind::BuildCache => Ok(()),
        }
    }
}

/// Why a step was left alone or failed: the `cause` label of dockgc's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A container uses it now (the re-check, or the engine's 409).
    InUse,
    /// Tagged, started or used since the plan.
    Changed,
    /// The re-check found it protected or too young.
    Protected,
    /// The engine could not be reached.
    EngineUnreachable,
    /// The engine answered with an error.
    EngineError,
}

impl Cause {
    /// Every cause.
    pub const ALL: [Cause; 5] = [
        Cause::InUse,
        Cause::Changed,
        Cause::Protected,
        Cause::EngineUnreachable,
        Cause::EngineError,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::InUse => "in_use",
            Self::Changed => "changed",
            Self::Protected => "protected",
            Self::EngineUnreachable => "engine_unreachable",
            Self::EngineError => "engine_error",
        }
    }

    /// Whether the cause fails a deletion (rather than leaving it alone).
    pub fn is_failure(self) -> bool {
        matches!(self, Self::EngineUnreachable | Self::EngineError)
    }
}

/// What came of attempting one step.
#[derive(Debug, Clone)]
struct Attempt {
    outcome: Outcome,
    detail: Option<String>,
    cause: Option<Cause>,
    /// Set when the engine became unreachable: the run stops.
    fatal: Option<String>,
}

impl Attempt {
    fn done(outcome: Outcome) -> Self {
        Self {
            outcome,
            detail: None,
            cause: None,
            fatal: None,
        }
    }

    fn skipped(cause: Cause, why: String) -> Self {
        Self {
            outcome: Outcome::Skipped,
            detail: Some(why),
            cause: Some(cause),
            fatal: None,
        }
    }

    fn engine_failure(e: &Error) -> Self {
        let unreachable = matches!(e, Error::Unreachable { .. });
        Self {
            outcome: Outcome::Failed,
            detail: Some(e.to_string()),
            cause: Some(if unreachable {
                Cause::EngineUnreachable
            } else {
                Cause::EngineError
            }),
            fatal: unreachable.then(|| e.to_string()),
        }
    }
}

/// "in use by …" when any container matches.
fn in_use(containers: &[Container], uses: impl Fn(&Container) -> bool) -> Option<String> {
    let users: Vec<String> = containers
        .iter()
        .filter(|c| uses(c))
        .map(Container::display_name)
        .collect();
    (!users.is_empty()).then(|| format!("in use by {}", users.join(", ")))
}

fn push(report: &mut Report, step: &Step, outcome: Outcome, detail: Option<String>) {
    report.results.push(StepResult {
        step: step.clone(),
        outcome,
        detail,
        cause: None,
    });
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Target reached, or no target.
    Done,
    /// The target is still out of reach under the policy.
    TargetNotReached,
    /// A deletion failed or the engine went away.
    Error,
}

/// What to execute.
pub struct Job<'a> {
    /// The engine.
    pub engine: &'a Engine,
    /// The policy.
    pub policy: &'a Policy,
    /// The plan.
    pub plan: &'a dockgc_core::Plan,
    /// The snapshot it was made from.
    pub snapshot: &'a Snapshot,
    /// The request it was made for.
    pub request: &'a dockgc_core::Request,
    /// Whether to plan again from fresh facts when the measured usage is still above the
    /// target (not for a saved plan, which runs exactly as shown).
    pub replan: bool,
    /// The use history to plan again with.
    pub history: &'a dyn Fn(&Snapshot) -> dockgc_core::History,
}

/// A finished run.
#[derive(Debug)]
pub struct Done {
    /// Each step's outcome.
    pub report: Report,
    /// The filesystem after, when measurable.
    pub after: Option<Filesystem>,
    /// Disk bytes freed (statvfs), when measurable.
    pub freed_disk_bytes: Option<u64>,
    /// How it ended.
    pub status: RunStatus,
}

/// The goal of a re-plan round: a byte count is what is still missing to the run's target
/// usage (not the whole count again: the first round freed most of it); usage goals are
/// measured afresh anyway.
fn remaining_goal(goal: dockgc_core::Goal, used_now: u64, target_used: u64) -> dockgc_core::Goal {
    match goal {
        dockgc_core::Goal::FreeBytes(_) => {
            dockgc_core::Goal::FreeBytes(used_now.saturating_sub(target_used))
        }
        other => other,
    }
}

/// Disk bytes of layers and containers in `now` that were not in `before`.
fn arrived_disk_bytes(before: &Snapshot, now: &Snapshot) -> u64 {
    let layers: HashSet<&str> = before.layers.iter().map(|l| l.chain_id.as_str()).collect();
    let containers: HashSet<&str> = before.containers.iter().map(|c| c.id.as_str()).collect();
    let new_layers: u64 = now
        .layers
        .iter()
        .filter(|l| !layers.contains(l.chain_id.as_str()))
        .map(|l| l.disk_bytes.unwrap_or(l.bytes))
        .sum();
    let new_containers: u64 = now
        .containers
        .iter()
        .filter(|c| !containers.contains(c.id.as_str()))
        .map(|c| c.disk_bytes.or(c.size_rw).unwrap_or(0))
        .sum();
    new_layers + new_containers
}

/// Runs a plan as the safety protocol, with the run's start and end in the audit trail. An
/// optimistic estimate must not leave the disk above the target: while it is, plan again
/// from fresh facts (estimates corrected by what was really freed) and go on, at most
/// three rounds.
pub async fn execute(
    job: Job<'_>,
    audit: &mut dyn AuditSink,
    limits: Limits,
    progress: Option<ProgressBar>,
    stop: Option<tokio_util::sync::CancellationToken>,
) -> Result<Done> {
    const MAX_ROUNDS: usize = 3;
    let engine = job.engine;
    let before = engine.filesystem();
    audit.write(
        0,
        Event::RunStart {
            steps: job.plan.steps.len(),
            planned_bytes: job.plan.reclaim_bytes,
            planned_disk_bytes: job.plan.reclaim_disk_bytes,
        },
    )?;
    audit.sync()?;
    let target_used = job.plan.target.as_ref().and_then(|t| t.used_bytes);
    let mut executor = Executor {
        engine,
        policy: job.policy,
        audit,
        limits,
        progress: progress.clone(),
        seq: 0,
        deletions: 0,
        bytes: 0,
        stop,
    };
    let mut report = Report::default();
    executor
        .run(&job.plan.steps, job.snapshot, target_used, &mut report)
        .await?;
    let mut round = 1;
    while let (Some(target), None, true) = (target_used, &report.aborted, job.replan) {
        let Some(fs) = executor.measure() else { break };
        let removed_before = report.count(Outcome::Removed);
        if fs.used_bytes <= target
            || round >= MAX_ROUNDS
            || removed_before == 0
            || executor.stopping()
        {
            break;
        }
        let snapshot = engine.snapshot(chrono::Utc::now().timestamp()).await?;
        // What statvfs shows freed is net of what arrived meanwhile (a busy host keeps
        // loading images during a cycle): count those bytes back, or a build during the
        // cycle would read as an overestimate and the next round would delete too much.
        let arrived = arrived_disk_bytes(job.snapshot, &snapshot);
        let correction = match (before, report.removed_disk_bytes()) {
            (Some(b), predicted) if predicted > 0 => {
                ((b.used_bytes + arrived).saturating_sub(fs.used_bytes) as f64 / predicted as f64)
                    .clamp(0.25, 1.0)
            }
            _ => 1.0,
        };
        let used_now = snapshot.filesystem.map_or(fs.used_bytes, |f| f.used_bytes);
        let request = dockgc_core::Request {
            disk_correction: correction,
            goal: remaining_goal(job.request.goal, used_now, target),
            ..job.request.clone()
        };
        let again = dockgc_core::plan(&snapshot, &(job.history)(&snapshot), job.policy, &request);
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
    let freed_disk_bytes = before
        .zip(after)
        .map(|(b, a)| b.used_bytes.saturating_sub(a.used_bytes));
    let target_missed = match (target_used, after) {
        (Some(t), Some(a)) => a.used_bytes > t,
        _ => matches!(
            job.plan.target_status,
            dockgc_core::plan::TargetStatus::Unreachable { .. }
        ),
    };
    let status = if report.aborted.is_some() || report.count(Outcome::Failed) > 0 {
        RunStatus::Error
    } else if target_missed {
        RunStatus::TargetNotReached
    } else {
        RunStatus::Done
    };
    let audit = executor.audit;
    audit.write(
        0,
        Event::RunEnd {
            removed: report.count(Outcome::Removed),
            freed_disk_bytes,
            status: serde_json::to_value(status)?
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
        },
    )?;
    audit.sync()?;
    Ok(Done {
        report,
        after,
        freed_disk_bytes,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dockgc_core::model::Layer;

    fn layer(id: &str, bytes: u64, disk: Option<u64>) -> Layer {
        Layer {
            chain_id: id.into(),
            bytes,
            disk_bytes: disk,
            inodes: None,
        }
    }

    #[test]
    fn a_re_plan_frees_only_what_is_still_missing() {
        use dockgc_core::Goal;
        // Asked to free 100 from 900 (target 800); the first round got to 830.
        assert_eq!(
            remaining_goal(Goal::FreeBytes(100), 830, 800),
            Goal::FreeBytes(30)
        );
        assert_eq!(
            remaining_goal(Goal::FreeBytes(100), 790, 800),
            Goal::FreeBytes(0)
        );
        assert_eq!(remaining_goal(Goal::Watermarks, 830, 800), Goal::Watermarks);
    }

    #[test]
    fn arrivals_during_a_round_are_counted_back() {
        let before = Snapshot {
            layers: vec![layer("a", 100, Some(110)), layer("b", 50, None)],
            ..Snapshot::default()
        };
        let mut now = before.clone();
        // `a` was deleted, `c` and `d` arrived, a job left a container.
        now.layers = vec![
            layer("b", 50, None),
            layer("c", 30, Some(40)),
            layer("d", 7, None),
        ];
        now.containers = vec![Container {
            id: "job".into(),
            names: vec!["job".into()],
            image_id: "sha256:1".into(),
            image: "env:1".into(),
            state: dockgc_core::model::ContainerState::Exited,
            created: 0,
            started: None,
            finished: None,
            labels: Default::default(),
            size_rw: Some(5),
            disk_bytes: None,
            volumes: Vec::new(),
            networks: Vec::new(),
        }];
        assert_eq!(arrived_disk_bytes(&before, &now), 40 + 7 + 5);
        assert_eq!(arrived_disk_bytes(&now, &now), 0);
    }
}
