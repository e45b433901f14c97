//! The one place where host bindings for `wit/handler.wit` are generated.

wasmtime::component::bindgen!({
    world: "handler",
    path: "../wit",
    // The handler's export runs on a fiber so that epoch interruption can yield to the
    // executor and a deadline can stop it.
    exports: { default: async },
    // Logging may trap: a handler that exceeds its log budget is stopped.
    imports: { "keyhole:handler/log.log": trappable },
});

pub use self::keyhole::handler::log::Level;
pub use self::keyhole::handler::types::Extension;
