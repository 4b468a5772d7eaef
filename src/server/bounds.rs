//! Resource bounds on the gRPC socket, below what tonic configures itself
//! (message size, streams per connection, HTTP/2 keepalive pings):
//!
//! - **Connections**: at most `max_connections` at once; a connection over
//!   the limit is accepted and closed at once, so its client fails fast
//!   instead of waiting in the listen backlog.
//! - **Handshake**: a connection must deliver the 24-byte HTTP/2 client
//!   preface within `handshake_timeout` or it is closed (slow-loris).
//! - **Idle**: a connection with no request in progress for `idle_timeout`
//!   is closed — whether it is a finished client's, or a stalled one that
//!   began a request and never completed its headers (a request only exists
//!   once its headers are complete). A long-lived stream (Watch) is a request
//!   in progress, so its connection stays.
//! - **Request deadline**: a call must produce its response headers within
//!   `request_timeout`, or it gets DEADLINE_EXCEEDED and its work is
//!   dropped. For a unary call that is the whole call; a server stream
//!   answers with headers at once, so the deadline never cuts a Watch.
//!
//! [`Limited`] wraps each accepted socket and owns its connection slot;
//! [`BoundsLayer`] counts each connection's requests in progress through the
//! [`ConnInfo`] that tonic puts in every request.

use std::{
    future::Future,
    io,
    os::fd::OwnedFd,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::{Stream, StreamExt, wrappers::UnixListenerStream};
use tonic::{
    Status,
    transport::server::{Connected, UdsConnectInfo},
};

use super::http2_authority::AuthorityFix;
use crate::metrics::metrics;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4) is 24 bytes.
const PREFACE_LEN: usize = 24;

pub use crate::config::Limits;

/// One connection's requests in progress, shared by its socket wrapper and
/// the requests' guards.
pub struct ConnState {
    active: AtomicUsize,
    /// When the connection last became idle, in ms after `opened`.
    idle_since_ms: AtomicU64,
    opened: Instant,
    /// The connection task's waker, so that the idle timer starts when the
    /// last request ends.
    waker: Mutex<Option<Waker>>,
    /// The process that connected, as the kernel saw it at connect()
    /// (SO_PEERPIDFD), when asked for: unlike a PID, it never names
    /// another process later.
    pidfd: Option<Arc<OwnedFd>>,
}

impl ConnState {
    fn new(pidfd: Option<OwnedFd>) -> Self {
        Self {
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
            waker: Mutex::new(None),
            pidfd: pidfd.map(Arc::new),
        }
    }

    fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        self.opened
            + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
            + idle_timeout
    }
}

/// What tonic puts in each request's extensions: the peer's credentials and
/// the connection's state.
#[derive(Clone)]
pub struct ConnInfo {
    pub uds: UdsConnectInfo,
    state: Arc<ConnState>,
}

impl ConnInfo {
    /// How long ago the connection was accepted.
    pub fn connected_for(&self) -> Duration {
        self.state.opened.elapsed()
    }

    /// The connecting process's pidfd, on a socket that takes them.
    pub fn pidfd(&self) -> Option<Arc<OwnedFd>> {
        self.state.pidfd.clone()
    }
}

/// Held while one request is in progress on its connection (until its
/// response body is finished or dropped).
pub struct RequestGuard(Arc<ConnState>);

impl RequestGuard {
    fn enter(state: Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Ordering::AcqRel);
        Self(state)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = &self.0;
        let since = s.opened.elapsed().as_millis() as u64;
        s.idle_since_ms.store(since, Ordering::Release);
        if s.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waker = s.waker.lock().ok().and_then(|w| w.clone());
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// An accepted connection under [`Limits`]: see the module documentation.
pub struct Limited<S> {
    inner: S,
    state: Arc<ConnState>,
    _slot: OwnedSemaphorePermit,
    preface_left: usize,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    closed: bool,
}

impl<S> Limited<S> {
    fn new(inner: S, slot: OwnedSemaphorePermit, limits: &Limits, pidfd: Option<OwnedFd>) -> Self {
        let state = Arc::new(ConnState::new(pidfd));
        metrics().connections.inc();
        Self {
            timer: Box::pin(tokio::time::sleep_until(
                state.opened + limits.handshake_timeout,
            )),
            inner,
            state,
            _slot: slot,
            preface_left: PREFACE_LEN,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
            closed: false,
        }
    }

    /// The deadline that applies now, if any, and why.
    fn deadline(&self, cx: &Context<'_>) -> Option<(Instant, &'static str)> {
        if self.preface_left > 0 {
            return Some((self.state.opened + self.handshake_timeout, "handshake"));
        }
        // Register before reading the count, so that a request ending in
        // between still wakes us.
        if let Ok(mut w) = self.state.waker.lock()
            && !w.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            *w = Some(cx.waker().clone());
        }
        if self.state.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some((self.state.idle_deadline(self.idle_timeout), "idle"))
    }
}

