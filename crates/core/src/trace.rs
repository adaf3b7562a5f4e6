//! Traces of a CI/ML host's activity over days, in a documented JSON-lines format
//! (`docs/trace-format.md`), and a seeded generator of them. `dockgc simulate` replays a trace
//! through the planner; `dockgc record` writes one from a real host; the benchmarks replay the
//! same traces against real engines.
//!
//! A trace is a header line, then events in time order. Images are identified by an ID and
//! made of layers (ID and bytes) shared between images with the same base.

use serde::{Deserialize, Serialize};

use crate::model::Timestamp;

/// Version of the trace format.
pub const TRACE_VERSION: u32 = 1;

/// The first line of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`TRACE_VERSION`].
    pub version: u32,
    /// Always `header`.
    pub kind: String,
    /// Capacity of the Docker filesystem (bytes).
    pub capacity_bytes: u64,
    /// Bytes used by anything but images, containers and volumes (the OS, logs, …).
    pub other_bytes: u64,
    /// Start of the trace (Unix seconds).
    pub start: Timestamp,
    /// The factor every byte count was multiplied by ([`Trace::scaled`]), when not 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// What the engine's filesystem spends on each object beyond its content. Absent from a
    /// trace: [`Overhead::MEASURED`].
    #[serde(default)]
    pub overhead: Overhead,
    /// The generator's parameters, when generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<TraceParams>,
}

/// Disk bytes the engine spends per object beyond the bytes it reports for it: directories,
/// metadata files, block rounding. Small beside real layers, but a host with hundreds of
/// layers spends tens of megabytes on them, and usage watermarks see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overhead {
    /// Per layer present (its overlay2 directory, layer database entry, image config share).
    pub layer_bytes: u64,
    /// Per container (its init and writable layers, config), even when it wrote nothing.
    pub container_bytes: u64,
}

impl Overhead {
    /// Measured by `bench/overhead` on overlay2 over ext4 with Engine 20.10: 50 images of
    /// two 1 MiB layers took 49 KiB a layer beyond their content; 20 containers created from
    /// them and never started took 113 KiB each.
    pub const MEASURED: Self = Self {
        layer_bytes: 49_438,
        container_bytes: 115_712,
    };

    /// None: the disk holds exactly what the trace says.
    pub const NONE: Self = Self {
        layer_bytes: 0,
        container_bytes: 0,
    };
}

impl Default for Overhead {
    fn default() -> Self {
        Self::MEASURED
    }
}

/// A layer of an image in a trace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceLayer {
    /// Layer ID (a chain ID on a recorded host).
    pub id: String,
    /// Bytes.
    pub bytes: u64,
}

/// One event of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An image arrives (built, pulled or loaded) and takes `tag`; the image that had the tag
    /// before becomes dangling.
    Build {
        /// Seconds since the trace's start.
        t: Timestamp,
        /// Image ID.
        image: String,
        /// `repo:tag`, or empty for an untagged image.
        tag: String,
        /// Layers, bottom first.
        layers: Vec<TraceLayer>,
    },
    /// A job runs a container of the image behind `tag` (or of `image` when the tag is
    /// empty) and removes it. When the image is gone it must be loaded again: a miss.
    Use {
        /// Seconds since the trace's start.
        t: Timestamp,
        /// The image the job wants.
        image: String,
        /// The tag it names.
        tag: String,
    },
    /// A stopped container left behind, with its writable layer's bytes.
    Container {
        /// Seconds since the trace's start.
        t: Timestamp,
        /// Container ID.
        id: String,
        /// Its image.
        image: String,
        /// Bytes of its writable layer.
        bytes: u64,
    },
    /// An anonymous volume left behind by a removed container.
    Volume {
        /// Seconds since the trace's start.
        t: Timestamp,
        /// Volume name.
        id: String,
        /// Bytes.
        bytes: u64,
    },
}

impl Event {
    /// Seconds since the trace's start.
    pub fn time(&self) -> Timestamp {
        match self {
            Self::Build { t, .. }
            | Self::Use { t, .. }
            | Self::Container { t, .. }
            | Self::Volume { t, .. } => *t,
        }
    }
}

/// A whole trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The header.
    pub header: Header,
    /// Events in time order.
    pub events: Vec<Event>,
}

/// Why a trace could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for TraceError {}

