//! What every stage shares and none owns: names and how they are joined, and the purpose rule.

pub mod names;
pub mod purpose;
