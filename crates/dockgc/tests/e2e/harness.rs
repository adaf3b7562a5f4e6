//! A private `dockerd` on a small loop-mounted ext4 disk, started per test and torn down on
//! drop. Never touches the machine's default engine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Debian docker client (the one matching Debian's dockerd).
pub const DOCKER: &str = "/usr/bin/docker";

/// Waits until `check` returns `Some`, or panics with `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running private engine.
pub struct PrivateEngine {
    dir: tempfile::TempDir,
    /// Mount point of the loop disk: the engine's data root.
    pub root: PathBuf,
    /// The engine's API socket.
    pub socket: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl PrivateEngine {
    /// Starts an engine on a fresh ext4 disk of `disk_mb` MiB.
    pub fn start(disk_mb: u64) -> Self {
        Self::start_listening(disk_mb, None)
    }

    /// Starts an engine that also listens on 127.0.0.1:`port`, plain or with TLS (`dockerd
    /// --tlsverify` with certificates from `tls_dir`: ca.pem, server-cert.pem, server-key.pem).
    pub fn start_with_tcp(disk_mb: u64, port: u16, tls_dir: Option<&Path>) -> Self {
        Self::start_listening(disk_mb, Some((port, tls_dir)))
    }

    fn start_listening(disk_mb: u64, tcp: Option<(u16, Option<&Path>)>) -> Self {
        assert!(
            rustix_is_root(),
            "the end-to-end tests start a private dockerd and need root (run them through .ci/run)"
        );
        assert!(
            Path::new("/usr/sbin/dockerd").exists() && Path::new(DOCKER).exists(),
            "dockerd and the docker client are missing: apt-get install docker.io (the README's test command does)"
        );
        // Short paths: containerd's sockets under the exec root must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("dgc")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let image = dir.path().join("disk.img");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(disk_mb << 20).unwrap();
        drop(file);
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&root));
        let socket = dir.path().join("d.sock");
        let mut args: Vec<String> = tcp
            .map(|(p, _)| format!("-H=tcp://127.0.0.1:{p}"))
            .into_iter()
            .collect();
        if let Some(d) = tcp.and_then(|(_, tls)| tls) {
            args.extend([
                "--tlsverify".to_string(),
                format!("--tlscacert={}", d.join("ca.pem").display()),
                format!("--tlscert={}", d.join("server-cert.pem").display()),
                format!("--tlskey={}", d.join("server-key.pem").display()),
            ]);
        }
        let mut engine = Self {
            dir,
            root,
            socket,
            child: None,
            extra_args: args,
        };
        engine.start_dockerd();
        engine
    }

    /// Starts dockerd on this engine's data root (again, after [`PrivateEngine::stop`]).
    pub fn start_dockerd(&mut self) {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .unwrap();
        let child = Command::new("/usr/sbin/dockerd")
            .arg("--data-root")
            .arg(&self.root)
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("d.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        wait_for(
            "the private dockerd to answer",
            Duration::from_secs(60),
            || {
                self.docker_output(&["version", "--format", "{{.Server.APIVersion}}"])
                    .status
                    .success()
                    .then_some(())
            },
        );
    }

    /// The engine's URL for `--host`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Scratch directory of this engine's test.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the docker client against this engine, returning its output whatever the status.
    pub fn docker_output(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(self.url())
            .args(args)
            .env("DOCKER_BUILDKIT", "1")
            .output()
            .expect("run docker")
    }

    /// Runs the docker client and requires success; returns stdout.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = self.docker_output(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs dockgc against this engine.
    pub fn dockgc(&self, args: &[&str]) -> Output {
        self.dockgc_with(args, &[])
    }

    /// Runs dockgc against this engine with extra environment.
    pub fn dockgc_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dockgc"))
            .arg("--host")
            .arg(self.url())
            .args(args)
            .envs(env.iter().copied())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKGC_CONFIG")
            .env("DOCKGC_STATE_DIR", self.scratch().join("state"))
            .stdin(Stdio::null())
            .output()
            .expect("run dockgc")
    }

    /// GETs an API path and decodes the JSON body.
    pub fn api(&self, path: &str) -> serde_json::Value {
        api_get(&self.socket, path)
    }

    /// POSTs an API path (no body).
    pub fn api_post(&self, path: &str) {
        api_post(&self.socket, path)
    }

    /// `LayersSize` of `/system/df`.
    pub fn layers_size(&self) -> u64 {
        self.api("/system/df")["LayersSize"]
            .as_u64()
            .expect("LayersSize")
    }

    /// Used bytes of the data root's filesystem (after a sync), as statvfs says.
    pub fn used_bytes(&self) -> u64 {
        run(Command::new("sync").arg("-f").arg(&self.root));
        let out = run(Command::new("stat")
            .args(["-f", "-c", "%b %f %S"])
            .arg(&self.root));
        let text = String::from_utf8_lossy(&out.stdout);
        let n: Vec<u64> = text
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        (n[0] - n[1]) * n[2]
    }

    /// Stops the engine (as an engine outage would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let ids = self.docker_output(&["ps", "-q"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.docker_output(&["kill", id]);
            }
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        self.stop();
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.root)
                .status()
                .is_ok_and(|s| s.success());
            if ok || !is_mounted(&self.root) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if is_mounted(&self.root) {
            let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&*path.to_string_lossy()))
        })
        .unwrap_or(false)
}

fn rustix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Makes a CA, a server certificate for 127.0.0.1 and a client certificate in `dir`, with the
/// names Docker uses (ca.pem, cert.pem, key.pem for the client).
pub fn make_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ssl = |args: &[&str]| {
        run(Command::new("openssl").args(args).current_dir(dir));
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=dockgc test CA",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, subject, ext) in [
        ("server", "/CN=127.0.0.1", "server.ext"),
        ("client", "/CN=client", "client.ext"),
    ] {
        ssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
        ]);
        ssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext,
            "-out",
            &format!("{name}-cert.pem"),
        ]);
    }
    std::fs::rename(dir.join("client-cert.pem"), dir.join("cert.pem")).unwrap();
    std::fs::rename(dir.join("client-key.pem"), dir.join("key.pem")).unwrap();
}

/// POST without a body over a Unix socket; panics unless the engine answers 2xx.
pub fn api_post(socket: &Path, path: &str) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.0 2") || response.starts_with("HTTP/1.1 2"),
        "POST {path}: {response}"
    );
}

/// GET over a Unix socket with HTTP/1.0 (no chunked replies), JSON body.
pub fn api_get(socket: &Path, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}
