//! Where the engine is: `--host`, `DOCKER_HOST`, `DOCKER_CONTEXT` and the docker CLI's current
//! context, resolved the way the docker CLI resolves them. Pure except for reading the CLI's
//! config files, which [`resolve`] takes as a directory.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Error;

/// Default socket of a local engine.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// TLS material for a `tcp://` endpoint (`DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate (`ca.pem`).
    pub ca: PathBuf,
    /// Client certificate (`cert.pem`).
    pub cert: PathBuf,
    /// Client key (`key.pem`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The three files of a Docker certificate directory.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// Transport to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A Unix socket path.
    Unix(PathBuf),
    /// Plain TCP (`host:port`).
    Tcp(String),
    /// TCP with TLS, verifying the server against a CA.
    Tls {
        /// `host:port`.
        address: String,
        /// Host name to verify.
        server_name: String,
        /// Certificate files.
        files: TlsFiles,
    },
}

/// A resolved engine endpoint and where the choice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// How to reach it.
    pub transport: Transport,
    /// The endpoint as a URL, for messages (`unix:///var/run/docker.sock`).
    pub url: String,
    /// What chose it (`--host`, `DOCKER_HOST`, `context "ci"`, `default`).
    pub source: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (from {})", self.url, self.source)
    }
}

/// The environment variables and files endpoint resolution reads.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `--host` flag.
    pub host_flag: Option<String>,
    /// `DOCKER_HOST`.
    pub docker_host: Option<String>,
    /// `DOCKER_CONTEXT`.
    pub docker_context: Option<String>,
    /// `DOCKER_TLS_VERIFY` (set and non-empty means verify).
    pub tls_verify: Option<String>,
    /// `DOCKER_CERT_PATH`.
    pub cert_path: Option<PathBuf>,
    /// The docker CLI's config directory (`DOCKER_CONFIG` or `~/.docker`).
    pub config_dir: Option<PathBuf>,
}

impl Environment {
    /// Reads the process environment.
    pub fn from_process(host_flag: Option<String>) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let config_dir = var("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".docker")));
        Self {
            host_flag,
            docker_host: var("DOCKER_HOST"),
            docker_context: var("DOCKER_CONTEXT"),
            tls_verify: var("DOCKER_TLS_VERIFY"),
            cert_path: var("DOCKER_CERT_PATH").map(PathBuf::from),
            config_dir,
        }
    }
}

/// Resolves the endpoint: `--host`, then `DOCKER_HOST`, then `DOCKER_CONTEXT`, then the CLI
/// config's `currentContext`, then the default socket.
pub fn resolve(env: &Environment) -> Result<Endpoint, Error> {
    let tls = env.tls_verify.is_some().then(|| {
        let dir = env
            .cert_path
            .clone()
            .or_else(|| env.config_dir.clone())
            .unwrap_or_default();
        TlsFiles::in_dir(&dir)
    });
    if let Some(host) = &env.host_flag {
        return parse_host(host, tls, "--host");
    }
    if let Some(host) = &env.docker_host {
        return parse_host(host, tls, "DOCKER_HOST");
    }
    let context = match &env.docker_context {
        Some(c) => Some((c.clone(), "DOCKER_CONTEXT")),
        None => current_context(env.config_dir.as_deref())?.map(|c| (c, "~/.docker/config.json")),
    };
    if let Some((name, from)) = context.filter(|(n, _)| n != "default") {
        let dir = env.config_dir.as_deref().ok_or_else(|| {
            Error::Config(format!(
                "context \"{name}\" (from {from}) but no docker config directory"
            ))
        })?;
        return context_endpoint(dir, &name, from);
    }
    parse_host(&format!("unix://{DEFAULT_SOCKET}"), None, "default")
}

fn current_context(config_dir: Option<&Path>) -> Result<Option<String>, Error> {
    let Some(dir) = config_dir else {
        return Ok(None);
    };
    let path = dir.join("config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{} is not valid JSON: {e}", path.display())))?;
    Ok(value
        .get("currentContext")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string))
}

