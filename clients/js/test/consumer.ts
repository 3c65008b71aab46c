// Compiled (not run) by types.test.mjs: the published type definitions serve a strict
// TypeScript consumer, and reject misuse (each @ts-expect-error must be an error).
import { TslmClient, TslmError, closeReaction, type ChannelMessage, type LossEvent, type CloseReaction } from '../dist/index.js';

const client = new TslmClient({ url: 'ws://127.0.0.1:8080/', backoff: { initialMs: 100 } });
client.on('message', (m: ChannelMessage) => m.offset + 1);
client.on('loss', (l: LossEvent) => (l.reason === 'epoch_changed' ? l.previousEpoch : l.from));
client.on('error', (e: TslmError) => e.code.toUpperCase());
client.on('disconnect', (d) => d.reaction satisfies CloseReaction);
const sub = client.subscribe<{ px: number }>('prices', { start: { last: 5 }, onMessage: (m) => m.data.px.toFixed(2) });
sub.ready.then((info) => info.epoch.length + info.from);
client.publish('prices', { px: 1 }, { msgId: 'm-1' }).then((r) => r.offset + (r.duplicate ? 1 : 0));
client.history<number>('prices', { start: 'oldest', limit: 10 }).then((h) => h.messages.map((m) => m.data + 1));
const reaction: CloseReaction = closeReaction(4003, 'token expired', true);

// @ts-expect-error: a start must be "new", "oldest", { last } or a position
client.subscribe('x', { start: 'newest' });
// @ts-expect-error: unknown event name
client.on('messages', () => {});
// @ts-expect-error: msgId is a string
client.publish('x', 1, { msgId: 7 });
// @ts-expect-error: the url is required
new TslmClient({});

export { reaction };
