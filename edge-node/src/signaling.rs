//! `GET /v1/rtc`: one WebSocket per participant session, authenticated
//! with a join token (bearer header, or `?token=` for browsers). The first
//! frame is the client's offer; then edge offers, track lists and answers
//! flow until either side leaves. See `docs/signaling.md`.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use protocol::signaling::{ClientSignal, ServerSignal};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::app::EdgeState;
use crate::mesh::PlaceError;
use crate::worker::{Command, TrackChange, WorkerHandle};
use sfu::{PeerId, PeerInfo};

/// Largest signaling frame (an SDP with many m-lines fits easily).
const MAX_FRAME: usize = 64 * 1024;
/// Time to send the offer after connecting.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames a client may send per second before it is cut off.
const MAX_FRAMES_PER_SEC: u32 = 50;

/// `?token=`.
#[derive(Debug, Deserialize)]
pub struct RtcQuery {
    token: Option<String>,
}

/// Verifies the join token, then upgrades.
pub async fn upgrade(
    State(state): State<EdgeState>,
    Query(query): Query<RtcQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let header_token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = header_token.or(query.token.as_deref()) else {
        return (StatusCode::UNAUTHORIZED, "missing join token").into_response();
    };
    let claims = match state.link.verify(token).await {
        Ok(claims) => claims,
        Err(error) => {
            log_refused_token(&error);
            return (StatusCode::UNAUTHORIZED, "invalid join token").into_response();
        }
    };
    if state.draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "this edge is draining").into_response();
    }
    let info = PeerInfo {
        call: claims.call,
        user: claims.sub,
        device: claims.device,
        session: claims.session,
        video_codec: match claims.video_codec {
            protocol::calls::VideoCodec::Vp8 => str0m::format::Codec::Vp8,
            protocol::calls::VideoCodec::H264 => str0m::format::Codec::H264,
        },
    };
    upgrade
        // Frames are small JSON (an SDP is a few KiB): the 128 KiB default
        // read buffer was a quarter of the heap a participant held
        // (heaptrack, docs/benchmarks.md).
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| session(socket, state, info))
}

/// Logs a refused join token at most once a second, with how many went
/// unlogged since: anyone can send garbage tokens, and a log line per
/// attempt would let them flood the logs.
fn log_refused_token(error: &dyn std::fmt::Display) {
    static THROTTLE: service::telemetry::LogThrottle = service::telemetry::LogThrottle::new();
    if let Some(unlogged) = THROTTLE.admit() {
        tracing::info!(%error, unlogged, "join token refused");
    }
}

async fn send(socket: &mut WebSocket, signal: &ServerSignal) -> bool {
    let Ok(text) = serde_json::to_string(signal) else {
        return false;
    };
    socket.send(Message::Text(text.into())).await.is_ok()
}

/// Asks the worker to mute or pause a track; a refusal goes back as an
/// error frame. Returns false when the worker is gone.
async fn change_track(
    socket: &mut WebSocket,
    worker: &WorkerHandle,
    peer: PeerId,
    mid: String,
    change: TrackChange,
) -> bool {
    let (reply, refused) = oneshot::channel();
    let command = Command::Track {
        peer,
        mid,
        change,
        reply,
    };
    if worker.commands.send(command).await.is_err() {
        return false;
    }
    if let Ok(Err(refused)) = refused.await {
        send(socket, &error(refused.code(), refused.to_string())).await;
    }
    true
}

/// Ends a session the edge refuses: the error frame, then a close frame
/// whose code and reason say why (never a dropped connection).
async fn refuse(mut socket: WebSocket, code: &str, message: impl Into<String>) {
    send(&mut socket, &error(code, message)).await;
    close(socket, close_code(code), code).await;
}

/// Sends a close frame (and waits briefly for the client's).
async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.to_owned().into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.recv()).await;
    }
}

/// The WebSocket close code for a refusal (4000–4999 are the
/// application's: 4000 + the HTTP status it is most like).
fn close_code(code: &str) -> u16 {
    match code {
        "bad_message" | "bad_sdp" | "unknown_track" => 4400,
        "timeout" => 4408,
        "call_full" | "node_full" => 4409,
        "rate_limited" => 4429,
        "unavailable" => 4503,
        _ => 4000,
    }
}

/// The close frame of a session the edge ended itself (the worker sends
/// the reason as an error frame first).
fn session_end(code: &str) -> Option<(u16, &'static str)> {
    match code {
        "replaced" => Some((4409, "replaced")),
        "connect_timeout" => Some((4408, "connect_timeout")),
        "revoked" => Some((4403, "revoked")),
        _ => None,
    }
}

/// An offer's declared sources, or why not.
fn parse_sources(
    sources: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, sfu::Source)>, String> {
    sources
        .iter()
        .map(|(mid, name)| match sfu::Source::parse(name) {
            Some(source) => Ok((mid.clone(), source)),
            None => Err(format!(
                "unknown source {name:?} for mid {mid:?} (camera, microphone, screen, screen_audio)"
            )),
        })
        .collect()
}

fn error(code: &str, message: impl Into<String>) -> ServerSignal {
    ServerSignal::Error {
        code: code.into(),
        message: message.into(),
    }
}

