//! Container networking: none (loopback only, the default), the host's, or a
//! veth pair on a host bridge. A bridge network is a name and an IPv4 subnet
//! (`berth0` is 10.88.0.0/16 unless defined otherwise under
//! `ROOT/networks/`); berth makes its bridge when a container first needs it
//! and removes it once the last container on it stopped. Each container keeps
//! its address in its config (`net.ipv4`), so it survives restarts.

use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use berth_runtime::net::{self as rnet, BridgeLink};
use berth_runtime::NetMode;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{BerthError, Result};
use crate::locks::{self, Mode};

mod etc;
pub use etc::write_etc;

/// The bridge `--net bridge` means.
pub const DEFAULT_BRIDGE: &str = "berth0";
/// `berth0`'s subnet unless `berth network create` said otherwise.
pub const DEFAULT_SUBNET: Subnet = Subnet {
    net: Ipv4Addr::new(10, 88, 0, 0),
    prefix: 16,
};

/// Which network a container gets (`--net`, config key `net`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NetChoice {
    #[default]
    None,
    Host,
    /// A veth pair on this bridge.
    Bridge(String),
}

impl FromStr for NetChoice {
    type Err = BerthError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(NetChoice::None),
            "host" => Ok(NetChoice::Host),
            "bridge" => Ok(NetChoice::Bridge(DEFAULT_BRIDGE.to_owned())),
            _ => match s.strip_prefix("bridge=") {
                Some(name) => {
                    check_bridge_name(name)?;
                    Ok(NetChoice::Bridge(name.to_owned()))
                }
                None => Err(BerthError::Invalid(format!(
                    "network {s:?}: expected none, host, bridge or bridge=NAME"
                ))),
            },
        }
    }
}

impl TryFrom<String> for NetChoice {
    type Error = BerthError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<NetChoice> for String {
    fn from(n: NetChoice) -> String {
        n.to_string()
    }
}

impl fmt::Display for NetChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetChoice::None => f.write_str("none"),
            NetChoice::Host => f.write_str("host"),
            NetChoice::Bridge(b) if b == DEFAULT_BRIDGE => f.write_str("bridge"),
            NetChoice::Bridge(b) => write!(f, "bridge={b}"),
        }
    }
}

/// A bridge's name: a Linux interface name (1–15 bytes, no `/`, blanks or `:`).
pub fn check_bridge_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(BerthError::Invalid(format!(
            "bridge name {name:?}: use 1 to 15 letters, digits, '-', '_' or '.'"
        ))),
    }
}

/// An IPv4 subnet: its network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub net: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Subnet {
    type Err = BerthError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| BerthError::Invalid(format!("subnet {s:?}: {why}"));
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 10.88.0.0/16"))?;
        let net: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| bad("the prefix length must be 8 to 30"))?;
        let sub = Subnet { net, prefix };
        if u32::from(net) & !sub.mask() != 0 {
            return Err(bad(&format!(
                "host bits are set; did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(net) & sub.mask())
            )));
        }
        Ok(sub)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Subnet {
    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The bridge's own address: the subnet's first.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.net)
    }

    /// Addresses a container may have: all but the network, the gateway and
    /// the broadcast address.
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.net) + 2;
        let broadcast = u32::from(self.net) | !self.mask();
        (first..broadcast).map(Ipv4Addr::from)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    subnet: String,
}

fn networks_dir(root: &Path) -> PathBuf {
    root.join("networks")
}

fn network_file(root: &Path, bridge: &str) -> PathBuf {
    networks_dir(root).join(format!("{bridge}.toml"))
}

/// The subnet of network `bridge`.
pub fn subnet_of(root: &Path, bridge: &str) -> Result<Subnet> {
    let path = network_file(root, bridge);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let f: NetworkFile = toml::from_str(&text).map_err(|e| BerthError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            f.subnet.parse()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && bridge == DEFAULT_BRIDGE => {
            Ok(DEFAULT_SUBNET)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BerthError::Invalid(format!(
            "network {bridge:?} is not defined; define it with `berth network create {bridge} --subnet CIDR`"
        ))),
        Err(e) => Err(BerthError::io("read", &path)(e)),
    }
}

