//! Sending one outgoing request that [`super::http`] admitted: the TCP
//! connection goes to an address the host already checked (never a second
//! name lookup, so DNS rebinding cannot swap in a private address between
//! the check and the connect), TLS verifies the certificate against the
//! host name the plugin asked for, and the response body is capped in bytes
//! and in time.
//!
//! This is `wasmtime_wasi_http::default_send_request` with the connect step
//! replaced; no redirect is ever followed here (a 3xx goes back to the
//! plugin, whose next request is checked like the first).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Where and how to send an admitted request.
#[derive(Debug, Clone)]
pub struct Target {
    /// The host name from the URI (TLS server name and certificate check).
    pub host: String,
    /// Checked addresses, tried in order.
    pub addrs: Vec<SocketAddr>,
    /// `https`.
    pub tls: bool,
    /// Bound on connecting, on the first response byte, and on each gap
    /// between body bytes.
    pub step_timeout: Duration,
    /// When the whole exchange, body included, must be over.
    pub deadline: Instant,
    /// Most response body bytes; more fails the body with
    /// `HTTP-response-body-size`.
    pub max_body: u64,
}

/// The outcome of sending: the response (its body capped) and the
/// connection's driver future, as `wasi:http` hooks return them.
pub type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
);

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

async fn connect(t: &Target) -> Result<TcpStream, HttpError> {
    let mut last = HttpError::DestinationUnavailable;
    for addr in &t.addrs {
        match tokio::time::timeout(t.step_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = HttpError::ConnectionRefused
            }
            Ok(Err(e)) => last = HttpError::Connect(e),
            Err(_) => last = HttpError::ConnectionTimeout,
        }
    }
    Err(last)
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, HttpError> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| HttpError::InternalError(Some(format!("TLS client setup: {e}"))))
}

/// Sends `req` to `t` (see the module docs).
pub async fn send(mut req: http::Request<WasiBody>, t: Target) -> Result<Sent, HttpError> {
    let tcp = tokio::time::timeout_at(t.deadline, connect(&t))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
    let stream: Box<dyn Stream> = if t.tls {
        let name = match t.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::from(ip),
            Err(_) => ServerName::try_from(t.host.clone())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?,
        };
        let tls = tokio_rustls::TlsConnector::from(tls_config()?);
        let s = tokio::time::timeout_at(t.deadline, tls.connect(name, tcp))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(HttpError::Tls)?;
        Box::new(s)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = tokio::time::timeout_at(
        t.deadline,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;
    // The request line carries the path only (no proxy form).
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *req.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let mut conn = Box::pin(conn);
    let mut send = Box::pin(tokio::time::timeout(
        t.step_timeout,
        sender.send_request(req),
    ));
    // Drive the connection while waiting for the response head.
    let mut conn_done = false;
    let res = tokio::time::timeout_at(
        t.deadline,
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = send.as_mut().poll(cx) {
                return Poll::Ready(r.map_err(|_| HttpError::ConnectionReadTimeout));
            }
            if !conn_done && let Poll::Ready(r) = conn.as_mut().poll(cx) {
                conn_done = true;
                if let Err(e) = r {
                    return Poll::Ready(Err(HttpError::from(e)));
                }
            }
            Poll::Pending
        }),
    )
    .await
    .map_err(|_| HttpError::ConnectionReadTimeout)??
    .map_err(HttpError::from)?;
    let body_deadline = t.deadline;
    let res = res.map(|incoming| {
        CappedBody {
            incoming,
            seen: 0,
            cap: t.max_body,
            deadline: Box::pin(tokio::time::sleep_until(body_deadline)),
            gap: t.step_timeout,
            idle: Box::pin(tokio::time::sleep(t.step_timeout)),
        }
        .boxed_unsync()
    });
    let driver = async move {
        if conn_done {
            return Ok(());
        }
        match tokio::time::timeout_at(body_deadline, conn).await {
            Ok(r) => r.map_err(HttpError::from),
            Err(_) => Err(HttpError::HttpResponseTimeout),
        }
    };
    Ok((res, Box::new(driver)))
}

/// A response body that fails once it passes `cap` bytes, the deadline, or
/// a gap of `gap` without data.
struct CappedBody {
    incoming: hyper::body::Incoming,
    seen: u64,
    cap: u64,
    deadline: Pin<Box<Sleep>>,
    gap: Duration,
    idle: Pin<Box<Sleep>>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(HttpError::HttpResponseTimeout)));
        }
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.cap {
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                            this.cap,
                        )))));
                    }
                }
                this.idle.as_mut().reset(Instant::now() + this.gap);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
