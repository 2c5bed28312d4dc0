//! The API's HTTP/1.1 server loop, for the Unix socket and the TCP listener alike. Unlike
//! `axum::serve` it bounds what an unauthenticated peer can hold: a connection must send its
//! request headers within [`HEADER_DEADLINE`], and at most [`MAX_CONNECTIONS`] connections are
//! open at once (past that, new ones are closed at once rather than queued). Each request
//! carries who sent it (a [`ConnPeer`] extension: the Unix client's uid, the TCP client's
//! address), for the limit on requests without a valid key (`super::bad_keys`).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{watch, Semaphore};

use super::bad_keys::ConnPeer;

/// Time a connection has to send a request's headers (also between requests on a kept-alive
/// connection).
pub const HEADER_DEADLINE: Duration = Duration::from_secs(15);
/// Most connections served at once, per listener.
pub const MAX_CONNECTIONS: usize = 1024;

/// A connection that can say who is at its other end.
pub trait PeerOf {
    fn peer_of(&self) -> Option<ConnPeer>;
}

impl PeerOf for tokio::net::UnixStream {
    fn peer_of(&self) -> Option<ConnPeer> {
        // SO_PEERCRED: the credentials the client had when it connected, from the kernel.
        Some(ConnPeer::Unix(self.peer_cred().ok().map(|c| c.uid())))
    }
}

impl PeerOf for tokio::net::TcpStream {
    fn peer_of(&self) -> Option<ConnPeer> {
        self.peer_addr().ok().map(|a| ConnPeer::Tcp(a.ip()))
    }
}

/// The app, adding its connection's peer to each request.
#[derive(Clone)]
struct WithPeer {
    app: Router,
    peer: Option<ConnPeer>,
}

impl tower_service::Service<hyper::Request<hyper::body::Incoming>> for WithPeer {
    type Response = Response;
    type Error = Infallible;
    type Future = <Router as tower_service::Service<Request>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower_service::Service::<Request>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let mut req = req.map(axum::body::Body::new);
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(peer);
        }
        self.app.call(req)
    }
}

/// Serves `app` on `listener` until `stop` turns true, then lets open requests finish for at
/// most `drain`.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) where
    L: Listener,
    L::Io: PeerOf,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE)
        // Clients that half-close after their request (socat, `curl --unix-socket` in scripts)
        // still get their answer.
        .half_close(true);
    loop {
        let (io, _addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("{MAX_CONNECTIONS} connections are open; refusing another");
            drop(io);
            continue;
        };
        let service = TowerToHyperService::new(WithPeer {
            app: app.clone(),
            peer: io.peer_of(),
        });
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                // Shutting down: finish the request in progress, take no new one.
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!("connection ended: {e}");
            }
            drop(slot);
        });
    }
    // Every connection gives its slot back when it ends.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("some requests were still running after {drain:?}; leaving anyway");
    }
}
