//! `dockgc audit` on a real engine: fixture images with known waste of every cause, read from
//! the layer directories and through the export API, a second audit from the cache, and CI
//! gating.

use serde_json::Value;

use crate::archive::{Image, Layer};
use crate::fixtures::load;
use crate::harness::PrivateEngine;

/// Pseudo-random bytes (distinct per seed: no accidental duplicates).
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; n];
    rng.fill(&mut data[..]);
    data
}

const PIP: usize = 700_001;
const APT_LISTS: usize = 600_002;
const APT_DEBS: usize = 300_003;
const NPM: usize = 400_004;
const DELETED: usize = 2_000_005;
const OVERWRITTEN: usize = 50_006;
const DUPLICATE: usize = 1_000_007;
const CONDA_TARBALL: usize = 3_000_008;
const CONDA_EXTRACTED: usize = 1_000_009;

fn fixtures() -> Vec<Image> {
    let busybox = Layer::busybox().made_by("ADD busybox /bin/busybox");
    let conda = Layer::new(&[
        ("opt/conda/conda-meta/history", b"==> 2024 <==\n".to_vec()),
        (
            "opt/conda/pkgs/numpy-1.26.4-py312.conda",
            bytes(CONDA_TARBALL, 1),
        ),
        (
            "opt/conda/pkgs/numpy-1.26.4-py312/lib/core.so",
            bytes(CONDA_EXTRACTED, 2),
        ),
        (
            "opt/conda/lib/python3.12/numpy/core.so",
            bytes(2_000_000, 3),
        ),
    ])
    .made_by("/bin/sh -c conda install -y numpy");
    let base = Image::new(&["ml/conda-base:v1"], vec![busybox.clone(), conda.clone()]);
    let children: Vec<Image> = (1..=3)
        .map(|n| {
            Image::new(
                &[&format!("ml/app-{n}:v1")],
                vec![
                    busybox.clone(),
                    conda.clone(),
                    Layer::new(&[(&format!("app/{n}.py") as &str, bytes(10_000, 100 + n))])
                        .made_by("COPY app /app"),
                ],
            )
        })
        .collect();
    let model = bytes(DUPLICATE, 20);
    let wasteful = Image::new(
        &["ml/waste:v1"],
        vec![
            busybox.clone(),
            Layer::new(&[
                ("root/.cache/pip/wheels/ab/torch.whl", bytes(PIP, 10)),
                ("usr/lib/python3/site.py", bytes(10_000, 11)),
            ])
            .made_by("/bin/sh -c pip install torch"),
            Layer::new(&[
                (
                    "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main",
                    bytes(APT_LISTS, 12),
                ),
                (
                    "var/cache/apt/archives/curl_7.88_amd64.deb",
                    bytes(APT_DEBS, 13),
                ),
                ("usr/bin/curl", bytes(20_000, 14)),
            ])
            .made_by("/bin/sh -c apt-get update && apt-get install -y curl"),
            Layer::new(&[("root/.npm/_cacache/content-v2/sha512/aa/bb", bytes(NPM, 15))])
                .made_by("/bin/sh -c npm install -g yarn"),
            Layer::new(&[
                ("data/big.bin", bytes(DELETED, 16)),
                ("etc/app.conf", bytes(OVERWRITTEN, 17)),
                ("srv/model.bin", model.clone()),
            ])
            .made_by("COPY data /"),
            Layer::new(&[
                ("data/.wh.big.bin", Vec::new()),
                ("etc/app.conf", bytes(60_000, 18)),
                ("srv/copy.bin", model),
            ])
            .made_by("/bin/sh -c rm /data/big.bin && cp /srv/model.bin /srv/copy.bin && configure"),
        ],
    );
    let clean = Image::new(
        &["ml/clean:v1"],
        vec![
            busybox,
            Layer::new(&[("app/main", bytes(30_000, 30))]).made_by("COPY main /app/main"),
        ],
    );
    let mut all = vec![base, wasteful, clean];
    all.extend(children);
    all
}

fn audit(engine: &PrivateEngine, state: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut full = vec!["--state-dir", state, "audit", "--format", "json"];
    full.extend_from_slice(args);
    let out = engine.dockgc(&full);
    (out.status.code(), crate::json(&out), crate::stderr(&out))
}

