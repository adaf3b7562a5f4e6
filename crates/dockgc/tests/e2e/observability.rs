//! Observability end to end: a real Prometheus scraping a running governor, promtool on the
//! exposition, the alert rules and the dashboard, webhooks to local receivers, structured logs,
//! and scrapes while a cycle is stuck on the engine.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::archive::Layer;
use crate::governor::{load_envs, Governor};
use crate::harness::{wait_for, PrivateEngine};
use crate::proxy::{Proxy, Verdict};

/// The repository's root (for `contrib/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One HTTP/1.1 GET: status, body, and how long the answer took.
pub fn get(addr: &str, path: &str, accept: Option<&str>) -> (u16, String, Duration) {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let took = start.elapsed();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    // Chunked or not, the tests look for lines in the body; strip chunk sizes if any.
    (status, dechunk(&body), took)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, tail)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            return out;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of an unlabelled series, or of one with exactly these labels, in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Names of every series an exposition (text format 0.0.4) declares, histogram parts too.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        names.insert(name.to_string());
        if kind == "histogram" {
            for part in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{part}"));
            }
        }
    }
    names
}

/// Every `dockgc_…` identifier in a PromQL expression.
fn referenced_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("dockgc_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if boundary {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus) is installed by scripts/test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

/// A Prometheus server scraping one target every second.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dockgc\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package) is installed by scripts/test");
        let p = Self { child, addr };
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            TcpStream::connect(&p.addr).ok()?;
            (get(&p.addr, "/-/ready", None).0 == 200).then_some(())
        });
        p
    }

    /// An instant query: each result's labels and value.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body, _) = get(&self.addr, &format!("/api/v1/query?query={encoded}"), None);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["metric"].clone(),
                    r["value"][1].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every grace period off; the first [`KEPT`] images protected.
const EAGER: &str = "[keep]\nmin_age = \"0\"\nrecent = \"0\"\nper_repository = 0\n\
    images = [\"ml/env-0:v1\", \"ml/env-1:v1\", \"ml/env-2:v1\", \"ml/env-3:v1\"]\n\
    [images]\ndangling_after = \"0\"\n\
    [schedule]\ncheck_every = \"1s\"\ncron = [\"0 3 1 1 *\"]\n";

/// Images [`EAGER`] protects.
const KEPT: u64 = 4;

/// Disk targets no host can reach with [`KEPT`] images of 2 MB or more protected: every cycle
/// frees what it may and ends short of the target.
const UNREACHABLE: &str = "[disk]\nhigh = \"1%\"\nlow = \"0.5%\"\n";