fn context_endpoint(config_dir: &Path, name: &str, from: &str) -> Result<Endpoint, Error> {
    let hash = hex(&Sha256::digest(name.as_bytes()));
    let meta_path = config_dir
        .join("contexts/meta")
        .join(&hash)
        .join("meta.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| {
        Error::Config(format!(
            "context \"{name}\" (from {from}): cannot read {}: {e}",
            meta_path.display()
        ))
    })?;
    let meta: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{} is not valid JSON: {e}", meta_path.display())))?;
    let docker = &meta["Endpoints"]["docker"];
    let host = docker["Host"].as_str().ok_or_else(|| {
        Error::Config(format!(
            "context \"{name}\" has no docker endpoint in {}",
            meta_path.display()
        ))
    })?;
    let tls_dir = config_dir.join("contexts/tls").join(&hash).join("docker");
    let tls = (tls_dir.join("ca.pem").exists()
        && !docker["SkipTLSVerify"].as_bool().unwrap_or(false))
    .then(|| TlsFiles::in_dir(&tls_dir));
    parse_host(host, tls, &format!("context \"{name}\""))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a Docker host URL (`unix:///path`, `tcp://host:port`, `host:port`).
pub fn parse_host(host: &str, tls: Option<TlsFiles>, source: &str) -> Result<Endpoint, Error> {
    let source = source.to_string();
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(Error::Config(format!(
                "{source}: `{host}` names no socket path"
            )));
        }
        return Ok(Endpoint {
            transport: Transport::Unix(PathBuf::from(path)),
            url: host.to_string(),
            source,
        });
    }
    let rest = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("https://"))
        .or_else(|| host.strip_prefix("http://"));
    let rest = match rest {
        Some(r) => r,
        None if host.contains("://") => {
            return Err(Error::Config(format!(
                "{source}: `{host}`: unsupported scheme; use unix:// or tcp:// (ssh:// is not supported yet)"
            )))
        }
        None => host,
    };
    let address = rest.trim_end_matches('/');
    if address.is_empty() {
        return Err(Error::Config(format!(
            "{source}: `{host}` names no address"
        )));
    }
    let tls_default = tls.is_some() || host.starts_with("https://");
    let port = if tls_default { 2376 } else { 2375 };
    let address = if address
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        address.to_string()
    } else {
        format!("{address}:{port}")
    };
    let transport = match tls {
        Some(files) => Transport::Tls {
            server_name: address
                .rsplit_once(':')
                .map_or(address.as_str(), |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_string(),
            address: address.clone(),
            files,
        },
        None => Transport::Tcp(address.clone()),
    };
    Ok(Endpoint {
        transport,
        url: format!("tcp://{address}"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_environment() {
        let env = Environment {
            host_flag: Some("unix:///tmp/a.sock".into()),
            docker_host: Some("tcp://b:1".into()),
            ..Environment::default()
        };
        let e = resolve(&env).unwrap();
        assert_eq!(e.transport, Transport::Unix("/tmp/a.sock".into()));
        assert_eq!(e.source, "--host");
    }

    #[test]
    fn tcp_gets_default_ports() {
        let e = parse_host("tcp://10.0.0.1", None, "x").unwrap();
        assert_eq!(e.transport, Transport::Tcp("10.0.0.1:2375".into()));
        let tls = TlsFiles::in_dir(Path::new("/c"));
        let e = parse_host("tcp://docker.example:2376", Some(tls.clone()), "x").unwrap();
        assert_eq!(
            e.transport,
            Transport::Tls {
                address: "docker.example:2376".into(),
                server_name: "docker.example".into(),
                files: tls
            }
        );
    }

    #[test]
    fn ssh_is_refused_clearly() {
        let err = parse_host("ssh://me@host", None, "DOCKER_HOST").unwrap_err();
        assert!(err.to_string().contains("ssh://"));
    }

    #[test]
    fn current_context_is_read_from_cli_config() {
        let dir = std::env::temp_dir().join(format!("dockgc-ctx-{}", std::process::id()));
        let hash = hex(&Sha256::digest(b"ci"));
        let meta = dir.join("contexts/meta").join(&hash);
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"currentContext":"ci"}"#).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"ci","Endpoints":{"docker":{"Host":"unix:///run/ci.sock","SkipTLSVerify":false}}}"#,
        )
        .unwrap();
        let env = Environment {
            config_dir: Some(dir.clone()),
            ..Environment::default()
        };
        let e = resolve(&env).unwrap();
        assert_eq!(e.transport, Transport::Unix("/run/ci.sock".into()));
        assert_eq!(e.source, "context \"ci\"");
        let env = Environment {
            docker_context: Some("nope".into()),
            config_dir: Some(dir.clone()),
            ..Environment::default()
        };
        assert!(resolve(&env).unwrap_err().to_string().contains("nope"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
