//! The module map of docs/architecture.md holds: dependencies between keyhole's top-level
//! modules point one way, and the admin API does not reach the engine.

use crate::common;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `crate::<module>` references of each top-level module of `runtime/src`, tests left out.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = common::repo_root().join("runtime/src");
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if matches!(name.as_str(), "lib" | "main" | "cli") {
            continue;
        }
        let mut files = Vec::new();
        collect(&path, &mut files);
        modules.insert(name, files);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .into_iter()
        .map(|(name, files)| {
            let mut uses = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                for (i, _) in text.match_indices("crate::") {
                    let rest = &text[i + "crate::".len()..];
                    let used: String =
                        rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    if used != name && names.contains(&used) {
                        uses.insert(used);
                    }
                }
            }
            (name, uses)
        })
        .collect()
}

fn collect(path: &Path, files: &mut Vec<std::path::PathBuf>) {
    let stem = path.file_stem().unwrap().to_string_lossy();
    if stem == "tests" {
        return;
    }
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            collect(&entry.unwrap().path(), files);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        files.push(path.to_path_buf());
    }
}

#[test]
fn dependencies_between_modules_point_one_way() {
    let deps = dependencies();
    assert!(deps.len() > 10, "{deps:?}");
    // Depth-first search for a path back to where it started.
    fn reaches(
        deps: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        to: &str,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        deps.get(from)
            .into_iter()
            .flatten()
            .any(|next| next == to || (seen.insert(next.clone()) && reaches(deps, next, to, seen)))
    }
    for module in deps.keys() {
        assert!(
            !reaches(&deps, module, module, &mut BTreeSet::new()),
            "{module} depends on itself through {deps:#?}"
        );
    }
    let admin = &deps["admin"];
    assert!(!admin.contains("engine") && !admin.contains("app"), "admin reaches the engine: {admin:?}");
    // The start of the flow depends on nothing else of keyhole's, but for telemetry: a leaf
    // itself, where any module may record its series (the sandbox its instance pool).
    assert!(
        deps["telemetry"].is_empty(),
        "telemetry should depend on no other module: {:?}",
        deps["telemetry"]
    );
    for upstream in ["cloudevents", "resolve", "sandbox", "model"] {
        let others: BTreeSet<&String> = deps[upstream].iter().filter(|d| *d != "telemetry").collect();
        assert!(others.is_empty(), "{upstream} should depend on no other module than telemetry: {others:?}");
    }
}
