/**
 * The transport layer: how frames of the `tslm.v1` protocol travel between this client and the
 * gateway. A transport opens connections; a connection carries JSON text both ways and reports
 * when it opens and when it ends.
 *
 * {@link webSocket} carries requests both ways. {@link serverSentEvents} and {@link longPoll} are
 * *stream* transports (`stream: true`): they only receive the events of the channels the client
 * names when it opens them (docs/protocol.md, sections 11 and 12); a connection of theirs has no
 * command channel, and the client opens a new one when its channel list changes.
 */
export interface TransportHandlers {
  /** The connection is open: frames may be sent. */
  open(): void;
  /** One text frame from the server (one JSON object). */
  message(text: string): void;
  /** The connection ended. Called at most once, and never after {@link TransportConnection.close}
   * was called by the client (the client then handles the end itself). `code` follows the
   * WebSocket close codes: 1006 for an end without a close frame. `immediate`: reconnect without
   * a backoff (an SSE `end` event `reload`). */
  close(info: { code: number; reason: string; immediate?: boolean; error?: { code: string; message: string } }): void;
}

/** One open (or opening) connection of a transport. */
export interface TransportConnection {
  /** Sends one text frame. */
  send(text: string): void;
  /** Ends the connection. No handler is called afterwards. */
  close(code?: number, reason?: string): void;
}

/** A way to reach the gateway. */
export interface Transport {
  /** A short name, reported in the client's `open` event (`"websocket"`). */
  readonly name: string;
  /** Opens a connection to `url` offering the WebSocket subprotocols `protocols`. Must not throw:
   * a failure is reported through `handlers.close`. */
  open(url: string, protocols: string[], handlers: TransportHandlers, stream?: StreamRequest): TransportConnection;
  /** True for a transport that only receives (no command channel): it is given a {@link StreamRequest}. */
  readonly stream?: boolean;
  /** A stream transport's way to make the subscriber's HTTP calls beside its stream (`history`,
   * `reply`): `path` (with its query) next to the gateway's address `url`. */
  fetch?(url: string, path: string, init: RequestInit): Promise<Response>;
}

/** What a stream transport reads: `channel` values (`NAME` or `NAME@START`) and the token. */
export interface StreamRequest {
  channels: string[];
  /** Resolves with the access token for `Authorization: Bearer` (undefined: none). */
  token(): Promise<string | undefined>;
}

/** What this library needs of a WebSocket object: the browser's, Node's (20 with
 * `--experimental-websocket`, 22 and later) or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor (`globalThis.WebSocket`, or `WebSocket` from the `ws` package). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface WebSocketTransportOptions {
  /** The constructor to use; default `globalThis.WebSocket`. Node 20 needs
   * `--experimental-websocket` for the global one, or pass the `ws` package's. */
  WebSocket?: WebSocketConstructor;
}

/** The WebSocket transport. */
export function webSocket(options: WebSocketTransportOptions = {}): Transport {
  return {
    name: 'websocket',
    open(url, protocols, handlers) {
      let done = false;
      const finish = (code: number, reason: string) => {
        if (done) return;
        done = true;
        handlers.close({ code, reason });
      };
      const Ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
      let ws: WebSocketLike;
      try {
        if (!Ctor) throw new Error('no WebSocket constructor: pass one with webSocket({ WebSocket })');
        ws = new Ctor(url, protocols);
      } catch (error) {
        const reason = error instanceof Error ? error.message : String(error);
        setTimeout(() => finish(1006, reason), 0);
        return {
          send() {},
          close() {
            done = true;
          },
        };
      }
      ws.onopen = () => {
        if (!done) handlers.open();
      };
      ws.onmessage = (ev) => {
        if (!done && typeof ev.data === 'string') handlers.message(ev.data);
      };
      ws.onerror = () => {
        // Open connections get a close event after an error. A connection that fails before
        // opening may not (Node 20's WebSocket reports only the error), so end it here.
        if (ws.readyState === 0) {
          setTimeout(() => {
            if (done) return;
            try {
              ws.close();
            } catch {
              /* not open */
            }
            finish(1006, 'the connection could not be opened');
          }, 0);
        }
      };
      ws.onclose = (ev) => finish(ev.code || 1006, ev.reason || '');
      return {
        send(text) {
          if (!done && ws.readyState === 1) ws.send(text);
        },
        close(code = 1000, reason = '') {
          done = true;
          ws.onopen = ws.onmessage = ws.onclose = null;
          try {
            ws.close(code, reason);
          } catch {
            /* already closing */
          }
        },
      };
    },
  };
}

