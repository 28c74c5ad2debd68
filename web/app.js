// The Cascade web client: sign-in, contacts, conversations, chat and calls,
// on top of cascade.js. Plain DOM; every control has a label and works from
// the keyboard.

import { Cascade, ApiError } from './cascade.js';

// The API: this page's origin, or the replicas (or load balancers) named
// in `<meta name="cascade-api" content="https://a,https://b">`.
function apiOrigins() {
  const meta = document.querySelector('meta[name="cascade-api"]');
  const list = ((meta && meta.content) || '').split(',').map((o) => o.trim()).filter(Boolean);
  return list.length ? list : [location.origin];
}
const client = new Cascade(apiOrigins());
const app = document.getElementById('app');

const state = {
  conversations: new Map(),
  users: new Map(),
  presence: new Map(),
  contacts: [],
  results: [],
  active: null,
  messages: new Map(),
  typing: new Map(),
  editing: null,
  regions: [],
  history: [],
  region: localStorage.getItem('cascade.region') || '',
  call: null,
  ringing: null,
  error: '',
  // The gateway is down and being reconnected (shown on the chat).
  offline: false,
  // Attachment elements by attachment id, reused across renders so an
  // image does not flicker and a playing voice message keeps playing.
  media: new Map(),
  // The voice recorder while recording: { recorder, chunks, conv }.
  recording: null,
  // The notification feed (newest first), its unread count, and whether
  // the bell's list is open.
  notifications: [],
  unreadNotifications: 0,
  bellOpen: false,
  // GET /v1/terms: what signing up accepts.
  terms: null,
  // The profile and own-data panel, and what it last said.
  profileOpen: false,
  profileNote: '',
  profileDraft: {},
  confirmDelete: false,
  // The last export downloaded (its size; the browser test reads it).
  lastExport: null,
  // Microphones and cameras (enumerateDevices) and the chosen ones.
  devices: { audioinput: [], videoinput: [] },
  mic: localStorage.getItem('cascade.mic') || '',
  camera: localStorage.getItem('cascade.camera') || '',
  // Message search: the query, its hits, and the next page's cursor.
  search: null,
  searchDraft: null,
};
window.cascadeState = state;
window.cascadeClient = client;

// ---------- helpers ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function userName(id) {
  if (client.me && id === client.me.id) return 'You';
  const u = state.users.get(id);
  return u ? (u.display_name || u.username) : 'Someone';
}

// A round picture of `user` (their initial until it loads, or without
// one). Uploaded avatars are fetched with the access token.
function avatar(user, large = false) {
  const name = (user && (user.display_name || user.username)) || '?';
  const el = h('span', { class: `avatar${large ? ' large' : ''}`, 'aria-hidden': 'true' }, name.trim().charAt(0).toUpperCase());
  client.avatarUrl(user).then((url) => {
    if (url) el.replaceChildren(h('img', { src: url, alt: '' }));
  }).catch(() => {});
  return el;
}

function rememberUsers(list) {
  for (const u of list || []) state.users.set(u.id, u);
}

function title(conv) {
  if (!conv) return '';
  if (conv.kind === 'group') return conv.name || 'Group';
  const other = (conv.members || []).map((m) => m.user.id).find((id) => id !== client.me.id);
  return other ? userName(other) : 'Direct conversation';
}

function otherMember(conv) {
  return (conv.members || []).map((m) => m.user.id).find((id) => id !== client.me.id);
}

function showError(e) {
  state.error = e instanceof ApiError ? `${e.message}` : String(e.message || e);
  render();
}

// ---------- data ----------

async function loadConversations() {
  const list = await client.api('GET', '/v1/conversations?limit=100');
  const fresh = new Map();
  for (const conv of list.conversations) {
    const known = state.conversations.get(conv.id);
    if (known && known.members) conv.members = known.members;
    fresh.set(conv.id, conv);
  }
  state.conversations = fresh;
  await Promise.all(
    [...fresh.values()].filter((c) => !c.members).map(async (c) => {
      const full = await client.api('GET', `/v1/conversations/${c.id}`);
      c.members = full.members;
      rememberUsers((full.members || []).map((m) => m.user));
    }),
  );
}

async function loadContacts() {
  const list = await client.api('GET', '/v1/contacts');
  state.contacts = list.contacts;
  rememberUsers(list.contacts.map((c) => c.user));
}

async function loadHistory() {
  const page = await client.api('GET', '/v1/calls?limit=5');
  state.history = page.items;
}

async function loadNotifications() {
  const page = await client.api('GET', '/v1/notifications?limit=30');
  state.notifications = page.notifications;
  state.unreadNotifications = page.unread_count;
}

// What a notification says, in words.
function notificationText(n) {
  const who = n.actor_name || 'Someone';
  switch (n.kind) {
    case 'missed_call': return `Missed call from ${who}`;
    case 'contact_request': return `${who} wants to connect`;
    case 'added_to_group': return `${who} added you to ${n.excerpt || 'a group'}`;
    case 'mention': return `${who} mentioned you: ${n.excerpt || ''}`;
    case 'reply': return `${who} replied: ${n.excerpt || ''}`;
    default: return `${who}: ${n.excerpt || n.kind}`;
  }
}

async function loadPresence() {
  const list = await client.api('GET', '/v1/presence');
  for (const p of list.presence) state.presence.set(p.user_id, p.status);
}

async function loadMessages(convId, older = false) {
  const entry = state.messages.get(convId) || { list: [], hasMore: true };
  let path = `/v1/conversations/${convId}/messages?limit=50`;
  if (older && entry.list.length) path += `&before=${entry.list[0].seq}`;
  const page = await client.api('GET', path);
  const byId = new Map(entry.list.map((m) => [m.id, m]));
  for (const m of page.messages) byId.set(m.id, m);
  entry.list = [...byId.values()].sort((a, b) => a.seq - b.seq);
  if (older || !state.messages.has(convId)) entry.hasMore = page.has_more;
  state.messages.set(convId, entry);
}

function upsertMessage(m) {
  const entry = state.messages.get(m.conversation_id);
  if (!entry) return;
  const i = entry.list.findIndex((x) => x.id === m.id);
  if (i >= 0) entry.list[i] = m;
  else {
    entry.list.push(m);
    entry.list.sort((a, b) => a.seq - b.seq);
  }
}

async function markRead(convId) {
  const entry = state.messages.get(convId);
  const conv = state.conversations.get(convId);
  if (!entry || !entry.list.length || !conv) return;
  const last = entry.list[entry.list.length - 1];
  if (conv.last_read_seq >= last.seq) return;
  const read = await client.api('POST', `/v1/conversations/${convId}/read`, { message_id: last.id });
  conv.last_read_seq = read.last_read_seq;
  conv.unread_count = 0;
  render();
}

