//! Cluster TLS for relay links: a private CA signs every node's
//! certificate; both sides of a link present one and check the other's
//! against the CA (mutual TLS 1.3, ALPN [`protocol::relay::ALPN`]).
//!
//! A certificate also says which node it speaks for: a URI SAN
//! `spiffe://cascade.internal/<role>/<node id>` ([`identity_uri`]). Each side
//! of a link checks that the peer's hello claims exactly an identity its
//! certificate carries, so a cluster certificate cannot pose as another
//! node (and displace its link) or an edge's as a relay.
//!
//! [`write_dev_certs`] (`cascade certs`) makes a development CA and node
//! certificates, so a multi-region cluster starts without openssl.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use protocol::relay::Role;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// The name every relay certificate carries besides its node id, and the
/// server name dialers check unless told another.
pub const RELAY_SERVER_NAME: &str = "relay.cascade.internal";
/// The name every edge certificate carries besides its node id (edges only
/// dial, so nothing checks it; it says what the certificate is for).
pub const EDGE_NAME: &str = "edge.cascade.internal";
/// The SPIFFE trust domain of node identities.
pub const TRUST_DOMAIN: &str = "cascade.internal";
/// Bytes of datagrams a link queues before it drops the oldest.
pub const DATAGRAM_SEND_BUFFER: usize = 1 << 20;
const CA_NAME: &str = "Cascade development CA";

/// Why TLS material could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
    /// This node's own certificate does not name it: its peers would
    /// refuse every link, so the node refuses to start.
    #[error(
        "the certificate does not name this node: it needs the URI SAN {expected} \
         (it carries {}); issue one with `cascade certs --{} {}`",
        if .found.is_empty() { "no node identity".to_owned() } else { .found.join(", ") },
        role_name(*.role), .node
    )]
    NotThisNode {
        /// The identity it must carry.
        expected: String,
        /// The identities it carries.
        found: Vec<String>,
        /// This node's role.
        role: Role,
        /// This node's id.
        node: String,
    },
}

/// `relay` or `edge`, as identities and `cascade certs` spell roles.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Edge => "edge",
        Role::Relay => "relay",
    }
}

/// The URI SAN that binds a certificate to one node:
/// `spiffe://cascade.internal/<role>/<node id>`.
pub fn identity_uri(role: Role, node: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{}/{node}", role_name(role))
}

/// A node a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Edge or relay.
    pub role: Role,
    /// Its node id.
    pub node: String,
}

impl std::fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&identity_uri(self.role, &self.node))
    }
}

fn parse_identity(uri: &str) -> Option<NodeIdentity> {
    let path = uri.strip_prefix("spiffe://")?.strip_prefix(TRUST_DOMAIN)?;
    let (role, node) = path.strip_prefix('/')?.split_once('/')?;
    let role = match role {
        "edge" => Role::Edge,
        "relay" => Role::Relay,
        _ => return None,
    };
    // Exactly one segment: no wildcards, no sub-paths.
    if node.is_empty() || node.contains(['/', '*', '?', '#']) {
        return None;
    }
    Some(NodeIdentity {
        role,
        node: node.to_owned(),
    })
}

/// The node identities a DER certificate carries (its
/// `spiffe://cascade.internal/...` URI SANs); empty when it carries none or
/// does not parse.
pub fn certificate_identities(der: &[u8]) -> Vec<NodeIdentity> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => parse_identity(uri),
            _ => None,
        })
        .collect()
}

/// The node identities of a link peer's (verified) leaf certificate.
pub fn peer_identities(connection: &quinn::Connection) -> Vec<NodeIdentity> {
    connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| {
            chain
                .first()
                .map(|leaf| certificate_identities(leaf.as_ref()))
        })
        .unwrap_or_default()
}

/// Where a node's TLS files are (`[relay.tls]`, `[edge.relay.tls]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM). Never logged.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files `cascade certs` writes for `name` in `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// A node's loaded TLS identity and the cluster's trust anchor.
#[derive(Clone)]
pub struct NodeTls {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    expiry: CertificateExpiry,
    identities: Vec<NodeIdentity>,
}

/// When the loaded certificates stop being valid (Unix seconds), for the
/// `cascade_tls_certificate_expiry_timestamp_seconds` gauge: a node whose
/// certificate lapses can no longer link, so operators are warned ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// This node's own (leaf) certificate.
    pub node: i64,
    /// The CA certificate that expires first.
    pub ca: i64,
}

fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("NodeTls")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::File {
        path: path.to_owned(),
        source,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl NodeTls {
    /// Loads the files.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::from_pem(&read(&files.ca)?, &read(&files.cert)?, &read(&files.key)?).map_err(|e| {
            match e {
                // Name the file the complaint is about.
                TlsError::Pem { path, message } if path.as_os_str().is_empty() => {
                    let path = if message.starts_with("CA") || message.starts_with("no CA") {
                        &files.ca
                    } else if message.starts_with("private key") {
                        &files.key
                    } else {
                        &files.cert
                    };
                    TlsError::Pem {
                        path: path.clone(),
                        message,
                    }
                }
                other => other,
            }
        })
    }

    /// From PEM bytes: the CA, this node's chain, its key.
    pub fn from_pem(ca_pem: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let pem_error = |message: String| TlsError::Pem {
            path: PathBuf::new(),
            message,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| pem_error(format!("CA: {e}")))?;
            roots.add(cert)?;
        }
        if roots.is_empty() {
            return Err(pem_error("no CA certificate".into()));
        }
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(format!("certificate: {e}")))?;
        if chain.is_empty() {
            return Err(pem_error("no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| pem_error(format!("private key: {e}")))?;
        let node = not_after(&chain[0])
            .ok_or_else(|| pem_error("certificate: not a valid X.509 certificate".into()))?;
        let mut ca = i64::MAX;
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| pem_error(format!("CA: {e}")))?;
            let lapses = not_after(&cert)
                .ok_or_else(|| pem_error("CA: not a valid X.509 certificate".into()))?;
            ca = ca.min(lapses);
        }
        let identities = certificate_identities(chain[0].as_ref());
        Ok(NodeTls {
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
            expiry: CertificateExpiry { node, ca },
            identities,
        })
    }

    /// The node identities this node's certificate carries.
    pub fn identities(&self) -> &[NodeIdentity] {
        &self.identities
    }

    /// Fails unless the certificate names `node` in `role` (checked at
    /// start: peers would refuse every link of a node whose does not).
    pub fn require_identity(&self, role: Role, node: &str) -> Result<(), TlsError> {
        let wanted = NodeIdentity {
            role,
            node: node.to_owned(),
        };
        if self.identities.contains(&wanted) {
            return Ok(());
        }
        Err(TlsError::NotThisNode {
            expected: wanted.to_string(),
            found: self.identities.iter().map(ToString::to_string).collect(),
            role,
            node: node.to_owned(),
        })
    }

    /// When the certificates lapse.
    pub fn expiry(&self) -> CertificateExpiry {
        self.expiry
    }

    /// Accepts links: TLS 1.3, our ALPN, a client certificate from the CA
    /// required.
    pub fn server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![protocol::relay::ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Verifier(format!("QUIC: {e}")))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }

    /// Dials links: checks the server against the CA, presents our
    /// certificate.
    pub fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, TlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![protocol::relay::ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| TlsError::Verifier(format!("QUIC: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }
}

/// The transport settings of every relay link.
pub fn transport_config(idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Browser RTP is ~1200 bytes; QUIC's default 1200-byte initial MTU
    // leaves 1162 for a datagram. Links start at Ethernet-sized packets
    // and MTU discovery still probes (and backs off) from there.
    t.initial_mtu(1452);
    t.keep_alive_interval(Some(idle_timeout / 4));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    // Media links are long-lived and see random WAN loss; BBR does not
    // read every lost packet as congestion the way Cubic does.
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Arc::new(t)
}

/// A CA that issues node certificates.
pub struct DevCa {
    key: KeyPair,
    params: CertificateParams,
    pem: String,
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // rcgen's default validity (1975 to 4096) suits a development CA whose
    // key lives next to it; production clusters bring their own PKI.
    Ok(params)
}

impl DevCa {
    /// A new CA with a fresh key.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let params = ca_params()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(DevCa { key, params, pem })
    }

    /// The CA's certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// The CA's private key (PEM).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues the certificate of node `name` in `role`; returns
    /// (certificate PEM, key PEM). It carries the node's identity URI, the
    /// node id and the role's name (`relay.cascade.internal`, which dialers
    /// check as the server name, or `edge.cascade.internal`) and
    /// `localhost`. Relays serve and dial; edges only dial.
    pub fn issue(&self, role: Role, name: &str) -> Result<(String, String), TlsError> {
        let role_dns = match role {
            Role::Relay => RELAY_SERVER_NAME,
            Role::Edge => EDGE_NAME,
        };
        let mut params = CertificateParams::new(vec![
            name.to_owned(),
            role_dns.to_owned(),
            "localhost".to_owned(),
        ])?;
        params
            .subject_alt_names
            .push(SanType::URI(identity_uri(role, name).try_into()?));
        params.extended_key_usages = match role {
            Role::Relay => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Edge => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        self.sign(params, name)
    }

    /// Issues a plain TLS server certificate for `name` and `localhost`
    /// (a development HTTPS proxy): no node identity, so it cannot link.
    pub fn issue_web(&self, name: &str) -> Result<(String, String), TlsError> {
        let mut params = CertificateParams::new(vec![name.to_owned(), "localhost".to_owned()])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, name)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        name: &str,
    ) -> Result<(String, String), TlsError> {
        let key = KeyPair::generate()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A node's full identity, in memory (tests, `cascade dev`).
    pub fn node_tls(&self, role: Role, name: &str) -> Result<NodeTls, TlsError> {
        let (cert, key) = self.issue(role, name)?;
        NodeTls::from_pem(self.pem.as_bytes(), cert.as_bytes(), key.as_bytes())
    }
}

/// What `cascade certs` issues a certificate for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertFor {
    /// A node of the cluster, by role and node id.
    Node(Role, String),
    /// A development HTTPS proxy (`localhost`).
    Web(String),
}

impl CertFor {
    /// The file stem (`<name>.pem`, `<name>.key`).
    pub fn name(&self) -> &str {
        match self {
            CertFor::Node(_, name) | CertFor::Web(name) => name,
        }
    }
}

/// Writes `ca.pem` (and `ca.key`) plus `<name>.pem` / `<name>.key` for each
/// name into `dir`; an existing CA there is kept and signs the new
/// certificates. Returns the files written.
pub fn write_dev_certs(dir: &Path, certs: &[CertFor]) -> Result<Vec<PathBuf>, TlsError> {
    let file_error = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::File { path, source }
    };
    std::fs::create_dir_all(dir).map_err(file_error(dir))?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let mut written = Vec::new();
    let ca = if ca_key.exists() && ca_cert.exists() {
        let key_pem = std::fs::read_to_string(&ca_key).map_err(file_error(&ca_key))?;
        let pem = std::fs::read_to_string(&ca_cert).map_err(file_error(&ca_cert))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
            path: ca_key.clone(),
            message: e.to_string(),
        })?;
        // The issuer needs the CA's name and key, both ours: the same
        // parameters rebuild it without parsing the certificate.
        DevCa {
            key,
            params: ca_params()?,
            pem,
        }
    } else {
        let ca = DevCa::generate()?;
        write_private(&ca_key, &ca.key_pem())?;
        std::fs::write(&ca_cert, ca.cert_pem()).map_err(file_error(&ca_cert))?;
        written.push(ca_cert);
        written.push(ca_key);
        ca
    };
    for wanted in certs {
        let (cert, key) = match wanted {
            CertFor::Node(role, name) => ca.issue(*role, name)?,
            CertFor::Web(name) => ca.issue_web(name)?,
        };
        let files = TlsFiles::in_dir(dir, wanted.name());
        std::fs::write(&files.cert, cert).map_err(file_error(&files.cert))?;
        write_private(&files.key, &key)?;
        written.push(files.cert);
        written.push(files.key);
    }
    Ok(written)
}