#[test]
fn prometheus_scrapes_the_governor_and_the_rules_and_dashboard_hold() {
    let engine = PrivateEngine::start(1024);
    load_envs(&engine, &[Layer::busybox()], 0..24, 12, 4);
    // A receiver, so the notification series exist too.
    let receiver = Receiver::start(Answer::Ok);
    let config = format!(
        "{EAGER}{UNREACHABLE}[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[notify.webhook]]\nname = \"ops\"\nurl = \"http://{}/hook\"\n",
        receiver.addr
    );
    let governor = Governor::start_with(&engine, &config, None, &[]);
    let addr = governor.metrics_addr();
    let prometheus = Prometheus::start(&engine.scratch().join("prometheus"), &addr);

    // The governor starts above `high`, evicts every unused image and cannot reach `low`.
    let cycle = governor.wait("a cycle", 60, || {
        let s = governor.status();
        let c = s["cycles"].as_array()?.last()?.clone();
        (c["status"] == "target_not_reached").then_some(c)
    });
    let removed = cycle["removed"].as_u64().unwrap();
    let freed = cycle["freed_disk_bytes"].as_u64().unwrap();
    assert_eq!(removed, 24 - KEPT, "{cycle}");
    let log = governor.dockgc(&["log", "--format", "json"]);
    let records: Value = serde_json::from_slice(&log.stdout).unwrap();
    let records = records["records"].as_array().unwrap();
    let reclaimed: u64 = records
        .iter()
        .filter(|r| r["event"] == "intent")
        .filter(|r| {
            records.iter().any(|o| {
                o["event"] == "outcome"
                    && o["run"] == r["run"]
                    && o["seq"] == r["seq"]
                    && o["outcome"] == "removed"
            })
        })
        .map(|r| r["disk_bytes"].as_u64().unwrap())
        .sum();
    assert!(reclaimed > (24 - KEPT) * 4_000_000, "{reclaimed}");

    // Prometheus' query API returns the disk and reclaimed-bytes series with these values.
    let value = |q: &str| -> Option<f64> { prometheus.query(q).first().map(|r| r.1) };
    wait_for(
        "Prometheus to see the cycle",
        Duration::from_secs(30),
        || {
            (value("sum(dockgc_reclaimed_bytes_total)")? == reclaimed as f64
                && value("sum(dockgc_deletions_total)")? == removed as f64
                && value("dockgc_freed_bytes_total")? == freed as f64
                && value("dockgc_last_cycle_target_reached")? == 0.0)
                .then_some(())
        },
    );
    let per_reason =
        prometheus.query("dockgc_reclaimed_bytes_total{kind=\"image\",reason=\"disk_pressure\"}");
    assert_eq!(per_reason.len(), 1);
    assert_eq!(per_reason[0].1, reclaimed as f64);
    assert_eq!(per_reason[0].0["job"], "dockgc");
    wait_for(
        "the disk series to match statvfs",
        Duration::from_secs(30),
        || {
            let used = value("dockgc_filesystem_used_bytes")?;
            let size = value("dockgc_filesystem_size_bytes")?;
            let now = engine.used_bytes() as f64;
            // The governor measures every second; the disk is quiet after the cycle.
            ((used - now).abs() < size * 0.005).then_some(())
        },
    );
    let high = prometheus.query("dockgc_watermark_bytes{watermark=\"high\"}");
    let size = value("dockgc_filesystem_size_bytes").unwrap();
    let avail = value("dockgc_filesystem_available_bytes").unwrap();
    let used = value("dockgc_filesystem_used_bytes").unwrap();
    // 1% of the capacity df uses (used + available).
    assert!(
        (high[0].1 - (used + avail) * 0.01).abs() < 4096.0 + size * 0.0001,
        "{high:?}"
    );

    // The exposition passes `promtool check metrics`, in both formats' common subset.
    let (status, text, _) = get(&addr, "/metrics", None);
    assert_eq!(status, 200);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, open, _) = get(
        &addr,
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert_eq!(get(&addr, "/healthz", None).0, 200);
    assert_eq!(get(&addr, "/readyz", None).0, 200);

    // The alert rules' own unit tests.
    let rules_dir = repo().join("contrib/prometheus");
    promtool(&["check", "rules", "dockgc-alerts.yml"], &rules_dir);
    promtool(&["test", "rules", "dockgc-alerts.test.yml"], &rules_dir);

    // "Target unreachable" fires from the series as Prometheus scraped them from dockgc:
    // same names, same labels (instance and job added by the scrape), same values.
    let scraped = |q: &str| {
        let r = prometheus.query(q);
        assert_eq!(r.len(), 1, "{q}: {r:?}");
        let labels: Vec<String> = r[0]
            .0
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__name__")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        (
            format!("{q}{{{}}}", labels.join(",")),
            r[0].1,
            r[0].0.clone(),
        )
    };
    let (reached, reached_value, labels) = scraped("dockgc_last_cycle_target_reached");
    let (pressure, pressure_value, _) = scraped("dockgc_pressure");
    assert_eq!((reached_value, pressure_value), (0.0, 1.0));
    let dir = engine.scratch().join("alert-test");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        rules_dir.join("dockgc-alerts.yml"),
        dir.join("dockgc-alerts.yml"),
    )
    .unwrap();
    let instance = labels["instance"].as_str().unwrap();
    std::fs::write(
        dir.join("scraped.test.yml"),
        format!(
            "rule_files: [dockgc-alerts.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n      - series: '{reached}'\n        values: '{reached_value}x30'\n      - series: '{pressure}'\n        values: '{pressure_value}x30'\n    alert_rule_test:\n      - eval_time: 5m\n        alertname: DockgcTargetUnreachable\n        exp_alerts: []\n      - eval_time: 15m\n        alertname: DockgcTargetUnreachable\n        exp_alerts:\n          - exp_labels: {{severity: critical, instance: '{instance}', job: dockgc}}\n            exp_annotations:\n              summary: 'dockgc cannot free enough space on {instance}'\n              description: 'The last cycle could not bring the Docker filesystem under its target within the policy: what is left is in use, protected or too young. Run `dockgc plan --show-skipped` on the host to see why, then free space by hand or relax the policy.'\n"
        ),
    )
    .unwrap();
    promtool(&["test", "rules", "scraped.test.yml"], &dir);

    // Every expression of the dashboard is valid PromQL and names only exported series; so
    // does every alert rule.
    let names = exported_names(&text);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("contrib/grafana/dockgc.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            let metric = q
                .trim_start_matches("label_values(")
                .split(',')
                .next()
                .unwrap();
            assert!(names.contains(metric), "variable {q}");
        }
    }
    assert!(exprs.len() >= 10);
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            serde_json::json!({
                "record": format!("dashboard:expr_{i}"),
                "expr": e.replace("$instance", ".*").replace("$__rate_interval", "5m"),
            })
        })
        .collect();
    std::fs::write(
        dir.join("dashboard.rules.yml"),
        serde_json::to_string(
            &serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}),
        )
        .unwrap(),
    )
    .unwrap();
    let checked = promtool(&["check", "rules", "dashboard.rules.yml"], &dir);
    assert!(
        checked.contains(&format!("{} rules found", exprs.len())),
        "{checked}"
    );
    let alerts = std::fs::read_to_string(rules_dir.join("dockgc-alerts.yml")).unwrap();
    for (what, expr) in exprs
        .iter()
        .map(|e| ("dashboard", e.as_str()))
        .chain([("alert rules", alerts.as_str())])
    {
        let referenced = referenced_names(expr);
        assert!(!referenced.is_empty() || what == "dashboard");
        for name in referenced {
            assert!(
                names.contains(&name),
                "{what} use {name}, which dockgc does not export"
            );
        }
    }
}

