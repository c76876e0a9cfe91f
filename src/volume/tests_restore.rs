//! Unit tests of restore points, restore to a time, reset, protection and expiry.

use super::restore::POINT_INTERVAL;
use super::tests::{after_power_cut, clean, file, WHO};
use super::*;
use crate::error::{Error, Result};
use crate::store::memdev::MemDevice;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A volume with the store's default retention: restore points on.
fn pvol() -> (Arc<Volume>, Arc<MemDevice>) {
    Volume::in_memory(4096, 4096).unwrap()
}

/// Waits until the next commit may take another restore point.
fn next_point() {
    std::thread::sleep(POINT_INTERVAL + Duration::from_millis(50));
}

fn read(v: &Volume, cluster: &str, name: &str) -> Vec<u8> {
    let c = v.cluster_by_name(cluster).unwrap().id;
    let a = v.lookup(c, Ino::ROOT, name.as_bytes()).unwrap();
    v.read(c, a.ino, 0, 1 << 20).unwrap()
}

fn put(v: &Volume, cluster: &str, name: &str, data: &[u8]) {
    let c = v.cluster_by_name(cluster).unwrap().id;
    let ino = match v.lookup(c, Ino::ROOT, name.as_bytes()) {
        Ok(a) => a.ino,
        Err(_) => file(v, c, name),
    };
    v.setattr(
        c,
        ino,
        &SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    v.write(c, ino, 0, data).unwrap();
    v.fsync(c, ino).unwrap();
}

fn at(t: SystemTime) -> CloneOptions {
    CloneOptions {
        at: Some(t),
        ..Default::default()
    }
}

#[test]
fn a_restore_holds_the_newest_point_at_or_before_its_time_and_survives_a_power_cut() {
    let (v, dev) = pvol();
    v.create_cluster("prod", WHO).unwrap();
    put(&v, "prod", "f", b"v1");
    let p1 = *v
        .cluster_by_name("prod")
        .unwrap()
        .restore_points
        .last()
        .unwrap();
    next_point();
    let t = SystemTime::now();
    next_point();
    put(&v, "prod", "f", b"v2");
    assert_eq!(v.cluster_by_name("prod").unwrap().restore_points.len(), 2);

    let (old, when) = v.clone_with("prod", "old", &at(t)).unwrap();
    assert_eq!(when, p1);
    assert_eq!(old.parent.as_deref(), Some("prod"));
    assert_eq!(read(&v, "old", "f"), b"v1");
    v.clone_with("prod", "new", &CloneOptions::default())
        .unwrap();
    assert_eq!(read(&v, "new", "f"), b"v2");

    let early = v.clone_with("prod", "early", &at(UNIX_EPOCH + Duration::from_secs(1)));
    match early {
        Err(Error::BadTime(why)) => assert!(why.contains("restore window"), "{why}"),
        r => panic!("a time before the window gave {r:?}"),
    }
    let later = v.clone_with(
        "prod",
        "later",
        &at(SystemTime::now() + Duration::from_secs(60)),
    );
    assert!(matches!(later, Err(Error::BadTime(why)) if why.contains("future")));
    assert!(v.cluster_by_name("early").is_err() && v.cluster_by_name("later").is_err());
    assert!(matches!(
        v.clone_with("prod", "old", &at(t)),
        Err(Error::AlreadyExists(_))
    ));

    // Points are durable with the commit that took them.
    let points = v.cluster_by_name("prod").unwrap().restore_points;
    v.commit().unwrap();
    let v = after_power_cut(&dev, 7);
    assert_eq!(v.cluster_by_name("prod").unwrap().restore_points, points);
    v.clone_with("prod", "again", &at(t)).unwrap();
    assert_eq!(read(&v, "again", "f"), b"v1");
    clean(&v);
}

#[test]
fn reset_replaces_contents_at_the_same_name_and_can_be_undone() {
    let (v, _dev) = pvol();
    v.create_cluster("prod", WHO).unwrap();
    put(&v, "prod", "f", b"v1");
    v.clone_cluster("prod", "test").unwrap();
    put(&v, "test", "f", b"mine");
    next_point();
    let before = SystemTime::now();
    put(&v, "prod", "f", b"v2");

    let test = v.cluster_by_name("test").unwrap();
    let f = v.lookup(test.id, Ino::ROOT, b"f").unwrap().ino;
    // A handle open across the reset fails after it (who uses a cluster is the
    // daemon's to ask before resetting it: tests/mount_restore.rs).
    v.open_file(test.id, f).unwrap();
    let reset = v.reset_cluster("test", ResetTo::Parent).unwrap();
    assert_ne!(reset.id, test.id, "a reset cluster gets a new id");
    assert_eq!(reset.parent.as_deref(), Some("prod"));
    assert_eq!(read(&v, "test", "f"), b"v2");
    assert!(matches!(v.read(test.id, f, 0, 10), Err(Error::NotFound)));
    v.release_file(test.id, f).unwrap();
    assert!(matches!(
        v.getattr(test.id, Ino::ROOT),
        Err(Error::NotFound)
    ));

    // Its own restore points stay: the reset can be undone.
    v.clone_with("test", "undo", &at(before)).unwrap();
    assert_eq!(read(&v, "undo", "f"), b"mine");
    // To a time: the parent's image then.
    v.reset_cluster("test", ResetTo::Time(before)).unwrap();
    assert_eq!(read(&v, "test", "f"), b"v1");

    let orphan = v.reset_cluster("prod", ResetTo::Parent);
    assert!(matches!(orphan, Err(Error::InvalidArgument(why)) if why.contains("no parent")));
    v.commit().unwrap();
    clean(&v);
}

#[test]
fn a_protected_cluster_keeps_every_name_and_refuses_delete_and_reset() {
    let (v, _dev) = pvol();
    let c = v.create_cluster("prod", WHO).unwrap().id;
    put(&v, "prod", "f", b"keep");
    v.mkdir(c, Ino::ROOT, b"d", WHO).unwrap();
    v.clone_cluster("prod", "test").unwrap();
    let events = v.watch();
    v.set_protected("prod", true).unwrap();
    assert_eq!(events.try_recv(), Ok(Event::Modified("prod".into())));
    v.set_protected("test", true).unwrap();
    assert!(v.cluster_by_name("prod").unwrap().protected);

    let refused =
        |r: Result<()>| matches!(r, Err(Error::Protected(n)) if n == "prod" || n == "test");
    assert!(refused(v.unlink(c, Ino::ROOT, b"f")));
    assert!(refused(v.rmdir(c, Ino::ROOT, b"d")));
    assert!(refused(v.delete_cluster("prod")));
    assert!(refused(v.remove_empty_cluster("prod")));
    assert!(refused(
        v.reset_cluster("test", ResetTo::Parent).map(|_| ())
    ));
    assert_eq!(Error::Protected("prod".into()).errno(), libc::EPERM);
    // Writes go on.
    put(&v, "prod", "f", b"kept");
    assert_eq!(read(&v, "prod", "f"), b"kept");

    v.set_protected("prod", false).unwrap();
    v.unlink(c, Ino::ROOT, b"f").unwrap();
    v.delete_cluster("prod").unwrap();
    assert!(v.cluster_by_name("test").unwrap().protected);
    v.commit().unwrap();
    clean(&v);
}

#[test]
fn expired_clusters_go_unless_protected_and_expiry_in_the_past_is_refused() {
    let (v, dev) = pvol();
    v.create_cluster("prod", WHO).unwrap();
    let past = SystemTime::now() - Duration::from_secs(1);
    assert!(matches!(
        v.clone_with(
            "prod",
            "tmp",
            &CloneOptions {
                expires_at: Some(past),
                ..Default::default()
            }
        ),
        Err(Error::BadTime(_))
    ));
    assert!(v.cluster_by_name("tmp").is_err());
    assert!(matches!(
        v.set_expiry("prod", Some(past)),
        Err(Error::BadTime(_))
    ));

    let soon = SystemTime::now() + Duration::from_millis(300);
    let opts = CloneOptions {
        expires_at: Some(soon),
        ..Default::default()
    };
    v.clone_with("prod", "tmp", &opts).unwrap();
    v.clone_with("prod", "kept", &opts).unwrap();
    v.set_protected("kept", true).unwrap();
    let events = v.watch();
    // The expiry is durable.
    let v = after_power_cut(&dev, 3);
    assert!(v.cluster_by_name("tmp").unwrap().expires_at.is_some());
    let events2 = v.watch();
    std::thread::sleep(Duration::from_millis(400));
    v.expire().unwrap();
    assert!(v.cluster_by_name("tmp").is_err());
    assert!(v.cluster_by_name("kept").is_ok());
    assert_eq!(events2.try_recv(), Ok(Event::Expired("tmp".into())));
    assert!(events.try_recv().is_err(), "the old volume saw nothing");
    clean(&v);
}

#[test]
fn restore_points_hold_overwritten_pages_until_retention_drops_them() {
    let (v, _dev) = pvol();
    v.create_cluster("prod", WHO).unwrap();
    let old = vec![1u8; 256 * 1024];
    put(&v, "prod", "f", &old);
    next_point();
    put(&v, "prod", "f", &vec![2u8; 256 * 1024]);
    let space = |v: &Volume| {
        v.space()
            .unwrap()
            .into_iter()
            .find(|s| s.name == "prod")
            .unwrap()
    };
    let held = space(&v).restore_only;
    assert!(held >= 256 * 1024, "points hold the old data: {held}");
    let r = v.restorable("prod").unwrap();
    assert_eq!(r.points, 2);
    assert_eq!(r.restore_only, held);
    assert!(r.earliest.is_some() && r.latest >= r.earliest.unwrap());

    let used = v.statfs().used;
    v.set_retention("prod", Duration::ZERO).unwrap();
    v.commit().unwrap();
    assert_eq!(space(&v).restore_only, 0);
    assert!(v.cluster_by_name("prod").unwrap().restore_points.is_empty());
    assert!(
        used - v.statfs().used >= held,
        "dropping the points frees what they held"
    );
    // No new points while retention is 0.
    put(&v, "prod", "f", b"x");
    assert!(v.restorable("prod").unwrap().earliest.is_none());
    clean(&v);
}
