/** One server-sent event: its type (`message` when unnamed) and its data lines joined by newlines. */
export interface SseEvent {
  event: string;
  data: string;
}

/**
 * The server-sent events of a response body as they arrive, parsed as the HTML standard says:
 * events end at a blank line, `:` lines are comments, a single space after the colon is dropped.
 */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let event = '';
  let data: string[] = [];
  try {
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) return; // an event not ended by a blank line is dropped, as the standard says
      buffer += decoder.decode(chunk.value, { stream: true });
      // the last piece may be an incomplete line, and a final \r the first half of a \r\n: both wait
      const cut = buffer.endsWith('\r') ? buffer.length - 1 : buffer.length;
      const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
      buffer = lines.pop()! + buffer.slice(cut);
      for (const line of lines) {
        if (line === '') {
          if (data.length) yield { event: event || 'message', data: data.join('\n') };
          event = '';
          data = [];
          continue;
        }
        const colon = line.indexOf(':');
        if (colon === 0) continue;
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') event = value;
        else if (field === 'data') data.push(value);
      }
    }
  } finally {
    await reader.cancel().catch(() => undefined); // a consumer that stops early frees the connection
  }
}
