//! Fan-out of a byte stream to checkers running on their own threads, so that the
//! source is read once: the same bytes that are written are hashed and checked against
//! signatures as they go by, and the result is known when the last byte is written.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Buffers queued per checker before the stream waits for it.
const DEPTH: usize = 16;

/// The sending end: every byte given to [`Tap::send`] reaches every checker, in order.
/// Dropping the tap ends the checkers' streams.
#[derive(Default)]
pub struct Tap {
    outs: Vec<SyncSender<Arc<[u8]>>>,
}

impl Tap {
    /// Hands a copy of `data` to every checker still reading; a checker that finished
    /// early (it found its answer without the data) is dropped.
    pub fn send(&mut self, data: &[u8]) {
        if self.outs.is_empty() || data.is_empty() {
            return;
        }
        let shared: Arc<[u8]> = Arc::from(data);
        self.outs.retain(|tx| tx.send(shared.clone()).is_ok());
    }

    /// Whether no checker listens.
    pub fn is_empty(&self) -> bool {
        self.outs.is_empty()
    }

    /// Starts `check` on a new thread, reading everything sent from now on.
    pub fn spawn<T, F>(&mut self, check: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Read) -> T + Send + 'static,
    {
        let (tx, rx) = sync_channel(DEPTH);
        self.outs.push(tx);
        std::thread::spawn(move || {
            let mut r = TapReader {
                rx,
                cur: Arc::from(&[][..]),
                pos: 0,
            };
            check(&mut r)
        })
    }
}

/// The receiving end, as a reader that ends when the tap is dropped.
struct TapReader {
    rx: Receiver<Arc<[u8]>>,
    cur: Arc<[u8]>,
    pos: usize,
}

impl Read for TapReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(b) => {
                    self.cur = b;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oneimage_format::hash::sha256;

    #[test]
    fn every_checker_sees_the_whole_stream_in_order() {
        let mut tap = Tap::default();
        let a = tap.spawn(|r| sha256(r).unwrap());
        let b = tap.spawn(|r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        });
        // One checker that stops at once must not stall the others.
        let c = tap.spawn(|_| 7);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for piece in data.chunks(333) {
            tap.send(piece);
        }
        drop(tap);
        assert_eq!(a.join().unwrap(), sha256(&data[..]).unwrap());
        assert_eq!(b.join().unwrap(), data);
        assert_eq!(c.join().unwrap(), 7);
    }
}
