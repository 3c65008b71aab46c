import { backoffDelay, type BackoffOptions } from './backoff.js';
import { Emitter } from './emitter.js';
import { TslmError } from './errors.js';
import { webSocket, type Transport, type TransportConnection } from './transport.js';

const startText = (s: Start): string =>
  typeof s === 'string' ? s : 'last' in s ? `last:${s.last}` : `${s.epoch}:${s.offset}`;

/** Where a subscription starts (docs/protocol.md, "Start positions"). */
export type Start = 'new' | 'oldest' | { last: number } | Position;

/** A channel position: the epoch of its history and the offset of the last message processed. */
export interface Position {
  epoch: string;
  offset: number;
}

/** A message of a subscribed channel. */
export interface ChannelMessage<T = unknown> {
  channel: string;
  epoch: string;
  offset: number;
  data: T;
}

/**
 * Everything that was not and will not be delivered, as one event:
 *
 * - `expired`: a resume found offsets `from`..`to` already gone from the channel's backlog;
 * - `epoch_changed`: the channel's history was lost (gateway restart, channel deleted and created
 *   again): what was missed cannot be numbered; `previousEpoch` is the one the client had and
 *   `epoch` the new one. Start over from the application's own source of truth;
 * - `gap`: a `gap` event: offsets `from`..`to` will not arrive (a `drop_oldest` channel whose
 *   subscriber fell behind, or messages that left the backlog during a replay);
 * - `skipped`: offsets `from`..`to` were skipped without a gap event (a channel whose class uses
 *   the `latest` slow-subscriber policy).
 *
 * The subscription's position has already moved past the loss when the event is emitted.
 */
export interface LossEvent {
  channel: string;
  reason: 'expired' | 'epoch_changed' | 'gap' | 'skipped';
  epoch: string;
  previousEpoch?: string;
  from?: number;
  to?: number;
}

/** What the client does after the gateway closed a connection (see {@link closeReaction}). */
export type CloseReaction = 'none' | 'resume' | 'backoff' | 'token' | 'stop';

/** The client's connection state. */
export type ConnectionState = 'idle' | 'connecting' | 'open' | 'waiting' | 'closed';

export interface DisconnectEvent {
  code: number;
  reason: string;
  reaction: CloseReaction;
  /** The delay before the next attempt, in ms (absent when the client stops). */
  delayMs?: number;
}

/** A reply sent by a subscriber to a message this connection published. */
export interface ReplyEvent<T = unknown> {
  channel: string;
  offset: number;
  from: string;
  data: T;
}

export interface ClientEvents {
  message: ChannelMessage;
  loss: LossEvent;
  state: { state: ConnectionState; previous: ConnectionState };
  open: { transport: string };
  disconnect: DisconnectEvent;
  /** The gateway ended a subscription (`deleted` or `unauthorized`); it is not resumed. */
  ended: { channel: string; reason: string };
  reply: ReplyEvent;
  /** A token was accepted by `auth` or `refresh`; `expiresAt` in Unix seconds. */
  token: { expiresAt?: number; subject?: string; publisher?: string };
  error: TslmError;
}

export interface SubscribeInfo {
  channel: string;
  epoch: string;
  /** The channel's head when the subscription (re)started. */
  offset: number;
  /** The first offset that will be delivered. */
  from: number;
  recovered?: boolean;
}

