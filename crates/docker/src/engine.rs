//! The engine: connection, snapshot, and deletions that never force.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use dockgc_core::model::{
    Container, EngineInfo, Filesystem, Image, Layer, Snapshot, Timestamp, SNAPSHOT_VERSION,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use hyper::Method;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::client::Client;
use crate::convert::{self, HistoryItem, ImageInspect, ImageSummary};
use crate::endpoint::{Endpoint, Transport};
use crate::host::HostRoot;
use crate::Error;

/// Oldest Engine API dockgc supports (Debian's docker.io 20.10).
pub const MIN_API: (u32, u32) = (1, 41);
/// Newest Engine API dockgc pins requests to: the `/system/df` and `/build/prune` shapes it
/// speaks. Newer engines serve it unchanged.
pub const MAX_API: (u32, u32) = (1, 47);
/// Requests in flight at once while taking a snapshot.
const CONCURRENCY: usize = 8;

pub(crate) fn encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VersionInfo {
    #[serde(default)]
    version: String,
    #[serde(default)]
    api_version: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SystemInfo {
    #[serde(default)]
    docker_root_dir: String,
    #[serde(default)]
    driver: String,
}

/// A connected engine.
#[derive(Debug)]
pub struct Engine {
    client: Client,
    info: EngineInfo,
    host: Option<HostRoot>,
}

/// The outcome of a deletion the engine accepted or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Deleted.
    Removed,
    /// 404: it was already gone.
    AlreadyGone,
}

