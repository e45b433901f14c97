//! keyhole's clients: the data owner's and requester's side (`keyhole publish`, `keyhole
//! request`) and the third party's (`keyhole deploy`, `keyhole rollback`).

pub mod deploy;
pub mod publish;
