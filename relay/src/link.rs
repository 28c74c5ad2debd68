//! The async plumbing of one relay link, shared by relays and edges: dial or
//! accept a QUIC connection, exchange hellos on the control stream, read
//! and write control frames, redial with backoff.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::relay::{CodecError, Control, Hello, Role};
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::mpsc;

use crate::addr::NodeAddr;

/// How long the peer gets to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a link could not be set up or ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The address or endpoint refused to start a connection.
    #[error("cannot dial: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Reading the control stream failed.
    #[error("control stream read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing the control stream failed.
    #[error("control stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The peer sent a malformed frame.
    #[error("bad control frame: {0}")]
    Codec(#[from] CodecError),
    /// The peer did not start with a hello.
    #[error("handshake: {0}")]
    Handshake(&'static str),
    /// The peer's hello claims a node or role its certificate does not
    /// carry (or a dialed peer is not a relay).
    #[error("peer identity: hello claims {claimed}, certificate carries {certified}")]
    Identity {
        /// What the hello said.
        claimed: String,
        /// What the certificate names.
        certified: String,
    },
    /// The peer closed the connection during the handshake and said why
    /// (e.g. it refused our certificate's identity).
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The relay's name did not resolve.
    #[error(transparent)]
    Resolve(#[from] crate::addr::ResolveError),
}

/// A link after the hello exchange.
pub struct Link {
    /// The QUIC connection (datagrams).
    pub connection: Connection,
    /// The peer's hello.
    pub hello: Hello,
    /// Control frames from the peer.
    pub reader: ControlReader,
    /// The send half of the control stream.
    pub send: SendStream,
}

/// Reads control frames from a stream.
pub struct ControlReader {
    recv: RecvStream,
    buf: Vec<u8>,
}

impl ControlReader {
    /// Frames from `recv`.
    pub fn new(recv: RecvStream) -> Self {
        ControlReader {
            recv,
            buf: Vec::new(),
        }
    }

    /// The next frame; `None` when the peer finished the stream.
    pub async fn next(&mut self) -> Result<Option<Control>, LinkError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((message, used)) = Control::decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(message));
            }
            match self.recv.read(&mut chunk).await? {
                Some(n) => self.buf.extend_from_slice(&chunk[..n]),
                None => return Ok(None),
            }
        }
    }
}

/// Writes one frame.
pub async fn write_control(send: &mut SendStream, message: &Control) -> Result<(), LinkError> {
    let mut frame = Vec::new();
    message.encode(&mut frame);
    send.write_all(&frame).await?;
    Ok(())
}

/// Control frames queued per link before the link counts as stuck (its
/// peer stopped reading): the sender must then close it.
pub const CONTROL_QUEUE: usize = 4096;

