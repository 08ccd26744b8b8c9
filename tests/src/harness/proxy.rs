//! A loopback TCP proxy whose connections a test can cut, to simulate a broker connection loss
//! (or a broker that is down) without touching the shared RabbitMQ, or freeze, to simulate a
//! broker that stops answering without closing anything (a partition, a hung node).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy from a local port to `target`.
#[derive(Debug)]
pub struct TcpProxy {
    /// The local port clients connect to.
    pub port: u16,
    enabled: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    frozen: watch::Sender<bool>,
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<port>` to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let enabled = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (frozen, _) = watch::channel(false);
        let (en, cut_tx, frozen_tx) = (enabled.clone(), cut.clone(), frozen.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !en.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut_rx = cut_tx.subscribe();
                let mut frozen_rx = frozen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut_rx.changed() => {}
                        () = async { let _ = frozen_rx.wait_for(|f| *f).await; } => {
                            // Nothing forwarded any more, nothing closed: both sockets stay
                            // open (unread) until the connection is cut.
                            let _ = cut_rx.changed().await;
                        }
                    }
                });
            }
        });
        TcpProxy {
            port,
            enabled,
            cut,
            frozen,
        }
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` with 5 s heartbeats.
    pub fn amqp_url(&self) -> String {
        self.amqp_url_with_heartbeat(5)
    }

    /// The same URL with heartbeats `secs` apart.
    pub fn amqp_url_with_heartbeat(&self, secs: u16) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat={secs}",
            self.port
        )
    }

    /// Drops every open connection.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Stops forwarding on every connection, open and new, without closing any: the client
    /// sees a peer that never answers (until [`TcpProxy::cut`]).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Refuses (closes at once) new connections while `false`.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }
}
