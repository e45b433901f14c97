//! Rust bindings for keyhole's handler world, generated once from `wit/handler.wit` so that every
//! Rust handler shares them.
//!
//! A handler implements [`Guest`] and registers itself with [`export_handler!`]:
//!
//! ```ignore
//! use keyhole_guest::{Event, Guest, HandlerError, Reply};
//!
//! struct MyHandler;
//!
//! impl Guest for MyHandler {
//!     fn handle(event: Event) -> Result<Option<Reply>, HandlerError> {
//!         Ok(None)
//!     }
//! }
//!
//! keyhole_guest::export_handler!(MyHandler);
//! ```

/// The generated bindings. A module of their own: the exported macro is defined at the crate root
/// and must not collide with the generator's own re-export of it.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "handler",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_handler",
        default_bindings_module: "keyhole_guest::bindings",
    });
}

pub use bindings::keyhole::handler::log::{Level, log};
pub use bindings::keyhole::handler::types::{Event, Extension, HandlerError, Reply};
pub use bindings::{Guest, export_handler};
