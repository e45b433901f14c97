//! An axum app served on loopback for as long as the handle lives: what the test's data owners
//! and collectors stand on.

use std::net::SocketAddr;

/// A running server; dropping it stops it.
pub struct Served {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Served {
    /// `server`, which listens on `addr`, run until the handle is dropped.
    pub fn spawn(addr: SocketAddr, server: impl Future<Output = ()> + Send + 'static) -> Served {
        Served { addr, task: tokio::spawn(server) }
    }
}

/// Serves `app` on a free loopback port.
pub async fn serve(app: axum::Router) -> Served {
    serve_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), app)
}

/// Serves `app` on `listener`.
pub fn serve_on(listener: tokio::net::TcpListener, app: axum::Router) -> Served {
    let addr = listener.local_addr().unwrap();
    Served::spawn(addr, async move {
        axum::serve(listener, app).await.ok();
    })
}
