// cascade.js: a small client for Cascade's protocols, with no dependencies.
//
//   import { Cascade } from './cascade.js';
//   const c = new Cascade(location.origin);
//   await c.login('alice', 'password');            // or c.register({...})
//   c.on('message.created', (data) => ...);         // gateway events
//   c.connect();                                    // WebSocket, resumes by cursor
//   const page = await c.api('GET', '/v1/conversations');
//   const call = await c.joinCall(callId, { region: 'us', video: true });
//   call.onTrack = (track, info) => ...;            // remote media
//   call.setMuted('audio', true); await call.leave();
//
// - REST (docs/api.md): `api()` adds the access token, refreshes it before it
//   expires and once on a 401; refresh tokens work once, so the new pair is
//   stored before it is used.
// - Gateway (docs/websocket.md): one WebSocket; every event's `cursor` is
//   kept and a reconnect resumes after it, so nothing is lost or repeated.
// - Calls (docs/signaling.md): `joinCall()` gets an edge and a join token,
//   opens the edge's `/v1/rtc`, publishes the camera and microphone, and
//   answers the edge's offers in order. `call.migrate` (the edge died or is
//   draining) reconnects to the new edge without the user doing anything;
//   so does losing the edge (its socket closes, or ICE/DTLS fails): the
//   session rejoins naming the edge it cannot reach (docs/failover.md).
// - Replicas: `new Cascade(['https://a', 'https://b'])` takes several API
//   origins (or one load balancer); a request that gets no answer moves to
//   the next, and the gateway reconnects with jittered backoff capped at a
//   few seconds, resuming from its cursor.

const REFRESH_MARGIN_MS = 60_000;
// Reconnect backoff: 250 ms doubling, capped, each delay jittered to
// 50-100 % so a replica's clients do not all return in one instant.
const BACKOFF_BASE_MS = 250;
const BACKOFF_CAP_MS = 3000;
// Edge loss: a connection 'disconnected' this long counts as lost
// (ICE consent keeps failing); 'failed' or a closed signaling socket at once.
const DISCONNECTED_GRACE_MS = 1500;
// A rejoin or migration is done when the new connection is connected, not
// when its offer is sent; one that is not connected by then is lost too.
// (The edge gives up on an unconnected session after 10 s.)
const CONNECT_BOUND_MS = 8000;

/** The delay before reconnect attempt `attempt` (0, 1, …). */
export function backoff(attempt) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return Math.round(ceiling * (0.5 + Math.random() / 2));
}

// A request may go to another replica after a network error only if it
// cannot apply twice.
const IDEMPOTENT = new Set(['GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS']);

