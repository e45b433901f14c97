//! The fixture file of `keyhole owner check`: who asks (the `Keyhole-*` headers keyhole would
//! send) and which references the owner is expected to release, refuse or not know. Documented
//! in docs/data-owners.md ("Testing your endpoint: keyhole owner check").
//!
//! ```toml
//! [asker]
//! tenant = "acme"
//! handler = "age-band"
//! purpose = "Age statistics for product planning (contract ACME-17)"
//! handler_version = "sha256:cd600bbe07589a3eb1f3de31c127ff2385d692f312d95b867c7a980722b7b8a3"
//!
//! [[reference]]
//! dataref = "customers/42"
//! expect = "released"
//! content_type = "application/json"
//! ```
//!
//! Every value is held to the rule keyhole itself applies to it, so that a fixture cannot pass
//! with a request keyhole would never send: names as the configuration accepts them, the purpose
//! as a header can carry it, the handler version as keyhole spells it, and each `dataref` by
//! [`DataRef::parse`], the rule that refuses hostile references before any request.

use super::shorten;
use crate::cloudevents::DataRef;
use crate::model::names::{NAME_RULE, is_name};
use crate::model::purpose::{MAX_PURPOSE_BYTES, is_purpose};
use serde::Deserialize;
use std::fmt;

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    asker: Asker,
    #[serde(default, rename = "reference")]
    references: Vec<ReferenceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceEntry {
    dataref: String,
    expect: Expect,
    content_type: Option<String>,
}

/// Who asks, sent in the `Keyhole-*` headers exactly as keyhole sends them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asker {
    /// `Keyhole-Tenant`: the tenant whose handler asks.
    pub tenant: String,
    /// `Keyhole-Handler`: the handler's name.
    pub handler: String,
    /// `Keyhole-Purpose`: the purpose the operator declared for the handler.
    pub purpose: String,
    /// `Keyhole-Handler-Version`: `sha256:<64 lower-case hex digits>` of the handler's component.
    pub handler_version: String,
}

/// What the owner is expected to decide for a reference, in keyhole's classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// A 2xx: the data goes to the handler.
    Released,
    /// 403 or 451: consent missing or withdrawn.
    Denied,
    /// 404 or 410: unknown, deleted or erased.
    Gone,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Released => "released (2xx)",
            Expect::Denied => "denied (403 or 451)",
            Expect::Gone => "gone (404 or 410)",
        })
    }
}

/// One reference to ask for, validated.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The reference, as a producer would publish it.
    pub dataref: DataRef,
    /// What the owner should decide.
    pub expect: Expect,
    /// The `Content-Type` a released answer must carry, when the fixture names one.
    pub content_type: Option<String>,
    /// How the report names it: the path, and `?…` for a query, which is never printed (it
    /// may hold personal data, even in fixtures copied from production).
    pub label: String,
}

/// A validated fixture file.
#[derive(Clone, Debug)]
pub struct Fixtures {
    /// Who asks.
    pub asker: Asker,
    /// What is asked for, in the file's order.
    pub references: Vec<Reference>,
}

/// One thing wrong in a fixture file, at its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: `asker.handler_version`, `reference[2].dataref`, ...
    pub key: String,
    /// What is wrong and what is expected instead.
    pub message: String,
}

/// A fixture file that cannot be used: nothing is asked of the owner.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// Not TOML, or not the fixture format: a missing table, an unknown key, a wrong type.
    #[error("not a valid fixture file: {0}")]
    Syntax(String),
    /// The format is right but values break keyhole's rules; every problem is listed.
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    let mut text = format!(
        "{} problem{} in the fixture file:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems {
        text.push_str(&format!("\n  {}: {}", problem.key, problem.message));
    }
    text
}

