//! Webhook notifications: what the governor tells people, and how it gets there.
//!
//! Each receiver has its own bounded queue and delivery task, so a receiver that hangs or
//! fails delays only its own later notices: the governor hands a notice over without waiting
//! (a full queue drops it and counts it). Each delivery is tried `1 + retries` times with a
//! timeout per attempt and exponential backoff between attempts. Receivers' URLs (which often
//! carry a token) and secrets never reach a log: logs and metrics name a receiver by its
//! configured name, and errors are stripped of the URL. `docs/notifications.md` documents
//! the payloads.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Webhook;
use crate::metrics::Metrics;

/// Version of the JSON payload.
pub const PAYLOAD_VERSION: u32 = 1;

/// The signature header: `sha256=` and the hex HMAC-SHA256 of the raw body, keyed with the
/// receiver's secret.
pub const SIGNATURE_HEADER: &str = "X-Dockgc-Signature-256";

/// Notices a receiver's queue holds before new ones are dropped.
const QUEUE: usize = 64;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The shape of a receiver's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// dockgc's own documented JSON (`docs/notifications.md`).
    Json,
    /// `{"text": …}`, which Slack's incoming webhooks (and Mattermost, Rocket.Chat) accept.
    Slack,
}

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A cycle deleted something; says how much it freed.
    CycleCompleted,
    /// A cycle could not bring usage under its target within the policy.
    TargetUnreachable,
    /// The engine stopped answering.
    EngineDown,
    /// The engine answers again.
    EngineUp,
    /// The engine failed a deletion.
    DeletionFailed,
    /// `dockgc notify test`.
    Test,
}

impl NoticeKind {
    /// The events a receiver can subscribe to (`events = [...]`); all by default.
    pub const SUBSCRIBABLE: [NoticeKind; 5] = [
        NoticeKind::CycleCompleted,
        NoticeKind::TargetUnreachable,
        NoticeKind::EngineDown,
        NoticeKind::EngineUp,
        NoticeKind::DeletionFailed,
    ];

    /// The name in configs and payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CycleCompleted => "cycle_completed",
            Self::TargetUnreachable => "target_unreachable",
            Self::EngineDown => "engine_down",
            Self::EngineUp => "engine_up",
            Self::DeletionFailed => "deletion_failed",
            Self::Test => "test",
        }
    }
}

/// Something worth telling a person.
#[derive(Debug, Clone)]
pub struct Notice {
    /// What about.
    pub kind: NoticeKind,
    /// One line for people.
    pub summary: String,
    /// The figures, as documented per event.
    pub data: serde_json::Value,
}

/// The generic JSON payload (version 1).
#[derive(Debug, Serialize)]
struct Payload<'a> {
    version: u32,
    event: &'static str,
    /// Unique per notice; the same across retries, so a receiver can drop duplicates.
    id: &'a str,
    time: &'a str,
    host: &'a str,
    summary: &'a str,
    data: &'a serde_json::Value,
}

/// A notice rendered for one receiver.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    event: &'static str,
    body: Arc<[u8]>,
}

impl Delivery {
    /// `notice` rendered in `format`, as notice `id` from `host`.
    fn new(format: Format, notice: &Notice, id: &str, host: &str) -> Self {
        Self {
            id: id.to_string(),
            event: notice.kind.as_str(),
            body: render(format, notice, id, host).into(),
        }
    }
}

/// The URL with everything after the host hidden: paths and queries of webhook URLs are
/// often the secret.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}/…", u.scheme())
        }
        Err(_) => "<not a URL>".into(),
    }
}

/// `sha256=<hex>` of the body keyed with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn render(format: Format, notice: &Notice, id: &str, host: &str) -> Vec<u8> {
    let time = crate::audit::now_rfc3339();
    let value = match format {
        Format::Json => serde_json::to_value(Payload {
            version: PAYLOAD_VERSION,
            event: notice.kind.as_str(),
            id,
            time: &time,
            host,
            summary: &notice.summary,
            data: &notice.data,
        })
        .unwrap_or_default(),
        Format::Slack => serde_json::json!({
            "text": format!("dockgc on {host}: {}", notice.summary),
        }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Hands notices to the receivers' delivery tasks.
#[derive(Debug)]
pub struct Notifier {
    receivers: Vec<(Webhook, mpsc::Sender<Delivery>)>,
    metrics: Arc<Metrics>,
    host: String,
    /// Stops the delivery tasks of this set of receivers (a reload replaces them).
    stop: CancellationToken,
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Notifier {
    /// Starts a delivery task per receiver, until `stop` or until the notifier is dropped.
    pub fn start(hooks: &[Webhook], metrics: Arc<Metrics>, stop: &CancellationToken) -> Self {
        let stop = stop.child_token();
        let receivers = hooks
            .iter()
            .map(|hook| {
                let (tx, rx) = mpsc::channel(QUEUE);
                metrics.register_receiver(&hook.name);
                tokio::spawn(deliver_queue(
                    hook.clone(),
                    rx,
                    Arc::clone(&metrics),
                    stop.clone(),
                ));
                (hook.clone(), tx)
            })
            .collect();
        Self {
            receivers,
            metrics,
            host: hostname(),
            stop,
        }
    }

    /// Queues `notice` for every receiver that wants it. Never waits.
    pub fn notify(&self, notice: &Notice) {
        let id = new_id();
        for (hook, tx) in &self.receivers {
            if !hook.events.contains(&notice.kind) {
                continue;
            }
            let delivery = Delivery::new(hook.format, notice, &id, &self.host);
            if tx.try_send(delivery).is_err() {
                self.metrics.observe_delivery(&hook.name, "dropped");
                tracing::warn!(
                    receiver = %hook.name,
                    event = notice.kind.as_str(),
                    "webhook queue full (the receiver is slow or down); notice dropped"
                );
            }
        }
    }
}

fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}-{}-{n}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id()
    )
}