impl Trace {
    /// Parses JSON lines.
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, first) = lines.next().ok_or(TraceError {
            line: 1,
            message: "empty trace: expected a header line".into(),
        })?;
        let header: Header = serde_json::from_str(first).map_err(|e| TraceError {
            line: 1,
            message: format!("not a trace header: {e}"),
        })?;
        if header.version != TRACE_VERSION || header.kind != "header" {
            return Err(TraceError {
                line: 1,
                message: format!(
                    "trace version {} (kind {:?}); this dockgc reads version {TRACE_VERSION}",
                    header.version, header.kind
                ),
            });
        }
        let mut events = Vec::new();
        let mut last = 0;
        for (i, line) in lines {
            let event: Event = serde_json::from_str(line).map_err(|e| TraceError {
                line: i + 1,
                message: e.to_string(),
            })?;
            if event.time() < last {
                return Err(TraceError {
                    line: i + 1,
                    message: format!("time {} goes back (after {last})", event.time()),
                });
            }
            last = event.time();
            events.push(event);
        }
        Ok(Self { header, events })
    }

    /// JSON lines: the header, then one event per line.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::new();
        // Plain data structures always serialize.
        out.push_str(&serde_json::to_string(&self.header).unwrap_or_default());
        out.push('\n');
        for e in &self.events {
            out.push_str(&serde_json::to_string(e).unwrap_or_default());
            out.push('\n');
        }
        out
    }

    /// Seconds the trace spans.
    pub fn duration(&self) -> Timestamp {
        self.events.last().map_or(0, Event::time)
    }

    /// The same trace with every byte count multiplied by `factor` (rounded): the capacity,
    /// the other bytes, every layer and leftover. Watermarks, budgets and eviction orders
    /// compare bytes with bytes, so a policy decides nearly the same on it; it only runs
    /// faster on a real disk. The engine's [`Overhead`] per object is not scaled (a real disk
    /// spends it whatever the content), so it weighs `1 / factor` times more.
    pub fn scaled(mut self, factor: f64) -> Self {
        if factor == 1.0 {
            return self;
        }
        let scale = |b: &mut u64| *b = (*b as f64 * factor).round() as u64;
        scale(&mut self.header.capacity_bytes);
        scale(&mut self.header.other_bytes);
        self.header.scale = Some(self.header.scale.unwrap_or(1.0) * factor);
        for e in &mut self.events {
            match e {
                Event::Build { layers, .. } => layers.iter_mut().for_each(|l| scale(&mut l.bytes)),
                Event::Container { bytes, .. } | Event::Volume { bytes, .. } => scale(bytes),
                Event::Use { .. } => {}
            }
        }
        self
    }
}

/// Parameters of [`generate`]. The defaults are the benchmarks' default trace; keep them fixed
/// (a new trace is reported beside it, never in its place).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceParams {
    /// Seed.
    pub seed: u64,
    /// Simulated days.
    pub days: u32,
    /// Application repositories.
    pub repositories: u32,
    /// Base images (Miniconda-like), each repository built on one.
    pub bases: u32,
    /// Builds per day (a build replaces its repository's tag).
    pub builds_per_day: u32,
    /// Jobs per day (image uses).
    pub uses_per_day: u32,
    /// Zipf exponent of repository popularity for uses (0: uniform; 1.2: a few images take
    /// most jobs).
    pub skew: f64,
    /// Bytes of a base image (range).
    pub base_bytes: (u64, u64),
    /// Bytes of an application layer (range).
    pub app_bytes: (u64, u64),
    /// A base gets a new version every this many days (0: never).
    pub base_every_days: u32,
    /// Share of jobs that leave a stopped container behind.
    pub leftover_containers: f64,
    /// Share of jobs that leave an anonymous volume behind.
    pub leftover_volumes: f64,
    /// Capacity of the disk.
    pub capacity_bytes: u64,
    /// Bytes used by the OS and everything else.
    pub other_bytes: u64,
}

impl Default for TraceParams {
    fn default() -> Self {
        Self {
            seed: 42,
            days: 10,
            repositories: 60,
            bases: 3,
            builds_per_day: 40,
            uses_per_day: 400,
            skew: 1.1,
            base_bytes: (120_000_000, 220_000_000),
            app_bytes: (5_000_000, 40_000_000),
            base_every_days: 3,
            leftover_containers: 0.05,
            leftover_volumes: 0.01,
            capacity_bytes: 2_500_000_000,
            other_bytes: 150_000_000,
        }
    }
}