/// One participant's signaling session.
async fn session(mut socket: WebSocket, state: EdgeState, info: PeerInfo) {
    // Held for the session's life: the worker's place for it.
    let placement = match state.place(info.call, info.session) {
        Ok(placement) => placement,
        Err(PlaceError::CallFull(max)) => {
            let refused = sfu::JoinError::CallFull(max);
            refuse(socket, refused.code(), refused.to_string()).await;
            return;
        }
    };
    let worker = &state.workers[placement.worker];
    // The offer comes first.
    let (offer, sources) = match tokio::time::timeout(OFFER_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<ClientSignal>(&text) {
            Ok(ClientSignal::Offer { sdp, sources }) => match parse_sources(&sources) {
                Ok(sources) => (sdp, sources),
                Err(message) => {
                    refuse(socket, "bad_message", message).await;
                    return;
                }
            },
            _ => {
                refuse(socket, "bad_message", "the first frame must be an offer").await;
                return;
            }
        },
        Err(_) => {
            let message = format!("no offer within {} s", OFFER_TIMEOUT.as_secs());
            refuse(socket, "timeout", message).await;
            return;
        }
        _ => return,
    };
    let (signals_tx, mut signals) = mpsc::channel(64);
    let (reply_tx, reply) = oneshot::channel();
    let join = Command::Join {
        info: info.clone(),
        offer,
        sources,
        signals: signals_tx,
        reply: reply_tx,
    };
    if worker.commands.send(join).await.is_err() {
        refuse(socket, "unavailable", "this edge is shutting down").await;
        return;
    }
    let peer = match reply.await {
        Ok(Ok((peer, answer))) => {
            if !send(&mut socket, &ServerSignal::Answer { sdp: answer }).await {
                let _ = worker.commands.send(Command::Leave { peer }).await;
                return;
            }
            peer
        }
        Ok(Err(refused)) => {
            refuse(socket, refused.code(), refused.to_string()).await;
            return;
        }
        Err(_) => return,
    };
    tracing::info!(peer, call = %info.call, user = %info.user, device = %info.device, "participant joined");
    let mut window = tokio::time::Instant::now();
    let mut frames = 0u32;
    // How the session ends, for the close frame: a normal close unless
    // something below says otherwise.
    let mut ending: (u16, &str) = (1000, "left");
    loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                Some(signal) => {
                    // The worker's last word before it drops the peer.
                    if let ServerSignal::Error { code, .. } = &signal
                        && let Some(end) = session_end(code)
                    {
                        ending = end;
                    }
                    if !send(&mut socket, &signal).await { break }
                }
                None => {
                    // The worker closed this peer: its transport failed,
                    // or the reason it just sent.
                    if ending.0 == 1000 {
                        ending = (4410, "gone");
                    }
                    break;
                }
            },
            message = socket.recv() => {
                let Some(Ok(message)) = message else { break };
                if window.elapsed() >= Duration::from_secs(1) {
                    window = tokio::time::Instant::now();
                    frames = 0;
                }
                frames += 1;
                if frames > MAX_FRAMES_PER_SEC {
                    send(&mut socket, &error("rate_limited", "too many signaling frames")).await;
                    ending = (close_code("rate_limited"), "rate_limited");
                    break;
                }
                match message {
                    Message::Text(text) => match serde_json::from_str::<ClientSignal>(&text) {
                        Ok(ClientSignal::Answer { sdp }) => {
                            let (tx, rx) = oneshot::channel();
                            if worker.commands.send(Command::Answer { peer, sdp, reply: tx }).await.is_err() {
                                break;
                            }
                            if let Ok(Err(refused)) = rx.await {
                                send(&mut socket, &error(refused.code(), refused.to_string())).await;
                            }
                        }
                        Ok(ClientSignal::Mute { mid, muted }) => {
                            if !change_track(&mut socket, worker, peer, mid, TrackChange::Mute(muted)).await {
                                break;
                            }
                        }
                        Ok(ClientSignal::Pause { mid, paused }) => {
                            if !change_track(&mut socket, worker, peer, mid, TrackChange::Pause(paused)).await {
                                break;
                            }
                        }
                        Ok(ClientSignal::Layers { mid, max, height }) => {
                            if !change_track(&mut socket, worker, peer, mid, TrackChange::MaxLayer { max, height }).await {
                                break;
                            }
                        }
                        Ok(ClientSignal::Leave) => break,
                        Ok(ClientSignal::Offer { sdp, sources }) => {
                            let sources = match parse_sources(&sources) {
                                Ok(sources) => sources,
                                Err(message) => {
                                    send(&mut socket, &error("bad_message", message)).await;
                                    continue;
                                }
                            };
                            let (tx, rx) = oneshot::channel();
                            if worker.commands.send(Command::Offer { peer, sdp, sources, reply: tx }).await.is_err() {
                                break;
                            }
                            match rx.await {
                                Ok(Ok(answer)) => {
                                    if !send(&mut socket, &ServerSignal::Answer { sdp: answer }).await {
                                        break;
                                    }
                                }
                                Ok(Err(refused)) => {
                                    send(&mut socket, &error(refused.code(), refused.to_string())).await;
                                }
                                Err(_) => break,
                            }
                        }
                        Err(e) => {
                            send(&mut socket, &error("bad_message", e.to_string())).await;
                        }
                    },
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        }
    }
    let _ = worker.commands.send(Command::Leave { peer }).await;
    close(socket, ending.0, ending.1).await;
    tracing::info!(peer, call = %info.call, "participant left");
}
