/** A minimal typed event emitter. A throwing listener does not stop the others (it is reported
 * through `onListenerError`). Emitting `error` without a listener does nothing. */
export class Emitter<Events extends { [K in keyof Events]: unknown }> {
  private listeners: { [K in keyof Events]?: Set<(value: Events[K]) => void> } = {};
  protected onListenerError: (error: unknown) => void = (error) => {
    // Report, but never let one listener break the client's state machine.
    setTimeout(() => {
      throw error;
    }, 0);
  };

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(type: K, listener: (value: Events[K]) => void): () => void {
    let set = this.listeners[type];
    if (!set) {
      set = new Set();
      this.listeners[type] = set;
    }
    set.add(listener);
    return () => this.off(type, listener);
  }

  /** Removes a listener added with {@link on}. */
  off<K extends keyof Events>(type: K, listener: (value: Events[K]) => void): void {
    this.listeners[type]?.delete(listener);
  }

  protected emit<K extends keyof Events>(type: K, value: Events[K]): void {
    const set = this.listeners[type];
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(value);
      } catch (error) {
        this.onListenerError(error);
      }
    }
  }
}
