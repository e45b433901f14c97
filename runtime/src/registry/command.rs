//! The registry as a deterministic state machine: every change is a [`Command`], and
//! [`apply`] decides it against the state it meets.
//!
//! The local store applies a command as it is asked; the Kafka store appends it to the registry
//! log first and every replica applies it when it reads it back, in log order. A command's
//! preconditions (the tenant exists, the grant covers the spec, the limits hold, the version
//! exists) are therefore checked where it lands in the log, not where it was asked: two replicas
//! that accepted conflicting requests at the same moment reach the same state, and each caller
//! is answered with what the log decided. Everything a command needs (timestamps, token digests)
//! travels in it, or in the record that carries it (the time an activation is recorded with:
//! the record's `at`), so that applying it twice, on two replicas, gives the same result.

use super::model::{Activation, BlobRef, HandlerRecord, MAX_ACTIVATIONS, State, TenantRecord, TokenRecord};
use super::rules::{check_grant, check_spec, handler_record_mut, hex_of};
use super::views::{handler_view, tenant_view};
use super::{Catalog, Grant, HandlerSpec, HandlerView, RegistryError, TenantView, VersionInfo};
use crate::model::names::{NAME_RULE, is_name};
use serde::{Deserialize, Serialize};

/// One change to the registry, as the log carries it. Never holds a token in clear: only its
/// digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
// The fields are named for what they hold; each variant's comment says what it does.
#[allow(missing_docs)]
pub enum Command {
    /// Creates a tenant or replaces its grant.
    PutTenant { tenant: String, grant: Grant },
    /// Deletes a tenant with its tokens and handlers.
    DeleteTenant { tenant: String },
    /// Adds a token (its digest) to a tenant.
    IssueToken { tenant: String, token: TokenRecord },
    /// Removes a token.
    RevokeToken { tenant: String, id: String },
    /// Creates a handler or replaces its spec.
    PutHandler { tenant: String, handler: String, spec: HandlerSpec },
    /// Deletes a handler and its versions.
    DeleteHandler { tenant: String, handler: String },
    /// A version's manifest: its metadata and, in the Kafka store, where its bytes are.
    AddVersion {
        tenant: String,
        handler: String,
        info: VersionInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blob: Option<BlobRef>,
    },
    /// Deletes a version that is not active.
    DeleteVersion { tenant: String, handler: String, version: String },
    /// Makes a version the active one.
    Activate { tenant: String, handler: String, version: String },
    /// Activates the version active before the current one.
    Rollback { tenant: String, handler: String },
    /// Sets a handler's activation as it is given: to undo an activation no replica could load
    /// (only while `only_if_active` is still the active version; the undone activation leaves
    /// the history), and to import a registry (with its history of `activations`).
    SetActivation {
        tenant: String,
        handler: String,
        active: Option<String>,
        previous: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        only_if_active: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        activations: Vec<Activation>,
    },
}

/// What a command decided, for its caller.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A tenant as it now is, and whether it was created.
    Tenant(TenantView, bool),
    /// A handler as it now is, and whether it was created.
    Handler(HandlerView, bool),
    /// A version, and whether it is new.
    Version(VersionInfo, bool),
    /// A handler as an activation or a rollback left it, and the version it replaced.
    Activated(HandlerView, Option<String>),
    /// Done.
    Done,
}

/// A command's effect: its answer, and the versions it removed (whose bytes may be deleted).
#[derive(Debug)]
pub struct Applied {
    /// What the caller is told.
    pub answer: Answer,
    /// Versions no longer stored, with where their bytes are.
    pub removed: Vec<(VersionInfo, Option<BlobRef>)>,
}

impl Command {
    /// The tenant it changes: every command changes exactly one.
    pub fn tenant(&self) -> &str {
        match self {
            Command::PutTenant { tenant, .. }
            | Command::DeleteTenant { tenant }
            | Command::IssueToken { tenant, .. }
            | Command::RevokeToken { tenant, .. }
            | Command::PutHandler { tenant, .. }
            | Command::DeleteHandler { tenant, .. }
            | Command::AddVersion { tenant, .. }
            | Command::DeleteVersion { tenant, .. }
            | Command::Activate { tenant, .. }
            | Command::Rollback { tenant, .. }
            | Command::SetActivation { tenant, .. } => tenant,
        }
    }
}

