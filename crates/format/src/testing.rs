//! Seeded, reproducible input generation for the property and fuzz tests of every
//! oneimage crate: one generator and one mutator, so each parser's test only says what
//! its valid inputs look like and what must hold for any input.
//!
//! Compiled for this crate's own tests and, behind the `testing` feature, for other
//! crates' tests (`oneimage-format = { ..., features = ["testing"] }` under
//! `[dev-dependencies]`); never part of a shipped binary.
//!
//! A run is fixed by its seed: every case draws from a generator seeded by the target's
//! name, the run's seed and the case number, so one failing case can be replayed alone.
//! `ONEIMAGE_FUZZ_CASES` raises the count (`scripts/fuzz.sh` does), `ONEIMAGE_FUZZ_SEED`
//! picks another stream and `ONEIMAGE_FUZZ_CASE` replays one case.

use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cases a target runs in the normal test suite.
pub const DEFAULT_CASES: u64 = 10_000;

/// A small seeded generator (xorshift64*): fast, and the same sequence everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`; nearby seeds give unrelated sequences.
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed: xorshift needs a non-zero state and mixes slowly from
        // small ones, and seeds here are small numbers (case indexes).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// An index in `0..n`; 0 when `n` is 0.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True once in `n` times on average.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// One of `items` (which must not be empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// A value at an edge for a `width`-byte unsigned field (1, 2, 4 or 8): 0, 1, the
    /// largest, just below it, the sign bit, half-way, a small number or anything. These
    /// are what unchecked arithmetic on lengths, counts and offsets trips over.
    pub fn extreme(&mut self, width: usize) -> u64 {
        let max = if width >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * width)) - 1
        };
        let top = max / 2 + 1;
        match self.below(10) {
            0 => 0,
            1 => 1,
            2 => max,
            3 => max - 1,
            4 => top,
            5 => top - 1,
            6 => max / 3,
            7 => self.below(64),
            8 => 1u64 << self.below(8 * width as u64),
            _ => self.next_u64() & max,
        }
    }
}

/// Changes a valid input the ways that find parser bugs: bit flips, random bytes,
/// extreme little-endian integers at random offsets, truncation, splices of its own
/// pieces, insertions, deletions and dictionary tokens. Offsets are drawn from the
/// `hot` ranges (where a format's fields are) three times out of four when some are set.
#[derive(Debug, Clone)]
pub struct Mutator {
    /// The generator every choice comes from (tests draw from it too).
    pub rng: Rng,
    hot: Vec<Range<usize>>,
    tokens: Vec<Vec<u8>>,
}

impl Mutator {
    /// A mutator drawing from `rng`.
    pub fn new(rng: Rng) -> Mutator {
        Mutator {
            rng,
            hot: Vec::new(),
            tokens: Vec::new(),
        }
    }

    /// Byte ranges to aim most mutations at (e.g. the sectors that hold a format's
    /// headers in an otherwise large input).
    pub fn hot(&mut self, ranges: &[Range<usize>]) -> &mut Mutator {
        self.hot = ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
        self
    }

    /// Tokens to insert or overwrite with: magic numbers, keywords, separators, escapes.
    pub fn tokens<T: AsRef<[u8]>>(&mut self, tokens: &[T]) -> &mut Mutator {
        self.tokens = tokens.iter().map(|t| t.as_ref().to_vec()).collect();
        self
    }

    /// An offset in `0..len` (0 when `len` is 0), usually inside a hot range.
    pub fn offset(&mut self, len: usize) -> usize {
        if !self.hot.is_empty() && !self.rng.one_in(4) {
            let r = self.rng.pick(&self.hot).clone();
            let at = r.start + self.rng.index(r.len());
            if at < len {
                return at;
            }
        }
        self.rng.index(len)
    }

