//! Rendering for people (tables) and programs (JSON).

use std::fmt::Write as _;

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, CellAlignment, Table};
use dockgc_core::model::{format_age, format_bytes, Filesystem, Timestamp};
use dockgc_core::plan::{Plan, TargetStatus};
use dockgc_core::policy::Policy;
use dockgc_core::{Explanation, Usage, Verdict};

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().map(Cell::new));
    t
}

pub(crate) fn right(t: &mut Table, columns: &[usize]) {
    for &c in columns {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
}

pub(crate) fn trimmed(t: &Table) -> String {
    t.to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line on the filesystem and the watermarks.
pub fn disk_line(fs: Option<&Filesystem>, policy: &Policy) -> String {
    match fs {
        Some(fs) => format!(
            "Disk: {} of {} used ({:.1}%), {} free, inodes {:.1}% used; high {}, low {}",
            format_bytes(fs.used_bytes),
            format_bytes(fs.capacity_bytes()),
            fs.used_percent(),
            format_bytes(fs.available_bytes),
            fs.used_inodes_percent(),
            policy.disk.high,
            policy.disk.low
        ),
        None => "Disk: not measurable from here (remote engine or unreadable Docker root)".into(),
    }
}

/// The plan as a table.
pub fn plan_table(plan: &Plan, policy: &Policy, show_skipped: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", disk_line(plan.filesystem.as_ref(), policy));
    match (&plan.target, plan.target_status) {
        (Some(t), TargetStatus::Reached) => {
            let _ = writeln!(
                out,
                "Target: {} (free {}): reached",
                t.rule,
                format_bytes(t.need_disk_bytes)
            );
        }
        (Some(t), TargetStatus::Unreachable { short_disk_bytes }) => {
            let _ = writeln!(
                out,
                "Target: {} (free {}): NOT reachable under the policy, {} short",
                t.rule,
                format_bytes(t.need_disk_bytes),
                format_bytes(short_disk_bytes)
            );
        }
        _ => {
            let _ = writeln!(out, "Target: none (routine rules only)");
        }
    }
    out.push('\n');
    if plan.steps.is_empty() {
        out.push_str("Nothing to delete.\n");
    } else {
        let mut t = table(&["#", "KIND", "NAME", "BYTES", "DISK", "REASON", "RULE"]);
        for (i, s) in plan.steps.iter().enumerate() {
            t.add_row(vec![
                (i + 1).to_string(),
                s.kind.to_string(),
                s.name.clone(),
                format_bytes(s.bytes),
                format_bytes(s.disk_bytes),
                s.reason.to_string(),
                s.rule.clone(),
            ]);
        }
        right(&mut t, &[0, 3, 4]);
        out.push_str(&trimmed(&t));
        out.push('\n');
    }
    let _ = write!(
        out,
        "\nTotal: {} step(s), {} (Docker's accounting), {} predicted on disk",
        plan.steps.len(),
        format_bytes(plan.reclaim_bytes),
        format_bytes(plan.reclaim_disk_bytes)
    );
    if let Some(p) = &plan.projected {
        let _ = write!(
            out,
            "; after: {:.1}% used, {} free",
            p.used_percent,
            format_bytes(p.available_bytes)
        );
    }
    out.push('\n');
    if show_skipped {
        if !plan.skipped.is_empty() {
            out.push_str("\nLeft alone:\n");
            let mut t = table(&["KIND", "NAME", "WHY"]);
            for s in &plan.skipped {
                t.add_row(vec![
                    s.kind.to_string(),
                    s.name.clone(),
                    s.reason.to_string(),
                ]);
            }
            out.push_str(&trimmed(&t));
            out.push('\n');
        }
    } else if !plan.skipped.is_empty() {
        let _ = writeln!(
            out,
            "Left alone: {} candidate(s) (--show-skipped lists them with why)",
            plan.skipped.len()
        );
    }
    out
}

/// Usage as a table.
pub fn usage_table(usage: &Usage, policy: &Policy, verbose: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", disk_line(usage.filesystem.as_ref(), policy));
    let mut t = table(&["TYPE", "TOTAL", "ACTIVE", "SIZE", "IN USE", "RECLAIMABLE"]);
    for (name, c) in [
        ("Images", &usage.images),
        ("Containers", &usage.containers),
        ("Local Volumes", &usage.volumes),
        ("Build Cache", &usage.build_cache),
    ] {
        let pct = if c.bytes == 0 {
            0.0
        } else {
            c.reclaimable_bytes as f64 * 100.0 / c.bytes as f64
        };
        t.add_row(vec![
            name.to_string(),
            c.count.to_string(),
            c.active.to_string(),
            format_bytes(c.bytes),
            format_bytes(c.in_use_bytes),
            format!("{} ({pct:.0}%)", format_bytes(c.reclaimable_bytes)),
        ]);
    }
    right(&mut t, &[1, 2, 3, 4, 5]);
    out.push_str(&trimmed(&t));
    out.push('\n');
    out.push_str("\nImage bytes count shared layers once; reclaimable counts layers shared only among unused images.\n");
    if verbose {
        out.push_str("\nImages:\n");
        let mut t = table(&[
            "IMAGE",
            "ID",
            "SIZE",
            "UNIQUE",
            "SHARED",
            "LAST USED",
            "CONTAINERS",
        ]);
        for i in &usage.image_details {
            t.add_row(vec![
                i.tags.first().cloned().unwrap_or_else(|| "<none>".into()),
                dockgc_core::model::short_id(&i.id).to_string(),
                format_bytes(i.bytes),
                format_bytes(i.unique_bytes),
                format_bytes(i.shared_bytes),
                ago(usage.taken_at, i.last_used),
                i.containers.join(","),
            ]);
        }
        right(&mut t, &[2, 3, 4]);
        out.push_str(&trimmed(&t));
        out.push('\n');
    }
    out
}

fn ago(now: Timestamp, then: Timestamp) -> String {
    format!("{} ago", format_age(now - then))
}

/// An explanation as text.
pub fn explanation_text(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} {} ({})", e.kind, e.name, e.id);
    match &e.verdict {
        Verdict::Delete { step } => {
            let _ = writeln!(
                out,
                "WOULD BE DELETED: {} — rule {}, frees {} ({} on disk); {}",
                step.reason,
                step.rule,
                format_bytes(step.bytes),
                format_bytes(step.disk_bytes),
                step.detail
            );
        }
        Verdict::Keep { reason } => {
            let _ = writeln!(out, "KEPT: {reason}");
        }
    }
    for (k, v) in &e.facts {
        let _ = writeln!(out, "  {k}: {v}");
    }
    out
}
