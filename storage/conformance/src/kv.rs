//! The key-value contract: atomic ordered batches, ordered bounded scans, separate column
//! families, versioned state puts, durability across a clean reopen and a crash.

use zoftoken_storage::{Cf, Durability, KvError, KvStore, WriteBatch};

use crate::Harness;

fn put(b: &mut WriteBatch, cf: Cf, k: &str, v: &str) {
    b.put(cf, k.as_bytes(), v.as_bytes());
}

fn get(kv: &dyn KvStore, cf: Cf, k: &str) -> Option<String> {
    kv.get(cf, k.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

fn keys(kv: &dyn KvStore, cf: Cf, start: &str, end: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    kv.scan(cf, start.as_bytes(), end.map(str::as_bytes), &mut |k, _| {
        out.push(String::from_utf8(k.to_vec()).unwrap());
        true
    })
    .unwrap();
    out
}

/// Later writes of a batch win over earlier ones; the whole batch lands.
pub fn kv_batches_are_atomic_and_ordered(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let mut b = WriteBatch::new();
    put(&mut b, Cf::Tokens, "a", "1");
    put(&mut b, Cf::Tokens, "a", "2");
    put(&mut b, Cf::Tokens, "b", "1");
    b.delete(Cf::Tokens, "b");
    b.delete(Cf::Tokens, "c");
    put(&mut b, Cf::Tokens, "c", "3");
    kv.write(&b, Durability::Wal).unwrap();
    assert_eq!(get(&*kv, Cf::Tokens, "a").as_deref(), Some("2"));
    assert_eq!(get(&*kv, Cf::Tokens, "b"), None);
    assert_eq!(get(&*kv, Cf::Tokens, "c").as_deref(), Some("3"));
    let mut b = WriteBatch::new();
    b.delete(Cf::Tokens, "a");
    put(&mut b, Cf::State, "x", "y");
    kv.write(&b, Durability::Fsync).unwrap();
    assert_eq!(get(&*kv, Cf::Tokens, "a"), None);
    assert_eq!(get(&*kv, Cf::State, "x").as_deref(), Some("y"));
}

/// Scans visit `start <= key < end` in byte order and stop when told.
pub fn kv_scans_are_ordered_and_bounded(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let mut b = WriteBatch::new();
    for k in ["d", "a", "c", "b", "e", "ab"] {
        put(&mut b, Cf::Outbox, k, "v");
    }
    kv.write(&b, Durability::Wal).unwrap();
    assert_eq!(
        keys(&*kv, Cf::Outbox, "", None),
        ["a", "ab", "b", "c", "d", "e"]
    );
    assert_eq!(keys(&*kv, Cf::Outbox, "ab", Some("d")), ["ab", "b", "c"]);
    assert_eq!(keys(&*kv, Cf::Outbox, "f", None), Vec::<String>::new());
    let mut seen = 0;
    kv.scan(Cf::Outbox, b"", None, &mut |_, _| {
        seen += 1;
        seen < 2
    })
    .unwrap();
    assert_eq!(seen, 2);
    let (k, _) = kv.last(Cf::Outbox).unwrap().unwrap();
    assert_eq!(k, b"e");
    assert_eq!(kv.last(Cf::Transactions).unwrap(), None);
}

/// Several keys read at once come back in the order asked, absent ones as `None`, a key
/// asked for twice twice, from the column family asked for only; many keys at once too.
pub fn kv_get_many_answers_in_the_order_asked(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let mut b = WriteBatch::new();
    put(&mut b, Cf::Secrets, "a", "1");
    put(&mut b, Cf::Secrets, "c", "3");
    put(&mut b, Cf::State, "b", "other family");
    for i in 0..2500 {
        put(&mut b, Cf::Tokens, &format!("k{i:05}"), &i.to_string());
    }
    kv.write(&b, Durability::Wal).unwrap();
    let got = kv
        .get_many(Cf::Secrets, &[b"c", b"b", b"a", b"c", b""])
        .unwrap();
    let want: Vec<Option<Vec<u8>>> = vec![
        Some(b"3".to_vec()),
        None,
        Some(b"1".to_vec()),
        Some(b"3".to_vec()),
        None,
    ];
    assert_eq!(got, want);
    assert_eq!(
        kv.get_many(Cf::Secrets, &[]).unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );
    // More keys than one query of a store may take: every one answered, in order.
    let names: Vec<String> = (0..3000).rev().map(|i| format!("k{i:05}")).collect();
    let keys: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
    let got = kv.get_many(Cf::Tokens, &keys).unwrap();
    assert_eq!(got.len(), 3000);
    for (i, v) in (0..3000).rev().zip(got) {
        let want = (i < 2500).then(|| i.to_string().into_bytes());
        assert_eq!(v, want, "k{i:05}");
    }
}

/// The same key in two column families is two records.
pub fn kv_column_families_are_separate(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let mut b = WriteBatch::new();
    for (i, cf) in Cf::ALL.into_iter().enumerate() {
        put(&mut b, cf, "k", &i.to_string());
    }
    kv.write(&b, Durability::Wal).unwrap();
    for (i, cf) in Cf::ALL.into_iter().enumerate() {
        assert_eq!(get(&*kv, cf, "k"), Some(i.to_string()), "{cf}");
    }
}

fn state_value(version: u32, tag: u8) -> Vec<u8> {
    let mut v = vec![1];
    v.extend_from_slice(&version.to_be_bytes());
    v.push(tag);
    v
}

/// Versioned state puts keep the newest version whatever the write order, in one batch or
/// across batches and reopenings, across version wrap-around, and after a delete. A shared
/// store compares and sets instead ([`kv_shared_versioned_puts_compare_and_set`]).
pub fn kv_put_newer_keeps_the_newest_version(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    if kv.is_shared() {
        drop(kv);
        return kv_shared_versioned_puts_compare_and_set(h);
    }
    let write = |kv: &dyn KvStore, key: &str, version: u32, tag: u8| {
        let mut b = WriteBatch::new();
        b.put_newer(Cf::State, key.as_bytes(), state_value(version, tag));
        kv.write(&b, Durability::Wal).unwrap();
    };
    write(&*kv, "in-order", 1, 1);
    write(&*kv, "in-order", 2, 2);
    write(&*kv, "reordered", 5, 5);
    write(&*kv, "reordered", 4, 4);
    write(&*kv, "wrapped", u32::MAX, 1);
    write(&*kv, "wrapped", 0, 2);
    write(&*kv, "wrapped", u32::MAX - 1, 3);
    let mut b = WriteBatch::new();
    b.put_newer(Cf::State, "same-batch", state_value(9, 9));
    b.put_newer(Cf::State, "same-batch", state_value(8, 8));
    kv.write(&b, Durability::Wal).unwrap();
    let value = |kv: &dyn KvStore, k: &str| kv.get(Cf::State, k.as_bytes()).unwrap();
    assert_eq!(value(&*kv, "in-order"), Some(state_value(2, 2)));
    assert_eq!(value(&*kv, "reordered"), Some(state_value(5, 5)));
    assert_eq!(value(&*kv, "wrapped"), Some(state_value(0, 2)));
    assert_eq!(value(&*kv, "same-batch"), Some(state_value(9, 9)));
    kv.flush().unwrap();
    write(&*kv, "reordered", 3, 3);
    assert_eq!(value(&*kv, "reordered"), Some(state_value(5, 5)));
    drop(kv);
    let kv = h.open().unwrap();
    assert_eq!(value(&*kv, "reordered"), Some(state_value(5, 5)));
    write(&*kv, "reordered", 6, 6);
    assert_eq!(value(&*kv, "reordered"), Some(state_value(6, 6)));
    let mut b = WriteBatch::new();
    b.delete(Cf::State, "reordered");
    kv.write(&b, Durability::Wal).unwrap();
    write(&*kv, "reordered", 1, 7);
    assert_eq!(value(&*kv, "reordered"), Some(state_value(1, 7)));
    let mut seen = Vec::new();
    kv.scan(Cf::State, b"", None, &mut |k, v| {
        seen.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen.contains(&(b"wrapped".to_vec(), state_value(0, 2))));
}

/// A store shared by several servers: a versioned state put applies only over the version
/// just before it (or no record, in a batch that creates the token: it writes the key's
/// `secrets` record too), in order within a batch; a stale or skipping write, or one to a
/// token deleted meanwhile, fails the whole batch with [`KvError::Conflict`], writing nothing
/// of it.
pub fn kv_shared_versioned_puts_compare_and_set(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    assert!(kv.is_shared());
    let write = |kv: &dyn KvStore, key: &str, versions: &[(u32, u8)]| {
        let mut b = WriteBatch::new();
        for (version, tag) in versions {
            b.put_newer(Cf::State, key.as_bytes(), state_value(*version, *tag));
        }
        b.put(Cf::Outbox, format!("{key}/{versions:?}"), "event");
        kv.write(&b, Durability::Wal)
    };
    let create = |kv: &dyn KvStore, key: &str, version: u32, tag: u8| {
        let mut b = WriteBatch::new();
        b.put(Cf::Secrets, key.as_bytes(), "sealed");
        b.put_newer(Cf::State, key.as_bytes(), state_value(version, tag));
        kv.write(&b, Durability::Wal)
    };
    let value = |kv: &dyn KvStore, k: &str| kv.get(Cf::State, k.as_bytes()).unwrap();
    let conflict = |r: Result<(), KvError>| matches!(r, Err(KvError::Conflict(_)));
    // No record: only a batch that creates the token may write its state.
    assert!(conflict(write(&*kv, "t", &[(1, 1)])));
    assert_eq!(value(&*kv, "t"), None);
    create(&*kv, "t", 1, 1).unwrap();
    write(&*kv, "t", &[(2, 2)]).unwrap();
    // Another writer's view: stale (1 again) or ahead of what is stored (4 over 2).
    assert!(conflict(write(&*kv, "t", &[(1, 9)])));
    assert!(conflict(write(&*kv, "t", &[(4, 9)])));
    assert_eq!(value(&*kv, "t"), Some(state_value(2, 2)));
    // Nothing of a refused batch was written, not even its other records.
    assert_eq!(keys(&*kv, Cf::Outbox, "", None).len(), 1);
    // Several versions of one token in one batch: compared against the first's predecessor.
    write(&*kv, "t", &[(3, 3), (4, 4)]).unwrap();
    assert_eq!(value(&*kv, "t"), Some(state_value(4, 4)));
    let mut b = WriteBatch::new();
    b.put_newer(Cf::State, "t", state_value(5, 5));
    b.put_newer(Cf::State, "other", state_value(7, 7));
    b.put_newer(Cf::State, "t", state_value(9, 9));
    assert!(conflict(kv.write(&b, Durability::Wal)), "9 is not after 5");
    assert_eq!(value(&*kv, "other"), None);
    // Wrap-around: the version after u32::MAX is 0.
    create(&*kv, "wrapped", u32::MAX - 1, 1).unwrap();
    write(&*kv, "wrapped", &[(u32::MAX, 2)]).unwrap();
    write(&*kv, "wrapped", &[(0, 3)]).unwrap();
    assert_eq!(value(&*kv, "wrapped"), Some(state_value(0, 3)));
    // Deleted (by another writer): a write from the old view is refused; the token created
    // again starts anew, in a later batch or in the same one.
    let mut b = WriteBatch::new();
    b.delete(Cf::State, "t");
    kv.write(&b, Durability::Wal).unwrap();
    assert!(conflict(write(&*kv, "t", &[(5, 5)])));
    assert_eq!(value(&*kv, "t"), None);
    create(&*kv, "t", 1, 7).unwrap();
    let mut b = WriteBatch::new();
    b.delete(Cf::State, "t");
    b.put_newer(Cf::State, "t", state_value(1, 8));
    kv.write(&b, Durability::Wal).unwrap();
    assert_eq!(value(&*kv, "t"), Some(state_value(1, 8)));
    drop(kv);
    let kv = h.open().unwrap();
    assert_eq!(value(&*kv, "t"), Some(state_value(1, 8)));
    write(&*kv, "t", &[(2, 9)]).unwrap();
    assert_eq!(value(&*kv, "t"), Some(state_value(2, 9)));
}

/// `compare_and_put` replaces a value only if it is the expected one (or absent, when no
/// value is expected), and says whether it did.
pub fn kv_compare_and_put_is_atomic(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    assert!(kv.compare_and_put(Cf::Meta, b"epoch", None, b"1").unwrap());
    assert!(!kv.compare_and_put(Cf::Meta, b"epoch", None, b"2").unwrap());
    assert!(!kv
        .compare_and_put(Cf::Meta, b"epoch", Some(b"0"), b"2")
        .unwrap());
    assert_eq!(get(&*kv, Cf::Meta, "epoch").as_deref(), Some("1"));
    assert!(kv
        .compare_and_put(Cf::Meta, b"epoch", Some(b"1"), b"2")
        .unwrap());
    assert_eq!(get(&*kv, Cf::Meta, "epoch").as_deref(), Some("2"));
    // Many threads racing from the same start: each value is handed out once.
    let kv: std::sync::Arc<dyn KvStore> = kv;
    let won: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let kv = kv.clone();
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for _ in 0..25 {
                        loop {
                            let old = kv.get(Cf::Meta, b"counter").unwrap();
                            let n = old
                                .as_deref()
                                .map_or(0, |v| u32::from_be_bytes(v.try_into().unwrap()));
                            if kv
                                .compare_and_put(
                                    Cf::Meta,
                                    b"counter",
                                    old.as_deref(),
                                    &(n + 1).to_be_bytes(),
                                )
                                .unwrap()
                            {
                                mine.push(n + 1);
                                break;
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut sorted = won.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=100).collect::<Vec<u32>>());
}

/// Everything written is there after a flush and a clean reopen.
pub fn kv_survives_clean_reopen(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    let mut b = WriteBatch::new();
    for i in 0..1000 {
        put(&mut b, Cf::Secrets, &format!("{i:05}"), &i.to_string());
    }
    kv.write(&b, Durability::Wal).unwrap();
    kv.flush().unwrap();
    drop(kv);
    let kv = h.open().unwrap();
    assert_eq!(keys(&*kv, Cf::Secrets, "", None).len(), 1000);
    assert_eq!(get(&*kv, Cf::Secrets, "00999").as_deref(), Some("999"));
}

/// Every completed write survives a crash (no flush, no clean close), with either durability.
pub fn kv_survives_crash(h: &mut dyn Harness) {
    let kv = h.open().unwrap();
    for i in 0..200 {
        let mut b = WriteBatch::new();
        put(&mut b, Cf::State, &format!("{i:05}"), "a");
        put(&mut b, Cf::Outbox, &format!("{i:05}"), "b");
        let d = if i % 2 == 0 {
            Durability::Wal
        } else {
            Durability::Fsync
        };
        kv.write(&b, d).unwrap();
    }
    h.crash(kv);
    let kv = h.open().unwrap();
    assert_eq!(keys(&*kv, Cf::State, "", None).len(), 200);
    assert_eq!(keys(&*kv, Cf::Outbox, "", None).len(), 200);
}