async function openConversation(convId) {
  state.active = convId;
  state.editing = null;
  if (!state.messages.has(convId)) await loadMessages(convId);
  render();
  scrollToBottom();
  await markRead(convId);
}

async function openDirect(userId) {
  const conv = await client.api('POST', '/v1/conversations', { kind: 'direct', user_id: userId });
  await loadConversations();
  await openConversation(conv.id);
}

function scrollToBottom() {
  const box = document.querySelector('.messages');
  if (box) box.scrollTop = box.scrollHeight;
}

// ---------- gateway events ----------

client.on('message.created', (m) => {
  upsertMessage(m);
  const conv = state.conversations.get(m.conversation_id);
  if (!conv) {
    loadConversations().then(render);
    return;
  }
  conv.last_seq = Math.max(conv.last_seq, m.seq);
  conv.last_message = m;
  const typing = state.typing.get(m.conversation_id);
  if (typing) typing.delete(m.author_id);
  if (m.author_id === client.me.id) conv.last_read_seq = Math.max(conv.last_read_seq, m.seq);
  else if (state.active !== m.conversation_id || document.hidden) conv.unread_count += 1;
  render();
  if (state.active === m.conversation_id) {
    scrollToBottom();
    if (!document.hidden) markRead(m.conversation_id).catch(showError);
  }
});
client.on('message.updated', (m) => { upsertMessage(m); render(); });
client.on('message.deleted', (m) => { upsertMessage(m); render(); });
// A reaction event carries the emoji's new count, so applying it twice (the
// REST answer and then the event) or on resume gives the same state.
for (const type of ['reaction.added', 'reaction.removed']) {
  client.on(type, (d) => {
    const entry = state.messages.get(d.conversation_id);
    const m = entry && entry.list.find((x) => x.id === d.message_id);
    if (!m) return;
    const before = (m.reactions || []).find((r) => r.emoji === d.emoji);
    const reacted = d.user_id === client.me.id ? type === 'reaction.added' : !!(before && before.reacted);
    const rest = (m.reactions || []).filter((r) => r.emoji !== d.emoji);
    if (d.count > 0) rest.push({ emoji: d.emoji, count: d.count, reacted });
    m.reactions = rest.sort((a, b) => (a.emoji < b.emoji ? -1 : a.emoji > b.emoji ? 1 : 0));
    render();
  });
}
client.on('read.updated', (d) => {
  const conv = state.conversations.get(d.conversation_id);
  if (conv && d.user_id === client.me.id) {
    conv.last_read_seq = Math.max(conv.last_read_seq, d.last_read_seq);
    loadConversations().then(render);
  } else if (conv && conv.members) {
    const member = conv.members.find((x) => x.user.id === d.user_id);
    if (member) member.last_read_seq = d.last_read_seq;
    render();
  }
});
for (const type of ['conversation.updated', 'member.added', 'member.removed']) {
  client.on(type, () => loadConversations().then(render).catch(showError));
}
for (const type of ['contact.request', 'contact.updated']) {
  client.on(type, () => loadContacts().then(render).catch(showError));
}
client.on('notification.created', (n) => {
  if (state.notifications.some((x) => x.id === n.id)) return; // replayed
  state.notifications.unshift(n);
  state.unreadNotifications += 1;
  // The tab is in the background: the system shows it (if allowed).
  if (document.hidden && 'Notification' in window && Notification.permission === 'granted') {
    try { new Notification('Cascade', { body: notificationText(n), tag: n.id }); } catch { /* not allowed here */ }
  }
  render();
});
client.on('notification.read', (d) => {
  state.unreadNotifications = d.unread_count;
  const now = new Date().toISOString();
  for (const n of state.notifications) {
    if (!n.read_at && (!d.ids || d.ids.includes(n.id))) n.read_at = now;
  }
  render();
});
client.on('presence', (d) => { state.presence.set(d.user_id, d.status); render(); });
client.on('typing', (d) => {
  if (d.user_id === client.me.id) return;
  if (!state.typing.has(d.conversation_id)) state.typing.set(d.conversation_id, new Map());
  const map = state.typing.get(d.conversation_id);
  clearTimeout(map.get(d.user_id));
  map.set(d.user_id, setTimeout(() => { map.delete(d.user_id); render(); }, 4000));
  render();
});
client.on('resync', () => refreshAll().catch(showError));
client.on('close', () => {
  if (!state.offline) { state.offline = true; render(); }
});
client.on('open', () => {
  if (state.offline) { state.offline = false; render(); }
  // Connected devices are online; then catch up on everyone else's status.
  state.presence.set(client.me.id, document.hidden ? 'away' : 'online');
  loadPresence().then(render).catch(() => {});
});
client.on('signed_out', () => render());

client.on('call.ringing', (d) => {
  const call = d.call;
  if (call.initiator_id === client.me.id || (state.call && state.call.id === call.id)) return;
  state.ringing = call;
  ring(true);
  render();
});
for (const type of ['call.declined', 'call.cancelled', 'call.missed', 'call.ended']) {
  client.on(type, (d) => {
    if (state.ringing && state.ringing.id === d.call.id) {
      state.ringing = null;
      ring(false);
    }
    if (state.call && state.call.id === d.call.id && (type !== 'call.declined' || d.call.direct)) endCallView();
    else loadHistory().then(render).catch(() => {});
    render();
  });
}
client.on('call.accepted', (d) => {
  if (state.ringing && state.ringing.id === d.call.id) {
    // Answered on another device.
    state.ringing = null;
    ring(false);
    render();
  }
});
for (const type of ['call.participant_joined', 'call.participant_left']) {
  client.on(type, () => renderCall());
}

// ---------- ringing sound (Web Audio; no asset needed) ----------

let ringer = null;
function ring(on) {
  if (ringer) {
    clearInterval(ringer.timer);
    ringer.ctx.close();
    ringer = null;
  }
  if (!on) return;
  try {
    const ctx = new AudioContext();
    const beep = () => {
      const o = ctx.createOscillator();
      const g = ctx.createGain();
      o.frequency.value = 440;
      g.gain.value = 0.05;
      o.connect(g).connect(ctx.destination);
      o.start();
      o.stop(ctx.currentTime + 0.4);
    };
    beep();
    ringer = { ctx, timer: setInterval(beep, 1500) };
  } catch (_) { /* no audio output */ }
}

// ---------- calls ----------

async function regionProbes() {
  const probes = [];
  await Promise.all(state.regions.filter((r) => r.probe_url).map(async (r) => {
    const t0 = performance.now();
    try {
      await fetch(r.probe_url, { mode: 'no-cors', cache: 'no-store' });
      probes.push({ region: r.name, rtt_ms: Math.round(performance.now() - t0) });
    } catch (_) { /* unreachable region */ }
  }));
  return probes;
}

