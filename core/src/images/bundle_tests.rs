use super::*;

fn manifest(snaps: &[&str], since: Option<&str>) -> Manifest {
    let names: Vec<String> = snaps.iter().map(|s| (*s).to_owned()).collect();
    let d = format!("sha256:{}", "a".repeat(64));
    Manifest {
        format: FORMAT,
        kind: "container".to_owned(),
        name: "c1".to_owned(),
        created: 1,
        encoding: PORTABLE.to_owned(),
        source_backend: "dir".to_owned(),
        template: None,
        digest: d.clone(),
        bytes: 0,
        size: None,
        since: since.map(|s| Base {
            snapshot: s.to_owned(),
            digest: d.clone(),
        }),
        snapshots: names
            .iter()
            .map(|n| SnapshotMeta {
                name: n.clone(),
                created: 2,
                digest: d.clone(),
            })
            .collect(),
        streams: Manifest::plan_streams(&names, since),
        run: RunConfig::default(),
    }
}

/// A bundle with `m` and the given stream contents.
fn write(m: &Manifest, streams: &[&[u8]]) -> Vec<u8> {
    let mut w = BundleWriter::new(Vec::new(), m).unwrap();
    for (meta, data) in m.streams.iter().zip(streams) {
        let mut s = w.stream(&meta.path);
        s.write_all(data).unwrap();
        assert_eq!(s.end().unwrap(), data.len() as u64);
    }
    w.finish().unwrap()
}

fn read_all(bytes: &[u8]) -> Result<Vec<Vec<u8>>, TransferError> {
    let mut ar = tar::Archive::new(bytes);
    let mut r = BundleReader::open(&mut ar)?;
    let mut out = Vec::new();
    while let Some(mut s) = r.next_stream() {
        let mut data = Vec::new();
        let _ = s.read_to_end(&mut data);
        s.finish()?;
        out.push(data);
    }
    Ok(out)
}

#[test]
fn streams_round_trip_across_parts() {
    let m = manifest(&["s0", "s1"], None);
    m.check().unwrap();
    let big: Vec<u8> = (0..PART_SIZE * 2 + 5).map(|i| (i % 251) as u8).collect();
    let bytes = write(&m, &[b"first", b"", &big]);
    let got = read_all(&bytes).unwrap();
    assert_eq!(got, vec![b"first".to_vec(), Vec::new(), big]);
}

#[test]
fn streams_are_planned_as_a_chain() {
    let names = vec!["a".to_owned(), "b".to_owned()];
    let s = Manifest::plan_streams(&names, None);
    assert_eq!(s[0].base, None);
    assert_eq!(s[1].base.as_deref(), Some("a"));
    assert_eq!(
        (s[2].snapshot.as_deref(), s[2].base.as_deref()),
        (None, Some("b"))
    );
    let s = Manifest::plan_streams(&[], Some("base"));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].base.as_deref(), Some("base"));
}

#[test]
fn damage_is_named() {
    let m = manifest(&[], None);
    let good = write(&m, &[b"PAYLOAD-XYZ"]);
    // A flipped byte in the data: its checksum says so.
    let at = good.windows(11).position(|w| w == b"PAYLOAD-XYZ").unwrap();
    let mut bad = good.clone();
    bad[at] ^= 1;
    assert!(matches!(
        read_all(&bad),
        Err(TransferError::StreamChecksum { .. })
    ));
    // Cut off in a part, or before the checksum: truncated.
    for cut in [good.len() - 1536, good.len() - 2560] {
        let e = read_all(&good[..cut]).unwrap_err();
        assert!(matches!(e, TransferError::Truncated { .. }), "{cut}: {e}");
    }
    // Not a bundle at all.
    let mut plain = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    plain.append_data(&mut h, "etc/x", &b"x"[..]).unwrap();
    let plain = plain.into_inner().unwrap();
    assert!(matches!(
        read_all(&plain),
        Err(TransferError::NotABundle { .. })
    ));
}

#[test]
fn manifests_are_checked() {
    let mut m = manifest(&["s0"], None);
    m.format = 2;
    assert!(matches!(
        m.check(),
        Err(TransferError::Version { found: 2 })
    ));
    let mut m = manifest(&["s0"], None);
    m.snapshots[0].name = "../x".to_owned();
    assert!(matches!(m.check(), Err(TransferError::BadManifest { .. })));
    let mut m = manifest(&["s0"], None);
    m.digest = "md5:x".to_owned();
    assert!(matches!(m.check(), Err(TransferError::BadManifest { .. })));
    let mut m = manifest(&["s0"], None);
    m.streams.pop();
    assert!(matches!(m.check(), Err(TransferError::BadManifest { .. })));
    assert!(is_digest(&format!("sha256:{}", "0f".repeat(32))));
    assert!(!is_digest(&format!("sha256:{}", "0F".repeat(32))));
}
