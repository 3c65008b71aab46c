/**
 * The transport layer: how frames of the `tslm.v1` protocol travel between this client and the
 * gateway. A transport opens connections; a connection carries JSON text both ways and reports
 * when it opens and when it ends.
 *
 * Only {@link webSocket} exists today. Server-Sent Events and long-polling transports are
 * planned (the gateway does not serve them yet); they will be further implementations of
 * {@link Transport}, passed after `webSocket()` in the client's `transports` list, and the client
 * already falls back along that list and retries the first entry later.
 */
export interface TransportHandlers {
  /** The connection is open: frames may be sent. */
  open(): void;
  /** One text frame from the server (one JSON object). */
  message(text: string): void;
  /** The connection ended. Called at most once, and never after {@link TransportConnection.close}
   * was called by the client (the client then handles the end itself). `code` follows the
   * WebSocket close codes: 1006 for an end without a close frame. */
  close(info: { code: number; reason: string }): void;
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
  open(url: string, protocols: string[], handlers: TransportHandlers): TransportConnection;
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