async function joinCall(call) {
  const session = await client.joinCall(call.id, {
    region: state.region || null,
    video: call.kind === 'video',
    probes: state.region ? [] : await regionProbes(),
    audioDevice: state.mic || undefined,
    videoDevice: state.camera || undefined,
  });
  // Names appear once the browser has granted a device.
  await loadDevices().catch(() => {});
  state.call = { id: call.id, kind: call.kind, session, tiles: new Map(), quality: '', hands: new Set(), handUp: false };
  session.onTrack = () => renderCall();
  session.onSpeakers = () => renderCall();
  session.onData = (message) => onCallData(message);
  session.onTracks = () => renderCall();
  session.onLayers = () => renderCall();
  session.onState = (s) => {
    if (s === 'ended') endCallView();
    else { renderCall(); if (s === 'reconnecting') updateQuality(); }
  };
  session.onError = (e) => showError(e);
  state.call.timer = setInterval(updateQuality, 2000);
  render();
}

// Call data messages (docs/signaling.md, data channels): raised hands and
// reactions from the others, each with its sender.
function onCallData(message) {
  if (!state.call || !message.text) return;
  let value;
  try { value = JSON.parse(message.text); } catch (_) { return; }
  const key = `${message.user_id}/${message.device_id}`;
  if (value.kind === 'hand') {
    if (value.raised) state.call.hands.add(key);
    else state.call.hands.delete(key);
    renderCall();
  } else if (value.kind === 'reaction' && typeof value.emoji === 'string') {
    showReaction(key, value.emoji.slice(0, 8));
  }
}

function showReaction(key, emoji) {
  const fig = document.querySelector(`.call figure[data-key="${CSS.escape(key)}"]`);
  if (!fig) return;
  const badge = h('span', { class: 'reaction-burst', role: 'img', 'aria-label': `reaction ${emoji}` }, emoji);
  fig.append(badge);
  setTimeout(() => badge.remove(), 3000);
}

async function startCall(kind) {
  try {
    const call = await client.api('POST', '/v1/calls', { conversation_id: state.active, kind });
    await joinCall(call);
  } catch (e) {
    showError(e);
  }
}

async function acceptCall() {
  const call = state.ringing;
  state.ringing = null;
  ring(false);
  try {
    if (call.direct) await client.api('POST', `/v1/calls/${call.id}/accept`);
    await joinCall(call);
  } catch (e) {
    showError(e);
  }
}

async function declineCall() {
  const call = state.ringing;
  state.ringing = null;
  ring(false);
  render();
  await client.api('POST', `/v1/calls/${call.id}/decline`).catch(showError);
}

function endCallView() {
  setTimeout(() => loadHistory().then(render).catch(() => {}), 300);
  if (!state.call) return;
  clearInterval(state.call.timer);
  const session = state.call.session;
  state.call = null;
  session.leave();
  render();
}

async function updateQuality() {
  if (!state.call) return;
  const s = await state.call.session.stats();
  if (!state.call) return;
  state.call.lastStats = s;
  // What the user sees must follow what arrives: a lost edge reads
  // "reconnecting…", silence from everyone "no media", loss lowers the
  // grade (the RTT of the last good moment is not the connection).
  const rtt = s.rtt === null ? null : Math.round(s.rtt * 1000);
  const loss = s.loss === null ? 0 : s.loss;
  const others = state.call.session.remote.size > 0;
  let label;
  if (s.state === 'reconnecting') label = 'reconnecting…';
  else if (s.state !== 'connected') label = s.state === 'new' ? 'connecting' : s.state;
  else if (others && !s.flowing) label = 'no media';
  else if (rtt === null) label = 'connecting';
  else label = loss > 0.1 || rtt >= 400 ? 'poor' : loss > 0.03 || rtt >= 150 ? 'fair' : 'good';
  const detail = [];
  if (rtt !== null && s.state === 'connected') detail.push(`${rtt} ms`);
  if (s.loss !== null && s.state === 'connected') detail.push(`${(loss * 100).toFixed(1)} % loss`);
  state.call.quality = detail.length ? `${label} (${detail.join(', ')})` : label;
  state.call.reconnecting = s.state === 'reconnecting';
  const view = document.querySelector('.call');
  if (view) view.classList.toggle('reconnecting', state.call.reconnecting);
  // What the edge sends this device: each received video's layer.
  const layers = state.call.session.layers;
  if (layers && layers.layers.length) {
    const shown = layers.layers.map((l) => l.layer || 'paused').join(', ');
    const kbps = layers.estimate_kbps ? `, ${layers.estimate_kbps} kbit/s` : '';
    state.call.quality += ` · video ${shown}${kbps}`;
  }
  const el = document.querySelector('.call .quality');
  if (el) el.textContent = `Connection: ${state.call.quality}`;
}

