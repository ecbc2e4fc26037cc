//! Send streams (`send_stream`): a snapshot sent whole and the volume sent as
//! the changes since it come back through `receive` as they were; a damaged
//! stream leaves nothing; a backend without the flag answers `Unsupported`.

use berth_bdev::{ReceiveTo, Revert};

use super::{create, destroy, is_unsupported, read, remove, write};
use crate::harness::{Harness, Outcome};

fn to<'a>(
    name: &'a str,
    snap: Option<&'a str>,
    base: Option<&'a berth_bdev::VolumeSpec>,
) -> ReceiveTo<'a> {
    ReceiveTo {
        name,
        snap,
        base,
        replaces: None,
    }
}

pub fn send_receive_matches_caps(h: &Harness) -> Outcome {
    let b = h.backend.as_ref();
    let caps = b.caps();
    let v = create(h, "tx");
    write(h, &v, &[("etc/a", "one")]);
    if !caps.send_stream {
        let mut sink = Vec::new();
        let sent = b.send(&v, None, &mut sink);
        assert!(
            is_unsupported(&sent),
            "send_stream off but send answered {sent:?}"
        );
        let mut rv = Revert::new();
        let got = b.receive(&mut &[][..], &to("rx", None, None), &mut rv);
        assert!(
            is_unsupported(&got),
            "send_stream off but receive answered {got:?}"
        );
        destroy(h, &v);
        return Outcome::NotApplicable(
            "no send streams (send and receive answer Unsupported)".into(),
        );
    }
    assert!(caps.snapshot, "send_stream without snapshots");
    let s1 = h.snapshot(&v, "tx", "s1");
    write(h, &v, &[("etc/b", "two")]);
    remove(h, &v, "etc/a");
    let (mut full, mut changes) = (Vec::new(), Vec::new());
    b.send(&s1, None, &mut full).expect("send a snapshot");
    b.send(&v, Some(&s1), &mut changes)
        .expect("send the changes since it");

    let mut rv = Revert::new();
    let r1 = b
        .receive(&mut full.as_slice(), &to("rx", Some("s1"), None), &mut rv)
        .expect("receive the snapshot");
    let rx = b
        .receive(&mut changes.as_slice(), &to("rx", None, Some(&r1)), &mut rv)
        .expect("receive the changes");
    rv.commit();
    assert_eq!(read(h, &r1, "etc/a").as_deref(), Some("one"));
    assert_eq!(read(h, &r1, "etc/b"), None);
    assert_eq!(read(h, &rx, "etc/b").as_deref(), Some("two"));
    assert_eq!(read(h, &rx, "etc/a"), None);
    assert_eq!(
        b.volume_named("rx").expect("volume_named"),
        Some(rx.clone())
    );
    assert_eq!(b.snapshot_names("rx").expect("snapshot_names"), ["s1"]);

    // Cut in half: refused, and nothing of it stays.
    let mut rv = Revert::new();
    let cut = &full[..full.len() / 2];
    let got = b.receive(&mut &cut[..], &to("bad", None, None), &mut rv);
    assert!(got.is_err(), "half a stream was received: {got:?}");
    drop(rv);
    assert_eq!(b.volume_named("bad").expect("volume_named"), None);

    for s in [&r1, &s1] {
        b.destroy_snapshot(s).expect("destroy snapshot");
    }
    destroy(h, &rx);
    destroy(h, &v);
    Outcome::Passed
}
