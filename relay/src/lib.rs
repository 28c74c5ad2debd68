//! The QUIC relay (`cascade relay`, issue 7): cascades media between edges
//! and regions so a track crosses the WAN once per subscribing region. Empty
//! until that issue lands.
//!
//! Architecture invariant (to keep when it lands): routing (who gets which
//! track and layer) is sans-IO; quinn lives only in the async shell.