function renderCall() {
  const old = document.querySelector('.call');
  if (!state.call) {
    if (old) old.remove();
    return;
  }
  const { session } = state.call;
  let view = old;
  if (!view) {
    view = h('section', { class: 'call', 'aria-label': 'Call' },
      h('div', { class: 'grid' }),
      h('div', { class: 'bar' },
        h('span', { class: 'where' }),
        h('button', { class: 'mute', 'aria-label': 'Mute microphone', onclick: () => {
          session.setMuted('audio', !session.muted.audio);
          renderCall();
        } }, 'Mute'),
        h('button', { class: 'camera', 'aria-label': 'Turn camera off', onclick: () => {
          session.setMuted('video', !session.muted.video);
          renderCall();
        } }, 'Camera off'),
        h('button', { class: 'share', 'aria-label': 'Share screen', onclick: async () => {
          try {
            if (session.screen) await session.stopScreen();
            else await session.shareScreen();
          } catch (e) { showError(e); }
          renderCall();
        } }, 'Share screen'),
        h('button', { class: 'hand', 'aria-label': 'Raise hand', onclick: () => {
          state.call.handUp = !state.call.handUp;
          session.sendData({ kind: 'hand', raised: state.call.handUp });
          renderCall();
        } }, 'Raise hand'),
        h('button', { class: 'react', 'aria-label': 'Send a thumbs up', onclick: () => {
          if (session.sendData({ kind: 'reaction', emoji: '👍' })) showReaction('local', '👍');
        } }, '👍'),
        h('button', { class: 'danger hangup', 'aria-label': 'Hang up', onclick: () => {
          const id = state.call.id;
          endCallView();
          client.api('GET', `/v1/calls/${id}`).catch(() => {});
        } }, 'Hang up'),
        h('span', { class: 'in-call-devices' }),
        h('span', { class: 'quality' }, `Connection: ${state.call.quality || 'connecting'}`)));
    document.body.append(view);
  }
  view.querySelector('.where').textContent = session.edge ? `${session.edge.region} · ${session.edge.id}` : '';
  const pickers = view.querySelector('.in-call-devices');
  const shown = `${state.devices.audioinput.map((d) => d.deviceId).join()}|${state.devices.videoinput.map((d) => d.deviceId).join()}`;
  if (pickers.dataset.shown !== shown) {
    pickers.dataset.shown = shown;
    const swap = (kind) => async (id) => {
      try { await session.switchDevice(kind, id || undefined); } catch (e) { showError(e); }
    };
    pickers.replaceChildren(
      devicePicker('audioinput', session.deviceOf('audio'), swap('audio')),
      state.call.kind === 'video' ? devicePicker('videoinput', session.deviceOf('video'), swap('video')) : '');
  }
  const reconnecting = !!session.rejoining;
  view.classList.toggle('reconnecting', reconnecting);
  let notice = view.querySelector('.call-notice');
  if (reconnecting && !notice) {
    notice = h('p', { class: 'call-notice', role: 'status' }, 'Reconnecting…');
    view.prepend(notice);
  } else if (!reconnecting && notice) notice.remove();
  const mute = view.querySelector('.mute');
  mute.textContent = session.muted.audio ? 'Unmute' : 'Mute';
  mute.setAttribute('aria-label', session.muted.audio ? 'Unmute microphone' : 'Mute microphone');
  mute.setAttribute('aria-pressed', String(session.muted.audio));
  const cam = view.querySelector('.camera');
  cam.textContent = session.muted.video ? 'Camera on' : 'Camera off';
  cam.setAttribute('aria-label', session.muted.video ? 'Turn camera on' : 'Turn camera off');
  cam.setAttribute('aria-pressed', String(session.muted.video));
  cam.hidden = state.call.kind !== 'video';
  const share = view.querySelector('.share');
  share.textContent = session.screen ? 'Stop sharing' : 'Share screen';
  share.setAttribute('aria-label', session.screen ? 'Stop sharing the screen' : 'Share screen');
  share.setAttribute('aria-pressed', String(!!session.screen));
  share.hidden = !navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia;
  const hand = view.querySelector('.hand');
  hand.textContent = state.call.handUp ? 'Lower hand' : 'Raise hand';
  hand.setAttribute('aria-label', state.call.handUp ? 'Lower hand' : 'Raise hand');
  hand.setAttribute('aria-pressed', String(state.call.handUp));
  const grid = view.querySelector('.grid');
  const dominant = session.speakers && session.speakers.dominant;
  const me = `${client.me.id}/${client.deviceId}`;
  const speaking = dominant ? `${dominant.user_id}/${dominant.device_id}` : null;
  // Local preview first, then one tile per remote participant device (and
  // one more, shown large, for each shared screen).
  const wanted = new Map();
  wanted.set('local', { label: state.call.handUp ? '✋ You' : 'You', stream: session.stream, muted: true, speaking: speaking === me });
  for (const [mid, track] of session.remote) {
    // Only what the edge named in `tracks` is someone's media.
    const info = session.tracks.find((t) => t.mid === mid);
    if (!info) continue;
    const person = `${info.user_id}/${info.device_id}`;
    const screen = info.source === 'screen';
    const key = screen ? `${person}/screen` : person;
    if (!wanted.has(key)) {
      const name = userName(info.user_id);
      const label = screen ? `${name}'s screen` : `${state.call.hands.has(person) ? '✋ ' : ''}${name}`;
      wanted.set(key, { label, stream: new MediaStream(), muted: false, screen, speaking: !screen && person === speaking });
    }
    const tile = wanted.get(key);
    tile.tracks = tile.tracks || [];
    tile.tracks.push(track);
    if (info.muted) tile.label += ` (${info.kind} off)`;
  }
  for (const [key, tile] of wanted) {
    let fig = grid.querySelector(`figure[data-key="${CSS.escape(key)}"]`);
    if (!fig) {
      const video = h('video', { autoplay: true, playsinline: true, 'aria-label': `Video of ${tile.label}` });
      video.muted = tile.muted;
      fig = h('figure', { 'data-key': key, class: tile.screen ? 'screen' : '' }, video, h('figcaption', {}, tile.label));
      // A shared screen comes first, large.
      if (tile.screen) grid.prepend(fig);
      else grid.append(fig);
      video.srcObject = key === 'local' ? tile.stream : new MediaStream(tile.tracks);
    } else if (key !== 'local') {
      const video = fig.querySelector('video');
      const have = video.srcObject.getTracks().map((t) => t.id).sort().join();
      const want = tile.tracks.map((t) => t.id).sort().join();
      if (have !== want) video.srcObject = new MediaStream(tile.tracks);
    }
    fig.querySelector('figcaption').textContent = tile.label;
    fig.classList.toggle('speaking', !!tile.speaking);
  }
  for (const fig of grid.querySelectorAll('figure')) {
    if (!wanted.has(fig.dataset.key)) fig.remove();
  }
  reportTileSizes(session, grid);
}

// Each remote tile's height goes to the edge, which sends the simulcast
// layer that fits it; a resize (or the grid reflowing) sends it again.
const tileObserver = new ResizeObserver(() => {
  if (state.call) reportTileSizes(state.call.session, document.querySelector('.call .grid'));
});

function reportTileSizes(session, grid) {
  if (!grid) return;
  for (const video of grid.querySelectorAll('figure:not([data-key="local"]) video')) {
    if (!video.dataset.observed) {
      tileObserver.observe(video);
      video.dataset.observed = '1';
    }
    const shown = video.srcObject ? video.srcObject.getVideoTracks() : [];
    for (const [mid, track] of session.remote) {
      if (shown.includes(track)) session.setViewHeight(mid, video.clientHeight * (window.devicePixelRatio || 1));
    }
  }
}

// ---------- views ----------

function renderAuth() {
  let mode = 'login';
  const err = h('p', { class: 'error', role: 'alert' }, state.error);
  const form = h('form', {},
    h('h1', {}, 'Cascade'),
    h('label', {}, 'Username or e-mail', h('input', { name: 'login', autocomplete: 'username', required: true })),
    h('label', { class: 'only-register', hidden: true }, 'E-mail', h('input', { name: 'email', type: 'email', autocomplete: 'email' })),
    h('label', {}, 'Password', h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
    h('label', { class: 'only-register terms', hidden: true },
      h('span', { class: 'terms-text' }, 'I accept the terms of service'),
      h('input', { type: 'checkbox', name: 'accept_terms' })),
    h('button', { class: 'primary', type: 'submit' }, 'Log in'),
    h('button', { type: 'button', class: 'switch', onclick: () => {
      mode = mode === 'login' ? 'register' : 'login';
      for (const el of form.querySelectorAll('.only-register')) {
        el.hidden = mode === 'login';
        el.querySelector('input').required = mode === 'register';
      }
      if (mode === 'register') loadTerms(form).catch(() => {});
      form.querySelector('[type=submit]').textContent = mode === 'login' ? 'Log in' : 'Sign up';
      form.querySelector('.switch').textContent = mode === 'login' ? 'New here? Sign up' : 'Have an account? Log in';
    } }, 'New here? Sign up'),
    err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    try {
      if (mode === 'login') await client.login(data.login, data.password);
      else {
        const terms = await loadTerms(form);
        await client.register({ username: data.login, email: data.email, password: data.password,
          accepted_terms: data.accept_terms ? terms.version : undefined });
      }
      state.error = '';
      await start();
    } catch (ex) {
      err.textContent = ex.message;
    }
  });
  app.replaceChildren(h('div', { class: 'auth' }, form));
}