/// Spawns the task that writes a link's control frames in order; dropping
/// every sender ends it. The queue is bounded ([`CONTROL_QUEUE`]): a full
/// one means the peer does not read, and memory must not grow for it.
pub fn spawn_writer(mut send: SendStream) -> mpsc::Sender<Control> {
    let (tx, mut rx) = mpsc::channel::<Control>(CONTROL_QUEUE);
    tokio::spawn(async move {
        let mut frame = Vec::new();
        while let Some(message) = rx.recv().await {
            frame.clear();
            message.encode(&mut frame);
            // Batch what is queued into one write.
            while let Ok(more) = rx.try_recv() {
                more.encode(&mut frame);
            }
            if send.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    tx
}

async fn read_hello(reader: &mut ControlReader) -> Result<Hello, LinkError> {
    match tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await {
        Err(_) => Err(LinkError::Handshake("no hello within 5 s")),
        Ok(Ok(Some(Control::Hello(hello)))) => Ok(hello),
        Ok(Ok(Some(_))) => Err(LinkError::Handshake("first frame is not a hello")),
        Ok(Ok(None)) => Err(LinkError::Handshake("stream closed before the hello")),
        Ok(Err(LinkError::Read(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(close),
        )))) => Err(LinkError::Refused(format!(
            "{} (code {})",
            String::from_utf8_lossy(&close.reason),
            close.error_code
        ))),
        Ok(Err(e)) => Err(e),
    }
}

/// QUIC application close code for a link refused over its identity.
pub const IDENTITY_REFUSED: u32 = 0x1d;

/// The peer's hello must claim an identity its certificate carries (and,
/// when dialed, be a relay: only relays accept links). A refusal closes
/// the connection with [`IDENTITY_REFUSED`] so the other side sees why.
fn check_identity(
    connection: &Connection,
    hello: &Hello,
    want_relay: bool,
) -> Result<(), LinkError> {
    let certified = crate::tls::peer_identities(connection);
    let claimed = crate::tls::NodeIdentity {
        role: hello.role,
        node: hello.node.clone(),
    };
    if certified.contains(&claimed) && (!want_relay || hello.role == Role::Relay) {
        return Ok(());
    }
    connection.close(
        IDENTITY_REFUSED.into(),
        b"hello does not match the certificate",
    );
    let certified = if certified.is_empty() {
        "no node identity".to_owned()
    } else {
        certified
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(LinkError::Identity {
        claimed: claimed.to_string(),
        certified,
    })
}

/// Dials `addr` (resolving a name again each time, checking the
/// certificate for `server_name`), opens the control stream and exchanges
/// hellos. The peer must be a relay whose certificate names it.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    addr: &NodeAddr,
    server_name: &str,
    hello: &Hello,
) -> Result<Link, LinkError> {
    let connection = endpoint
        .connect(addr.resolve().await?, server_name)?
        .await?;
    let (mut send, recv) = connection.open_bi().await?;
    write_control(&mut send, &Control::Hello(hello.clone())).await?;
    let mut reader = ControlReader::new(recv);
    let peer = read_hello(&mut reader).await?;
    check_identity(&connection, &peer, true)?;
    Ok(Link {
        connection,
        hello: peer,
        reader,
        send,
    })
}

/// Accepts a dialed connection: the dialer opens the control stream and
/// speaks first, and its hello must match its certificate before we
/// answer.
pub async fn accept(incoming: quinn::Incoming, hello: &Hello) -> Result<Link, LinkError> {
    let connection = incoming.await?;
    let (mut send, recv) = tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi())
        .await
        .map_err(|_| LinkError::Handshake("no control stream within 5 s"))??;
    let mut reader = ControlReader::new(recv);
    let peer = read_hello(&mut reader).await?;
    check_identity(&connection, &peer, false)?;
    write_control(&mut send, &Control::Hello(hello.clone())).await?;
    Ok(Link {
        connection,
        hello: peer,
        reader,
        send,
    })
}

/// Redial delays: 100 ms doubling to a cap, so a restarted peer is found
/// within a second or two and a dead one is not hammered.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    /// Starts at 100 ms, doubles up to `cap`.
    pub fn new(cap: Duration) -> Self {
        Backoff {
            next: Duration::from_millis(100),
            cap,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    /// A link came up: the next failure starts from 100 ms again.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

/// Why a QUIC endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The TLS material was refused.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A QUIC endpoint on `addr` for a node with this TLS identity: it dials,
/// and with `serve` it also accepts (one port, both roles).
pub fn endpoint(
    addr: SocketAddr,
    tls: &crate::tls::NodeTls,
    idle_timeout: Duration,
    serve: bool,
) -> Result<quinn::Endpoint, EndpointError> {
    let transport = crate::tls::transport_config(idle_timeout);
    let client = tls.client_config(transport.clone())?;
    let mut endpoint = if serve {
        let server = tls.server_config(transport)?;
        quinn::Endpoint::server(server, addr)
    } else {
        quinn::Endpoint::client(addr)
    }
    .map_err(|source| EndpointError::Bind { addr, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}
