//! A total deadline over reading a request body.
//!
//! `server.body_read_timeout_secs` bounds the time a client may take to send
//! the whole body, counted from the moment its headers were read. (A timeout
//! between chunks, as tower-http's `RequestBodyTimeout` has, lets a client
//! that trickles one byte at a time hold a connection forever.) When the
//! deadline passes while the body is still incomplete, reading it fails with
//! [`BodyDeadlineElapsed`], which the JSON extractor turns into a 408.
//!
//! A body dropped before its end (a stage refused the request before the
//! handler read it: 401, 429, 404, a fail-closed 503) is drained in the
//! background, up to the body limit and within the same deadline. Closing a
//! socket with request bytes unread, or still arriving, makes the kernel
//! send a reset, which can destroy the response on its way to the client;
//! drained, the refusal arrives intact and the connection stays usable.
//!
//! ```
//! # use std::time::Duration;
//! use palisade::server::body_deadline::DeadlineBody;
//! # async fn demo() {
//! let body = DeadlineBody::new(axum::body::Body::from("{}"), Duration::from_secs(30));
//! let bytes = axum::body::to_bytes(axum::body::Body::new(body), 1024).await.unwrap();
//! assert_eq!(&bytes[..], b"{}");
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;

/// The body was not complete when its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {timeout:?}")]
pub struct BodyDeadlineElapsed {
    /// The configured total body timeout.
    pub timeout: Duration,
}

/// A body that fails with [`BodyDeadlineElapsed`] once `timeout` has passed
/// since it was created and it is still waiting for data. Data that has
/// already arrived is always delivered, so a server slow to read a body the
/// client sent in time does not fail it.
pub struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    elapsed: bool,
    /// Bytes delivered so far, and the most a drain reads in all.
    read: usize,
    limit: usize,
}

impl DeadlineBody {
    /// Wraps `inner`; the deadline starts now. A drop before the end drains
    /// at most 1 MiB (see [`DeadlineBody::with_limit`]).
    pub fn new(inner: Body, timeout: Duration) -> Self {
        Self::with_limit(inner, timeout, 1 << 20)
    }

    /// Like [`DeadlineBody::new`]; a drop before the end drains the rest of
    /// the body in the background as long as the total stays within
    /// `limit` bytes and the deadline has not passed.
    pub fn with_limit(inner: Body, timeout: Duration, limit: usize) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            elapsed: false,
            read: 0,
            limit,
        }
    }
}

impl Drop for DeadlineBody {
    fn drop(&mut self) {
        if self.elapsed || self.inner.is_end_stream() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut inner = std::mem::replace(&mut self.inner, Body::empty());
        let deadline = self.deadline.deadline();
        let mut left = self.limit.saturating_sub(self.read);
        rt.spawn(async move {
            let drain = async {
                while let Some(frame) =
                    std::future::poll_fn(|cx| Pin::new(&mut inner).poll_frame(cx)).await
                {
                    let Ok(frame) = frame else { return };
                    if let Some(d) = frame.data_ref() {
                        if d.len() > left {
                            return;
                        }
                        left -= d.len();
                    }
                }
            };
            let _ = tokio::time::timeout_at(deadline, drain).await;
        });
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.elapsed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(Ok(f)) = &frame {
                    this.read += f.data_ref().map_or(0, |d| d.len());
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.elapsed = true;
                    Poll::Ready(Some(Err(Box::new(BodyDeadlineElapsed {
                        timeout: this.timeout,
                    }))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.elapsed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: gives every request body a total deadline and, when it is
/// dropped unread, a bounded drain (`(timeout, body limit)`).
pub async fn limit(
    State((timeout, max_bytes)): State<(Duration, usize)>,
    req: Request,
    next: Next,
) -> Response {
    next.run(req.map(|b| Body::new(DeadlineBody::with_limit(b, timeout, max_bytes))))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use tokio::sync::mpsc;

    /// A body fed by a channel, one chunk per message.
    fn channel_body() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, Body) {
        let (tx, rx) = mpsc::channel(16);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        (tx, Body::from_stream(stream))
    }

    fn is_deadline(e: &axum::Error) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if s.is::<BodyDeadlineElapsed>() {
                return true;
            }
            source = s.source();
        }
        false
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_fails_once_the_total_deadline_passes() {
        let (tx, body) = channel_body();
        let body = Body::new(DeadlineBody::new(body, Duration::from_secs(2)));
        // One byte every 400 ms (virtual time): each gap is far below the
        // timeout, the total far above it.
        tokio::spawn(async move {
            for _ in 0..64 {
                if tx.send(Ok(Bytes::from_static(b"x"))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        let err = to_bytes(body, 1 << 20).await.unwrap_err();
        assert!(is_deadline(&err), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_sent_in_time_is_read_whole() {
        let (tx, body) = channel_body();
        let body = Body::new(DeadlineBody::new(body, Duration::from_secs(2)));
        tokio::spawn(async move {
            for _ in 0..4 {
                tx.send(Ok(Bytes::from_static(b"ab"))).await.unwrap();
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        let bytes = to_bytes(body, 1 << 20).await.unwrap();
        assert_eq!(&bytes[..], b"abababab");
    }

    /// A body dropped unread is still read to its end, within the limit;
    /// past the limit the drain stops and lets the body go. The channel
    /// holds one chunk, so a send completes only while something reads.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_body_is_drained_within_its_limit() {
        for (limit, drained) in [(1 << 20, true), (4, false)] {
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
            let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
            drop(DeadlineBody::with_limit(
                body,
                Duration::from_secs(10),
                limit,
            ));
            let mut sent = 0;
            for _ in 0..8 {
                let send = tx.send(Ok(Bytes::from_static(b"abc")));
                match tokio::time::timeout(Duration::from_secs(1), send).await {
                    Ok(Ok(())) => sent += 1,
                    _ => break,
                }
            }
            if drained {
                assert_eq!(sent, 8, "every chunk read");
            } else {
                assert!(sent < 8, "the drain stopped at the limit, sent {sent}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn data_already_received_is_delivered_after_the_deadline() {
        let body = DeadlineBody::new(Body::from("late reader"), Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let bytes = to_bytes(Body::new(body), 1 << 20).await.unwrap();
        assert_eq!(&bytes[..], b"late reader");
    }
}
