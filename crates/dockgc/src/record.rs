//! `dockgc record`: the host's real activity written as a trace (`docs/trace-format.md`) for
//! `dockgc simulate`. The images present at the start are written as arrivals at time 0; then
//! every image arrival (pull, load, import, build, tag) and every container start, as the
//! engine's event stream reports them.
//!
//! Not recorded: containers and volumes left behind (their sizes are only known when they are
//! measured), and deletions (the simulated policy decides those).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use dockgc_core::model::Snapshot;
use dockgc_core::trace::{Event, Header, Overhead, TraceLayer, TRACE_VERSION};
use dockgc_docker::Engine;
use tokio_util::sync::CancellationToken;

/// What a recording wrote.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Image arrivals (including the images present at the start).
    pub builds: u64,
    /// Container starts.
    pub uses: u64,
}

fn layers_of(snapshot: &Snapshot, image: &dockgc_core::model::Image) -> Vec<TraceLayer> {
    let bytes: HashMap<&str, u64> = snapshot
        .layers
        .iter()
        .map(|l| (l.chain_id.as_str(), l.bytes))
        .collect();
    image
        .layers
        .iter()
        .map(|c| TraceLayer {
            id: c.clone(),
            bytes: bytes.get(c.as_str()).copied().unwrap_or(0),
        })
        .collect()
}

fn line(out: &mut impl Write, value: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    // Each event is on disk at once: a recording stopped by a crash keeps what it saw.
    out.flush()?;
    Ok(())
}

/// Records until `stop` or `duration`.
pub async fn record(
    engine: &Engine,
    out: &mut impl Write,
    duration: Option<Duration>,
    stop: CancellationToken,
) -> Result<Recorded> {
    let start = chrono::Utc::now().timestamp();
    let snapshot = engine.snapshot(start).await?;
    let fs = snapshot.filesystem.context(
        "the Docker filesystem cannot be measured from here: record on the engine's host",
    )?;
    let objects: u64 = snapshot.layers.iter().map(|l| l.bytes).sum::<u64>()
        + snapshot
            .containers
            .iter()
            .filter_map(|c| c.size_rw)
            .sum::<u64>()
        + snapshot.volumes.iter().filter_map(|v| v.bytes).sum::<u64>();
    // Not measured here: the default, for the objects present and for the simulation.
    let overhead = Overhead::MEASURED;
    line(
        out,
        &Header {
            version: TRACE_VERSION,
            kind: "header".into(),
            capacity_bytes: fs.capacity_bytes(),
            // The engine's overhead for the objects present is theirs, not other bytes.
            other_bytes: fs.used_bytes.saturating_sub(
                objects
                    + snapshot.layers.len() as u64 * overhead.layer_bytes
                    + snapshot.containers.len() as u64 * overhead.container_bytes,
            ),
            start,
            scale: None,
            overhead,
            params: None,
        },
    )?;
    let mut recorded = Recorded::default();
    let mut tagged: HashMap<String, HashSet<String>> = HashMap::new();
    for image in &snapshot.images {
        let tags = if image.tags.is_empty() {
            vec![String::new()]
        } else {
            image.tags.clone()
        };
        for tag in tags {
            line(
                out,
                &Event::Build {
                    t: 0,
                    image: image.id.clone(),
                    tag: tag.clone(),
                    layers: layers_of(&snapshot, image),
                },
            )?;
            recorded.builds += 1;
            tagged.entry(image.id.clone()).or_default().insert(tag);
        }
    }
    let mut events = engine.events(None).await?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
            e = events.next() => e?,
        };
        let Some(event) = next else { break };
        let t = (event.time_nanos / 1_000_000_000 - start).max(0);
        match (event.kind.as_str(), event.action.as_str()) {
            ("image", "pull" | "load" | "import" | "tag") => {
                let Some(image) = engine.inspect_image(&event.id).await? else {
                    continue;
                };
                let known = tagged.entry(image.id.clone()).or_default();
                let new_tags: Vec<String> = if image.tags.is_empty() {
                    if known.is_empty() {
                        vec![String::new()]
                    } else {
                        Vec::new()
                    }
                } else {
                    image
                        .tags
                        .iter()
                        .filter(|t| !known.contains(*t))
                        .cloned()
                        .collect()
                };
                if new_tags.is_empty() {
                    continue;
                }
                // Layer sizes come with a snapshot; arrivals are rare enough to afford one.
                let now = engine.snapshot(chrono::Utc::now().timestamp()).await?;
                let layers = now
                    .images
                    .iter()
                    .find(|i| i.id == image.id)
                    .map(|i| layers_of(&now, i))
                    .unwrap_or_default();
                for tag in new_tags {
                    line(
                        out,
                        &Event::Build {
                            t,
                            image: image.id.clone(),
                            tag: tag.clone(),
                            layers: layers.clone(),
                        },
                    )?;
                    recorded.builds += 1;
                    tagged.entry(image.id.clone()).or_default().insert(tag);
                }
            }
            ("container", "start") => {
                let Some(image) = engine.container_image(&event.id).await? else {
                    continue;
                };
                let tag = event
                    .image
                    .filter(|r| !r.starts_with("sha256:") && r.contains(':'))
                    .unwrap_or_default();
                line(out, &Event::Use { t, image, tag })?;
                recorded.uses += 1;
            }
            _ => {}
        }
    }
    Ok(recorded)
}
