//! What the admin API shows of a tenant or a handler, built from the stored records.

use super::model::{HandlerRecord, TenantRecord};
use super::{HandlerView, TenantView};

pub(super) fn tenant_view(name: &str, record: &TenantRecord) -> TenantView {
    TenantView {
        tenant: name.to_string(),
        grant: record.grant.clone(),
        token_ids: record.tokens.iter().map(|t| t.id.clone()).collect(),
        handlers: record.handlers.keys().cloned().collect(),
    }
}

pub(super) fn handler_view(tenant: &str, name: &str, record: &HandlerRecord) -> HandlerView {
    HandlerView {
        tenant: tenant.to_string(),
        handler: name.to_string(),
        spec: record.spec.clone(),
        active: record.active.clone(),
        rollback_to: record.previous.last().cloned(),
        versions: record.versions.clone(),
        state: if record.active.is_some() { "running" } else { "inactive" }.to_string(),
        state_reason: None,
    }
}
