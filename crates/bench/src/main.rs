//! `dockgc-bench`: the benchmark driver behind `bench/replay` and `bench/compare`: replays a
//! trace against a real engine. Not shipped: a tool of the repository.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod replay;
mod synth;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replays a trace against a private engine, compressed in time; the policy under test
    /// runs beside it (or is a nightly prune the replay runs itself). Writes JSON.
    Replay {
        /// The trace (JSON lines, docs/trace-format.md).
        #[arg(long)]
        trace: PathBuf,
        /// The engine (`unix:///…/d.sock`).
        #[arg(long)]
        host: String,
        /// The engine's data root (the capacity-limited filesystem).
        #[arg(long)]
        root: PathBuf,
        /// Real seconds per simulated day.
        #[arg(long, default_value_t = 60.0)]
        day_seconds: f64,
        /// A shell command to run at every simulated 02:00 (e.g. `docker system prune -af`).
        #[arg(long)]
        nightly: Option<String>,
        /// The log of a peer (docuum) whose restarts stop the replay's clock.
        #[arg(long)]
        peer_log: Option<PathBuf>,
        /// Name of the policy under test, for the report.
        #[arg(long)]
        policy: String,
        /// Where to write the result.
        #[arg(long, short)]
        output: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Replay {
            trace,
            host,
            root,
            day_seconds,
            nightly,
            peer_log,
            policy,
            output,
        } => {
            let text = std::fs::read_to_string(&trace)
                .with_context(|| format!("read {}", trace.display()))?;
            let trace = dockgc_core::trace::Trace::parse(&text).map_err(|e| {
                anyhow::anyhow!("{}: line {}: {}", trace.display(), e.line, e.message)
            })?;
            let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
            let result = runtime.block_on(replay::replay(replay::Setup {
                trace,
                host,
                root,
                day_seconds,
                nightly,
                peer_log,
                policy,
            }))?;
            std::fs::write(&output, serde_json::to_vec_pretty(&result)?)
                .with_context(|| format!("write {}", output.display()))?;
            Ok(())
        }
    }
}
