//! Who is calling: the operator (one token, from keyhole's configuration) or a tenant (tokens the
//! operator issued, kept as hashes in the registry). Every comparison is constant-time.

use super::Api;
use super::problem::Problem;
use axum::http::{HeaderMap, StatusCode, header};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The operator: may do everything.
    Operator,
    /// A tenant: may manage its own handlers only.
    Tenant(String),
}

const CHALLENGE: &str = "Bearer realm=\"keyhole\"";
const INVALID: &str = "Bearer realm=\"keyhole\", error=\"invalid_token\"";

/// Refuses, before anything costs a round trip to the broker, a request that cannot be
/// authenticated whatever the registry holds: no token, a malformed header, or a token that is
/// neither the operator's nor shaped like a tenant's. A token that might be a tenant's (issued
/// on another replica a moment ago, say) is decided by [`caller`] once the registry is current.
pub fn could_be_anyone(api: &Api, headers: &HeaderMap) -> Result<(), Problem> {
    let token = bearer(headers)?;
    let operator = api
        .operator_token_sha256
        .as_ref()
        .is_some_and(|expected| crate::registry::token_matches(token, expected));
    if operator || crate::registry::is_tenant_token_shaped(token) {
        return Ok(());
    }
    Err(Problem::unauthorized(
        "invalid-token",
        "the bearer token is not valid (unknown, revoked or mistyped)",
        INVALID,
    ))
}

/// The request's bearer token, or 401.
fn bearer(headers: &HeaderMap) -> Result<&str, Problem> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Problem::unauthorized(
            "missing-token",
            "this endpoint needs `Authorization: Bearer <token>`",
            CHALLENGE,
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Problem::unauthorized(
                "invalid-token",
                "the Authorization header is not `Bearer <token>`",
                INVALID,
            )
        })
}

/// Authenticates the request's bearer token.
pub fn caller(api: &Api, headers: &HeaderMap) -> Result<Caller, Problem> {
    let token = bearer(headers)?;
    // Both are checked whatever the first says, so the time taken does not tell them apart.
    let operator = api
        .operator_token_sha256
        .as_ref()
        .is_some_and(|expected| crate::registry::token_matches(token, expected));
    let tenant = api.registry.authenticate(token);
    match (operator, tenant) {
        (true, _) => Ok(Caller::Operator),
        // A replica that has not read the registry log lately may not know of a revocation: it
        // trusts no tenant token until it has (see registry.max_staleness_ms).
        (false, Some(_)) if let Err(stale) = api.registry.current() => Err(stale.into()),
        (false, Some(tenant)) => Ok(Caller::Tenant(tenant)),
        (false, None) => Err(Problem::unauthorized(
            "invalid-token",
            "the bearer token is not valid (unknown, revoked or mistyped)",
            INVALID,
        )),
    }
}

/// The operator, or 403.
pub fn operator(api: &Api, headers: &HeaderMap) -> Result<(), Problem> {
    match caller(api, headers)? {
        Caller::Operator => Ok(()),
        Caller::Tenant(tenant) => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "operator-only",
            format!("only the operator may do this; the token belongs to tenant {tenant:?}"),
        )),
    }
}

/// The operator or the tenant `tenant` itself, or 403.
pub fn tenant(api: &Api, headers: &HeaderMap, tenant: &str) -> Result<Caller, Problem> {
    match caller(api, headers)? {
        Caller::Tenant(own) if own != tenant => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "wrong-tenant",
            format!("the token belongs to tenant {own:?}, not {tenant:?}"),
        )),
        caller => Ok(caller),
    }
}
