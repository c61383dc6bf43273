//! The runner: picks inputs (random bytes, mutations of the corpus, structure-aware inputs built
//! by a target's generator), feeds each to the target, and checks that it neither panicked,
//! broke one of the target's properties, allocated more than [`alloc_bound`] nor ran longer
//! than the hang limit.
//!
//! Without coverage instrumentation (which needs a nightly compiler), the corpus grows by
//! outcome instead: an input whose outcome (decoded, or the decoder's error with digits
//! blanked) was not seen before joins the corpus, so later mutations start from inputs that
//! reach different places of the decoder.

use crate::alloc;
use arbitrary::Unstructured;
use dynamokv_core::rng::Rng;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One decoder under test.
pub struct Target {
    /// Its name on the command line.
    pub name: &'static str,
    /// What it feeds and to what.
    pub about: &'static str,
    /// Valid inputs to start the corpus from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Builds a structure-aware input from random bytes.
    pub generate: fn(&mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>>,
    /// Feeds one input to the decoder: `Ok(outcome)`, or `Err` when a property the decoder
    /// promises does not hold (a decode error is an outcome, not a failure).
    pub check: fn(&[u8]) -> Result<String, String>,
}

/// How long to run.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// This many inputs.
    Cases(u64),
    /// Until this long has passed.
    Time(Duration),
}

/// How to run a target.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Seed of the input choices: the same seed and budget in cases give the same inputs.
    pub seed: u64,
    /// How long to run.
    pub budget: Budget,
    /// Longest input made.
    pub max_len: usize,
    /// A case running longer than this is a hang: the input is saved and the process exits.
    pub hang_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seed: 1,
            budget: Budget::Cases(1_000),
            max_len: 128 * 1024,
            hang_after: Duration::from_secs(5),
        }
    }
}

/// What a case did wrong.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The input.
    pub input: Vec<u8>,
    /// The panic message, the broken property or the allocation.
    pub what: String,
}

/// What a run saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The target's name.
    pub target: String,
    /// Inputs fed.
    pub cases: u64,
    /// Outcomes seen, with how many inputs had each.
    pub outcomes: BTreeMap<String, u64>,
    /// Inputs in the corpus at the end (seeds included).
    pub corpus: usize,
    /// The most bytes one case had live at once beyond what was live before it.
    pub max_alloc: isize,
    /// The longest case.
    pub slowest: Duration,
    /// How long the run took.
    pub elapsed: Duration,
    /// The first failure; the run stops at it.
    pub failure: Option<Failure>,
}

impl Report {
    /// Inputs that decoded to something (outcomes starting with `ok`).
    pub fn decoded(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(k, _)| k.starts_with("ok"))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The most bytes one decode may have live at once: 8 MiB plus 64 bytes per input byte. The
/// constant covers serde's capped pre-allocation of a claimed sequence length (at most 1 MiB
/// per sequence being read) at the few levels of nesting the messages have; everything else
/// must be in proportion to what was actually sent.
pub fn alloc_bound(input_len: usize) -> isize {
    (8 << 20) + 64 * input_len as isize
}

const CORPUS_MAX: usize = 8192;

/// Runs `target` under `opts`.
pub fn run(target: &Target, opts: &Options) -> Report {
    let mut rng = Rng::new(opts.seed);
    let mut corpus: Vec<Vec<u8>> = (target.seeds)();
    let mut report = Report {
        target: target.name.to_owned(),
        ..Report::default()
    };
    let watch = Watchdog::start(target.name, opts.hang_after);
    let start = Instant::now();
    loop {
        let done = match opts.budget {
            Budget::Cases(n) => report.cases >= n,
            Budget::Time(d) => start.elapsed() >= d,
        };
        if done {
            break;
        }
        let input = next_input(&mut rng, target, &corpus, opts.max_len);
        watch.begin(&input);
        let before = alloc::live();
        alloc::reset_peak();
        let t = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.check)(&input)));
        let took = t.elapsed();
        let used = alloc::peak() - before;
        watch.end();
        report.cases += 1;
        report.slowest = report.slowest.max(took);
        report.max_alloc = report.max_alloc.max(used);
        let outcome = match result {
            Err(panic) => Err(format!("panicked: {}", panic_message(&panic))),
            Ok(Err(broken)) => Err(format!("property broken: {broken}")),
            Ok(Ok(_)) if used > alloc_bound(input.len()) => Err(format!(
                "allocated {used} bytes at once for a {}-byte input (bound {})",
                input.len(),
                alloc_bound(input.len())
            )),
            Ok(Ok(outcome)) => Ok(outcome),
        };
        match outcome {
            Ok(outcome) => {
                let label = label(&outcome);
                let count = report.outcomes.entry(label).or_insert(0);
                if *count == 0 && corpus.len() < CORPUS_MAX {
                    corpus.push(input);
                }
                *count += 1;
            }
            Err(what) => {
                report.failure = Some(Failure { input, what });
                break;
            }
        }
    }
    report.corpus = corpus.len();
    report.elapsed = start.elapsed();
    report
}