/// Writes a file readable by its owner only (keys, secrets).
pub fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| TlsError::File {
            path: path.to_owned(),
            source,
        })?;
    file.write_all(contents.as_bytes())
        .map_err(|source| TlsError::File {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_gauges_read_the_certificates_not_after() {
        let ca = DevCa::generate().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![RELAY_SERVER_NAME.to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 3, 4);
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let tls = NodeTls::from_pem(
            ca.cert_pem().as_bytes(),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .unwrap();
        // 2031-03-04T00:00:00Z
        assert_eq!(tls.expiry().node, 1_930_348_800);
        // rcgen's default for the development CA: the year 4096.
        assert!(tls.expiry().ca > 60_000_000_000, "{:?}", tls.expiry());
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            NodeTls::from_pem(
                ca.cert_pem().as_bytes(),
                garbage.as_bytes(),
                key.serialize_pem().as_bytes()
            )
            .is_err()
        );
    }

    #[test]
    fn dev_certs_are_written_and_load_and_a_second_run_keeps_the_ca() {
        let dir = std::env::temp_dir().join(format!("cascade-certs-{}", uuid::Uuid::new_v4()));
        let certs = [
            CertFor::Node(Role::Relay, "eu-relay".into()),
            CertFor::Node(Role::Edge, "eu-edge-1".into()),
            CertFor::Web("lb".into()),
        ];
        let written = write_dev_certs(&dir, &certs).unwrap();
        assert_eq!(written.len(), 8);
        let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
        let relay = NodeTls::load(&TlsFiles::in_dir(&dir, "eu-relay")).unwrap();
        relay.require_identity(Role::Relay, "eu-relay").unwrap();
        let edge = NodeTls::load(&TlsFiles::in_dir(&dir, "eu-edge-1")).unwrap();
        edge.require_identity(Role::Edge, "eu-edge-1").unwrap();
        let web = NodeTls::load(&TlsFiles::in_dir(&dir, "lb")).unwrap();
        assert!(web.identities().is_empty(), "{:?}", web.identities());
        let written =
            write_dev_certs(&dir, &[CertFor::Node(Role::Relay, "us-relay".into())]).unwrap();
        assert_eq!(written.len(), 2, "the CA is kept");
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
        NodeTls::load(&TlsFiles::in_dir(&dir, "us-relay")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("us-relay.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys are private");
        let err = NodeTls::load(&TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("missing.pem"),
            key: dir.join("ca.key"),
        })
        .unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_certificate_names_exactly_the_node_and_role_it_was_issued_for() {
        let ca = DevCa::generate().unwrap();
        let edge = ca.node_tls(Role::Edge, "eu-edge-1").unwrap();
        assert_eq!(
            edge.identities(),
            &[NodeIdentity {
                role: Role::Edge,
                node: "eu-edge-1".into()
            }]
        );
        edge.require_identity(Role::Edge, "eu-edge-1").unwrap();
        // Not another node, not the relay role.
        let err = edge.require_identity(Role::Edge, "eu-edge-2").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("spiffe://cascade.internal/edge/eu-edge-2")
                && text.contains("spiffe://cascade.internal/edge/eu-edge-1")
                && text.contains("cascade certs --edge eu-edge-2"),
            "{text}"
        );
        assert!(edge.require_identity(Role::Relay, "eu-edge-1").is_err());
        let relay = ca.node_tls(Role::Relay, "eu-relay").unwrap();
        relay.require_identity(Role::Relay, "eu-relay").unwrap();
        assert!(relay.require_identity(Role::Edge, "eu-relay").is_err());
        // A certificate from before identities (DNS names only) names no node.
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["eu-relay".to_owned(), RELAY_SERVER_NAME.to_owned()])
                .unwrap();
        let old = params
            .signed_by(&key, &Issuer::from_params(&ca.params, &ca.key))
            .unwrap();
        let old = NodeTls::from_pem(
            ca.cert_pem().as_bytes(),
            old.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .unwrap();
        assert!(old.identities().is_empty());
        assert!(
            old.require_identity(Role::Relay, "eu-relay")
                .unwrap_err()
                .to_string()
                .contains("no node identity")
        );
    }

    #[test]
    fn only_well_formed_identity_uris_count() {
        let ok = parse_identity("spiffe://cascade.internal/relay/us-relay").unwrap();
        assert_eq!((ok.role, ok.node.as_str()), (Role::Relay, "us-relay"));
        for bad in [
            "spiffe://cascade.internal/relay/",
            "spiffe://cascade.internal/relay/*",
            "spiffe://cascade.internal/relay/a/b",
            "spiffe://cascade.internal/admin/x",
            "spiffe://other.internal/relay/x",
            "spiffe://cascade.internalx/relay/x",
            "https://cascade.internal/relay/x",
            "spiffe://cascade.internal",
        ] {
            assert_eq!(parse_identity(bad), None, "{bad}");
        }
    }
}
