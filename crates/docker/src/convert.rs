//! Engine API JSON to the core model. Pure: every function here is tested on recorded
//! responses, and accepts the shapes of API 1.41 and newer.

use std::collections::BTreeMap;

use dockgc_core::model::{
    BuildCacheRecord, Container, ContainerState, Image, Labels, Network, NetworkKind, Timestamp,
    Volume, VolumeKind,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `GET /images/json` item.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ImageSummary {
    pub id: String,
    #[serde(default)]
    pub parent_id: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(default)]
    pub repo_digests: Option<Vec<String>>,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub labels: Option<Labels>,
    #[serde(default)]
    pub size: i64,
}

/// `GET /images/{id}/json` (the fields dockgc reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ImageInspect {
    pub id: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(default)]
    pub repo_digests: Option<Vec<String>>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default, rename = "RootFS")]
    pub root_fs: RootFs,
    #[serde(default)]
    pub metadata: Option<ImageMetadata>,
    #[serde(default)]
    pub config: Option<ImageConfig>,
    #[serde(default)]
    pub parent: Option<String>,
}

/// `RootFS` of an image.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct RootFs {
    #[serde(default)]
    pub layers: Option<Vec<String>>,
}

/// `Metadata` of an image.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ImageMetadata {
    #[serde(default)]
    pub last_tag_time: Option<String>,
}

/// `Config` of an image (labels only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ImageConfig {
    #[serde(default)]
    pub labels: Option<Labels>,
}

/// `GET /images/{id}/history` item.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct HistoryItem {
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub size: i64,
}

/// `GET /containers/json` item.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ContainerSummary {
    pub id: String,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub image: String,
    #[serde(default, rename = "ImageID")]
    pub image_id: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub labels: Option<Labels>,
    #[serde(default)]
    pub size_rw: Option<i64>,
    #[serde(default)]
    pub mounts: Vec<MountPoint>,
    #[serde(default)]
    pub network_settings: Option<NetworkSettings>,
}

/// A container mount.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct MountPoint {
    #[serde(default, rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// Networks a container is attached to.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct NetworkSettings {
    #[serde(default)]
    pub networks: Option<BTreeMap<String, serde_json::Value>>,
}

/// `GET /containers/{id}/json` (state times only).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ContainerInspect {
    #[serde(default)]
    pub state: Option<ContainerInspectState>,
}

/// `State` of a container inspect.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ContainerInspectState {
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// `GET /volumes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct VolumeList {
    #[serde(default)]
    pub volumes: Option<Vec<VolumeItem>>,
}

/// A volume.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct VolumeItem {
    pub name: String,
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub labels: Option<Labels>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub usage_data: Option<UsageData>,
}

/// Volume usage from `/system/df`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct UsageData {
    #[serde(default)]
    pub size: i64,
}

/// `GET /networks` item.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct NetworkItem {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub labels: Option<Labels>,
}

/// `GET /system/df` in the shape of API 1.41–1.51 (dockgc pins at most 1.47).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct SystemDf {
    #[serde(default)]
    pub layers_size: i64,
    #[serde(default)]
    pub volumes: Option<Vec<VolumeItem>>,
    #[serde(default)]
    pub build_cache: Option<Vec<BuildCacheItem>>,
}

/// A BuildKit cache record from `/system/df`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct BuildCacheItem {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default, rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub in_use: bool,
    #[serde(default)]
    pub shared: bool,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub last_used_at: Option<String>,
}

/// Parses an RFC 3339 time; Docker's zero time (`0001-01-01T00:00:00Z`) and garbage are `None`.
pub fn parse_time(text: Option<&str>) -> Option<Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(text?)
        .ok()?
        .timestamp();
    (t > 0).then_some(t)
}

/// Chain IDs of a list of diff IDs: chain(L0) = diff(L0), chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chains: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match chains.last() {
            None => diff.clone(),
            Some(prev) => {
                let digest = Sha256::digest(format!("{prev} {diff}").as_bytes());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }
        };
        chains.push(next);
    }
    chains
}

/// Per-layer sizes from an image history (newest first, as the API returns it), or `None`
/// when the history cannot be mapped onto the layers unambiguously.
///
/// The engine reports each layer's size on the history entry that created it and 0 on
/// entries that created no layer. With as many entries as layers the mapping is one to one;
/// otherwise the non-zero entries map in order, which is exact unless a layer is empty.
pub fn layer_sizes_from_history(history: &[HistoryItem], layers: usize) -> Option<Vec<u64>> {
    let oldest_first: Vec<&HistoryItem> = history.iter().rev().collect();
    if oldest_first.len() == layers {
        return Some(oldest_first.iter().map(|h| h.size.max(0) as u64).collect());
    }
    let sized: Vec<u64> = oldest_first
        .iter()
        .filter(|h| h.size > 0)
        .map(|h| h.size as u64)
        .collect();
    (sized.len() == layers).then_some(sized)
}