export interface HttpTransportOptions {
  /** The `fetch` to use; default `globalThis.fetch`. */
  fetch?: typeof fetch;
}

/** The HTTP address of `path` next to the gateway's WebSocket address (`ws:` to `http:`). */
function httpUrl(url: string, path: string, channels: string[], extra: Record<string, string>): string {
  const u = new URL(path, url.replace(/^ws/, 'http'));
  for (const c of channels) u.searchParams.append('channel', c);
  for (const k in extra) u.searchParams.set(k, extra[k]);
  return u.href;
}

/** Runs `body` until it ends or fails; the connection reports one close, never after close(). */
function httpConnection(
  handlers: TransportHandlers,
  stream: StreamRequest,
  body: (ctx: { signal: AbortSignal; fetch: typeof fetch; headers(): Promise<Record<string, string>>; open(): void }) => Promise<void | Parameters<TransportHandlers['close']>[0]>,
  options: HttpTransportOptions,
): TransportConnection {
  const ac = new AbortController();
  let done = false;
  let opened = false;
  const finish = (info: Parameters<TransportHandlers['close']>[0]) => {
    if (done) return;
    done = true;
    ac.abort();
    handlers.close(info);
  };
  const f = options.fetch ?? globalThis.fetch;
  const ctx = {
    signal: ac.signal,
    // Called as a plain function: a browser's `fetch` refuses any other `this`.
    fetch: ((input: RequestInfo | URL, init?: RequestInit) => f(input, init)) as typeof fetch,
    async headers() {
      const token = await stream.token();
      return token ? { authorization: `Bearer ${token}` } : ({} as Record<string, string>);
    },
    open() {
      if (!opened && !done) {
        opened = true;
        handlers.open();
      }
    },
  };
  Promise.resolve()
    .then(() => body(ctx))
    .then(
      (info) => finish(info || { code: 1006, reason: 'the stream ended' }),
      (error) => finish({ code: 1006, reason: error instanceof Error ? error.message : String(error) }),
    );
  return {
    send() {},
    close() {
      done = true;
      ac.abort();
    },
  };
}

/** The close that an HTTP error answer stands for (429 and 5xx back off longer), its reason the
 * status and the gateway's error code (docs/protocol.md, section 4) when it sent one. */
async function httpError(res: Response): Promise<{ code: number; reason: string; error?: { code: string; message: string } }> {
  let error: { code: string; message: string } | undefined;
  try {
    const e = (await res.json()).error;
    if (typeof e.code === 'string') error = { code: e.code, message: String(e.message) };
  } catch {
    /* not the gateway's error object */
  }
  return { code: res.status === 429 || res.status >= 500 ? 1011 : 1006, reason: `HTTP ${res.status}${error ? ` ${error.code}` : ''}`, error };
}

const idle = () => new Promise<void>(() => {});

/** The `fetch` method of a stream transport (called as a plain function: a browser's `fetch`
 * refuses any other `this`). */
function fetchBeside(options: HttpTransportOptions): Transport['fetch'] {
  return (url, path, init) => (options.fetch ?? globalThis.fetch)(new URL(path, url.replace(/^ws/, 'http')).href, init);
}

/**
 * Server-Sent Events (`GET /v1/events`), read with `fetch` so the token goes in an
 * `Authorization` header. Receives only; an `end` event closes the connection with the reaction it
 * names (`token_expired`: a new token at once; `reload`: at once; `shutdown; retry_after_ms=N`:
 * after N ms).
 */
