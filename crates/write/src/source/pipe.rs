//! A producer thread that fills buffers and hands them to the consumer in order, so
//! decompression and writing run at the same time.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Size of the buffers handed from the producer to the consumer.
pub const CHUNK: usize = 1 << 20;
const DEPTH: usize = 8;

type Msg = io::Result<Vec<u8>>;

/// The producer's end: buffers sent here come out of the [`PipeReader`] in order.
pub struct Sink {
    tx: SyncSender<Msg>,
}

impl Sink {
    /// Sends one buffer; fails when the consumer is gone.
    pub fn send(&self, buf: Vec<u8>) -> io::Result<()> {
        self.tx
            .send(Ok(buf))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "reader closed"))
    }

    /// Reads `r` to its end, sending full buffers.
    pub fn copy_from<R: Read + ?Sized>(&self, r: &mut R) -> io::Result<()> {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = super::read_up_to(r, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            self.send(buf)?;
            if n < CHUNK {
                // read_up_to only stops short at the end of the stream.
                return Ok(());
            }
        }
    }
}

/// The consumer's end of a producer thread.
pub struct PipeReader {
    rx: Receiver<Msg>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
    name: String,
    handle: Option<JoinHandle<()>>,
}

/// Runs `produce` on a new thread; its buffers (or its error) come out of the reader.
pub fn spawn_with<F>(name: String, produce: F) -> PipeReader
where
    F: FnOnce(&Sink) -> io::Result<()> + Send + 'static,
{
    let (tx, rx) = sync_channel(DEPTH);
    let handle = std::thread::spawn(move || {
        let sink = Sink { tx };
        if let Err(e) = produce(&sink) {
            let _ = sink.tx.send(Err(e));
        }
    });
    PipeReader {
        rx,
        cur: Vec::new(),
        pos: 0,
        done: false,
        name,
        handle: Some(handle),
    }
}

/// Reads `r` on a new thread.
pub fn spawn<R: Read + Send + 'static>(name: String, mut r: R) -> PipeReader {
    spawn_with(name, move |sink| sink.copy_from(&mut r))
}

impl PipeReader {
    /// The next buffer of the stream as it came from the producer (no copy); `None` at
    /// the end.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.pos < self.cur.len() {
            let rest = self.cur.split_off(self.pos);
            self.cur.clear();
            self.pos = 0;
            return Ok(Some(rest));
        }
        loop {
            if self.done {
                return Ok(None);
            }
            match self.rx.recv() {
                Ok(Ok(b)) if b.is_empty() => continue,
                Ok(Ok(b)) => return Ok(Some(b)),
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(io::Error::new(
                        e.kind(),
                        format!("decompressing {}: {e}", self.name),
                    ));
                }
                Err(_) => {
                    self.done = true;
                    if let Some(h) = self.handle.take() {
                        if h.join().is_err() {
                            return Err(io::Error::other(format!(
                                "decompressing {}: the decoder thread panicked",
                                self.name
                            )));
                        }
                    }
                    return Ok(None);
                }
            }
        }
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            match self.next_chunk()? {
                Some(b) => {
                    self.cur = b;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