// The terms a sign-up accepts, named (and linked) beside the checkbox.
async function loadTerms(form) {
  if (!state.terms) state.terms = await client.request('GET', '/v1/terms');
  const text = form.querySelector('.terms-text');
  const { version, url } = state.terms;
  text.replaceChildren('I accept the ',
    url ? h('a', { href: url, target: '_blank', rel: 'noopener' }, 'terms of service') : 'terms of service',
    ` (version ${version})`);
  return state.terms;
}

function presenceDot(userId) {
  const status = state.presence.get(userId) || 'offline';
  return h('span', { class: `dot ${status}`, role: 'img', 'aria-label': status, title: status });
}

function renderSidebar() {
  const me = client.me;
  const search = h('form', { role: 'search', onsubmit: async (e) => {
    e.preventDefault();
    const q = e.target.q.value.trim();
    if (!q) return;
    try {
      const found = await client.api('GET', `/v1/users?q=${encodeURIComponent(q)}`);
      state.results = found.users.filter((u) => u.id !== me.id);
      rememberUsers(found.users);
      render();
    } catch (ex) { showError(ex); }
  } },
  h('label', {}, 'Find people ', h('input', { name: 'q', placeholder: 'username', 'aria-label': 'Search users' })),
  h('button', { type: 'submit' }, 'Search'));
  const results = h('ul', { class: 'results', 'aria-label': 'Search results' },
    state.results.map((u) => h('li', {}, presenceDot(u.id), u.display_name || u.username,
      h('button', { 'aria-label': `Add ${u.username} as a contact`, onclick: async () => {
        await client.api('POST', `/v1/contacts/${u.id}`).catch(showError);
        state.results = [];
        await loadContacts();
        render();
      } }, 'Add'))));
  const contacts = h('ul', { class: 'contacts', 'aria-label': 'Contacts' },
    state.contacts.map((c) => {
      const name = c.user.display_name || c.user.username;
      const act = (action) => async () => {
        await client.api('PATCH', `/v1/contacts/${c.user.id}`, { action }).catch(showError);
        await loadContacts();
        render();
      };
      if (c.status === 'incoming') {
        return h('li', {}, presenceDot(c.user.id), `${name} wants to connect`,
          h('button', { 'aria-label': `Accept ${name}`, onclick: act('accept') }, 'Accept'),
          h('button', { 'aria-label': `Decline ${name}`, onclick: act('decline') }, 'Decline'));
      }
      if (c.status === 'outgoing') return h('li', {}, presenceDot(c.user.id), `${name} (request sent)`);
      if (c.status === 'blocked') return h('li', {}, `${name} (blocked)`);
      return h('li', { tabindex: 0, role: 'button', 'aria-label': `Chat with ${name}`,
        onclick: () => openDirect(c.user.id).catch(showError),
        onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); openDirect(c.user.id).catch(showError); } } },
      presenceDot(c.user.id), avatar(c.user), h('span', {}, name,
        c.user.status_text ? h('small', { class: 'status-text' }, c.user.status_text) : null));
    }));
  const convs = [...state.conversations.values()].sort((a, b) => b.last_activity_at.localeCompare(a.last_activity_at));
  const list = h('ul', { class: 'conversations', 'aria-label': 'Conversations' },
    convs.map((c) => {
      const name = title(c);
      const other = otherMember(c);
      return h('li', { tabindex: 0, role: 'button', class: c.id === state.active ? 'active' : '',
        'aria-label': `${name}${c.unread_count ? `, ${c.unread_count} unread` : ''}`,
        'aria-current': c.id === state.active ? 'true' : null,
        'data-id': c.id,
        onclick: () => openConversation(c.id).catch(showError),
        onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); openConversation(c.id).catch(showError); } } },
      c.kind === 'direct' && other ? presenceDot(other) : null,
      c.kind === 'direct' && other ? avatar(state.users.get(other)) : null,
      name,
      c.unread_count ? h('span', { class: 'badge unread' }, c.unread_count) : null);
    }));
  const regions = h('label', {}, 'Call region ',
    h('select', { 'aria-label': 'Call region', onchange: (e) => {
      state.region = e.target.value;
      localStorage.setItem('cascade.region', state.region);
    } },
    h('option', { value: '' }, 'nearest (measured)'),
    state.regions.map((r) => h('option', { value: r.name, selected: r.name === state.region }, r.name))));
  const unread = state.unreadNotifications;
  const bell = h('button', { class: 'bell', 'aria-expanded': state.bellOpen ? 'true' : 'false',
    'aria-label': unread ? `Notifications, ${unread} unread` : 'Notifications',
    onclick: () => {
      state.bellOpen = !state.bellOpen;
      // Asked on a click, as browsers require: system notifications for
      // when this tab is in the background.
      if ('Notification' in window && Notification.permission === 'default') Notification.requestPermission().catch(() => {});
      render();
    } }, '🔔', unread ? h('span', { class: 'badge unread bell-count' }, unread) : null);
  const feed = state.bellOpen ? h('section', { class: 'notifications', 'aria-label': 'Notifications' },
    h('button', { 'aria-label': 'Mark all notifications read', disabled: !unread, onclick: async () => {
      const r = await client.api('POST', '/v1/notifications/read', {}).catch(showError);
      if (r) { state.unreadNotifications = r.unread_count; await loadNotifications(); render(); }
    } }, 'Mark all read'),
    h('ul', {}, state.notifications.length ? state.notifications.map((n) => h('li', {
      class: n.read_at ? 'read' : 'unread', 'data-kind': n.kind, tabindex: 0, role: 'button',
      onclick: async () => {
        if (!n.read_at) {
          const r = await client.api('POST', '/v1/notifications/read', { ids: [n.id] }).catch(showError);
          if (r) { n.read_at = new Date().toISOString(); state.unreadNotifications = r.unread_count; }
        }
        state.bellOpen = false;
        if (n.conversation_id && state.conversations.has(n.conversation_id)) await openConversation(n.conversation_id).catch(showError);
        render();
      } }, notificationText(n))) : h('li', {}, 'Nothing yet'))) : null;
  return h('nav', { class: 'sidebar', 'aria-label': 'Contacts and conversations' },
    h('div', { class: 'me' }, presenceDot(me.id), avatar(me), h('strong', {}, me.display_name || me.username), bell,
      h('button', { class: 'profile-toggle', 'aria-expanded': state.profileOpen ? 'true' : 'false', 'aria-label': 'Your profile and data',
        onclick: () => { state.profileOpen = !state.profileOpen; state.profileNote = ''; state.profileDraft = {}; state.confirmDelete = false; render(); } }, 'Profile'),
      h('button', { 'aria-label': 'Log out', onclick: async () => { await client.logout(); render(); } }, 'Log out')),
    me.status_text ? h('p', { class: 'my-status' }, me.status_text) : null,
    feed,
    state.profileOpen ? renderProfile() : null,
    regions,
    renderDevicePickers(),
    search, results,
    renderMessageSearch(),
    h('section', {}, h('h2', {}, 'Contacts'), contacts),
    h('section', {}, h('h2', {}, 'Conversations'), list),
    h('section', {}, h('h2', {}, 'Recent calls'),
      h('ul', { class: 'history', 'aria-label': 'Recent calls' },
        state.history.map(({ call, outcome }) => {
          const conv = state.conversations.get(call.conversation_id);
          const secs = Math.round((call.duration_ms || 0) / 1000);
          return h('li', { 'data-call': call.id },
            `${call.kind} call · ${conv ? title(conv) : ''} · ${outcome || call.state}${secs ? ` · ${secs} s` : ''}`);
        }))));
}

