//! Bridged networking over rtnetlink: the host bridge a container's veth pair
//! joins, the pair itself (its inner end born in the container's network
//! namespace as `eth0`), its address and default route. All through the
//! kernel's netlink interface, never `ip`.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rustix::io::Errno;
use tracing::warn;

/// What marks a bridge as made by berth (its `ifalias`): only such a bridge
/// is removed once its last container left it.
pub const BRIDGE_ALIAS: &str = "berth-managed";

/// The name of a container's inner interface.
pub const INNER_NAME: &str = "eth0";

/// One container's place on a host bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeLink {
    pub bridge: String,
    /// The host end of the veth pair; [`host_veth_name`] of the container.
    pub host_veth: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

impl BridgeLink {
    /// The inner end's MAC: locally administered, derived from the address
    /// (as Docker does) so that neighbours' caches stay right across restarts.
    pub fn mac(&self) -> [u8; 6] {
        mac_of(self.address)
    }
}

fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0xbe, a, b, c, d]
}

/// The host end's name for `container`: stable (the next command finds what a
/// crash left) and within the kernel's 15 bytes.
pub fn host_veth_name(container: &str) -> String {
    // FNV-1a: a stable hash, no dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("vb{:012x}", h & 0xffff_ffff_ffff)
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
}

/// A NETLINK_ROUTE socket in the calling thread's network namespace.
struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> Result<Self, Errno> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(errno)?;
        sock.bind_auto().map_err(errno)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(errno)?;
        Ok(Netlink { sock, seq: 0 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, Errno> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(errno)?;
        Ok(self.seq)
    }

    /// Reads the answers to request `seq` until its ACK or DONE, collecting
    /// the messages a dump returns.
    fn answers(&mut self, seq: u32) -> Result<Vec<RouteNetlinkMessage>, Errno> {
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            self.sock.recv_from(&mut buf, 0).map_err(errno)?;
            let mut at = 0;
            while at < buf.len() {
                let bytes = buf.get(at..).unwrap_or_default();
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|_| Errno::PROTO)?;
                let len = usize::try_from(msg.header.length).map_err(|_| Errno::PROTO)?;
                if len == 0 {
                    return Err(Errno::PROTO);
                }
                at += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(Errno::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Sends a change and waits for the kernel's ACK.
    fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), Errno> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.answers(seq).map(drop)
    }

    fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, Errno> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        self.answers(seq)
    }

    fn links(&mut self) -> Result<Vec<LinkMessage>, Errno> {
        let all = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    fn link(&mut self, name: &str) -> Result<Option<LinkMessage>, Errno> {
        Ok(self.links()?.into_iter().find(|l| name_of(l) == Some(name)))
    }

    fn index(&mut self, name: &str) -> Result<u32, Errno> {
        self.link(name)?.map(|l| l.header.index).ok_or(Errno::NODEV)
    }

    fn set_up(&mut self, index: u32, controller: Option<u32>) -> Result<(), Errno> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(c) = controller {
            m.attributes.push(LinkAttribute::Controller(c));
        }
        self.change(RouteNetlinkMessage::SetLink(m), 0)
    }

    fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), Errno> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.extend([
            AddressAttribute::Local(IpAddr::V4(ip)),
            AddressAttribute::Address(IpAddr::V4(ip)),
            AddressAttribute::Broadcast(broadcast(ip, prefix)),
        ]);
        self.change(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn delete(&mut self, index: u32) -> Result<(), Errno> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.change(RouteNetlinkMessage::DelLink(m), 0)
    }
}

fn name_of(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn alias_of(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(n) => Some(n.as_str()),
        _ => None,
    })
}

fn mac_of_link(l: &LinkMessage) -> Option<&[u8]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

fn controller_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(c) => Some(*c),
        _ => None,
    })
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

fn broadcast(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) | !mask(prefix))
}

/// Whether two IPv4 networks share an address.
pub fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let m = mask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

/// How long a berth that finds a bridge down waits for the berth making it
/// to bring it up before it brings it up itself.
const BRIDGE_SETTLES_WITHIN: Duration = Duration::from_secs(1);