fn client(hook: &Webhook) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(hook.timeout)
        .connect_timeout(hook.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dockgc/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.without_url().to_string())
}

/// One attempt. The error never contains the URL.
async fn post(client: &reqwest::Client, hook: &Webhook, delivery: &Delivery) -> Result<(), String> {
    let mut request = client
        .post(&hook.url)
        .header("Content-Type", "application/json")
        .header("X-Dockgc-Event", delivery.event)
        .header("X-Dockgc-Delivery", &delivery.id)
        .body(delivery.body.to_vec());
    if let Some(secret) = &hook.secret {
        request = request.header(SIGNATURE_HEADER, sign(secret, &delivery.body));
    }
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            format!("no answer within {:?}", hook.timeout)
        } else {
            e.without_url().to_string()
        }
    })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered HTTP {status}"))
    }
}

/// Delivers with retries: `1 + retries` attempts, backoff 1 s, 2 s, 4 s … (at most 30 s).
/// Returns the attempts made and the last error.
async fn deliver(
    client: &reqwest::Client,
    hook: &Webhook,
    delivery: &Delivery,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> (u32, Result<(), String>) {
    let mut backoff = Duration::from_secs(1);
    let mut last = Err("not attempted".to_string());
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            metrics.observe_retry(&hook.name);
            tokio::select! {
                _ = stop.cancelled() => return (attempt, last),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        last = tokio::select! {
            _ = stop.cancelled() => return (attempt, Err("stopped".into())),
            r = post(client, hook, delivery) => r,
        };
        if last.is_ok() {
            return (attempt + 1, last);
        }
    }
    (hook.retries + 1, last)
}

async fn deliver_queue(
    hook: Webhook,
    mut rx: mpsc::Receiver<Delivery>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let client = match client(&hook) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(receiver = %hook.name, error = %e, "cannot set up the webhook client");
            return;
        }
    };
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => return,
            d = rx.recv() => match d { Some(d) => d, None => return },
        };
        let (attempts, result) = deliver(&client, &hook, &delivery, &metrics, &stop).await;
        match result {
            Ok(()) => {
                metrics.observe_delivery(&hook.name, "delivered");
                tracing::debug!(receiver = %hook.name, event = delivery.event, attempts, "webhook delivered");
            }
            Err(error) => {
                metrics.observe_delivery(&hook.name, "failed");
                tracing::warn!(
                    receiver = %hook.name,
                    url = %redact_url(&hook.url),
                    event = delivery.event,
                    attempts,
                    %error,
                    "webhook delivery failed"
                );
            }
        }
    }
}

/// `dockgc notify test`: one test notice to each receiver (or the one named), one attempt
/// each. Returns each receiver's name and result.
pub async fn send_test(hooks: &[Webhook]) -> Vec<(String, Result<(), String>)> {
    let host = hostname();
    let notice = Notice {
        kind: NoticeKind::Test,
        summary: "test notification from `dockgc notify test`".into(),
        data: serde_json::json!({}),
    };
    let mut results = Vec::new();
    for hook in hooks {
        let delivery = Delivery::new(hook.format, &notice, &new_id(), &host);
        let result = match client(hook) {
            Ok(c) => post(&c, hook, &delivery).await,
            Err(e) => Err(e),
        };
        results.push((hook.name.clone(), result));
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_to_scheme_and_host() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/hook?token=abc"),
            "http://127.0.0.1:8080/…"
        );
        assert!(!redact_url("http://user:pw@host/x").contains("pw"));
    }

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn json_payload_is_versioned() {
        let notice = Notice {
            kind: NoticeKind::EngineDown,
            summary: "engine down".into(),
            data: serde_json::json!({"error": "x"}),
        };
        let body: serde_json::Value =
            serde_json::from_slice(&render(Format::Json, &notice, "id-1", "h")).unwrap();
        assert_eq!(body["version"], 1);
        assert_eq!(body["event"], "engine_down");
        assert_eq!(body["data"]["error"], "x");
        let slack: serde_json::Value =
            serde_json::from_slice(&render(Format::Slack, &notice, "id-1", "h")).unwrap();
        assert_eq!(slack["text"], "dockgc on h: engine down");
    }
}
