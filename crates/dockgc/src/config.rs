//! The TOML config file: raw parsing, then validation into a [`Policy`].
//!
//! Every error names the file, the line, the key and what is allowed. The documented default
//! file is [`DEFAULT_CONFIG`]; `docs/configuration.md` explains each key, and a test checks that
//! the default file parses to [`Policy::default`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use dockgc_core::policy::{
    LabelPattern, RefPattern, Removal, UnderPressure, UnusedImages, Watermark,
};
use dockgc_core::Policy;
use serde::Deserialize;
use toml::Spanned;

/// The default config file, as `dockgc config default` prints it.
pub const DEFAULT_CONFIG: &str = include_str!("../../../docs/dockgc.toml");

/// Where a config file is looked for when neither `-c` nor `DOCKGC_CONFIG` names one.
pub const SYSTEM_CONFIG: &str = "/etc/dockgc/dockgc.toml";

/// A config error: where, which key, what is wrong, what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key (`disk.high`), when known.
    pub key: Option<String>,
    /// What is wrong, and what is allowed.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

type Field<T> = Option<Spanned<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    disk: RawDisk,
    #[serde(default)]
    keep: RawKeep,
    #[serde(default)]
    containers: RawContainers,
    #[serde(default)]
    images: RawImages,
    #[serde(default)]
    volumes: RawVolumes,
    #[serde(default)]
    build_cache: RawBuildCache,
    #[serde(default)]
    networks: RawNetworks,
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    notify: RawNotify,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[serde(default)]
    webhook: Vec<Spanned<RawWebhook>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: Field<String>,
    url: Field<String>,
    format: Field<String>,
    events: Field<Vec<Spanned<String>>>,
    secret: Field<String>,
    secret_env: Field<String>,
    timeout: Field<String>,
    retries: Field<i64>,
}

/// The default address of the governor's HTTP endpoints (`/metrics`, `/healthz`, `/readyz`):
/// loopback only, so nothing is exposed unless the operator says so.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9714";

/// A webhook receiver (`[[notify.webhook]]`).
#[derive(Clone, PartialEq)]
pub struct Webhook {
    /// Its name in logs and metrics (never the URL, which often holds a token).
    pub name: String,
    /// Where to POST.
    pub url: String,
    /// The payload's shape.
    pub format: crate::notify::Format,
    /// The events it receives.
    pub events: Vec<crate::notify::NoticeKind>,
    /// Key of the HMAC-SHA256 signature header, when set.
    pub secret: Option<String>,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first failed one.
    pub retries: u32,
}

// Written by hand: the URL and the secret must never reach a log through `{:?}`.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &crate::notify::redact_url(&self.url))
            .field("format", &self.format)
            .field("events", &self.events)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: Field<Vec<Spanned<String>>>,
    check_every: Field<String>,
}

/// When `dockgc run` acts besides watermark crossings.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// 5-field cron expressions (UTC) of routine cycles.
    pub cron: Vec<String>,
    /// How often the watermark monitor measures the disk.
    pub check_every: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            cron: vec!["0 2 * * *".into()],
            check_every: Duration::from_secs(10),
        }
    }
}

/// Everything a config file sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// What may be deleted.
    pub policy: Policy,
    /// When the governor runs cycles.
    pub schedule: Schedule,
    /// Where the governor serves `/metrics`, `/healthz` and `/readyz`; `None`: nowhere.
    pub listen: Option<std::net::SocketAddr>,
    /// Webhook receivers.
    pub webhooks: Vec<Webhook>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            schedule: Schedule::default(),
            // The constant is a valid address (a test checks it).
            listen: DEFAULT_LISTEN.parse().ok(),
            webhooks: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    high: Field<String>,
    low: Field<String>,
    inodes_high: Field<String>,
    inodes_low: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeep {
    images: Field<Vec<Spanned<String>>>,
    labels: Field<Vec<Spanned<String>>>,
    recent: Field<String>,
    min_age: Field<String>,
    per_repository: Field<i64>,
    under_pressure: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainers {
    stopped: Field<String>,
    stopped_after: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImages {
    dangling: Field<String>,
    dangling_after: Field<String>,
    unused: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolumes {
    anonymous: Field<String>,
    anonymous_after: Field<String>,
    named: Field<String>,
    named_after: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuildCache {
    prune: Field<String>,
    keep: Field<String>,
    max_age: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetworks {
    unused: Field<String>,
}

/// Loads the config: `path` if given, else the system file if present, else the defaults.
/// Returns the policy and the file it came from.
pub fn load(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(SYSTEM_CONFIG)).filter(|p| p.exists()),
    };
    let Some(path) = path else {
        return Ok((Config::default(), None));
    };
    let name = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
        file: name.clone(),
        line: None,
        key: None,
        message: format!("cannot read the config file: {e}"),
    })?;
    Ok((parse(&text, &name)?, Some(path)))
}

/// Parses and validates config text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let checker = Checker { text, file };
    let mut raw: RawConfig = toml::from_str(text).map_err(|e| checker.toml_error(&e))?;
    let schedule = checker.schedule(std::mem::take(&mut raw.schedule))?;
    let listen = checker.listen(raw.metrics.listen.take())?;
    let webhooks = checker.webhooks(std::mem::take(&mut raw.notify.webhook))?;
    Ok(Config {
        policy: checker.validate(raw)?,
        schedule,
        listen,
        webhooks,
    })
}