/// An outcome with digit runs blanked and cut to 96 characters, so that "frame of 17 bytes"
/// and "frame of 18 bytes" are one outcome.
fn label(outcome: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in outcome.chars().take(96) {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

fn next_input(rng: &mut Rng, target: &Target, corpus: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut input = match rng.below(10) {
        0..=1 => random_bytes(rng, max_len),
        2..=5 if !corpus.is_empty() => {
            let base = corpus[rng.below(corpus.len() as u64) as usize].clone();
            mutate(rng, base, corpus)
        }
        6 => {
            let generated = generated(rng, target);
            mutate(rng, generated, corpus)
        }
        _ => generated(rng, target),
    };
    input.truncate(max_len);
    input
}

fn generated(rng: &mut Rng, target: &Target) -> Vec<u8> {
    let len = [64, 512, 4096][rng.below(3) as usize];
    let n = rng.below(len) as usize + 8;
    let raw = random_bytes_exact(rng, n);
    (target.generate)(&mut Unstructured::new(&raw)).unwrap_or_default()
}

fn random_bytes(rng: &mut Rng, max_len: usize) -> Vec<u8> {
    let cap = [16, 256, 4096, max_len][rng.below(4) as usize].min(max_len);
    let len = rng.below(cap as u64 + 1) as usize;
    random_bytes_exact(rng, len)
}

fn random_bytes_exact(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Byte values decoders treat specially: bounds, CR/LF, escapes, RESP type bytes.
const INTERESTING_BYTES: [u8; 12] = [
    0, 1, 0x7f, 0x80, 0xff, b'\r', b'\n', b'%', b'*', b'$', b'-', b'0',
];

/// Sequences that stand for lengths and counts: the largest 32-bit prefixes, the longest
/// LEB128 varints postcard reads, and numbers in ASCII.
const INTERESTING_SEQUENCES: [&[u8]; 9] = [
    &[0xff, 0xff, 0xff, 0xff],
    &[0x7f, 0xff, 0xff, 0xff],
    &[0x00, 0x01, 0x00, 0x01],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    b"-1",
    b"4294967295",
    b"9223372036854775807",
    b"%FF",
];

fn mutate(rng: &mut Rng, mut input: Vec<u8>, corpus: &[Vec<u8>]) -> Vec<u8> {
    for _ in 0..rng.range(1, 8) {
        let len = input.len() as u64;
        let at = rng.below(len + 1) as usize;
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len) as usize;
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len) as usize;
                input[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len() as u64) as usize];
            }
            2 => {
                let n = rng.range(1, 16) as usize;
                let bytes = random_bytes_exact(rng, n);
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let end = (at + rng.range(1, 64) as usize).min(input.len());
                input.drain(at..end);
            }
            4 if len > 0 => {
                let from = rng.below(len) as usize;
                let end = (from + rng.range(1, 256) as usize).min(input.len());
                let chunk = input[from..end].to_vec();
                input.splice(at..at, chunk);
            }
            5 => input.truncate(at),
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len() as u64) as usize];
                let from = rng.below(other.len() as u64 + 1) as usize;
                let end = (from + rng.range(1, 512) as usize).min(other.len());
                input.splice(at..at, other[from..end].iter().copied());
            }
            _ => {
                let seq =
                    INTERESTING_SEQUENCES[rng.below(INTERESTING_SEQUENCES.len() as u64) as usize];
                let end = (at + seq.len()).min(input.len());
                if rng.chance(0.5) {
                    input.splice(at..end, seq.iter().copied());
                } else {
                    input.splice(at..at, seq.iter().copied());
                }
            }
        }
    }
    input
}

/// Watches the running case from another thread; a case past the hang limit has its input
/// saved to `fuzz-hang-<target>.bin` and the process exits with status 2 (a running decode
/// cannot be interrupted).
struct Watchdog {
    started_ms: Arc<AtomicU64>,
    input: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
}

impl Watchdog {
    fn start(name: &'static str, hang_after: Duration) -> Watchdog {
        let w = Watchdog {
            started_ms: Arc::new(AtomicU64::new(0)),
            input: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            epoch: Instant::now(),
        };
        let (started, input, stop, epoch) = (
            w.started_ms.clone(),
            w.input.clone(),
            w.stop.clone(),
            w.epoch,
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let s = started.load(Ordering::Relaxed);
                let now = epoch.elapsed().as_millis() as u64;
                if s != 0 && now.saturating_sub(s) > hang_after.as_millis() as u64 {
                    let input = input.lock().map(|i| i.clone()).unwrap_or_default();
                    let path = format!("fuzz-hang-{name}.bin");
                    let _ = std::fs::write(&path, &input);
                    eprintln!(
                        "FAILURE {name}: one input ran longer than {hang_after:?} (a hang); \
                         {} bytes saved to {path}",
                        input.len()
                    );
                    std::process::exit(2);
                }
            }
        });
        w
    }

    fn begin(&self, input: &[u8]) {
        if let Ok(mut slot) = self.input.lock() {
            slot.clear();
            slot.extend_from_slice(input);
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        self.started_ms.store(now.max(1), Ordering::Relaxed);
    }

    fn end(&self) {
        self.started_ms.store(0, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_blank_digits() {
        assert_eq!(
            label("frame of 17 bytes, 3 left"),
            "frame of # bytes, # left"
        );
    }

    #[test]
    fn mutation_is_reproducible_from_the_seed() {
        let corpus = vec![b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()];
        let a = mutate(&mut Rng::new(7), corpus[0].clone(), &corpus);
        let b = mutate(&mut Rng::new(7), corpus[0].clone(), &corpus);
        assert_eq!(a, b);
        let c = mutate(&mut Rng::new(8), corpus[0].clone(), &corpus);
        assert_ne!(a, c, "another seed mutates differently");
    }
}