    /// A copy of `input` with one to four mutations (now and then up to sixteen).
    pub fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        let n = if self.rng.one_in(8) {
            1 + self.rng.below(16)
        } else {
            1 + self.rng.below(4)
        };
        for _ in 0..n {
            self.mutate_once(&mut out);
        }
        out
    }

    /// Applies one mutation to `buf` in place.
    pub fn mutate_once(&mut self, buf: &mut Vec<u8>) {
        let len = buf.len();
        if len == 0 {
            let n = 1 + self.rng.index(16);
            buf.extend(self.rng.bytes(n));
            return;
        }
        let at = self.offset(len);
        match self.rng.below(12) {
            0 => buf[at] ^= 1 << self.rng.below(8),
            1 => buf[at] = self.rng.next_u64() as u8,
            2 | 3 => {
                // A length, count or offset field replaced by an edge value.
                let width = *self.rng.pick(&[1usize, 2, 4, 8]);
                let v = self.rng.extreme(width);
                for (i, b) in v.to_le_bytes().iter().take(width).enumerate() {
                    if let Some(slot) = buf.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            4 => {
                // Off by a little: the arithmetic edge next to a valid value.
                let width = *self.rng.pick(&[1usize, 2, 4, 8]);
                let end = (at + width).min(len);
                let mut w = [0u8; 8];
                w[..end - at].copy_from_slice(&buf[at..end]);
                let d = 1 + self.rng.below(16);
                let v = if self.rng.one_in(2) {
                    u64::from_le_bytes(w).wrapping_add(d)
                } else {
                    u64::from_le_bytes(w).wrapping_sub(d)
                };
                buf[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            5 => buf.truncate(at),
            6 => {
                // A piece of the input copied over another place (a splice).
                let from = self.rng.index(len);
                let n = (1 + self.rng.index(64)).min(len - from).min(len - at);
                let piece = buf[from..from + n].to_vec();
                buf[at..at + n].copy_from_slice(&piece);
            }
            7 => {
                let from = self.rng.index(len);
                let n = (1 + self.rng.index(64)).min(len - from);
                let piece = buf[from..from + n].to_vec();
                buf.splice(at..at, piece);
            }
            8 => {
                let n = (1 + self.rng.index(64)).min(len - at);
                buf.drain(at..at + n);
            }
            9 => {
                let n = 1 + self.rng.index(32);
                let fill = self.rng.bytes(n);
                buf.splice(at..at, fill);
            }
            _ => match self.tokens.is_empty() {
                true => buf[at] = *self.rng.pick(&[0u8, 0xff, 0x7f, 0x80, b'\n', b' ']),
                false => {
                    let t = self.tokens[self.rng.index(self.tokens.len())].clone();
                    if self.rng.one_in(2) {
                        buf.splice(at..at, t);
                    } else {
                        let end = (at + t.len()).min(len);
                        buf.splice(at..end, t);
                    }
                }
            },
        }
    }

    /// An input from nothing: random bytes, or (with tokens) a run of tokens mixed with
    /// random bytes, at most `max_len` bytes long.
    pub fn generate(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.rng.index(max_len + 1);
        if self.tokens.is_empty() || self.rng.one_in(4) {
            return self.rng.bytes(len);
        }
        let mut out = Vec::new();
        while out.len() < len {
            if self.rng.one_in(4) {
                out.push(self.rng.next_u64() as u8);
            } else {
                let t = self.rng.index(self.tokens.len());
                out.extend_from_slice(&self.tokens[t]);
            }
        }
        out.truncate(max_len);
        out
    }
}

/// The case being checked, for the watchdog: its number, start and input.
type Running = (u64, Instant, Arc<Vec<u8>>);

/// What a fuzz run did, for its test to check and `scripts/fuzz.sh` to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Cases run.
    pub cases: u64,
    /// Cases the parser accepted (the check returned true).
    pub accepted: u64,
}

/// One fuzz or property target: a name, a seed and a case count.
#[derive(Debug, Clone)]
pub struct Fuzz {
    name: String,
    seed: u64,
    cases: u64,
    only: Option<u64>,
    case_limit: Duration,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    // An unreadable value must not quietly run the defaults instead of what was asked.
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// FNV-1a of the target's name: each target gets its own stream from the same seed.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Fuzz {
    /// A target called `name` running [`DEFAULT_CASES`] cases with seed 1, unless the
    /// environment says otherwise (`ONEIMAGE_FUZZ_CASES`, `ONEIMAGE_FUZZ_SEED`,
    /// `ONEIMAGE_FUZZ_CASE`, `ONEIMAGE_FUZZ_CASE_MS`).
    pub fn new(name: &str) -> Fuzz {
        Fuzz {
            name: name.to_string(),
            seed: env_u64("ONEIMAGE_FUZZ_SEED").unwrap_or(1),
            cases: env_u64("ONEIMAGE_FUZZ_CASES").unwrap_or(DEFAULT_CASES),
            only: env_u64("ONEIMAGE_FUZZ_CASE"),
            // Generous: tests run unoptimised on shared, loaded machines (a 5 ms case
            // was seen to take 2 s there). A parser that loops takes forever.
            case_limit: Duration::from_millis(env_u64("ONEIMAGE_FUZZ_CASE_MS").unwrap_or(10_000)),
        }
    }

    /// Runs a `n`-th of the cases: for targets whose every case does the work of about
    /// `n` ordinary ones (writing a whole filesystem first).
    pub fn cost(mut self, n: u64) -> Fuzz {
        self.cases = (self.cases / n.max(1)).max(1);
        self
    }

    /// Runs the cases: `input` makes case `i`'s bytes from a mutator seeded for it,
    /// `check` parses them, asserts what must hold and returns whether they were
    /// accepted. A panic or a case slower than the limit is a finding: its input is saved
    /// and the test fails with the command that replays it.
    pub fn run(
        &self,
        mut input: impl FnMut(&mut Mutator, u64) -> Vec<u8>,
        mut check: impl FnMut(&[u8]) -> bool,
    ) -> Report {
        let started = Instant::now();
        let mut report = Report {
            cases: 0,
            accepted: 0,
        };
        let mut slowest = (Duration::ZERO, 0);
        let range = match self.only {
            Some(i) => i..i + 1,
            None => 0..self.cases,
        };
        // A case that never ends would hang the suite without a word: a watchdog saves
        // its input, says which case it is and ends the process.
        let current: Arc<Mutex<Option<Running>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let (current, stop, me) = (current.clone(), stop.clone(), self.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let hung = match &*current.lock().unwrap_or_else(|e| e.into_inner()) {
                        Some((case, t, bytes)) if t.elapsed() > 6 * me.case_limit => {
                            Some((*case, t.elapsed(), bytes.clone()))
                        }
                        _ => None,
                    };
                    if let Some((case, took, bytes)) = hung {
                        let saved = me.save(case, &bytes);
                        eprintln!(
                            "FINDING fuzz {}: case {case} of seed {} still running after {took:?} (limit {:?}); input saved to {saved}; replay with {}",
                            me.name,
                            me.seed,
                            me.case_limit,
                            me.replay(case)
                        );
                        std::process::abort();
                    }
                }
            })
        };
        for case in range {
            let rng = Rng::new(name_hash(&self.name) ^ self.seed.rotate_left(32) ^ case);
            let mut m = Mutator::new(rng);
            let bytes = Arc::new(input(&mut m, case));
            *current.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((case, Instant::now(), bytes.clone()));
            let t = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| check(&bytes)));
            let took = t.elapsed();
            *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
            match r {
                Ok(accepted) => report.accepted += u64::from(accepted),
                Err(panic) => {
                    stop.store(true, Ordering::Relaxed);
                    let saved = self.save(case, &bytes);
                    eprintln!(
                        "FINDING fuzz {}: case {case} of seed {} panicked; input saved to {saved}; replay with {}",
                        self.name,
                        self.seed,
                        self.replay(case)
                    );
                    resume_unwind(panic);
                }
            }
            if took > self.case_limit {
                stop.store(true, Ordering::Relaxed);
                let saved = self.save(case, &bytes);
                panic!(
                    "FINDING fuzz {}: case {case} of seed {} took {took:?} (limit {:?}); input saved to {saved}; replay with {}",
                    self.name,
                    self.seed,
                    self.case_limit,
                    self.replay(case)
                );
            }
            if took > slowest.0 {
                slowest = (took, case);
            }
            report.cases += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let _ = watchdog.join();
        eprintln!(
            "fuzz {}: {} cases, seed {}, {} accepted, {:.1} s, slowest case {} ({:?})",
            self.name,
            report.cases,
            self.seed,
            report.accepted,
            started.elapsed().as_secs_f64(),
            slowest.1,
            slowest.0
        );
        report
    }

    fn replay(&self, case: u64) -> String {
        format!(
            "ONEIMAGE_FUZZ_SEED={} ONEIMAGE_FUZZ_CASE={case} cargo test {}",
            self.seed, self.name
        )
    }

    /// Writes a finding's input where `scripts/fuzz.sh` collects them.
    fn save(&self, case: u64, bytes: &[u8]) -> String {
        let dir = std::env::var_os("ONEIMAGE_FUZZ_FINDINGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("oneimage-fuzz-findings"));
        let path = dir.join(format!("{}-seed{}-case{case}.bin", self.name, self.seed));
        match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, bytes)) {
            Ok(()) => path.display().to_string(),
            Err(e) => format!("nowhere ({}: {e})", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_inputs_other_seed_other_inputs() {
        let base: Vec<u8> = (0..200u8).collect();
        let run = |seed: u64| {
            let mut m = Mutator::new(Rng::new(seed));
            m.hot(std::slice::from_ref(&(10..20)));
            (0..50).map(|_| m.mutate(&base)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn mutations_change_lengths_and_hit_hot_ranges() {
        let base = vec![0u8; 4096];
        let mut m = Mutator::new(Rng::new(3));
        m.hot(std::slice::from_ref(&(100..108)));
        let (mut shorter, mut longer, mut hot) = (0, 0, 0);
        for _ in 0..2000 {
            let out = m.mutate(&base);
            shorter += usize::from(out.len() < base.len());
            longer += usize::from(out.len() > base.len());
            hot += usize::from(out.get(100..108).is_some_and(|w| w != [0u8; 8]));
        }
        assert!(shorter > 100 && longer > 100, "{shorter} {longer}");
        assert!(hot > 500, "{hot}");
    }

    #[test]
    fn extremes_fit_their_width() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!(r.extreme(1) <= 0xff);
            assert!(r.extreme(2) <= 0xffff);
            assert!(r.extreme(4) <= 0xffff_ffff);
        }
    }

    #[test]
    fn a_panicking_case_fails_the_run() {
        let f = Fuzz {
            name: "testing_self_check".into(),
            seed: 5,
            cases: 100,
            only: None,
            case_limit: Duration::from_secs(60),
        };
        let r = catch_unwind(AssertUnwindSafe(|| {
            f.run(
                |m, _| m.rng.bytes(4),
                |b| if b[0] == 0 { panic!("boom") } else { true },
            )
        }));
        assert!(r.is_err());
        let ok = f.run(|m, _| m.rng.bytes(4), |b| b[0] < 128);
        assert_eq!(ok.cases, 100);
        assert!(ok.accepted > 20 && ok.accepted < 80, "{ok:?}");
    }
}
