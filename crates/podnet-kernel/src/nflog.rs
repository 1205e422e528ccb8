//! nfnetlink_log: the packets an nft `log group N` rule copies to user
//! space, read from a netlink socket of the caller's network namespace.
//! Why: the kernel's `log` to dmesg does not work in a node's own network
//! namespace, and a policy drop must be explained (who, to whom, which
//! port) without a process per packet. The rule carries the rate limit;
//! this side only binds the group and decodes what arrives.

use std::net::Ipv4Addr;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage, config_request,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

/// A failure to bind or read an nfnetlink_log group.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    /// The socket failed (open, bind, send, receive).
    #[error("nfnetlink_log socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused the configuration (e.g. another listener holds
    /// the group: EBUSY).
    #[error("binding nfnetlink_log group {group}: {source}")]
    Bind {
        /// The group.
        group: u16,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// The kernel sent something this reader cannot decode.
    #[error("nfnetlink_log decode: {0}")]
    Decode(String),
}

/// One logged packet: its log prefix (which rule logged it), the
/// interfaces, and the start of the packet (the network header onwards).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoggedPacket {
    /// The rule's `prefix`.
    pub prefix: String,
    /// Input interface index, if any.
    pub indev: Option<u32>,
    /// Output interface index, if any.
    pub outdev: Option<u32>,
    /// The packet from its IP header, cut at the rule's snaplen.
    pub payload: Vec<u8>,
}

/// An IPv4 packet's addresses, protocol and ports (0 when the protocol
/// has none, or the copy was cut before them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP).
    pub proto: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// Reads an IPv4 header and, for TCP, UDP and SCTP, the ports after it.
/// `None` for anything that is not IPv4 or is too short.
pub fn parse_ipv4(p: &[u8]) -> Option<Flow> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let proto = p[9];
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let frag_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
    let (mut sport, mut dport) = (0, 0);
    if matches!(proto, 6 | 17 | 132) && frag_offset == 0 && ihl >= 20 && p.len() >= ihl + 4 {
        sport = u16::from_be_bytes([p[ihl], p[ihl + 1]]);
        dport = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
    }
    Some(Flow {
        src,
        dst,
        proto,
        sport,
        dport,
    })
}

/// A socket bound to one nfnetlink_log group in the namespace it was
/// opened in.
pub struct NflogSocket {
    socket: Socket,
    buf: Vec<u8>,
}

impl NflogSocket {
    /// Binds `group`, asking for the first `copy` bytes of each packet.
    pub fn bind(group: u16, copy: u32) -> Result<Self, NflogError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NflogError::Socket)?;
        socket.bind_auto().map_err(NflogError::Socket)?;
        // A receive buffer large enough for a burst of small copies.
        let _ = socket.set_rx_buf_sz(1 << 20);
        let mut s = NflogSocket {
            socket,
            buf: vec![0; 1 << 16],
        };
        s.configure(group, vec![ConfigCmd::Bind.into()])?;
        s.configure(
            group,
            vec![
                ConfigNla::Mode(ConfigMode::new_packet(copy)),
                ConfigNla::QThresh(1),
                Timeout::new(5).into(),
            ],
        )?;
        Ok(s)
    }

    fn configure(&mut self, group: u16, nlas: Vec<ConfigNla>) -> Result<(), NflogError> {
        let msg = config_request(NetfilterProtoFamily::Unspec, group, nlas);
        let mut out = vec![0; msg.header.length as usize];
        msg.serialize(&mut out[..]);
        self.socket.send(&out, 0).map_err(NflogError::Socket)?;
        // The ack; packets may already be queued behind it, but none can
        // come before it (nothing is delivered to an unbound group).
        let n = {
            let mut slice = &mut self.buf[..];
            self.socket
                .recv(&mut slice, 0)
                .map_err(NflogError::Socket)?
        };
        let reply = NetlinkMessage::<NetfilterMessage>::deserialize(&self.buf[..n])
            .map_err(|e| NflogError::Decode(e.to_string()))?;
        if let NetlinkPayload::Error(e) = reply.payload
            && let Some(code) = e.code
        {
            return Err(NflogError::Bind {
                group,
                source: std::io::Error::from_raw_os_error(-code.get()),
            });
        }
        Ok(())
    }

    /// Waits for the next datagram and returns the packets in it. A full
    /// receive queue (ENOBUFS: packets the kernel could not deliver) is
    /// `Ok(empty)` with `lost` set, so the caller can count it.
    pub fn recv(&mut self, lost: &mut bool) -> Result<Vec<LoggedPacket>, NflogError> {
        let n = {
            let mut slice = &mut self.buf[..];
            match self.socket.recv(&mut slice, 0) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    *lost = true;
                    return Ok(Vec::new());
                }
                Err(e) => return Err(NflogError::Socket(e)),
            }
        };
        Ok(decode(&self.buf[..n]))
    }
}

/// The packets of one datagram (several netlink messages); messages that
/// are not logged packets are skipped.
pub fn decode(mut bytes: &[u8]) -> Vec<LoggedPacket> {
    let mut out = Vec::new();
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            break;
        }
        if let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[..len])
            && let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                ..
            }) = msg.payload
        {
            let mut p = LoggedPacket::default();
            for nla in nlas {
                match nla {
                    PacketNla::Prefix(s) => p.prefix = s.to_string_lossy().into_owned(),
                    PacketNla::IfIndexInDev(i) => p.indev = Some(i),
                    PacketNla::IfIndexOutDev(i) => p.outdev = Some(i),
                    PacketNla::Payload(v) => p.payload = v,
                    _ => {}
                }
            }
            out.push(p);
        }
        bytes = &bytes[(len + 3) & !3..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tcp_and_udp_ports_and_skips_fragments() {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 3]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        let f = parse_ipv4(&p).unwrap();
        assert_eq!(f.src, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!((f.proto, f.sport, f.dport), (6, 40000, 80));
        p[7] = 1; // a later fragment: no ports in it
        assert_eq!(parse_ipv4(&p).unwrap().dport, 0);
        assert!(parse_ipv4(&p[..10]).is_none());
        p[0] = 0x65;
        assert!(parse_ipv4(&p).is_none());
    }
}
