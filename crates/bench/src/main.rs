//! `dockgc-bench`: the benchmark driver behind `bench/replay` and `bench/compare`: replays a
//! trace against a real engine. Not shipped: a tool of the repository.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod replay;
mod settle;
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
        #[command(flatten)]
        options: replay::Options,
        /// Where to write the result.
        #[arg(long, short)]
        output: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Replay {
            trace,
            options,
            output,
        } => {
            let text = std::fs::read_to_string(&trace)
                .with_context(|| format!("read {}", trace.display()))?;
            let trace = dockgc_core::trace::Trace::parse(&text).map_err(|e| {
                anyhow::anyhow!("{}: line {}: {}", trace.display(), e.line, e.message)
            })?;
            let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
            let result = runtime.block_on(replay::replay(trace, options))?;
            std::fs::write(&output, serde_json::to_vec_pretty(&result)?)
                .with_context(|| format!("write {}", output.display()))?;
            Ok(())
        }
    }
}
