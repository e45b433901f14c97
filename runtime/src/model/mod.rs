//! What every stage shares and none owns: names and how they are joined, the purpose rule, what
//! a binding declares for the record of processing, and where a record was read.

pub mod declared;
pub mod names;
mod origin;
pub mod purpose;

pub use origin::Origin;
