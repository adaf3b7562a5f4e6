//! Command-line flags (raw, as clap parses them). Validation into a request happens in the
//! command modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keeps Docker hosts from filling their disks, safely.
///
/// dockgc knows what every byte on the Docker filesystem belongs to, which bytes deleting any
/// set of objects would really free (layers are shared), and when each image was last used.
/// It explains every decision before acting and never deletes what is in use or protected.
///
/// Exit codes: 0 success; 1 the target could not be reached under the policy; 2 error
/// (bad config, unreachable engine, failed deletion).
#[derive(Debug, Parser)]
#[command(name = "dockgc", version, max_term_width = 100)]
pub struct Cli {
    /// Engine endpoint (unix:///path, tcp://host:port). Default: DOCKER_HOST, then
    /// DOCKER_CONTEXT, then the docker CLI's current context, then unix:///var/run/docker.sock.
    #[arg(short = 'H', long, global = true, value_name = "URL")]
    pub host: Option<String>,

    /// Config file. Default: /etc/dockgc/dockgc.toml when present, else built-in defaults.
    #[arg(short, long, global = true, env = "DOCKGC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// State directory: use history, audit trail, governor status (SQLite). Default:
    /// /var/lib/dockgc as root, else $XDG_STATE_HOME/dockgc. `plan`, `prune` and `explain`
    /// read the use history from it when it exists.
    #[arg(long, global = true, env = "DOCKGC_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Seconds to wait for any one engine request.
    #[arg(long, global = true, default_value_t = 300, value_name = "SECONDS")]
    pub timeout: u64,

