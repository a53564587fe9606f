//! The artifact cache's unit tests: keys, store and fetch, corrupt entries, eviction.

use super::*;
use serde_json::json;

fn cache(root: &Path, max: u64) -> Cache {
    Cache::new(root.join("state/.t8k-engine/artifacts"), max)
}

fn build(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let bin = dir.join(name);
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, content).unwrap();
    bin
}

#[test]
fn keys_are_canonical_and_any_part_changes_them() {
    let a = json!({"commit": "abc", "flags": ["-tags", "x"], "go": {"v": 1, "os": "linux"}});
    let b = json!({"go": {"os": "linux", "v": 1}, "flags": ["-tags", "x"], "commit": "abc"});
    assert_eq!(key_of(&a), key_of(&b));
    assert_eq!(key_of(&a).len(), 64);
    for changed in [
        json!({"commit": "abd", "flags": ["-tags", "x"], "go": {"v": 1, "os": "linux"}}),
        json!({"commit": "abc", "flags": ["x", "-tags"], "go": {"v": 1, "os": "linux"}}),
        json!({"commit": "abc", "flags": ["-tags", "x"], "go": {"v": 2, "os": "linux"}}),
        json!({"commit": "abc", "flags": ["-tags", "x"], "go": {"v": 1, "os": "linux"}, "local": null}),
    ] {
        assert_ne!(key_of(&a), key_of(&changed), "{changed}");
    }
}

#[test]
fn a_stored_build_is_linked_into_another_new_path_and_counted() {
    let root = tempfile::tempdir().unwrap();
    let c = cache(root.path(), 1 << 30);
    let parts = json!({"commit": "abc"});
    let a = build(root.path(), "sites/a/bin/tractstack-go", b"binary v1");
    let dest = root.path().join("sites/b/bin/tractstack-go.new");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    assert!(matches!(
        c.fetch(&parts, &dest).unwrap(),
        Fetched::Miss { .. }
    ));
    let stored = c.store(&parts, &a).unwrap();
    assert!(stored.linked && stored.evicted.is_empty() && stored.over_cap.is_none());
    // A stale .new from a killed build is replaced.
    std::fs::write(&dest, "stale").unwrap();
    let Fetched::Hit { entry, linked } = c.fetch(&parts, &dest).unwrap() else {
        panic!("expected a hit")
    };
    assert!(linked);
    assert_eq!(read(&dest), b"binary v1");
    assert_eq!(entry.hits, 1);
    assert_eq!(
        std::fs::metadata(&dest).unwrap().ino(),
        std::fs::metadata(&a).unwrap().ino()
    );
    assert_eq!(
        std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
        0o555
    );
    let s = c.summary().unwrap();
    assert_eq!((s.entries, s.in_use, s.bytes), (1, 1, 9));
    assert_eq!((s.stats.hits, s.stats.misses, s.stats.stores), (1, 1, 1));
    assert_eq!(s.hit_rate, Some(0.5));
    // The counts survive: a new Cache value reads them from disk.
    assert_eq!(cache(root.path(), 1 << 30).summary().unwrap().stats.hits, 1);
}

#[test]
fn a_corrupt_entry_is_found_removed_and_counted_as_a_miss() {
    let root = tempfile::tempdir().unwrap();
    let c = cache(root.path(), 1 << 30);
    let parts = json!({"commit": "abc"});
    let a = build(root.path(), "a/tractstack-go", b"good bytes");
    c.store(&parts, &a).unwrap();
    // The entry's file replaced by other bytes of the same size (bit rot, a bad copy).
    let entry = c.dir().join(key_of(&parts));
    let other = root.path().join("other");
    std::fs::write(&other, b"evil bytes").unwrap();
    std::fs::rename(&other, &entry).unwrap();
    let dest = root.path().join("b/tractstack-go.new");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let Fetched::Corrupt { why, .. } = c.fetch(&parts, &dest).unwrap() else {
        panic!("expected a corrupt entry")
    };
    assert!(why.contains("SHA-256"), "{why}");
    assert!(
        !dest.exists(),
        "nothing unverified is left at the destination"
    );
    assert!(!entry.exists());
    assert!(matches!(
        c.fetch(&parts, &dest).unwrap(),
        Fetched::Miss { .. }
    ));
    let stats = c.summary().unwrap().stats;
    assert_eq!((stats.corrupt, stats.misses, stats.hits), (1, 2, 0));
}

#[test]
fn eviction_takes_the_least_recently_used_unused_entries_and_never_one_in_use() {
    let root = tempfile::tempdir().unwrap();
    let c = cache(root.path(), 25);
    // "live" is linked from a release; "old" and "newer" are only in the cache.
    let live = build(root.path(), "site/bin/tractstack-go", &[1u8; 10]);
    c.store(&json!({"k": "live"}), &live).unwrap();
    let scratch = build(root.path(), "scratch/x", &[2u8; 10]);
    c.store(&json!({"k": "old"}), &scratch).unwrap();
    std::fs::remove_file(&scratch).unwrap();
    let scratch = build(root.path(), "scratch/y", &[3u8; 10]);
    let stored = c.store(&json!({"k": "newer"}), &scratch).unwrap();
    std::fs::remove_file(&scratch).unwrap();
    // 30 bytes over a cap of 25: the least recently used entry that no release uses goes.
    assert_eq!(stored.evicted, [key_of(&json!({"k": "old"}))]);
    assert!(stored.over_cap.is_none());
    // Now a cap nothing but the live entry can meet.
    let small = cache(root.path(), 5);
    let scratch = build(root.path(), "scratch/z", &[4u8; 10]);
    let stored = small.store(&json!({"k": "newest"}), &scratch).unwrap();
    std::fs::remove_file(&scratch).unwrap();
    // The entry just stored is still the scratch build's file, so only "newer" can go.
    assert_eq!(stored.evicted, [key_of(&json!({"k": "newer"}))]);
    assert!(stored.over_cap.unwrap().contains("live or kept releases"));
    assert_eq!(read(&live), [1u8; 10], "the live binary is untouched");
    let dest = root.path().join("other/tractstack-go.new");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    assert!(matches!(
        small.fetch(&json!({"k": "live"}), &dest).unwrap(),
        Fetched::Hit { .. }
    ));
}

#[test]
fn a_copy_placed_elsewhere_keeps_its_entry_while_a_release_is_that_copy() {
    let root = tempfile::tempdir().unwrap();
    let c = cache(root.path(), 1 << 30);
    let a = build(root.path(), "a/x", b"payload!");
    c.store(&json!({"k": 1}), &a).unwrap();
    std::fs::remove_file(&a).unwrap();
    let key = key_of(&json!({"k": 1}));
    let meta = std::fs::metadata(c.dir().join(&key)).unwrap();
    let mut entry = Cache::read_entry(&OwnDir::open(c.dir(), OWN).unwrap(), &key)
        .unwrap()
        .unwrap();
    assert!(!in_use(&entry, &meta));
    // A copy (another filesystem) switched in and then kept as the previous release.
    let live = build(root.path(), "site/bin/tractstack-go.prev", b"payload!");
    let copy_meta = std::fs::metadata(&live).unwrap();
    note_placement(
        &mut entry,
        &root.path().join("site/bin/tractstack-go.new"),
        &copy_meta,
    );
    assert!(in_use(&entry, &meta));
    std::fs::remove_file(&live).unwrap();
    assert!(!in_use(&entry, &meta));
}

/// Reads a whole small file.
fn read(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut v = Vec::new();
    File::open(path).unwrap().read_to_end(&mut v).unwrap();
    v
}
