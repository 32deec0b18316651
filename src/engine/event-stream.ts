/**
 * A stream of generation events fed by callbacks (the engine thread's messages, queue events) and read as an
 * async iterable: `drain()` yields until the `done` event, or throws the failure.
 */
export class EventStream<T extends { type: string }> {
  private readonly queue: T[] = [];
  private failure: Error | undefined;
  private wake: (() => void) | undefined;
  /** True once the `done` event has arrived. */
  finished = false;

  push(e: T): void {
    this.queue.push(e);
    if (e.type === 'done') this.finished = true;
    this.wake?.();
  }

  fail(e: Error): void {
    this.failure = e;
    this.wake?.();
  }

  /** True once the stream has ended, either way. */
  get settled(): boolean {
    return this.finished || this.failure !== undefined;
  }

  async *drain(): AsyncGenerator<T> {
    for (;;) {
      while (this.queue.length) {
        const e = this.queue.shift()!;
        yield e;
        if (e.type === 'done') return;
      }
      if (this.failure) throw this.failure;
      if (this.finished) return;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
  }
}