struct Checker<'a> {
    text: &'a str,
    file: &'a str,
}

const SIZE_ALLOWED: &str =
    "a size such as \"10GB\", \"500MB\", \"2GiB\" or \"0\" (units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)";
const DURATION_ALLOWED: &str =
    "a duration such as \"90s\", \"30m\", \"24h\", \"7d\", \"2w\" or \"1h30m\", or \"0\"";
const PERCENT_ALLOWED: &str = "a percentage from 0% to 100%, such as \"85%\"";
const WATERMARK_ALLOWED: &str =
    "a used percentage such as \"85%\" or the space to keep free such as \"20GB free\"";

impl Checker<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    /// The dotted key on the line at `offset`: the nearest `[table]` header above plus the
    /// key before `=`.
    fn key_at(&self, offset: usize) -> Option<String> {
        let line_no = self.line_of(offset);
        let lines: Vec<&str> = self.text.lines().collect();
        let line = lines.get(line_no - 1)?.trim();
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty());
        let table = lines[..line_no - 1].iter().rev().find_map(|l| {
            let l = l.trim();
            l.starts_with('[')
                .then(|| l.trim_matches(['[', ']', ' ']).to_string())
        });
        match (table, key) {
            (Some(t), Some(k)) => Some(format!("{t}.{k}")),
            (None, Some(k)) => Some(k),
            (Some(t), None) if line.starts_with('[') => Some(t),
            _ => None,
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let offset = e.span().map(|s| s.start);
        ConfigError {
            file: self.file.to_string(),
            line: offset.map(|o| self.line_of(o)),
            key: offset.and_then(|o| self.key_at(o)),
            message: e
                .message()
                .trim()
                .replace("expected i64", "expected a whole number")
                .replace(
                    "expected a sequence",
                    "expected a list such as [\"a\", \"b\"]",
                ),
        }
    }

    fn error(&self, span: std::ops::Range<usize>, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: Some(self.line_of(span.start)),
            key: Some(key.to_string()),
            message,
        }
    }

    fn value<T>(
        &self,
        field: Field<String>,
        key: &str,
        default: T,
        allowed: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        let Some(field) = field else {
            return Ok(default);
        };
        let span = field.span();
        let text = field.into_inner();
        parse(text.trim()).ok_or_else(|| {
            self.error(
                span,
                key,
                format!("`{text}` is not valid; expected {allowed}"),
            )
        })
    }

    fn duration(
        &self,
        field: Field<String>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        self.value(field, key, default, DURATION_ALLOWED, parse_duration)
    }

    fn removal(
        &self,
        field: Field<String>,
        key: &str,
        default: Removal,
    ) -> Result<Removal, ConfigError> {
        self.value(field, key, default, "\"remove\" or \"keep\"", |s| match s {
            "remove" => Some(Removal::Remove),
            "keep" => Some(Removal::Keep),
            _ => None,
        })
    }

    fn schedule(&self, raw: RawSchedule) -> Result<Schedule, ConfigError> {
        let d = Schedule::default();
        let cron = match raw.cron {
            None => d.cron,
            Some(list) => list
                .into_inner()
                .into_iter()
                .map(|c| {
                    let span = c.span();
                    let text = c.into_inner();
                    crate::schedule::parse_cron(&text).map(|_| text.clone()).map_err(|e| {
                        self.error(span, "schedule.cron", format!("`{text}` is not valid: {e}; expected a 5-field cron expression such as \"0 2 * * *\" (UTC)"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let check_every = self.duration(raw.check_every, "schedule.check_every", d.check_every)?;
        if check_every.is_zero() {
            return Err(ConfigError {
                file: self.file.to_string(),
                line: None,
                key: Some("schedule.check_every".into()),
                message: "must be at least 1s".into(),
            });
        }
        Ok(Schedule { cron, check_every })
    }

    fn listen(&self, field: Field<String>) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        self.value(
            field,
            "metrics.listen",
            DEFAULT_LISTEN.parse().ok(),
            "an address and port such as \"127.0.0.1:9714\" or \"[::1]:9714\", or \"off\"",
            |s| match s {
                "off" => Some(None),
                _ => s.parse().ok().map(Some),
            },
        )
    }

    fn webhooks(&self, raw: Vec<Spanned<RawWebhook>>) -> Result<Vec<Webhook>, ConfigError> {
        use crate::notify::{Format, NoticeKind};
        let mut hooks: Vec<Webhook> = Vec::new();
        for (i, entry) in raw.into_iter().enumerate() {
            let whole = entry.span();
            let raw = entry.into_inner();
            let key = |k: &str| format!("notify.webhook[{i}].{k}");
            let name = match raw.name {
                None => format!("webhook-{}", i + 1),
                Some(n) => {
                    let span = n.span();
                    let n = n.into_inner();
                    let valid = !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                    if !valid {
                        return Err(self.error(span, &key("name"), format!("`{n}` is not valid; expected letters, digits, `-` and `_` (it labels metrics and logs)")));
                    }
                    n
                }
            };
            if let Some(other) = hooks.iter().find(|h| h.name == name) {
                return Err(self.error(
                    whole,
                    &key("name"),
                    format!(
                        "`{}` names two receivers; each needs its own name",
                        other.name
                    ),
                ));
            }
            let Some(url) = raw.url else {
                return Err(self.error(
                    whole,
                    &key("url"),
                    "is required: the http:// or https:// address to POST to".into(),
                ));
            };
            let url_span = url.span();
            let url = url.into_inner();
            let parsed = reqwest::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if parsed.is_none() {
                // The URL may hold a token: the error shows only its redacted form.
                return Err(self.error(
                    url_span,
                    &key("url"),
                    format!(
                        "`{}` is not valid; expected an http:// or https:// URL",
                        crate::notify::redact_url(&url)
                    ),
                ));
            }
            let format = self.value(
                raw.format,
                &key("format"),
                Format::Json,
                "\"json\" (dockgc's documented payload) or \"slack\" (Slack-compatible)",
                |s| match s {
                    "json" => Some(Format::Json),
                    "slack" => Some(Format::Slack),
                    _ => None,
                },
            )?;
            let events = match raw.events {
                None => NoticeKind::SUBSCRIBABLE.to_vec(),
                Some(list) => list
                    .into_inner()
                    .into_iter()
                    .map(|e| {
                        let span = e.span();
                        let text = e.into_inner();
                        NoticeKind::SUBSCRIBABLE
                            .iter()
                            .copied()
                            .find(|k| k.as_str() == text)
                            .ok_or_else(|| {
                                let allowed: Vec<String> = NoticeKind::SUBSCRIBABLE
                                    .iter()
                                    .map(|k| format!("\"{}\"", k.as_str()))
                                    .collect();
                                self.error(
                                    span,
                                    &key("events"),
                                    format!(
                                        "`{text}` is not an event; expected some of {}",
                                        allowed.join(", ")
                                    ),
                                )
                            })
                    })
                    .collect::<Result<_, _>>()?,
            };
            let secret = match (raw.secret, raw.secret_env) {
                (Some(s), None) => Some(s.into_inner()),
                (None, Some(var)) => {
                    let span = var.span();
                    let var = var.into_inner();
                    match std::env::var(&var) {
                        Ok(v) if !v.is_empty() => Some(v),
                        _ => return Err(self.error(span, &key("secret_env"), format!("the environment variable `{var}` is not set (or empty); set it, or remove the key"))),
                    }
                }
                (None, None) => None,
                (Some(_), Some(var)) => {
                    return Err(self.error(
                        var.span(),
                        &key("secret_env"),
                        "set either `secret` or `secret_env`, not both".into(),
                    ))
                }
            };
            let timeout = self.duration(raw.timeout, &key("timeout"), Duration::from_secs(5))?;
            if timeout.is_zero() {
                return Err(self.error(whole, &key("timeout"), "must be at least 1s".into()));
            }
            let retries = match raw.retries {
                None => 3,
                Some(r) => {
                    let span = r.span();
                    let r = r.into_inner();
                    u32::try_from(r).ok().filter(|r| *r <= 10).ok_or_else(|| {
                        self.error(
                            span,
                            &key("retries"),
                            format!("`{r}` is not valid; expected a whole number from 0 to 10"),
                        )
                    })?
                }
            };
            hooks.push(Webhook {
                name,
                url,
                format,
                events,
                secret,
                timeout,
                retries,
            });
        }
        Ok(hooks)
    }

    fn validate(&self, raw: RawConfig) -> Result<Policy, ConfigError> {
        let d = Policy::default();
        let low_span = raw.disk.low.as_ref().map(|f| f.span());
        let high_span = raw.disk.high.as_ref().map(|f| f.span());
        let high = self.value(
            raw.disk.high,
            "disk.high",
            d.disk.high,
            WATERMARK_ALLOWED,
            parse_watermark,
        )?;
        let low = self.value(
            raw.disk.low,
            "disk.low",
            d.disk.low,
            WATERMARK_ALLOWED,
            parse_watermark,
        )?;
        let span = low_span.or(high_span).unwrap_or(0..0);
        match (high, low) {
            (Watermark::UsedPercent(h), Watermark::UsedPercent(l)) if l >= h => {
                return Err(self.error(
                    span,
                    "disk.low",
                    format!("low ({l}%) must be below high ({h}%)"),
                ))
            }
            (Watermark::FreeBytes(h), Watermark::FreeBytes(l)) if l <= h => {
                return Err(self.error(
                    span,
                    "disk.low",
                    format!(
                        "low must keep more free than high ({} free <= {} free)",
                        fmt_size(l),
                        fmt_size(h)
                    ),
                ))
            }
            _ => {}
        }
        let inodes_low_span = raw.disk.inodes_low.as_ref().map(|f| f.span());
        let inodes_high = self.value(
            raw.disk.inodes_high,
            "disk.inodes_high",
            d.disk.inodes_high,
            PERCENT_ALLOWED,
            parse_percent,
        )?;
        let inodes_low = self.value(
            raw.disk.inodes_low,
            "disk.inodes_low",
            d.disk.inodes_low,
            PERCENT_ALLOWED,
            parse_percent,
        )?;
        if inodes_low >= inodes_high {
            return Err(self.error(
                inodes_low_span.unwrap_or(0..0),
                "disk.inodes_low",
                format!("inodes_low ({inodes_low}%) must be below inodes_high ({inodes_high}%)"),
            ));
        }

        let images = match raw.keep.images {
            None => d.keep.images.clone(),
            Some(list) => list
                .into_inner()
                .into_iter()
                .map(|p| {
                    let span = p.span();
                    RefPattern::new(p.get_ref()).map_err(|e| {
                        self.error(span, "keep.images", format!("{e}; expected a reference glob such as \"miniconda:py310*\", \"sha256:<id prefix>\" or \"repo@sha256:<digest>\""))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let labels = match raw.keep.labels {
            None => d.keep.labels.clone(),
            Some(list) => list
                .into_inner()
                .into_iter()
                .map(|p| {
                    let span = p.span();
                    LabelPattern::new(p.get_ref()).map_err(|e| {
                        self.error(
                            span,
                            "keep.labels",
                            format!("{e}; expected \"key\" or \"key=value\""),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let per_repository = match raw.keep.per_repository {
            None => d.keep.per_repository,
            Some(n) => {
                let span = n.span();
                u32::try_from(*n.get_ref()).map_err(|_| {
                    self.error(
                        span,
                        "keep.per_repository",
                        format!(
                            "`{}` is not valid; expected a whole number from 0 to {}",
                            n.get_ref(),
                            u32::MAX
                        ),
                    )
                })?
            }
        };

        Ok(Policy {
            disk: dockgc_core::policy::DiskPolicy {
                high,
                low,
                inodes_high,
                inodes_low,
            },
            keep: dockgc_core::policy::KeepPolicy {
                images,
                labels,
                recent: self.duration(raw.keep.recent, "keep.recent", d.keep.recent)?,
                min_age: self.duration(raw.keep.min_age, "keep.min_age", d.keep.min_age)?,
                per_repository,
                under_pressure: self.value(
                    raw.keep.under_pressure,
                    "keep.under_pressure",
                    d.keep.under_pressure,
                    "\"yield\" or \"hold\"",
                    |s| match s {
                        "yield" => Some(UnderPressure::Yield),
                        "hold" => Some(UnderPressure::Hold),
                        _ => None,
                    },
                )?,
            },
            containers: dockgc_core::policy::ContainerPolicy {
                stopped: self.removal(
                    raw.containers.stopped,
                    "containers.stopped",
                    d.containers.stopped,
                )?,
                stopped_after: self.duration(
                    raw.containers.stopped_after,
                    "containers.stopped_after",
                    d.containers.stopped_after,
                )?,
            },
            images: dockgc_core::policy::ImagePolicy {
                dangling: self.removal(
                    raw.images.dangling,
                    "images.dangling",
                    d.images.dangling,
                )?,
                dangling_after: self.duration(
                    raw.images.dangling_after,
                    "images.dangling_after",
                    d.images.dangling_after,
                )?,
                unused: self.value(
                    raw.images.unused,
                    "images.unused",
                    d.images.unused,
                    "\"lru\", \"remove\" or \"keep\"",
                    |s| match s {
                        "lru" => Some(UnusedImages::Lru),
                        "remove" => Some(UnusedImages::Remove),
                        "keep" => Some(UnusedImages::Keep),
                        _ => None,
                    },
                )?,
            },
            volumes: dockgc_core::policy::VolumePolicy {
                anonymous: self.removal(
                    raw.volumes.anonymous,
                    "volumes.anonymous",
                    d.volumes.anonymous,
                )?,
                anonymous_after: self.duration(
                    raw.volumes.anonymous_after,
                    "volumes.anonymous_after",
                    d.volumes.anonymous_after,
                )?,
                named: self.removal(raw.volumes.named, "volumes.named", d.volumes.named)?,
                named_after: self.duration(
                    raw.volumes.named_after,
                    "volumes.named_after",
                    d.volumes.named_after,
                )?,
            },
            build_cache: dockgc_core::policy::BuildCachePolicy {
                prune: self.removal(
                    raw.build_cache.prune,
                    "build_cache.prune",
                    d.build_cache.prune,
                )?,
                keep_bytes: self.value(
                    raw.build_cache.keep,
                    "build_cache.keep",
                    d.build_cache.keep_bytes,
                    SIZE_ALLOWED,
                    parse_size,
                )?,
                max_age: self.duration(
                    raw.build_cache.max_age,
                    "build_cache.max_age",
                    d.build_cache.max_age,
                )?,
            },
            networks: dockgc_core::policy::NetworkPolicy {
                unused: self.removal(raw.networks.unused, "networks.unused", d.networks.unused)?,
            },
        })
    }
}

fn fmt_size(b: u64) -> String {
    dockgc_core::model::format_bytes(b)
}

/// Parses a size: a number with an optional unit; `GB` is 10^9 and `GiB` is 2^30 bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "k" | "K" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        "TB" | "T" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    let bytes = number * factor as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes.round() as u64)
}

/// Parses a duration: `0`, or one or more `<n><unit>` with units s, m, h, d, w.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut any = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return None,
        };
        let n: u64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        number.clear();
        any = true;
    }
    (any && number.is_empty()).then(|| Duration::from_secs(total))
}

/// Parses a percentage `0%`–`100%`.
pub fn parse_percent(text: &str) -> Option<f64> {
    let n: f64 = text.trim().strip_suffix('%')?.trim().parse().ok()?;
    (0.0..=100.0).contains(&n).then_some(n)
}

/// Parses a watermark: `85%` or `20GB free`.
pub fn parse_watermark(text: &str) -> Option<Watermark> {
    if let Some(size) = text.trim().strip_suffix("free") {
        return parse_size(size).map(Watermark::FreeBytes);
    }
    parse_percent(text).map(Watermark::UsedPercent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse(text, "test.toml").unwrap_err()
    }

    #[test]
    fn the_default_file_is_the_default_policy() {
        assert_eq!(parse(DEFAULT_CONFIG, "default").unwrap(), Config::default());
        assert_eq!(parse("", "empty").unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_name_key_line_and_allowed() {
        let e = err("[disk]\nhigh = \"80%\"\nhihg = \"90%\"\n");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("disk.hihg"));
        assert!(e.message.contains("`high`"), "{e}");
        let e = err("[disks]\n");
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("disks"), "{e}");
    }

    #[test]
    fn malformed_values_name_key_line_and_allowed() {
        let cases = [
            (
                "[build_cache]\nkeep = \"12XB\"\n",
                "build_cache.keep",
                "units",
            ),
            ("[keep]\nrecent = \"soon\"\n", "keep.recent", "duration"),
            ("[disk]\nhigh = \"185%\"\n", "disk.high", "percentage"),
            ("[keep]\nimages = [\"ok\", \"a[\"]\n", "keep.images", "glob"),
            ("[keep]\nlabels = [\"=x\"]\n", "keep.labels", "key=value"),
            (
                "[images]\nunused = \"sometimes\"\n",
                "images.unused",
                "\"lru\"",
            ),
            (
                "[keep]\nper_repository = -1\n",
                "keep.per_repository",
                "whole number",
            ),
            (
                "[keep]\nper_repository = \"two\"\n",
                "keep.per_repository",
                "whole number",
            ),
            ("[keep]\nimages = \"ubuntu\"\n", "keep.images", "list"),
            (
                "[schedule]\ncron = [\"0 2 * *\"]\n",
                "schedule.cron",
                "5-field",
            ),
        ];
        for (text, key, allowed) in cases {
            let e = err(text);
            assert_eq!(e.line, Some(2), "{text}: {e}");
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
            assert!(e.message.contains(allowed), "{text}: {e}");
        }
    }

    #[test]
    fn low_must_be_below_high() {
        let e = err("[disk]\nhigh = \"70%\"\nlow = \"80%\"\n");
        assert_eq!(e.key.as_deref(), Some("disk.low"));
        assert_eq!(e.line, Some(3));
        assert!(e.to_string().starts_with("test.toml:3: `disk.low`:"), "{e}");
        let e = err("[disk]\nhigh = \"10GB free\"\nlow = \"5GB free\"\n");
        assert_eq!(e.key.as_deref(), Some("disk.low"));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10GB"), Some(10_000_000_000));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("1.5kB"), Some(1_500));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("GB"), None);
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("7"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(
            parse_watermark("20GB free"),
            Some(Watermark::FreeBytes(20_000_000_000))
        );
    }

    #[test]
    fn webhooks_and_listen() {
        let c = parse(
            "[metrics]\nlisten = \"off\"\n\n[[notify.webhook]]\nurl = \"http://127.0.0.1:1/h\"\n\n[[notify.webhook]]\nname = \"slack\"\nurl = \"https://hooks.example/T/B/S\"\nformat = \"slack\"\nevents = [\"engine_down\"]\nsecret = \"k\"\nretries = 0\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.listen, None);
        assert_eq!(c.webhooks[0].name, "webhook-1");
        assert_eq!(c.webhooks[0].events.len(), 5);
        assert_eq!(c.webhooks[1].format, crate::notify::Format::Slack);
        assert_eq!(c.webhooks[1].retries, 0);
        let debug = format!("{:?}", c.webhooks[1]);
        assert!(
            !debug.contains("/T/B/S") && !debug.contains("\"k\""),
            "{debug}"
        );
        assert_eq!(Config::default().listen, DEFAULT_LISTEN.parse().ok());
    }

    #[test]
    fn webhook_errors_name_key_line_and_allowed_without_the_secret() {
        let e = err("[[notify.webhook]]\nurl = \"http://h/x\"\nevents = [\"cycle_done\"]\n");
        assert_eq!(e.key.as_deref(), Some("notify.webhook[0].events"));
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("\"cycle_completed\""), "{}", e.message);
        let e = err("[[notify.webhook]]\nurl = \"ftp://h/very-secret-token\"\n");
        assert_eq!(e.key.as_deref(), Some("notify.webhook[0].url"));
        assert!(!e.to_string().contains("very-secret-token"), "{e}");
        let e = err(
            "[[notify.webhook]]\nurl = \"http://h/x\"\nsecret_env = \"DOCKGC_TEST_UNSET_VAR\"\n",
        );
        assert!(e.message.contains("DOCKGC_TEST_UNSET_VAR"), "{e}");
        let e = err("[metrics]\nlisten = \"localhost\"\n");
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("metrics.listen"), Some(2))
        );
        let e = err("[[notify.webhook]]\nname = \"a\"\nurl = \"http://h/x\"\n[[notify.webhook]]\nname = \"a\"\nurl = \"http://h/y\"\n");
        assert!(e.message.contains("two receivers"), "{e}");
    }
}
