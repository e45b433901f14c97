//! What every stage shares and none owns: names and how they are joined, the purpose rule, and
//! where a record was read.

pub mod names;
mod origin;
pub mod purpose;

pub use origin::Origin;
