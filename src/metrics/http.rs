//! `GET /metrics` over HTTP/1.1, on a Unix socket of its own (and, when
//! configured, a TCP address), apart from the gRPC socket so that a scraper
//! needs no access to the API and the API's bounds never starve monitoring.
//! Each connection is bounded in time, and at most [`MAX_CONNECTIONS`] are
//! served at once; more are closed on accept.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::Semaphore,
};

use super::metrics;

/// Scrapes served at once; a scraper needs one.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest one metrics connection may stay open.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Run before each scrape, to set gauges that are read rather than tracked
/// (e.g. the number of watchers).
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// One listener the endpoint is served on.
pub enum MetricsListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Serves every listener until `shutdown` resolves.
pub async fn serve<F>(listeners: Vec<MetricsListener>, refresh: Refresh, shutdown: F)
where
    F: Future<Output = ()> + Send,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        tasks.spawn(accept_loop(l, refresh.clone(), slots.clone()));
    }
    shutdown.await;
    tasks.abort_all();
}

async fn accept_loop(listener: MetricsListener, refresh: Refresh, slots: Arc<Semaphore>) {
    loop {
        match &listener {
            MetricsListener::Unix(l) => match l.accept().await {
                Ok((s, _)) => spawn_conn(s, &refresh, &slots),
                Err(e) => accept_failed(e).await,
            },
            MetricsListener::Tcp(l) => match l.accept().await {
                Ok((s, _)) => spawn_conn(s, &refresh, &slots),
                Err(e) => accept_failed(e).await,
            },
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "metrics endpoint: accept failed");
    // Out of descriptors, typically: give the process a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn spawn_conn<S>(stream: S, refresh: &Refresh, slots: &Arc<Semaphore>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        // Too many scrapers at once: close this one.
        return;
    };
    let refresh = refresh.clone();
    tokio::spawn(async move {
        let svc = service_fn(move |req| {
            let refresh = refresh.clone();
            async move { Ok::<_, Infallible>(respond(&req, &refresh)) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), svc);
        let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        drop(permit);
    });
}

fn respond(req: &Request<Incoming>, refresh: &Refresh) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            refresh();
            (StatusCode::OK, CONTENT_TYPE, metrics().encode())
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "the metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    resp
}