/// A webhook receiver: records every request; answers 200, 500, or never.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    Fail,
    Hang,
}

#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut headers = HashMap::new();
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').unwrap();
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                    let len: usize = headers
                        .get("content-length")
                        .map_or(0, |l| l.parse().unwrap());
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    record.lock().unwrap().push(Received {
                        path,
                        headers,
                        body,
                    });
                    let mut stream = reader.into_inner();
                    match answer {
                        Answer::Ok => {
                            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        }
                        Answer::Fail => {
                            let _ = stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        }
                        Answer::Hang => std::thread::sleep(Duration::from_secs(600)),
                    }
                });
            }
        });
        Self { addr, got }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The events received, by name.
    fn events(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| r.headers.get("x-dockgc-event").cloned().unwrap_or_default())
            .collect()
    }
}

const SECRET: &str = "s3cr3t-signing-key";
const TOKEN: &str = "T0KEN-in-the-url-9f8e7d";

#[test]
fn webhooks_are_signed_bounded_and_never_block_the_governor() {
    let engine = PrivateEngine::start(1024);
    load_envs(&engine, &[Layer::busybox()], 0..12, 12, 4);
    let victim = "ml/env-5:v1";
    // The victim's deletion fails once; the next cycle deletes it.
    let failed_once = std::sync::atomic::AtomicBool::new(false);
    let proxy = Proxy::start(&engine, move |line| {
        if line.starts_with("DELETE")
            && line.contains(victim)
            && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            Verdict::Fail
        } else {
            Verdict::Forward
        }
    });
    let good = Receiver::start(Answer::Ok);
    let failing = Receiver::start(Answer::Fail);
    let hanging = Receiver::start(Answer::Hang);
    let config = format!(
        "{EAGER}{UNREACHABLE}\
         [[notify.webhook]]\nname = \"ops\"\nurl = \"http://{}/hook/{TOKEN}\"\nsecret = \"{SECRET}\"\n\
         [[notify.webhook]]\nname = \"failing\"\nurl = \"http://{}/hook/{TOKEN}\"\nretries = 2\ntimeout = \"1s\"\n\
         [[notify.webhook]]\nname = \"hanging\"\nurl = \"http://{}/hook/{TOKEN}\"\nretries = 1\ntimeout = \"1s\"\nformat = \"slack\"\n",
        good.addr, failing.addr, hanging.addr
    );
    let mut governor = Governor::start_with(
        &engine,
        &config,
        Some(proxy.url()),
        &["--listen", "127.0.0.1:0", "--log-format", "json"],
    );
    let has = |r: &Receiver, events: &[&str]| {
        let got = r.events();
        events.iter().all(|e| got.iter().any(|g| g == e))
    };
    governor.wait("the first cycle's notices", 30, || {
        has(&good, &["cycle_completed", "deletion_failed"]).then_some(())
    });

    // While two receivers fail or hang, the governor goes on: a triggered cycle deletes the
    // victim and reports the target out of reach.
    let cycles = governor.cycles();
    let out = governor.dockgc(&["trigger"]);
    assert!(out.status.success());
    governor.wait("a triggered cycle", 10, || {
        (governor.cycles() > cycles).then_some(())
    });
    governor.wait("target_unreachable", 10, || {
        has(&good, &["target_unreachable"]).then_some(())
    });
    assert!(governor.alive());

    // Engine down and up again.
    let mut engine = engine;
    engine.stop();
    governor.wait("engine_down", 30, || {
        good.events()
            .iter()
            .any(|e| e == "engine_down")
            .then_some(())
    });
    engine.start_dockerd();
    governor.wait("engine_up", 60, || {
        good.events().iter().any(|e| e == "engine_up").then_some(())
    });

    // Every notice is signed over its exact body, versioned, and names what happened.
    for r in good.received() {
        assert_eq!(r.path, format!("/hook/{TOKEN}"));
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&r.body);
        let expected = format!("sha256={}", hex(&mac.finalize().into_bytes()));
        assert_eq!(
            r.headers.get("x-dockgc-signature-256"),
            Some(&expected),
            "{r:?}"
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["version"], 1);
        assert_eq!(
            Some(&body["event"].as_str().unwrap().to_string()),
            r.headers.get("x-dockgc-event")
        );
        match body["event"].as_str().unwrap() {
            "cycle_completed" => {
                assert!(body["data"]["removed"].as_u64().unwrap() >= 1, "{body}");
                assert!(
                    body["data"]["freed_disk_bytes"].as_u64().unwrap() > 0,
                    "{body}"
                );
            }
            "deletion_failed" => {
                assert_eq!(body["data"]["name"], victim, "{body}");
                assert_eq!(body["data"]["cause"], "engine_error", "{body}");
            }
            _ => {}
        }
    }
    // Retries are bounded: the failing receiver gets exactly 1 + 2 attempts per notice, with
    // the same delivery ID; the hanging one 1 + 1.
    governor.wait("the failing receiver's retries to end", 30, || {
        let by_id = count_by_delivery(&failing);
        (!by_id.is_empty() && by_id.values().all(|&n| n == 3)).then_some(())
    });
    governor.wait("the hanging receiver's retries to end", 60, || {
        let by_id = count_by_delivery(&hanging);
        (!by_id.is_empty() && by_id.values().all(|&n| n == 2)).then_some(())
    });
    let slack: Value = serde_json::from_slice(&hanging.received()[0].body).unwrap();
    assert!(
        slack["text"].as_str().unwrap().starts_with("dockgc on "),
        "{slack}"
    );
    assert!(!hanging.received()[0]
        .headers
        .contains_key("x-dockgc-signature-256"));
    let (_, metrics, _) = get(&governor.metrics_addr(), "/metrics", None);
    assert!(
        sample(
            &metrics,
            "dockgc_notifications_total{receiver=\"failing\",outcome=\"failed\"}"
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "dockgc_notifications_total{receiver=\"ops\",outcome=\"delivered\"}"
        )
        .unwrap()
            >= 5.0
    );
    assert!(governor.alive());

    // Logs: JSON lines, the URL's token and the secret nowhere; one event per deletion with
    // the audit trail's run and sequence number; one per cycle.
    let log = governor.log();
    assert!(
        !log.contains(TOKEN) && !log.contains(SECRET),
        "a secret leaked into the log"
    );
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(events
        .iter()
        .any(|e| e["message"] == "webhook delivery failed" && e["receiver"] == "failing"));
    let audit: Value =
        serde_json::from_slice(&governor.dockgc(&["log", "--format", "json"]).stdout).unwrap();
    let outcomes: Vec<&Value> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "outcome")
        .collect();
    let deletions: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"] == "deletion" || e["message"] == "deletion failed")
        .collect();
    assert_eq!(
        deletions.len(),
        outcomes.len(),
        "one log event per audited outcome"
    );
    for d in &deletions {
        let run = d["span"]["run"].as_str().unwrap();
        let seq = d["seq"].as_u64().unwrap();
        let o = outcomes
            .iter()
            .find(|o| o["run"] == run && o["seq"] == seq)
            .unwrap_or_else(|| panic!("no audit record for {d}"));
        assert_eq!(o["outcome"], d["outcome"]);
    }
    let cycle_events = events
        .iter()
        .filter(|e| e["trigger"].is_string() && e["status"].is_string())
        .count();
    assert_eq!(cycle_events, governor.cycles(), "one log event per cycle");
    governor.stop();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn count_by_delivery(r: &Receiver) -> HashMap<String, usize> {
    let mut by_id = HashMap::new();
    for got in r.received() {
        *by_id
            .entry(got.headers["x-dockgc-delivery"].clone())
            .or_insert(0) += 1;
    }
    by_id
}