fn clean_refs(refs: Option<Vec<String>>) -> Vec<String> {
    refs.unwrap_or_default()
        .into_iter()
        .filter(|r| !r.starts_with("<none>"))
        .collect()
}

/// An image from its inspect; `arrived` is the best local-arrival time the caller knows.
pub fn image(inspect: ImageInspect, summary_created: i64, arrived: Option<Timestamp>) -> Image {
    let created = parse_time(inspect.created.as_deref()).unwrap_or(summary_created);
    let last_tagged = inspect
        .metadata
        .as_ref()
        .and_then(|m| parse_time(m.last_tag_time.as_deref()));
    let layers = chain_ids(&inspect.root_fs.layers.unwrap_or_default());
    Image {
        arrived: arrived.or(last_tagged).unwrap_or(created),
        id: inspect.id,
        tags: clean_refs(inspect.repo_tags),
        repo_digests: clean_refs(inspect.repo_digests),
        created,
        last_tagged,
        labels: inspect.config.and_then(|c| c.labels).unwrap_or_default(),
        parent: inspect.parent.filter(|p| !p.is_empty()),
        layers,
        metadata_disk_bytes: None,
    }
}

/// Parses a container state name.
pub fn container_state(state: &str) -> ContainerState {
    match state {
        "created" => ContainerState::Created,
        "running" => ContainerState::Running,
        "paused" => ContainerState::Paused,
        "restarting" => ContainerState::Restarting,
        "removing" => ContainerState::Removing,
        "dead" => ContainerState::Dead,
        "exited" => ContainerState::Exited,
        // Unknown states count as running: the safe side.
        _ => ContainerState::Running,
    }
}

/// A container from its list entry and (optionally) its inspect.
pub fn container(summary: ContainerSummary, inspect: Option<ContainerInspect>) -> Container {
    let state = inspect.and_then(|i| i.state);
    let started = state
        .as_ref()
        .and_then(|s| parse_time(s.started_at.as_deref()));
    let finished = state
        .as_ref()
        .and_then(|s| parse_time(s.finished_at.as_deref()));
    Container {
        names: summary
            .names
            .iter()
            .map(|n| n.trim_start_matches('/').to_string())
            .collect(),
        image_id: summary.image_id,
        image: summary.image,
        state: container_state(&summary.state),
        created: summary.created,
        started,
        finished,
        labels: summary.labels.unwrap_or_default(),
        size_rw: summary.size_rw.map(|s| s.max(0) as u64),
        disk_bytes: None,
        volumes: summary
            .mounts
            .into_iter()
            .filter(|m| m.kind == "volume")
            .filter_map(|m| m.name)
            .collect(),
        networks: summary
            .network_settings
            .and_then(|n| n.networks)
            .map(|n| n.into_keys().collect())
            .unwrap_or_default(),
        id: summary.id,
    }
}

/// Label the engine (API ≥ 1.42) puts on anonymous volumes.
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

/// A volume; its size comes from `/system/df` when the daemon reported one.
pub fn volume(item: VolumeItem, size: Option<i64>) -> Volume {
    let labels = item.labels.unwrap_or_default();
    // Older engines mark anonymous volumes only by their 64-hex-digit generated name.
    let generated = item.name.len() == 64 && item.name.chars().all(|c| c.is_ascii_hexdigit());
    let kind = if labels.contains_key(ANONYMOUS_LABEL) || generated {
        VolumeKind::Anonymous
    } else {
        VolumeKind::Named
    };
    Volume {
        kind,
        driver: item.driver,
        created: parse_time(item.created_at.as_deref()),
        bytes: size.filter(|s| *s >= 0).map(|s| s as u64),
        containers: Vec::new(),
        labels,
        name: item.name,
    }
}

/// A network.
pub fn network(item: NetworkItem) -> Network {
    let kind = if matches!(item.name.as_str(), "bridge" | "host" | "none") {
        NetworkKind::Predefined
    } else {
        NetworkKind::Custom
    };
    Network {
        id: item.id,
        name: item.name,
        driver: item.driver,
        kind,
        created: parse_time(item.created.as_deref()),
        labels: item.labels.unwrap_or_default(),
    }
}

