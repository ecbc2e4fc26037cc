//! Privileged: bridged containers on the real kernel. Each test moves its
//! thread into a network namespace of its own before it runs berth, so the
//! bridge, its subnet and every veth live there and the containers only ever
//! talk to each other: nothing of the host's network is touched or reached.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::Ipv4Addr;

use berth_bdev::cmd::{self, HostRunner};
use berth_tests::cli::{assert_run_left_nothing, unique_name, Store};
use berth_tests::harness::{skip, wait_for};

/// Puts this test's thread (and so every berth it runs) in a new network
/// namespace, which goes when the thread ends.
fn own_netns_or_skip() -> bool {
    if !rustix::process::geteuid().is_root() {
        skip("bridged networking needs root");
        return false;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    true
}

/// The links of this namespace other than `lo`.
fn links() -> Vec<String> {
    let mut l = berth_runtime::net::link_names().unwrap();
    l.retain(|n| n != "lo");
    l
}

fn ipv4_of(s: &Store, name: &str) -> Option<Ipv4Addr> {
    s.ok(&["ls"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|a| a.parse().ok())
}

const IDLE: &str = "trap 'exit 0' TERM; while :; do sleep 0.1; done";

#[test]
fn bridged_containers_reach_each_other_and_leave_nothing() {
    if !own_netns_or_skip() {
        return;
    }
    let s = Store::new();
    let (a, b) = (unique_name("net-a"), unique_name("net-b"));
    s.ok(&["create", &a]);
    s.ok(&["create", &b]);
    // a through its config, with busybox ping's raw socket; b through the flag.
    s.ok(&["config", "set", &a, "net=bridge", "cap.add=NET_RAW"]);
    s.ok(&["start", &a, "--", "/bin/sh", "-c", IDLE]);
    let serve = "trap 'exit 0' TERM; while :; do nc -l -p 7000 -e echo hello-from-b; done";
    s.ok(&["start", &b, "--net", "bridge", "--", "/bin/sh", "-c", serve]);
    let (ip_a, ip_b) = (ipv4_of(&s, &a).unwrap(), ipv4_of(&s, &b).unwrap());
    assert_eq!(ip_a, Ipv4Addr::new(10, 88, 0, 2));
    assert_eq!(ip_b, Ipv4Addr::new(10, 88, 0, 3));
    let mut up = links();
    up.sort();
    assert_eq!(up.len(), 3, "the bridge and two veths: {up:?}");
    assert!(up.contains(&"berth0".to_owned()), "{up:?}");

    // ICMP and TCP, container to container, by address.
    let ping = s.ok(&[
        "exec",
        &a,
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        &ip_b.to_string(),
    ]);
    assert!(ping.contains("2 packets received"), "{ping}");
    let said = s.ok(&["exec", &a, "--", "nc", &ip_b.to_string(), "7000"]);
    assert_eq!(said.trim(), "hello-from-b");
    // Without NET_RAW (the default), no raw socket.
    let denied = s.berth(&["exec", &b, "--", "ping", "-c", "1", &ip_a.to_string()]);
    assert!(denied.is_err(), "b pinged without CAP_NET_RAW");
    // Its own name in /etc/hosts, a default route via the bridge.
    let hosts = s.ok(&["exec", &a, "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{ip_a}\t{a}")), "{hosts}");
    assert!(hosts.contains("localhost"), "{hosts}");
    let route = s.ok(&["exec", &b, "--", "ip", "route"]);
    assert!(route.contains("default via 10.88.0.1 dev eth0"), "{route}");

    // The address is kept across a restart; a clone gets its own.
    s.ok(&["stop", &a]);
    assert_eq!(links().len(), 2, "a's veth left: {:?}", links());
    s.ok(&["start", &a, "--", "/bin/sh", "-c", IDLE]);
    assert_eq!(ipv4_of(&s, &a), Some(ip_a));
    s.ok(&["stop", &a]);
    let c = unique_name("net-c");
    s.ok(&["clone", &a, &c]);
    s.ok(&["start", &c, "--", "/bin/sh", "-c", IDLE]);
    assert_eq!(ipv4_of(&s, &c), Some(Ipv4Addr::new(10, 88, 0, 4)));
    s.ok(&["stop", &c]);
    s.ok(&["stop", &b]);

    // The last one out took the bridge along.
    assert!(links().is_empty(), "left: {:?}", links());
    for n in [&a, &b, &c] {
        assert_run_left_nothing(n, None);
        s.ok(&["destroy", n]);
    }
}

#[test]
fn a_killed_monitor_leaves_no_veth_or_bridge() {
    if !own_netns_or_skip() {
        return;
    }
    let s = Store::new();
    let name = unique_name("net-kill");
    s.ok(&["create", &name]);
    s.ok(&[
        "start", &name, "--net", "bridge", "--", "/bin/sh", "-c", IDLE,
    ]);
    assert_eq!(links().len(), 2, "{:?}", links());
    let monitor = s.monitor_pid(&name);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(monitor).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    // The next command recognises the dead monitor and cleans up after it.
    let err = s.berth(&["stop", &name]).unwrap_err();
    assert!(err.stderr.contains("not running"), "{}", err.stderr);
    assert!(wait_for(|| links().is_empty()), "left: {:?}", links());
    assert_run_left_nothing(&name, None);
    s.ok(&["destroy", &name]);
}

#[test]
fn networks_are_defined_checked_and_refused_clearly() {
    if !own_netns_or_skip() {
        return;
    }
    let s = Store::new();
    let name = unique_name("net-def");
    s.ok(&["create", &name]);
    s.ok(&[
        "network",
        "create",
        "br-test",
        "--subnet",
        "192.168.77.0/24",
    ]);
    let ls = s.ok(&["network", "ls"]);
    assert!(
        ls.contains("br-test") && ls.contains("192.168.77.0/24"),
        "{ls}"
    );
    let e = s
        .berth(&[
            "network",
            "create",
            "br-two",
            "--subnet",
            "192.168.77.128/25",
        ])
        .unwrap_err();
    assert!(
        e.stderr.contains("overlaps network \"br-test\""),
        "{}",
        e.stderr
    );
    let e = s
        .berth(&["start", &name, "--net", "bridge=nosuch", "--", "/bin/true"])
        .unwrap_err();
    assert!(
        e.stderr.contains("berth network create nosuch"),
        "{}",
        e.stderr
    );

    // A route of this namespace's host side in berth0's subnet: berth0 is refused.
    let ip = |args: &[&str]| {
        cmd::run(&HostRunner, "ip", args).unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    };
    ip(&[
        "link", "add", "taken0", "type", "veth", "peer", "name", "taken1",
    ]);
    ip(&["addr", "add", "10.88.9.1/24", "dev", "taken0"]);
    ip(&["link", "set", "taken0", "up"]);
    let e = s
        .berth(&["run", &name, "--net", "bridge", "--", "/bin/true"])
        .unwrap_err();
    assert!(
        e.stderr
            .contains("overlaps this host's route 10.88.9.0/24 on taken0"),
        "{}",
        e.stderr
    );
    ip(&["link", "del", "taken0"]);
    assert!(links().is_empty(), "left: {:?}", links());

    // A configured network works through `berth run` too, and is in use then.
    s.ok(&["config", "set", &name, "net=bridge=br-test"]);
    let addr = s.ok(&["run", &name, "--", "/bin/sh", "-c", "ip -4 addr show eth0"]);
    assert!(addr.contains("inet 192.168.77.2/24"), "{addr}");
    let e = s.berth(&["network", "rm", "br-test"]).unwrap_err();
    assert!(e.stderr.contains(&name), "{}", e.stderr);
    s.ok(&["config", "set", &name, "net="]);
    s.ok(&["network", "rm", "br-test"]);
    assert!(links().is_empty(), "left: {:?}", links());
    s.ok(&["destroy", &name]);
}

/// Containers started at the same moment on a network whose bridge does not
/// exist yet: one makes it, the others use it; each gets its own address; the
/// last one stopped takes it along.
#[test]
fn containers_started_at_once_share_one_new_bridge() {
    if !own_netns_or_skip() {
        return;
    }
    let s = Store::new();
    let names: Vec<String> = (0..3)
        .map(|i| unique_name(&format!("net-at-once{i}")))
        .collect();
    for n in &names {
        s.ok(&["create", n]);
        s.ok(&["config", "set", n, "net=bridge"]);
    }
    for round in 0..4 {
        let started: Vec<_> = names
            .iter()
            .map(|n| s.berth_in_thread(&["start", n, "--", "/bin/sh", "-c", IDLE]))
            .collect();
        for (n, t) in names.iter().zip(started) {
            if let Err(e) = t.join().unwrap() {
                panic!("round {round}: start {n}: {}", e.stderr);
            }
        }
        let mut addrs: Vec<Ipv4Addr> = names.iter().map(|n| ipv4_of(&s, n).unwrap()).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), names.len(), "round {round}: {addrs:?}");
        assert_eq!(
            links().len(),
            1 + names.len(),
            "round {round}: {:?}",
            links()
        );
        let stopped: Vec<_> = names
            .iter()
            .map(|n| s.berth_in_thread(&["stop", n]))
            .collect();
        for (n, t) in names.iter().zip(stopped) {
            if let Err(e) = t.join().unwrap() {
                panic!("round {round}: stop {n}: {}", e.stderr);
            }
        }
        assert!(links().is_empty(), "round {round}: left {:?}", links());
    }
    for n in &names {
        assert_run_left_nothing(n, None);
        s.ok(&["destroy", n]);
    }
}