// Your profile (name, status, picture) and your data (export, erasure).
function renderProfile() {
  const me = client.me;
  // What is typed survives the re-renders live events cause.
  const draft = state.profileDraft;
  const keep = (e) => { draft[e.target.name] = e.target.value; };
  const saveMe = (updated) => {
    client.me = updated;
    client.storage.setItem('cascade.me', JSON.stringify(updated));
    state.users.set(updated.id, updated);
  };
  const profile = h('form', { class: 'profile', 'aria-label': 'Your profile', onsubmit: async (e) => {
    e.preventDefault();
    const data = new FormData(profile);
    try {
      const patch = { display_name: data.get('display_name'), status_text: data.get('status_text') };
      const file = draft.avatar;
      if (file) patch.avatar_id = (await client.upload('image', file, file.name)).id;
      saveMe(await client.api('PATCH', '/v1/me', patch));
      state.profileDraft = { password: draft.password };
      state.profileNote = 'Profile saved';
      render();
    } catch (ex) { showError(ex); }
  } },
  h('h2', {}, 'Profile'),
  avatar(me, true),
  h('label', {}, 'Display name', h('input', { name: 'display_name', value: draft.display_name ?? me.display_name, required: true, maxlength: 64, oninput: keep })),
  h('label', {}, 'Status', h('input', { name: 'status_text', value: draft.status_text ?? (me.status_text || ''), maxlength: 140, placeholder: 'In a meeting', oninput: keep })),
  h('label', {}, 'Picture', h('input', { type: 'file', name: 'avatar', accept: 'image/png,image/jpeg,image/gif,image/webp',
    onchange: (e) => { draft.avatar = e.target.files[0]; } }),
  draft.avatar ? h('small', {}, draft.avatar.name) : null),
  me.avatar_url ? h('button', { type: 'button', 'aria-label': 'Remove picture', onclick: async () => {
    const updated = await client.api('PATCH', '/v1/me', { avatar_id: null }).catch(showError);
    if (updated) { saveMe(updated); render(); }
  } }, 'Remove picture') : null,
  h('button', { class: 'primary', type: 'submit' }, 'Save profile'),
  h('p', { class: 'profile-note', role: 'status' }, state.profileNote));
  const password = () => draft.password || '';
  const ownData = h('form', { class: 'own-data', 'aria-label': 'Your data', onsubmit: async (e) => {
    e.preventDefault();
    try {
      const blob = await client.exportData(password());
      state.lastExport = { size: blob.size, blob };
      const link = h('a', { href: URL.createObjectURL(blob), download: `cascade-export-${me.username}.zip` });
      link.click();
      state.profileNote = 'Your data was downloaded';
      render();
    } catch (ex) { showError(ex); }
  } },
  h('h2', {}, 'Your data'),
  h('p', {}, me.terms_version ? `You accepted the terms of service (version ${me.terms_version}).` : 'No acceptance of the terms is recorded.'),
  h('label', {}, 'Password', h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true, value: draft.password || '', oninput: keep })),
  h('button', { type: 'submit', class: 'export' }, 'Download my data'),
  state.confirmDelete
    ? h('div', { class: 'confirm-delete', role: 'alertdialog', 'aria-label': 'Delete your account' },
      h('p', {}, 'This erases your account: your messages show as deleted, your files and contacts go. It cannot be undone.'),
      h('button', { type: 'button', class: 'danger really-delete', onclick: async () => {
        try {
          await client.deleteAccount(password());
          state.profileDraft = {};
          state.profileOpen = false;
          state.confirmDelete = false;
          state.error = 'Your account was deleted.';
          render();
        } catch (ex) { showError(ex); }
      } }, 'Yes, delete my account'),
      h('button', { type: 'button', onclick: () => { state.confirmDelete = false; render(); } }, 'Keep it'))
    : h('button', { type: 'button', class: 'danger delete-account', onclick: () => {
      if (!ownData.reportValidity()) return;
      state.confirmDelete = true;
      render();
    } }, 'Delete my account'));
  return h('section', { class: 'profile-panel', 'aria-label': 'Profile and data' }, profile, ownData);
}

// Microphones and cameras to call with (and to switch to during a call).
async function loadDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const all = await navigator.mediaDevices.enumerateDevices();
  state.devices = {
    audioinput: all.filter((d) => d.kind === 'audioinput' && d.deviceId),
    videoinput: all.filter((d) => d.kind === 'videoinput' && d.deviceId),
  };
}

function devicePicker(kind, chosen, onchange) {
  const label = kind === 'audioinput' ? 'Microphone' : 'Camera';
  const list = state.devices[kind];
  return h('label', { class: `device ${kind}` }, `${label} `,
    h('select', { 'aria-label': label, onchange: (e) => onchange(e.target.value) },
      h('option', { value: '' }, 'default'),
      list.map((d, i) => h('option', { value: d.deviceId, selected: d.deviceId === chosen }, d.label || `${label} ${i + 1}`))));
}

function renderDevicePickers() {
  return h('section', { class: 'devices', 'aria-label': 'Call devices' },
    devicePicker('audioinput', state.mic, (id) => { state.mic = id; localStorage.setItem('cascade.mic', id); }),
    devicePicker('videoinput', state.camera, (id) => { state.camera = id; localStorage.setItem('cascade.camera', id); }));
}

// Full-text search over the messages of your conversations.
async function searchMessages(q, more = false) {
  const before = more && state.search ? `&before=${state.search.next}` : '';
  const page = await client.api('GET', `/v1/messages/search?q=${encodeURIComponent(q)}&limit=20${before}`);
  const hits = more && state.search ? [...state.search.hits, ...page.hits] : page.hits;
  state.search = { q, hits, next: page.next_before || null };
  render();
}

