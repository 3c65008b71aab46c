export { TslmClient, closeReaction, shutdownRetryAfterMs } from './client.js';
export type {
  ChannelMessage,
  ClientEvents,
  ClientOptions,
  CloseReaction,
  ConnectionState,
  DisconnectEvent,
  LossEvent,
  Position,
  ReplyEvent,
  Start,
  SubscribeInfo,
  Subscription,
  Timers,
} from './client.js';
export { TslmError } from './errors.js';
export type { ErrorCode } from './errors.js';
export { backoffDelay } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { webSocket, serverSentEvents, longPoll } from './transport.js';
export type {
  HttpTransportOptions,
  StreamRequest,
  Transport,
  TransportConnection,
  TransportHandlers,
  WebSocketConstructor,
  WebSocketLike,
  WebSocketTransportOptions,
} from './transport.js';