/// The networks: `berth0` (defined or not) and every one defined.
pub fn networks(root: &Path) -> Result<Vec<(String, Subnet)>> {
    let mut out = vec![(DEFAULT_BRIDGE.to_owned(), subnet_of(root, DEFAULT_BRIDGE)?)];
    let dir = networks_dir(root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(BerthError::io("read", &dir)(e)),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".toml").map(str::to_owned)
        })
        .filter(|n| n != DEFAULT_BRIDGE)
        .collect();
    names.sort();
    for n in names {
        let s = subnet_of(root, &n)?;
        out.push((n, s));
    }
    Ok(out)
}

/// `berth network create`: defines network `bridge` with `subnet`, refusing
/// one that overlaps another network's.
pub fn define(root: &Path, bridge: &str, subnet: Subnet) -> Result<()> {
    check_bridge_name(bridge)?;
    for (other, s) in networks(root)? {
        if other == bridge && network_file(root, bridge).exists() {
            return Err(BerthError::Invalid(format!(
                "network {bridge:?} exists ({s}); remove it first (`berth network rm {bridge}`)"
            )));
        }
        if other != bridge && rnet::overlaps((s.net, s.prefix), (subnet.net, subnet.prefix)) {
            return Err(BerthError::Invalid(format!(
                "subnet {subnet} overlaps network {other:?} ({s}); choose another"
            )));
        }
    }
    berth_bdev::fsutil::create_dir_all(&networks_dir(root))?;
    let text = toml::to_string(&NetworkFile {
        subnet: subnet.to_string(),
    })
    .map_err(|e| BerthError::Invalid(e.to_string()))?;
    berth_bdev::fsutil::replace_file(&network_file(root, bridge), text.as_bytes())?;
    Ok(())
}

/// `berth network rm`: forgets network `bridge` (its bridge goes once unused).
pub fn undefine(root: &Path, bridge: &str, users: &[String]) -> Result<()> {
    if !users.is_empty() {
        return Err(BerthError::Invalid(format!(
            "network {bridge:?} is in use by {}; change their `net` first",
            users.join(", ")
        )));
    }
    let path = network_file(root, bridge);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && bridge == DEFAULT_BRIDGE => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BerthError::Invalid(format!(
                "network {bridge:?} is not defined"
            )))
        }
        Err(e) => return Err(BerthError::io("remove", &path)(e)),
    }
    release_bridge(root, bridge);
    Ok(())
}

/// The lowest address of `subnet` that none of `taken` has.
pub fn allocate(subnet: Subnet, taken: &[Ipv4Addr]) -> Result<Ipv4Addr> {
    subnet
        .hosts()
        .find(|ip| !taken.contains(ip))
        .ok_or_else(|| {
            BerthError::Invalid(format!(
                "subnet {subnet} has no free address; define a larger one"
            ))
        })
}

fn lock_path(root: &Path, bridge: &str) -> PathBuf {
    root.join("run").join("net").join(format!("{bridge}.lock"))
}

/// A container's hold on its bridge (a shared lock): while any is held, the
/// bridge stays. Dropping the last one removes a bridge berth made.
#[derive(Debug)]
pub struct BridgeHold {
    root: PathBuf,
    bridge: String,
    lock: Option<File>,
}

impl Drop for BridgeHold {
    fn drop(&mut self) {
        if let Some(f) = self.lock.take() {
            locks::release(&f);
            drop(f);
            release_bridge(&self.root, &self.bridge);
        }
    }
}

/// Makes sure bridge `bridge` exists with `subnet` (refusing a subnet that
/// overlaps a route of this host) and holds it for one container.
pub fn hold_bridge(root: &Path, bridge: &str, subnet: Subnet) -> Result<BridgeHold> {
    let path = lock_path(root, bridge);
    if let Some(dir) = path.parent() {
        berth_bdev::fsutil::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(BerthError::io("open", &path))?;
    locks::acquire(&file, &path, Mode::Shared, &|| {
        format!("bridge {bridge} being removed")
    })?;
    let hold = BridgeHold {
        root: root.to_path_buf(),
        bridge: bridge.to_owned(),
        lock: Some(file),
    };
    let net_err = |step: &str| {
        let step = step.to_owned();
        move |e: rustix::io::Errno| {
            BerthError::Invalid(format!(
                "network {bridge}: {step}: {}",
                std::io::Error::from(e)
            ))
        }
    };
    let exists = rnet::link_names()
        .map_err(net_err("list links"))?
        .iter()
        .any(|n| n == bridge);
    if !exists {
        if let Some(route) = rnet::overlapping_route(subnet.net, subnet.prefix)
            .map_err(net_err("read the routes"))?
        {
            return Err(BerthError::Invalid(format!(
                "network {bridge}: subnet {subnet} overlaps this host's route {route}; \
                 define another with `berth network create {bridge} --subnet CIDR`"
            )));
        }
    }
    let made = rnet::ensure_bridge(bridge, subnet.gateway(), subnet.prefix)
        .map_err(net_err("create the bridge"))?;
    if made {
        info!(bridge, %subnet, "bridge created");
    }
    Ok(hold)
}

/// Removes bridge `bridge` if berth made it and nothing holds it.
pub fn release_bridge(root: &Path, bridge: &str) {
    let path = lock_path(root, bridge);
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
        return;
    };
    // Another container on it, or one starting: it stays.
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return;
    }
    match rnet::remove_bridge_if_unused(bridge) {
        Ok(true) => info!(bridge, "bridge removed: its last container stopped"),
        Ok(false) => {}
        Err(e) => warn!(bridge, error = %e, "could not remove the bridge"),
    }
}

