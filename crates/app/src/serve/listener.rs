//! The HTTP/1.1 accept loop of `serve`, with the limits a public listener needs.
//!
//! `axum::serve` has no header-read timeout, no idle timeout and no connection limit: 200
//! clients trickling one header byte every few seconds would hold 200 connections forever.
//! Here each connection gets hyper's header-read timeout (it also bounds how long an unused
//! keep-alive connection waits for its next request), an idle watchdog (no byte moved, no
//! request in the handler), and a permit from a semaphore of `max_connections`; past the limit
//! the loop stops accepting and new clients wait in the kernel's backlog.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use x402_upto::telemetry;

/// Timeouts and the connection limit of [`serve_connections`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From waiting for a request to having its whole header.
    pub header_read_timeout: Duration,
    /// No byte in either direction and no request being handled for this long: closed.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// their requests (at most 30 s).
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => {
                permit.map_err(|_| io::Error::other("connection semaphore closed"))?
            }
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: Arc::clone(&activity),
        });
        let service = {
            let activity = Arc::clone(&activity);
            let app = app.clone();
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let in_flight = InFlight::enter(Arc::clone(&activity));
                let mut req = req.map(Body::new);
                // The peer's address, for the rate limits by client address.
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let call = app.clone().oneshot(req);
                async move {
                    let response = call.await;
                    drop(in_flight);
                    response
                }
            })
        };
        let conn = graceful.watch(http.serve_connection(io, service));
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            tokio::select! {
                served = conn => {
                    if let Err(e) = served
                        && e.is_timeout()
                    {
                        metrics::counter!(telemetry::CONNECTIONS_TIMED_OUT, "kind" => "header_read")
                            .increment(1);
                    }
                }
                () = activity.idle_for(idle) => {
                    metrics::counter!(telemetry::CONNECTIONS_TIMED_OUT, "kind" => "idle").increment(1);
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 30 s after shutdown; closing them");
    }
    Ok(())
}

/// When a connection last moved a byte, and how many of its requests are in the handler.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last read or write.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once the connection has been idle for `limit`: nothing read or written and
    /// no request being handled (a slow upstream is not the client's idleness).
    async fn idle_for(&self, limit: Duration) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            let quiet = now.saturating_sub(self.last_ms.load(Ordering::Relaxed));
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(limit).await;
                continue;
            }
            if quiet >= limit_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(limit_ms - quiet)).await;
        }
    }
}

/// A request in the handler; counts down (and counts as activity) when dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that records when it last moved a byte.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