impl Command {
    /// The checks that need no state, exactly as the admin API makes them: names, the grant
    /// (topics, data sources, purposes, limits), version digests, token digests.
    pub fn validate(&self, catalog: &Catalog) -> Result<(), RegistryError> {
        let name = |kind: &str, value: &str| {
            if is_name(value) {
                Ok(())
            } else {
                Err(RegistryError::Invalid(format!("{kind} name {value:?} must be {NAME_RULE}")))
            }
        };
        match self {
            Command::PutTenant { tenant, grant } => {
                name("tenant", tenant)?;
                check_grant(catalog, grant)
            }
            Command::PutHandler { tenant, handler, spec } => {
                name("tenant", tenant)?;
                name("handler", handler)?;
                spec.declared.check("declared.").map_err(RegistryError::Invalid)
            }
            Command::IssueToken { tenant, token } => {
                name("tenant", tenant)?;
                let digest_ok = token.sha256.len() == 64
                    && token.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                if digest_ok && !token.id.is_empty() && token.id.len() <= 64 {
                    Ok(())
                } else {
                    Err(RegistryError::Invalid("a token record must hold a SHA-256 digest and an id".into()))
                }
            }
            Command::AddVersion { info, .. } => hex_of(&info.version).map(drop),
            Command::Activate { version, .. } | Command::DeleteVersion { version, .. } => {
                hex_of(version).map(drop)
            }
            Command::SetActivation { active, previous, only_if_active, activations, .. } => {
                let recorded = activations.iter().map(|a| &a.version);
                for version in active.iter().chain(previous).chain(only_if_active).chain(recorded) {
                    hex_of(version)?;
                }
                if activations.len() > MAX_ACTIVATIONS {
                    return Err(RegistryError::Invalid(format!(
                        "an activation history holds at most {MAX_ACTIVATIONS} activations"
                    )));
                }
                Ok(())
            }
            // Deletions, revocations and rollbacks name what exists; `apply` finds it or refuses.
            Command::DeleteTenant { .. }
            | Command::RevokeToken { .. }
            | Command::DeleteHandler { .. }
            | Command::Rollback { .. } => Ok(()),
        }
    }
}

/// Applies `command`, asked `at` (RFC 3339: an activation is recorded with it), to `state` if
/// its preconditions hold there; on refusal `state` is left as it was. Deterministic: the same
/// state, command and time give the same result on every replica.
pub fn apply(
    state: &mut State,
    catalog: &Catalog,
    command: &Command,
    at: &str,
) -> Result<Applied, RegistryError> {
    // The admin API checks every request; a record in the registry log is checked again here,
    // whoever wrote it, so that no path changes the state in a way the API would refuse.
    command.validate(catalog)?;
    let mut next = state.clone();
    let applied = decide(&mut next, catalog, command, at)?;
    *state = next;
    Ok(applied)
}

fn done(answer: Answer) -> Result<Applied, RegistryError> {
    Ok(Applied { answer, removed: Vec::new() })
}

fn removed_versions(record: &HandlerRecord) -> Vec<(VersionInfo, Option<BlobRef>)> {
    record.versions.iter().map(|v| (v.clone(), record.blobs.get(&v.version).cloned())).collect()
}

fn tenant_mut<'a>(state: &'a mut State, tenant: &str) -> Result<&'a mut TenantRecord, RegistryError> {
    state.tenants.get_mut(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))
}