/// Several berths making the same bridge at once: one makes it, the others
/// find it, none fails.
#[test]
fn a_bridge_made_by_several_at_once_is_made_once() {
    if !own_netns_or_skip() {
        return;
    }
    let gateway = Ipv4Addr::new(10, 99, 0, 1);
    for round in 0..20 {
        let barrier = std::sync::Barrier::new(4);
        let made: Vec<bool> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        berth_runtime::net::ensure_bridge("race0", gateway, 24)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| match w.join().unwrap() {
                    Ok(made) => made,
                    Err(e) => panic!("round {round}: {}", std::io::Error::from(e)),
                })
                .collect()
        });
        assert_eq!(
            made.iter().filter(|m| **m).count(),
            1,
            "round {round}: {made:?}"
        );
        assert_eq!(links(), ["race0"], "round {round}");
        assert!(berth_runtime::net::remove_bridge_if_unused("race0").unwrap());
        assert!(links().is_empty(), "round {round}: {:?}", links());
    }
}

/// A bridge its maker left half-made when killed (berth's MAC, down, no
/// address, not marked as berth's) is finished by the next berth that needs
/// it, so it is usable and goes with its last container; somebody else's
/// down bridge is only brought up, and never removed.
#[test]
fn a_half_made_bridge_is_finished_and_a_foreign_one_left_alone() {
    if !own_netns_or_skip() {
        return;
    }
    let ip = |args: &[&str]| {
        cmd::run(&HostRunner, "ip", args)
            .unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
            .stdout
    };
    let gateway = Ipv4Addr::new(10, 99, 0, 1);
    ip(&[
        "link",
        "add",
        "half0",
        "address",
        "02:be:0a:63:00:01",
        "type",
        "bridge",
    ]);
    assert!(!berth_runtime::net::ensure_bridge("half0", gateway, 24).unwrap());
    let shown = ip(&["-4", "addr", "show", "half0"]);
    assert!(
        shown.contains("inet 10.99.0.1/24") && shown.contains("UP"),
        "{shown}"
    );
    assert!(berth_runtime::net::remove_bridge_if_unused("half0").unwrap());

    ip(&["link", "add", "theirs0", "type", "bridge"]);
    assert!(!berth_runtime::net::ensure_bridge("theirs0", gateway, 24).unwrap());
    let shown = ip(&["-4", "addr", "show", "theirs0"]);
    assert!(!shown.contains("inet "), "{shown}");
    assert!(ip(&["link", "show", "theirs0"]).contains(",UP"));
    assert!(!berth_runtime::net::remove_bridge_if_unused("theirs0").unwrap());
    ip(&["link", "del", "theirs0"]);
    assert!(links().is_empty(), "left: {:?}", links());
}
