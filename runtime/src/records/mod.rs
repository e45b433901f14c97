//! keyhole's own records, for the data owner: the audit file (one record per event and what
//! became of it) and access receipts (one per request to an owner). Neither ever holds resolved
//! data, a token or a reference's query string.

pub mod audit;
pub mod chain;
mod json_lines;
pub mod receipt;