export interface Subscription {
  readonly channel: string;
  /** Settles with the first successful `subscribe` reply, or rejects with its error. */
  readonly ready: Promise<SubscribeInfo>;
  /** The stored position (undefined before the first reply). */
  position(): Position | undefined;
  /** Ends the subscription; no message of it is delivered afterwards. */
  unsubscribe(): Promise<void>;
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

interface EventTargetLike {
  addEventListener(type: string, fn: () => void): void;
  removeEventListener(type: string, fn: () => void): void;
}

export interface ClientOptions {
  /** The gateway's address, `ws://host:port/` or `wss://…`. */
  url: string;
  /** Transports in order of preference (default `[webSocket()]`; for fallbacks
   * `[webSocket(), serverSentEvents(), longPoll()]`). The client falls back to the next one only
   * when a connection fails before the server's first frame, and goes back to the first one after
   * `upgradeRetryMs` or after a drop. On a stream transport (SSE, long-poll) subscriptions,
   * `history` and `reply` work (the last two over the gateway's HTTP calls); other requests
   * reject with `unsupported`. */
  transports?: Transport[];
  /** Returns an access token (or a publisher token) for `auth`; called on every connection and
   * before the token expires (`refresh`). On SSE, before a JWT's `exp` the client opens a new
   * stream with a new token (resuming every channel); long-polls ask for it on every poll. */
  token?: () => string | Promise<string>;
  /** A publisher's Ed25519 key: on every connection the client asks for a `challenge` and sends
   * `auth` with `name` and the signature `sign` makes of the bytes
   * `"tslm-auth-v1" 0x00 name 0x00 challenge` (in Node:
   * `sign: (bytes) => crypto.sign(null, bytes, privateKey)`). Takes precedence over `token`. */
  publisher?: { name: string; sign: (message: Uint8Array) => Uint8Array | Promise<Uint8Array> };
  /** The listener's shared token (`auth_tokens`), offered as a WebSocket subprotocol. */
  listenerToken?: string;
  /** Reconnect delays: exponential with full jitter. */
  backoff?: BackoffOptions;
  /** The least delay after a close whose reaction is `backoff` (default 5000 ms). */
  penaltyMs?: number;
  /** Send a `ping` after this long without any frame from the server (default 20000 ms). */
  pingIntervalMs?: number;
  /** Give the connection up when nothing arrives this long after that ping (default 10000 ms). */
  pingTimeoutMs?: number;
  /** Give a connection attempt up after this long (default 10000 ms). */
  connectTimeoutMs?: number;
  /** Reject a request that has no reply after this long (default 15000 ms). */
  requestTimeoutMs?: number;
  /** Refresh the access token this long before it expires (default 30000 ms; half its remaining
   * life when that is shorter). */
  refreshBeforeMs?: number;
  /** While on a fallback transport, try the first one again after this long (default 60000 ms). */
  upgradeRetryMs?: number;
  /** Connect on construction (default true). */
  autoConnect?: boolean;
  /** For tests: timers and clock. */
  timers?: Timers;
  /** For tests: a random source in [0, 1). */
  random?: () => number;
  /** The page's `window` for `online` events (default `globalThis.window` when present). */
  window?: EventTargetLike | null;
  /** The page's `document` for `visibilitychange` (default `globalThis.document` when present). */
  document?: (EventTargetLike & { visibilityState?: string }) | null;
}

/**
 * The documented reaction to each close code (docs/protocol.md, section 5):
 *
 * | code | reaction |
 * |---|---|
 * | 1000 closed by this client | `none` |
 * | 1001, 1006, 4000, 4001, 1000 not asked for, any other | `resume`: reconnect after a jittered backoff and resume |
 * | 1008 `rate limit exceeded`, 1009, 1011 | `backoff`: the same, waiting at least `penaltyMs` |
 * | 4003, 4002, 4006 with a token callback | `token`: get a new token, reconnect at once |
 * | 1002, 1007, 1008 `too many control frames`, 4002 or 4006 without a token callback | `stop` |
 *
 * A 1001 whose reason is `shutdown; retry_after_ms=N` (a gateway draining) waits at least N ms
 * before reconnecting ({@link shutdownRetryAfterMs}).
 */
export function closeReaction(code: number, reason: string, hasToken: boolean): CloseReaction {
  switch (code) {
    case 1002:
    case 1007:
      return 'stop';
    case 1008:
      return reason === 'too many control frames' ? 'stop' : 'backoff';
    case 1009:
    case 1011:
      return 'backoff';
    case 4002:
      return hasToken ? 'token' : 'stop';
    case 4003:
      return hasToken ? 'token' : 'stop';
    case 4006:
      // The operator revoked the credential: only a new one (from the callback) can help.
      return hasToken ? 'token' : 'stop';
    default:
      return 'resume';
  }
}

/**
 * The `retry_after_ms` of a gateway's shutdown close reason (`shutdown; retry_after_ms=N`,
 * docs/protocol.md "Server shutdown"); `undefined` for any other reason. Fields a later version
 * adds after N (`; key=value`) are ignored.
 */
export function shutdownRetryAfterMs(reason: string): number | undefined {
  const prefix = 'shutdown; retry_after_ms=';
  if (!reason.startsWith(prefix)) return undefined;
  const digits = reason.slice(prefix.length).split(';')[0];
  if (!/^[0-9]{1,9}$/.test(digits)) return undefined;
  return Number(digits);
}

interface Pending {
  frame: Record<string, unknown>;
  resolve: (reply: any) => void;
  reject: (error: TslmError) => void;
  sent: boolean;
  internal: boolean;
  timer?: unknown;
}

interface Sub {
  channel: string;
  start: Start;
  position?: Position;
  state: 'pending' | 'active';
  buffer: any[];
  handler?: (message: ChannelMessage) => void;
  resolveReady: (info: SubscribeInfo) => void;
  rejectReady: (error: TslmError) => void;
  readySettled: boolean;
  retryTimer?: unknown;
  retryAttempt: number;
  generation: number;
}

const defaultTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
  now: () => Date.now(),
};

function handled<T>(p: Promise<T>): Promise<T> {
  // The caller may ignore the promise: its rejection must never be an unhandled one.
  p.catch(() => {});
  return p;
}

/** A client of the gateway's `tslm.v1` protocol. See the README for a tour. */
export class TslmClient extends Emitter<ClientEvents> {
  private readonly opts: ClientOptions;
  private readonly transports: Transport[];
  private readonly timers: Timers;
  private readonly random: () => number;
  private conn: TransportConnection | null = null;
  private generation = 0;
  private transportIndex = 0;
  private attempt = 0;
  private gotFrame = false;
  private ready = false;
  private userClosed = false;
  private _state: ConnectionState = 'idle';
  private seq = 0;
  private pending = new Map<number, Pending>();
  private subs = new Map<string, Sub>();
  private reconnectTimer?: unknown;
  private connectTimer?: unknown;
  private livenessTimer?: unknown;
  private checkTimer?: unknown;
  private refreshTimer?: unknown;
  private upgradeTimer?: unknown;
  private lastReceived = 0;
  private pingSentAt = 0;
  private detach: Array<() => void> = [];
  private restarting = false;
  /** The channels the current stream connection reads. */
  private streamChannels: string[] = [];

