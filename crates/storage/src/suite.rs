//! The shared test suite every [`Engine`] implementation must pass.

use crate::{DiskEngine, Engine, MemoryEngine, Space, SyncPolicy, WriteBatch};
use std::ops::Bound::{Excluded, Included, Unbounded};

fn get_put_delete(e: &dyn Engine) {
    assert_eq!(e.get(Space::Objects, b"a").unwrap(), None);
    e.put(Space::Objects, b"a", b"1").unwrap();
    assert_eq!(e.get(Space::Objects, b"a").unwrap(), Some(b"1".to_vec()));
    e.put(Space::Objects, b"a", b"2").unwrap();
    assert_eq!(e.get(Space::Objects, b"a").unwrap(), Some(b"2".to_vec()));
    e.delete(Space::Objects, b"a").unwrap();
    assert_eq!(e.get(Space::Objects, b"a").unwrap(), None);
    e.delete(Space::Objects, b"never-there").unwrap();
}

fn spaces_are_independent(e: &dyn Engine) {
    e.put(Space::Objects, b"k", b"o").unwrap();
    e.put(Space::Hints, b"k", b"h").unwrap();
    e.put(Space::Meta, b"k", b"m").unwrap();
    assert_eq!(e.get(Space::Objects, b"k").unwrap(), Some(b"o".to_vec()));
    assert_eq!(e.get(Space::Hints, b"k").unwrap(), Some(b"h".to_vec()));
    assert_eq!(e.get(Space::Meta, b"k").unwrap(), Some(b"m".to_vec()));
    e.delete(Space::Hints, b"k").unwrap();
    assert_eq!(e.get(Space::Objects, b"k").unwrap(), Some(b"o".to_vec()));
    assert_eq!(
        e.scan(Space::Hints, Unbounded, Unbounded, 10).unwrap(),
        vec![]
    );
}

fn batch_applies_in_order(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    b.put(Space::Objects, b"x".to_vec(), b"1".to_vec());
    b.put(Space::Objects, b"y".to_vec(), b"2".to_vec());
    b.delete(Space::Objects, b"x".to_vec());
    b.put(Space::Meta, b"z".to_vec(), b"3".to_vec());
    e.write(b).unwrap();
    assert_eq!(e.get(Space::Objects, b"x").unwrap(), None);
    assert_eq!(e.get(Space::Objects, b"y").unwrap(), Some(b"2".to_vec()));
    assert_eq!(e.get(Space::Meta, b"z").unwrap(), Some(b"3".to_vec()));
    e.write(WriteBatch::new()).unwrap();
}

fn scan_is_ordered_bounded_and_pages(e: &dyn Engine) {
    let keys: Vec<Vec<u8>> = (0u16..300)
        .rev()
        .map(|i| i.to_be_bytes().to_vec())
        .collect();
    for k in &keys {
        e.put(Space::Objects, k, k).unwrap();
    }
    let all = e
        .scan(Space::Objects, Unbounded, Unbounded, usize::MAX)
        .unwrap();
    assert_eq!(all.len(), 300);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ascending order");

    let lo = 10u16.to_be_bytes();
    let hi = 20u16.to_be_bytes();
    let r = e
        .scan(Space::Objects, Included(&lo), Excluded(&hi), 100)
        .unwrap();
    assert_eq!(r.len(), 10);
    assert_eq!(r[0].0, lo.to_vec());
    let r = e
        .scan(Space::Objects, Excluded(&lo), Included(&hi), 100)
        .unwrap();
    assert_eq!(r.len(), 10);
    assert_eq!(r[9].0, hi.to_vec());
    assert!(
        e.scan(Space::Objects, Included(&hi), Excluded(&lo), 100)
            .unwrap()
            .is_empty()
    );
    assert!(
        e.scan(Space::Objects, Excluded(&lo), Excluded(&lo), 100)
            .unwrap()
            .is_empty()
    );
    assert!(
        e.scan(Space::Objects, Unbounded, Unbounded, 0)
            .unwrap()
            .is_empty()
    );

    // Paging: resume after the last key until exhausted.
    let mut seen = 0;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let start = after.as_deref().map_or(Unbounded, Excluded);
        let page = e.scan(Space::Objects, start, Unbounded, 64).unwrap();
        if page.is_empty() {
            break;
        }
        seen += page.len();
        after = page.last().map(|(k, _)| k.clone());
    }
    assert_eq!(seen, 300);
}

fn binary_keys_and_values(e: &dyn Engine) {
    let k = [0u8, 255, 0, 1];
    let v = vec![0u8; 100_000];
    e.put(Space::Objects, &k, &v).unwrap();
    assert_eq!(e.get(Space::Objects, &k).unwrap(), Some(v));
    e.flush().unwrap();
}

/// One case of the suite.
type Case = (&'static str, fn(&dyn Engine));

fn run_suite(make: &dyn Fn() -> Box<dyn Engine>) {
    let cases: [Case; 5] = [
        ("get_put_delete", get_put_delete),
        ("spaces_are_independent", spaces_are_independent),
        ("batch_applies_in_order", batch_applies_in_order),
        (
            "scan_is_ordered_bounded_and_pages",
            scan_is_ordered_bounded_and_pages,
        ),
        ("binary_keys_and_values", binary_keys_and_values),
    ];
    for (name, case) in cases {
        eprintln!("suite case {name}");
        let e = make();
        case(e.as_ref());
    }
}

#[test]
fn memory_engine_passes_the_suite() {
    run_suite(&|| Box::new(MemoryEngine::new()));
}

#[test]
fn disk_engine_passes_the_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    for policy in [
        SyncPolicy::Always,
        SyncPolicy::Never,
        SyncPolicy::Periodic(std::time::Duration::from_millis(10)),
    ] {
        eprintln!("policy {policy:?}");
        run_suite(&|| {
            let dir = tempfile::tempdir().unwrap();
            let e = DiskEngine::open(dir.path(), policy).unwrap();
            dirs.lock().unwrap().push(dir);
            Box::new(e)
        });
    }
}