impl Fixtures {
    /// Parses and validates a fixture file's text; every problem at once.
    pub fn parse(text: &str) -> Result<Fixtures, FixtureError> {
        let file: File = toml::from_str(text).map_err(|error| FixtureError::Syntax(error.to_string()))?;
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(Problem { key, message });

        let asker = file.asker;
        for (key, name) in [("asker.tenant", &asker.tenant), ("asker.handler", &asker.handler)] {
            if !is_name(name) {
                problem(key.into(), format!("{name:?} is not a name keyhole accepts: {NAME_RULE}"));
            }
        }
        if !is_purpose(&asker.purpose) {
            problem(
                "asker.purpose".into(),
                format!("must be non-blank printable ASCII, at most {MAX_PURPOSE_BYTES} bytes"),
            );
        }
        if !is_handler_version(&asker.handler_version) {
            problem(
                "asker.handler_version".into(),
                format!(
                    "{:?} is not a handler version as keyhole sends it: `sha256:` and 64 lower-case hex \
                     digits, the SHA-256 of the handler's component (`sha256sum handler.wasm`)",
                    shorten(&asker.handler_version, 80)
                ),
            );
        }

        if file.references.is_empty() {
            problem("reference".into(), "at least one [[reference]] is needed".into());
        }
        let mut references = Vec::new();
        for (i, entry) in file.references.into_iter().enumerate() {
            let at = |key: &str| format!("reference[{i}].{key}");
            if let Some(content_type) = &entry.content_type {
                if entry.expect != Expect::Released {
                    problem(at("content_type"), "only a reference expected to be released has one".into());
                } else if !is_media_type(content_type) {
                    problem(
                        at("content_type"),
                        format!(
                            "{:?} is not a media type such as application/json",
                            shorten(content_type, 80)
                        ),
                    );
                }
            }
            match DataRef::parse(&entry.dataref) {
                Ok(dataref) => references.push(Reference {
                    label: label(&dataref, &entry.dataref),
                    dataref,
                    expect: entry.expect,
                    content_type: entry.content_type,
                }),
                // The rule's name only, never the value: a query may hold personal data.
                Err(error) => problem(
                    at("dataref"),
                    format!(
                        "{error}: keyhole refuses such a reference before any request, so an owner must \
                         never need one"
                    ),
                ),
            }
        }
        if problems.is_empty() {
            Ok(Fixtures { asker, references })
        } else {
            Err(FixtureError::Invalid(problems))
        }
    }
}

/// `sha256:` and 64 lower-case hex digits: what keyhole sends (`sandbox::version_of`).
fn is_handler_version(version: &str) -> bool {
    version.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'a'..=b'f'))
    })
}

/// `type/subtype`, optionally with parameters, as a header value can carry it.
fn is_media_type(text: &str) -> bool {
    let essence = text.split(';').next().unwrap_or_default().trim();
    text.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
        && essence.split_once('/').is_some_and(|(kind, sub)| !kind.is_empty() && !sub.is_empty())
}

