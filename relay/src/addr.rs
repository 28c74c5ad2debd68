//! Where a relay is: `ip:port` or `host:port`.
//!
//! Containers and Kubernetes Services give relays DNS names whose
//! addresses change when a pod is rescheduled, so a configured relay is
//! kept as written and resolved again at every dial.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A relay's QUIC address as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeAddr {
    /// A literal address (`10.0.0.5:4470`, `[2001:db8::1]:4470`).
    Socket(SocketAddr),
    /// A DNS name and port (`relay.us-east.svc:4470`).
    Host {
        /// The name, without brackets or port.
        host: String,
        /// The UDP port.
        port: u16,
    },
}

/// Why a relay address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// No `:port` at the end.
    #[error("expected host:port or ip:port (got {0:?})")]
    NoPort(String),
    /// The port is not 1-65535.
    #[error("invalid port in {0:?}")]
    Port(String),
    /// The name is not a DNS name.
    #[error("invalid host name in {0:?} (letters, digits, '-' and '.')")]
    Host(String),
}

/// The name could not be resolved to an address.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {addr}: {reason}")]
pub struct ResolveError {
    addr: String,
    reason: String,
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl FromStr for NodeAddr {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(socket) = text.parse::<SocketAddr>() {
            return Ok(NodeAddr::Socket(socket));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| AddrError::NoPort(text.to_owned()))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| AddrError::Port(text.to_owned()))?;
        // A bracketed or colon-holding host that did not parse above is a
        // malformed IPv6 literal, not a name.
        if host.contains([':', '[', ']']) || !valid_host(host) {
            return Err(AddrError::Host(text.to_owned()));
        }
        Ok(NodeAddr::Host {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAddr::Socket(socket) => socket.fmt(f),
            NodeAddr::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for NodeAddr {
    fn from(socket: SocketAddr) -> Self {
        NodeAddr::Socket(socket)
    }
}

impl NodeAddr {
    /// The literal address, if it is one.
    pub fn as_socket(&self) -> Option<SocketAddr> {
        match self {
            NodeAddr::Socket(socket) => Some(*socket),
            NodeAddr::Host { .. } => None,
        }
    }

    /// The address to dial now: the literal, or the name's first IPv4
    /// answer (else its first answer; QUIC endpoints bind 0.0.0.0 or ::
    /// per family, and IPv4 is what every deployment has).
    pub async fn resolve(&self) -> Result<SocketAddr, ResolveError> {
        let (host, port) = match self {
            NodeAddr::Socket(socket) => return Ok(*socket),
            NodeAddr::Host { host, port } => (host, *port),
        };
        let error = |reason: String| ResolveError {
            addr: self.to_string(),
            reason,
        };
        let answers: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| error(e.to_string()))?
            .collect();
        answers
            .iter()
            .find(|a| a.is_ipv4())
            .or(answers.first())
            .copied()
            .ok_or_else(|| error("no addresses".into()))
    }
}

impl Serialize for NodeAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_names_and_mistakes() {
        assert_eq!(
            "10.0.0.5:4470".parse::<NodeAddr>(),
            Ok(NodeAddr::Socket("10.0.0.5:4470".parse().unwrap()))
        );
        assert_eq!(
            "[2001:db8::1]:4470"
                .parse::<NodeAddr>()
                .unwrap()
                .to_string(),
            "[2001:db8::1]:4470"
        );
        assert_eq!(
            "Relay-US.cascade.svc:4470".parse::<NodeAddr>(),
            Ok(NodeAddr::Host {
                host: "relay-us.cascade.svc".into(),
                port: 4470
            })
        );
        for bad in [
            "relay",
            "relay:",
            "relay:0",
            "relay:70000",
            ":4470",
            "-relay:4470",
            "re lay:4470",
            "a..b:4470",
            "[2001:db8::1:4470",
            "2001:db8::1:4470x",
        ] {
            assert!(bad.parse::<NodeAddr>().is_err(), "{bad} was accepted");
        }
    }

    #[tokio::test]
    async fn a_name_resolves_at_dial_time() {
        let addr: NodeAddr = "localhost:4470".parse().unwrap();
        let resolved = addr.resolve().await.unwrap();
        assert!(resolved.ip().is_loopback());
        assert_eq!(resolved.port(), 4470);
        let nowhere: NodeAddr = "no-such-relay.invalid:4470".parse().unwrap();
        let error = nowhere.resolve().await.unwrap_err().to_string();
        assert!(error.contains("no-such-relay.invalid:4470"), "{error}");
    }
}