impl Engine {
    /// Connects: pings, negotiates the API version, reads where the Docker root is.
    pub async fn connect(endpoint: Endpoint, timeout: Duration) -> Result<Self, Error> {
        let mut client = Client::new(endpoint, timeout)?;
        let ping = client.send(Method::GET, "/_ping", None).await?;
        if !ping.status.is_success() {
            return Err(Error::from_status(
                ping.status.as_u16(),
                "GET /_ping",
                &ping.body,
            ));
        }
        let version: VersionInfo = client.get_json("/version").await?;
        let server_api = parse_version(&version.api_version)
            .or_else(|| ping.api_version.as_deref().and_then(parse_version))
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "engine reports no API version ({:?})",
                    version.api_version
                ))
            })?;
        if server_api < MIN_API {
            return Err(Error::Protocol(format!(
                "engine API {} is older than the oldest dockgc supports ({}.{})",
                version.api_version, MIN_API.0, MIN_API.1
            )));
        }
        let pinned = server_api.min(MAX_API);
        let pinned = format!("{}.{}", pinned.0, pinned.1);
        client.pin_version(&pinned);
        let info: SystemInfo = client.get_json("/info").await?;
        let host = match &client.endpoint().transport {
            Transport::Unix(_) => {
                HostRoot::open(&PathBuf::from(&info.docker_root_dir), &info.driver)
            }
            _ => None,
        };
        Ok(Self {
            info: EngineInfo {
                endpoint: client.endpoint().url.clone(),
                api_version: pinned,
                server_version: version.version,
                docker_root_dir: info.docker_root_dir,
                storage_driver: info.driver,
            },
            client,
            host,
        })
    }

    /// The HTTP client, for the adapter's other modules.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Identity of the engine.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// The readable Docker root, when dockgc runs on the engine's host.
    pub fn host(&self) -> Option<&HostRoot> {
        self.host.as_ref()
    }

    /// The filesystem holding `DockerRootDir`, when it is reachable from here, flushed first
    /// so that freed space shows (see [`crate::host::Freshness`]).
    pub fn filesystem(&self) -> Option<Filesystem> {
        self.measure(crate::host::Freshness::Synced)
    }

    /// The filesystem as statvfs says now, without flushing: for frequent checks.
    pub fn filesystem_as_is(&self) -> Option<Filesystem> {
        self.measure(crate::host::Freshness::AsIs)
    }

    fn measure(&self, freshness: crate::host::Freshness) -> Option<Filesystem> {
        let root = self.host.as_ref()?.root();
        crate::host::measure_filesystem(root, freshness).ok()
    }

    /// `LayersSize` from `/system/df`: the sum of all layer sizes in Docker's accounting.
    pub async fn layers_size(&self) -> Result<u64, Error> {
        let df: convert::SystemDf = self.client.get_json("/system/df").await?;
        Ok(df.layers_size.max(0) as u64)
    }

    /// Takes a snapshot of everything on the Docker filesystem, at `now`.
    pub async fn snapshot(&self, now: Timestamp) -> Result<Snapshot, Error> {
        let summaries: Vec<ImageSummary> = self.client.get_json("/images/json?all=1").await?;
        let images: Vec<(Image, Vec<Layer>)> = stream::iter(summaries)
            .map(|s| self.image(s))
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut layers: HashMap<String, Layer> = HashMap::new();
        let mut image_list = Vec::with_capacity(images.len());
        for (image, image_layers) in images {
            for layer in image_layers {
                layers.entry(layer.chain_id.clone()).or_insert(layer);
            }
            image_list.push(image);
        }
        let mut layers: Vec<Layer> = layers.into_values().collect();
        layers.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
        image_list.sort_by(|a, b| a.id.cmp(&b.id));

        let containers = self.containers(true).await?;
        let df: convert::SystemDf = self.client.get_json("/system/df").await?;
        self.account_buildkit_layers(&mut layers, df.build_cache.as_deref().unwrap_or_default());
        let sizes: HashMap<String, i64> = df
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name, v.usage_data.map_or(-1, |u| u.size)))
            .collect();
        let list: convert::VolumeList = self.client.get_json("/volumes").await?;
        let mut volumes: Vec<_> = list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| {
                let size = sizes.get(&v.name).copied();
                convert::volume(v, size)
            })
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        for v in &mut volumes {
            v.containers = containers
                .iter()
                .filter(|c| c.volumes.contains(&v.name))
                .map(|c| c.id.clone())
                .collect();
        }
        let nets: Vec<convert::NetworkItem> = self.client.get_json("/networks").await?;
        let mut networks: Vec<_> = nets.into_iter().map(convert::network).collect();
        networks.sort_by(|a, b| a.name.cmp(&b.name));
        let mut build_cache: Vec<_> = df
            .build_cache
            .unwrap_or_default()
            .into_iter()
            .map(convert::build_cache_record)
            .collect();
        build_cache.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Snapshot {
            version: SNAPSHOT_VERSION,
            taken_at: now,
            engine: self.info.clone(),
            filesystem: self.filesystem(),
            images: image_list,
            layers,
            containers,
            volumes,
            networks,
            build_cache,
        })
    }

    async fn image(&self, summary: ImageSummary) -> Result<(Image, Vec<Layer>), Error> {
        let id = summary.id.clone();
        let inspect: ImageInspect = self
            .client
            .get_json(&format!("/images/{}/json", encode(&id)))
            .await?;
        let diff_count = inspect.root_fs.layers.as_ref().map_or(0, Vec::len);
        let arrived = self.host.as_ref().and_then(|h| h.image_arrival(&id));
        let mut image = convert::image(inspect, summary.created, arrived);
        image.metadata_disk_bytes = self
            .host
            .as_ref()
            .and_then(|h| h.image_metadata_disk_bytes(&id));
        let host_sizes: Option<Vec<u64>> = self
            .host
            .as_ref()
            .and_then(|h| image.layers.iter().map(|c| h.layer_size(c)).collect());
        let sizes = match host_sizes {
            Some(s) => s,
            None => {
                let history: Vec<HistoryItem> = self
                    .client
                    .get_json(&format!("/images/{}/history", encode(&id)))
                    .await?;
                convert::layer_sizes_from_history(&history, diff_count).unwrap_or_else(|| {
                    // Unmappable history: put the image's whole size on its top layer, the
                    // one most likely to be its own.
                    let mut s = vec![0; diff_count];
                    if let Some(top) = s.last_mut() {
                        *top = summary.size.max(0) as u64;
                    }
                    s
                })
            }
        };
        let layers = image
            .layers
            .iter()
            .zip(sizes)
            .map(|(chain, bytes)| {
                let usage = self.host.as_ref().and_then(|h| h.layer_disk_usage(chain));
                Layer {
                    chain_id: chain.clone(),
                    bytes,
                    disk_bytes: usage.map(|u| u.total().bytes),
                    inodes: usage.map(|u| u.total().inodes),
                }
            })
            .collect();
        Ok((image, layers))
    }

    /// A layer BuildKit made and still shares with a cache record keeps its data when its
    /// images go (the data moves to the build cache): deleting the images frees only the
    /// layer's metadata. Records name no layer, so they are matched by exact size.
    fn account_buildkit_layers(&self, layers: &mut [Layer], records: &[convert::BuildCacheItem]) {
        let Some(host) = &self.host else { return };
        let mut shared: Vec<i64> = records
            .iter()
            .filter(|r| r.shared && r.kind == "regular" && r.size > 0)
            .map(|r| r.size)
            .collect();
        for layer in layers.iter_mut() {
            let Some(disk) = host.layer_disk_usage(&layer.chain_id) else {
                continue;
            };
            if !disk.made_by_buildkit {
                continue;
            }
            if let Some(pos) = shared.iter().position(|&s| s as u64 == layer.bytes) {
                shared.swap_remove(pos);
                layer.disk_bytes = Some(disk.metadata.bytes);
                layer.inodes = Some(disk.metadata.inodes);
            }
        }
    }

    /// Lists all containers with their state times; `with_sizes` asks for writable-layer
    /// sizes (slower on busy hosts).
    pub async fn containers(&self, with_sizes: bool) -> Result<Vec<Container>, Error> {
        self.list_containers(with_sizes, true).await
    }

    /// Lists all containers without their start and finish times (one request): enough to
    /// know which images, volumes and networks are in use.
    pub async fn containers_brief(&self) -> Result<Vec<Container>, Error> {
        self.list_containers(false, false).await
    }

    async fn list_containers(
        &self,
        with_sizes: bool,
        with_times: bool,
    ) -> Result<Vec<Container>, Error> {
        let path = format!("/containers/json?all=1&size={}", u8::from(with_sizes));
        let summaries: Vec<convert::ContainerSummary> = self.client.get_json(&path).await?;
        let mut containers: Vec<Container> = stream::iter(summaries)
            .map(|s| async move {
                if !with_times {
                    return Ok(convert::container(s, None));
                }
                let inspect = match self
                    .client
                    .get_json(&format!("/containers/{}/json", encode(&s.id)))
                    .await
                {
                    Ok(i) => Some(i),
                    Err(Error::NotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                let mut c = convert::container(s, inspect);
                c.disk_bytes = self
                    .host
                    .as_ref()
                    .and_then(|h| h.container_disk_bytes(&c.id));
                Ok(c)
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(containers)
    }

    /// Streams engine events about containers and images, replaying those since `since`
    /// (Unix nanoseconds) that the engine still buffers.
    pub async fn events(&self, since_nanos: Option<i64>) -> Result<EventStream, Error> {
        let filters = r#"{"type":["container","image"]}"#;
        let mut path = format!("/events?filters={}", encode(filters));
        if let Some(n) = since_nanos {
            path.push_str(&format!(
                "&since={}.{:09}",
                n / 1_000_000_000,
                n % 1_000_000_000
            ));
        }
        Ok(EventStream {
            lines: self.client.stream(&path).await?,
        })
    }

    /// The image ID a container was created from; `None` when the container is gone.
    pub async fn container_image(&self, id: &str) -> Result<Option<String>, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Inspect {
            image: String,
        }
        match self
            .client
            .get_json::<Inspect>(&format!("/containers/{}/json", encode(id)))
            .await
        {
            Ok(i) => Ok(Some(i.image)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Inspects one image afresh (for the executor's re-check); `None` when it is gone.
    pub async fn inspect_image(&self, id: &str) -> Result<Option<Image>, Error> {
        match self
            .client
            .get_json::<ImageInspect>(&format!("/images/{}/json", encode(id)))
            .await
        {
            Ok(inspect) => {
                let arrived = self.host.as_ref().and_then(|h| h.image_arrival(id));
                Ok(Some(convert::image(inspect, 0, arrived)))
            }
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Streams `docker save` of these images (one archive, shared layers once). The engine
    /// needs temporary space for it on its data root.
    pub async fn export_images(&self, ids: &[String]) -> Result<crate::client::ByteStream, Error> {
        let names: Vec<String> = ids
            .iter()
            .map(|id| format!("names={}", encode(id)))
            .collect();
        self.client
            .open(&format!("/images/get?{}", names.join("&")))
            .await
    }

    async fn delete(&self, path: &str) -> Result<Removal, Error> {
        self.delete_reporting(path).await.map(|(r, _)| r)
    }

    /// Deletes and returns the engine's answer too.
    async fn delete_reporting(&self, path: &str) -> Result<(Removal, bytes::Bytes), Error> {
        match self.client.call(Method::DELETE, path, None).await {
            Ok(body) => Ok((Removal::Removed, body)),
            Err(Error::NotFound(_)) => Ok((Removal::AlreadyGone, bytes::Bytes::new())),
            Err(e) => Err(e),
        }
    }

    /// Removes a stopped container (never forced; its volumes stay).
    pub async fn remove_container(&self, id: &str) -> Result<Removal, Error> {
        self.delete(&format!("/containers/{}?force=0&v=0", encode(id)))
            .await
    }

    /// Removes an image: each of `tags` by name, then the image by ID if it is still there.
    /// Never forced, never prunes untagged parents (they are steps of their own).
    pub async fn remove_image(&self, id: &str, tags: &[String]) -> Result<Removal, Error> {
        let mut outcome = Removal::AlreadyGone;
        for tag in tags {
            if self
                .delete(&format!("/images/{}?force=0&noprune=1", encode(tag)))
                .await?
                == Removal::Removed
            {
                outcome = Removal::Removed;
            }
        }
        match self
            .delete(&format!("/images/{}?force=0&noprune=1", encode(id)))
            .await?
        {
            Removal::Removed => Ok(Removal::Removed),
            Removal::AlreadyGone => Ok(outcome),
        }
    }

    /// Removes a volume (never forced).
    pub async fn remove_volume(&self, name: &str) -> Result<Removal, Error> {
        self.delete(&format!("/volumes/{}?force=0", encode(name)))
            .await
    }

    /// Removes a network.
    pub async fn remove_network(&self, id: &str) -> Result<Removal, Error> {
        self.delete(&format!("/networks/{}", encode(id))).await
    }

    /// Prunes BuildKit cache: records unused for `max_age`, then the oldest until at most
    /// `keep_bytes` remain. Returns the bytes the engine reports reclaimed.
    pub async fn prune_build_cache(
        &self,
        keep_bytes: u64,
        max_age: Duration,
    ) -> Result<u64, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Pruned {
            #[serde(default)]
            space_reclaimed: i64,
        }
        let filters = format!(r#"{{"until":["{}s"]}}"#, max_age.as_secs());
        let by_age: Pruned = serde_json::from_slice(
            &self
                .client
                .call(
                    Method::POST,
                    &format!("/build/prune?filters={}", encode(&filters)),
                    None,
                )
                .await?,
        )
        .map_err(|e| Error::Protocol(format!("POST /build/prune: {e}")))?;
        // keep-storage is what API ≤ 1.47 understands; dockgc pins at most 1.47.
        let by_size: Pruned = serde_json::from_slice(
            &self
                .client
                .call(
                    Method::POST,
                    &format!("/build/prune?keep-storage={keep_bytes}"),
                    None,
                )
                .await?,
        )
        .map_err(|e| Error::Protocol(format!("POST /build/prune: {e}")))?;
        Ok((by_age.space_reclaimed.max(0) + by_size.space_reclaimed.max(0)) as u64)
    }
}

/// One engine event dockgc cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEvent {
    /// `container` or `image`.
    pub kind: String,
    /// `create`, `start`, `exec_start`, `die`, `pull`, `load`, `import`, `tag`, `push`, …
    pub action: String,
    /// Container ID, or image ID or reference.
    pub id: String,
    /// For container events: the image reference the container was created with.
    pub image: Option<String>,
    /// When, in Unix nanoseconds.
    pub time_nanos: i64,
}

impl EngineEvent {
    /// Parses one line of the `/events` stream; `None` for lines that are not events.
    pub fn parse(line: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Actor {
            #[serde(rename = "ID", default)]
            id: String,
            #[serde(rename = "Attributes", default)]
            attributes: HashMap<String, String>,
        }
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "Type", default)]
            kind: String,
            #[serde(rename = "Action", default)]
            action: String,
            #[serde(rename = "Actor")]
            actor: Actor,
            #[serde(rename = "timeNano", default)]
            time_nano: i64,
        }
        let raw: Raw = serde_json::from_slice(line).ok()?;
        // `exec_start: sh -c …` carries the command after a colon.
        let action = raw
            .action
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        Some(Self {
            kind: raw.kind,
            action,
            image: raw.actor.attributes.get("image").cloned(),
            id: raw.actor.id,
            time_nanos: raw.time_nano,
        })
    }
}

/// A stream of engine events.
pub struct EventStream {
    lines: crate::client::LineStream,
}

impl EventStream {
    /// The next event, or `None` when the engine closed the stream.
    pub async fn next(&mut self) -> Result<Option<EngineEvent>, Error> {
        while let Some(line) = self.lines.next_line().await? {
            if let Some(event) = EngineEvent::parse(&line) {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_events_of_engine_20_10() {
        let start = br#"{"status":"start","id":"11d3","from":"bb","Type":"container","Action":"start","Actor":{"ID":"11d3","Attributes":{"image":"bb","name":"zen"}},"scope":"local","time":1764852481,"timeNano":1764852481123456789}"#;
        let e = EngineEvent::parse(start).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.action.as_str(), e.image.as_deref()),
            ("container", "start", Some("bb"))
        );
        assert_eq!(e.time_nanos, 1_764_852_481_123_456_789);
        let exec = br#"{"Type":"container","Action":"exec_start: sh -c true","Actor":{"ID":"11d3","Attributes":{"image":"bb"}},"timeNano":5}"#;
        assert_eq!(EngineEvent::parse(exec).unwrap().action, "exec_start");
        let load = br#"{"status":"load","id":"sha256:2bd0","Type":"image","Action":"load","Actor":{"ID":"sha256:2bd0","Attributes":{"name":"sha256:2bd0"}},"scope":"local","time":1,"timeNano":1000000000}"#;
        let e = EngineEvent::parse(load).unwrap();
        assert_eq!((e.kind.as_str(), e.id.as_str()), ("image", "sha256:2bd0"));
        assert!(EngineEvent::parse(b"garbage").is_none());
    }
}