    /// Log format on standard error: `text` for people, `json` (one object per line) for log
    /// collectors. Which events: DOCKGC_LOG (e.g. "debug", "warn"); default "info" for
    /// `run`, "warn" for the other commands.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "DOCKGC_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// Stable JSON with a `version` field (see docs/plan-format.md).
    Json,
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event: time, level, message, fields.
    Text,
    /// One JSON object per event, with the run and sequence number of the audit trail.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a snapshot of everything on the Docker filesystem as versioned JSON.
    ///
    /// Feed it to `df`, `plan` or `explain` with --from-snapshot to reproduce a decision
    /// without an engine.
    Snapshot {
        /// Write to FILE instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show usage by class with exact shared-layer accounting.
    Df {
        /// List every image with unique and shared bytes, last use and containers.
        #[arg(short, long)]
        verbose: bool,
        #[command(flatten)]
        source: Source,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show what a prune would delete and why (a dry run: never deletes).
    Plan {
        #[command(flatten)]
        goal: GoalArgs,
        #[command(flatten)]
        source: Source,
        /// Also list every candidate left alone, with why.
        #[arg(long)]
        show_skipped: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Delete what the plan says, safely: re-check each step just before deleting it.
    ///
    /// Shows the plan (as `dockgc plan` does), asks for confirmation on a terminal unless
    /// -f/--force, then for each step: records the intent in the audit trail, re-checks it
    /// against fresh engine data (still unused, unprotected, old enough), deletes it without
    /// force (gone already: fine; in use now: skipped), records the outcome. Under a disk target
    /// it re-measures the filesystem as it goes, stops evicting once the target is reached, and
    /// plans again from fresh data if an estimate was optimistic. Ends with planned against
    /// measured bytes freed.
    ///
    /// Examples:
    ///   dockgc prune                      routine rules, plus eviction above disk.high
    ///   dockgc prune -f --free 50GB       free 50 GB without asking
    ///   dockgc plan --format json > p.json && dockgc prune --plan p.json
    #[command(verbatim_doc_comment)]
    Prune(PruneArgs),
    /// Explain why an image, container, volume or network would or would not be deleted.
    Explain {
        /// Image tag or ID, container name or ID, volume name, network name.
        reference: String,
        #[command(flatten)]
        goal: GoalArgs,
        #[command(flatten)]
        source: Source,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print or check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the governor: watch the disk and free space by the policy, for as long as it runs.
    ///
    /// Measures the Docker filesystem every schedule.check_every (and at once when an image
    /// arrives); above disk.high it runs a cycle that frees down to disk.low. Routine cycles
    /// run at the schedule.cron times; a time missed while stopped is made up once at start.
    /// Keeps a use history fed by the engine's events, reconciled after every reconnect.
    /// Signals: SIGTERM/SIGINT finish the deletion in flight and exit 0; SIGHUP reloads the
    /// config (an invalid one is refused and the old one kept); SIGUSR1 runs a cycle now.
    /// Serves Prometheus metrics on http://127.0.0.1:9714/metrics, and /healthz, /readyz
    /// (metrics.listen); sends webhooks ([[notify.webhook]]). See docs/metrics.md and
    /// docs/notifications.md.
    #[command(verbatim_doc_comment)]
    Run {
        /// Deletions in flight at once.
        #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
        parallel: u16,
        /// Serve /metrics, /healthz and /readyz on ADDR:PORT ("off": not at all). Overrides
        /// metrics.listen (default 127.0.0.1:9714).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Show the governor's state: engine connection, usage against the watermarks, the next
    /// scheduled cycle, the last cycles.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Query the audit trail: every intent and outcome, with time, cycle, object, reason,
    /// rule and bytes.
    Log {
        /// Only records this recent (e.g. 24h, 7d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// Only deletions of this kind (container, image, volume, network, build_cache).
        #[arg(long, value_name = "KIND")]
        kind: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Ask the running governor for a cycle now (sends it SIGUSR1).
    Trigger,
    /// Webhook notifications.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Find the waste baked into images and the Dockerfile fix for each.
    ///
    /// For every image (largest first) or those named: bytes per layer and wasted bytes by
    /// cause: conda package caches, pip caches, apt lists and .deb archives, npm/yarn caches,
    /// files deleted or overwritten in a later layer (their bytes still ship), identical files
    /// in more than one layer. Each finding names the layer's command and the fix. Then the
    /// host view: each layer's waste counted once, with the images that carry it.
    ///
    /// Layers come from the engine's layer directories when dockgc runs on its host as root
    /// (fast), else from `docker save` streamed through the API; each layer's result is kept
    /// in the state directory, so the next audit reads only new layers. --archive audits a
    /// `docker save` or OCI archive file without an engine.
    ///
    /// Exit codes: 0 fine; 1 an image exceeds --max-waste or is below --min-efficiency;
    /// 2 error. Examples:
    ///   dockgc audit                            every image on the host
    ///   dockgc audit --max-waste 200MB myapp:ci fail a CI job on a wasteful image
    ///   docker save myapp:ci | dockgc audit --archive - --min-efficiency 90%
    #[command(verbatim_doc_comment)]
    Audit(AuditArgs),
    /// Replay a trace of a host's activity through the planner, in memory, in seconds.
    ///
    /// Try watermarks and keep rules on a recorded (`dockgc record`) or generated (`dockgc
    /// trace generate`) history before deploying them: the report gives jobs that found their
    /// image gone (misses) and the bytes loaded again for them, arrivals that found the disk
    /// full, peak and mean usage, deletions. --compare replays the peers at the same budget
    /// (your disk.low): docuum, a nightly `docker system prune -af`, a nightly dangling-image
    /// prune, an ideal LRU and the offline reference that knows the future.
    Simulate {
        /// The trace (JSON lines, docs/trace-format.md).
        #[arg(long, value_name = "FILE")]
        trace: PathBuf,
        /// Also replay the peers and the references at the same budget.
        #[arg(long)]
        compare: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Traces for `dockgc simulate`.
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Record the host's activity (image arrivals, container starts) as a trace for
    /// `dockgc simulate`, until interrupted or --duration.
    Record {
        /// Write the trace to FILE (default: standard output).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Stop after this long (e.g. 24h, 7d).
        #[arg(long, value_name = "DURATION")]
        duration: Option<String>,
    },
}

/// `dockgc trace …`.
#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Write a synthetic trace of a CI/ML host: builds that replace tags, Zipf-skewed job
    /// popularity, new base versions, leftover containers and volumes. The defaults are the
    /// benchmarks' default trace.
    Generate {
        /// Simulated days.
        #[arg(long, default_value_t = 10)]
        days: u32,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Application repositories.
        #[arg(long, default_value_t = 60)]
        repositories: u32,
        /// Builds per day.
        #[arg(long, default_value_t = 40)]
        builds_per_day: u32,
        /// Jobs per day.
        #[arg(long, default_value_t = 400)]
        uses_per_day: u32,
        /// Zipf exponent of job popularity (0: uniform).
        #[arg(long, default_value_t = 1.1)]
        skew: f64,
        /// Disk capacity (e.g. 2.5GB).
        #[arg(long, default_value = "2.5GB", value_name = "SIZE")]
        capacity: String,
        /// Multiply every byte count (layers, leftovers, capacity, other bytes) by this, after
        /// generating: the same trace at a smaller size, for replays on a slow disk. Every
        /// decision that compares bytes with bytes stays the same.
        #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
        scale: f64,
        /// Write to FILE instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// `dockgc audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Images (tags or IDs); every image when none is named.
    pub images: Vec<String>,
    /// Read this docker-save or OCI archive ("-": standard input) instead of the engine.
    #[arg(long, value_name = "FILE")]
    pub archive: Option<PathBuf>,
    /// Where to read layers from.
    #[arg(long, value_enum, default_value_t = crate::inspect::Source::Auto)]
    pub source: crate::inspect::Source,
    /// Exit 1 if an image wastes more than this (e.g. 200MB).
    #[arg(long, value_name = "SIZE")]
    pub max_waste: Option<String>,
    /// Exit 1 if an image's efficiency (share of bytes not wasted) is below this (e.g. 90%).
    #[arg(long, value_name = "PERCENT")]
    pub min_efficiency: Option<String>,
    /// Findings and host-view rows shown in the table.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub top: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `dockgc notify …`.
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a test notice (event "test") to every configured receiver, one attempt each, and
    /// say how each answered. Exits 2 if any failed.
    Test {
        /// Only the receiver with this name.
        #[arg(long, value_name = "NAME")]
        receiver: Option<String>,
    },
}

/// `dockgc config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the documented default config file.
    Default,
    /// Validate a config file; errors name the key, the line and what is allowed.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

/// Where the world comes from.
#[derive(Debug, Args)]
pub struct Source {
    /// Read the world from a snapshot file (from `dockgc snapshot`) instead of the engine.
    #[arg(long, value_name = "FILE")]
    pub from_snapshot: Option<PathBuf>,
}

/// What to plan for beyond the routine rules.
#[derive(Debug, Args)]
pub struct GoalArgs {
    /// Free at least this much disk space (e.g. 20GB), evicting unused images LRU-first.
    #[arg(long, value_name = "SIZE", conflicts_with = "target_usage")]
    pub free: Option<String>,
    /// Bring disk usage down to this percentage (e.g. 70%).
    #[arg(long, value_name = "PERCENT")]
    pub target_usage: Option<String>,
    /// Consider only these images (tag or ID; repeatable). Each still obeys every safety rule;
    /// no routine rule runs.
    #[arg(long = "image", value_name = "REF")]
    pub images: Vec<String>,
}

/// `dockgc prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub goal: GoalArgs,
    /// Execute a plan saved with `dockgc plan --format json` instead of planning anew. Every
    /// step is still re-checked against the engine before it runs.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["free", "target_usage", "images"])]
    pub plan: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
    /// Stop after this many deletions.
    #[arg(long, value_name = "N")]
    pub max_deletions: Option<usize>,
    /// Stop before deleting more than this many bytes (Docker's accounting), e.g. 50GB.
    #[arg(long, value_name = "SIZE")]
    pub max_bytes: Option<String>,
    /// Deletions in flight at once.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Write the audit trail (every intent and outcome) as JSON lines to FILE instead of the
    /// state database (see --state-dir and `dockgc log`).
    #[arg(long, env = "DOCKGC_AUDIT_FILE", value_name = "FILE")]
    pub audit_file: Option<PathBuf>,
    /// Also list every candidate left alone, with why.
    #[arg(long)]
    pub show_skipped: bool,
    /// Output format of the plan and the report.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}
