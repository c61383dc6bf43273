//! Serving the HTTP API with limits: at most `max_connections` at once (the next one gets a
//! 503 and is closed), a deadline for each request's headers (hyper's header read timeout, which
//! also closes a connection that sends nothing, so a slowloris client costs a connection for that
//! long at most), a cap on the header count, and a deadline for reading a body (in the handlers,
//! [`super::kv`]). Each connection is HTTP/1.1 on hyper, the router is axum's; the answers hyper
//! gives itself to what it cannot parse get JSON bodies ([`super::hyper_errors`]).

use crate::tls::{BoxedIo, Tls};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

/// Limits of the HTTP port.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and to send a first one after
    /// connecting.
    pub header_timeout: Duration,
    /// Most header fields in a request.
    pub max_headers: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            max_headers: 100,
        }
    }
}

/// How long open connections get to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` completes, then
/// lets open requests finish (up to 5 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(limits.max_headers);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("dynamokv_http_connections_refused_total").increment(1);
            tracing::debug!(%remote, "refusing an HTTP connection: too many open");
            // A TLS client could not read a plaintext answer: it is closed without one.
            if tls.is_none() {
                tokio::spawn(refuse(stream, limits.max_connections));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let (watcher, builder, tls) = (graceful.watcher(), builder.clone(), tls.clone());
        tokio::spawn(async move {
            let io: BoxedIo = match &tls {
                None => Box::new(stream),
                // The TLS handshake gets the header deadline: a client that connects and says
                // nothing costs no more than over plaintext.
                Some(tls) => match tls.accept_client(stream, limits.header_timeout).await {
                    Ok(Some(io)) => io,
                    Ok(None) => return,
                    Err(plain) => return plaintext(plain).await,
                },
            };
            let io = super::hyper_errors::JsonErrors::new(io);
            let _ = watcher
                .watch(builder.serve_connection(TokioIo::new(io), service))
                .await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
}

/// Answers 503 to a connection over the limit and closes it (without reading its request).
async fn refuse(stream: tokio::net::TcpStream, limit: usize) {
    let body = format!(
        "{{\"error\":\"too_many_connections\",\"message\":\"this node already serves {limit} HTTP connections; retry, or reuse connections\"}}"
    );
    answer_and_close(stream, "503 Service Unavailable\r\nretry-after: 1", &body).await;
}

/// Answers a plaintext request on a TLS port with a 400 saying so, and closes.
async fn plaintext(stream: tokio::net::TcpStream) {
    metrics::counter!("dynamokv_tls_plaintext_refused_total", "port" => "http").increment(1);
    let body = "{\"error\":\"tls_required\",\"message\":\"this port speaks HTTPS: use https:// (and the cluster CA, e.g. curl --cacert ca.pem)\"}";
    answer_and_close(stream, "400 Bad Request", body).await;
}

/// Writes one JSON answer (`status` is the status line's end, with any extra header lines) and
/// closes, giving the client a second to take it.
async fn answer_and_close(mut stream: tokio::net::TcpStream, status: &str, body: &str) {
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
