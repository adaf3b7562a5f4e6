//! Why one object would or would not be deleted under a policy, with the numbers.

use serde::Serialize;

use crate::history::History;
use crate::model::{format_age, format_bytes, Snapshot};
use crate::plan::{find_image, plan, ImageFacts, Kind, Plan, Request, SkipReason, Step};
use crate::policy::Policy;

/// The planner's verdict on one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The plan deletes it.
    Delete {
        /// The step.
        step: Step,
    },
    /// The plan keeps it.
    Keep {
        /// Why.
        reason: SkipReason,
    },
}

/// An explanation of one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// Kind of object.
    pub kind: Kind,
    /// Its ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Facts the verdict rests on, as label/value pairs.
    pub facts: Vec<(String, String)>,
}

/// Explains the verdict on the object `reference` names (image, container or volume), or
/// `None` when no object matches.
pub fn explain(
    snapshot: &Snapshot,
    history: &History,
    policy: &Policy,
    request: &Request,
    reference: &str,
) -> Option<Explanation> {
    let (kind, id, name) = resolve(snapshot, reference)?;
    let plan = plan(snapshot, history, policy, request);
    let verdict = verdict_in(&plan, kind, &id)?;
    let mut facts = Vec::new();
    let now = snapshot.taken_at;
    if kind == Kind::Image {
        let facts_of = ImageFacts::new(snapshot, history);
        let i = snapshot.images.iter().position(|i| i.id == id)?;
        let image = &snapshot.images[i];
        let g = &facts_of.graph;
        let (unique, shared) = g.unique_and_shared_bytes(i);
        let users: Vec<_> = snapshot
            .containers
            .iter()
            .filter(|c| c.image_id == id)
            .map(|c| c.display_name())
            .collect();
        facts.push(("tags".into(), image.tags.join(", ")));
        facts.push(("layers".into(), image.layers.len().to_string()));
        facts.push(("unique bytes".into(), format_bytes(unique)));
        facts.push(("shared bytes".into(), format_bytes(shared)));
        facts.push((
            "arrived".into(),
            format!("{} ago", format_age(now - facts_of.first_seen[i])),
        ));
        facts.push((
            "last used".into(),
            format!("{} ago", format_age(now - facts_of.last_use[i])),
        ));
        facts.push((
            "last used, with images built on it".into(),
            format!("{} ago", format_age(now - facts_of.effective_last_use[i])),
        ));
        facts.push((
            "images built on it".into(),
            g.descendants[i].len().to_string(),
        ));
        facts.push(("containers".into(), users.join(", ")));
    }
    if let Some(c) = snapshot.containers.iter().find(|c| c.id == id) {
        facts.push(("state".into(), format!("{:?}", c.state).to_lowercase()));
        facts.push(("image".into(), c.image.clone()));
        facts.push((
            "last activity".into(),
            format!("{} ago", format_age(now - c.last_activity())),
        ));
    }
    if let Some(v) = snapshot.volumes.iter().find(|v| v.name == id) {
        facts.push(("kind".into(), format!("{:?}", v.kind).to_lowercase()));
        if let Some(b) = v.bytes {
            facts.push(("bytes".into(), format_bytes(b)));
        }
    }
    if let Some(fs) = &snapshot.filesystem {
        facts.push((
            "disk".into(),
            format!(
                "{:.1}% used, high {}, low {}",
                fs.used_percent(),
                policy.disk.high,
                policy.disk.low
            ),
        ));
    }
    Some(Explanation {
        kind,
        id,
        name,
        verdict,
        facts,
    })
}

fn resolve(snapshot: &Snapshot, reference: &str) -> Option<(Kind, String, String)> {
    if let Some(i) = find_image(snapshot, reference) {
        let image = &snapshot.images[i];
        return Some((Kind::Image, image.id.clone(), image.display_name()));
    }
    if let Some(c) = snapshot.containers.iter().find(|c| {
        c.names.iter().any(|n| n == reference)
            || (reference.len() >= 4 && c.id.starts_with(reference))
    }) {
        return Some((Kind::Container, c.id.clone(), c.display_name()));
    }
    if let Some(v) = snapshot.volumes.iter().find(|v| v.name == reference) {
        return Some((Kind::Volume, v.name.clone(), v.name.clone()));
    }
    snapshot
        .networks
        .iter()
        .find(|n| n.name == reference || n.id == reference)
        .map(|n| (Kind::Network, n.id.clone(), n.name.clone()))
}

fn verdict_in(plan: &Plan, kind: Kind, id: &str) -> Option<Verdict> {
    if let Some(step) = plan.steps.iter().find(|s| s.kind == kind && s.id == id) {
        return Some(Verdict::Delete { step: step.clone() });
    }
    plan.skipped
        .iter()
        .find(|s| s.kind == kind && s.id == id)
        .map(|s| Verdict::Keep {
            reason: s.reason.clone(),
        })
}
