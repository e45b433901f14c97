//! The names operators and tenants choose, and every place keyhole joins them.
//!
//! Tenant and handler names are joined with `.` into consumer group ids
//! (`<group_id>.<tenant>.<handler>`), default dead-letter topics (`<group id>.dlq`) and
//! transactional ids, and with `/` into binding names (metric labels, log fields). For those
//! joins to be unambiguous a name may contain neither: `dot` + `x.y` and `dot.x` + `y` would
//! otherwise share one consumer group, and one of the two would never see an event. `.` and `..`
//! alone are refused twice over: RFC 3986 clients drop such path segments.

/// What a tenant or handler name may be made of, for error messages.
pub const NAME_RULE: &str = "1-64 characters of a-z, 0-9, '-' or '_' (no '.': names are joined with '.' into consumer group and topic names)";

/// Whether `name` is a valid tenant or handler name: 1 to 64 of `a-z`, `0-9`, `-`, `_`.
pub fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
}

/// Whether `name` is a valid data source name or instance id: like a tenant name, and `.` is
/// allowed (neither is joined with a tenant's names), though not `.` or `..` alone.
pub fn is_dotted_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `topic` is a valid Kafka topic name.
pub fn is_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A binding's name: `tenant/handler`. It labels metrics and log lines, and keys the health of
/// bindings.
pub fn binding_name(tenant: &str, handler: &str) -> String {
    format!("{tenant}/{handler}")
}

/// A binding's consumer group: `<group_id>.<tenant>.<handler>`. Unambiguous because tenant and
/// handler names contain no `.`.
pub fn group_id(prefix: &str, tenant: &str, handler: &str) -> String {
    format!("{prefix}.{tenant}.{handler}")
}

/// A binding's default dead-letter topic: its consumer group's name and `.dlq`.
pub fn default_dead_letter_topic(group_id: &str) -> String {
    format!("{group_id}.dlq")
}

/// An exactly-once binding's transactional id: its group and the instance's id, so that a
/// restarted instance fences its predecessor and two instances never fence each other.
pub fn transactional_id(group_id: &str, instance_id: &str) -> String {
    format!("{group_id}.{instance_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_names_cannot_make_two_bindings_share_a_group() {
        assert!(!is_name("x.y") && !is_name("dot.x") && !is_name(".") && !is_name(".."));
        assert!(is_name("x-y") && is_name("a_1"));
        assert!(!is_name("") && !is_name(&"a".repeat(65)) && !is_name("A") && !is_name("a/b"));
        // With no '.' in either name, distinct pairs give distinct groups.
        let pairs = [("dot", "x-y"), ("dot-x", "y"), ("dot", "x_y")];
        let groups: std::collections::HashSet<String> =
            pairs.iter().map(|(t, h)| group_id("keyhole", t, h)).collect();
        assert_eq!(groups.len(), pairs.len());
    }

    #[test]
    fn data_source_names_may_hold_dots_but_not_be_dot_segments() {
        assert!(is_dotted_name("crm.eu") && !is_dotted_name(".") && !is_dotted_name(".."));
    }
}

/// keyhole's own topics: the registry's two, the receipts topic and every dead-letter topic. A
/// reply's value is the handler's bytes, so a handler that could reply to one of them could
/// write registry commands or forge receipts; one that could consume one would read what is not
/// its tenant's. No grant, handler spec or configured handler may name them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnTopics {
    /// Topics by name, with what each one is.
    named: std::collections::BTreeMap<String, &'static str>,
    /// `<kafka.group_id>.`: with `.dlq`, the default dead-letter topic of any binding, uploaded
    /// ones included.
    dead_letter_prefix: Option<String>,
}

impl OwnTopics {
    /// Own topics whose default dead-letter topics are `<group_id>.<tenant>.<handler>.dlq`.
    pub fn new(group_id: &str) -> Self {
        OwnTopics { named: Default::default(), dead_letter_prefix: Some(format!("{group_id}.")) }
    }

    /// Adds `topic`, described as `what` ("the registry log").
    pub fn add(&mut self, topic: &str, what: &'static str) {
        self.named.entry(topic.to_string()).or_insert(what);
    }

    /// What `topic` is when it is one of keyhole's own.
    pub fn owner(&self, topic: &str) -> Option<&'static str> {
        if let Some(what) = self.named.get(topic) {
            return Some(what);
        }
        let prefix = self.dead_letter_prefix.as_deref()?;
        (topic.starts_with(prefix) && topic.ends_with(".dlq")).then_some("a dead-letter topic")
    }
}