fn decide(
    state: &mut State,
    catalog: &Catalog,
    command: &Command,
    at: &str,
) -> Result<Applied, RegistryError> {
    match command {
        Command::PutTenant { tenant, grant } => {
            let created = !state.tenants.contains_key(tenant);
            let record = state.tenants.entry(tenant.clone()).or_insert_with(|| TenantRecord {
                grant: Grant::default(),
                tokens: Vec::new(),
                handlers: Default::default(),
            });
            record.grant = grant.clone();
            done(Answer::Tenant(tenant_view(tenant, record), created))
        }
        Command::DeleteTenant { tenant } => {
            let record =
                state.tenants.remove(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
            let removed = record.handlers.values().flat_map(removed_versions).collect();
            Ok(Applied { answer: Answer::Done, removed })
        }
        Command::IssueToken { tenant, token } => {
            tenant_mut(state, tenant)?.tokens.push(token.clone());
            done(Answer::Done)
        }
        Command::RevokeToken { tenant, id } => {
            let record = tenant_mut(state, tenant)?;
            let before = record.tokens.len();
            record.tokens.retain(|t| t.id != *id);
            if record.tokens.len() == before {
                return Err(RegistryError::UnknownToken { tenant: tenant.clone(), id: id.clone() });
            }
            done(Answer::Done)
        }
        Command::PutHandler { tenant, handler, spec } => put_handler(state, catalog, tenant, handler, spec),
        Command::DeleteHandler { tenant, handler } => {
            let record = tenant_mut(state, tenant)?.handlers.remove(handler).ok_or_else(|| {
                RegistryError::UnknownHandler { tenant: tenant.clone(), handler: handler.clone() }
            })?;
            Ok(Applied { answer: Answer::Done, removed: removed_versions(&record) })
        }
        Command::AddVersion { tenant, handler, info, blob } => {
            add_version(state, tenant, handler, info, blob)
        }
        Command::DeleteVersion { tenant, handler, version } => {
            delete_version(state, tenant, handler, version)
        }
        Command::Activate { tenant, handler, version } => activate(state, tenant, handler, version, at),
        Command::Rollback { tenant, handler } => {
            let record = handler_record_mut(state, tenant, handler)?;
            let Some(back) = record.previous.pop() else {
                return Err(RegistryError::Conflict(format!(
                    "{tenant}/{handler} has no earlier active version to roll back to"
                )));
            };
            record_activation(record, &back, at);
            let replaced = record.active.replace(back);
            done(Answer::Activated(handler_view(tenant, handler, record), replaced))
        }
        Command::SetActivation { tenant, handler, active, previous, only_if_active, activations } => {
            let record = handler_record_mut(state, tenant, handler)?;
            set_activation(record, tenant, handler, active, previous, only_if_active, activations)
        }
    }
}

/// Creates or replaces a handler's spec, within the tenant's grant and handler limit; not one
/// of the configuration file's.
fn put_handler(
    state: &mut State,
    catalog: &Catalog,
    tenant: &str,
    handler: &str,
    spec: &HandlerSpec,
) -> Result<Applied, RegistryError> {
    if catalog.configured.contains(&(tenant.to_owned(), handler.to_owned())) {
        return Err(RegistryError::Conflict(format!(
            "{tenant}/{handler} is defined in keyhole's configuration file; choose another name"
        )));
    }
    let record = tenant_mut(state, tenant)?;
    check_spec(tenant, &record.grant, catalog, spec)?;
    let created = !record.handlers.contains_key(handler);
    let max = record.grant.limits.max_handlers;
    if created && record.handlers.len() >= max as usize {
        return Err(RegistryError::OverLimit {
            tenant: tenant.to_owned(),
            limit: "handlers",
            value: record.handlers.len() as u64 + 1,
            max: max.into(),
        });
    }
    let entry = record.handlers.entry(handler.to_owned()).or_insert_with(|| HandlerRecord {
        spec: spec.clone(),
        versions: Vec::new(),
        active: None,
        previous: Vec::new(),
        blobs: Default::default(),
        activations: Vec::new(),
    });
    entry.spec = spec.clone();
    done(Answer::Handler(handler_view(tenant, handler, entry), created))
}

/// Adds an uploaded version within the size and version limits; the same bytes again keep the
/// stored version.
fn add_version(
    state: &mut State,
    tenant: &str,
    handler: &str,
    info: &VersionInfo,
    blob: &Option<BlobRef>,
) -> Result<Applied, RegistryError> {
    let limits = tenant_mut(state, tenant)?.grant.limits.clone();
    if info.size_bytes > limits.max_component_bytes {
        return Err(RegistryError::OverLimit {
            tenant: tenant.to_owned(),
            limit: "component size in bytes",
            value: info.size_bytes,
            max: limits.max_component_bytes,
        });
    }
    let record = handler_record_mut(state, tenant, handler)?;
    if let Some(existing) = record.versions.iter().find(|v| v.version == info.version) {
        // The same bytes again: the stored version stands, and this upload's copy of the
        // bytes (if any) is not needed.
        let duplicate = blob.clone().filter(|b| record.blobs.get(&info.version) != Some(b));
        return Ok(Applied {
            answer: Answer::Version(existing.clone(), false),
            removed: duplicate.map(|b| (info.clone(), Some(b))).into_iter().collect(),
        });
    }
    let max = limits.max_versions_per_handler;
    if record.versions.len() >= max as usize {
        return Err(RegistryError::OverLimit {
            tenant: tenant.to_owned(),
            limit: "versions per handler",
            value: record.versions.len() as u64 + 1,
            max: max.into(),
        });
    }
    record.versions.push(info.clone());
    if let Some(blob) = blob {
        record.blobs.insert(info.version.to_owned(), blob.clone());
    }
    done(Answer::Version(info.clone(), true))
}

/// Deletes a version that is not the active one.
fn delete_version(
    state: &mut State,
    tenant: &str,
    handler: &str,
    version: &str,
) -> Result<Applied, RegistryError> {
    let record = handler_record_mut(state, tenant, handler)?;
    if record.active.as_deref() == Some(version) {
        return Err(RegistryError::Conflict(format!(
            "{version} is the active version; activate another one first"
        )));
    }
    let Some(at) = record.versions.iter().position(|v| v.version == *version) else {
        return Err(RegistryError::UnknownVersion {
            handler: handler.to_owned(),
            version: version.to_owned(),
        });
    };
    let info = record.versions.remove(at);
    record.previous.retain(|v| v != version);
    let blob = record.blobs.remove(version);
    Ok(Applied { answer: Answer::Done, removed: vec![(info, blob)] })
}

/// Activates a known version; the one it replaces becomes the latest to roll back to.
fn activate(
    state: &mut State,
    tenant: &str,
    handler: &str,
    version: &str,
    at: &str,
) -> Result<Applied, RegistryError> {
    let record = handler_record_mut(state, tenant, handler)?;
    if !record.versions.iter().any(|v| v.version == *version) {
        return Err(RegistryError::UnknownVersion {
            handler: handler.to_owned(),
            version: version.to_owned(),
        });
    }
    if record.active.as_deref() == Some(version) {
        return done(Answer::Activated(handler_view(tenant, handler, record), record.active.clone()));
    }
    record_activation(record, version, at);
    let replaced = record.active.replace(version.to_owned());
    if let Some(replaced) = &replaced {
        record.previous.retain(|v| v != replaced && v != version);
        record.previous.push(replaced.clone());
    }
    done(Answer::Activated(handler_view(tenant, handler, record), replaced))
}

/// Adds an activation to the handler's history, dropping the oldest beyond its bound.
fn record_activation(record: &mut HandlerRecord, version: &str, at: &str) {
    record.activations.push(Activation { version: version.to_owned(), at: at.to_owned() });
    let excess = record.activations.len().saturating_sub(MAX_ACTIVATIONS);
    record.activations.drain(..excess);
}

/// Sets the activation as a whole (a restore), if it is still what the caller saw: an undone
/// activation leaves the history; an imported history replaces it.
fn set_activation(
    record: &mut HandlerRecord,
    tenant: &str,
    handler: &str,
    active: &Option<String>,
    previous: &[String],
    only_if_active: &Option<String>,
    activations: &[Activation],
) -> Result<Applied, RegistryError> {
    if only_if_active.is_some() && record.active != *only_if_active {
        return Err(RegistryError::Conflict(format!(
            "{tenant}/{handler}'s activation changed in the meantime; it was left as it is"
        )));
    }
    let known = |v: &String| record.versions.iter().any(|known| known.version == *v);
    if let Some(unknown) = active.iter().chain(previous).find(|v| !known(v)) {
        return Err(RegistryError::UnknownVersion { handler: handler.to_owned(), version: unknown.clone() });
    }
    // An activation of the version already active recorded nothing, and undoing it must not
    // take an earlier activation away.
    if let Some(undone) = only_if_active
        && active.as_ref() != Some(undone)
        && record.activations.last().is_some_and(|last| last.version == *undone)
    {
        record.activations.pop();
    }
    if !activations.is_empty() {
        record.activations = activations.to_vec();
    }
    record.active = active.clone();
    record.previous = previous.to_vec();
    done(Answer::Done)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn grant(topics: &[&str]) -> Grant {
        Grant {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            data_sources: vec!["owner".into()],
            purposes: vec!["testing".into()],
            ..Grant::default()
        }
    }

    fn spec(topics: &[&str]) -> HandlerSpec {
        HandlerSpec {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            data_source: "owner".into(),
            purpose: "testing".into(),
            reply_topic: None,
            max_in_flight: None,
            deadline_ms: None,
            max_memory_bytes: None,
            declared: Default::default(),
        }
    }

    const AT: &str = "2026-12-02T10:00:00Z";

    fn version(n: u8) -> VersionInfo {
        VersionInfo {
            version: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            uploaded_at: "2026-12-02T00:00:00Z".into(),
            size_bytes: 10,
            contract: "keyhole:handler@0.1.0".into(),
            imports: Vec::new(),
        }
    }

    fn activate(n: u8) -> Command {
        Command::Activate { tenant: "acme".into(), handler: "scorer".into(), version: version(n).version }
    }

    fn catalog() -> Catalog {
        Catalog { data_sources: vec!["owner".into()], ..Catalog::default() }
    }

    /// Applies a log to an empty state: the decisions and the final state.
    fn replay(log: &[Command]) -> (Vec<Result<Applied, RegistryError>>, State) {
        let mut state = State::default();
        let decisions = log.iter().map(|c| apply(&mut state, &catalog(), c, AT)).collect();
        (decisions, state)
    }

    fn setup() -> Vec<Command> {
        let (t, h) = ("acme".to_string(), "scorer".to_string());
        vec![
            Command::PutTenant { tenant: t.clone(), grant: grant(&["a", "b"]) },
            Command::PutHandler { tenant: t.clone(), handler: h.clone(), spec: spec(&["a"]) },
            Command::AddVersion { tenant: t.clone(), handler: h.clone(), info: version(1), blob: None },
            Command::AddVersion { tenant: t, handler: h, info: version(2), blob: None },
        ]
    }

    #[test]
    fn two_activations_at_once_end_on_the_later_and_each_answer_says_what_it_replaced() {
        let mut log = setup();
        log.extend([activate(1), activate(2)]);
        let (decisions, state) = replay(&log);
        let answers: Vec<_> = decisions[4..]
            .iter()
            .map(|d| match &d.as_ref().unwrap().answer {
                Answer::Activated(view, replaced) => (view.active.clone(), replaced.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(answers[0], (Some(version(1).version), None));
        assert_eq!(answers[1], (Some(version(2).version), Some(version(1).version)));
        assert_eq!(state.tenants["acme"].handlers["scorer"].active, Some(version(2).version));
    }

    #[test]
    fn a_spec_put_after_its_grant_narrowed_is_refused_and_before_it_stops_running() {
        let narrow = Command::PutTenant { tenant: "acme".into(), grant: grant(&["a"]) };
        let widen =
            Command::PutHandler { tenant: "acme".into(), handler: "scorer".into(), spec: spec(&["b"]) };
        // The narrowing first: the spec is refused where it lands, the stored one stands.
        let mut first = setup();
        first.extend([narrow.clone(), widen.clone()]);
        let (decisions, state) = replay(&first);
        assert!(matches!(decisions[5], Err(RegistryError::NotGranted { .. })), "{:?}", decisions[5]);
        assert_eq!(state.tenants["acme"].handlers["scorer"].spec, spec(&["a"]));
        // The spec first: stored, then no longer granted (the deployment says why).
        let mut second = setup();
        second.extend([widen, narrow]);
        let (decisions, state) = replay(&second);
        assert!(decisions.iter().all(Result::is_ok));
        assert_eq!(state.tenants["acme"].handlers["scorer"].spec, spec(&["b"]));
        let tenant = &state.tenants["acme"];
        assert!(check_spec("acme", &tenant.grant, &catalog(), &tenant.handlers["scorer"].spec).is_err());
    }

    #[test]
    fn the_same_log_gives_the_same_state_on_every_replica() {
        let mut log = setup();
        log.push(Command::Activate {
            tenant: "acme".into(),
            handler: "scorer".into(),
            version: version(1).version,
        });
        log.push(Command::DeleteVersion {
            tenant: "acme".into(),
            handler: "scorer".into(),
            version: version(1).version,
        });
        log.push(Command::RevokeToken { tenant: "acme".into(), id: "nope".into() });
        let (_, one) = replay(&log);
        let (_, other) = replay(&log);
        assert_eq!(serde_json::to_value(&one).unwrap(), serde_json::to_value(&other).unwrap());
    }

    #[test]
    fn deleting_a_version_removes_its_manifest_and_hands_back_its_chunks() {
        let blob = BlobRef { upload: "u".into(), offsets: vec![3, 4] };
        let mut log = setup();
        log.push(Command::AddVersion {
            tenant: "acme".into(),
            handler: "scorer".into(),
            info: version(3),
            blob: Some(blob.clone()),
        });
        log.push(Command::DeleteVersion {
            tenant: "acme".into(),
            handler: "scorer".into(),
            version: version(3).version,
        });
        let (decisions, state) = replay(&log);
        let removed = &decisions[5].as_ref().unwrap().removed;
        assert_eq!(removed, &vec![(version(3), Some(blob))]);
        assert!(state.tenants["acme"].handlers["scorer"].blobs.is_empty());
    }

    #[test]
    fn an_undone_activation_leaves_a_later_one_alone() {
        let mut log = setup();
        log.extend([activate(1), activate(2)]);
        log.push(Command::SetActivation {
            tenant: "acme".into(),
            handler: "scorer".into(),
            active: None,
            previous: Vec::new(),
            only_if_active: Some(version(1).version),
            activations: Vec::new(),
        });
        let (decisions, state) = replay(&log);
        assert!(matches!(decisions[6], Err(RegistryError::Conflict(_))));
        assert_eq!(state.tenants["acme"].handlers["scorer"].active, Some(version(2).version));
    }

    #[test]
    fn each_activation_and_rollback_is_recorded_with_its_time_and_an_undone_one_is_not() {
        let mut state = State::default();
        for command in setup() {
            apply(&mut state, &catalog(), &command, AT).unwrap();
        }
        let rollback = Command::Rollback { tenant: "acme".into(), handler: "scorer".into() };
        for (command, at) in [(activate(1), "T1"), (activate(2), "T2"), (rollback, "T3"), (activate(1), "T4")]
        {
            apply(&mut state, &catalog(), &command, at).unwrap();
        }
        let history = |state: &State| -> Vec<(String, String)> {
            let record = &state.tenants["acme"].handlers["scorer"];
            record.activations.iter().map(|a| (a.version.clone(), a.at.clone())).collect()
        };
        let (one, two) = (version(1).version, version(2).version);
        let expected =
            vec![(one.clone(), "T1".to_string()), (two.clone(), "T2".into()), (one.clone(), "T3".into())];
        assert_eq!(history(&state), expected, "activating the active version again records nothing");
        // An activation that no replica could load, undone: it leaves the history too.
        apply(&mut state, &catalog(), &activate(2), "T5").unwrap();
        let undo = Command::SetActivation {
            tenant: "acme".into(),
            handler: "scorer".into(),
            active: Some(one.clone()),
            previous: vec![two.clone()],
            only_if_active: Some(two),
            activations: Vec::new(),
        };
        apply(&mut state, &catalog(), &undo, "T6").unwrap();
        assert_eq!(history(&state), expected);
        // Undoing an activation of the version that was already active takes nothing away.
        let noop_undo = Command::SetActivation {
            tenant: "acme".into(),
            handler: "scorer".into(),
            active: Some(one.clone()),
            previous: Vec::new(),
            only_if_active: Some(one),
            activations: Vec::new(),
        };
        apply(&mut state, &catalog(), &noop_undo, "T7").unwrap();
        assert_eq!(history(&state), expected);
    }

    #[test]
    fn a_spec_whose_declarations_break_the_rules_is_refused_naming_each_key() {
        let mut bad = spec(&["a"]);
        bad.declared.data_categories = Some(vec!["date of birth".into(), "name\u{202E}".into()]);
        bad.declared.recipients = Some(vec![" ".into()]);
        let put = Command::PutHandler { tenant: "acme".into(), handler: "scorer".into(), spec: bad };
        let (decisions, state) = replay(&[setup().remove(0), put]);
        let Err(RegistryError::Invalid(reason)) = &decisions[1] else { panic!("{:?}", decisions[1]) };
        assert!(
            reason.contains("declared.data_categories[1]") && reason.contains("declared.recipients[0]"),
            "{reason}"
        );
        assert!(state.tenants["acme"].handlers.is_empty());
    }

    #[test]
    fn a_command_record_never_holds_a_token_in_clear() {
        let issued = crate::registry::token::issue();
        let token = TokenRecord {
            id: issued.id.clone(),
            sha256: crate::registry::token::digest_hex(&issued.token),
            created_at: "2026-12-02T00:00:00Z".into(),
        };
        let record = serde_json::to_string(&Command::IssueToken { tenant: "acme".into(), token }).unwrap();
        assert!(!record.contains(&issued.token));
        assert!(record.contains(&crate::registry::token::digest_hex(&issued.token)));
    }
}
