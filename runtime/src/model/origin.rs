//! Where a record was read: the Kafka coordinates an event keeps through its handling, its
//! dead letter and its audit record. Here, not in `kafka` or `records`, because both use it and
//! neither should depend on the other for it.

use serde::Serialize;

/// Where an event came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}
