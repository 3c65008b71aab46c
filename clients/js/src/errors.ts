/**
 * Error codes a {@link TslmError} can carry.
 *
 * The first group are the gateway's own codes (docs/protocol.md, section 4), passed on from an
 * `"ok":false` reply (`method_not_allowed` and `upgrade_required` are HTTP-only). The second group are made by this client:
 *
 * - `disconnected`: the connection dropped after the request was sent, so its outcome is unknown
 *   (retry a `publish` with the same `msgId` to find out without publishing twice);
 * - `timeout`: no reply within `requestTimeoutMs` (the request may still have run);
 * - `closed`: {@link TslmClient.close} was called before the request was answered;
 * - `token`: the token callback threw or returned something that is not a non-empty string;
 * - `protocol`: the server sent something this client cannot read;
 * - `fatal_close`: the gateway closed the connection with a code whose documented reaction is to
 *   stop (1002, 1007, 1008 `too many control frames`, 4002 without a token callback);
 * - `unsupported`: the client is on a stream transport (SSE, long-poll), which only receives:
 *   every request but subscribing and unsubscribing needs a WebSocket.
 */
export type ErrorCode =
  | 'bad_request'
  | 'unknown_op'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'gone'
  | 'too_large'
  | 'rate_limited'
  | 'limit_exceeded'
  | 'unavailable'
  | 'internal'
  | 'method_not_allowed'
  | 'upgrade_required'
  | 'disconnected'
  | 'timeout'
  | 'closed'
  | 'token'
  | 'protocol'
  | 'fatal_close'
  | 'unsupported';

/** Every error this library rejects a promise with or emits as an `error` event. */
export class TslmError extends Error {
  /** A stable code: act on it, not on `message`. */
  readonly code: ErrorCode | string;
  /** The channel the error is about, when there is one. */
  readonly channel?: string;
  /** The operation that failed (`subscribe`, `publish`, `auth`, …), when there is one. */
  readonly op?: string;

  constructor(code: ErrorCode | string, message: string, extra?: { channel?: string; op?: string }) {
    super(message);
    this.name = 'TslmError';
    this.code = code;
    if (extra?.channel !== undefined) this.channel = extra.channel;
    if (extra?.op !== undefined) this.op = extra.op;
  }
}