function renderMessageSearch() {
  const form = h('form', { role: 'search', class: 'message-search', onsubmit: (e) => {
    e.preventDefault();
    const q = e.target.q.value.trim();
    if (!q) { state.search = null; render(); return; }
    searchMessages(q).catch(showError);
  } },
  h('label', {}, 'Search messages ', h('input', { name: 'q', value: state.searchDraft ?? (state.search ? state.search.q : ''), 'aria-label': 'Search messages',
    oninput: (e) => { state.searchDraft = e.target.value; } })),
  h('button', { type: 'submit' }, 'Find'));
  if (!state.search) return form;
  const { hits, next, q } = state.search;
  return h('section', { class: 'search-results', 'aria-label': 'Message search' }, form,
    h('ul', { 'aria-label': 'Messages found' }, hits.length ? hits.map((hit) => {
      const conv = state.conversations.get(hit.message.conversation_id);
      return h('li', { tabindex: 0, role: 'button', 'data-id': hit.message.id,
        onclick: () => { state.search = null; openConversation(hit.message.conversation_id).catch(showError); } },
      h('span', { class: 'where' }, `${conv ? title(conv) : ''} · ${userName(hit.message.author_id)}`),
      h('span', { class: 'snippet' }, hit.snippet.map((part) => (part.hit ? h('mark', {}, part.text) : part.text))));
    }) : h('li', {}, `Nothing found for “${q}”`)),
    next ? h('button', { type: 'button', onclick: () => searchMessages(q, true).catch(showError) }, 'More results') : null);
}

function renderMessage(m, conv) {
  const mine = m.author_id === client.me.id;
  const deleted = !!m.deleted_at;
  const readers = (conv.members || []).filter((x) => x.user.id !== client.me.id && x.last_read_seq >= m.seq);
  const react = (emoji, reacted) => async () => {
    const path = `/v1/conversations/${m.conversation_id}/messages/${m.id}/reactions/${encodeURIComponent(emoji)}`;
    upsertMessage(await client.api(reacted ? 'DELETE' : 'PUT', path).catch(showError) || m);
    render();
  };
  const thumbs = (m.reactions || []).find((r) => r.emoji === '👍');
  return h('article', { class: `msg${mine ? ' mine' : ''}${deleted ? ' deleted' : ''}`, 'data-seq': m.seq, 'data-id': m.id, 'data-kind': m.kind || 'text' },
    !deleted ? renderAttachment(m.attachment) : null,
    deleted || m.body || !m.attachment ? h('div', { class: 'body' }, deleted ? 'message deleted' : m.body) : null,
    h('div', { class: 'meta' },
      m.author_id && !mine ? avatar(state.users.get(m.author_id)) : null,
      h('span', {}, userName(m.author_id)),
      h('time', { datetime: m.created_at }, new Date(m.created_at).toLocaleTimeString()),
      m.edited_at && !deleted ? h('span', {}, '(edited)') : null,
      (m.reactions || []).map((r) => h('span', { class: 'reaction' }, `${r.emoji} ${r.count}`)),
      !deleted ? h('button', { 'aria-label': thumbs && thumbs.reacted ? 'Remove thumbs up' : 'React with thumbs up', onclick: react('👍', !!(thumbs && thumbs.reacted)) }, '👍') : null,
      mine && !deleted ? h('button', { 'aria-label': 'Edit message', onclick: () => {
        state.editing = m;
        render();
        const input = document.querySelector('.composer input');
        input.value = m.body;
        input.focus();
      } }, 'Edit') : null,
      mine && !deleted ? h('button', { 'aria-label': 'Delete message', onclick: async () => {
        upsertMessage(await client.api('DELETE', `/v1/conversations/${m.conversation_id}/messages/${m.id}`).catch(showError) || m);
        render();
      } }, 'Delete') : null,
      mine && readers.length ? h('span', { class: 'read' }, `seen by ${readers.map((r) => userName(r.user.id)).join(', ')}`) : null));
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// An image (its thumbnail, then the full picture on click), a voice
// message with a player, or a file card that downloads with the name.
function renderAttachment(a) {
  if (!a) return null;
  if (state.media.has(a.id)) return state.media.get(a.id);
  let el;
  if (a.kind === 'image') {
    const img = h('img', { class: 'attachment-image', alt: a.name, 'data-attachment': a.id,
      width: Math.min(320, a.width || 320) });
    client.attachmentUrl(a.id, a.has_thumbnail).then((url) => { img.src = url; }).catch(() => { img.alt = `${a.name} (unavailable)`; });
    el = h('a', { class: 'attachment', href: '#', 'aria-label': `Open image ${a.name}`, onclick: async (e) => {
      e.preventDefault();
      window.open(await client.attachmentUrl(a.id), '_blank', 'noopener');
    } }, img);
  } else if (a.kind === 'voice') {
    const seconds = Math.round((a.duration_ms || 0) / 1000);
    const audio = h('audio', { controls: true, preload: 'metadata', 'data-attachment': a.id, 'aria-label': `Voice message, ${seconds} seconds` });
    client.attachmentUrl(a.id).then((url) => { audio.src = url; }).catch(() => {});
    el = h('div', { class: 'attachment voice' }, audio, h('span', {}, `${seconds} s`));
  } else {
    el = h('a', { class: 'attachment file-card', href: '#', 'data-attachment': a.id, 'aria-label': `Download ${a.name}`, onclick: async (e) => {
      e.preventDefault();
      const link = h('a', { href: await client.attachmentUrl(a.id), download: a.name });
      link.click();
    } }, h('strong', {}, a.name), h('span', {}, formatSize(a.size_bytes)));
  }
  state.media.set(a.id, el);
  return el;
}

const IMAGE_TYPES = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'];

// Uploads `file` and sends it to `convId` as an image, file or voice
// message (the server checks the bytes; a mislabelled file is refused).
async function sendAttachment(convId, file, kind) {
  const sendKind = kind || (IMAGE_TYPES.includes(file.type) ? 'image' : 'file');
  const uploaded = await client.upload(sendKind, file, file.name);
  const m = await client.api('POST', `/v1/conversations/${convId}/messages`,
    { kind: sendKind, attachment_id: uploaded.id, body: '', client_message_id: crypto.randomUUID() });
  upsertMessage(m);
  render();
  scrollToBottom();
}

async function toggleRecording(convId) {
  if (state.recording) {
    state.recording.recorder.stop();
    return;
  }
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const type = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/mp4'].find((t) => MediaRecorder.isTypeSupported(t));
  const recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
  const chunks = [];
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recording = null;
    render();
    const mime = recorder.mimeType || type || 'audio/webm';
    const ext = mime.includes('ogg') ? 'ogg' : mime.includes('mp4') ? 'm4a' : 'webm';
    const blob = new Blob(chunks, { type: mime.split(';')[0] });
    await sendAttachment(convId, new File([blob], `voice.${ext}`, { type: blob.type }), 'voice').catch(showError);
  };
  recorder.start(250);
  state.recording = { recorder, conv: convId };
  render();
}