/** A failed API call: `status`, `code` (e.g. `not_found`) and `message`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

export class Cascade {
  /** `base`: the control plane's origin (`http://127.0.0.1:8080`), or a
   * list of replicas' origins tried in turn. */
  constructor(base, storage = window.sessionStorage) {
    this.origins = (Array.isArray(base) ? base : [base]).map((b) => b.replace(/\/$/, ''));
    this.current = 0;
    this.storage = storage;
    this.tokens = JSON.parse(storage.getItem('cascade.tokens') || 'null');
    this.me = JSON.parse(storage.getItem('cascade.me') || 'null');
    this.cursor = storage.getItem('cascade.cursor');
    this.handlers = new Map();
    this.deviceId = storage.getItem('cascade.device') || `web-${crypto.randomUUID().slice(0, 8)}`;
    storage.setItem('cascade.device', this.deviceId);
    this.ws = null;
    this.wantSocket = false;
    this.online = false;
    this.refreshing = null;
  }

  /** The origin requests go to now. */
  get base() {
    return this.origins[this.current % this.origins.length];
  }

  /** Moves to the next origin (after one stopped answering). */
  failover() {
    if (this.origins.length > 1) this.current = (this.current + 1) % this.origins.length;
  }

  /** Whether a login is stored. */
  get signedIn() {
    return !!this.tokens;
  }

  /** Subscribes to gateway events of `type` (`*`: all; `open`, `close` too). */
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(handler);
  }

  emit(type, data, frame) {
    for (const h of this.handlers.get(type) || []) h(data, frame);
    if (type !== '*') for (const h of this.handlers.get('*') || []) h(data, frame, type);
  }

  saveSession(session) {
    this.setTokens(session.tokens);
    this.me = session.user;
    this.storage.setItem('cascade.me', JSON.stringify(this.me));
  }

  setTokens(tokens) {
    this.tokens = { ...tokens, expires_at: Date.now() + tokens.expires_in * 1000 };
    this.storage.setItem('cascade.tokens', JSON.stringify(this.tokens));
  }

  /** `accepted_terms`: the version of `GET /v1/terms` the person accepted. */
  async register({ username, email, password, display_name, accepted_terms }) {
    const session = await this.request('POST', '/v1/auth/register', { username, email, password, display_name, accepted_terms }, false);
    this.saveSession(session);
    return session.user;
  }

  async login(login, password) {
    const session = await this.request('POST', '/v1/auth/login', { login, password }, false);
    this.saveSession(session);
    return session.user;
  }

  async logout() {
    try { await this.api('POST', '/v1/auth/logout'); } catch (_) { /* gone already */ }
    this.forget();
  }

  /** Drops this tab's session (tokens, profile, cursor). */
  forget() {
    this.disconnect();
    this.tokens = null;
    this.me = null;
    for (const k of ['cascade.tokens', 'cascade.me', 'cascade.cursor']) this.storage.removeItem(k);
  }

  /** Everything the service keeps about the caller, as a ZIP Blob
   * (`POST /v1/me/export`; needs the password again). */
  async exportData(password) {
    const response = await fetch(`${this.base}/v1/me/export`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await this.accessToken()}`, 'content-type': 'application/json' },
      body: JSON.stringify({ password }),
    });
    if (!response.ok) {
      const err = (await response.json().catch(() => ({}))).error || {};
      throw new ApiError(response.status, err.code, err.message);
    }
    return response.blob();
  }

  /** Erases the account (`DELETE /v1/me`), then forgets this session. */
  async deleteAccount(password) {
    await this.api('DELETE', '/v1/me', { password });
    this.forget();
  }

  /** A fresh access token (refreshed when near expiry; one refresh at a time). */
  async accessToken(force = false) {
    if (!this.tokens) throw new ApiError(401, 'not_signed_in', 'not signed in');
    if (!force && this.tokens.expires_at - Date.now() > REFRESH_MARGIN_MS) return this.tokens.access_token;
    if (!this.refreshing) {
      const refresh_token = this.tokens.refresh_token;
      this.refreshing = this.request('POST', '/v1/auth/refresh', { refresh_token }, false)
        .then((tokens) => { this.setTokens(tokens); })
        .catch((e) => {
          if (e.status === 401) { this.tokens = null; this.storage.removeItem('cascade.tokens'); this.emit('signed_out', e); }
          throw e;
        })
        .finally(() => { this.refreshing = null; });
    }
    await this.refreshing;
    return this.tokens.access_token;
  }

  /** An authenticated REST call; the JSON reply (or null for 204). */
  async api(method, path, body) {
    try {
      return await this.request(method, path, body, await this.accessToken());
    } catch (e) {
      if (e.status !== 401 || !this.tokens) throw e;
      return this.request(method, path, body, await this.accessToken(true));
    }
  }

  /**
   * Uploads a Blob/File as an attachment of `kind` (`image`, `file`,
   * `voice`); the attachment view (docs/api.md, Attachments).
   */
  async upload(kind, file, name) {
    const send = async (token) => {
      const form = new FormData();
      form.append('kind', kind);
      form.append('file', file, name || file.name || 'file');
      const response = await fetch(`${this.base}/v1/attachments`, {
        method: 'POST', headers: { authorization: `Bearer ${token}` }, body: form,
      });
      const json = await response.json().catch(() => ({}));
      if (!response.ok) {
        const err = json.error || {};
        throw new ApiError(response.status, err.code, err.message);
      }
      return json;
    };
    try {
      return await send(await this.accessToken());
    } catch (e) {
      if (e.status !== 401 || !this.tokens) throw e;
      return send(await this.accessToken(true));
    }
  }

  /**
   * An attachment's bytes (or its thumbnail) as an object URL for <img>,
   * <audio> or a download link; cached per path. Downloads need the access
   * token, which an <img src> cannot carry.
   */
  async attachmentUrl(id, thumbnail = false) {
    return this.blobUrl(`/v1/attachments/${id}${thumbnail ? '/thumbnail' : ''}`);
  }

  /** A user's avatar as a URL for <img>: an uploaded one (a path of ours,
   * fetched with the token), else the URL they gave; null without one. */
  async avatarUrl(user) {
    const url = user && user.avatar_url;
    if (!url) return null;
    return url.startsWith('/v1/') ? this.blobUrl(url) : url;
  }

  /** The bytes at one of our authenticated paths as an object URL. */
  async blobUrl(path) {
    this.objectUrls = this.objectUrls || new Map();
    if (!this.objectUrls.has(path)) {
      this.objectUrls.set(path, (async () => {
        const response = await fetch(this.base + path, { headers: { authorization: `Bearer ${await this.accessToken()}` } });
        if (!response.ok) throw new ApiError(response.status, 'download_failed', `download failed (${response.status})`);
        return URL.createObjectURL(await response.blob());
      })());
      this.objectUrls.get(path).catch(() => this.objectUrls.delete(path));
    }
    return this.objectUrls.get(path);
  }

  async request(method, path, body, token) {
    const headers = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (token) headers.authorization = `Bearer ${token}`;
    // Another replica may take it when this one gives no answer: always
    // for a 502/503/504 from a proxy in front of a dead one, and after a
    // network error when repeating cannot apply it twice (idempotent
    // methods, and messages carrying a client_message_id).
    const retryable = IDEMPOTENT.has(method) || (body && body.client_message_id);
    let response;
    for (let tries = 0; ; tries++) {
      const last = tries + 1 >= this.origins.length;
      try {
        response = await fetch(this.base + path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (e) {
        if (last || !retryable) { this.failover(); throw e; }
        this.failover();
        continue;
      }
      if (!last && [502, 503, 504].includes(response.status) && !response.headers.get('content-type')?.includes('json')) {
        this.failover();
        continue;
      }
      break;
    }
    if (response.status === 204) return null;
    const json = await response.json().catch(() => ({}));
    if (!response.ok) {
      const err = json.error || {};
      throw new ApiError(response.status, err.code, err.message);
    }
    return json;
  }

  /** Opens the gateway; reconnects with the last cursor until `disconnect`. */
  connect() {
    this.wantSocket = true;
    if (this.ws) return;
    this.openSocket(0);
  }

  disconnect() {
    this.wantSocket = false;
    if (this.ws) this.ws.close(1000);
    this.ws = null;
  }

  async openSocket(attempt) {
    if (!this.wantSocket) return;
    let token;
    try {
      token = await this.accessToken();
    } catch (e) {
      if (e.status === 401) return;
      setTimeout(() => this.openSocket(attempt + 1), backoff(attempt));
      return;
    }
    const url = new URL('/v1/ws', this.base.replace(/^http/, 'ws'));
    if (this.cursor) url.searchParams.set('cursor', this.cursor);
    const ws = new WebSocket(url);
    this.ws = ws;
    let ready = false;
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token }));
    ws.onmessage = (m) => {
      let frame;
      try { frame = JSON.parse(m.data); } catch (_) { return; }
      if (frame.type === 'ready') {
        attempt = 0;
        ready = true;
        this.online = true;
        this.emit('open', frame);
        return;
      }
      if (frame.type === 'resync_required') {
        this.setCursor(frame.cursor);
        this.emit('resync', frame);
        return;
      }
      if (frame.cursor) this.setCursor(frame.cursor);
      this.emit(frame.type, frame.data ?? frame, frame);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return; // replaced already
      this.ws = null;
      this.online = false;
      this.emit('close', e);
      if (!this.wantSocket) return;
      // This replica is gone (or never got as far as `ready`): the next
      // attempt goes to another one, resuming from the same cursor.
      if (!ready || e.code === 1006 || e.code === 1001 || e.code === 1011 || e.code === 1012) this.failover();
      // 4401: the token expired or the login ended: refresh, then retry.
      const delay = e.code === 4401 ? 0 : backoff(attempt);
      if (e.code === 4401 && this.tokens) this.tokens.expires_at = 0;
      setTimeout(() => this.openSocket(attempt + 1), delay);
    };
  }

  setCursor(cursor) {
    this.cursor = cursor;
    this.storage.setItem('cascade.cursor', cursor);
  }

  /** Sends an ephemeral frame (`typing`, `presence`) if the socket is open. */
  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  /** Joins call `callId`: see {@link CallSession}. */
  /** `audioDevice`, `videoDevice`: `deviceId`s from `enumerateDevices` (none: the default). */
  async joinCall(callId, { region, video = true, audio = true, probes, audioDevice, videoDevice } = {}) {
    const session = new CallSession(this, callId, { region, video, audio, probes, audioDevice, videoDevice });
    await session.start();
    return session;
  }
}

/**
 * One device in one call: the edge's signaling socket and an
 * RTCPeerConnection. Callbacks: `onTrack(track, info)` for each remote track
 * (`info`: `{mid, kind, source, user_id, device_id, muted}` once the edge
 * names it), `onTracks(list)`, `onSpeakers(msg)`, `onData(envelope)` (a
 * data message another participant sent: `{user_id, device_id, text}`),
 * `onState(state)`, `onError(error)`.
 */
export class CallSession {
  constructor(client, callId, options) {
    this.client = client;
    this.callId = callId;
    this.options = options;
    this.stream = null;
    this.pc = null;
    this.ws = null;
    this.tracks = [];
    this.remote = new Map();
    this.chain = Promise.resolve();
    this.muted = { audio: false, video: false };
    this.onTrack = () => {};
    this.onTracks = () => {};
    this.onLayers = () => {};
    this.layers = null;
    this.onSpeakers = () => {};
    this.speakers = null;
    this.onData = () => {};
    this.channel = null;
    // The screen being shared, and its transceiver in this connection.
    this.screen = null;
    this.screenTransceiver = null;
    this.viewHeights = new Map();
    this.onState = () => {};
    this.onError = () => {};
    this.left = false;
    // Set while a rejoin after losing the edge is under way.
    this.rejoining = null;
    this.disconnectTimer = null;
    this.migrateHandler = (data) => {
      if (data.call_id !== this.callId || data.device_id !== this.client.deviceId) return;
      // Only a move of the session we hold: after a rejoin, a migrate of
      // the replaced session is stale; during one, the rejoin decides.
      if (this.rejoining || (this.join && data.join.session_id !== this.join.session_id)) return;
      this.reconnect(data.join);
    };
    client.on('call.migrate', this.migrateHandler);
  }

  /** `POST …/join` for this device; `unreachable`: the edge it lost. */
  requestJoin(unreachable) {
    const { region, video, audio, probes } = this.options;
    const body = {
      device_id: this.client.deviceId,
      region: region || null,
      probes: probes || [],
      audio: audio && !this.muted.audio,
      video: video && !this.muted.video,
    };
    if (unreachable) body.unreachable_edge = unreachable;
    return this.client.api('POST', `/v1/calls/${this.callId}/join`, body);
  }

  async start() {
    const { video, audio } = this.options;
    const join = await this.requestJoin(null);
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: audio ? this.constraints('audio') : false,
      video: video ? this.constraints('video') : false,
    });
    await this.connect(join);
  }

  /** getUserMedia constraints for `kind`, on the chosen device if any. */
  constraints(kind, deviceId = this.options[`${kind}Device`]) {
    const device = deviceId ? { deviceId: { exact: deviceId } } : {};
    // 960×540: enough for three simulcast layers (240, 480 and 960 wide).
    return kind === 'video' ? { width: 960, height: 540, ...device } : (deviceId ? device : true);
  }

  /** The device (`deviceId`) this session captures `kind` from now. */
  deviceOf(kind) {
    const track = this.stream && this.stream.getTracks().find((t) => t.kind === kind);
    return track ? track.getSettings().deviceId : null;
  }

  /**
   * Switches this device's microphone or camera during the call: the new
   * track replaces the old one in the same sender (no renegotiation), and
   * keeps its muted state.
   */
  async switchDevice(kind, deviceId) {
    const old = this.stream.getTracks().find((t) => t.kind === kind);
    if (!old) throw new Error(`this call sends no ${kind}`);
    const fresh = await navigator.mediaDevices.getUserMedia({ [kind]: this.constraints(kind, deviceId) });
    const track = fresh.getTracks()[0];
    track.enabled = !this.muted[kind];
    const sender = this.pc && this.pc.getSenders().find((x) => x.track === old);
    if (sender) await sender.replaceTrack(track);
    this.stream.removeTrack(old);
    this.stream.addTrack(track);
    old.stop();
    this.options[`${kind}Device`] = deviceId;
  }

  /** The edge this device is on (`{id, region}`). */
  get edge() {
    return this.join ? this.join.edge : null;
  }

  async connect(join) {
    this.join = join;
    this.onState('connecting');
    const pc = new RTCPeerConnection({ iceServers: join.ice_servers || [] });
    this.pc = pc;
    this.remote.clear();
    pc.ontrack = (e) => {
      const mid = e.transceiver && e.transceiver.mid;
      this.remote.set(mid, e.track);
      this.onTrack(e.track, this.tracks.find((t) => t.mid === mid) || { mid, kind: e.track.kind });
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      const state = pc.connectionState;
      clearTimeout(this.disconnectTimer);
      if (state === 'failed') this.lost(join);
      else if (state === 'disconnected') {
        // Consent checks are failing; give a blip a moment to pass.
        this.disconnectTimer = setTimeout(() => {
          if (this.pc === pc && pc.connectionState === 'disconnected') this.lost(join);
        }, DISCONNECTED_GRACE_MS);
      }
      this.onState(this.rejoining ? 'reconnecting' : state);
    };
    // Call data messages (raised hands, reactions) travel on one channel,
    // through the edge to everyone else in the call.
    const channel = pc.createDataChannel('cascade');
    this.channel = channel;
    channel.onmessage = (m) => {
      try { this.onData(JSON.parse(m.data)); } catch (_) { /* not an envelope */ }
    };
    this.viewHeights.clear();
    for (const track of this.stream.getTracks()) {
      if (track.kind === 'video') {
        // Simulcast: the edge sends each viewer the layer that fits its
        // tile and its bandwidth (docs/signaling.md).
        pc.addTransceiver(track, {
          direction: 'sendonly',
          streams: [this.stream],
          sendEncodings: [
            { rid: 'q', scaleResolutionDownBy: 4 },
            { rid: 'h', scaleResolutionDownBy: 2 },
            { rid: 'f' },
          ],
        });
      } else {
        pc.addTransceiver(track, { direction: 'sendonly', streams: [this.stream] });
      }
    }
    // A screen shared before a migration is shared again.
    this.screenTransceiver = this.screen
      ? pc.addTransceiver(this.screen, { direction: 'sendonly', sendEncodings: [{ maxFramerate: 15 }] })
      : null;
    const url = `${join.edge.signaling_url}?token=${encodeURIComponent(join.token)}`;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onmessage = (m) => {
      // Only the current connection's messages, each after the last.
      this.chain = this.chain
        .then(() => (this.ws === ws ? this.handle(JSON.parse(m.data)) : null))
        .catch((e) => this.onError(e));
    };
    ws.onclose = (e) => {
      if (this.ws !== ws || this.left) return;
      // 4403 revoked: this device left the call from elsewhere, was
      // removed, the call ended, or the session moved (`revoked` asks).
      // 4409 replaced: a newer socket of this session took over. (4409
      // is also a full call or node, reason `call_full`/`node_full`: that
      // edge cannot take this session, so it counts as lost below.)
      if (e.code === 4403) {
        this.revoked(join);
        return;
      }
      if (e.code === 4409 && e.reason === 'replaced') return;
      // The edge went away (killed, restarted, or the network between):
      // a socket we did not close ourselves means the session is lost.
      this.lost(join);
    };
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error('cannot reach the edge'));
    });
    await this.offer();
  }

  /** Offers this device's tracks (first, and again when they change), in
   * the signaling chain so it never overlaps answering an edge offer. */
  offer() {
    const turn = this.chain.then(async () => {
      const { pc, ws } = this;
      if (!pc || !ws) return;
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      const sources = {};
      if (this.screenTransceiver && this.screenTransceiver.mid) sources[this.screenTransceiver.mid] = 'screen';
      ws.send(JSON.stringify({ type: 'offer', sdp: offer.sdp, sources }));
    });
    this.chain = turn.catch((e) => this.onError(e));
    return turn;
  }

  /** Shares a screen or window (`getDisplayMedia`) as a track of its own;
   * ending it in the browser's own bar stops sharing too. */
  async shareScreen() {
    if (this.screen) return;
    const display = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
    const [track] = display.getVideoTracks();
    track.onended = () => this.stopScreen();
    this.screen = track;
    // A screen wants detail more than motion: one encoding, 15 frames/s.
    track.contentHint = 'detail';
    this.screenTransceiver = this.pc.addTransceiver(track, { direction: 'sendonly', sendEncodings: [{ maxFramerate: 15 }] });
    await this.offer();
    this.announceMedia();
  }

  /** Stops sharing: the m-line stops, and the edge ends the track. */
  async stopScreen() {
    if (!this.screen) return;
    const track = this.screen;
    this.screen = null;
    track.onended = null;
    track.stop();
    if (this.screenTransceiver) this.screenTransceiver.stop();
    this.screenTransceiver = null;
    if (this.pc) await this.offer();
    this.announceMedia();
  }

  /** Sends a call data message (any JSON value) to everyone else in the
   * call; false if the channel is not open. */
  sendData(value) {
    if (!this.channel || this.channel.readyState !== 'open') return false;
    this.channel.send(JSON.stringify(value));
    return true;
  }

  async handle(msg) {
    if (msg.type === 'answer') {
      await this.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
      // Mutes set before the session existed.
      for (const kind of ['audio', 'video']) if (this.muted[kind]) this.sendMute(kind);
    } else if (msg.type === 'offer') {
      // Crossed offers: ours stands; the edge drops its own and offers
      // again after answering ours (docs/signaling.md).
      if (this.pc.signalingState === 'have-local-offer') return;
      await this.pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
      const answer = await this.pc.createAnswer();
      await this.pc.setLocalDescription(answer);
      this.ws.send(JSON.stringify({ type: 'answer', sdp: answer.sdp }));
    } else if (msg.type === 'tracks') {
      this.tracks = msg.tracks;
      this.onTracks(msg.tracks);
    } else if (msg.type === 'layers') {
      this.layers = msg;
      this.onLayers(msg);
    } else if (msg.type === 'encodings') {
      // Dynacast: nobody needs the other layers now; stop encoding them.
      const tr = this.pc.getTransceivers().find((t) => t.mid === msg.mid);
      if (tr && tr.sender) {
        const params = tr.sender.getParameters();
        if (params.encodings && params.encodings.length > 1) {
          for (const e of params.encodings) e.active = !e.rid || msg.active.includes(e.rid);
          await tr.sender.setParameters(params);
        }
      }
    } else if (msg.type === 'speakers') {
      this.speakers = msg;
      this.onSpeakers(msg);
    } else if (msg.type === 'error') {
      // The edge ending this socket says why; the close that follows acts.
      if (msg.code === 'revoked' || msg.code === 'replaced') return;
      this.onError(new Error(`${msg.code}: ${msg.message}`));
    }
  }

  /** The edge revoked the session of `join` (4403). Usually this device
   * left the call, was removed, or the call ended. But the old edge also
   * revokes a session the control plane moved to another edge, and that
   * may reach the page before its `call.migrate` does. The call's state
   * tells which: a device still in the call rejoins instead of ending. */
  async revoked(join) {
    let stillIn = false;
    try {
      const call = await this.client.api('GET', `/v1/calls/${this.callId}`);
      const me = this.client.me && this.client.me.id;
      stillIn = call.state !== 'ended'
        && (call.participants || []).some((p) => p.user_id === me && p.device_id === this.client.deviceId);
    } catch (_) {
      // Cannot tell: the edge's word stands.
    }
    if (this.left || this.join !== join) return; // moved meanwhile
    if (stillIn) {
      this.lost(join);
      return;
    }
    this.closeTransport();
    this.onState('ended');
  }

  /** Reconnects to a new edge (after `call.migrate`), keeping the camera. */
  async reconnect(join) {
    this.closeTransport();
    let connected = false;
    try {
      await this.connect(join);
      connected = await this.connected(join);
    } catch (_) {
      // Not reachable: below.
    }
    // The new edge cannot be reached either (unless something newer
    // replaced this connection meanwhile): ask again.
    if (!connected) this.lost(join);
  }

  /** Whether the connection of `join` (the current one) becomes
   * connected within CONNECT_BOUND_MS; false as soon as it is lost or
   * replaced. */
  async connected(join) {
    const deadline = performance.now() + CONNECT_BOUND_MS;
    while (this.join === join && !this.lostAgain && !this.left && performance.now() < deadline) {
      if (this.pc && this.pc.connectionState === 'connected') return true;
      await new Promise((r) => setTimeout(r, 50));
    }
    return false;
  }

  /** The connection of `join` is lost: rejoin (naming its edge, so the
   * control plane looks at it and places this device elsewhere) until a
   * new connection is connected, the call ends or the user leaves. One
   * rejoin at a time; a report about a connection this device has since
   * replaced changes nothing, and one about the connection a rejoin is
   * making makes it try again (it is not swallowed). */
  lost(join) {
    if (this.left || this.join !== join) return;
    if (this.rejoining) {
      this.lostAgain = true;
      return;
    }
    let edgeId = join.edge.id;
    clearTimeout(this.disconnectTimer);
    this.lostAt = performance.now();
    this.onState('reconnecting');
    this.rejoining = (async () => {
      for (let attempt = 0; !this.left; attempt++) {
        try {
          const placed = await this.requestJoin(edgeId);
          if (this.left) return;
          this.closeTransport();
          // Reports from here on are about the connection being made.
          this.lostAgain = false;
          await this.connect(placed);
          if (await this.connected(placed)) return;
          throw new Error(`the edge ${placed.edge.id} did not connect`);
        } catch (e) {
          // The call is over (or this device may not be in it): stop.
          if (e instanceof ApiError && [403, 404, 409].includes(e.status)) {
            this.onState('ended');
            return;
          }
          // A fresh placement that could not be reached is the one to name.
          if (this.join) edgeId = this.join.edge.id;
          await new Promise((r) => setTimeout(r, backoff(attempt)));
        }
      }
    })().finally(() => {
      this.rejoining = null;
      this.lostAgain = false;
      if (this.pc) this.onState(this.pc.connectionState);
    });
  }

  /** Mutes or unmutes this device's `audio` or `video`. */
  setMuted(kind, muted) {
    this.muted[kind] = muted;
    for (const t of this.stream.getTracks()) if (t.kind === kind) t.enabled = !muted;
    this.sendMute(kind);
    this.announceMedia();
  }

  /** Tells the call (`call.media_state`) what this device sends. */
  announceMedia() {
    const media = { device_id: this.client.deviceId, audio: !this.muted.audio, video: !this.muted.video, screen: !!this.screen };
    this.client.api('POST', `/v1/calls/${this.callId}/media`, media).catch(() => {});
  }

  /** Tells the edge how tall the video received on `mid` is shown, so it
   * sends the simulcast layer that fits (sent again only when it changes). */
  setViewHeight(mid, height) {
    const px = Math.round(height);
    if (!mid || px <= 0 || this.viewHeights.get(mid) === px) return;
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    this.viewHeights.set(mid, px);
    this.ws.send(JSON.stringify({ type: 'layers', mid, height: px }));
  }

  sendMute(kind) {
    if (!this.pc || !this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    for (const tr of this.pc.getTransceivers()) {
      if (tr.sender && tr.sender.track && tr.sender.track.kind === kind && tr.mid !== null) {
        this.ws.send(JSON.stringify({ type: 'mute', mid: tr.mid, muted: this.muted[kind] }));
      }
    }
  }

  /** Inbound video frames decoded and audio bytes received so far, the
   * RTT, and what happened since the previous call: the share of packets
   * lost (`loss`, 0-1) and whether any media arrived at all (`flowing`). */
  async stats() {
    let framesDecoded = 0, audioBytes = 0, rtt = null, received = 0, lost = 0;
    const state = this.rejoining ? 'reconnecting' : this.pc ? this.pc.connectionState : 'closed';
    if (!this.pc) return { framesDecoded, audioBytes, rtt, loss: null, flowing: false, state };
    const report = await this.pc.getStats();
    report.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') framesDecoded += r.framesDecoded || 0;
      if (r.type === 'inbound-rtp' && r.kind === 'audio') audioBytes += r.bytesReceived || 0;
      if (r.type === 'inbound-rtp') {
        received += r.packetsReceived || 0;
        lost += Math.max(0, r.packetsLost || 0);
      }
      if (r.type === 'candidate-pair' && r.nominated && r.currentRoundTripTime !== undefined) rtt = r.currentRoundTripTime;
    });
    const before = this.lastCounts && this.lastCounts.pc === this.pc ? this.lastCounts : { received: 0, lost: 0 };
    this.lastCounts = { pc: this.pc, received, lost };
    const dReceived = received - before.received;
    const dLost = lost - before.lost;
    const loss = dReceived + dLost > 0 ? dLost / (dReceived + dLost) : null;
    return { framesDecoded, audioBytes, rtt, loss, flowing: dReceived > 0, state };
  }

  closeTransport() {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try { ws.send(JSON.stringify({ type: 'leave' })); } catch (_) { /* closed */ }
      ws.close();
    }
    clearTimeout(this.disconnectTimer);
    if (this.pc) this.pc.close();
    this.pc = null;
    // A step pending on the closed connection may never settle: the next
    // connection's signaling must not wait behind it.
    this.chain = Promise.resolve();
  }

  /** Leaves the call (the server ends a direct call when one side leaves). */
  async leave() {
    this.left = true;
    this.closeTransport();
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    if (this.screen) this.screen.stop();
    this.screen = null;
    const list = this.client.handlers.get('call.migrate') || [];
    const i = list.indexOf(this.migrateHandler);
    if (i >= 0) list.splice(i, 1);
    await this.client.api('POST', `/v1/calls/${this.callId}/leave`, { device_id: this.client.deviceId }).catch(() => {});
  }
}