#[test]
fn a_scrape_during_a_cycle_answers_at_once_without_the_engine() {
    let engine = PrivateEngine::start(1024);
    load_envs(&engine, &[Layer::busybox()], 0..8, 8, 2);
    // Every deletion waits at the proxy until released: the cycle is stuck mid-run.
    let proxy = Proxy::start(&engine, |line| {
        if line.starts_with("DELETE") {
            Verdict::Hold
        } else {
            Verdict::Forward
        }
    });
    let governor = Governor::start_with(
        &engine,
        &format!("{EAGER}{UNREACHABLE}"),
        Some(proxy.url()),
        &["--listen", "127.0.0.1:0"],
    );
    let addr = governor.metrics_addr();
    governor.wait("a deletion held at the proxy", 30, || {
        (proxy.held() > 0).then_some(())
    });
    let requests = proxy.requests();
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let (path, accept) = match i % 4 {
            0 => ("/metrics", None),
            1 => (
                "/metrics",
                Some("application/openmetrics-text; version=1.0.0"),
            ),
            2 => ("/readyz", None),
            _ => ("/healthz", None),
        };
        let (status, body, took) = get(&addr, path, accept);
        assert_eq!(status, 200, "{path}: {body}");
        if path == "/metrics" {
            assert_eq!(
                sample(&body, "dockgc_cycle_in_progress"),
                Some(1.0),
                "{body}"
            );
        }
        slowest = slowest.max(took);
    }
    eprintln!("slowest of 100 requests during a cycle: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(100),
        "slowest answer {slowest:?}"
    );
    assert_eq!(proxy.requests(), requests, "a scrape reached the engine");
    proxy.release();
    governor.wait("the cycle to end", 30, || {
        let (_, body, _) = get(&addr, "/metrics", None);
        (sample(&body, "dockgc_cycle_in_progress") == Some(0.0)
            && sample(
                &body,
                "dockgc_deletions_total{kind=\"image\",reason=\"disk_pressure\"}",
            ) == Some((8 - KEPT) as f64))
        .then_some(())
    });
}