export function serverSentEvents(options: HttpTransportOptions & { idleTimeoutMs?: number } = {}): Transport {
  return {
    name: 'sse',
    stream: true,
    fetch: fetchBeside(options),
    open(url, _protocols, handlers, stream) {
      return httpConnection(
        handlers,
        stream!,
        async (ctx) => {
          if (stream!.channels.length === 0) {
            ctx.open();
            return idle();
          }
          const res = await ctx.fetch(httpUrl(url, 'v1/events', stream!.channels, {}), {
            headers: { accept: 'text/event-stream', ...(await ctx.headers()) },
            signal: ctx.signal,
            cache: 'no-store',
          });
          if (res.status !== 200 || !res.body) return httpError(res);
          ctx.open();
          const reader = res.body.getReader();
          ctx.signal.addEventListener('abort', () => reader.cancel().catch(() => {}));
          const decoder = new TextDecoder();
          let text = '';
          let data: string[] = [];
          // The gateway sends a comment after 15 s without an event: silence for much longer
          // is a dead connection.
          const idleMs = options.idleTimeoutMs ?? 45000;
          let timer: ReturnType<typeof setTimeout> | undefined;
          try {
            return await readEvents();
          } finally {
            clearTimeout(timer);
          }
          async function readEvents(): Promise<{ code: number; reason: string; immediate?: boolean }> {
          for (;;) {
            clearTimeout(timer);
            timer = setTimeout(() => reader.cancel().catch(() => {}), idleMs);
            const { value, done } = await reader.read();
            if (done) {
              clearTimeout(timer);
              return { code: 1006, reason: 'the stream ended' };
            }
            text += decoder.decode(value, { stream: true });
            let nl: number;
            while ((nl = text.search(/\r\n|\r|\n/)) >= 0) {
              const line = text.slice(0, nl);
              text = text.slice(nl + (text[nl] === '\r' && text[nl + 1] === '\n' ? 2 : 1));
              if (line === '') {
                const payload = data.join('\n');
                data = [];
                if (payload === '') continue;
                let ev: any;
                try {
                  ev = JSON.parse(payload);
                } catch {
                  continue;
                }
                if (ev && ev.event === 'end') {
                  clearTimeout(timer);
                  return endInfo(String(ev.reason));
                }
                handlers.message(payload);
              } else if (line.startsWith('data:')) {
                data.push(line.slice(line[5] === ' ' ? 6 : 5));
              }
            }
          }
          }
        },
        options,
      );
    },
  };
}

/** The close an SSE `end` event stands for (the client's close reactions do the rest). */
function endInfo(reason: string): { code: number; reason: string; immediate?: boolean } {
  if (reason === 'token_expired') return { code: 4003, reason };
  if (reason === 'reload') return { code: 1012, reason, immediate: true };
  if (reason.startsWith('shutdown')) return { code: 1001, reason };
  return { code: 4000, reason };
}

/**
 * Long-polling (`GET /v1/poll`): one request per batch of events, following the answer's cursor.
 * Receives only. `waitSeconds` is the poll's `wait` (default 25).
 */
export function longPoll(options: HttpTransportOptions & { waitSeconds?: number } = {}): Transport {
  return {
    name: 'longpoll',
    stream: true,
    fetch: fetchBeside(options),
    open(url, _protocols, handlers, stream) {
      return httpConnection(
        handlers,
        stream!,
        async (ctx) => {
          if (stream!.channels.length === 0) {
            ctx.open();
            return idle();
          }
          const wait = options.waitSeconds ?? 25;
          let cursor: string | undefined;
          let more = false;
          for (;;) {
            const extra: Record<string, string> = { wait: String(more ? 0 : wait) };
            if (cursor) extra.cursor = cursor;
            // A poll unanswered well past its wait went through a dead network.
            const controller = new AbortController();
            const timer = setTimeout(() => controller.abort(), (wait + 15) * 1000);
            const abort = () => controller.abort();
            ctx.signal.addEventListener('abort', abort);
            let res: Response;
            let body: any;
            try {
              res = await ctx.fetch(httpUrl(url, 'v1/poll', stream!.channels, extra), {
                headers: await ctx.headers(),
                signal: controller.signal,
                cache: 'no-store',
              });
              if (res.status !== 200) return httpError(res);
              body = await res.json();
            } finally {
              clearTimeout(timer);
              ctx.signal.removeEventListener('abort', abort);
            }
            ctx.open();
            for (const ev of body.events ?? []) {
              if (ctx.signal.aborted) return;
              handlers.message(JSON.stringify(ev));
            }
            cursor = body.cursor;
            more = body.more === true;
          }
        },
        options,
      );
    },
  };
}
