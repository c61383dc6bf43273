//! Every fuzz target for a bounded number of cases (the long runs are `dynamokv-fuzz
//! --minutes N`), and the runner's own checks: it must catch a panic, a broken property and
//! an allocation past the bound, or a clean run would prove nothing.

use dynamokv_fuzz::engine::{self, Budget, Options, Target};
use dynamokv_fuzz::targets;

fn opts(cases: u64) -> Options {
    Options {
        seed: 20261129,
        budget: Budget::Cases(cases),
        ..Options::default()
    }
}

#[test]
fn every_target_survives_its_bounded_run() {
    let all = targets::all();
    assert_eq!(
        all.len(),
        6,
        "peer_stream, hello, frame, context, resp, http"
    );
    for t in &all {
        let r = engine::run(t, &opts(4_000));
        if let Some(f) = &r.failure {
            panic!(
                "{}: {} (input of {} bytes: {:02x?})",
                t.name,
                f.what,
                f.input.len(),
                &f.input[..f.input.len().min(256)]
            );
        }
        assert_eq!(r.cases, 4_000, "{}", t.name);
        // The structure-aware inputs get past the decoder's first checks, and the rest do
        // not: a target that only ever failed or only ever decoded would test one path.
        assert!(
            r.decoded() > 100,
            "{}: only {} inputs decoded",
            t.name,
            r.decoded()
        );
        assert!(r.decoded() < r.cases, "{}: every input decoded", t.name);
        assert!(r.outcomes.len() >= 5, "{}: {:?}", t.name, r.outcomes);
    }
}

#[test]
fn the_same_seed_feeds_the_same_inputs() {
    let t = targets::by_name("frame").expect("frame target");
    let a = engine::run(&t, &opts(500));
    let b = engine::run(&t, &opts(500));
    assert_eq!(a.outcomes, b.outcomes);
}

fn fake(check: fn(&[u8]) -> Result<String, String>) -> Target {
    Target {
        name: "fake",
        about: "a target with a planted bug",
        seeds: || vec![b"seed".to_vec()],
        generate: |u| Ok(u.bytes(u.len().min(16))?.to_vec()),
        check,
    }
}

#[test]
fn the_runner_catches_a_panic() {
    let t = fake(|input| {
        if input.first() == Some(&b'*') {
            panic!("planted panic");
        }
        Ok("ok".into())
    });
    let f = engine::run(&t, &opts(100_000))
        .failure
        .expect("the panic is found");
    assert!(f.what.contains("planted panic"), "{}", f.what);
    assert_eq!(f.input.first(), Some(&b'*'));
}

#[test]
fn the_runner_catches_a_broken_property() {
    let t = fake(|input| {
        if input.len() > 3 && input[3] == 0xff {
            Err("planted property".into())
        } else {
            Ok("ok".into())
        }
    });
    let f = engine::run(&t, &opts(100_000)).failure.expect("found");
    assert!(f.what.contains("planted property"), "{}", f.what);
}

#[test]
fn the_runner_catches_an_allocation_past_the_bound() {
    let t = fake(|input| {
        // What a decoder trusting a claimed length would do.
        if input.len() > 4 && input[0] == 0xff {
            let claimed = u32::from_be_bytes([input[1], input[2], input[3], input[4]]) as usize;
            let v: Vec<u8> = Vec::with_capacity(claimed.min(1 << 30));
            std::hint::black_box(&v);
        }
        Ok("ok".into())
    });
    let r = engine::run(&t, &opts(200_000));
    let f = r.failure.expect("the allocation is found");
    assert!(f.what.contains("allocated"), "{}", f.what);
}
