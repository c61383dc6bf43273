//! JSON bodies for the answers hyper gives itself. A request hyper cannot parse never reaches
//! the router: hyper answers it (400 for a malformed request, 414 for a URI over 64 KiB, 431
//! for headers over its buffer) with an empty body and closes. Every other error of this API
//! has a JSON body saying what to do, so [`JsonErrors`] wraps a connection and, when hyper
//! writes one of those empty answers, writes it with such a body instead. It recognises them by
//! their exact shape (a 4xx status, `connection: close`, `content-length: 0`), which the
//! router's own answers never have; every other write passes through untouched.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose hyper-made error answers get a JSON body.
pub struct JsonErrors<T> {
    inner: T,
    /// The rewritten answer, still to write.
    pending: Vec<u8>,
}

impl<T> JsonErrors<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
        }
    }
}

/// The body for a hyper-made answer with this status line, if it is one.
fn body_for(answer: &[u8]) -> Option<&'static str> {
    // Cheap first: most writes are not a 4xx head.
    if !answer.starts_with(b"HTTP/1.1 4") || answer.len() > 512 {
        return None;
    }
    let head = answer.strip_suffix(b"\r\n\r\n")?;
    let is_empty_close = head
        .windows(b"\r\ncontent-length: 0".len())
        .any(|w| w == b"\r\ncontent-length: 0")
        && head
            .windows(b"\r\nconnection: close".len())
            .any(|w| w == b"\r\nconnection: close");
    if !is_empty_close {
        return None;
    }
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    Some(match status {
        b"414" => {
            r#"{"error":"uri_too_long","message":"the request line is over 64 KiB: keys are at most 1 KiB (percent-encoded in the path, up to 3 bytes per byte); put large data in the body"}"#
        }
        b"431" => {
            r#"{"error":"headers_too_large","message":"the request headers are too large for this node; send fewer or shorter headers"}"#
        }
        b"400" => {
            r#"{"error":"malformed_request","message":"the request is not valid HTTP/1.1: check the request line (METHOD /path HTTP/1.1) and the headers"}"#
        }
        _ => return None,
    })
}

/// `answer` with `body` in place of its empty one.
fn with_body(answer: &[u8], body: &str) -> Vec<u8> {
    let head = String::from_utf8_lossy(&answer[..answer.len() - 4]).replace(
        "\r\ncontent-length: 0",
        &format!(
            "\r\ncontent-type: application/json\r\ncontent-length: {}",
            body.len()
        ),
    );
    format!("{head}\r\n\r\n{body}").into_bytes()
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes what is pending; ready once nothing is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        if let Some(body) = body_for(buf) {
            this.pending = with_body(buf, body);
            // Taken whole: the rewritten answer goes out on this call or the next ones.
            let _ = this.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        // hyper writes its own error answers as one buffer.
        if let [only] = bufs
            && body_for(only).is_some()
        {
            return Pin::new(this).poll_write(cx, only);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_made_empty_error_answers_get_a_body() {
        let hyper414 = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 23:50:42 GMT\r\n\r\n";
        let body = body_for(hyper414).expect("recognised");
        let out = String::from_utf8(with_body(hyper414, body)).unwrap();
        assert!(out.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{out}");
        assert!(
            out.contains(&format!("content-length: {}\r\n", body.len())),
            "{out}"
        );
        assert!(out.ends_with(&format!("\r\n\r\n{body}")), "{out}");
        // The router's answers have bodies, or are not errors.
        assert_eq!(
            body_for(b"HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n"),
            None
        );
        assert_eq!(
            body_for(b"HTTP/1.1 404 Not Found\r\ncontent-length: 40\r\n\r\n"),
            None
        );
        assert_eq!(
            body_for(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
            None,
            "not closing: not hyper's"
        );
    }
}