/// Makes bridge `name` with `gateway/prefix` and brings it up, unless it
/// exists. Returns whether it made it. Several berths may make it at once:
/// one does (the others' requests fail with EEXIST) and the others wait until
/// it is up, or make it themselves if the maker failed and removed it.
pub fn ensure_bridge(name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<bool, Errno> {
    let mut nl = Netlink::open()?;
    let settle_by = Instant::now() + BRIDGE_SETTLES_WITHIN;
    loop {
        if let Some(l) = nl.link(name)? {
            if l.header.flags.contains(LinkFlags::Up) {
                return Ok(false);
            }
            // Down: another berth may still be adding its address.
            if Instant::now() < settle_by {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            if mac_of_link(&l) == Some(&mac_of(gateway)[..]) {
                // Berth's own MAC, still down: its maker died half-way.
                warn!(
                    bridge = name,
                    "finishing a bridge a killed berth left half-made"
                );
                configure_bridge(&mut nl, l.header.index, gateway, prefix)?;
            } else {
                nl.set_up(l.header.index, None)?;
            }
            return Ok(false);
        }
        if make_bridge(&mut nl, name, gateway, prefix)? {
            return Ok(true);
        }
        // EEXIST, yet not found by name (an altname?): give up in the end.
        if Instant::now() > settle_by + BRIDGE_SETTLES_WITHIN {
            return Err(Errno::EXIST);
        }
    }
}

/// Creates bridge `name`, names it berth's, gives it its address and brings
/// it up; removes it again if a step fails. False if another made it first.
fn make_bridge(nl: &mut Netlink, name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<bool, Errno> {
    let mut m = LinkMessage::default();
    m.attributes.extend([
        LinkAttribute::IfName(name.to_owned()),
        // Fixed, or the bridge takes the lowest of its ports' and changes
        // whenever one comes or goes.
        LinkAttribute::Address(mac_of(gateway).to_vec()),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
    ]);
    match nl.change(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL) {
        Err(Errno::EXIST) => return Ok(false),
        other => other?,
    }
    let made = nl
        .index(name)
        .and_then(|index| configure_bridge(nl, index, gateway, prefix));
    if let Err(e) = made {
        let _ = nl.index(name).and_then(|i| nl.delete(i));
        return Err(e);
    }
    Ok(true)
}

/// Marks bridge `index` as berth's, gives it its address (unless it has it)
/// and brings it up.
fn configure_bridge(
    nl: &mut Netlink,
    index: u32,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<(), Errno> {
    let mut alias = LinkMessage::default();
    alias.header.index = index;
    alias
        .attributes
        .push(LinkAttribute::IfAlias(BRIDGE_ALIAS.to_owned()));
    nl.change(RouteNetlinkMessage::SetLink(alias), 0)?;
    match nl.add_address(index, gateway, prefix) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    nl.set_up(index, None)
}

/// Removes bridge `name` if berth made it and no port is left on it.
/// Returns whether it removed it.
pub fn remove_bridge_if_unused(name: &str) -> Result<bool, Errno> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    let Some(bridge) = links.iter().find(|l| name_of(l) == Some(name)) else {
        return Ok(false);
    };
    let index = bridge.header.index;
    let ours = alias_of(bridge) == Some(BRIDGE_ALIAS);
    if !ours || links.iter().any(|l| controller_of(l) == Some(index)) {
        return Ok(false);
    }
    match nl.delete(index) {
        Ok(()) | Err(Errno::NODEV) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Deletes link `name` (with a veth, its peer goes too); gone already is fine.
pub fn delete_link(name: &str) -> Result<(), Errno> {
    let mut nl = Netlink::open()?;
    match nl.index(name).and_then(|i| nl.delete(i)) {
        Ok(()) | Err(Errno::NODEV) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The names of the links in this network namespace.
pub fn link_names() -> Result<Vec<String>, Errno> {
    let mut nl = Netlink::open()?;
    Ok(nl
        .links()?
        .iter()
        .filter_map(|l| name_of(l).map(str::to_owned))
        .collect())
}

/// An IPv4 route of the main table (other than the default route) whose
/// network overlaps `net/prefix`: `(network, prefix, interface index)`.
pub fn overlapping_route(net: Ipv4Addr, prefix: u8) -> Result<Option<String>, Errno> {
    let mut nl = Netlink::open()?;
    let mut q = RouteMessage::default();
    q.header.address_family = AddressFamily::Inet;
    let routes = nl.dump(RouteNetlinkMessage::GetRoute(q))?;
    let links = nl.links()?;
    for r in routes {
        let RouteNetlinkMessage::NewRoute(r) = r else {
            continue;
        };
        let plen = r.header.destination_prefix_length;
        if r.header.table != RouteHeader::RT_TABLE_MAIN || plen == 0 {
            continue;
        }
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
            _ => None,
        });
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if let Some(dst) = dst.filter(|d| overlaps((*d, plen), (net, prefix))) {
            let dev = oif
                .and_then(|i| links.iter().find(|l| l.header.index == i))
                .and_then(name_of)
                .unwrap_or("?");
            return Ok(Some(format!("{dst}/{plen} on {dev}")));
        }
    }
    Ok(None)
}

/// Puts the container whose init is `pid` on its bridge: a veth pair whose
/// host end joins the bridge and whose inner end is born in the init's
/// network namespace as `eth0`, with its address and a default route via the
/// gateway. A stale host end of the same name (a crash) is replaced.
pub fn attach(pid: i32, link: &BridgeLink) -> Result<(), Errno> {
    let mut nl = Netlink::open()?;
    let bridge = nl.index(&link.bridge)?;
    let netns_pid = u32::try_from(pid).map_err(|_| Errno::SRCH)?;
    let mut peer = LinkMessage::default();
    peer.attributes.extend([
        LinkAttribute::IfName(INNER_NAME.to_owned()),
        LinkAttribute::Address(link.mac().to_vec()),
        LinkAttribute::NetNsPid(netns_pid),
    ]);
    let mut m = LinkMessage::default();
    m.attributes.extend([
        LinkAttribute::IfName(link.host_veth.clone()),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ]);
    let create = |nl: &mut Netlink| {
        nl.change(
            RouteNetlinkMessage::NewLink(m.clone()),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    };
    match create(&mut nl) {
        Err(Errno::EXIST) => {
            let stale = nl.index(&link.host_veth)?;
            nl.delete(stale)?;
            create(&mut nl)?;
        }
        other => other?,
    }
    let host_end = nl.index(&link.host_veth)?;
    let joined = nl
        .set_up(host_end, Some(bridge))
        .and_then(|()| configure_inside(pid, link));
    if let Err(e) = joined {
        let _ = nl.delete(host_end);
        return Err(e);
    }
    Ok(())
}

/// Address, link and route of `eth0`, from a thread that joined the
/// container's network namespace (a netlink socket talks to the namespace it
/// was made in).
fn configure_inside(pid: i32, link: &BridgeLink) -> Result<(), Errno> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(errno)?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(), Errno> {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            // As Docker does: ping (ICMP datagram sockets) without CAP_NET_RAW,
            // which containers lack. /proc/sys/net is this thread's namespace's.
            std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647").map_err(errno)?;
            let mut nl = Netlink::open()?;
            let eth = nl.index(INNER_NAME)?;
            nl.add_address(eth, link.address, link.prefix)?;
            nl.set_up(eth, None)?;
            let mut r = RouteMessage::default();
            r.header.address_family = AddressFamily::Inet;
            r.header.table = RouteHeader::RT_TABLE_MAIN;
            r.header.protocol = RouteProtocol::Boot;
            r.header.scope = RouteScope::Universe;
            r.header.kind = RouteType::Unicast;
            r.attributes.extend([
                RouteAttribute::Gateway(RouteAddress::Inet(link.gateway)),
                RouteAttribute::Oif(eth),
            ]);
            nl.change(RouteNetlinkMessage::NewRoute(r), NLM_F_CREATE | NLM_F_EXCL)
        })
        .join()
        .unwrap_or(Err(Errno::IO))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_and_short() {
        let a = host_veth_name("web");
        assert_eq!(a, host_veth_name("web"));
        assert_ne!(a, host_veth_name("web2"));
        assert_eq!(a.len(), 14);
        assert!(host_veth_name(&"x".repeat(200)).len() <= 15);
    }

    #[test]
    fn networks_overlap_by_their_shorter_prefix() {
        let net = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(overlaps((net("10.88.0.0"), 16), (net("10.88.5.0"), 24)));
        assert!(overlaps((net("10.0.0.0"), 8), (net("10.88.0.0"), 16)));
        assert!(!overlaps((net("10.88.0.0"), 16), (net("10.89.0.0"), 16)));
        assert_eq!(broadcast(net("10.88.0.1"), 16), net("10.88.255.255"));
        assert_eq!(mac_of(net("10.88.0.2")), [2, 0xbe, 10, 88, 0, 2]);
    }
}
