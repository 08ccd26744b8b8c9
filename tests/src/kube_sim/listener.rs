//! The TCP side of a simulated cluster: accepting connections on its fixed loopback port,
//! serving HTTP/1.1 on them, and refusing connections while "stopped".
//!
//! Owns sockets and connection tasks only. Stopping closes the listening socket and cuts
//! every open connection (so clients see refused or reset connections, as when an API server
//! goes away); starting binds the same port again.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::api;
use super::cluster::ClusterInner;

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The listening side of one cluster.
pub struct Listener {
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

impl Listener {
    /// Binds `127.0.0.1:port` (0 = any free port) without serving yet.
    pub async fn bind(port: u16) -> io::Result<(Self, TcpListener)> {
        let socket = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = socket.local_addr()?;
        Ok((
            Self {
                addr,
                running: Mutex::new(None),
            },
            socket,
        ))
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `cluster` on `socket` (or, when `None`, on a fresh bind of the same port).
    /// Does nothing when already serving.
    pub async fn start(
        &self,
        cluster: Arc<ClusterInner>,
        socket: Option<TcpListener>,
    ) -> io::Result<()> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let socket = match socket {
            Some(s) => s,
            None => bind_again(self.addr).await?,
        };
        let stop = cluster.shutdown.child_token();
        let task = tokio::spawn(accept_loop(cluster, socket, stop.clone()));
        *running = Some(Running { stop, task });
        Ok(())
    }

    /// Stops accepting, closes the port and cuts every open connection.
    pub async fn stop(&self) {
        let taken = self.running.lock().await.take();
        if let Some(r) = taken {
            r.stop.cancel();
            let _ = r.task.await;
        }
    }
}

async fn bind_again(addr: SocketAddr) -> io::Result<TcpListener> {
    // The port was ours a moment ago; give the kernel a little time if it is still busy.
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("could not bind")))
}

/// Accepts until stopped; then ends every connection it served before returning, so that once
/// [`Listener::stop`] returns no request is answered (a client's pooled connection included).
async fn accept_loop(cluster: Arc<ClusterInner>, socket: TcpListener, stop: CancellationToken) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(cluster.clone(), stream, stop.clone()));
                }
                // Out of file descriptors and the like: back off briefly, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
    drop(socket);
    connections.shutdown().await;
}

async fn serve_connection(
    cluster: Arc<ClusterInner>,
    stream: tokio::net::TcpStream,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req| {
        let cluster = cluster.clone();
        async move { Ok::<_, Infallible>(api::handle(cluster, req).await) }
    });
    // hyper's server side is enabled through axum's hyper-util dependency.
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        () = stop.cancelled() => {}
    }
}
