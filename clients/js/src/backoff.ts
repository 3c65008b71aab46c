/** Exponential backoff with full jitter. */
export interface BackoffOptions {
  /** The cap of the first delay, in ms (default 500). */
  initialMs?: number;
  /** The largest cap, in ms (default 30000). */
  maxMs?: number;
  /** How much the cap grows per failed attempt (default 2). */
  factor?: number;
}

/**
 * The delay before reconnect attempt number `attempt` (0 for the first after a good connection):
 * a uniformly random duration between 0 and `min(maxMs, initialMs * factor ** attempt)`
 * ("full jitter"), so that many clients dropped at once by a gateway restart do not come back at
 * the same instant. `random` returns a number in [0, 1), like `Math.random`.
 */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = options.initialMs ?? 500;
  const max = options.maxMs ?? 30000;
  const factor = options.factor ?? 2;
  const cap = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt)));
  return Math.floor(random() * cap);
}
