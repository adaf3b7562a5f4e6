//! What a workload does to an engine: load images, create containers, write into them. dockgc
//! itself never calls these; the benchmarks' trace replay does, so that it too speaks to
//! Docker only through this adapter.

use hyper::Method;
use serde::Deserialize;

use crate::engine::Engine;
use crate::Error;

/// A container to create: never started; `Cmd` need not exist in the image.
#[derive(Debug, Clone)]
pub struct NewContainer<'a> {
    /// Container name.
    pub name: &'a str,
    /// Image reference (tag or ID).
    pub image: &'a str,
    /// A mount point that gets an anonymous volume, if any.
    pub volume: Option<&'a str>,
    /// A label (key, empty value) to set, if any.
    pub label: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    id: String,
}

impl Engine {
    /// Loads a `docker save` archive (`POST /images/load`). The engine reports failures
    /// inside a successful response's JSON stream; they come back as errors here.
    pub async fn load_archive(&self, tar: Vec<u8>) -> Result<(), Error> {
        let body = self
            .client()
            .call_typed(
                Method::POST,
                "/images/load?quiet=1",
                Some((tar, "application/x-tar")),
            )
            .await?;
        for line in body.split(|&b| b == b'\n') {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(message) = value.get("error").and_then(|e| e.as_str()) {
                return Err(Error::Api {
                    what: "POST /images/load".into(),
                    status: 500,
                    message: message.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Creates a container (not started); returns its ID.
    pub async fn create_container(&self, new: &NewContainer<'_>) -> Result<String, Error> {
        let mut config = serde_json::json!({
            "Image": new.image,
            "Cmd": ["/job"],
            "NetworkDisabled": true,
            "HostConfig": { "NetworkMode": "none" },
        });
        if let Some(path) = new.volume {
            config["Volumes"] = serde_json::json!({ path: {} });
        }
        if let Some(key) = new.label {
            config["Labels"] = serde_json::json!({ key: "" });
        }
        let path = format!(
            "/containers/create?name={}",
            crate::engine::encode(new.name)
        );
        let body = self
            .client()
            .call(Method::POST, &path, Some(config.to_string().into_bytes()))
            .await?;
        let created: Created = serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("POST /containers/create: {e}")))?;
        Ok(created.id)
    }

    /// Extracts a tar archive into a (stopped) container's filesystem at `path`.
    pub async fn put_archive(&self, id: &str, path: &str, tar: Vec<u8>) -> Result<(), Error> {
        let uri = format!(
            "/containers/{}/archive?path={}",
            crate::engine::encode(id),
            crate::engine::encode(path)
        );
        self.client()
            .call_typed(Method::PUT, &uri, Some((tar, "application/x-tar")))
            .await?;
        Ok(())
    }

    /// Renames a container. The engine reports it as a `container rename` event, which a
    /// benchmark uses as a marker: a policy that has handled it has handled everything before.
    pub async fn rename_container(&self, id: &str, name: &str) -> Result<(), Error> {
        let uri = format!(
            "/containers/{}/rename?name={}",
            crate::engine::encode(id),
            crate::engine::encode(name)
        );
        self.client().call(Method::POST, &uri, None).await?;
        Ok(())
    }
}