/// SplitMix64: small, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.next() % (hi.saturating_sub(lo) + 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A seeded trace of a CI/ML host: builds replace tags (the previous build turns dangling),
/// jobs use images with Zipf-skewed popularity, bases get new versions, some jobs leave
/// containers and volumes behind.
pub fn generate(params: &TraceParams) -> Trace {
    let mut rng = Rng(params.seed);
    let day = 86_400;
    // Zipf weights of repositories for uses; builds follow the same popularity, flattened.
    let weights: Vec<f64> = (1..=params.repositories)
        .map(|r| 1.0 / (r as f64).powf(params.skew))
        .collect();
    let build_weights: Vec<f64> = (1..=params.repositories)
        .map(|r| 1.0 / (r as f64).powf(params.skew / 2.0))
        .collect();
    let pick = |rng: &mut Rng, w: &[f64]| -> usize {
        let total: f64 = w.iter().sum();
        let mut x = rng.unit() * total;
        for (i, v) in w.iter().enumerate() {
            if x < *v {
                return i;
            }
            x -= v;
        }
        w.len() - 1
    };
    let base_of: Vec<u32> = (0..params.repositories)
        .map(|r| r % params.bases.max(1))
        .collect();
    let mut base_version = vec![0u32; params.bases.max(1) as usize];
    let base_layers = |base: u32, version: u32, rng: &mut Rng| -> Vec<TraceLayer> {
        // Two layers: the OS and the conda environment.
        let total = rng.range(params.base_bytes);
        vec![
            TraceLayer {
                id: format!("os-{base}"),
                bytes: 60_000_000,
            },
            TraceLayer {
                id: format!("conda-{base}-v{version}"),
                bytes: total.saturating_sub(60_000_000),
            },
        ]
    };
    let mut bases: Vec<Vec<TraceLayer>> = (0..params.bases.max(1))
        .map(|b| base_layers(b, 0, &mut rng))
        .collect();
    let mut events: Vec<Event> = Vec::new();
    let mut builds = 0u64;
    // The current image of each repository.
    let mut current: Vec<Option<String>> = vec![None; params.repositories as usize];
    let build = |repo: usize,
                 t: Timestamp,
                 rng: &mut Rng,
                 builds: &mut u64,
                 bases: &[Vec<TraceLayer>],
                 current: &mut Vec<Option<String>>,
                 events: &mut Vec<Event>| {
        *builds += 1;
        let image = format!("img-{}", *builds);
        let mut layers = bases[base_of[repo] as usize].clone();
        layers.push(TraceLayer {
            id: format!("app-{}", *builds),
            bytes: rng.range(params.app_bytes),
        });
        events.push(Event::Build {
            t,
            image: image.clone(),
            tag: format!("ml/app-{repo}:latest"),
            layers,
        });
        current[repo] = Some(image);
    };
    // Every repository exists at the start (a warm host).
    for repo in 0..params.repositories as usize {
        build(
            repo,
            0,
            &mut rng,
            &mut builds,
            &bases,
            &mut current,
            &mut events,
        );
    }
    for d in 0..params.days as i64 {
        let start = d * day;
        if params.base_every_days > 0 && d > 0 && d % params.base_every_days as i64 == 0 {
            let b = rng.below(params.bases.max(1) as u64) as usize;
            base_version[b] += 1;
            bases[b] = base_layers(b as u32, base_version[b], &mut rng);
        }
        let mut day_events: Vec<(Timestamp, u8, usize)> = Vec::new();
        for _ in 0..params.builds_per_day {
            day_events.push((
                start + rng.below(day as u64) as i64,
                0,
                pick(&mut rng, &build_weights),
            ));
        }
        for _ in 0..params.uses_per_day {
            day_events.push((
                start + rng.below(day as u64) as i64,
                1,
                pick(&mut rng, &weights),
            ));
        }
        day_events.sort();
        for (t, kind, repo) in day_events {
            if kind == 0 {
                build(
                    repo,
                    t,
                    &mut rng,
                    &mut builds,
                    &bases,
                    &mut current,
                    &mut events,
                );
                continue;
            }
            let Some(image) = current[repo].clone() else {
                continue;
            };
            events.push(Event::Use {
                t,
                image: image.clone(),
                tag: format!("ml/app-{repo}:latest"),
            });
            if rng.unit() < params.leftover_containers {
                events.push(Event::Container {
                    t,
                    id: format!("c-{t}-{repo}"),
                    image: image.clone(),
                    bytes: rng.range((1_000_000, 10_000_000)),
                });
            }
            if rng.unit() < params.leftover_volumes {
                events.push(Event::Volume {
                    t,
                    id: format!("v-{t}-{repo}"),
                    bytes: rng.range((1_000_000, 10_000_000)),
                });
            }
        }
    }
    Trace {
        header: Header {
            version: TRACE_VERSION,
            kind: "header".into(),
            capacity_bytes: params.capacity_bytes,
            other_bytes: params.other_bytes,
            start: 1_767_225_600, // 2026-01-01T00:00:00Z: traces start at midnight UTC.
            scale: None,
            overhead: Overhead::MEASURED,
            params: Some(params.clone()),
        },
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_trace_round_trips_and_is_deterministic() {
        let params = TraceParams {
            days: 2,
            ..TraceParams::default()
        };
        let a = generate(&params);
        assert_eq!(a, generate(&params));
        let text = a.to_json_lines();
        assert_eq!(Trace::parse(&text).unwrap(), a);
        let uses = a
            .events
            .iter()
            .filter(|e| matches!(e, Event::Use { .. }))
            .count();
        assert_eq!(uses, 2 * 400);
        assert!(a.duration() < 2 * 86_400);
    }

    #[test]
    fn bad_lines_are_named() {
        let err = Trace::parse("{\"version\":1,\"kind\":\"header\",\"capacity_bytes\":1,\"other_bytes\":0,\"start\":0}\n{\"event\":\"use\"}\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = Trace::parse("{\"version\":9,\"kind\":\"header\",\"capacity_bytes\":1,\"other_bytes\":0,\"start\":0}").unwrap_err();
        assert!(err.message.contains("version 9"));
    }
}