/// A build cache record.
pub fn build_cache_record(item: BuildCacheItem) -> BuildCacheRecord {
    BuildCacheRecord {
        id: item.id,
        kind: item.kind,
        bytes: item.size.max(0) as u64,
        in_use: item.in_use,
        shared: item.shared,
        created: parse_time(item.created_at.as_deref()),
        last_used: parse_time(item.last_used_at.as_deref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let diffs = vec!["sha256:aaaa".to_string(), "sha256:bbbb".to_string()];
        let chains = chain_ids(&diffs);
        assert_eq!(chains[0], "sha256:aaaa");
        let expected = Sha256::digest(b"sha256:aaaa sha256:bbbb");
        let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(chains[1], format!("sha256:{hex}"));
    }

    #[test]
    fn recorded_image_inspect_of_engine_20_10() {
        // Trimmed from `GET /v1.41/images/{id}/json` of Engine 20.10.24.
        let json = r#"{"Id":"sha256:2bd0784653024078ca5e118003aff7e95ea83321dd4158a28f1fbb9922cb6b54",
            "RepoTags":["bb:latest"],"RepoDigests":[],"Parent":"","Created":"2026-12-04T12:48:01.123456789Z",
            "Config":{"Labels":null},"RootFS":{"Type":"layers","Layers":["sha256:11"]},
            "Metadata":{"LastTagTime":"2026-12-04T12:48:01.5Z"}}"#;
        let inspect: ImageInspect = serde_json::from_str(json).unwrap();
        let img = image(inspect, 0, None);
        assert_eq!(img.tags, vec!["bb:latest"]);
        assert_eq!(img.layers, vec!["sha256:11"]);
        assert_eq!(img.parent, None);
        assert_eq!(img.last_tagged, Some(img.created));
        assert_eq!(img.arrived, img.created);
    }

    #[test]
    fn dangling_refs_are_dropped() {
        let json = r#"{"Id":"sha256:1","RepoTags":["<none>:<none>"],"RepoDigests":["<none>@<none>"],
            "Created":"0001-01-01T00:00:00Z","RootFS":{"Type":"layers"},"Metadata":{"LastTagTime":"0001-01-01T00:00:00Z"}}"#;
        let img = image(serde_json::from_str(json).unwrap(), 77, Some(99));
        assert!(img.is_dangling());
        assert_eq!(img.created, 77);
        assert_eq!(img.arrived, 99);
        assert_eq!(img.last_tagged, None);
    }

    #[test]
    fn history_maps_onto_layers() {
        let h = |size: i64| HistoryItem {
            created_by: String::new(),
            size,
        };
        // Newest first: CMD (no layer), COPY 30, COPY 20, base 10.
        let history = vec![h(0), h(30), h(20), h(10)];
        assert_eq!(
            layer_sizes_from_history(&history, 3),
            Some(vec![10, 20, 30])
        );
        assert_eq!(
            layer_sizes_from_history(&history, 4),
            Some(vec![10, 20, 30, 0])
        );
        assert_eq!(layer_sizes_from_history(&history, 2), None);
    }

    #[test]
    fn recorded_container_list_entry() {
        let json = r#"{"Id":"11d3","Names":["/zen"],"Image":"bb","ImageID":"sha256:2bd0","Command":"x",
            "Created":1764852481,"State":"exited","Status":"Exited (0)","SizeRw":12,"Labels":{},
            "Mounts":[{"Type":"volume","Name":"data","Destination":"/d"},{"Type":"bind","Source":"/x"}],
            "NetworkSettings":{"Networks":{"none":{}}}}"#;
        let inspect =
            r#"{"State":{"StartedAt":"2026-12-04T12:48:01Z","FinishedAt":"0001-01-01T00:00:00Z"}}"#;
        let c = container(
            serde_json::from_str(json).unwrap(),
            Some(serde_json::from_str(inspect).unwrap()),
        );
        assert_eq!(c.names, vec!["zen"]);
        assert_eq!(c.state, ContainerState::Exited);
        assert_eq!(c.volumes, vec!["data"]);
        assert_eq!(c.networks, vec!["none"]);
        assert_eq!(c.size_rw, Some(12));
        assert!(c.started.is_some());
        assert_eq!(c.finished, None);
    }

    #[test]
    fn anonymous_volumes_by_label_or_generated_name() {
        let item = |name: &str, labels: &str| -> VolumeItem {
            serde_json::from_str(&format!(
                r#"{{"Name":"{name}","Driver":"local","Labels":{labels}}}"#
            ))
            .unwrap()
        };
        let hex = "a".repeat(64);
        assert_eq!(volume(item(&hex, "null"), None).kind, VolumeKind::Anonymous);
        assert_eq!(
            volume(item("x", r#"{"com.docker.volume.anonymous":""}"#), None).kind,
            VolumeKind::Anonymous
        );
        assert_eq!(volume(item("data", "{}"), Some(-1)).kind, VolumeKind::Named);
        assert_eq!(volume(item("data", "{}"), Some(-1)).bytes, None);
    }

    #[test]
    fn recorded_system_df_of_engine_20_10() {
        let json = r#"{"LayersSize":1982000,"Images":[],"Containers":[],"Volumes":[],
            "BuildCache":[{"ID":"x1","Parent":"","Type":"regular","Description":"","InUse":false,"Shared":false,
            "Size":1982000,"CreatedAt":"2026-12-04T12:48:00Z","LastUsedAt":"2026-12-04T12:48:01Z","UsageCount":1}]}"#;
        let df: SystemDf = serde_json::from_str(json).unwrap();
        assert_eq!(df.layers_size, 1_982_000);
        let r = build_cache_record(df.build_cache.unwrap().remove(0));
        assert!(r.is_reclaimable());
        assert_eq!(r.bytes, 1_982_000);
    }
}