fn image<'a>(report: &'a Value, tag: &str) -> &'a Value {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["tags"].as_array().unwrap().iter().any(|t| t == tag))
        .unwrap_or_else(|| panic!("{tag} not audited"))
}

fn cause_bytes(image: &Value, cause: &str) -> u64 {
    image["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["cause"] == cause)
        .map(|f| f["bytes"].as_u64().unwrap())
        .sum()
}

fn finding<'a>(image: &'a Value, cause: &str) -> &'a Value {
    image["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["cause"] == cause)
        .unwrap_or_else(|| panic!("no {cause} finding in {image}"))
}

#[test]
fn audit_finds_every_cause_exactly_from_layers_and_exports_and_gates_ci() {
    let engine = PrivateEngine::start(1024);
    load(&engine, &fixtures());
    let host_state = engine.scratch().join("state-host");
    let host_state = host_state.to_str().unwrap();
    let (code, host, stderr) = audit(&engine, host_state, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(host["source"], "host", "{stderr}");
    assert_eq!(host["version"], 1);

    let waste = image(&host, "ml/waste:v1");
    for (cause, expected, fix, made_by) in [
        (
            "pip_cache",
            PIP,
            "pip install --no-cache-dir",
            "pip install torch",
        ),
        (
            "apt_lists",
            APT_LISTS,
            "rm -rf /var/lib/apt/lists/*",
            "apt-get update",
        ),
        ("apt_archives", APT_DEBS, "apt-get clean", "apt-get update"),
        ("npm_cache", NPM, "npm cache clean --force", "npm install"),
        (
            "deleted",
            DELETED,
            "in the same RUN that creates them",
            "COPY data /",
        ),
        (
            "overwritten",
            OVERWRITTEN,
            "write the final version once",
            "COPY data /",
        ),
        (
            "duplicate",
            DUPLICATE,
            "copy or create these files once",
            "cp /srv/model.bin",
        ),
    ] {
        assert_eq!(
            cause_bytes(waste, cause),
            expected as u64,
            "{cause}: {waste}"
        );
        let f = finding(waste, cause);
        assert!(f["fix"].as_str().unwrap().contains(fix), "{cause}: {f}");
        assert!(
            f["created_by"].as_str().unwrap().contains(made_by),
            "{cause}: {f}"
        );
    }
    let deleted = finding(waste, "deleted");
    assert_eq!(
        (deleted["layer"].as_u64(), deleted["by_layer"].as_u64()),
        (Some(5), Some(6))
    );
    assert_eq!(deleted["paths"][0], "data/big.bin");
    let total = PIP + APT_LISTS + APT_DEBS + NPM + DELETED + OVERWRITTEN + DUPLICATE;
    assert_eq!(waste["wasted_bytes"].as_u64().unwrap(), total as u64);
    let clean = image(&host, "ml/clean:v1");
    assert_eq!(clean["wasted_bytes"], 0);
    assert_eq!(clean["efficiency"], 100.0);

    // The conda cache of the shared base layer: in each of the 4 images that carry it, and
    // once host-wide, showing the 4.
    let conda = (CONDA_TARBALL + CONDA_EXTRACTED) as u64;
    for tag in [
        "ml/conda-base:v1",
        "ml/app-1:v1",
        "ml/app-2:v1",
        "ml/app-3:v1",
    ] {
        let f = finding(image(&host, tag), "conda_cache");
        assert_eq!(f["bytes"].as_u64().unwrap(), conda, "{tag}");
        assert!(f["fix"]
            .as_str()
            .unwrap()
            .contains("conda clean --all -f -y"));
    }
    let shared: Vec<&Value> = host["host"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["cause"] == "conda_cache")
        .collect();
    assert_eq!(shared.len(), 1, "{shared:?}");
    assert_eq!(shared[0]["bytes"].as_u64().unwrap(), conda);
    assert_eq!(shared[0]["images"], 4);
    // Ranked by bytes a fix saves: the conda cache (4 MB) first, then the deleted file (2 MB).
    assert_eq!(host["host"][0]["cause"], "conda_cache");
    assert_eq!(host["host"][1]["cause"], "deleted");

    // Through the export API, from scratch: the same findings.
    let export_state = engine.scratch().join("state-export");
    let (code, export, stderr) = audit(
        &engine,
        export_state.to_str().unwrap(),
        &["--source", "export"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(export["source"], "export");
    assert_eq!(export["images"], host["images"]);
    assert_eq!(export["host"], host["host"]);

    // Above the high watermark an export waits: the engine needs temporary space for it.
    let full = engine.scratch().join("full.toml");
    std::fs::write(&full, "[disk]\nhigh = \"1%\"\nlow = \"0.5%\"\n").unwrap();
    let deferred_state = engine.scratch().join("state-deferred");
    let (code, deferred, stderr) = audit(
        &engine,
        deferred_state.to_str().unwrap(),
        &["-c", full.to_str().unwrap(), "--source", "export"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(deferred["images"].as_array().unwrap().len(), 0);
    assert_eq!(
        deferred["deferred"].as_array().unwrap().len(),
        host["images"].as_array().unwrap().len(),
        "{deferred}"
    );
    assert_eq!(deferred["layers_read"], 0);

    // A second audit reads nothing but the cache.
    let (_, again, _) = audit(&engine, host_state, &[]);
    assert_eq!(again["source"], "cache");
    assert_eq!(again["layers_read"], 0);
    assert_eq!(again["images"], host["images"]);

    // CI gating.
    let (code, _, stderr) = audit(&engine, host_state, &["--max-waste", "1MB", "ml/waste:v1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("ml/waste:v1") && stderr.contains("more than --max-waste 1MB"),
        "{stderr}"
    );
    let (code, report, stderr) = audit(&engine, host_state, &["--max-waste", "1MB", "ml/clean:v1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["images"].as_array().unwrap().len(), 1);
    let (code, _, _) = audit(
        &engine,
        host_state,
        &["--min-efficiency", "90%", "ml/waste:v1"],
    );
    assert_eq!(code, Some(1));
    let (code, _, _) = audit(
        &engine,
        host_state,
        &["--min-efficiency", "90%", "ml/clean:v1"],
    );
    assert_eq!(code, Some(0));

    // The table names causes, commands and fixes.
    let out = engine.dockgc(&["--state-dir", host_state, "audit", "ml/waste:v1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(text.contains("from cache."), "{text}");
    assert!(
        text.contains("deleted in a later layer") && text.contains("fix:"),
        "{text}"
    );
}

#[test]
fn record_writes_a_trace_that_simulate_replays() {
    let engine = PrivateEngine::start(512);
    load(&engine, &fixtures()[2..3]);
    let trace = engine.scratch().join("host.trace");
    let mut recorder = std::process::Command::new(env!("CARGO_BIN_EXE_dockgc"))
        .args(["--host", &engine.url(), "record", "-o"])
        .arg(&trace)
        .env_remove("DOCKER_HOST")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the recorder wrote the images present at the start, then act.
    crate::harness::wait_for(
        "the recorder to start",
        std::time::Duration::from_secs(20),
        || {
            std::fs::read_to_string(&trace)
                .ok()
                .filter(|t| t.lines().count() >= 2)
        },
    );
    load(&engine, &fixtures()[0..1]);
    engine.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "ml/clean:v1",
        "/bin/busybox",
        "true",
    ]);
    crate::harness::wait_for(
        "the load and the job in the trace",
        std::time::Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&trace).ok()?;
            (text.contains("ml/conda-base:v1") && text.contains("\"event\":\"use\"")).then_some(())
        },
    );
    let killed = std::process::Command::new("kill")
        .arg(recorder.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = recorder.wait().unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["kind"], "header");
    assert!(lines[0]["capacity_bytes"].as_u64().unwrap() > 400_000_000);
    assert_eq!(lines[1]["event"], "build");
    assert_eq!(lines[1]["t"], 0);
    assert_eq!(lines[1]["tag"], "ml/clean:v1");
    let use_ = lines.iter().find(|l| l["event"] == "use").unwrap();
    assert_eq!(use_["tag"], "ml/clean:v1");
    assert_eq!(use_["image"], lines[1]["image"]);
    let base = lines
        .iter()
        .find(|l| l["tag"] == "ml/conda-base:v1")
        .unwrap();
    assert!(base["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["bytes"].as_u64().unwrap() > 0));
    let out = engine.dockgc(&[
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", crate::stderr(&out));
    assert_eq!(crate::json(&out)["outcomes"][0]["misses"], 0);
}