/// The path, and `?…` when the reference has a query.
fn label(dataref: &DataRef, written: &str) -> String {
    if written.contains('?') { format!("{}?…", dataref.path()) } else { dataref.path().to_owned() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::{Expect, FixtureError, Fixtures};

    const VERSION: &str = "sha256:cd600bbe07589a3eb1f3de31c127ff2385d692f312d95b867c7a980722b7b8a3";

    fn file(asker_extra: &str, references: &str) -> String {
        format!(
            "[asker]\ntenant = \"acme\"\nhandler = \"age-band\"\npurpose = \"Age statistics\"\n\
             handler_version = \"{VERSION}\"\n{asker_extra}\n{references}"
        )
    }

    fn problems(text: &str) -> Vec<(String, String)> {
        match Fixtures::parse(text) {
            Err(FixtureError::Invalid(problems)) => {
                problems.into_iter().map(|p| (p.key, p.message)).collect()
            }
            other => panic!("expected problems, got {other:?}"),
        }
    }

    fn syntax(text: &str) -> String {
        match Fixtures::parse(text) {
            Err(FixtureError::Syntax(reason)) => reason,
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_file_is_read_in_order() {
        let fixtures = Fixtures::parse(&file(
            "",
            r#"
            [[reference]]
            dataref = "customers/42"
            expect = "released"
            content_type = "application/json"

            [[reference]]
            dataref = "customers/44?purpose=ads"
            expect = "denied"

            [[reference]]
            dataref = "customers/43"
            expect = "gone"
            "#,
        ))
        .unwrap();
        assert_eq!(fixtures.asker.tenant, "acme");
        assert_eq!(fixtures.asker.handler_version, VERSION);
        let seen: Vec<_> = fixtures
            .references
            .iter()
            .map(|r| (r.label.as_str(), r.expect, r.content_type.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                ("customers/42", Expect::Released, Some("application/json")),
                ("customers/44?…", Expect::Denied, None),
                ("customers/43", Expect::Gone, None),
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let reason = syntax(&file("colour = \"blue\"", "[[reference]]\ndataref = \"a\"\nexpect = \"gone\""));
        assert!(reason.contains("colour"), "{reason}");
        let reason = syntax(&file("", "[[reference]]\ndataref = \"a\"\nexpect = \"gone\"\nstatus = 404"));
        assert!(reason.contains("status"), "{reason}");
        let reason = syntax(&file("", "[[references]]\ndataref = \"a\"\nexpect = \"gone\""));
        assert!(reason.contains("references"), "{reason}");
    }

    #[test]
    fn expect_is_one_of_three_decisions() {
        let reason = syntax(&file("", "[[reference]]\ndataref = \"a\"\nexpect = \"allowed\""));
        assert!(reason.contains("allowed") && reason.contains("released"), "{reason}");
        let reason = syntax(&file("", "[[reference]]\ndataref = \"a\""));
        assert!(reason.contains("expect"), "{reason}");
        assert!(syntax("[[reference]]\ndataref = \"a\"\nexpect = \"gone\"").contains("asker"));
    }

    #[test]
    fn a_handler_version_keyhole_would_not_send_is_refused() {
        for version in [
            "cd600bbe07589a3eb1f3de31c127ff2385d692f312d95b867c7a980722b7b8a3",
            "sha256:CD600BBE07589A3EB1F3DE31C127FF2385D692F312D95B867C7A980722B7B8A3",
            "sha256:cd600bbe",
            "sha1:cd600bbe07589a3eb1f3de31c127ff2385d692f312d95b867c7a980722b7b8a3",
            "",
        ] {
            let text =
                file("", "[[reference]]\ndataref = \"a\"\nexpect = \"gone\"").replace(VERSION, version);
            let found = problems(&text);
            assert_eq!(found.len(), 1, "{version}: {found:?}");
            assert_eq!(found[0].0, "asker.handler_version", "{version}");
            assert!(found[0].1.contains("64 lower-case hex"), "{found:?}");
        }
    }

    #[test]
    fn hostile_datarefs_are_refused_by_keyhole_s_own_rule() {
        for (dataref, rule) in [
            ("../x", "dot segment"),
            ("customers/../../admin", "dot segment"),
            ("https://evil.example.com/x", "absolute URL"),
            ("//evil.example.com/x", "network-path"),
            ("/admin", "absolute path"),
            ("customers/%2e%2e/admin", "percent-encoded dot or slash"),
            ("customers\\42", "backslash"),
            ("customers/42#top", "fragment"),
        ] {
            let text = file("", &format!("[[reference]]\ndataref = {dataref:?}\nexpect = \"gone\""));
            let found = problems(&text);
            assert_eq!(found.len(), 1, "{dataref}: {found:?}");
            assert_eq!(found[0].0, "reference[0].dataref", "{dataref}");
            assert!(found[0].1.contains(rule), "{dataref}: {}", found[0].1);
            assert!(found[0].1.contains("never need"), "{}", found[0].1);
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [asker]
            tenant = "Acme Corp"
            handler = "age.band"
            purpose = "  "
            handler_version = "latest"

            [[reference]]
            dataref = "customers/42"
            expect = "denied"
            content_type = "application/json"

            [[reference]]
            dataref = "../x"
            expect = "released"
            content_type = "json"
        "#;
        let keys: Vec<String> = problems(text).into_iter().map(|(key, _)| key).collect();
        assert_eq!(
            keys,
            [
                "asker.tenant",
                "asker.handler",
                "asker.purpose",
                "asker.handler_version",
                "reference[0].content_type",
                "reference[1].content_type",
                "reference[1].dataref",
            ]
        );
        let shown = Fixtures::parse(text).unwrap_err().to_string();
        assert!(shown.starts_with("7 problems in the fixture file:"), "{shown}");
    }

    #[test]
    fn a_file_without_references_is_refused() {
        let found = problems(&file("", ""));
        assert_eq!(found, [("reference".to_owned(), "at least one [[reference]] is needed".to_owned())]);
    }
}
