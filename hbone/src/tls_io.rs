//! The byte stream under TLS, on both sides: a read buffer in front of the socket.
//!
//! rustls reads TLS records from the socket at most 4 KiB at a time, so a bulk transfer
//! cost one system call (and one readiness round in the runtime) per 4 KiB received. With
//! this buffer one read takes up to [`TLS_READ_BUFFER`] bytes from the kernel and rustls'
//! small reads are served from memory. Writes pass straight through, vectored.
//!
//! On the way out, rustls accepts at most its buffer limit (64 KiB by default) of
//! plaintext per write before the records must go to the socket: [`TLS_SEND_BUFFER`]
//! lets one HTTP/2 DATA frame of HBONE's 1 MiB frame size leave in one vectored write.

use tokio::io::{AsyncRead, BufReader};

/// Bytes read from the socket in one system call, at most.
pub(crate) const TLS_READ_BUFFER: usize = 64 * 1024;

/// Most encrypted bytes rustls holds before they are written to the socket (its
/// `set_buffer_limit`): a whole 1 MiB DATA frame in records, with room for the next frame's
/// start. Memory is only used while records wait for the socket, once per connection.
pub(crate) const TLS_SEND_BUFFER: usize = 2 * 1024 * 1024;

/// A connection's socket as TLS sees it.
pub(crate) type BufferedIo<T> = BufReader<T>;

/// Wraps `io` with the read buffer.
pub(crate) fn buffered<T: AsyncRead>(io: T) -> BufferedIo<T> {
    BufReader::with_capacity(TLS_READ_BUFFER, io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

    /// Counts the reads that reach the inner stream.
    struct CountingReads<T> {
        inner: T,
        reads: Arc<AtomicUsize>,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for CountingReads<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read() {
        let (mut far, near) = tokio::io::duplex(256 * 1024);
        let reads = Arc::new(AtomicUsize::new(0));
        let mut io = buffered(CountingReads {
            inner: near,
            reads: reads.clone(),
        });
        let data: Vec<u8> = (0..TLS_READ_BUFFER as u32).map(|i| i as u8).collect();
        far.write_all(&data).await.unwrap();
        far.shutdown().await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = io.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        // 16 reads of 4 KiB by the caller; one read fills the buffer, one sees the end.
        assert!(reads.load(Ordering::Relaxed) <= 2, "{reads:?}");
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (mut far, near) = tokio::io::duplex(1024);
        let mut io = buffered(near);
        assert!(io.is_write_vectored() == io.get_ref().is_write_vectored());
        io.write_all(b"hello").await.unwrap();
        io.flush().await.unwrap();
        let mut got = [0u8; 5];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