function renderChat() {
  const conv = state.conversations.get(state.active);
  if (!conv) return h('section', { class: 'chat' }, h('p', { class: 'empty' }, 'Pick a conversation, or add a contact to start one.'));
  const entry = state.messages.get(conv.id) || { list: [], hasMore: false };
  const typing = [...(state.typing.get(conv.id) || new Map()).keys()].map(userName);
  let lastTyping = 0;
  const input = h('input', { name: 'body', autocomplete: 'off', 'aria-label': state.editing ? 'Edit message' : 'Message', placeholder: 'Write a message', oninput: () => {
    if (Date.now() - lastTyping > 2500) {
      lastTyping = Date.now();
      client.send({ type: 'typing', conversation_id: conv.id });
    }
  } });
  const composer = h('form', { class: 'composer', onsubmit: async (e) => {
    e.preventDefault();
    const body = input.value.trim();
    if (!body) return;
    input.value = '';
    try {
      if (state.editing) {
        const m = state.editing;
        state.editing = null;
        upsertMessage(await client.api('PATCH', `/v1/conversations/${conv.id}/messages/${m.id}`, { body }));
      } else {
        const m = await client.api('POST', `/v1/conversations/${conv.id}/messages`, { body, client_message_id: crypto.randomUUID() });
        upsertMessage(m);
      }
      render();
      scrollToBottom();
      document.querySelector('.composer input').focus();
    } catch (ex) { showError(ex); }
  } }, input,
  h('input', { type: 'file', class: 'attach-input', hidden: true, multiple: true, 'aria-label': 'Attach files', onchange: async (e) => {
    for (const file of [...e.target.files]) await sendAttachment(conv.id, file).catch(showError);
    e.target.value = '';
  } }),
  h('button', { type: 'button', class: 'attach', 'aria-label': 'Attach a file or image', onclick: () => document.querySelector('.attach-input').click() }, 'Attach'),
  h('button', { type: 'button', class: `record${state.recording ? ' recording' : ''}`, 'aria-label': state.recording ? 'Stop recording and send' : 'Record a voice message',
    onclick: () => toggleRecording(conv.id).catch(showError) }, state.recording ? 'Stop' : 'Record'),
  h('button', { class: 'primary', type: 'submit' }, state.editing ? 'Save' : 'Send'));
  const box = h('div', { class: 'messages', role: 'log', 'aria-label': 'Messages', onscroll: async (e) => {
    if (e.target.scrollTop === 0 && entry.hasMore) await olderMessages(conv.id);
  } },
  entry.hasMore ? h('button', { class: 'older', onclick: () => olderMessages(conv.id) }, 'Load older messages') : null,
  entry.list.map((m) => renderMessage(m, conv)));
  return h('section', { class: 'chat', 'aria-label': title(conv),
    ondragover: (e) => { e.preventDefault(); },
    ondrop: async (e) => {
      e.preventDefault();
      for (const file of [...(e.dataTransfer ? e.dataTransfer.files : [])]) await sendAttachment(conv.id, file).catch(showError);
    } },
    h('header', {}, h('h1', {}, title(conv)),
      h('button', { 'aria-label': 'Start audio call', disabled: !!state.call, onclick: () => startCall('audio') }, 'Audio call'),
      h('button', { 'aria-label': 'Start video call', disabled: !!state.call, onclick: () => startCall('video') }, 'Video call')),
    box,
    h('div', { class: 'typing', 'aria-live': 'polite' }, typing.length ? `${typing.join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing…` : ''),
    composer);
}

async function olderMessages(convId) {
  const box = document.querySelector('.messages');
  const before = box ? box.scrollHeight - box.scrollTop : 0;
  await loadMessages(convId, true).catch(showError);
  render();
  const after = document.querySelector('.messages');
  if (after) after.scrollTop = after.scrollHeight - before;
}

function renderRinging() {
  if (!state.ringing) return null;
  const call = state.ringing;
  return h('aside', { class: 'ringing', role: 'alertdialog', 'aria-label': 'Incoming call' },
    h('strong', {}, `${userName(call.initiator_id)} is calling (${call.kind})`),
    h('div', {},
      h('button', { class: 'primary accept', 'aria-label': 'Accept call', onclick: () => acceptCall() }, 'Accept'),
      ' ',
      h('button', { class: 'danger decline', 'aria-label': 'Decline call', onclick: () => declineCall() }, 'Decline')));
}

function render() {
  if (!client.signedIn || !client.me) {
    renderAuth();
    return;
  }
  const focused = document.activeElement && document.activeElement.name === 'body';
  const draft = document.querySelector('.composer input');
  const draftValue = draft ? draft.value : '';
  const box = document.querySelector('.messages');
  const atBottom = !box || box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const scroll = box ? box.scrollTop : 0;
  app.replaceChildren(...[
    state.offline ? h('p', { class: 'offline', role: 'status' }, 'Reconnecting… messages will appear once the connection is back') : null,
    h('div', { class: 'shell' }, renderSidebar(), renderChat()),
    state.error ? h('p', { class: 'error', role: 'alert' }, state.error) : null,
    renderRinging(),
  ].filter(Boolean));
  const input = document.querySelector('.composer input');
  if (input) {
    input.value = draftValue;
    if (focused) input.focus();
  }
  const newBox = document.querySelector('.messages');
  if (newBox) newBox.scrollTop = atBottom ? newBox.scrollHeight : scroll;
  renderCall();
}

async function refreshAll() {
  await Promise.all([loadConversations(), loadContacts(), loadPresence(), loadHistory(), loadNotifications()]);
  for (const convId of state.messages.keys()) await loadMessages(convId);
  render();
}

async function start() {
  try {
    if (!client.me) client.me = await client.api('GET', '/v1/me');
    const regions = await client.api('GET', '/v1/regions');
    state.regions = regions.regions;
    await loadDevices().catch(() => {});
    await refreshAll();
    client.connect();
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.get('conversation')) await openConversation(params.get('conversation'));
  } catch (e) {
    if (e.status === 401) await client.logout();
    showError(e);
  }
}

if (navigator.mediaDevices) {
  navigator.mediaDevices.addEventListener('devicechange', () => loadDevices().then(render).catch(() => {}));
}

document.addEventListener('visibilitychange', () => {
  client.send({ type: 'presence', status: document.hidden ? 'away' : 'online' });
  if (!document.hidden && state.active) markRead(state.active).catch(() => {});
});

if (client.signedIn) start();
else render();