/// After a container whose berth died: its host veth and unused bridges go.
pub fn clean_stale(root: &Path, container: &str) {
    if let Err(e) = rnet::delete_link(&rnet::host_veth_name(container)) {
        warn!(container, error = %e, "could not remove the container's veth");
    }
    if let Ok(nets) = networks(root) {
        for (bridge, _) in nets {
            release_bridge(root, &bridge);
        }
    }
}

/// The runtime's view of a bridged container at `address`.
pub fn bridge_mode(container: &str, bridge: &str, subnet: Subnet, address: Ipv4Addr) -> NetMode {
    NetMode::Bridge(BridgeLink {
        bridge: bridge.to_owned(),
        host_veth: rnet::host_veth_name(container),
        address,
        prefix: subnet.prefix,
        gateway: subnet.gateway(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_read_and_print_back() {
        for s in ["none", "host", "bridge", "bridge=br-test1"] {
            assert_eq!(s.parse::<NetChoice>().unwrap().to_string(), s);
        }
        assert_eq!(
            "bridge=berth0".parse::<NetChoice>().unwrap().to_string(),
            "bridge"
        );
        let e = "bridge=way-too-long-name".parse::<NetChoice>().unwrap_err();
        assert!(e.to_string().contains("1 to 15"), "{e}");
        assert!("wifi".parse::<NetChoice>().is_err());
    }

    #[test]
    fn subnets_hand_out_their_lowest_free_address() {
        let s: Subnet = "10.88.0.0/16".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        let a = allocate(s, &[]).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(
            allocate(s, &[a, Ipv4Addr::new(10, 88, 0, 4)]).unwrap(),
            Ipv4Addr::new(10, 88, 0, 3)
        );
        let tiny: Subnet = "192.168.7.0/30".parse().unwrap();
        let only = allocate(tiny, &[]).unwrap();
        assert_eq!(only, Ipv4Addr::new(192, 168, 7, 2));
        let e = allocate(tiny, &[only]).unwrap_err();
        assert!(e.to_string().contains("no free address"), "{e}");
        let e = "10.88.0.1/16".parse::<Subnet>().unwrap_err();
        assert!(e.to_string().contains("10.88.0.0/16"), "{e}");
        assert!("10.88.0.0/31".parse::<Subnet>().is_err());
        assert!(s.contains(Ipv4Addr::new(10, 88, 200, 1)));
        assert!(!s.contains(Ipv4Addr::new(10, 89, 0, 1)));
    }

    #[test]
    fn networks_are_defined_once_and_never_overlap() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        assert_eq!(subnet_of(root, DEFAULT_BRIDGE).unwrap(), DEFAULT_SUBNET);
        let e = subnet_of(root, "br1").unwrap_err();
        assert!(e.to_string().contains("berth network create br1"), "{e}");
        define(root, "br1", "10.90.0.0/24".parse().unwrap()).unwrap();
        assert_eq!(networks(root).unwrap().len(), 2);
        let e = define(root, "br2", "10.88.4.0/24".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("berth0"), "{e}");
        let e = define(root, "br1", "10.91.0.0/24".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
        let e = undefine(root, "br1", &["web".to_owned()]).unwrap_err();
        assert!(e.to_string().contains("web"), "{e}");
        undefine(root, "br1", &[]).unwrap();
        assert_eq!(networks(root).unwrap().len(), 1);
    }
}