  constructor(options: ClientOptions) {
    super();
    this.opts = options;
    this.transports = options.transports && options.transports.length > 0 ? options.transports : [webSocket()];
    this.timers = options.timers ?? defaultTimers;
    this.random = options.random ?? Math.random;
    if (options.autoConnect !== false) this.connect();
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** The name of the transport in use (`websocket`, `sse`, `longpoll`) while open. */
  get transport(): string | undefined {
    return this.ready ? this.transports[this.transportIndex].name : undefined;
  }

  private get streaming(): boolean {
    return this.transports[this.transportIndex].stream === true;
  }

  /** On a stream transport, opens a new stream with the current channel list (each channel
   * resumes from its position); several changes in one tick make one new stream. */
  private restartStream(): void {
    if (this.restarting) return;
    this.restarting = true;
    queueMicrotask(() => {
      this.restarting = false;
      if (!this.ready || !this.streaming) return;
      this.generation++;
      this.conn?.close(1000, '');
      this.conn = null;
      this.cleanupConnection();
      this.openConnection();
    });
  }

  /** The stored position of a subscribed channel. */
  position(channel: string): Position | undefined {
    const p = this.subs.get(channel)?.position;
    return p ? { ...p } : undefined;
  }

  /** Connects (again, after {@link close}: the subscriptions it still holds resume from their
   * positions). Does nothing while connecting or connected. */
  connect(): void {
    if (this._state === 'connecting' || this._state === 'open' || this._state === 'waiting') return;
    this.userClosed = false;
    this.attempt = 0;
    this.transportIndex = 0;
    if (this.detach.length === 0) this.listenToPage();
    this.openConnection();
  }

  /** Closes the connection for good: no reconnect; pending requests reject with `closed`. */
  close(): void {
    this.userClosed = true;
    if (this.conn) {
      this.generation++;
      this.conn.close(1000, '');
      this.conn = null;
    }
    this.stopEverything('the client was closed');
  }

  /** Ends every timer, request and unsettled subscription; the client is then `closed`. */
  private stopEverything(message: string): void {
    this.clearConnectionTimers();
    this.clear(this.reconnectTimer);
    this.clear(this.upgradeTimer);
    this.reconnectTimer = this.upgradeTimer = undefined;
    for (const sub of this.subs.values()) this.clear(sub.retryTimer);
    this.failPending(() => true, 'closed', message);
    for (const sub of this.subs.values()) {
      if (!sub.readySettled) {
        sub.readySettled = true;
        sub.rejectReady(new TslmError('closed', message, { channel: sub.channel, op: 'subscribe' }));
      }
    }
    this.ready = false;
    this.setState('closed');
    for (const d of this.detach) d();
    this.detach = [];
  }

  /**
   * Subscribes to `channel` from `start` (default `"new"`). The client remembers the channel's
   * epoch and offset and resumes from them on every reconnect. `onMessage` runs for each message
   * after the `message` event; the position has already advanced when either runs.
   */
  subscribe<T = unknown>(channel: string, options: { start?: Start; onMessage?: (m: ChannelMessage<T>) => void } = {}): Subscription {
    if (this.subs.has(channel)) throw new TslmError('bad_request', `already subscribed to \`${channel}\``, { channel, op: 'subscribe' });
    let resolveReady!: (i: SubscribeInfo) => void;
    let rejectReady!: (e: TslmError) => void;
    const ready = handled(
      new Promise<SubscribeInfo>((res, rej) => {
        resolveReady = res;
        rejectReady = rej;
      }),
    );
    const start = options.start ?? 'new';
    const sub: Sub = {
      channel,
      start,
      state: 'pending',
      buffer: [],
      handler: options.onMessage as ((m: ChannelMessage) => void) | undefined,
      resolveReady,
      rejectReady,
      readySettled: false,
      retryAttempt: 0,
      generation: -1,
    };
    if (typeof start === 'object' && 'epoch' in start) sub.position = { epoch: start.epoch.toLowerCase(), offset: start.offset };
    if (this.userClosed) {
      sub.readySettled = true;
      rejectReady(new TslmError('closed', 'the client is closed', { channel, op: 'subscribe' }));
    } else {
      this.subs.set(channel, sub);
      if (this.ready) {
        if (this.streaming) this.restartStream();
        else this.sendSubscribe(sub);
      }
    }
    return {
      channel,
      ready,
      position: () => (sub.position ? { ...sub.position } : undefined),
      unsubscribe: () => this.unsubscribe(channel),
    };
  }

  /** Ends the subscription to `channel`. */
  unsubscribe(channel: string): Promise<void> {
    const sub = this.subs.get(channel);
    if (!sub) return Promise.resolve();
    this.subs.delete(channel);
    this.clear(sub.retryTimer);
    if (!sub.readySettled) {
      sub.readySettled = true;
      sub.rejectReady(new TslmError('closed', 'unsubscribed before the subscription started', { channel, op: 'subscribe' }));
    }
    if (!this.ready) return Promise.resolve();
    if (this.streaming) {
      this.restartStream();
      return Promise.resolve();
    }
    return handled(this.send({ op: 'unsubscribe', channel }, true).then(() => undefined, () => undefined));
  }

  /** Publishes `data` (any JSON value); resolves with its epoch and offset. Retrying with the
   * same `msgId` after a `disconnected` or `timeout` error never publishes twice. */
  publish(channel: string, data: unknown, options: { msgId?: string } = {}): Promise<{ epoch: string; offset: number; duplicate: boolean }> {
    const frame: Record<string, unknown> = { op: 'publish', channel, data };
    if (options.msgId !== undefined) frame.msg_id = options.msgId;
    return this.call(frame, (r) => ({ epoch: r.epoch, offset: r.offset, duplicate: r.duplicate === true }));
  }

  /** Creates a channel (idempotent). */
  create(channel: string, options?: Record<string, unknown>): Promise<{ created: boolean; epoch: string }> {
    const frame: Record<string, unknown> = { op: 'create', channel };
    if (options) frame.options = options;
    return this.call(frame, (r) => ({ created: r.created, epoch: r.epoch }));
  }

  /** Deletes a channel. */
  delete(channel: string): Promise<void> {
    return this.call({ op: 'delete', channel }, () => undefined);
  }

  /** Reads a channel's backlog without subscribing (default from `"oldest"`, 100 messages). */
  history<T = unknown>(
    channel: string,
    options: { start?: Start; limit?: number } = {},
  ): Promise<SubscribeInfo & { lost?: { reason: string; from?: number; to?: number }; messages: Array<{ offset: number; data: T }>; more: boolean }> {
    const frame: Record<string, unknown> = { op: 'history', channel };
    if (options.start !== undefined) frame.start = options.start;
    if (options.limit !== undefined) frame.limit = options.limit;
    return this.call(frame, (r) => ({ channel, ...stripReply(r) }));
  }

  /** Replies to message `offset` of `channel` (the channel's class must allow replies). */
  reply(channel: string, offset: number, data: unknown): Promise<void> {
    return this.call({ op: 'reply', channel, offset, data }, () => undefined);
  }

  /** Lists channels (listeners with `CreateChannel`). */
  channels(options: { prefix?: string; after?: string; limit?: number } = {}): Promise<{ channels: any[]; more: boolean }> {
    return this.call({ op: 'channels', ...options }, (r) => ({ channels: r.channels, more: r.more }));
  }

  /** Sends a `ping` request and waits for its reply. */
  ping(): Promise<void> {
    return this.call({ op: 'ping' }, () => undefined);
  }

  /**
   * Sends any v1 request and resolves with its reply (rejects with a {@link TslmError} on
   * `"ok":false`). Requests made while disconnected wait for the next connection, up to
   * `requestTimeoutMs`.
   */
  request(frame: Record<string, unknown>): Promise<any> {
    return handled(this.send(frame, false));
  }

  // ---------------------------------------------------------------------------------------------

  private call<T>(frame: Record<string, unknown>, map: (reply: any) => T): Promise<T> {
    return handled(this.send(frame, false).then(map));
  }

  private send(frame: Record<string, unknown>, internal: boolean): Promise<any> {
    if (this.userClosed || this._state === 'closed') {
      return Promise.reject(new TslmError('closed', 'the client is closed', { op: String(frame.op) }));
    }
    if (!internal && this.streaming && this.beside(frame)) return this.overHttp(frame);
    if (!internal && this.ready && this.streaming) return Promise.reject(this.unsupported(frame));
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      const p: Pending = { frame, resolve, reject, sent: false, internal };
      const timeout = this.opts.requestTimeoutMs ?? 15000;
      p.timer = this.timers.setTimeout(() => {
        if (this.pending.delete(id)) reject(new TslmError('timeout', `no reply to \`${String(frame.op)}\` within ${timeout} ms`, { op: String(frame.op) }));
      }, timeout);
      this.pending.set(id, p);
      if (this.ready || internal) this.transmit(id, p);
    });
  }

  private transmit(id: number, p: Pending): void {
    if (!this.conn) return;
    p.sent = true;
    this.conn.send(JSON.stringify({ ...p.frame, id }));
  }

  /** Whether `frame` is a request the stream transports make over HTTP beside their stream. */
  private beside(frame: Record<string, unknown>): boolean {
    return (frame.op === 'history' || frame.op === 'reply') && this.transports[this.transportIndex].fetch !== undefined;
  }

  /** `history` and `reply` over the gateway's HTTP calls (docs/protocol.md, "Subscriber calls
   * over HTTP"), with the token and the errors of the WebSocket request. */
  private async overHttp(frame: Record<string, any>): Promise<any> {
    const { op, channel } = frame;
    const where = { op, channel };
    const headers: Record<string, string> = {};
    const init: RequestInit = { headers, cache: 'no-store' };
    const name = encodeURIComponent(channel);
    let path: string;
    if (op === 'reply') {
      path = `v1/channels/${name}/messages/${frame.offset}/reply`;
      init.method = 'POST';
      init.body = JSON.stringify(frame.data);
      headers['content-type'] = 'application/json';
    } else {
      const q = new URLSearchParams();
      const s = frame.start;
      if (typeof s === 'string') q.set('start', s);
      else if (s && 'last' in s) q.set('last', String(s.last));
      else if (s) q.set('epoch', s.epoch), q.set('offset', String(s.offset));
      if (frame.limit !== undefined) q.set('limit', String(frame.limit));
      path = `v1/channels/${name}/history?${q}`;
    }
    if (this.opts.token) headers.authorization = `Bearer ${await this.getToken()}`;
    const ac = new AbortController();
    init.signal = ac.signal;
    const timer = this.timers.setTimeout(() => ac.abort(), this.opts.requestTimeoutMs ?? 15000);
    let body: any;
    try {
      body = await (await this.transports[this.transportIndex].fetch!(this.opts.url, path, init)).json();
    } catch (error) {
      throw new TslmError(ac.signal.aborted ? 'timeout' : 'disconnected', `\`${op}\` over HTTP failed: ${error instanceof Error ? error.message : String(error)}`, where);
    } finally {
      this.clear(timer);
    }
    if (body?.ok === true) return body;
    throw new TslmError(body?.error?.code ?? 'protocol', body?.error?.message ?? 'not an answer of the gateway', where);
  }

  private unsupported(frame: Record<string, unknown>): TslmError {
    const op = String(frame.op);
    return new TslmError('unsupported', `\`${op}\` needs a WebSocket; the client is on ${this.transports[this.transportIndex].name}`, { op });
  }

  private failPending(which: (p: Pending) => boolean, code: string, message: string): void {
    for (const [id, p] of [...this.pending]) {
      if (!which(p)) continue;
      this.pending.delete(id);
      this.clear(p.timer);
      p.reject(new TslmError(code, message, { op: String(p.frame.op) }));
    }
  }

  private setState(state: ConnectionState): void {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this.emit('state', { state, previous });
  }

  private clear(handle: unknown): void {
    if (handle !== undefined) this.timers.clearTimeout(handle);
  }

  private clearConnectionTimers(): void {
    this.clear(this.connectTimer);
    this.clear(this.livenessTimer);
    this.clear(this.refreshTimer);
    this.clear(this.checkTimer);
    this.connectTimer = this.livenessTimer = this.refreshTimer = this.checkTimer = undefined;
  }

  private openConnection(): void {
    this.clear(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const gen = ++this.generation;
    const transport = this.transports[this.transportIndex];
    this.gotFrame = false;
    this.ready = false;
    this.setState('connecting');
    const protocols = ['tslm.v1'];
    if (this.opts.listenerToken) protocols.push(this.opts.listenerToken);
    this.connectTimer = this.timers.setTimeout(() => {
      if (gen === this.generation && !this.ready) this.abandon(1006, 'connection attempt timed out');
    }, this.opts.connectTimeoutMs ?? 10000);
    this.streamChannels = [...this.subs.keys()];
    const stream = transport.stream
      ? {
          channels: [...this.subs.values()].map((s) => {
            const start = s.position ?? s.start;
            return start === 'new' ? s.channel : `${s.channel}@${startText(start)}`;
          }),
          token: () =>
            this.opts.token
              ? this.getToken().then((t) => {
                  if (gen === this.generation) this.renewStream(t, gen);
                  return t;
                })
              : Promise.resolve(undefined),
        }
      : undefined;
    this.conn = transport.open(this.opts.url, protocols, {
      open: () => {
        if (gen === this.generation) this.onOpen(gen);
      },
      message: (text) => {
        if (gen === this.generation) this.onFrame(text);
      },
      close: ({ code, reason, immediate, error }) => {
        if (gen !== this.generation) return;
        if (error) this.onStreamRefused(error);
        this.onClose(code, reason, immediate);
      },
    }, stream);
  }

  /** Gives the current connection up as if it had ended with `code` (a dead network may never
   * deliver a close event). */
  private abandon(code: number, reason: string): void {
    const conn = this.conn;
    this.generation++;
    this.conn = null;
    conn?.close(4000, reason.slice(0, 100));
    this.onClose(code, reason);
  }

  private async onOpen(gen: number): Promise<void> {
    this.lastReceived = this.timers.now();
    // The first exchange: `auth` with the token, or a `ping`. Its reply is the server's first
    // frame; only then is the connection open for subscriptions and requests.
    try {
      if (this.streaming) {
        // No first exchange: the token went in the request, the stream says where each channel starts.
        for (const sub of this.subs.values()) sub.generation = gen;
        for (const [id, p] of [...this.pending]) {
          if (p.sent || p.internal || !this.beside(p.frame)) continue;
          this.pending.delete(id);
          this.clear(p.timer);
          this.overHttp(p.frame).then(p.resolve, p.reject);
        }
        this.failPending((p) => !p.sent && !p.internal, 'unsupported', 'needs a WebSocket');
      } else if (this.opts.publisher) {
        const r = await this.authenticatePublisher(gen);
        if (r === undefined) return;
        this.onTokenAccepted(r, gen);
      } else if (this.opts.token) {
        const token = await this.getToken();
        if (gen !== this.generation) return;
        const r = await this.send({ op: 'auth', token }, true);
        if (gen !== this.generation) return;
        this.onTokenAccepted(r, gen);
      } else {
        await this.send({ op: 'ping' }, true);
        if (gen !== this.generation) return;
      }
    } catch (error) {
      if (gen !== this.generation) return;
      const e = error instanceof TslmError ? error : new TslmError('token', String(error));
      if (e.code === 'disconnected' || e.code === 'closed') return;
      this.emit('error', e);
      // A refused credential, or no reply: drop this connection and try again after a backoff
      // (never at once: a credential refused again must not become a reconnect loop).
      this.abandon(1006, `${e.op ?? 'first request'} failed: ${e.code}`);
      return;
    }
    this.clear(this.connectTimer);
    this.connectTimer = undefined;
    this.ready = true;
    this.attempt = 0;
    if (!this.streaming) this.scheduleLiveness();
    if (this.transportIndex > 0) {
      this.clear(this.upgradeTimer);
      this.upgradeTimer = this.timers.setTimeout(() => {
        if (gen === this.generation && this.ready) {
          // Try the preferred transport again: a planned reconnect that resumes every channel.
          this.generation++;
          this.conn?.close(1000, '');
          this.conn = null;
          this.cleanupConnection();
          this.transportIndex = 0;
          this.openConnection();
        }
      }, this.opts.upgradeRetryMs ?? 60000);
    }
    // Resume every subscription and send what waited, before telling anyone: a listener of
    // `open` that subscribes then does so once.
    for (const sub of this.subs.values()) if (sub.generation !== gen) this.sendSubscribe(sub);
    for (const [id, p] of this.pending) if (!p.sent) this.transmit(id, p);
    this.setState('open');
    this.emit('open', { transport: this.transports[this.transportIndex].name });
    // Subscriptions changed while the stream was opening: a new one with the current list.
    if (this.streaming && (this.streamChannels.length !== this.subs.size || this.streamChannels.some((c) => !this.subs.has(c)))) this.restartStream();
  }

  /** A stream refused for one channel (the gateway's message names it): the refusal is an `error`
   * event; a `forbidden` or `unauthorized` channel is dropped, as a refused `subscribe` is, so
   * that the other channels can flow; a missing one is retried with the stream. */
  private onStreamRefused(error: { code: string; message: string }): void {
    const channel = /channel `([^`]+)`/.exec(error.message)?.[1];
    const sub = channel === undefined ? undefined : this.subs.get(channel);
    const e = new TslmError(error.code, error.message, sub ? { channel: sub.channel, op: 'subscribe' } : { op: 'subscribe' });
    this.emit('error', e);
    if (!sub || (error.code !== 'forbidden' && !(error.code === 'unauthorized' && !this.opts.token))) return;
    this.subs.delete(sub.channel);
    if (!sub.readySettled) {
      sub.readySettled = true;
      sub.rejectReady(e);
    }
  }

  private async authenticatePublisher(gen: number): Promise<any> {
    const { name, sign } = this.opts.publisher!;
    const c = await this.send({ op: 'challenge' }, true);
    if (gen !== this.generation) return undefined;
    const challenge = fromBase64(c.challenge);
    const nameBytes = new TextEncoder().encode(name);
    const prefix = new TextEncoder().encode('tslm-auth-v1');
    const message = new Uint8Array(prefix.length + 1 + nameBytes.length + 1 + challenge.length);
    message.set(prefix, 0);
    message.set(nameBytes, prefix.length + 1);
    message.set(challenge, prefix.length + 2 + nameBytes.length);
    let signature: Uint8Array;
    try {
      signature = await sign(message);
    } catch (error) {
      throw new TslmError('token', `the publisher's signer failed: ${error instanceof Error ? error.message : String(error)}`, { op: 'auth' });
    }
    if (gen !== this.generation) return undefined;
    return this.send({ op: 'auth', publisher: name, signature: toBase64(signature) }, true);
  }

  private async getToken(): Promise<string> {
    let token: unknown;
    try {
      token = await this.opts.token!();
    } catch (error) {
      throw new TslmError('token', `the token callback failed: ${error instanceof Error ? error.message : String(error)}`, { op: 'auth' });
    }
    if (typeof token !== 'string' || token === '') throw new TslmError('token', 'the token callback returned no token', { op: 'auth' });
    return token;
  }

  private onTokenAccepted(r: any, gen: number): void {
    this.emit('token', { expiresAt: r.expires_at, subject: r.subject, publisher: r.publisher });
    this.refreshAt(r.expires_at, gen, () => void this.refreshToken(gen));
  }

  /** Runs `renew` `refreshBeforeMs` before `expiresAt` (Unix seconds; nothing when it is not a
   * number). */
  private refreshAt(expiresAt: unknown, gen: number, renew: () => void): void {
    this.clear(this.refreshTimer);
    this.refreshTimer = undefined;
    if (typeof expiresAt !== 'number') return;
    const life = expiresAt * 1000 - this.timers.now();
    const before = this.opts.refreshBeforeMs ?? 30000;
    // At least a second apart: a client clock far ahead of the gateway's must not refresh in a loop.
    const delay = Math.max(1000, life > 2 * before ? life - before : life / 2);
    this.refreshTimer = this.timers.setTimeout(() => {
      if (gen === this.generation) renew();
    }, delay);
  }

  /** A stream carries the token it was opened with: before that token (a JWT) expires, a new
   * stream is opened with a new one, every channel resuming from its position. */
  private renewStream(token: string, gen: number): void {
    let exp: unknown;
    try {
      exp = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).exp;
    } catch {
      return; // not a JWT: the stream's `end` event says when it expired
    }
    this.refreshAt(exp, gen, () => this.restartStream());
  }

  private async refreshToken(gen: number): Promise<void> {
    try {
      const token = await this.getToken();
      if (gen !== this.generation) return;
      const r = await this.send({ op: 'refresh', token }, true);
      if (gen !== this.generation) return;
      this.onTokenAccepted(r, gen);
    } catch (error) {
      if (gen !== this.generation) return;
      const e = error instanceof TslmError ? error : new TslmError('token', String(error));
      if (e.code === 'disconnected' || e.code === 'closed') return;
      this.emit('error', e);
      // Try again shortly; if the token expires first, the gateway closes with 4003 and the
      // reconnect asks the callback for a new token.
      this.refreshTimer = this.timers.setTimeout(() => {
        if (gen === this.generation) void this.refreshToken(gen);
      }, 5000);
    }
  }

  private cleanupConnection(): void {
    this.clearConnectionTimers();
    this.clear(this.upgradeTimer);
    this.upgradeTimer = undefined;
    this.ready = false;
    this.failPending((p) => p.sent || p.internal, 'disconnected', 'the connection dropped before the reply');
    for (const sub of this.subs.values()) {
      sub.state = 'pending';
      sub.buffer = [];
      this.clear(sub.retryTimer);
      sub.retryTimer = undefined;
    }
  }

  private onClose(code: number, reason: string, immediate = false): void {
    this.conn = null;
    const hadFrame = this.gotFrame;
    this.cleanupConnection();
    if (this.userClosed) return;
    const hasToken = this.opts.token !== undefined || this.opts.publisher !== undefined;
    const reaction = closeReaction(code, reason, hasToken);
    if (!hadFrame && this.transports.length > 1 && reaction !== 'stop') {
      // Never reached the server's first frame: fall back to the next transport; after the
      // last, go round to the first again after a backoff.
      this.transportIndex = (this.transportIndex + 1) % this.transports.length;
      if (this.transportIndex !== 0) {
        this.emit('disconnect', { code, reason, reaction, delayMs: 0 });
        this.openConnection();
        return;
      }
    } else if (hadFrame) {
      this.transportIndex = 0;
    }
    if (reaction === 'stop') {
      this.emit('disconnect', { code, reason, reaction });
      const error = new TslmError('fatal_close', `the gateway closed the connection with ${code}${reason ? ` (${reason})` : ''}; not reconnecting`);
      this.userClosed = true;
      this.stopEverything(error.message);
      this.emit('error', error);
      return;
    }
    let delayMs: number;
    if (reaction === 'token' || immediate) {
      delayMs = 0;
    } else {
      delayMs = backoffDelay(this.attempt, this.opts.backoff, this.random);
      if (reaction === 'backoff') delayMs = Math.max(delayMs, this.opts.penaltyMs ?? 5000);
      // A draining gateway says when to come back (jittered per connection, so its clients do
      // not all return at once).
      const retryAfter = code === 1001 ? shutdownRetryAfterMs(reason) : undefined;
      if (retryAfter !== undefined) delayMs = Math.max(delayMs, retryAfter);
      this.attempt++;
    }
    this.emit('disconnect', { code, reason, reaction, delayMs });
    this.setState('waiting');
    this.reconnectTimer = this.timers.setTimeout(() => {
      this.reconnectTimer = undefined;
      if (!this.userClosed && this._state === 'waiting') this.openConnection();
    }, delayMs);
  }

  private scheduleLiveness(): void {
    const interval = this.opts.pingIntervalMs ?? 20000;
    const timeout = this.opts.pingTimeoutMs ?? 10000;
    const gen = this.generation;
    const check = () => {
      if (gen !== this.generation || !this.ready) return;
      const now = this.timers.now();
      if (this.pingSentAt > 0) {
        if (this.lastReceived >= this.pingSentAt) {
          this.pingSentAt = 0;
        } else if (now - this.pingSentAt >= timeout) {
          this.pingSentAt = 0;
          this.abandon(1006, 'no answer to a ping');
          return;
        } else {
          this.livenessTimer = this.timers.setTimeout(check, this.pingSentAt + timeout - now);
          return;
        }
      }
      const idle = now - this.lastReceived;
      if (idle >= interval) {
        this.livenessPing();
        this.livenessTimer = this.timers.setTimeout(check, timeout);
      } else {
        this.livenessTimer = this.timers.setTimeout(check, interval - idle);
      }
    };
    this.clear(this.livenessTimer);
    this.pingSentAt = 0;
    this.livenessTimer = this.timers.setTimeout(check, interval);
  }

  private livenessPing(): void {
    this.pingSentAt = this.timers.now();
    this.send({ op: 'ping' }, true).catch(() => {});
  }

  /** Checks the connection now (the page became visible or the network came back): reconnects
   * at once when waiting, pings when open. */
  checkNow(): void {
    if (this.userClosed) return;
    if (this._state === 'waiting') {
      this.attempt = 0;
      this.openConnection();
    } else if (this._state === 'open' && this.pingSentAt === 0 && !this.streaming) {
      this.livenessPing();
      const gen = this.generation;
      const timeout = this.opts.pingTimeoutMs ?? 10000;
      const sentAt = this.pingSentAt;
      this.clear(this.checkTimer);
      this.checkTimer = this.timers.setTimeout(() => {
        if (gen === this.generation && this.ready && this.pingSentAt === sentAt && this.lastReceived < sentAt) {
          this.pingSentAt = 0;
          this.abandon(1006, 'no answer to a ping');
        }
      }, timeout);
    }
  }

  private listenToPage(): void {
    const g = globalThis as { window?: EventTargetLike; document?: EventTargetLike & { visibilityState?: string } };
    const win = this.opts.window === undefined ? g.window : this.opts.window;
    const doc = this.opts.document === undefined ? g.document : this.opts.document;
    if (win && typeof win.addEventListener === 'function') {
      const onOnline = () => this.checkNow();
      win.addEventListener('online', onOnline);
      this.detach.push(() => win.removeEventListener('online', onOnline));
    }
    if (doc && typeof doc.addEventListener === 'function') {
      const onVisible = () => {
        if (doc.visibilityState === 'visible') this.checkNow();
      };
      doc.addEventListener('visibilitychange', onVisible);
      this.detach.push(() => doc.removeEventListener('visibilitychange', onVisible));
    }
  }

  private sendSubscribe(sub: Sub): void {
    if (!this.ready) return;
    const gen = this.generation;
    sub.state = 'pending';
    sub.buffer = [];
    sub.generation = gen;
    const frame: Record<string, unknown> = { op: 'subscribe', channel: sub.channel };
    frame.start = sub.position ? { epoch: sub.position.epoch, offset: sub.position.offset } : sub.start;
    void this.send(frame, true).then(
      (r) => {
        if (gen !== this.generation || this.subs.get(sub.channel) !== sub) return;
        this.onSubscribed(sub, r);
      },
      (error: TslmError) => {
        if (gen !== this.generation || this.subs.get(sub.channel) !== sub) return;
        if (error.code === 'disconnected' || error.code === 'closed') return;
        const e = new TslmError(error.code, error.message, { channel: sub.channel, op: 'subscribe' });
        this.emit('error', e);
        if (error.code === 'not_found' || error.code === 'timeout' || error.code === 'rate_limited' || error.code === 'limit_exceeded') {
          // The channel may come back (a restarted gateway has no channels until its publishers
          // create them again): retry this subscription alone, with backoff.
          const delay = Math.max(backoffDelay(sub.retryAttempt++, this.opts.backoff, this.random), 50);
          sub.retryTimer = this.timers.setTimeout(() => {
            sub.retryTimer = undefined;
            if (gen === this.generation && this.subs.get(sub.channel) === sub) this.sendSubscribe(sub);
          }, delay);
          return;
        }
        this.subs.delete(sub.channel);
        if (!sub.readySettled) {
          sub.readySettled = true;
          sub.rejectReady(e);
        }
      },
    );
  }

  private onSubscribed(sub: Sub, r: any): void {
    const previous = sub.position;
    sub.position = { epoch: r.epoch, offset: r.from - 1 };
    sub.retryAttempt = 0;
    if (r.recovered === false && r.lost) {
      const loss: LossEvent = { channel: sub.channel, reason: r.lost.reason, epoch: r.epoch };
      if (previous) loss.previousEpoch = previous.epoch;
      if (r.lost.from !== undefined) loss.from = r.lost.from;
      if (r.lost.to !== undefined) loss.to = r.lost.to;
      this.emit('loss', loss);
    } else if (previous && previous.epoch !== r.epoch) {
      this.emit('loss', { channel: sub.channel, reason: 'epoch_changed', epoch: r.epoch, previousEpoch: previous.epoch });
    }
    sub.state = 'active';
    if (!sub.readySettled) {
      sub.readySettled = true;
      const info: SubscribeInfo = { channel: sub.channel, epoch: r.epoch, offset: r.offset, from: r.from };
      if (r.recovered !== undefined) info.recovered = r.recovered;
      sub.resolveReady(info);
    }
    const buffered = sub.buffer;
    sub.buffer = [];
    for (const ev of buffered) {
      if (this.subs.get(sub.channel) !== sub || sub.state !== 'active') break;
      this.onChannelEvent(sub, ev);
    }
  }

  private onFrame(text: string): void {
    this.lastReceived = this.timers.now();
    this.gotFrame = true;
    let msg: any;
    try {
      msg = JSON.parse(text);
    } catch {
      this.emit('error', new TslmError('protocol', 'the server sent a frame that is not JSON'));
      return;
    }
    if (msg === null || typeof msg !== 'object') return;
    if ('ok' in msg) {
      const id = msg.id;
      const p = typeof id === 'number' ? this.pending.get(id) : undefined;
      if (!p) {
        if (msg.ok === false && msg.error) this.emit('error', new TslmError(msg.error.code, msg.error.message));
        return;
      }
      this.pending.delete(id);
      this.clear(p.timer);
      if (msg.ok === true) p.resolve(msg);
      else p.reject(new TslmError(msg.error?.code ?? 'protocol', msg.error?.message ?? 'error reply', { op: String(p.frame.op), channel: p.frame.channel as string | undefined }));
      return;
    }
    switch (msg.event) {
      case 'message':
      case 'gap': {
        const sub = this.subs.get(msg.channel);
        if (!sub) return;
        if (sub.state === 'pending') sub.buffer.push(msg);
        else this.onChannelEvent(sub, msg);
        return;
      }
      case 'closed': {
        const sub = this.subs.get(msg.channel);
        if (!sub) return;
        if (msg.reason === 'epoch_changed' && sub.position) {
          // The channel's log restarted (a cluster's Redis lost it): resume from where this
          // client was; the answer reports the loss as `epoch_changed`.
          this.sendSubscribe(sub);
          return;
        }
        this.subs.delete(msg.channel);
        if (!sub.readySettled) {
          sub.readySettled = true;
          sub.rejectReady(new TslmError(msg.reason === 'unauthorized' ? 'unauthorized' : 'gone', `subscription ended: ${msg.reason}`, { channel: msg.channel, op: 'subscribe' }));
        }
        this.emit('ended', { channel: msg.channel, reason: msg.reason });
        return;
      }
      case 'subscribed': {
        // A stream transport's start (or restart, after a loss) of a channel.
        const sub = this.subs.get(msg.channel);
        if (sub) this.onSubscribed(sub, msg);
        return;
      }
      case 'reply':
        this.emit('reply', { channel: msg.channel, offset: msg.offset, from: msg.from, data: msg.data });
        return;
      default:
      // An event kind this client does not know: ignored, as the protocol asks.
    }
  }

  private onChannelEvent(sub: Sub, ev: any): void {
    const pos = sub.position!;
    if (ev.event === 'gap') {
      if (ev.to <= pos.offset) return;
      const from = Math.max(ev.from, pos.offset + 1);
      pos.offset = ev.to;
      this.emit('loss', { channel: sub.channel, reason: 'gap', epoch: pos.epoch, from, to: ev.to });
      return;
    }
    const offset = ev.offset;
    if (typeof offset !== 'number' || offset <= pos.offset) return; // already delivered
    if (offset > pos.offset + 1) {
      const from = pos.offset + 1;
      pos.offset = offset - 1;
      this.emit('loss', { channel: sub.channel, reason: 'skipped', epoch: pos.epoch, from, to: offset - 1 });
      if (this.subs.get(sub.channel) !== sub) return;
    }
    pos.offset = offset;
    const message: ChannelMessage = { channel: sub.channel, epoch: pos.epoch, offset, data: ev.data };
    this.emit('message', message);
    if (sub.handler) {
      try {
        sub.handler(message);
      } catch (error) {
        this.onListenerError(error);
      }
    }
  }
}

function fromBase64(text: string): Uint8Array {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function toBase64(bytes: Uint8Array): string {
  let bin = '';
  for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
  return btoa(bin);
}

function stripReply(r: any): any {
  const { id: _id, ok: _ok, ...rest } = r;
  return rest;
}