impl<S> Drop for Limited<S> {
    fn drop(&mut self) {
        metrics().connections.dec();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        if let Some((deadline, reason)) = this.deadline(cx) {
            if this.timer.deadline() != deadline {
                this.timer.as_mut().reset(deadline);
            }
            if this.timer.as_mut().poll(cx).is_ready() {
                // End of stream: the HTTP/2 server closes the connection.
                this.closed = true;
                metrics().connection_closed(reason);
                tracing::debug!(reason, "closing a gRPC connection");
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.preface_left > 0 && matches!(r, Poll::Ready(Ok(()))) {
            let n = buf.filled().len() - before;
            this.preface_left = this.preface_left.saturating_sub(n);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

impl<S: Connected<ConnectInfo = UdsConnectInfo>> Connected for Limited<S> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            uds: self.inner.connect_info(),
            state: self.state.clone(),
        }
    }
}

/// Whether [`incoming`] keeps each connecting process's pidfd (the
/// workload socket, whose callers are attested from `/proc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerPidfd {
    Take,
    Skip,
}

/// Accepted connections, each behind [`AuthorityFix`] (clients sending
/// their socket path as `:authority` are served) and [`Limited`]; over
/// `max_connections`, connections are closed as soon as they are accepted.
pub fn incoming(
    listener: UnixListener,
    limits: Limits,
    peers: PeerPidfd,
) -> impl Stream<Item = io::Result<Limited<AuthorityFix<UnixStream>>>> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let last_warning = AtomicU64::new(0);
    let start = Instant::now();
    UnixListenerStream::new(listener).filter_map(move |conn| match conn {
        Err(e) => Some(Err(e)),
        Ok(stream) => match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                // A kernel without SO_PEERPIDFD (before 6.5) gives none:
                // attestation then relies on the start-time checks alone.
                let pidfd = match peers {
                    PeerPidfd::Take => {
                        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerPidfd)
                            .ok()
                    }
                    PeerPidfd::Skip => None,
                };
                Some(Ok(Limited::new(
                    AuthorityFix::new(stream),
                    slot,
                    &limits,
                    pidfd,
                )))
            }
            Err(_) => {
                metrics().connection_closed("limit");
                // At most one warning every 10 s: a flood must not flood the log.
                let now = start.elapsed().as_secs() + 10;
                let last = last_warning.load(Ordering::Relaxed);
                if now >= last + 10
                    && last_warning
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached; closing new connections (server.max_connections)"
                    );
                }
                None
            }
        },
    })
}

/// Counts requests on their connection and applies the request deadline:
/// see the module documentation.
#[derive(Clone)]
pub struct BoundsLayer {
    request_timeout: Duration,
}

impl BoundsLayer {
    pub fn new(request_timeout: Duration) -> Self {
        Self { request_timeout }
    }
}

impl<S> tower::Layer<S> for BoundsLayer {
    type Service = Bounds<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bounds {
            inner,
            request_timeout: self.request_timeout,
        }
    }
}

#[derive(Clone)]
pub struct Bounds<S> {
    inner: S,
    request_timeout: Duration,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Bounds<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = req
            .extensions()
            .get::<ConnInfo>()
            .map(|c| RequestGuard::enter(c.state.clone()));
        let limit = self.request_timeout;
        let fut = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(Ok(resp)) => Ok(match guard {
                    Some(guard) => resp.map(|body| {
                        tonic::body::Body::new(GuardedBody {
                            inner: body,
                            _guard: guard,
                        })
                    }),
                    None => resp,
                }),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    metrics().deadline_exceeded.inc();
                    tracing::warn!(limit = ?limit, "a request exceeded server.request_timeout");
                    Ok(Status::deadline_exceeded(format!(
                        "the daemon did not finish this request within its {} limit (server.request_timeout); retry later",
                        humantime::format_duration(limit)
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// A response body that keeps its request counted until it is finished.
struct GuardedBody {
    inner: tonic::body::Body,
    _guard: RequestGuard,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn limited(limits: &Limits) -> (Limited<UnixStream>, UnixStream, Arc<Semaphore>) {
        let (a, b) = UnixStream::pair().unwrap();
        let slots = Arc::new(Semaphore::new(1));
        let slot = slots.clone().try_acquire_owned().unwrap();
        (Limited::new(a, slot, limits, None), b, slots)
    }

    fn limits() -> Limits {
        Limits {
            handshake_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(400),
            ..Limits::default()
        }
    }

    /// Reads until end of stream; the time it took.
    async fn until_closed(l: &mut Limited<UnixStream>) -> Duration {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        while l.read(&mut buf).await.unwrap() > 0 {}
        start.elapsed()
    }

    #[tokio::test]
    async fn a_half_sent_preface_is_closed_at_the_handshake_timeout() {
        let (mut l, mut peer, slots) = limited(&limits());
        peer.write_all(&PREFACE[..10]).await.unwrap();
        let took = until_closed(&mut l).await;
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(slots.available_permits(), 0);
        drop(l);
        assert_eq!(slots.available_permits(), 1, "the slot comes back");
    }

    #[tokio::test]
    async fn idle_counts_from_the_last_request() {
        let (mut l, mut peer, _slots) = limited(&limits());
        peer.write_all(PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(l.read(&mut buf).await.unwrap(), PREFACE.len());
        // A request in progress for 1 s keeps the connection.
        let guard = RequestGuard::enter(l.state.clone());
        let reader = tokio::spawn(async move { until_closed(&mut l).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !reader.is_finished(),
            "closed while a request was in progress"
        );
        let ended = Instant::now();
        drop(guard);
        let took = reader.await.unwrap();
        // Closed idle_timeout (400 ms) after the request ended.
        let after = ended.elapsed();
        assert!(took >= Duration::from_millis(1300), "{took:?}");
        assert!(
            after >= Duration::from_millis(350) && after < Duration::from_secs(3),
            "{after:?}"
        );
    }
}
