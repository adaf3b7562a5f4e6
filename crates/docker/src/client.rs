//! A small HTTP/1.1 client for the Engine API over a Unix socket, TCP or TLS.
//!
//! One connection per request: local sockets connect in microseconds, and it keeps the client
//! free of pooling state. Every request path is pinned to the negotiated API version.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::endpoint::{Endpoint, TlsFiles, Transport};
use crate::Error;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP client bound to one engine endpoint.
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    tls: Option<tokio_rustls::TlsConnector>,
    /// API version prefix (`/v1.41`), empty until negotiated.
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// API version the server announced, if any.
    pub api_version: Option<String>,
    /// The whole body.
    pub body: Bytes,
}

impl Client {
    /// A client for `endpoint`; loads TLS material now so a bad certificate fails early.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Result<Self, Error> {
        let tls = match &endpoint.transport {
            Transport::Tls { files, .. } => Some(tls_connector(files)?),
            _ => None,
        };
        Ok(Self {
            endpoint,
            tls,
            prefix: String::new(),
            timeout,
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Pins every later request to API `version` (`1.41`).
    pub fn pin_version(&mut self, version: &str) {
        self.prefix = format!("/v{version}");
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, Error> {
        let unreachable = |e: std::io::Error| Error::Unreachable {
            endpoint: self.endpoint.to_string(),
            message: e.to_string(),
        };
        let connect = async {
            Ok::<Box<dyn Stream>, Error>(match &self.endpoint.transport {
                Transport::Unix(path) => Box::new(
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(unreachable)?,
                ),
                Transport::Tcp(address) => Box::new(
                    tokio::net::TcpStream::connect(address)
                        .await
                        .map_err(unreachable)?,
                ),
                Transport::Tls {
                    address,
                    server_name,
                    ..
                } => {
                    let tcp = tokio::net::TcpStream::connect(address)
                        .await
                        .map_err(unreachable)?;
                    let name = rustls_pki_types::ServerName::try_from(server_name.clone())
                        .map_err(|e| {
                            Error::Config(format!("bad TLS server name `{server_name}`: {e}"))
                        })?;
                    let connector = self.tls.as_ref().ok_or_else(|| {
                        Error::Config("TLS endpoint without TLS configuration".into())
                    })?;
                    Box::new(connector.connect(name, tcp).await.map_err(unreachable)?)
                }
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| Error::Unreachable {
                endpoint: self.endpoint.to_string(),
                message: format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
            })?
    }

    /// Sends one request; `path` starts with `/` and is prefixed with the pinned version. A
    /// body is JSON.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, Error> {
        let body = body.map(|b| (b, "application/json"));
        self.send_typed(method, path, body).await
    }

    /// Sends one request with a body of the given content type (`application/x-tar`).
    pub async fn send_typed(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Response, Error> {
        let uri = format!("{}{}", self.prefix, path);
        let exchange = async {
            let mut sender = self.handshake(&uri).await?;
            let mut builder = Request::builder()
                .method(method)
                .uri(&uri)
                .header(hyper::header::HOST, "docker")
                .header(
                    hyper::header::USER_AGENT,
                    concat!("dockgc/", env!("CARGO_PKG_VERSION")),
                );
            let body = match body {
                Some((bytes, content_type)) => {
                    builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
                    bytes
                }
                None => Vec::new(),
            };
            let request = builder
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| Error::Protocol(format!("bad request {uri}: {e}")))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.broken(&uri, e))?;
            let status = response.status();
            let api_version = response
                .headers()
                .get("api-version")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.broken(&uri, e))?
                .to_bytes();
            Ok(Response {
                status,
                api_version,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Unreachable {
                endpoint: self.endpoint.to_string(),
                message: format!("{uri}: no answer within {}s", self.timeout.as_secs()),
            })?
    }

    /// Opens a streaming GET (`/events`): waits for the headers within the timeout, then
    /// hands over the body, which may stay open for ever.
    pub async fn stream(&self, path: &str) -> Result<LineStream, Error> {
        let body = self.open(path).await?;
        Ok(LineStream {
            body,
            buffer: Vec::new(),
        })
    }

    /// Opens a streaming GET and hands over its body as it arrives (`/images/get`).
    pub async fn open(&self, path: &str) -> Result<ByteStream, Error> {
        let uri = format!("{}{}", self.prefix, path);
        let open = async {
            let mut sender = self.handshake(&uri).await?;
            let request = Request::builder()
                .method(Method::GET)
                .uri(&uri)
                .header(hyper::header::HOST, "docker")
                .body(Full::new(Bytes::new()))
                .map_err(|e| Error::Protocol(format!("bad request {uri}: {e}")))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.broken(&uri, e))?;
            if !response.status().is_success() {
                let status = response.status().as_u16();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Err(Error::from_status(status, &format!("GET {path}"), &body));
            }
            Ok(ByteStream {
                body: response.into_body(),
                endpoint: self.endpoint.to_string(),
                what: format!("GET {path}"),
            })
        };
        tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| Error::Unreachable {
                endpoint: self.endpoint.to_string(),
                message: format!("{uri}: no answer within {}s", self.timeout.as_secs()),
            })?
    }

    /// Connects and starts an HTTP/1.1 connection for one request to `uri`.
    async fn handshake(
        &self,
        uri: &str,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, Error> {
        let stream = self.connect().await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.broken(uri, e))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    fn broken(&self, uri: &str, e: hyper::Error) -> Error {
        Error::Unreachable {
            endpoint: self.endpoint.to_string(),
            message: format!("{uri}: {e}"),
        }
    }

    /// Sends a request and turns an error status into a typed error. A body is JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, Error> {
        let body = body.map(|b| (b, "application/json"));
        self.call_typed(method, path, body).await
    }

    /// [`Client::call`] with a body of the given content type (`application/x-tar`).
    pub async fn call_typed(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Bytes, Error> {
        let what = format!("{method} {path}");
        let response = self.send_typed(method, path, body).await?;
        match response.status {
            s if s.is_success() => Ok(response.body),
            s => Err(Error::from_status(s.as_u16(), &what, &response.body)),
        }
    }

    /// GETs `path` and decodes the JSON body.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let body = self.call(Method::GET, path, None).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("GET {path}: unexpected response: {e}")))
    }
}

/// A response body as it arrives.
pub struct ByteStream {
    body: hyper::body::Incoming,
    endpoint: String,
    what: String,
}

impl ByteStream {
    /// The next chunk, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(Error::Unreachable {
                        endpoint: self.endpoint.clone(),
                        message: format!("{} broke off: {e}", self.what),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }
}

/// A response body read line by line (Docker streams one JSON object per line).
pub struct LineStream {
    body: ByteStream,
    buffer: Vec<u8>,
}

impl LineStream {
    /// The next line, or `None` when the engine closed the stream.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, Error> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(Some(line));
            }
            match self.body.next_chunk().await? {
                None => return Ok(None),
                Some(data) => self.buffer.extend_from_slice(&data),
            }
        }
    }
}

fn tls_connector(files: &TlsFiles) -> Result<tokio_rustls::TlsConnector, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read_certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, Error> {
        CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                Error::Config(format!(
                    "cannot read certificates from {}: {e}",
                    path.display()
                ))
            })
    };
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in read_certs(&files.ca)? {
        roots.add(cert).map_err(|e| {
            Error::Config(format!("bad CA certificate in {}: {e}", files.ca.display()))
        })?;
    }
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| Error::Config(format!("cannot read key {}: {e}", files.key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| Error::Config(format!("bad client certificate or key: {e}")))?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
